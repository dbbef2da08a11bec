//! Pieces every store shares: transition rows, task counter deltas, and the decision
//! taken for a failed attempt, the pick of a template version, stored JSON handed back
//! raw. No queries here.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::model::events::reason;
use crate::model::retry::{self, RetryPolicy};

/// One row for the transitions table.
#[derive(Debug, Clone)]
pub struct Tr {
    pub task_id: i64,
    pub step_id: Option<i64>,
    pub step_name: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub attempt: Option<i64>,
    pub worker: Option<String>,
    pub reason: Option<&'static str>,
    /// JSON text.
    pub details: Option<String>,
}

impl Tr {
    pub fn task(task_id: i64, from: Option<&str>, to: &str, why: &'static str) -> Tr {
        Tr {
            task_id,
            step_id: None,
            step_name: None,
            from: from.map(str::to_owned),
            to: to.to_owned(),
            attempt: None,
            worker: None,
            reason: Some(why),
            details: None,
        }
    }

    pub fn step(
        task_id: i64,
        step_id: i64,
        name: &str,
        from: Option<&str>,
        to: &str,
        why: &'static str,
    ) -> Tr {
        Tr {
            task_id,
            step_id: Some(step_id),
            step_name: Some(name.to_owned()),
            from: from.map(str::to_owned),
            to: to.to_owned(),
            attempt: None,
            worker: None,
            reason: Some(why),
            details: None,
        }
    }

    pub fn attempt(mut self, attempt: i64, worker: Option<String>) -> Tr {
        self.attempt = Some(attempt);
        self.worker = worker;
        self
    }

    pub fn details(mut self, details: Option<String>) -> Tr {
        self.details = details;
        self
    }

    pub fn to_json(&self) -> Value {
        json!([
            self.task_id,
            self.step_id,
            self.step_name,
            self.from,
            self.to,
            self.attempt,
            self.worker,
            self.reason,
            self.details
        ])
    }
}

/// Changes to a task's step counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delta {
    pub active: i64,
    pub done: i64,
    pub error: i64,
}

pub type Deltas = HashMap<i64, Delta>;

pub fn bump(deltas: &mut Deltas, task_id: i64, f: impl FnOnce(&mut Delta)) {
    f(deltas.entry(task_id).or_default());
}

/// A failed attempt's new step state, applied by each store's `apply_failures`.
#[derive(Debug, Clone)]
pub struct FailedStep {
    pub step_id: i64,
    pub task_id: i64,
    pub name: String,
    pub attempt: i64,
    pub worker: Option<String>,
    /// `ready` (retry scheduled at `ready_at`) or `error`.
    pub state: &'static str,
    pub ready_at: Option<i64>,
    pub error_json: String,
    pub reason: &'static str,
}

/// The columns a failure decision needs.
pub struct Held {
    pub id: i64,
    pub task_id: i64,
    pub name: String,
    pub attempts: i64,
    pub retry_base: i64,
    pub worker: Option<String>,
    pub policy: RetryPolicy,
    pub started_at: i64,
    pub timeout_ms: i64,
}

/// Applies the retry policy to one failed attempt.
pub fn decide(
    h: &Held,
    retryable: bool,
    retry_after_ms: Option<u64>,
    error_json: String,
    why: &'static str,
    now: i64,
) -> FailedStep {
    let attempt = (h.attempts - h.retry_base).max(1) as u32;
    let outcome = retry::after_failure(
        &h.policy,
        attempt,
        retryable,
        retry_after_ms,
        fastrand::f64(),
    );
    let (state, ready_at) = match outcome {
        retry::Outcome::Retry { delay_ms } => ("ready", Some(now + delay_ms as i64)),
        retry::Outcome::Exhausted | retry::Outcome::Permanent => ("error", None),
    };
    let why = match (why, state) {
        (reason::FAILED, "ready") => reason::RETRY_SCHEDULED,
        (w, _) => w,
    };
    FailedStep {
        step_id: h.id,
        task_id: h.task_id,
        name: h.name.clone(),
        attempt: h.attempts,
        worker: h.worker.clone(),
        state,
        ready_at,
        error_json,
        reason: why,
    }
}

/// The failed attempt recorded for a step whose lease ran out: `timeout` when the step
/// ran past its timeout, else `lease_expired` (the worker stopped or stalled).
pub fn expired(held: &Held, now: i64) -> FailedStep {
    let timed_out = now >= held.started_at + held.timeout_ms;
    let (kind, why, message) = if timed_out {
        (
            "timeout",
            reason::TIMEOUT,
            format!("step ran past its timeout of {} ms", held.timeout_ms),
        )
    } else {
        (
            "lease_expired",
            reason::LEASE_EXPIRED,
            format!(
                "the lease of worker {} expired without a result (the worker stopped or stalled)",
                held.worker.as_deref().unwrap_or("?")
            ),
        )
    };
    let error = json!({ "message": message, "kind": kind, "retryable": true });
    decide(held, true, None, error.to_string(), why, now)
}

/// The columns a `TaskSummary` is read from, in the order both stores' row readers expect.
pub const SUMMARY_COLUMNS: &str =
    "id, namespace, name, version, state, priority, idempotency_key, n_total, n_done, n_error, created_at, started_at, finished_at";

/// Of a template's stored `(version, body)` rows, the one asked for: `version` exactly,
/// or the highest version when none is given.
pub fn pick_template(
    rows: impl IntoIterator<Item = (String, String)>,
    version: Option<&str>,
) -> crate::error::Result<Option<crate::model::template::Template>> {
    let mut best: Option<(String, String)> = None;
    for (v, body) in rows {
        match version {
            Some(want) if want == v => {
                best = Some((v, body));
                break;
            }
            Some(_) => {}
            None => {
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| crate::model::template::compare_versions(&v, b).is_gt())
                {
                    best = Some((v, body));
                }
            }
        }
    }
    best.map(|(_, body)| {
        serde_json::from_str(&body).map_err(|e| {
            crate::error::Error::internal(format!("stored template is unreadable: {e}"))
        })
    })
    .transpose()
}

/// Summaries of stored templates from `(namespace, name, version, body, created_at)`
/// rows, sorted by namespace, name and version.
pub fn template_summaries(
    rows: Vec<(String, String, String, String, i64)>,
) -> crate::error::Result<Vec<crate::store::TemplateSummary>> {
    let mut out = rows
        .into_iter()
        .map(|(namespace, name, version, body, at)| {
            let t: crate::model::template::Template = serde_json::from_str(&body).map_err(|e| {
                crate::error::Error::internal(format!("stored template is unreadable: {e}"))
            })?;
            Ok(crate::store::TemplateSummary {
                namespace,
                name,
                version,
                description: t.description,
                steps: t.steps.len(),
                registered_at: crate::store::Ts(at),
            })
        })
        .collect::<crate::error::Result<Vec<_>>>()?;
    out.sort_by(|a, b| {
        (&a.namespace, &a.name)
            .cmp(&(&b.namespace, &b.name))
            .then_with(|| crate::model::template::compare_versions(&a.version, &b.version))
    });
    Ok(out)
}

/// The handler names of every step of the stored template bodies, sorted, once each.
pub fn handlers_of(bodies: impl IntoIterator<Item = String>) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        steps: Vec<StepBody>,
    }
    #[derive(serde::Deserialize)]
    struct StepBody {
        handler: String,
        #[serde(default)]
        fan_out: Option<FanOutBody>,
    }
    #[derive(serde::Deserialize)]
    struct FanOutBody {
        handler: String,
    }
    let mut names = std::collections::BTreeSet::new();
    for body in bodies {
        // An unreadable body is reported where it is used (get_template); here it
        // only contributes no names.
        if let Ok(b) = serde_json::from_str::<Body>(&body) {
            // A fan-out step's instances run its `fan_out.handler`.
            names.extend(
                b.steps
                    .into_iter()
                    .map(|s| s.fan_out.map_or(s.handler, |f| f.handler)),
            );
        }
    }
    names.into_iter().collect()
}

/// Stored JSON text handed back untouched (never re-parsed into a `Value`).
pub fn raw_opt(
    text: Option<String>,
) -> crate::error::Result<Option<Box<serde_json::value::RawValue>>> {
    text.map(|t| {
        serde_json::value::RawValue::from_string(t)
            .map_err(|e| crate::error::Error::internal(format!("stored JSON is invalid: {e}")))
    })
    .transpose()
}

pub fn ts(v: Option<i64>) -> Option<super::Ts> {
    v.map(super::Ts)
}

/// The `conflict` of a registration whose definition differs from the registered one
/// (`registered` is `None` when the stored body no longer reads as a template).
pub fn template_conflict(
    registered: Option<&crate::model::template::Template>,
    t: &crate::model::template::Template,
) -> crate::error::Error {
    match registered {
        Some(r) => crate::model::template_diff::conflict(r, t),
        None => crate::error::Error::new(
            crate::error::ErrorCode::Conflict,
            format!(
                "template {}/{} {} is already registered with a definition this version \
                 cannot read; register the template under a new version, or pass \
                 replace: true to overwrite it",
                t.namespace, t.name, t.version
            ),
        )
        .with_details(json!({ "namespace": t.namespace, "name": t.name, "version": t.version })),
    }
}

/// The `not_found` for a step named by task and name: the task does not exist, or it
/// has no step of that name (then its steps are listed, with the nearest name).
pub fn missing_named_step(
    task_id: i64,
    step_name: &str,
    task_exists: bool,
    names: &[String],
) -> crate::error::Error {
    if !task_exists {
        return crate::error::Error::not_found(format!("task {task_id} does not exist"))
            .with_details(json!({ "task_id": task_id }));
    }
    let hint = crate::model::suggest::did_you_mean(step_name, names.iter().map(String::as_str))
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    crate::error::Error::not_found(format!(
        "task {task_id} has no step `{step_name}`; {hint}its steps are: {}",
        names.join(", ")
    ))
    .with_details(json!({ "task_id": task_id, "step_name": step_name, "steps": names }))
}

/// The details of the transitions a task timeout writes (`reason: timeout`).
pub fn task_timeout_details(timeout_ms: Option<i64>) -> String {
    let s = timeout_ms.unwrap_or(0) / 1000;
    json!({
        "reason": "timeout",
        "timeout_s": s,
        "message": format!("the task ran past its timeout of {s} s"),
    })
    .to_string()
}

/// A `lease_lost` for a step that its task's timeout cancelled (the step `cancelled`,
/// the task `error`: nothing else leaves that pair) says so, so the worker raises the
/// stop signal `task_timeout`.
pub fn mark_task_timeout(
    mut e: crate::error::Error,
    state: &str,
    task_state: &str,
) -> crate::error::Error {
    if state == "cancelled" && task_state == "error" {
        if let Some(Value::Object(d)) = e.details.as_mut() {
            d.insert("task_timed_out".into(), Value::Bool(true));
        }
        e.message = format!("{} (its task ran past its timeout)", e.message);
    }
    e
}

/// The `invalid_state` of resolving a step of a delayed task before it came due: its
/// steps start at its due time (cancel it to stop it).
pub fn delayed_task_refusal(task_id: i64, step: &str, due_at: i64) -> crate::error::Error {
    crate::error::Error::invalid_state(format!(
        "task {task_id} is delayed until {}; its step `{step}` cannot be resolved before the \
         task starts (cancel the task to stop it)",
        crate::time::rfc3339(due_at)
    ))
    .with_details(
        json!({ "task_id": task_id, "step_name": step, "run_at": crate::time::rfc3339(due_at) }),
    )
}
