//! What both stores share for signals (steps with `wait_for`): the records `send_signal`
//! answers with, its errors, and the error a wait that ran out of time records. No
//! queries here.

use serde::Serialize;
use serde_json::json;

use crate::error::{Error, ErrorCode};

/// A step that waits for the signal named in a `send_signal` call.
#[derive(Debug, Clone, Serialize)]
pub struct SignalledStep {
    pub step_id: i64,
    pub step_name: String,
    /// The state after the call: `complete` when the step was waiting and took the
    /// payload now; else the state it is in until it gets to wait (then it takes the
    /// stored payload at once), or `error`/`cancelled`/... when it will not.
    pub state: String,
}

/// What `send_signal` did.
#[derive(Debug, Clone, Serialize)]
pub struct SignalSent {
    pub task_id: i64,
    pub signal: String,
    /// Every step of the task that waits for this signal.
    pub steps: Vec<SignalledStep>,
    pub task_state: String,
}

/// A step moved to `waiting`, or taken out of it, as the stores pass it around.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub step_id: i64,
    pub task_id: i64,
    pub name: String,
    pub attempt: i64,
    pub signal: String,
}

/// `send_signal` to a task that is complete or cancelled.
pub fn task_finished(task_id: i64, state: &str) -> Error {
    Error::invalid_state(format!(
        "task {task_id} is {state}; a signal can only be sent to an unfinished task"
    ))
    .with_details(json!({ "task_id": task_id, "state": state }))
}

/// `send_signal` naming a signal no step of the task waits for.
pub fn no_waiter(task_id: i64, signal: &str, known: &[String]) -> Error {
    let hint = crate::model::suggest::did_you_mean(signal, known.iter().map(String::as_str))
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    let listed = if known.is_empty() {
        "it waits for no signal".to_owned()
    } else {
        format!("{hint}it waits for: {}", known.join(", "))
    };
    Error::not_found(format!(
        "no step of task {task_id} waits for signal `{signal}`; {listed}"
    ))
    .with_details(json!({ "task_id": task_id, "signal": signal, "signals": known }))
}

/// A second signal of a name already sent to the task.
pub fn already_sent(task_id: i64, signal: &str, sent_at: i64) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!(
            "signal `{signal}` was already sent to task {task_id} (at {}); each signal is taken once",
            crate::time::rfc3339(sent_at)
        ),
    )
    .with_details(json!({ "task_id": task_id, "signal": signal, "sent_at": crate::time::rfc3339(sent_at) }))
}

/// The error document of a wait whose deadline passed: permanent, kind `signal_timeout`.
pub fn timeout_error(signal: &str, timeout_ms: i64) -> String {
    json!({
        "message": format!("no signal `{signal}` arrived within {} s", timeout_ms / 1000),
        "kind": "signal_timeout",
        "retryable": false,
    })
    .to_string()
}
