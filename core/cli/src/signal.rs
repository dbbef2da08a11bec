//! `tasker signal send TASK NAME [PAYLOAD_JSON]`: `send_signal` from the command line
//! (an approval given by hand, a webhook relayed by a script).

use serde_json::{json, Value};
use tasker_cli::format::cell;

use crate::commands::say;
use crate::session::{Failure, Open, Outcome, Session};
use crate::{Cli, SignalCmd};

pub fn run(cli: &Cli, cmd: &SignalCmd) -> Outcome {
    let SignalCmd::Send {
        task_id,
        name,
        payload,
    } = cmd;
    let mut req = json!({ "task_id": task_id, "name": name });
    if let Some(text) = payload {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Failure::Usage(format!("PAYLOAD_JSON is not valid JSON: {e}")))?;
        req["payload"] = v;
    }
    let s = Session::open(cli, Open::Existing)?;
    let r = s.call("send_signal", &req)?;
    let mut text = format!(
        "signal {} sent to task {} (the task is {})\n",
        cell(&r["signal"]),
        cell(&r["task_id"]),
        cell(&r["task_state"])
    );
    for step in r["steps"].as_array().into_iter().flatten() {
        let note = if step["state"] == "complete" {
            "took it"
        } else {
            "takes it when it gets to wait"
        };
        text.push_str(&format!(
            "  step {} (id {}) is {}: {note}\n",
            cell(&step["step_name"]),
            cell(&step["step_id"]),
            cell(&step["state"])
        ));
    }
    say(&s, text)
}
