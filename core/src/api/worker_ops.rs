//! The worker session operations' JSON: request shapes and their checks, responses.
//! What the operations do is in `crate::worker::sessions`; `docs/api.md` and
//! `docs/workers.md` document them.

use std::sync::Arc;

use super::ops::{failure_fields, to_string, MAX_BATCH_ITEMS};
use super::validate::{field_error, Fields, MAX_TEXT_BYTES};
use crate::engine::{Engine, MAX_CLAIM_HANDLERS};
use crate::error::{Error, Result};
use crate::worker::sessions::{NextRequest, OpenRequest, Outcome, OutcomeItem};

/// Longest handler name or worker name / id (as in templates and `claim`).
const NAME_MAX: usize = 256;
/// Most handlers one host may run at once (`concurrency`).
const CONCURRENCY_MAX: i64 = 1000;

fn worker_id(f: &mut Fields) -> Result<String> {
    f.req_string("worker_id", 1, NAME_MAX)
}

/// `max` (0 to the session's batch, checked by the session) and `wait_ms`.
fn next_fields(f: &mut Fields, claim_limit_max: u32) -> Result<(Option<u32>, u64)> {
    let max = f.int("max", 0, i64::from(claim_limit_max))?;
    let wait_ms = f.duration_ms("wait_ms", 0)?;
    Ok((max.map(|m| m as u32), wait_ms.unwrap_or(0)))
}

fn outcome(mut o: Fields, index: usize) -> Result<OutcomeItem> {
    let step_id = o.req_id("step_id")?;
    let result = o.payload_or_null("result")?;
    let error = match o.error_document("error")? {
        Some(doc) => Some(failure_fields(doc)?),
        None => None,
    };
    let invalid_result = o.string("invalid_result", 0, MAX_TEXT_BYTES * 16)?;
    let release = o.bool("release")?;
    let wait = o.bool("wait_for_children")?;
    o.finish(&[
        "step_id",
        "result",
        "error",
        "invalid_result",
        "release",
        "wait_for_children",
    ])?;
    let outcome = match (result, error, invalid_result, release, wait) {
        (Some(r), None, None, None, None) => Outcome::Result(r),
        (None, Some(e), None, None, None) => Outcome::Error(e),
        (None, None, Some(why), None, None) => Outcome::InvalidResult(why),
        (None, None, None, Some(true), None) => Outcome::Release,
        (None, None, None, None, Some(true)) => Outcome::WaitForChildren,
        _ => {
            return Err(Error::invalid_argument(format!(
                "outcomes[{index}]: give the step_id and exactly one of `result`, `error`, `invalid_result`, `release: true` or `wait_for_children: true`"
            ))
            .with_details(serde_json::json!({ "field": format!("outcomes[{index}]") })))
        }
    };
    Ok(OutcomeItem { step_id, outcome })
}

/// Runs a worker session operation on a request the validator has read (`f`).
pub async fn dispatch(engine: &Arc<Engine>, op: &str, mut f: Fields) -> Result<String> {
    let workers = &engine.workers;
    let claim_limit_max = engine.config().claim_limit_max;
    match op {
        "worker_open" => {
            let Some(handlers) = f.strings("handlers", (1, MAX_CLAIM_HANDLERS), (1, NAME_MAX))?
            else {
                return Err(field_error(
                    "handlers",
                    format!(
                        "missing (expected an array of 1 to {MAX_CLAIM_HANDLERS} handler names)"
                    ),
                ));
            };
            let concurrency = f.int("concurrency", 1, CONCURRENCY_MAX)?;
            let batch = f.int("batch", 1, i64::from(claim_limit_max))?;
            let lease_ms = f.int("lease_ms", 10, 86_400_000)?.map(|l| l as u64);
            let name = f.string("name", 1, 200)?;
            f.finish(&["handlers", "concurrency", "batch", "lease_ms", "name"])?;
            let opened = workers
                .open(
                    engine,
                    OpenRequest {
                        handlers,
                        concurrency: concurrency.map(|c| c as u32),
                        batch: batch.map(|b| b as u32),
                        lease_ms,
                        name,
                    },
                )
                .await?;
            to_string(&opened)
        }
        "worker_next" => {
            let id = worker_id(&mut f)?;
            let (max, wait_ms) = next_fields(&mut f, claim_limit_max)?;
            f.finish(&["worker_id", "max", "wait_ms"])?;
            let page = workers.next(engine, &id, max, wait_ms).await?;
            to_string(&page)
        }
        "worker_report" => {
            let id = worker_id(&mut f)?;
            let Some(items) = f.objects("outcomes", MAX_BATCH_ITEMS)? else {
                return Err(field_error(
                    "outcomes",
                    format!("missing (expected an array of at most {MAX_BATCH_ITEMS} objects)"),
                ));
            };
            let outcomes = items
                .into_iter()
                .enumerate()
                .map(|(i, o)| outcome(o, i))
                .collect::<Result<Vec<_>>>()?;
            let next = match f.object("next")? {
                Some(mut n) => {
                    let (max, wait_ms) = next_fields(&mut n, claim_limit_max)?;
                    n.finish(&["max", "wait_ms"])?;
                    Some(NextRequest { max, wait_ms })
                }
                None => None,
            };
            f.finish(&["worker_id", "outcomes", "next"])?;
            let reported = workers.report(engine, &id, outcomes, next).await?;
            to_string(&reported)
        }
        "worker_close" => {
            let id = worker_id(&mut f)?;
            let grace_ms = f.duration_ms("grace_ms", 0)?;
            f.finish(&["worker_id", "grace_ms"])?;
            let closed = workers.close(engine, &id, grace_ms.unwrap_or(0)).await?;
            to_string(&closed)
        }
        "worker_stats" => {
            let id = worker_id(&mut f)?;
            f.finish(&["worker_id"])?;
            to_string(&workers.stats(&id)?)
        }
        other => Err(Error::internal(format!(
            "`{other}` is not a worker operation"
        ))),
    }
}
