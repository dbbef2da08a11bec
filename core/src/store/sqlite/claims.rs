//! The worker path: claim, heartbeat, complete, fail, and the lease sweep.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::{AssertSqlSafe, Row};

use super::write::{self, bump, Deltas, FailedStep, Tr};
use crate::error::{Error, ErrorCode, Result};
use crate::model::events::reason;
use crate::model::retry::{self, Backoff, RetryPolicy};
use crate::store::*;

/// The claim statement for `k` handlers: one index range scan per handler (each already
/// in priority, `ready_at` order), merged, limited, and flipped to `running` in place.
/// Parameters: ?1 token, ?2 worker, ?3 now, ?4 lease ms, ?5 limit, ?6.. handlers.
pub fn claim_sql(k: usize) -> String {
    let mut inner = String::new();
    for i in 0..k {
        if i > 0 {
            inner.push_str(" UNION ALL ");
        }
        let _ = write!(
            inner,
            "SELECT * FROM (SELECT id, priority, ready_at FROM tasker_steps \
             WHERE state = 'ready' AND handler = ?{} AND ready_at <= ?3 \
             ORDER BY priority DESC, ready_at LIMIT ?5)",
            6 + i
        );
    }
    format!(
        "UPDATE tasker_steps SET state = 'running', attempts = attempts + 1, claim_token = ?1, \
         worker = ?2, started_at = ?3, first_started_at = COALESCE(first_started_at, ?3), \
         lease_expires_at = MIN(?3 + ?4, ?3 + timeout_ms), updated_at = ?3 \
         WHERE id IN (SELECT id FROM ({inner}) ORDER BY priority DESC, ready_at, id LIMIT ?5) \
         RETURNING id, task_id, name, handler, attempts, retry_base, max_attempts, \
         lease_expires_at, timeout_ms, config"
    )
}

/// A claimed row before its inputs (context, parent results) are loaded.
pub struct ClaimedRow {
    step_id: i64,
    task_id: i64,
    name: String,
    handler: String,
    attempts: i64,
    retry_base: i64,
    max_attempts: i64,
    lease_expires_at: i64,
    timeout_ms: i64,
    config: Option<String>,
    token: i64,
}

pub async fn claim(
    conn: &mut SqliteConnection,
    sql: AssertSqlSafe<Arc<str>>,
    params: ClaimParams,
) -> Result<(Vec<ClaimedRow>, Option<i64>)> {
    let token = fastrand::i64(1..(1i64 << 53));
    let mut q = sqlx::query(sql)
        .bind(token)
        .bind(params.worker.clone())
        .bind(params.now)
        .bind(params.lease_ms as i64)
        .bind(i64::from(params.limit));
    for h in &params.handlers {
        q = q.bind(h.clone());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        // Nothing claimable now: tell the waiter when the next retry comes due.
        let handlers = Value::from(params.handlers.clone()).to_string();
        let next: Option<i64> = sqlx::query(
            "SELECT MIN(ready_at) FROM tasker_steps
             WHERE state = 'ready' AND handler IN (SELECT value FROM json_each(?1))",
        )
        .bind(handlers)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        return Ok((Vec::new(), next));
    }
    let mut claimed = Vec::with_capacity(rows.len());
    let mut trs = Vec::with_capacity(rows.len() + 1);
    let mut tasks: Vec<i64> = Vec::new();
    for row in rows {
        let c = ClaimedRow {
            step_id: row.try_get(0)?,
            task_id: row.try_get(1)?,
            name: row.try_get(2)?,
            handler: row.try_get(3)?,
            attempts: row.try_get(4)?,
            retry_base: row.try_get(5)?,
            max_attempts: row.try_get(6)?,
            lease_expires_at: row.try_get(7)?,
            timeout_ms: row.try_get(8)?,
            config: row.try_get(9)?,
            token,
        };
        trs.push(
            Tr::step(
                c.task_id,
                c.step_id,
                &c.name,
                Some("ready"),
                "running",
                reason::CLAIMED,
            )
            .attempt(c.attempts, Some(params.worker.clone())),
        );
        if !tasks.contains(&c.task_id) {
            tasks.push(c.task_id);
        }
        claimed.push(c);
    }
    claimed.sort_by_key(|c| c.step_id);
    let started = sqlx::query(
        "UPDATE tasker_tasks SET state = 'running', prev_state = state, started_at = ?2, updated_at = ?2
         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'
         RETURNING id",
    )
    .bind(Value::from(tasks).to_string())
    .bind(params.now)
    .fetch_all(&mut *conn)
    .await?;
    // The task starts before its first step does, in the event log too.
    let mut ordered = Vec::with_capacity(trs.len() + started.len());
    for row in started {
        ordered.push(Tr::task(
            row.try_get(0)?,
            Some("pending"),
            "running",
            reason::CLAIMED,
        ));
    }
    ordered.append(&mut trs);
    let trs = ordered;
    write::insert_transitions(conn, &trs, params.now).await?;
    Ok((claimed, None))
}

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| Error::internal(format!("stored JSON is invalid: {e}")))
}

/// Loads what the handlers need, after the claim committed: task contexts and the
/// results of each step's parents (both immutable once written, so no lock is needed).
pub async fn load_claim_inputs(
    conn: &mut PoolConnection<Sqlite>,
    claimed: (Vec<ClaimedRow>, Option<i64>),
    _params: &ClaimParams,
) -> Result<ClaimBatch> {
    let (rows, next_ready_at) = claimed;
    if rows.is_empty() {
        return Ok(ClaimBatch {
            steps: Vec::new(),
            next_ready_at,
        });
    }
    let mut task_ids: Vec<i64> = rows.iter().map(|r| r.task_id).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    let mut contexts: HashMap<i64, String> = HashMap::with_capacity(task_ids.len());
    for row in sqlx::query(
        "SELECT id, context FROM tasker_tasks WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(Value::from(task_ids).to_string())
    .fetch_all(&mut **conn)
    .await?
    {
        contexts.insert(row.try_get(0)?, row.try_get(1)?);
    }
    let step_ids: Vec<i64> = rows.iter().map(|r| r.step_id).collect();
    let mut results: HashMap<i64, BTreeMap<String, Box<RawValue>>> = HashMap::new();
    for row in sqlx::query(
        "SELECT e.child_id, p.name, p.result FROM tasker_edges AS e
         JOIN tasker_steps AS p ON p.id = e.parent_id
         WHERE e.child_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(Value::from(step_ids).to_string())
    .fetch_all(&mut **conn)
    .await?
    {
        let child: i64 = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let result: Option<String> = row.try_get(2)?;
        results
            .entry(child)
            .or_default()
            .insert(name, raw(result.unwrap_or_else(|| "null".into()))?);
    }
    let mut steps = Vec::with_capacity(rows.len());
    for r in rows {
        let context = contexts.get(&r.task_id).cloned().ok_or_else(|| {
            Error::internal(format!("task {} of a claimed step is missing", r.task_id))
        })?;
        steps.push(ClaimedStep {
            step_id: r.step_id,
            task_id: r.task_id,
            step_name: r.name,
            handler: r.handler,
            claim_token: r.token.to_string(),
            attempt: r.attempts - r.retry_base,
            max_attempts: r.max_attempts,
            lease_expires_at: Ts(r.lease_expires_at),
            timeout_ms: r.timeout_ms,
            context: raw(context)?,
            config: r.config.map(raw).transpose()?,
            results: results.remove(&r.step_id).unwrap_or_default(),
        });
    }
    Ok(ClaimBatch {
        steps,
        next_ready_at: None,
    })
}

/// Why a fenced update matched nothing: the step is unknown, or no longer held by
/// this claim.
async fn fence_error(conn: &mut SqliteConnection, step_id: i64) -> Result<Error> {
    let row = sqlx::query("SELECT state FROM tasker_steps WHERE id = ?1")
        .bind(step_id)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        None => Error::not_found(format!("step {step_id} does not exist")),
        Some(row) => {
            let state: String = row.try_get(0)?;
            Error::new(
                ErrorCode::LeaseLost,
                format!("step {step_id} is no longer held by this claim (it is {state}); the result was not recorded"),
            )
            .with_details(json!({ "step_id": step_id, "state": state }))
        }
    })
}

pub async fn heartbeat(
    conn: &mut SqliteConnection,
    step_id: i64,
    token: i64,
    lease_ms: u64,
    now: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE tasker_steps SET lease_expires_at = MIN(?3 + ?4, started_at + timeout_ms), updated_at = ?3
         WHERE id = ?1 AND claim_token = ?2 AND state = 'running'
         RETURNING lease_expires_at",
    )
    .bind(step_id)
    .bind(token)
    .bind(now)
    .bind(lease_ms as i64)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(fence_error(conn, step_id).await?),
    }
}

pub async fn complete(
    conn: &mut SqliteConnection,
    items: Vec<Completion>,
    now: i64,
) -> Result<Vec<ItemOutcome>> {
    let mut seen = HashSet::with_capacity(items.len());
    let mut array = String::with_capacity(items.len() * 48);
    array.push('[');
    let mut duplicate = Vec::new();
    for item in &items {
        if !seen.insert(item.step_id) {
            duplicate.push(item.step_id);
            continue;
        }
        if array.len() > 1 {
            array.push(',');
        }
        let _ = write!(
            array,
            "[{},{},{}]",
            item.step_id,
            item.claim_token,
            item.result.get()
        );
    }
    array.push(']');
    let rows = sqlx::query(
        "UPDATE tasker_steps AS s SET state = 'complete', result = j.value -> 2,
            claim_token = NULL, lease_expires_at = NULL, finished_at = ?2, updated_at = ?2
         FROM json_each(?1) AS j
         WHERE s.id = j.value ->> 0 AND s.claim_token = j.value ->> 1 AND s.state = 'running'
         RETURNING id, task_id, name, attempts, worker",
    )
    .bind(array)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut done_ids = Vec::with_capacity(rows.len());
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(rows.len() * 2);
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let task_id: i64 = row.try_get(1)?;
        let name: String = row.try_get(2)?;
        bump(&mut deltas, task_id, |d| {
            d.active -= 1;
            d.done += 1;
        });
        trs.push(
            Tr::step(
                task_id,
                id,
                &name,
                Some("running"),
                "complete",
                reason::COMPLETED,
            )
            .attempt(row.try_get(3)?, row.try_get(4)?),
        );
        done_ids.push(id);
    }
    write::release_children(conn, &done_ids, now, &mut deltas, &mut trs).await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, &trs, now).await?;

    let done: HashSet<i64> = done_ids.into_iter().collect();
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        if done.contains(&item.step_id) && !duplicate.contains(&item.step_id) {
            out.push(ItemOutcome {
                step_id: item.step_id,
                ok: true,
                error: None,
            });
        } else if duplicate.contains(&item.step_id) && done.contains(&item.step_id) {
            duplicate.retain(|&d| d != item.step_id);
            out.push(ItemOutcome {
                step_id: item.step_id,
                ok: false,
                error: Some(Error::invalid_argument(format!(
                    "step {} appears twice in the batch",
                    item.step_id
                ))),
            });
        } else {
            out.push(ItemOutcome {
                step_id: item.step_id,
                ok: false,
                error: Some(fence_error(conn, item.step_id).await?),
            });
        }
    }
    Ok(out)
}

/// The columns a failure decision needs.
struct Held {
    task_id: i64,
    name: String,
    attempts: i64,
    retry_base: i64,
    worker: Option<String>,
    policy: RetryPolicy,
    started_at: i64,
    timeout_ms: i64,
}

const HELD_COLUMNS: &str = "id, task_id, name, attempts, retry_base, worker, max_attempts, backoff, base_ms, max_ms, jitter, started_at, timeout_ms";

fn held_from(row: &sqlx::sqlite::SqliteRow) -> Result<(i64, Held)> {
    let backoff: String = row.try_get(7)?;
    Ok((
        row.try_get(0)?,
        Held {
            task_id: row.try_get(1)?,
            name: row.try_get(2)?,
            attempts: row.try_get(3)?,
            retry_base: row.try_get(4)?,
            worker: row.try_get(5)?,
            policy: RetryPolicy {
                max_attempts: row.try_get::<i64, _>(6)? as u32,
                backoff: Backoff::parse(&backoff).unwrap_or(Backoff::Exponential),
                base_ms: row.try_get::<i64, _>(8)? as u64,
                max_ms: row.try_get::<i64, _>(9)? as u64,
                jitter: row.try_get(10)?,
            },
            started_at: row.try_get::<Option<i64>, _>(11)?.unwrap_or(0),
            timeout_ms: row.try_get(12)?,
        },
    ))
}

/// Applies the retry policy to one failed attempt.
fn decide(
    step_id: i64,
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
        step_id,
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

pub async fn fail(conn: &mut SqliteConnection, report: FailureReport) -> Result<FailOutcome> {
    let now = report.now;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {HELD_COLUMNS} FROM tasker_steps WHERE id = ?1 AND claim_token = ?2 AND state = 'running'"
    )))
    .bind(report.step_id)
    .bind(report.claim_token)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(fence_error(conn, report.step_id).await?);
    };
    let (id, held) = held_from(&row)?;
    let failed = decide(
        id,
        &held,
        report.retryable,
        report.retry_after_ms,
        report.error_json,
        reason::FAILED,
        now,
    );
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(2);
    write::apply_failures(
        conn,
        std::slice::from_ref(&failed),
        now,
        &mut deltas,
        &mut trs,
    )
    .await?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, &trs, now).await?;
    let task_state = match states.get(&held.task_id) {
        Some(s) => s.clone(),
        None => task_state(conn, held.task_id).await?,
    };
    Ok(FailOutcome {
        step_id: id,
        state: failed.state.to_owned(),
        retry_at: failed.ready_at.map(Ts),
        attempt: held.attempts - held.retry_base,
        task_state,
    })
}

pub async fn task_state(conn: &mut SqliteConnection, task_id: i64) -> Result<String> {
    Ok(sqlx::query("SELECT state FROM tasker_tasks WHERE id = ?1")
        .bind(task_id)
        .fetch_one(conn)
        .await?
        .try_get(0)?)
}

pub async fn sweep(conn: &mut SqliteConnection, now: i64, limit: u32) -> Result<u32> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {HELD_COLUMNS} FROM tasker_steps
         WHERE state = 'running' AND lease_expires_at < ?1 ORDER BY lease_expires_at LIMIT ?2"
    )))
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut failed = Vec::with_capacity(rows.len());
    for row in &rows {
        let (id, held) = held_from(row)?;
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
        failed.push(decide(id, &held, true, None, error.to_string(), why, now));
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(failed.len() + 1);
    write::apply_failures(conn, &failed, now, &mut deltas, &mut trs).await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, &trs, now).await?;
    tracing::info!(count = failed.len(), "took back expired leases");
    Ok(failed.len() as u32)
}
