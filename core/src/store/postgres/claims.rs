//! The worker path on PostgreSQL: claim (`FOR UPDATE SKIP LOCKED`), heartbeat,
//! complete, fail, release and the lease sweep.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::json;
use serde_json::value::RawValue;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use super::{write, Ctx};
use crate::error::{Error, ErrorCode, Result};
use crate::model::events::reason;
use crate::model::retry::{self, Backoff, RetryPolicy};
use crate::store::shared::{decide, Deltas, Held, Tr};
use crate::store::*;

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| Error::internal(format!("stored JSON is invalid: {e}")))
}

pub async fn claim(conn: &mut PgConnection, ctx: &Ctx, p: &ClaimParams) -> Result<ClaimBatch> {
    let mut trs = Vec::new();
    let batch = claim_into(conn, p, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, p.now).await?;
    Ok(batch)
}

/// Claims like [`claim`] but leaves its transitions in `trs` for the caller to insert
/// (complete-and-claim writes both halves' transitions in one statement).
///
/// One statement does the whole claim: pick, mark running, start pending tasks (locked
/// in id order), and return each step with its task's context (once per task) and its
/// parents' results. Every lookup goes through an index, so a claim costs the same with
/// 100 or 10 million rows: candidates come from the claim index one handler at a time
/// (`handler = ANY(..)` would make PostgreSQL read and sort every ready row), the best
/// `limit` across handlers are taken, and rows are updated by primary key.
pub async fn claim_into(
    conn: &mut PgConnection,
    p: &ClaimParams,
    trs: &mut Vec<Tr>,
) -> Result<ClaimBatch> {
    let token = fastrand::i64(1..(1i64 << 53));
    let rows = sqlx::query(
        "WITH picked AS (
            SELECT c.id FROM (SELECT DISTINCT unnest($5::text[]) AS name) h
            CROSS JOIN LATERAL (
                SELECT id, priority, ready_at FROM tasker_steps
                WHERE state = 'ready' AND handler = h.name AND ready_at <= $3
                ORDER BY priority DESC, ready_at, id
                LIMIT $6
                FOR UPDATE SKIP LOCKED) c
            ORDER BY c.priority DESC, c.ready_at, c.id
            LIMIT $6),
         claimed AS (
            UPDATE tasker_steps s SET state = 'running', attempts = s.attempts + 1, claim_token = $1, worker = $2,
               started_at = $3, first_started_at = COALESCE(s.first_started_at, $3),
               lease_expires_at = LEAST($3 + $4, $3 + s.timeout_ms), updated_at = $3
            WHERE s.id = ANY(ARRAY(SELECT id FROM picked))
            RETURNING s.id, s.task_id, s.name, s.handler, s.attempts, s.retry_base, s.max_attempts,
                      s.lease_expires_at, s.timeout_ms, s.config),
         locked AS (
            SELECT id FROM tasker_tasks
            WHERE id = ANY(ARRAY(SELECT task_id FROM claimed)) AND state = 'pending'
            ORDER BY id FOR UPDATE),
         started AS (
            UPDATE tasker_tasks t SET state = 'running', prev_state = t.state, started_at = $3, updated_at = $3
            WHERE t.id = ANY(ARRAY(SELECT id FROM locked)) RETURNING t.id),
         parents AS (
            SELECT e.child_id, array_agg(p.name ORDER BY p.id) AS names,
                   array_agg(COALESCE(p.result, 'null') ORDER BY p.id) AS results
            FROM tasker_edges e JOIN tasker_steps p ON p.id = e.parent_id
            WHERE e.child_id = ANY(ARRAY(SELECT id FROM claimed))
            GROUP BY e.child_id)
         SELECT c.id, c.task_id, c.name, c.handler, c.attempts, c.retry_base, c.max_attempts,
                c.lease_expires_at, c.timeout_ms, c.config,
                CASE WHEN row_number() OVER (PARTITION BY c.task_id ORDER BY c.id) = 1 THEN t.context END,
                st.id IS NOT NULL, pr.names, pr.results
         FROM claimed c
         JOIN tasker_tasks t ON t.id = c.task_id
         LEFT JOIN started st ON st.id = c.task_id
         LEFT JOIN parents pr ON pr.child_id = c.id
         ORDER BY c.id",
    )
    .bind(token)
    .bind(&p.worker)
    .bind(p.now)
    .bind(p.lease_ms as i64)
    .bind(&p.handlers)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        let next: Option<i64> = sqlx::query(
            "SELECT MIN(ready_at) FROM tasker_steps WHERE state = 'ready' AND handler = ANY($1)",
        )
        .bind(&p.handlers)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        return Ok(ClaimBatch {
            steps: Vec::new(),
            next_ready_at: next,
        });
    }
    let mut contexts: HashMap<i64, Box<RawValue>> = HashMap::new();
    let mut started: Vec<i64> = Vec::new();
    let mut step_trs = Vec::with_capacity(rows.len());
    let token_text = token.to_string();
    let mut steps = Vec::with_capacity(rows.len());
    for r in rows {
        let (step_id, task_id, name): (i64, i64, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let attempts: i64 = r.try_get(4)?;
        if let Some(context) = r.try_get::<Option<String>, _>(10)? {
            contexts.insert(task_id, raw(context)?);
            if r.try_get::<bool, _>(11)? {
                started.push(task_id);
            }
        }
        let names: Vec<String> = r.try_get::<Option<_>, _>(12)?.unwrap_or_default();
        let results: Vec<String> = r.try_get::<Option<_>, _>(13)?.unwrap_or_default();
        let results = names
            .into_iter()
            .zip(results)
            .map(|(n, v)| Ok((n, raw(v)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        step_trs.push(
            Tr::step(
                task_id,
                step_id,
                &name,
                Some("ready"),
                "running",
                reason::CLAIMED,
            )
            .attempt(attempts, Some(p.worker.clone())),
        );
        let retry_base: i64 = r.try_get(5)?;
        steps.push(ClaimedStep {
            step_id,
            task_id,
            step_name: name,
            handler: r.try_get(3)?,
            claim_token: token_text.clone(),
            attempt: attempts - retry_base,
            max_attempts: r.try_get(6)?,
            lease_expires_at: Ts(r.try_get(7)?),
            timeout_ms: r.try_get(8)?,
            // Filled in below: the context comes once per task, on its first step's row.
            context: raw("null".into())?,
            config: r.try_get::<Option<String>, _>(9)?.map(raw).transpose()?,
            results,
        });
    }
    for step in &mut steps {
        step.context = contexts.get(&step.task_id).cloned().ok_or_else(|| {
            Error::internal(format!(
                "task {} of a claimed step is missing",
                step.task_id
            ))
        })?;
    }
    started.sort_unstable();
    trs.reserve(started.len() + step_trs.len());
    for id in started {
        trs.push(Tr::task(id, Some("pending"), "running", reason::CLAIMED));
    }
    trs.extend(step_trs);
    Ok(ClaimBatch {
        steps,
        next_ready_at: None,
    })
}

async fn fence_error(conn: &mut PgConnection, step_id: i64) -> Result<Error> {
    let state: Option<String> = sqlx::query("SELECT state FROM tasker_steps WHERE id = $1")
        .bind(step_id)
        .fetch_optional(conn)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(match state {
        None => Error::not_found(format!("step {step_id} does not exist")),
        Some(state) => Error::new(
            ErrorCode::LeaseLost,
            format!("step {step_id} is no longer held by this claim (it is {state}); nothing was recorded"),
        )
        .with_details(json!({ "step_id": step_id, "state": state })),
    })
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

/// Completion in one statement: the steps (each fenced by its claim token, found by
/// primary key), their children's parent counters (children locked in id order; those
/// reaching 0 become `ready`), and the task counters with finalization (tasks locked in
/// id order), with the same SET clauses as `write::release_children` and
/// `write::apply_deltas`. The CTEs see one snapshot: the children and tasks they update
/// are never rows the completion itself updated.
static COMPLETE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH done AS (
            UPDATE tasker_steps s SET state = 'complete', result = u.result, claim_token = NULL,
               lease_expires_at = NULL, finished_at = $4, updated_at = $4
            FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(id, token, result)
            WHERE s.id = u.id AND s.claim_token = u.token AND s.state = 'running'
            RETURNING s.id, s.task_id, s.name, s.attempts, s.worker),
         d AS (
            SELECT child_id, count(*) AS n FROM tasker_edges
            WHERE parent_id = ANY(ARRAY(SELECT id FROM done)) GROUP BY child_id),
         locked AS (
            SELECT id FROM tasker_steps WHERE id = ANY(ARRAY(SELECT child_id FROM d)) ORDER BY id FOR UPDATE),
         children AS (
            UPDATE tasker_steps s SET {release}
            FROM d WHERE s.id = ANY(ARRAY(SELECT id FROM locked)) AND s.id = d.child_id
            RETURNING s.id, s.task_id, s.name, s.state, s.pending_parents),
         released AS (
            SELECT id, task_id, name FROM children WHERE state = 'ready' AND pending_parents = 0),
         deltas AS (
            SELECT task_id AS id, sum(da)::bigint AS da, sum(dd)::bigint AS dd, 0::bigint AS de
            FROM (SELECT task_id, -1 AS da, 1 AS dd FROM done
                  UNION ALL SELECT task_id, 1, 0 FROM released) x
            GROUP BY task_id),
         tlocked AS (
            SELECT id FROM tasker_tasks WHERE id = ANY(ARRAY(SELECT id FROM deltas)) ORDER BY id FOR UPDATE),
         tasks AS (
            UPDATE tasker_tasks t SET {deltas}
            FROM deltas d WHERE t.id = ANY(ARRAY(SELECT id FROM tlocked)) AND t.id = d.id
            RETURNING t.id, t.prev_state, t.state)
         SELECT 0, id, task_id, name, attempts, worker, NULL::text FROM done
         UNION ALL SELECT 1, id, task_id, name, NULL, NULL, NULL FROM released
         UNION ALL SELECT 2, id, NULL, NULL, NULL, prev_state, state FROM tasks",
        release = write::with_now(write::RELEASE_SET, "$4"),
        deltas = write::with_now(write::TASK_DELTAS_SET, "$4"),
    )
});

/// Completes the claimed steps of `items` (each by its token) and releases their
/// children, in one statement ([`COMPLETE_SQL`]); leaves the transitions in `trs` for
/// the caller to insert, with those of a claim in the same transaction.
pub async fn complete_into(
    conn: &mut PgConnection,
    items: Vec<Completion>,
    now: i64,
    trs: &mut Vec<Tr>,
) -> Result<Vec<ItemOutcome>> {
    let mut first: HashSet<i64> = HashSet::with_capacity(items.len());
    let (mut ids, mut tokens, mut results) = (Vec::new(), Vec::new(), Vec::new());
    for item in &items {
        if first.insert(item.step_id) {
            ids.push(item.step_id);
            tokens.push(item.claim_token);
            results.push(item.result.get().to_owned());
        }
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(COMPLETE_SQL.as_str()))
        .bind(ids)
        .bind(tokens)
        .bind(results)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    // Rows of three kinds: 0 a completed step, 1 a child that became ready, 2 a task
    // whose counters moved. Transitions go in that order, each kind by id, as before
    // this was one statement.
    let mut completed: Vec<(i64, i64, String, i64, Option<String>)> = Vec::new();
    let mut released: Vec<(i64, i64, String)> = Vec::new();
    let mut tasks: Vec<(i64, Option<String>, String)> = Vec::new();
    for r in rows {
        let kind: i32 = r.try_get(0)?;
        let id: i64 = r.try_get(1)?;
        match kind {
            0 => completed.push((
                id,
                r.try_get::<Option<i64>, _>(2)?.unwrap_or_default(),
                r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                r.try_get::<Option<i64>, _>(4)?.unwrap_or_default(),
                r.try_get(5)?,
            )),
            1 => released.push((
                id,
                r.try_get::<Option<i64>, _>(2)?.unwrap_or_default(),
                r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            )),
            _ => tasks.push((
                id,
                r.try_get(5)?,
                r.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
            )),
        }
    }
    completed.sort_unstable_by_key(|d| d.0);
    released.sort_unstable_by_key(|d| d.0);
    let mut done_ids = Vec::with_capacity(completed.len());
    for (id, task_id, name, attempts, worker) in completed {
        trs.push(
            Tr::step(
                task_id,
                id,
                &name,
                Some("running"),
                "complete",
                reason::COMPLETED,
            )
            .attempt(attempts, worker),
        );
        done_ids.push(id);
    }
    for (id, task_id, name) in released {
        trs.push(Tr::step(
            task_id,
            id,
            &name,
            Some("pending"),
            "ready",
            reason::PARENTS_DONE,
        ));
    }
    write::finalized(tasks, trs);
    let done: HashSet<i64> = done_ids.into_iter().collect();
    let mut reported: HashSet<i64> = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        let error = if !reported.insert(item.step_id) {
            Some(Error::invalid_argument(format!(
                "step {} appears more than once in the batch; only its first report was considered",
                item.step_id
            )))
        } else if done.contains(&item.step_id) {
            None
        } else {
            Some(fence_error(conn, item.step_id).await?)
        };
        out.push(ItemOutcome {
            step_id: item.step_id,
            ok: error.is_none(),
            error,
        });
    }
    Ok(out)
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
