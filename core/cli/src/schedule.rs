//! `tasker schedule create|list|show|pause|resume|delete`: cron schedules
//! (docs/scheduling.md). Each command is one schedule operation.

use clap::Subcommand;
use serde_json::{json, Value};
use tasker_cli::format::{cell, time};
use tasker_cli::table::Table;

use crate::commands::say;
use crate::session::{Failure, Open, Outcome, Session};
use crate::Cli;

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Create a schedule: at each tick of CRON a task of the template is created
    Create {
        /// A unique name for the schedule
        name: String,
        /// The template's namespace
        namespace: String,
        /// The template's name
        template: String,
        /// Cron pattern: 5 fields (minute hour day month weekday), or 6 with seconds first
        #[arg(long, value_name = "PATTERN")]
        cron: String,
        /// IANA time zone the pattern is read in
        #[arg(long, value_name = "ZONE", default_value = "UTC")]
        timezone: String,
        /// The template version (default: the highest registered at each tick)
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// Every tick's task context, as JSON (default: {})
        #[arg(long, value_name = "JSON")]
        context: Option<String>,
        /// Missed ticks after downtime: skip (fire the latest only) or all
        #[arg(long, value_name = "POLICY", default_value = "skip")]
        catch_up: String,
        /// With --catch-up all: the most missed ticks fired (default 100)
        #[arg(long, value_name = "N")]
        catch_up_limit: Option<u32>,
        /// Create it paused
        #[arg(long)]
        paused: bool,
    },
    /// List the schedules with their next tick
    List,
    /// Show one schedule
    Show { name: String },
    /// Stop a schedule from firing
    Pause { name: String },
    /// Let a paused schedule fire again, from its next tick
    Resume { name: String },
    /// Delete a schedule (the tasks it created stay)
    Delete { name: String },
}

pub fn run(cli: &Cli, cmd: &ScheduleCmd) -> Outcome {
    let s = Session::open(cli, Open::Existing)?;
    match cmd {
        ScheduleCmd::Create {
            name,
            namespace,
            template,
            cron,
            timezone,
            version,
            context,
            catch_up,
            catch_up_limit,
            paused,
        } => {
            let mut req = json!({
                "name": name,
                "template": { "namespace": namespace, "name": template },
                "cron": cron,
                "timezone": timezone,
                "catch_up": { "policy": catch_up },
                "paused": paused,
            });
            if let Some(v) = version {
                req["template"]["version"] = json!(v);
            }
            if let Some(l) = catch_up_limit {
                req["catch_up"]["limit"] = json!(l);
            }
            if let Some(c) = context {
                req["context"] = serde_json::from_str(c)
                    .map_err(|e| Failure::Usage(format!("--context is not valid JSON: {e}")))?;
            }
            let r = s.call("create_schedule", &req)?;
            let next = &r["schedule"]["next_fire_at"];
            let text = if next.is_null() {
                format!("created schedule {name} (paused)\n")
            } else {
                format!("created schedule {name}; next tick {}\n", time(next))
            };
            say(&s, text)
        }
        ScheduleCmd::List => {
            let r = s.call("list_schedules", &json!({}))?;
            say(&s, list(&r))
        }
        ScheduleCmd::Show { name } => {
            let r = s.call("get_schedule", &json!({ "name": name }))?;
            say(&s, show(&r["schedule"]))
        }
        ScheduleCmd::Pause { name } => {
            s.call("pause_schedule", &json!({ "name": name }))?;
            say(&s, format!("paused schedule {name}\n"))
        }
        ScheduleCmd::Resume { name } => {
            let r = s.call("resume_schedule", &json!({ "name": name }))?;
            say(
                &s,
                format!(
                    "resumed schedule {name}; next tick {}\n",
                    time(&r["schedule"]["next_fire_at"])
                ),
            )
        }
        ScheduleCmd::Delete { name } => {
            s.call("delete_schedule", &json!({ "name": name }))?;
            say(&s, format!("deleted schedule {name}\n"))
        }
    }
}

fn template_of(s: &Value) -> String {
    let t = &s["template"];
    match t["version"].as_str() {
        Some(v) => format!("{}/{} {v}", cell(&t["namespace"]), cell(&t["name"])),
        None => format!("{}/{}", cell(&t["namespace"]), cell(&t["name"])),
    }
}

fn list(r: &Value) -> String {
    let empty = Vec::new();
    let rows = r["schedules"].as_array().unwrap_or(&empty);
    if rows.is_empty() {
        return "no schedules\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "TEMPLATE",
        "CRON",
        "TIMEZONE",
        "STATE",
        "NEXT TICK",
        "LAST TICK",
    ]);
    for s in rows {
        t.row([
            cell(&s["name"]),
            template_of(s),
            cell(&s["cron"]),
            cell(&s["timezone"]),
            if s["paused"] == json!(true) {
                "paused"
            } else {
                "active"
            }
            .to_owned(),
            time(&s["next_fire_at"]),
            time(&s["last_tick_at"]),
        ]);
    }
    t.render()
}

fn show(s: &Value) -> String {
    let catch_up = match s["catch_up"]["limit"].as_i64() {
        Some(l) => format!("{} (limit {l})", cell(&s["catch_up"]["policy"])),
        None => cell(&s["catch_up"]["policy"]),
    };
    format!(
        "schedule   {}\ntemplate   {}\ncron       {} ({})\ncatch up   {catch_up}\nstate      {}\nnext tick  {}\nlast tick  {}\nlast task  {}\ncontext    {}\n",
        cell(&s["name"]),
        template_of(s),
        cell(&s["cron"]),
        cell(&s["timezone"]),
        if s["paused"] == json!(true) { "paused" } else { "active" },
        time(&s["next_fire_at"]),
        time(&s["last_tick_at"]),
        cell(&s["last_task_id"]),
        s["context"],
    )
}
