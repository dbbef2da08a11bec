//! What both stores share for child tasks (a handler's `create_task` with `parent`, and
//! the step that waits for them): the records passed around, the result a step takes
//! when its children are done, and the error documents of a failed child and of a
//! wait past its deadline. No queries here.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// A child task's parent, as `get_task` of the child shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParentRef {
    pub task_id: i64,
    pub step_id: i64,
    pub step_name: String,
}

/// The links of one task: its parent (when it is a child) and the child tasks its steps
/// started, `(step_id, child_task_id)` in start order.
#[derive(Debug, Clone, Default)]
pub struct TaskLinks {
    pub parent: Option<ParentRef>,
    pub children: Vec<(i64, i64)>,
}

/// What `wait_for_children` did: how many children the step started, and how many of
/// them were not final yet (0: the step completes, or fails, at once).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WaitStarted {
    pub children: i64,
    pub unfinished: i64,
}

/// One child of a waiting step, with its final state.
#[derive(Debug, Clone)]
pub struct Child {
    pub task_id: i64,
    pub key: String,
    pub state: String,
}

/// The deadline of a wait for children: 7 days, as for a signal without `timeout_s`.
pub const WAIT_TIMEOUT_MS: i64 = 7 * 86_400_000;

/// The child that makes the waiting step fail: the first one in start order that
/// ended `error` or `cancelled`.
pub fn failed_child(children: &[Child]) -> Option<&Child> {
    children
        .iter()
        .find(|c| matches!(c.state.as_str(), "error" | "cancelled"))
}

/// The error document of a step whose child ended `error` or `cancelled`: permanent,
/// kind `child_failed`, naming the child.
pub fn child_failed_error(c: &Child) -> String {
    json!({
        "message": format!("child task {} (key `{}`) ended {}", c.task_id, c.key, c.state),
        "kind": "child_failed",
        "retryable": false,
        "details": { "task_id": c.task_id, "key": c.key, "state": c.state },
    })
    .to_string()
}

/// The error document of a wait for children past its deadline: permanent, kind
/// `children_timeout`.
pub fn timeout_error(timeout_ms: i64, unfinished: &[i64]) -> String {
    json!({
        "message": format!(
            "the step's child tasks did not all finish within {} s (unfinished: {unfinished:?})",
            timeout_ms / 1000
        ),
        "kind": "children_timeout",
        "retryable": false,
        "details": { "unfinished": unfinished },
    })
    .to_string()
}

/// What a waiting step whose children are all final becomes: `Complete` with the
/// combined result when every child completed and it fits in `max_bytes`, else `Fail`.
pub enum Finish {
    Complete(String),
    Fail(Failure),
}

/// A permanent failure of a waiting step: its error document, the transition's reason
/// and details.
pub struct Failure {
    pub error: String,
    pub reason: &'static str,
    pub details: Value,
}

/// Decides how a waiting step ends once its children are all final (`results` as for
/// [`result`]): `child_failed` naming the first failed child, `result_too_large` when
/// the combined result is over `max_bytes` (a step result is held to
/// `max_payload_bytes` like any handler's), else complete with the combined result.
pub fn finish(
    children: &[Child],
    results: impl FnOnce() -> crate::error::Result<Vec<Vec<(String, Option<String>)>>>,
    max_bytes: usize,
) -> crate::error::Result<Finish> {
    if let Some(bad) = failed_child(children) {
        let error = child_failed_error(bad);
        let details = json!({
            "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null),
            "child_task_id": bad.task_id,
        });
        return Ok(Finish::Fail(Failure {
            error,
            reason: crate::model::events::reason::CHILD_FAILED,
            details,
        }));
    }
    let combined = result(children, &results()?);
    if combined.len() > max_bytes {
        let error = json!({
            "message": format!(
                "the combined result of the step's {} child tasks is {} bytes, over max_payload_bytes ({max_bytes})",
                children.len(),
                combined.len()
            ),
            "kind": "result_too_large",
            "retryable": false,
            "details": { "bytes": combined.len(), "max_payload_bytes": max_bytes },
        })
        .to_string();
        let details =
            json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null) });
        return Ok(Finish::Fail(Failure {
            error,
            reason: crate::model::events::reason::FAILED,
            details,
        }));
    }
    Ok(Finish::Complete(combined))
}

/// The result of a step whose children all completed:
/// `{"children": [{"task_id", "key", "state", "results": {step: result}}]}` in start
/// order. `results[i]` holds child `i`'s steps as `(name, result JSON text)`.
pub fn result(children: &[Child], results: &[Vec<(String, Option<String>)>]) -> String {
    let list: Vec<Value> = children
        .iter()
        .zip(results)
        .map(|(c, steps)| {
            let mut by_name = Map::new();
            for (name, r) in steps {
                let v = r
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or(Value::Null);
                by_name.insert(name.clone(), v);
            }
            json!({ "task_id": c.task_id, "key": c.key, "state": c.state, "results": by_name })
        })
        .collect();
    json!({ "children": list }).to_string()
}
