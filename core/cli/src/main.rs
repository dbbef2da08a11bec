//! `tasker`: the operator command line. Every command is one (or, for `events
//! --follow`, a loop of) JSON operation(s) on a [`tasker_core::api::Tasker`] handle; the
//! default output is aligned text for people, `--json` prints the raw responses.
//!
//! Exit status: 0 on success, 1 when the operation fails (`error [code]: message` on
//! stderr), 2 for usage errors.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod commands;
mod completion;
mod create;
mod import;
mod schedule;
mod session;
mod signal;

use session::Failure;

#[derive(Debug, Parser)]
#[command(
    name = "tasker",
    version,
    about = "Operate a Tasker database: migrations, templates, tasks, steps, statistics and events",
    after_help = "The database comes from --database-url, else TASKER_DATABASE_URL, else tasker.yaml \
                  (TASKER_CONFIG or ./tasker.yaml), else sqlite://tasker.db. See docs/configuration.md."
)]
pub struct Cli {
    /// Database to operate on: sqlite://PATH or postgres://USER@HOST/DB [default: TASKER_DATABASE_URL, tasker.yaml, sqlite://tasker.db]
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Configuration file to read instead of TASKER_CONFIG or ./tasker.yaml
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<String>,

    /// Print the raw JSON responses (one JSON document per line) instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed and apply pending migrations
    Migrate,
    /// Validate and register workflow templates
    #[command(subcommand)]
    Template(TemplateCmd),
    /// List, inspect, explain and cancel tasks
    #[command(subcommand)]
    Task(TaskCmd),
    /// Retry or manually resolve a step
    #[command(subcommand)]
    Step(StepCmd),
    /// Send a signal to a task's steps that wait for it (`wait_for` in the template)
    #[command(subcommand)]
    Signal(SignalCmd),
    /// Counts of tasks and steps by state, queue age and the slowest steps
    Stats,
    /// Print lifecycle events from the durable event log
    Events(EventsArgs),
    /// Create, list, pause, resume and delete cron schedules
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// Print a shell completion script: `tasker completion bash > /etc/bash_completion.d/tasker`
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// `tasker task create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The template's namespace
    pub namespace: String,
    /// The template's name
    pub name: String,
    /// The template version (default: the highest registered)
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// The task context, as JSON (default: {})
    #[arg(long, value_name = "JSON")]
    pub context: Option<String>,
    /// Read the task context (JSON) from this file
    #[arg(long, value_name = "FILE", conflicts_with = "context")]
    pub context_file: Option<String>,
    /// Return the existing task when this key was used before for the template
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Added to every step's priority
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Start the task at this time (RFC 3339, for example 2026-05-01T09:00:00Z)
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub run_at: Option<String>,
    /// Start the task after this delay: 500ms, 30s, 5m, 2h or 1d
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// Fail the task when it has not finished this many seconds after it is due
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Check a template file (YAML or JSON) without storing it; exits 1 when invalid
    Validate {
        /// Template file
        file: String,
    },
    /// Validate a template file and store it in the registry
    Register {
        /// Template file
        file: String,
        /// Replace a different template already registered under the same version
        #[arg(long)]
        replace: bool,
    },
    /// List the registered templates and their versions
    List {
        /// Only templates in this namespace
        #[arg(long, value_name = "NAMESPACE")]
        namespace: Option<String>,
        /// Only templates with this name
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Show a registered template (the highest version unless VERSION is given)
    Show {
        namespace: String,
        name: String,
        version: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Create a task (one run of a template)
    Create(CreateArgs),
    /// List tasks, newest first
    List {
        /// Only tasks in this state (pending, running, complete, error, cancelled)
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Only tasks of templates in this namespace
        #[arg(long, value_name = "NAMESPACE")]
        namespace: Option<String>,
        /// Only tasks of templates with this name
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Most tasks to show
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (its "next cursor")
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<i64>,
    },
    /// Show a task and a table of its steps
    Show {
        /// Task id
        id: i64,
    },
    /// Explain why each unfinished step of a task is not done
    Explain {
        /// Task id
        id: i64,
    },
    /// Cancel a task: its unfinished steps are cancelled and nothing more runs
    Cancel {
        /// Task id
        id: i64,
        /// Why (recorded in the audit trail)
        #[arg(long, value_name = "REASON")]
        reason: Option<String>,
    },
    /// Create tasks from JSON lines, one create_task request per line, in batches
    Import {
        /// File of JSON lines, or - for standard input
        file: String,
        /// Most lines per batch; each batch is stored whole or not at all
        #[arg(long, value_name = "N", default_value_t = 1000)]
        batch: usize,
    },
}

/// Names one step: `--step-id ID`, or `TASK_ID STEP_NAME`.
#[derive(Debug, Args)]
pub struct StepTarget {
    /// The step's id
    #[arg(
        long,
        value_name = "ID",
        conflicts_with_all = ["task_id", "step_name"],
        required_unless_present = "task_id"
    )]
    pub step_id: Option<i64>,
    /// The task's id (with STEP_NAME)
    #[arg(value_name = "TASK_ID", requires = "step_name")]
    pub task_id: Option<i64>,
    /// The step's name within the task
    #[arg(value_name = "STEP_NAME")]
    pub step_name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StepCmd {
    /// Make a failed (error) step ready again; its task resumes
    #[command(override_usage = "tasker step retry (--step-id ID | TASK_ID STEP_NAME)")]
    Retry {
        #[command(flatten)]
        target: StepTarget,
    },
    /// Mark a step done by hand, optionally with the result its children will see
    #[command(
        override_usage = "tasker step resolve (--step-id ID | TASK_ID STEP_NAME) [--result JSON] [--reason REASON]"
    )]
    Resolve {
        #[command(flatten)]
        target: StepTarget,
        /// The step's result, as JSON (default: null)
        #[arg(long, value_name = "JSON")]
        result: Option<String>,
        /// Why (recorded in the audit trail)
        #[arg(long, value_name = "REASON")]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SignalCmd {
    /// Complete the steps of TASK_ID waiting for signal NAME, with PAYLOAD_JSON as their
    /// result (default: null); a step not waiting yet takes it when it gets there
    Send {
        /// The task's id
        #[arg(value_name = "TASK_ID")]
        task_id: i64,
        /// The signal's name (as in the template's `wait_for.signal`)
        #[arg(value_name = "NAME")]
        name: String,
        /// The payload, as JSON (default: null)
        #[arg(value_name = "PAYLOAD_JSON")]
        payload: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print events after this cursor (an event id)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub since: i64,
    /// Only events of this task
    #[arg(long = "task", value_name = "ID")]
    pub task: Option<i64>,
    /// Only events of this type (repeatable), for example step.failed
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Most events per read
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u32,
    /// Keep waiting for new events and print them as they arrive (stop with Ctrl-C)
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Api(e)) => {
            if cli.json {
                println!("{}", e.to_json());
            }
            eprintln!("error [{}]: {}", e.code, e.message);
            if let Some(details) = e.details.as_ref().filter(|d| has_content(d)) {
                eprintln!("  details: {details}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("error [io]: {e}");
            ExitCode::from(1)
        }
    }
}

fn has_content(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Object(m) => !m.is_empty(),
        _ => true,
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings only).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
