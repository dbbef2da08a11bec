//! `tasker task create`: one task from the command line (for trying a template, or
//! starting a run by hand). Many tasks at once go through the API's batch operation.

use serde_json::{json, Value};
use tasker_cli::format::cell;

use crate::session::{Failure, Outcome, Session};
use crate::CreateArgs;

fn parse(text: &str, flag: &str) -> Outcome<Value> {
    serde_json::from_str(text).map_err(|e| Failure::Usage(format!("{flag} is not valid JSON: {e}")))
}

pub fn create_task(s: &Session, a: &CreateArgs) -> Outcome {
    let context: Option<Value> = match (&a.context, &a.context_file) {
        (Some(text), None) => Some(parse(text, "--context")?),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Failure::Usage(format!("--context-file: cannot read {file}: {e}")))?;
            Some(parse(&text, "--context-file")?)
        }
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(
                "give the context as --context JSON or --context-file FILE, not both".into(),
            ))
        }
    };
    let mut req = json!({ "namespace": a.namespace, "name": a.name });
    if let Some(v) = &a.version {
        req["version"] = json!(v);
    }
    if let Some(c) = context {
        req["context"] = c;
    }
    if let Some(k) = &a.idempotency_key {
        req["idempotency_key"] = json!(k);
    }
    if let Some(p) = a.priority {
        req["priority"] = json!(p);
    }
    if let Some(at) = &a.run_at {
        req["run_at"] = json!(at);
    }
    if let Some(d) = &a.delay {
        req["delay_ms"] = json!(parse_duration_ms(d)?);
    }
    if let Some(t) = a.timeout {
        req["timeout_s"] = json!(t);
    }
    let r = s.call("create_task", &req)?;
    let id = cell(&r["task_id"]);
    let text = if r["created"].as_bool() == Some(true) {
        let when = if a.run_at.is_some() || a.delay.is_some() {
            let t = s.call_quiet("get_task", &json!({ "task_id": r["task_id"] }))?;
            let t: Value = crate::session::parse(&t)?;
            match t["task"]["run_at"].as_str() {
                Some(at) if t["task"]["delayed"] == json!(true) => format!(", starting at {at}"),
                _ => String::new(),
            }
        } else {
            String::new()
        };
        format!(
            "created task {id} ({}/{}){when}; see it with `tasker task show {id}`\n",
            a.namespace, a.name
        )
    } else {
        format!(
            "task {id} already exists for this idempotency key ({}); nothing was created\n",
            cell(&r["state"])
        )
    };
    crate::commands::say(s, text)
}

/// `500ms`, `30s`, `5m`, `2h`, `1d` as milliseconds.
pub fn parse_duration_ms(text: &str) -> Outcome<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match n.parse::<u64>() {
        Ok(n) if factor > 0 => n
            .checked_mul(factor)
            .ok_or_else(|| Failure::Usage(format!("--delay {text} is too long"))),
        _ => Err(Failure::Usage(format!(
            "--delay {text}: expected a number with a unit: 500ms, 30s, 5m, 2h or 1d"
        ))),
    }
}
