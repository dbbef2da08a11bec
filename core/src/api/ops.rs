//! The JSON operations: request shapes, validation of raw input, dispatch to the engine
//! and response shapes. `docs/api.md` documents each; a test runs its examples.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::engine::{Claim, CreateTask, Engine, StepFailure};
use crate::error::{Error, ErrorCode, Result};
use crate::model::template::{self, TemplateDoc};
use crate::store::{Completion, StepRef, TaskFilter};

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

/// Runs operation `op` with JSON `request` and returns the JSON response.
pub async fn dispatch(engine: &Arc<Engine>, op: &str, request: &str) -> Result<String> {
    if request.len() > engine.config().max_request_bytes {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!(
                "request is {} bytes; the limit is {} (max_request_bytes)",
                request.len(),
                engine.config().max_request_bytes
            ),
        ));
    }
    let request = if request.trim().is_empty() {
        "{}"
    } else {
        request
    };
    let response = match op {
        "ping" => {
            let _: Empty = parse_json(request)?;
            return Ok(format!(r#"{{"ok":true,"version":"{}"}}"#, crate::VERSION));
        }
        "register_template" => register_template(engine, parse_json(request)?).await?,
        "validate_template" => {
            let r: TemplateSource = parse_json(request)?;
            let path = r.path.clone();
            let t = engine
                .validate_template(r.load()?)
                .map_err(|e| name_file(e, path.as_deref()))?;
            json!({ "valid": true, "template": t.to_value() })
        }
        "get_template" => {
            let r: GetTemplate = parse_json(request)?;
            let c = engine
                .find_template(&r.namespace, &r.name, r.version.as_deref())
                .await?;
            json!({ "template": c.template.to_value() })
        }
        "create_task" => {
            let r: CreateTaskReq = parse_json(request)?;
            let created = engine
                .create_task(CreateTask {
                    namespace: r.namespace,
                    name: r.name,
                    version: r.version,
                    context: r.context,
                    idempotency_key: r.idempotency_key,
                    priority: r.priority.unwrap_or(0),
                })
                .await?;
            return to_string(&created);
        }
        "claim" => {
            let r: ClaimReq = parse_json(request)?;
            let batch = engine
                .claim(Claim {
                    handlers: r.handlers,
                    limit: r.limit.unwrap_or(1),
                    wait_ms: r.wait_ms.unwrap_or(0),
                    worker: r.worker_id.unwrap_or_else(|| "anonymous".into()),
                    lease_ms: r.lease_ms,
                })
                .await?;
            return to_string(&ClaimResponse {
                steps: &batch.steps,
                next_ready_at: batch.next_ready_at.map(crate::store::Ts),
            });
        }
        "heartbeat" => {
            let r: HeartbeatReq = parse_json(request)?;
            let at = engine
                .heartbeat(r.step_id, token(&r.claim_token)?, r.lease_ms)
                .await?;
            json!({ "step_id": r.step_id, "lease_expires_at": crate::time::rfc3339(at) })
        }
        "complete_step" => {
            let r: CompletionReq = parse_json(request)?;
            let step_id = r.step_id;
            let mut out = engine.complete_steps(vec![r.into_completion()?]).await?;
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
            let r: CompleteStepsReq = parse_json(request)?;
            let items = r
                .items
                .into_iter()
                .map(CompletionReq::into_completion)
                .collect::<Result<Vec<_>>>()?;
            let next = r.claim.map(|c| Claim {
                handlers: c.handlers,
                limit: c.limit.unwrap_or(1),
                wait_ms: 0,
                worker: c.worker_id.unwrap_or_else(|| "anonymous".into()),
                lease_ms: c.lease_ms,
            });
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
            let r: FailReq = parse_json(request)?;
            let failure = r.error.into_failure()?;
            let out = engine
                .fail_step(r.step_id, token(&r.claim_token)?, failure)
                .await?;
            return to_string(&out);
        }
        "release_step" => {
            let r: ReleaseReq = parse_json(request)?;
            let at = engine
                .release_step(
                    r.step_id,
                    token(&r.claim_token)?,
                    r.delay_ms.unwrap_or(0),
                    r.reason,
                )
                .await?;
            json!({ "step_id": r.step_id, "state": "ready", "ready_at": crate::time::rfc3339(at) })
        }
        "cancel_task" => {
            let r: CancelReq = parse_json(request)?;
            return to_string(&engine.cancel_task(r.task_id, r.reason).await?);
        }
        "retry_step" => {
            let r: StepTarget = parse_json(request)?;
            return to_string(&engine.retry_step(r.into_ref()?).await?);
        }
        "resolve_step" => {
            let r: ResolveReq = parse_json(request)?;
            let target = StepTarget {
                step_id: r.step_id,
                task_id: r.task_id,
                step_name: r.step_name,
            };
            return to_string(
                &engine
                    .resolve_step(target.into_ref()?, r.result, r.reason)
                    .await?,
            );
        }
        "get_task" => {
            let r: TaskIdReq = parse_json(request)?;
            let view = engine.get_task(r.task_id).await?;
            return to_string(&TaskResponse { task: &view });
        }
        "list_tasks" => {
            let r: ListReq = parse_json(request)?;
            let limit = r.limit.unwrap_or(engine.config().list_page_default);
            let tasks = engine
                .list_tasks(TaskFilter {
                    state: r.state,
                    namespace: r.namespace,
                    name: r.name,
                    before_id: r.cursor,
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
            let r: TaskIdReq = parse_json(request)?;
            return to_string(&engine.explain_task(r.task_id).await?);
        }
        "stats" => {
            let r: StatsReq = parse_json(request)?;
            return to_string(&engine.stats(r.window_ms).await?);
        }
        "events" => {
            let r: EventsReq = parse_json(request)?;
            if let Some(types) = &r.types {
                if let Some(bad) = types
                    .iter()
                    .find(|t| !crate::model::events::ALL.contains(&t.as_str()))
                {
                    return Err(Error::invalid_argument(format!(
                        "unknown event type `{bad}`"
                    )));
                }
            }
            let (events, next) = engine
                .events(
                    r.since.unwrap_or(0),
                    r.limit.unwrap_or(engine.config().event_page_default),
                    r.wait_ms.unwrap_or(0),
                    r.task_id,
                    r.types.as_deref(),
                )
                .await?;
            return to_string(&EventsResponse {
                events: &events,
                next_cursor: next,
            });
        }
        "sweep" => {
            let _: Empty = parse_json(request)?;
            json!({ "expired": engine.sweep().await? })
        }
        "migrate" => {
            let _: Empty = parse_json(request)?;
            json!({ "applied": engine.migrate().await? })
        }
        "worker_open" | "worker_next" | "worker_report" | "worker_close" | "worker_stats" => {
            return super::worker_ops::dispatch(engine, op, request).await
        }
        other => {
            return Err(Error::new(
                ErrorCode::UnknownOperation,
                format!("unknown operation `{other}`"),
            )
            .with_details(json!({ "operations": OPERATIONS })))
        }
    };
    to_string(&response)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Where a template comes from: a JSON object, YAML/JSON text, or a file path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSource {
    #[serde(default)]
    template: Option<Value>,
    #[serde(default)]
    yaml: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

impl TemplateSource {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterReq {
    #[serde(flatten)]
    source: TemplateSourceFields,
    #[serde(default)]
    replace: bool,
}

/// `TemplateSource` without `deny_unknown_fields` (flatten does not support it).
#[derive(Deserialize)]
struct TemplateSourceFields {
    #[serde(default)]
    template: Option<Value>,
    #[serde(default)]
    yaml: Option<String>,
    #[serde(default)]
    path: Option<String>,
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

async fn register_template(engine: &Engine, r: RegisterReq) -> Result<Value> {
    let path = r.source.path.clone();
    let source = TemplateSource {
        template: r.source.template,
        yaml: r.source.yaml,
        path: r.source.path,
    };
    let (t, changed) = engine
        .register_template(source.load()?, r.replace)
        .await
        .map_err(|e| name_file(e, path.as_deref()))?;
    let mut summary = t.summary();
    summary.insert("registered".into(), json!(changed));
    Ok(Value::Object(summary))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTemplate {
    namespace: String,
    name: String,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTaskReq {
    namespace: String,
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    context: Option<Box<RawValue>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimReq {
    handlers: Vec<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    worker_id: Option<String>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

#[derive(serde::Serialize)]
struct ClaimResponse<'a> {
    steps: &'a [crate::store::ClaimedStep],
    /// When nothing was claimed: when the next retry of these handlers comes due.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_ready_at: Option<crate::store::Ts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatReq {
    step_id: i64,
    claim_token: String,
    #[serde(default)]
    lease_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionReq {
    step_id: i64,
    claim_token: String,
    #[serde(default)]
    result: Option<Box<RawValue>>,
}

impl CompletionReq {
    fn into_completion(self) -> Result<Completion> {
        Ok(Completion {
            step_id: self.step_id,
            claim_token: token(&self.claim_token)?,
            result: match self.result {
                Some(r) => r,
                None => RawValue::from_string("null".into()).map_err(internal)?,
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteStepsReq {
    items: Vec<CompletionReq>,
    /// Claim the next batch in the same transaction (never waits).
    #[serde(default)]
    claim: Option<NextClaimReq>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextClaimReq {
    handlers: Vec<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    worker_id: Option<String>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

#[derive(serde::Serialize)]
struct CompleteAndClaimResponse<'a> {
    results: &'a [crate::store::ItemOutcome],
    steps: &'a [crate::store::ClaimedStep],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailReq {
    step_id: i64,
    claim_token: String,
    error: ErrorDoc,
}

/// A handler's failure: `message` is required; `kind` names the error class;
/// `retryable` defaults to true; anything else (`details`, `backtrace`) is stored.
#[derive(Deserialize)]
pub(crate) struct ErrorDoc {
    message: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl ErrorDoc {
    pub(crate) fn into_failure(self) -> Result<StepFailure> {
        let kind = self.kind.unwrap_or_else(|| "error".into());
        let retryable = self.retryable.unwrap_or(true);
        let mut document = self.rest;
        document.insert("message".into(), json!(self.message));
        document.insert("kind".into(), json!(kind));
        document.insert("retryable".into(), json!(retryable));
        if let Some(ms) = self.retry_after_ms {
            document.insert("retry_after_ms".into(), json!(ms));
        }
        Ok(StepFailure {
            message: self.message,
            kind,
            retryable,
            retry_after_ms: self.retry_after_ms,
            document: Value::Object(document),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseReq {
    step_id: i64,
    claim_token: String,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelReq {
    task_id: i64,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepTarget {
    #[serde(default)]
    step_id: Option<i64>,
    #[serde(default)]
    task_id: Option<i64>,
    #[serde(default)]
    step_name: Option<String>,
}

impl StepTarget {
    fn into_ref(self) -> Result<StepRef> {
        match (self.step_id, self.task_id, self.step_name) {
            (Some(id), None, None) => Ok(StepRef::Id(id)),
            (None, Some(task_id), Some(step_name)) => Ok(StepRef::Named { task_id, step_name }),
            _ => Err(Error::invalid_argument(
                "name the step by `step_id`, or by `task_id` and `step_name`",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveReq {
    #[serde(default)]
    step_id: Option<i64>,
    #[serde(default)]
    task_id: Option<i64>,
    #[serde(default)]
    step_name: Option<String>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskIdReq {
    task_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListReq {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsReq {
    /// The throughput window (default `stats_window_ms`).
    #[serde(default)]
    window_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsReq {
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    task_id: Option<i64>,
    #[serde(default)]
    types: Option<Vec<String>>,
}
