//! Why is a step not done? A readable answer per unfinished step, computed from the
//! task view (steps are stored in topological order, so one forward pass suffices).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::store::{LimitState, StepLimitState, TaskView};
use crate::time::rfc3339;

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub task_id: i64,
    pub state: String,
    pub steps: Vec<StepExplanation>,
}

#[derive(Debug, Serialize)]
pub struct StepExplanation {
    pub name: String,
    pub state: String,
    /// Dependency level (0: no parents).
    pub level: i64,
    /// One of `waiting_on_parents`, `blocked`, `retry_scheduled`, `waiting_for_worker`,
    /// `held_by_limit` (ready, but its concurrency or rate limit is used up), `running`,
    /// `waiting_for_signal`, `waiting_for_children`, `failed`, `cancelled`.
    pub status: &'static str,
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_on: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<String>,
    /// What an operator can do about it: the API operation with its request, and the
    /// same as a `tasker` command.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// The step's concurrency and rate limits and their use now (steps with limits
    /// that are ready or running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<StepLimits>,
}

#[derive(Debug, Serialize)]
pub struct StepLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<LimitState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<LimitState>,
}

#[derive(Debug, Serialize)]
pub struct Action {
    pub operation: &'static str,
    pub request: serde_json::Value,
    pub command: String,
}

/// Retrying or resolving a failed step: the two ways out of `error`.
fn fix_actions(task_id: i64, step: &str) -> Vec<Action> {
    let quoted = shell_word(step);
    vec![
        Action {
            operation: "retry_step",
            request: serde_json::json!({ "task_id": task_id, "step_name": step }),
            command: format!("tasker step retry {task_id} {quoted}"),
        },
        Action {
            operation: "resolve_step",
            request: serde_json::json!({ "task_id": task_id, "step_name": step, "result": null }),
            command: format!("tasker step resolve {task_id} {quoted} --result JSON"),
        },
    ]
}

/// A step name as one shell word (names are letters, digits, `_`, `-`, `.`; anything
/// else is quoted).
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Most unfinished parents a `waiting_on_parents` reason names (`waiting_on` lists all).
const EXPLAIN_PARENTS: usize = 10;

pub fn explain(view: &TaskView, now: i64) -> Explanation {
    let state_of: HashMap<&str, &str> = view
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state.as_str()))
        .collect();
    // Steps that can never run without an operator: in error/cancelled, or below one.
    let mut stuck: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for s in &view.steps {
        let blocked_by: Vec<String> = if s.state == "pending" {
            s.depends_on
                .iter()
                .filter(|p| stuck.contains(p.as_str()))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        match s.state.as_str() {
            "error" | "cancelled" => {
                stuck.insert(&s.name);
            }
            "pending" if !blocked_by.is_empty() => {
                stuck.insert(&s.name);
            }
            _ => {}
        }
        let task_id = view.summary.id;
        let mut actions = Vec::new();
        let (status, reason, waiting_on) = match s.state.as_str() {
            "complete" | "resolved_manually" => continue,
            "pending" if !blocked_by.is_empty() => {
                for b in &blocked_by {
                    if state_of.get(b.as_str()) == Some(&"error") {
                        actions.extend(fix_actions(task_id, b));
                    }
                }
                (
                    "blocked",
                    format!(
                        "cannot run: {} failed or was cancelled upstream; retry or resolve it",
                        blocked_by.join(", ")
                    ),
                    Vec::new(),
                )
            }
            "pending" if s.depends_on.is_empty() && view.timing.delayed => (
                "delayed",
                format!(
                    "the task is delayed: its steps start at {}",
                    view.timing
                        .run_at
                        .map_or_else(|| "?".into(), |t| rfc3339(t.0))
                ),
                Vec::new(),
            ),
            "pending" => {
                let waiting: Vec<String> = s
                    .depends_on
                    .iter()
                    .filter(|p| {
                        !matches!(
                            state_of.get(p.as_str()),
                            Some(&"complete") | Some(&"resolved_manually")
                        )
                    })
                    .cloned()
                    .collect();
                // A fan-out step waits on every instance: name the first few.
                let mut detail: Vec<String> = waiting
                    .iter()
                    .take(EXPLAIN_PARENTS)
                    .map(|p| format!("{p} ({})", state_of.get(p.as_str()).copied().unwrap_or("?")))
                    .collect();
                if waiting.len() > EXPLAIN_PARENTS {
                    detail.push(format!("and {} more", waiting.len() - EXPLAIN_PARENTS));
                }
                (
                    "waiting_on_parents",
                    format!("waiting on {}", detail.join(", ")),
                    waiting,
                )
            }
            "ready" => match s.ready_at_ms {
                Some(at) if at > now => (
                    "retry_scheduled",
                    format!(
                        "attempt {} of {} failed; retry at {} (in {} ms)",
                        s.run_attempts,
                        s.run_max_attempts,
                        rfc3339(at),
                        at - now
                    ),
                    Vec::new(),
                ),
                _ => (
                    "waiting_for_worker",
                    format!("ready; waiting for a worker that handles `{}`", s.handler),
                    Vec::new(),
                ),
            },
            "running" => (
                "running",
                format!(
                    "attempt {} running on worker {}; lease expires at {}",
                    s.run_attempts,
                    s.worker.as_deref().unwrap_or("?"),
                    s.lease_expires_at_ms.map(rfc3339).unwrap_or_default()
                ),
                Vec::new(),
            ),
            "waiting" if s.handler != crate::model::template::SIGNAL_HANDLER => {
                let until = s.wait_until.map(|t| rfc3339(t.0)).unwrap_or_default();
                (
                    "waiting_for_children",
                    format!(
                        "waiting for its child tasks {:?} to finish; fails with children_timeout at {until}",
                        s.children
                    ),
                    Vec::new(),
                )
            }
            "waiting" => {
                let signal = s
                    .config
                    .as_ref()
                    .and_then(|c| serde_json::from_str::<serde_json::Value>(c.get()).ok())
                    .and_then(|c| c.get("signal").and_then(|v| v.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                let until = s.wait_until.map(|t| rfc3339(t.0)).unwrap_or_default();
                actions.push(Action {
                    operation: "send_signal",
                    request: serde_json::json!({ "task_id": task_id, "name": signal, "payload": null }),
                    command: format!("tasker signal send {task_id} {} JSON", shell_word(&signal)),
                });
                (
                    "waiting_for_signal",
                    format!("waiting for signal `{signal}`; fails with signal_timeout at {until}"),
                    Vec::new(),
                )
            }
            "error" => {
                let message = s
                    .error
                    .as_ref()
                    .and_then(|e| serde_json::from_str::<serde_json::Value>(e.get()).ok())
                    .and_then(|e| e.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                actions = fix_actions(task_id, &s.name);
                (
                    "failed",
                    format!(
                        "failed after {} attempt(s): {message}; retry it or resolve it by hand",
                        s.run_attempts
                    ),
                    Vec::new(),
                )
            }
            _ => ("cancelled", "the task was cancelled".to_owned(), Vec::new()),
        };
        out.push(StepExplanation {
            name: s.name.clone(),
            state: s.state.clone(),
            level: s.level,
            status,
            reason,
            waiting_on,
            blocked_by,
            actions,
            limits: None,
        });
    }
    Explanation {
        task_id: view.summary.id,
        state: view.summary.state.clone(),
        steps: out,
    }
}

/// Says which ready steps their limits hold back (a ready step whose concurrency key
/// has `max` steps running, or whose rate key had `limit` starts in the last window),
/// and shows the limits of ready and running steps.
pub fn with_limits(mut ex: Explanation, limits: Vec<StepLimitState>, now: i64) -> Explanation {
    let mut by_name: HashMap<String, StepLimitState> = limits
        .into_iter()
        .map(|l| (l.step_name.clone(), l))
        .collect();
    for s in &mut ex.steps {
        if s.state != "ready" && s.state != "running" {
            continue;
        }
        let Some(l) = by_name.remove(&s.name) else {
            continue;
        };
        if s.status == "waiting_for_worker" {
            let mut why = Vec::new();
            if let Some(c) = l.concurrency.as_ref().filter(|c| c.running >= c.max) {
                why.push(format!(
                    "concurrency key `{}` has {} of {} running",
                    c.key, c.running, c.max
                ));
            }
            if let Some(r) = l.rate.as_ref().filter(|r| r.running >= r.max) {
                let free = r.next_free_at.map_or(now, |t| t.0);
                why.push(format!(
                    "rate key `{}` had {} of {} starts in the last {} ms; next start at {} (in {} ms)",
                    r.key,
                    r.running,
                    r.max,
                    r.per_ms.unwrap_or(0),
                    rfc3339(free),
                    (free - now).max(0)
                ));
            }
            if !why.is_empty() {
                s.status = "held_by_limit";
                s.reason = format!("ready; held back: {}", why.join("; "));
            }
        }
        s.limits = Some(StepLimits {
            concurrency: l.concurrency,
            rate: l.rate,
        });
    }
    ex
}
