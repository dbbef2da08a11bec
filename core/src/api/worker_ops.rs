//! The worker session operations' JSON: request shapes and their checks, responses.
//! What the operations do is in `crate::worker::sessions`; `docs/api.md` and
//! `docs/workers.md` document them.

use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::ops::{parse_json, to_string, ErrorDoc};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::worker::sessions::{NextRequest, OpenRequest, Outcome, OutcomeItem};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenReq {
    handlers: Vec<String>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    batch: Option<u32>,
    #[serde(default)]
    lease_ms: Option<u64>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextReq {
    worker_id: String,
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportNext {
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `Some(raw)` for any JSON value, `null` included (a plain `Option` would read a
/// `null` result as "no result").
fn some_raw<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeReq {
    step_id: i64,
    #[serde(default, deserialize_with = "some_raw")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ErrorDoc>,
    #[serde(default)]
    invalid_result: Option<String>,
    #[serde(default)]
    release: Option<bool>,
}

impl OutcomeReq {
    fn into_item(self, index: usize) -> Result<OutcomeItem> {
        let outcome = match (self.result, self.error, self.invalid_result, self.release) {
            (Some(r), None, None, None) => Outcome::Result(r),
            (None, Some(e), None, None) => Outcome::Error(e.into_failure()?),
            (None, None, Some(why), None) => Outcome::InvalidResult(why),
            (None, None, None, Some(true)) => Outcome::Release,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "outcomes[{index}]: give the step_id and exactly one of `result`, `error`, `invalid_result` or `release: true`"
                ))
                .with_details(serde_json::json!({ "field": format!("outcomes[{index}]") })))
            }
        };
        Ok(OutcomeItem {
            step_id: self.step_id,
            outcome,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportReq {
    worker_id: String,
    outcomes: Vec<OutcomeReq>,
    #[serde(default)]
    next: Option<ReportNext>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseReq {
    worker_id: String,
    #[serde(default)]
    grace_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsReq {
    worker_id: String,
}

pub async fn dispatch(engine: &Arc<Engine>, op: &str, request: &str) -> Result<String> {
    let workers = &engine.workers;
    match op {
        "worker_open" => {
            let r: OpenReq = parse_json(request)?;
            let opened = workers
                .open(
                    engine,
                    OpenRequest {
                        handlers: r.handlers,
                        concurrency: r.concurrency,
                        batch: r.batch,
                        lease_ms: r.lease_ms,
                        name: r.name,
                    },
                )
                .await?;
            to_string(&opened)
        }
        "worker_next" => {
            let r: NextReq = parse_json(request)?;
            let page = workers
                .next(engine, &r.worker_id, r.max, r.wait_ms.unwrap_or(0))
                .await?;
            to_string(&page)
        }
        "worker_report" => {
            let r: ReportReq = parse_json(request)?;
            let outcomes = r
                .outcomes
                .into_iter()
                .enumerate()
                .map(|(i, o)| o.into_item(i))
                .collect::<Result<Vec<_>>>()?;
            let next = r.next.map(|n| NextRequest {
                max: n.max,
                wait_ms: n.wait_ms.unwrap_or(0),
            });
            let reported = workers.report(engine, &r.worker_id, outcomes, next).await?;
            to_string(&reported)
        }
        "worker_close" => {
            let r: CloseReq = parse_json(request)?;
            let closed = workers
                .close(engine, &r.worker_id, r.grace_ms.unwrap_or(0))
                .await?;
            to_string(&closed)
        }
        "worker_stats" => {
            let r: StatsReq = parse_json(request)?;
            to_string(&workers.stats(&r.worker_id)?)
        }
        other => Err(Error::internal(format!(
            "`{other}` is not a worker operation"
        ))),
    }
}
