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
    let r = s.call("create_task", &req)?;
    let id = cell(&r["task_id"]);
    let text = if r["created"].as_bool() == Some(true) {
        format!(
            "created task {id} ({}/{}); see it with `tasker task show {id}`\n",
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
