//! The worker path on PostgreSQL besides claims and completions (those are one function
//! call each, in `hot`): heartbeat, fail, release and the lease sweep.

use serde_json::json;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use super::{write, Ctx};
use crate::error::{Error, ErrorCode, Result};
use crate::model::events::reason;
use crate::model::retry::{self, Backoff, RetryPolicy};
use crate::store::shared::{decide, Deltas, Held, Tr};
use crate::store::*;

pub(super) async fn fence_error(conn: &mut PgConnection, step_id: i64) -> Result<Error> {
    let row = sqlx::query(
        "SELECT s.state, t.state FROM tasker_steps s JOIN tasker_tasks t ON t.id = s.task_id
         WHERE s.id = $1",
    )
    .bind(step_id)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        None => not_held(step_id, None),
        Some(r) => {
            let (state, task_state): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            crate::store::shared::mark_task_timeout(
                not_held(step_id, Some(state.clone())),
                &state,
                &task_state,
            )
        }
    })
}

/// The error for a report on a step this claim no longer holds, given the step's state
/// now (`None`: no such step).
pub fn not_held(step_id: i64, state: Option<String>) -> Error {
    match state {
        None => Error::not_found(format!("step {step_id} does not exist")),
        Some(state) => Error::new(
            ErrorCode::LeaseLost,
            format!("step {step_id} is no longer held by this claim (it is {state}); nothing was recorded"),
        )
        .with_details(json!({ "step_id": step_id, "state": state })),
    }
}

pub async fn heartbeat(
    conn: &mut PgConnection,
    step_id: i64,
    token: i64,
    lease_ms: u64,
    now: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE tasker_steps SET lease_expires_at = LEAST($3 + $4, started_at + timeout_ms), updated_at = $3
         WHERE id = $1 AND claim_token = $2 AND state = 'running'
         RETURNING lease_expires_at, started_at + timeout_ms",
    )
    .bind(step_id)
    .bind(token)
    .bind(now)
    .bind(lease_ms as i64)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(r) => {
            let (expires, deadline): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
            if deadline <= now {
                return Err(Error::new(
                    ErrorCode::LeaseLost,
                    format!("step {step_id} ran past its timeout; its lease cannot be extended and the attempt will be failed"),
                )
                .with_details(json!({ "step_id": step_id, "state": "running", "timed_out": true })));
            }
            Ok(expires)
        }
        None => Err(fence_error(conn, step_id).await?),
    }
}

const HELD_COLUMNS: &str =
    "id, task_id, name, attempts, retry_base, worker, max_attempts, backoff, base_ms, max_ms, jitter, started_at, timeout_ms";

fn held_from(row: &PgRow) -> Result<Held> {
    let backoff: String = row.try_get(7)?;
    Ok(Held {
        id: row.try_get(0)?,
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
    })
}

pub async fn task_state(conn: &mut PgConnection, task_id: i64) -> Result<String> {
    Ok(sqlx::query("SELECT state FROM tasker_tasks WHERE id = $1")
        .bind(task_id)
        .fetch_one(conn)
        .await?
        .try_get(0)?)
}

pub async fn fail(
    conn: &mut PgConnection,
    ctx: &Ctx,
    report: FailureReport,
) -> Result<FailOutcome> {
    let now = report.now;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HELD_COLUMNS} FROM tasker_steps WHERE id = $1 AND claim_token = $2 AND state = 'running' FOR UPDATE"
    )))
    .bind(report.step_id)
    .bind(report.claim_token)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(fence_error(conn, report.step_id).await?);
    };
    let held = held_from(&row)?;
    let failed = decide(
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
    write::insert_transitions(conn, ctx, &trs, now).await?;
    let task_state = match states.get(&held.task_id) {
        Some(s) => s.clone(),
        None => task_state(conn, held.task_id).await?,
    };
    Ok(FailOutcome {
        step_id: held.id,
        state: failed.state.to_owned(),
        retry_at: failed.ready_at.map(Ts),
        attempt: held.attempts - held.retry_base,
        task_state,
    })
}

pub async fn release(
    conn: &mut PgConnection,
    ctx: &Ctx,
    step_id: i64,
    token: i64,
    delay_ms: u64,
    why: Option<String>,
    now: i64,
) -> Result<i64> {
    let ready_at = now.saturating_add(delay_ms.min(retry::MAX_RETRY_AFTER_MS) as i64);
    let row = sqlx::query(
        "UPDATE tasker_steps SET state = 'ready', ready_at = $3, attempts = attempts - 1,
             claim_token = NULL, lease_expires_at = NULL, updated_at = $4
         WHERE id = $1 AND claim_token = $2 AND state = 'running'
         RETURNING task_id, name, attempts + 1, worker",
    )
    .bind(step_id)
    .bind(token)
    .bind(ready_at)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        return Err(fence_error(conn, step_id).await?);
    };
    let (task_id, name, attempt, worker): (i64, String, i64, Option<String>) =
        (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
    let details = json!({ "reason": why, "ready_at": crate::time::rfc3339(ready_at) }).to_string();
    let tr = Tr::step(
        task_id,
        step_id,
        &name,
        Some("running"),
        "ready",
        reason::RELEASED,
    )
    .attempt(attempt, worker)
    .details(Some(details));
    write::insert_transitions(conn, ctx, &[tr], now).await?;
    Ok(ready_at)
}

pub async fn sweep(conn: &mut PgConnection, ctx: &Ctx, now: i64, limit: u32) -> Result<u32> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HELD_COLUMNS} FROM tasker_steps
         WHERE state = 'running' AND lease_expires_at < $1 ORDER BY lease_expires_at, id LIMIT $2
         FOR UPDATE SKIP LOCKED"
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
        let held = held_from(row)?;
        failed.push(crate::store::shared::expired(&held, now));
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(failed.len() + 1);
    write::apply_failures(conn, &failed, now, &mut deltas, &mut trs).await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    tracing::info!(count = failed.len(), "took back expired leases");
    Ok(failed.len() as u32)
}
