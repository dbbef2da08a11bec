//! The JSON operations: request shapes, validation of raw input, dispatch to the engine
//! and response shapes. `docs/api.md` documents each; a test runs its examples.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::engine::{in_batch, Claim, CreateTask, Engine, StepFailure, MAX_CREATE_BATCH};
use crate::error::{Error, ErrorCode, Result};
use crate::model::template::{self, TemplateDoc};
use crate::store::{Completion, StepRef, TaskFilter};

use super::validate::{self, Fields, MAX_ID, MAX_PRIORITY, MAX_TEXT_BYTES};

/// Every operation name, in documentation order.
pub const OPERATIONS: &[&str] = &[
    "ping",
    "register_template",
    "validate_template",
    "get_template",
    "create_task",
    "claim",
    "heartbeat",
    "complete_step",
    "complete_steps",
    "fail_step",
    "release_step",
    "cancel_task",
    "retry_step",
    "resolve_step",
    "get_task",
    "list_tasks",
    "explain_task",
    "stats",
    "events",
    "sweep",
    "migrate",
    "worker_open",
    "worker_next",
    "worker_report",
    "worker_close",
    "worker_stats",
    "create_tasks",
    "advance_clock",
    "next_ready_at",
    "list_templates",
    "create_schedule",
    "list_schedules",
    "get_schedule",
    "pause_schedule",
    "resume_schedule",
    "delete_schedule",
    "send_signal",
];

/// Parses JSON, telling malformed JSON (`invalid_json`) from well-formed JSON of the
/// wrong shape (`invalid_argument`).
pub fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    use serde_json::error::Category;
    let syntax = |e: serde_json::Error| {
        Error::new(
            ErrorCode::InvalidJson,
            format!("request is not valid JSON: {e}"),
        )
    };
    serde_json::from_str(text).map_err(|e| match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => syntax(e),
        // A shape error may be found before a syntax error later in the text: broken
        // JSON must still be reported as broken JSON.
        Category::Data => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(e) => syntax(e),
            Ok(_) => Error::invalid_argument(format!("invalid request: {e}")),
        },
    })
}

/// Largest number of items one `complete_steps` request may report.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// Runs operation `op` with JSON `request` and returns the JSON response. Every request
/// is checked by [`validate`](super::validate) before the engine (and any SQL) runs.
pub async fn dispatch(engine: &Arc<Engine>, op: &str, request: &str) -> Result<String> {
    let config = engine.config();
    if request.len() > config.max_request_bytes {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "request is {} bytes; the limit is {} (max_request_bytes)",
                request.len(),
                config.max_request_bytes
            ),
        ));
    }
    let request = if request.trim().is_empty() {
        "{}"
    } else {
        request
    };
    if !OPERATIONS.contains(&op) {
        return Err(Error::new(
            ErrorCode::UnknownOperation,
            format!("unknown operation `{op}`"),
        )
        .with_details(json!({ "operations": OPERATIONS })));
    }
    let mut f = Fields::parse_request(request, config.max_json_depth)?;
    let response = match op {
        "ping" => {
            f.finish(&[])?;
            return Ok(format!(r#"{{"ok":true,"version":"{}"}}"#, crate::VERSION));
        }
        "register_template" => {
            let source = TemplateSource::take(&mut f, config.max_request_bytes)?;
            let replace = f.bool("replace")?.unwrap_or(false);
            f.finish(&["template", "yaml", "path", "replace"])?;
            let path = source.path.clone();
            let (t, changed) = engine
                .register_template(source.load()?, replace)
                .await
                .map_err(|e| name_file(e, path.as_deref()))?;
            let mut summary = t.summary();
            summary.insert("registered".into(), json!(changed));
            // Registering at every application start is the usual pattern: the same
            // content again is a success that says nothing changed.
            summary.insert("unchanged".into(), json!(!changed));
            if !changed {
                summary.insert(
                    "note".into(),
                    json!(format!(
                        "{}/{} {} is already registered with this definition; nothing changed",
                        t.namespace, t.name, t.version
                    )),
                );
            }
            Value::Object(summary)
        }
        "validate_template" => {
            let source = TemplateSource::take(&mut f, config.max_request_bytes)?;
            f.finish(&["template", "yaml", "path"])?;
            let path = source.path.clone();
            let t = engine
                .validate_template(source.load()?)
                .map_err(|e| name_file(e, path.as_deref()))?;
            json!({ "valid": true, "template": t.to_value() })
        }
        "get_template" => {
            let namespace = f.req_string("namespace", 1, IDENT_MAX)?;
            let name = f.req_string("name", 1, IDENT_MAX)?;
            let version = f.string("version", 1, IDENT_MAX)?;
            f.finish(&["namespace", "name", "version"])?;
            let c = engine
                .find_template(&namespace, &name, version.as_deref())
                .await?;
            json!({ "template": c.template.to_value() })
        }
        "create_task" => {
            let mut req = create_fields(&mut f)?;
            // A child task (docs/scheduling.md#child-tasks): only here, not in
            // `create_tasks`, whose items reject the field as unknown.
            req.parent = match f.object("parent")? {
                Some(mut p) => {
                    let step_id = p.req_id("step_id")?;
                    let claim_token = token_field(&mut p)?;
                    p.finish(&["step_id", "claim_token"])?;
                    Some(crate::engine::children::ParentLink {
                        step_id,
                        claim_token,
                    })
                }
                None => None,
            };
            let mut fields = CREATE_FIELDS.to_vec();
            fields.push("parent");
            f.finish(&fields)?;
            return to_string(&engine.create_task(req).await?);
        }
        "create_tasks" => {
            let items = f.objects("tasks", MAX_CREATE_BATCH).map_err(|e| {
                // An item that is not an object: name its index as every item error does.
                let at = e
                    .details
                    .as_ref()
                    .and_then(|d| d["field"].as_str())
                    .and_then(|f| {
                        f.strip_prefix("tasks[")?
                            .strip_suffix(']')?
                            .parse::<usize>()
                            .ok()
                    });
                match at {
                    Some(i) => in_batch(e, i),
                    None => e,
                }
            })?;
            let Some(items) = items else {
                return Err(validate::field_error(
                    "tasks",
                    format!("missing (expected an array of at most {MAX_CREATE_BATCH} objects)"),
                ));
            };
            let reqs = items
                .into_iter()
                .enumerate()
                .map(|(i, mut item)| {
                    let req = create_fields(&mut item).map_err(|e| in_batch(e, i))?;
                    item.finish(CREATE_FIELDS).map_err(|e| in_batch(e, i))?;
                    Ok(req)
                })
                .collect::<Result<Vec<_>>>()?;
            f.finish(&["tasks"])?;
            let created = engine.create_tasks(reqs).await?;
            return to_string(&CreatedTasksResponse { tasks: &created });
        }
        "claim" => {
            let claim = claim_fields(&mut f, config, true)?;
            f.finish(CLAIM_FIELDS)?;
            let batch = engine.claim(claim).await?;
            return to_string(&ClaimResponse {
                steps: &batch.steps,
                next_ready_at: batch.next_ready_at.map(crate::store::Ts),
            });
        }
        "heartbeat" => {
            let step_id = f.req_id("step_id")?;
            let claim_token = token_field(&mut f)?;
            let lease_ms = f.duration_ms("lease_ms", 1)?;
            f.finish(&["step_id", "claim_token", "lease_ms"])?;
            let at = engine.heartbeat(step_id, claim_token, lease_ms).await?;
            json!({ "step_id": step_id, "lease_expires_at": crate::time::rfc3339(at) })
        }
        "complete_step" => {
            // Waiting for the step's child tasks instead of a result.
            let wait = f.bool("wait_for_children")?;
            let has_result = f.has("result");
            let completion = completion_fields(&mut f)?;
            let mut fields = COMPLETION_FIELDS.to_vec();
            fields.push("wait_for_children");
            f.finish(&fields)?;
            let step_id = completion.step_id;
            if wait == Some(true) {
                if has_result {
                    return Err(Error::invalid_argument(
                        "give `result` or `wait_for_children: true`, not both",
                    )
                    .with_details(json!({ "field": "wait_for_children" })));
                }
                let out = engine
                    .wait_for_children(step_id, completion.claim_token)
                    .await?;
                return Ok(json!({
                    "step_id": step_id,
                    "ok": true,
                    "waiting": true,
                    "children": out.children,
                    "unfinished": out.unfinished,
                })
                .to_string());
            }
            let mut out = engine.complete_steps(vec![completion]).await?;
            match out.pop() {
                Some(o) if o.ok => json!({ "step_id": step_id, "ok": true }),
                Some(o) => {
                    return Err(o
                        .error
                        .unwrap_or_else(|| Error::internal("completion failed without an error")))
                }
                None => return Err(Error::internal("completion returned no outcome")),
            }
        }
        "complete_steps" => {
            let Some(items) = f.objects("items", MAX_BATCH_ITEMS)? else {
                return Err(validate::field_error(
                    "items",
                    format!("missing (expected an array of at most {MAX_BATCH_ITEMS} objects)"),
                ));
            };
            let items = items
                .into_iter()
                .map(|mut item| {
                    let c = completion_fields(&mut item)?;
                    item.finish(COMPLETION_FIELDS)?;
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()?;
            let next = match f.object("claim")? {
                Some(mut c) => {
                    let claim = claim_fields(&mut c, config, false)?;
                    c.finish(&["handlers", "limit", "worker_id", "lease_ms"])?;
                    Some(claim)
                }
                None => None,
            };
            f.finish(&["items", "claim"])?;
            let wants_next = next.is_some();
            let (out, batch) = engine.complete_and_claim(items, next).await?;
            if wants_next {
                return to_string(&CompleteAndClaimResponse {
                    results: &out,
                    steps: &batch.steps,
                });
            }
            json!({ "results": out })
        }
        "fail_step" => {
            let step_id = f.req_id("step_id")?;
            let claim_token = token_field(&mut f)?;
            let failure = match f.error_document("error")? {
                Some(doc) => failure_fields(doc)?,
                None => {
                    return Err(validate::field_error(
                        "error",
                        "missing (expected an object with a `message` string)",
                    ))
                }
            };
            f.finish(&["step_id", "claim_token", "error"])?;
            let out = engine.fail_step(step_id, claim_token, failure).await?;
            return to_string(&out);
        }
        "release_step" => {
            let step_id = f.req_id("step_id")?;
            let claim_token = token_field(&mut f)?;
            let delay_ms = f.duration_ms("delay_ms", 0)?;
            let reason = f.string("reason", 0, MAX_TEXT_BYTES)?;
            f.finish(&["step_id", "claim_token", "delay_ms", "reason"])?;
            let at = engine
                .release_step(step_id, claim_token, delay_ms.unwrap_or(0), reason)
                .await?;
            json!({ "step_id": step_id, "state": "ready", "ready_at": crate::time::rfc3339(at) })
        }
        "cancel_task" => {
            let task_id = f.req_id("task_id")?;
            let reason = f.string("reason", 0, MAX_TEXT_BYTES)?;
            f.finish(&["task_id", "reason"])?;
            return to_string(&engine.cancel_task(task_id, reason).await?);
        }
        "retry_step" => {
            let target = step_target(&mut f)?;
            f.finish(&["step_id", "task_id", "step_name"])?;
            return to_string(&engine.retry_step(target).await?);
        }
        "resolve_step" => {
            let target = step_target(&mut f)?;
            let result = f.payload_or_null("result")?;
            let reason = f.string("reason", 0, MAX_TEXT_BYTES)?;
            f.finish(&["step_id", "task_id", "step_name", "result", "reason"])?;
            return to_string(&engine.resolve_step(target, result, reason).await?);
        }
        "get_task" => {
            let task_id = f.req_id("task_id")?;
            f.finish(&["task_id"])?;
            let view = engine.get_task(task_id).await?;
            return to_string(&TaskResponse { task: &view });
        }
        "list_tasks" => {
            let state = f.string("state", 1, IDENT_MAX)?;
            if let Some(s) = &state {
                if crate::model::state::TaskState::parse(s).is_none() {
                    return Err(unknown_task_state(s));
                }
            }
            let namespace = f.string("namespace", 1, IDENT_MAX)?;
            let name = f.string("name", 1, IDENT_MAX)?;
            let limit = f
                .limit("limit", config.list_page_max, "list_page_max")?
                .unwrap_or(config.list_page_default);
            let cursor = f.id("cursor")?;
            f.finish(&["state", "namespace", "name", "limit", "cursor"])?;
            let tasks = engine
                .list_tasks(TaskFilter {
                    state,
                    namespace,
                    name,
                    before_id: cursor,
                    limit,
                })
                .await?;
            let next = if tasks.len() as u32 == limit {
                tasks.last().map(|t| t.id)
            } else {
                None
            };
            return to_string(&TasksResponse {
                tasks: &tasks,
                next_cursor: next,
            });
        }
        "explain_task" => {
            let task_id = f.req_id("task_id")?;
            f.finish(&["task_id"])?;
            return to_string(&engine.explain_task(task_id).await?);
        }
        "stats" => {
            let window_ms = f.int("window_ms", 1, MAX_ID)?;
            f.finish(&["window_ms"])?;
            return to_string(&engine.stats(window_ms.map(|w| w as u64)).await?);
        }
        "events" => {
            let since = f.int("since", 0, MAX_ID)?;
            let limit = f
                .limit("limit", config.event_page_max, "event_page_max")?
                .unwrap_or(config.event_page_default);
            let wait_ms = f.duration_ms("wait_ms", 0)?;
            let task_id = f.id("task_id")?;
            let types = f.strings("types", (0, 64), (1, 64))?;
            if let Some(types) = &types {
                if let Some(bad) = types
                    .iter()
                    .find(|t| !crate::model::events::ALL.contains(&t.as_str()))
                {
                    return Err(unknown_event_type(bad));
                }
            }
            f.finish(&["since", "limit", "wait_ms", "task_id", "types"])?;
            let (events, next) = engine
                .events(
                    since.unwrap_or(0),
                    limit,
                    wait_ms.unwrap_or(0),
                    task_id,
                    types.as_deref(),
                )
                .await?;
            return to_string(&EventsResponse {
                events: &events,
                next_cursor: next,
            });
        }
        "sweep" => {
            f.finish(&[])?;
            json!({ "expired": engine.sweep().await? })
        }
        "migrate" => {
            f.finish(&[])?;
            json!({ "applied": engine.migrate().await? })
        }
        "worker_open" | "worker_next" | "worker_report" | "worker_close" | "worker_stats" => {
            return super::worker_ops::dispatch(engine, op, f).await
        }
        "list_templates" => return super::template_ops::list_templates(engine, f).await,
        "create_schedule" | "list_schedules" | "get_schedule" | "pause_schedule"
        | "resume_schedule" | "delete_schedule" => {
            return super::schedule_ops::dispatch(engine, op, f).await
        }
        "send_signal" => return super::signal_ops::send_signal(engine, f).await,
        "advance_clock" | "next_ready_at" => {
            return super::clock_ops::dispatch(engine, op, f).await
        }
        other => {
            return Err(Error::internal(format!(
                "operation `{other}` is listed but not dispatched"
            )))
        }
    };
    to_string(&response)
}

/// `invalid_argument` for a task state that is not one, listing the states (and the
/// nearest one when it looks like a typo).
pub(crate) fn unknown_task_state(s: &str) -> Error {
    use crate::model::state::TaskState;
    let states: Vec<&str> = TaskState::ALL.iter().map(|t| t.as_str()).collect();
    // The words people use for a state that has another name here.
    let synonym = match s.to_ascii_lowercase().as_str() {
        "failed" | "failure" | "fail" | "errored" | "failing" => Some("error"),
        "done" | "completed" | "finished" | "succeeded" | "success" => Some("complete"),
        "ready" | "queued" | "waiting" => Some("pending"),
        "started" | "active" | "in_progress" => Some("running"),
        _ => None,
    };
    let hint = synonym
        .or_else(|| crate::model::suggest::did_you_mean(s, states.iter().copied()))
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    Error::invalid_argument(format!(
        "unknown task state `{s}`; {hint}the states are: {}",
        states.join(", ")
    ))
    .with_details(json!({ "field": "state", "states": states }))
}

/// `invalid_argument` for an event name that is not one, with the nearest name.
pub(crate) fn unknown_event_type(bad: &str) -> Error {
    let all = crate::model::events::ALL;
    let message = match crate::model::suggest::did_you_mean(bad, all.iter().copied()) {
        Some(n) => format!(
            "unknown event type `{bad}`; did you mean `{n}`? (docs/api.md#events lists them all)"
        ),
        None => format!(
            "unknown event type `{bad}`; the event types are: {}",
            all.join(", ")
        ),
    };
    Error::invalid_argument(message).with_details(json!({ "field": "types", "types": all }))
}

/// Longest namespace, template name, version or step name (as in templates).
const IDENT_MAX: usize = 128;
/// Longest handler name (as in templates).
const HANDLER_MAX: usize = 256;

const CLAIM_FIELDS: &[&str] = &["handlers", "limit", "wait_ms", "worker_id", "lease_ms"];
const COMPLETION_FIELDS: &[&str] = &["step_id", "claim_token", "result"];

/// The fields of a claim (`claim`, and `complete_steps.claim` without `wait_ms`).
fn claim_fields(f: &mut Fields, config: &crate::config::Config, wait: bool) -> Result<Claim> {
    let Some(handlers) = f.strings(
        "handlers",
        (1, crate::engine::MAX_CLAIM_HANDLERS),
        (1, HANDLER_MAX),
    )?
    else {
        return Err(validate::field_error(
            &f.path("handlers"),
            format!(
                "missing (expected an array of 1 to {} handler names)",
                crate::engine::MAX_CLAIM_HANDLERS
            ),
        ));
    };
    let limit = f.limit("limit", config.claim_limit_max, "claim_limit_max")?;
    let wait_ms = if wait {
        f.duration_ms("wait_ms", 0)?
    } else {
        None
    };
    let worker = f.string("worker_id", 1, HANDLER_MAX)?;
    let lease_ms = f.duration_ms("lease_ms", 1)?;
    Ok(Claim {
        handlers,
        limit: limit.unwrap_or(1),
        wait_ms: wait_ms.unwrap_or(0),
        worker: worker.unwrap_or_else(|| "anonymous".into()),
        lease_ms,
    })
}

/// A claim token: the decimal text of a token this engine issued.
fn token_field(f: &mut Fields) -> Result<i64> {
    let Some(raw) = f.take_raw("claim_token") else {
        return Err(validate::field_error(
            &f.at("claim_token"),
            "missing (expected the string a claim returned)",
        ));
    };
    let s = validate::check_string(&f.at("claim_token"), &raw, 0, 64)?;
    token(&s)
}

fn completion_fields(f: &mut Fields) -> Result<Completion> {
    let step_id = f.req_id("step_id")?;
    let claim_token = token_field(f)?;
    let result = match f.payload_or_null("result")? {
        Some(r) => r,
        None => RawValue::from_string("null".into()).map_err(internal)?,
    };
    Ok(Completion {
        step_id,
        claim_token,
        result,
    })
}

/// A handler's failure: `message` is required; `kind` names the error class;
/// `retryable` defaults to true; anything else (`details`, `backtrace`) is stored.
pub(crate) fn failure_fields(mut doc: Fields) -> Result<StepFailure> {
    let message = doc.req_string("message", 0, usize::MAX)?;
    let kind = doc
        .string("kind", 0, HANDLER_MAX)?
        .unwrap_or_else(|| "error".into());
    let retryable = doc.bool("retryable")?.unwrap_or(true);
    let retry_after_ms = doc.duration_ms("retry_after_ms", 0)?;
    let mut document = serde_json::Map::new();
    for (k, raw) in doc.into_rest() {
        let v: Value = serde_json::from_str(raw.get()).map_err(|e| {
            validate::field_error(&format!("error.{k}"), format!("not a JSON value: {e}"))
        })?;
        document.insert(k, v);
    }
    document.insert("message".into(), json!(message));
    document.insert("kind".into(), json!(kind));
    document.insert("retryable".into(), json!(retryable));
    if let Some(ms) = retry_after_ms {
        document.insert("retry_after_ms".into(), json!(ms));
    }
    Ok(StepFailure {
        message,
        kind,
        retryable,
        retry_after_ms,
        document: Value::Object(document),
    })
}

/// A step named by `step_id`, or by `task_id` and `step_name`.
fn step_target(f: &mut Fields) -> Result<StepRef> {
    let step_id = f.id("step_id")?;
    let task_id = f.id("task_id")?;
    let step_name = f.string("step_name", 1, IDENT_MAX)?;
    match (step_id, task_id, step_name) {
        (Some(id), None, None) => Ok(StepRef::Id(id)),
        (None, Some(task_id), Some(step_name)) => Ok(StepRef::Named { task_id, step_name }),
        _ => Err(Error::invalid_argument(
            "name the step by `step_id`, or by `task_id` and `step_name`",
        )),
    }
}

// Responses that carry stored payloads (contexts, results, configs, error documents) are
// serialized straight from their structs: going through `serde_json::Value` (as `json!`
// does) would re-parse each payload's raw text, sorting its keys and rewriting numbers
// (`2.50` -> `2.5`). A payload comes back exactly as it was given.
#[derive(serde::Serialize)]
struct TaskResponse<'a, T: serde::Serialize> {
    task: &'a T,
}

#[derive(serde::Serialize)]
struct TasksResponse<'a, T: serde::Serialize> {
    tasks: &'a [T],
    next_cursor: Option<i64>,
}

#[derive(serde::Serialize)]
struct EventsResponse<'a, T: serde::Serialize> {
    events: &'a [T],
    next_cursor: i64,
}

fn internal(e: serde_json::Error) -> Error {
    Error::internal(format!("response could not be serialized: {e}"))
}

pub(crate) fn to_string<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(internal)
}

fn token(s: &str) -> Result<i64> {
    s.parse::<i64>().map_err(|_| {
        Error::invalid_argument(format!(
            "claim_token `{s}` is not a token this engine issued"
        ))
    })
}

/// Where a template comes from: a JSON object, YAML/JSON text, or a file path.
struct TemplateSource {
    template: Option<Value>,
    yaml: Option<String>,
    path: Option<String>,
}

/// Levels a template adds around the payloads it holds
/// (`environments.<env>.steps[i].config`).
const TEMPLATE_ENVELOPE_DEPTH: usize = 5;

impl TemplateSource {
    fn take(f: &mut Fields, max_text: usize) -> Result<TemplateSource> {
        let depth = f.max_depth() + TEMPLATE_ENVELOPE_DEPTH;
        Ok(TemplateSource {
            template: f.value("template", depth)?,
            yaml: f.string("yaml", 0, max_text)?,
            path: f.string("path", 1, 4096)?,
        })
    }

    fn load(self) -> Result<TemplateDoc> {
        match (self.template, self.yaml, self.path) {
            (Some(v), None, None) => template::parse_value(v),
            (None, Some(text), None) => template::parse_text(&text),
            (None, None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::not_found(format!("cannot read template file {path}: {e}"))
                })?;
                template::parse_text(&text).map_err(|mut e| {
                    e.message = format!("{path}: {}", e.message);
                    e
                })
            }
            _ => Err(Error::invalid_argument(
                "give exactly one of `template`, `yaml` or `path`",
            )),
        }
    }
}

/// Names the template file in an error about its content (the parser already does).
fn name_file(mut e: Error, path: Option<&str>) -> Error {
    if let Some(p) = path {
        if e.code == ErrorCode::InvalidTemplate && !e.message.starts_with(p) {
            e.message = format!("{p}: {}", e.message);
        }
    }
    e
}

#[derive(serde::Serialize)]
struct ClaimResponse<'a> {
    steps: &'a [crate::store::ClaimedStep],
    /// When nothing was claimed: when the next retry of these handlers comes due.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_ready_at: Option<crate::store::Ts>,
}

#[derive(serde::Serialize)]
struct CompleteAndClaimResponse<'a> {
    results: &'a [crate::store::ItemOutcome],
    steps: &'a [crate::store::ClaimedStep],
}

/// The fields of a `create_task` request, and of each item of `create_tasks`.
const CREATE_FIELDS: &[&str] = &[
    "namespace",
    "name",
    "version",
    "context",
    "idempotency_key",
    "priority",
    "run_at",
    "delay_ms",
    "timeout_s",
];

fn create_fields(f: &mut Fields) -> Result<CreateTask> {
    let namespace = f.req_string("namespace", 1, IDENT_MAX)?;
    let name = f.req_string("name", 1, IDENT_MAX)?;
    let version = f.string("version", 1, IDENT_MAX)?;
    let context = f.payload("context")?;
    let idempotency_key = f.string("idempotency_key", 1, 256)?;
    let priority = f.int("priority", -MAX_PRIORITY, MAX_PRIORITY)?;
    // Scheduling: a delayed start and a task timeout (docs/scheduling.md).
    let run_at = f
        .string("run_at", 1, 64)?
        .map(|t| crate::model::schedule::parse_rfc3339(&f.path("run_at"), &t))
        .transpose()?;
    let delay_ms = f.duration_ms("delay_ms", 0)?;
    if run_at.is_some() && delay_ms.is_some() {
        return Err(Error::invalid_argument(format!(
            "give `{}` or `{}`, not both",
            f.at("run_at"),
            f.at("delay_ms")
        ))
        .with_details(json!({ "field": f.path("delay_ms") })));
    }
    let timeout_s = f.int("timeout_s", 1, template::MAX_TIMEOUT_S as i64)?;
    Ok(CreateTask {
        namespace,
        name,
        version,
        context,
        idempotency_key,
        priority: priority.unwrap_or(0) as i32,
        run_at,
        delay_ms,
        timeout_s: timeout_s.map(|s| s as u64),
        parent: None,
    })
}

#[derive(serde::Serialize)]
struct CreatedTasksResponse<'a> {
    tasks: &'a [crate::store::CreatedTask],
}
