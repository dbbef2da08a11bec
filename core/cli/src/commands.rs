//! One function per command: build the request, call the operation, print the answer.

use std::io::Write;

use serde_json::{json, Value};
use tasker_cli::format::{cell, duration, error_message, time};
use tasker_cli::table::Table;

use crate::session::{parse, Failure, Open, Outcome, Session};
use crate::{Cli, Command, EventsArgs, StepCmd, StepTarget, TaskCmd, TemplateCmd};

pub fn run(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Migrate => migrate(cli),
        Command::Template(cmd) => template(cli, cmd),
        Command::Task(cmd) => task(cli, cmd),
        Command::Step(cmd) => step(cli, cmd),
        Command::Signal(cmd) => crate::signal::run(cli, cmd),
        Command::Stats => stats(cli),
        Command::Events(args) => events(cli, args),
        Command::Schedule(cmd) => crate::schedule::run(cli, cmd),
        Command::Completion { shell } => crate::completion::print(*shell),
    }
}

/// Prints `text` unless the raw JSON was printed already.
pub(crate) fn say(s: &Session, text: impl std::fmt::Display) -> Outcome {
    if !s.json {
        let mut out = std::io::stdout().lock();
        write!(out, "{text}")?;
        out.flush()?;
    }
    Ok(())
}

fn migrate(cli: &Cli) -> Outcome {
    let s = Session::open(cli, Open::Create)?;
    let r = s.call("migrate", &json!({}))?;
    let n = r["applied"].as_u64().unwrap_or(0);
    say(
        &s,
        format!(
            "applied {n} migration{}; {} is up to date\n",
            if n == 1 { "" } else { "s" },
            s.tasker.config().database_url
        ),
    )
}

fn template(cli: &Cli, cmd: &TemplateCmd) -> Outcome {
    match cmd {
        TemplateCmd::Validate { file } => {
            let s = Session::open(cli, Open::Scratch)?;
            let r = s
                .call("validate_template", &json!({ "path": file }))
                .map_err(|e| name_file(e, file))?;
            let t = &r["template"];
            let mut text = format!(
                "{file}: valid template {}/{} {} ({} steps)\n",
                cell(&t["namespace"]),
                cell(&t["name"]),
                cell(&t["version"]),
                t["steps"].as_array().map_or(0, Vec::len)
            );
            text.push_str(&template_steps(t).render());
            say(&s, text)
        }
        TemplateCmd::Register { file, replace } => {
            let s = Session::open(cli, Open::Existing)?;
            let r = s
                .call(
                    "register_template",
                    &json!({ "path": file, "replace": replace }),
                )
                .map_err(|e| name_file(e, file))?;
            let what = format!(
                "{}/{} {}",
                cell(&r["namespace"]),
                cell(&r["name"]),
                cell(&r["version"])
            );
            if r["registered"].as_bool() == Some(true) {
                say(&s, format!("registered {what}\n"))
            } else {
                say(&s, format!("{what} is already registered (unchanged)\n"))
            }
        }
        TemplateCmd::List { namespace, name } => {
            let s = Session::open(cli, Open::Existing)?;
            let r = s.call(
                "list_templates",
                &json!({ "namespace": namespace, "name": name }),
            )?;
            say(&s, template_list(&r))
        }
        TemplateCmd::Show {
            namespace,
            name,
            version,
        } => {
            let s = Session::open(cli, Open::Existing)?;
            let r = s.call(
                "get_template",
                &json!({ "namespace": namespace, "name": name, "version": version }),
            )?;
            let t = &r["template"];
            let mut text = format!(
                "{}/{} {}\n",
                cell(&t["namespace"]),
                cell(&t["name"]),
                cell(&t["version"])
            );
            if let Some(d) = t["description"].as_str() {
                text.push_str(&format!("{d}\n"));
            }
            if !t["input_schema"].is_null() {
                text.push_str(&format!("input schema: {}\n", t["input_schema"]));
            }
            text.push('\n');
            text.push_str(&template_steps(t).render());
            say(&s, text)
        }
    }
}

/// The `template list` text: one row per registered version.
pub fn template_list(r: &Value) -> String {
    let templates = r["templates"].as_array().cloned().unwrap_or_default();
    if templates.is_empty() {
        return "no templates are registered; add one with `tasker template register FILE`\n"
            .into();
    }
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "VERSION",
        "STEPS",
        "REGISTERED",
        "DESCRIPTION",
    ])
    .right_align(&[3]);
    for t in &templates {
        table.row([
            cell(&t["namespace"]),
            cell(&t["name"]),
            cell(&t["version"]),
            cell(&t["steps"]),
            time(&t["registered_at"]),
            cell(&t["description"]),
        ]);
    }
    table.render()
}

/// Makes sure a template error names the file it is about.
fn name_file(f: Failure, file: &str) -> Failure {
    match f {
        Failure::Api(mut e) if !e.message.starts_with(file) => {
            e.message = format!("{file}: {}", e.message);
            Failure::Api(e)
        }
        other => other,
    }
}

fn template_steps(t: &Value) -> Table {
    let mut table = Table::new(&["STEP", "HANDLER", "DEPENDS ON", "RETRY", "TIMEOUT"]);
    for step in t["steps"].as_array().into_iter().flatten() {
        let deps: Vec<&str> = step["depends_on"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let r = &step["retry"];
        table.row([
            cell(&step["name"]),
            cell(&step["handler"]),
            if deps.is_empty() {
                "-".into()
            } else {
                deps.join(", ")
            },
            format!(
                "{}x {} {}..{}ms",
                cell(&r["max_attempts"]),
                cell(&r["backoff"]),
                cell(&r["base_ms"]),
                cell(&r["max_ms"])
            ),
            format!("{}s", cell(&step["timeout_s"])),
        ]);
    }
    table
}

fn task(cli: &Cli, cmd: &TaskCmd) -> Outcome {
    let s = Session::open(cli, Open::Existing)?;
    match cmd {
        TaskCmd::Create(args) => crate::create::create_task(&s, args),
        TaskCmd::List {
            state,
            namespace,
            name,
            limit,
            cursor,
        } => {
            let r = s.call(
                "list_tasks",
                &json!({ "state": state, "namespace": namespace, "name": name,
                         "limit": limit, "cursor": cursor }),
            )?;
            let mut table = Table::new(&[
                "ID", "TEMPLATE", "VERSION", "STATE", "STEPS", "ERRORS", "CREATED", "DURATION",
            ])
            .right_align(&[0, 4, 5, 7]);
            for t in r["tasks"].as_array().into_iter().flatten() {
                table.row([
                    cell(&t["id"]),
                    format!("{}/{}", cell(&t["namespace"]), cell(&t["name"])),
                    cell(&t["version"]),
                    cell(&t["state"]),
                    format!("{}/{}", cell(&t["steps_done"]), cell(&t["steps_total"])),
                    cell(&t["steps_error"]),
                    time(&t["created_at"]),
                    duration(t["duration_ms"].as_i64()),
                ]);
            }
            let mut text = if table.is_empty() {
                "no tasks\n".to_owned()
            } else {
                table.render()
            };
            if let Some(next) = r["next_cursor"].as_i64() {
                text.push_str(&format!("more: --cursor {next}\n"));
            }
            say(&s, text)
        }
        TaskCmd::Show { id } => {
            let r = s.call("get_task", &json!({ "task_id": id }))?;
            say(&s, show_task(&r["task"]))
        }
        TaskCmd::Explain { id } => {
            let r = s.call("explain_task", &json!({ "task_id": id }))?;
            let mut text = format!("task {id}: {}\n", cell(&r["state"]));
            let steps = r["steps"].as_array().cloned().unwrap_or_default();
            if steps.is_empty() {
                text.push_str("every step is done; nothing is waiting\n");
            } else {
                let mut table = Table::new(&["STEP", "STATE", "STATUS", "WHY"]);
                let mut commands: Vec<String> = Vec::new();
                for st in &steps {
                    table.row([
                        cell(&st["name"]),
                        cell(&st["state"]),
                        cell(&st["status"]),
                        cell(&st["reason"]),
                    ]);
                    for a in st["actions"].as_array().into_iter().flatten() {
                        if let Some(c) = a["command"].as_str() {
                            if !commands.iter().any(|x| x == c) {
                                commands.push(c.to_owned());
                            }
                        }
                    }
                }
                text.push_str(&table.render());
                if !commands.is_empty() {
                    text.push_str("\nto fix:\n");
                    for c in commands {
                        text.push_str(&format!("  {c}\n"));
                    }
                }
            }
            say(&s, text)
        }
        TaskCmd::Import { file, batch } => {
            let done = crate::import::import(&s, file, *batch)?;
            say(
                &s,
                format!(
                    "imported {} tasks: {} created, {} existing (same idempotency key)\n",
                    done.created + done.existing,
                    done.created,
                    done.existing
                ),
            )
        }
        TaskCmd::Cancel { id, reason } => {
            let r = s.call("cancel_task", &json!({ "task_id": id, "reason": reason }))?;
            let text = if r["changed"].as_bool() == Some(true) {
                format!("task {id} cancelled\n")
            } else {
                format!("task {id} is already {} (unchanged)\n", cell(&r["state"]))
            };
            say(&s, text)
        }
    }
}

/// The `task show` text: a summary, then one row per step, then any step errors.
pub fn show_task(t: &Value) -> String {
    let mut text = format!(
        "task {}  {}/{} {}  {}\n",
        cell(&t["id"]),
        cell(&t["namespace"]),
        cell(&t["name"]),
        cell(&t["version"]),
        cell(&t["state"]),
    );
    let mut facts = Table::new(&["", ""]);
    facts.row(["created".into(), time(&t["created_at"])]);
    // Scheduling: a delayed start and a task timeout (docs/scheduling.md).
    if !t["run_at"].is_null() {
        let waiting = if t["delayed"] == json!(true) {
            " (waiting)"
        } else {
            ""
        };
        facts.row(["runs at".into(), format!("{}{waiting}", time(&t["run_at"]))]);
    }
    if !t["timeout_s"].is_null() {
        let until = if t["deadline_at"].is_null() {
            String::new()
        } else {
            format!(" (until {})", time(&t["deadline_at"]))
        };
        facts.row([
            "timeout".into(),
            format!("{} s{until}", cell(&t["timeout_s"])),
        ]);
    }
    facts.row(["started".into(), time(&t["started_at"])]);
    facts.row(["finished".into(), time(&t["finished_at"])]);
    facts.row(["duration".into(), duration(t["duration_ms"].as_i64())]);
    facts.row([
        "steps".into(),
        format!(
            "{}/{} done, {} in error",
            cell(&t["steps_done"]),
            cell(&t["steps_total"]),
            cell(&t["steps_error"])
        ),
    ]);
    facts.row(["priority".into(), cell(&t["priority"])]);
    if let Some(k) = t["idempotency_key"].as_str() {
        facts.row(["idempotency".into(), k.to_owned()]);
    }
    facts.row(["context".into(), t["context"].to_string()]);
    // Drop the (blank) header line of the two-column facts table.
    for line in facts.render().lines().skip(1) {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    let mut table = Table::new(&["STEP", "HANDLER", "STATE", "ATTEMPTS", "DURATION", "WORKER"])
        .right_align(&[3, 4]);
    let mut errors = Vec::new();
    for st in t["steps"].as_array().into_iter().flatten() {
        table.row([
            cell(&st["name"]),
            cell(&st["handler"]),
            cell(&st["state"]),
            attempts_cell(st),
            duration(st["duration_ms"].as_i64()),
            cell(&st["worker"]),
        ]);
        errors.extend(error_lines(st));
    }
    text.push_str(&table.render());
    if !errors.is_empty() {
        text.push_str("\nfailed attempts:\n");
        for e in errors {
            text.push_str(&e);
        }
    }
    text
}

/// Attempts of the current run against its budget (`2/3`), and the run when an
/// operator retried the step (`1/3, run 2`).
fn attempts_cell(st: &Value) -> String {
    let (Some(done), Some(max)) = (st["run_attempts"].as_i64(), st["run_max_attempts"].as_i64())
    else {
        return format!("{}/{}", cell(&st["attempts"]), cell(&st["max_attempts"]));
    };
    match st["run"].as_i64() {
        Some(run) if run > 1 => format!("{done}/{max}, run {run}"),
        _ => format!("{done}/{max}"),
    }
}

/// One line per failed attempt (history: the step may have completed since), marked
/// `now` when the step is in error because of it.
fn error_lines(st: &Value) -> Vec<String> {
    let name = cell(&st["name"]);
    let Some(errors) = st["errors"].as_array().filter(|e| !e.is_empty()) else {
        // An engine without the history: the latest failure document alone.
        return error_message(&st["error"])
            .map(|m| vec![format!("  {name}: {m}\n")])
            .unwrap_or_default();
    };
    let in_error = st["state"] == "error";
    errors
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let run = match e["run"].as_i64() {
                Some(r) if r > 1 => format!(" (run {r})"),
                _ => String::new(),
            };
            let kind = e["kind"]
                .as_str()
                .filter(|k| !k.is_empty())
                .map(|k| format!(" [{k}]"))
                .unwrap_or_default();
            let current = if in_error && i + 1 == errors.len() {
                "  <- why it is in error"
            } else {
                ""
            };
            format!(
                "  {name} attempt {}{run} at {}: {}{kind}{current}\n",
                cell(&e["attempt"]),
                time(&e["at"]),
                cell(&e["message"]),
            )
        })
        .collect()
}

fn target_json(t: &StepTarget) -> Value {
    match t.step_id {
        Some(id) => json!({ "step_id": id }),
        None => json!({ "task_id": t.task_id, "step_name": t.step_name }),
    }
}

fn step(cli: &Cli, cmd: &StepCmd) -> Outcome {
    let (op, request) = match cmd {
        StepCmd::Retry { target } => ("retry_step", target_json(target)),
        StepCmd::Resolve {
            target,
            result,
            reason,
        } => {
            let mut req = target_json(target);
            if let Some(text) = result {
                let v: Value = serde_json::from_str(text)
                    .map_err(|e| Failure::Usage(format!("--result is not valid JSON: {e}")))?;
                req["result"] = v;
            }
            if let Some(r) = reason {
                req["reason"] = json!(r);
            }
            ("resolve_step", req)
        }
    };
    let s = Session::open(cli, Open::Existing)?;
    let r = s.call(op, &request)?;
    say(
        &s,
        format!(
            "step {} (id {}) of task {} is now {}; the task is {}\n",
            cell(&r["step_name"]),
            cell(&r["step_id"]),
            cell(&r["task_id"]),
            cell(&r["state"]),
            cell(&r["task_state"])
        ),
    )
}

fn stats(cli: &Cli) -> Outcome {
    let s = Session::open(cli, Open::Existing)?;
    let r = s.call("stats", &json!({}))?;
    let mut text = String::new();
    for (title, key) in [("TASKS", "tasks"), ("STEPS", "steps")] {
        let mut table = Table::new(&[title, "COUNT"]).right_align(&[1]);
        let mut total = 0;
        for (state, n) in r[key].as_object().into_iter().flatten() {
            total += n.as_i64().unwrap_or(0);
            table.row([state.clone(), cell(n)]);
        }
        table.row(["total".to_owned(), total.to_string()]);
        text.push_str(&table.render());
        text.push('\n');
    }
    text.push_str(&format!(
        "oldest ready step waiting: {}\nlast event id: {}\n",
        duration(r["oldest_ready_age_ms"].as_i64()),
        cell(&r["last_event_id"])
    ));
    let t = &r["throughput"];
    let rate = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("-".to_owned(), |x| format!("{:.1}%", x * 100.0))
    };
    text.push_str(&format!(
        "last {}: {} steps completed ({:.1}/s), {} failed; tasks {} completed, {} failed, {} cancelled; completion {}, errors {}\n",
        duration(t["window_ms"].as_i64()),
        cell(&t["steps_completed"]),
        t["steps_per_s"].as_f64().unwrap_or(0.0),
        cell(&t["steps_failed"]),
        cell(&t["tasks_completed"]),
        cell(&t["tasks_failed"]),
        cell(&t["tasks_cancelled"]),
        rate(&t["completion_rate"]),
        rate(&t["error_rate"]),
    ));
    let slow = r["slowest_steps"].as_array().cloned().unwrap_or_default();
    if !slow.is_empty() {
        let mut table = Table::new(&["SLOWEST STEPS", "TASK", "STEP ID", "HANDLER", "DURATION"])
            .right_align(&[1, 2, 4]);
        for st in &slow {
            table.row([
                cell(&st["step_name"]),
                cell(&st["task_id"]),
                cell(&st["step_id"]),
                cell(&st["handler"]),
                duration(st["duration_ms"].as_i64()),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    let slow_tasks = r["slowest_tasks"].as_array().cloned().unwrap_or_default();
    if !slow_tasks.is_empty() {
        let mut table =
            Table::new(&["SLOWEST TASKS", "NAMESPACE", "NAME", "DURATION"]).right_align(&[0, 3]);
        for st in &slow_tasks {
            table.row([
                cell(&st["task_id"]),
                cell(&st["namespace"]),
                cell(&st["name"]),
                duration(st["duration_ms"].as_i64()),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    say(&s, text)
}

/// How long one `--follow` read waits for new events before asking again.
const FOLLOW_WAIT_MS: u64 = 5_000;

fn events(cli: &Cli, args: &EventsArgs) -> Outcome {
    let s = Session::open(cli, Open::Existing)?;
    let types = if args.types.is_empty() {
        None
    } else {
        Some(args.types.clone())
    };
    let mut cursor = args.since;
    let mut out = std::io::stdout();
    loop {
        let request = json!({
            "since": cursor,
            "limit": args.limit,
            "task_id": args.task,
            "types": types,
            "wait_ms": if args.follow { FOLLOW_WAIT_MS } else { 0 },
        });
        let raw = s.call_quiet("events", &request)?;
        let page = parse(&raw)?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let next = page["next_cursor"].as_i64().unwrap_or(cursor);
        if args.follow {
            // One event per line, in JSON or as text, as they arrive.
            for e in &events {
                if s.json {
                    writeln!(out, "{e}")?;
                } else {
                    writeln!(out, "{}", event_line(e))?;
                }
            }
            out.flush()?;
            cursor = next;
            continue;
        }
        if s.json {
            writeln!(out, "{raw}")?;
        } else if events.is_empty() {
            writeln!(out, "no events after {cursor}")?;
        } else {
            for e in &events {
                writeln!(out, "{}", event_line(e))?;
            }
            if events.len() as u32 >= args.limit {
                writeln!(out, "more: --since {next}")?;
            }
        }
        return Ok(());
    }
}

/// One event as a line of fixed-width columns (so followed output stays aligned).
pub fn event_line(e: &Value) -> String {
    let mut line = format!(
        "{:>6}  {}  {:<22}  task {:<5}",
        cell(&e["id"]),
        time(&e["at"]),
        cell(&e["event"]),
        cell(&e["task_id"]),
    );
    if let Some(name) = e["step_name"].as_str() {
        line.push_str(&format!("  {name:<12}"));
    } else {
        line.push_str(&format!("  {:<12}", ""));
    }
    line.push_str(&format!("  {} -> {}", cell(&e["from"]), cell(&e["to"])));
    if let Some(a) = e["attempt"].as_i64() {
        line.push_str(&format!("  attempt {a}"));
    }
    if let Some(w) = e["worker"].as_str() {
        line.push_str(&format!("  worker {w}"));
    }
    let details = &e["details"];
    if let Some(m) = error_message(&details["error"]) {
        line.push_str(&format!("  error: {m}"));
    }
    if let Some(r) = details["reason"].as_str() {
        line.push_str(&format!("  reason: {r}"));
    }
    line.trim_end().to_owned()
}
