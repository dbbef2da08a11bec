//! Building blocks shared by every PostgreSQL write, mirroring the SQLite ones: each is
//! one set-based statement over arrays bound as parameters.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::Ctx;
use crate::error::Result;
use crate::model::events::reason;
use crate::store::shared::{bump, Deltas, FailedStep, Tr};

/// Writes transition rows. Runs last in every transaction: it takes the event-order
/// advisory lock in shared mode, which an event reader waits for before it trusts the
/// ids below the sequence's value (migration 0006), and sends the NOTIFY that wakes
/// waiters in every process at commit. One statement: the lock is a CTE every inserted
/// row is joined with, so it is held before the first id is drawn from the sequence.
/// The insert of [`insert_transitions`], with and without the NOTIFY.
const INSERT_TRANSITIONS_NOTIFY: &str =
    "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($11), pg_notify($12, ''))
     INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
     SELECT u.task_id, u.step_id, u.step_name, u.from_state, u.to_state, $10, u.attempt, u.worker, u.reason, u.details
     FROM lock CROSS JOIN unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                 $7::text[], $8::text[], $9::text[])
          WITH ORDINALITY AS u(task_id, step_id, step_name, from_state, to_state, attempt, worker, reason, details, n)
     ORDER BY u.n";
const INSERT_TRANSITIONS: &str =
    "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($11), $12::text AS channel)
     INSERT INTO tasker_transitions
        (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
     SELECT u.task_id, u.step_id, u.step_name, u.from_state, u.to_state, $10, u.attempt, u.worker, u.reason, u.details
     FROM lock CROSS JOIN unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                 $7::text[], $8::text[], $9::text[])
          WITH ORDINALITY AS u(task_id, step_id, step_name, from_state, to_state, attempt, worker, reason, details, n)
     ORDER BY u.n";

pub async fn insert_transitions(
    conn: &mut PgConnection,
    ctx: &Ctx,
    rows: &[Tr],
    now: i64,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut task_ids = Vec::with_capacity(rows.len());
    let mut step_ids = Vec::with_capacity(rows.len());
    let mut names = Vec::with_capacity(rows.len());
    let mut froms = Vec::with_capacity(rows.len());
    let mut tos = Vec::with_capacity(rows.len());
    let mut attempts = Vec::with_capacity(rows.len());
    let mut workers = Vec::with_capacity(rows.len());
    let mut reasons = Vec::with_capacity(rows.len());
    let mut details = Vec::with_capacity(rows.len());
    for r in rows {
        task_ids.push(r.task_id);
        step_ids.push(r.step_id);
        names.push(r.step_name.clone());
        froms.push(r.from.clone());
        tos.push(r.to.clone());
        attempts.push(r.attempt);
        workers.push(r.worker.clone());
        reasons.push(r.reason.map(str::to_owned));
        details.push(r.details.clone());
    }
    // NOTIFY only when a step becomes ready (migration 0008): a notifying commit waits
    // for every other notifying commit on the server.
    let wakes = rows.iter().any(|r| r.step_id.is_some() && r.to == "ready");
    sqlx::query(if wakes {
        INSERT_TRANSITIONS_NOTIFY
    } else {
        INSERT_TRANSITIONS
    })
    .bind(task_ids)
    .bind(step_ids)
    .bind(names)
    .bind(froms)
    .bind(tos)
    .bind(attempts)
    .bind(workers)
    .bind(reasons)
    .bind(details)
    .bind(now)
    .bind(ctx.lock_key)
    .bind(&ctx.channel)
    .execute(conn)
    .await?;
    Ok(())
}

/// The counter update of a child whose parents (`d.n` of them) just completed, `$2` the
/// time, for [`release_children`]. `tasker_complete_and_claim` (migration 0004) has the
/// same clause; the two must agree.
pub const RELEASE_SET: &str = "pending_parents = s.pending_parents - d.n,
            state = CASE WHEN s.state = 'pending' AND s.pending_parents = d.n THEN 'ready' ELSE s.state END,
            ready_at = CASE WHEN s.state = 'pending' AND s.pending_parents = d.n THEN $NOW ELSE s.ready_at END,
            updated_at = $NOW";

/// Task counters moved by `d.da`/`d.dd`/`d.de` and the finalization rules (the same as
/// SQLite's), `$NOW` the time, for [`apply_deltas`]. `tasker_complete_and_claim`
/// (migration 0004) has the same clauses; the two must agree.
pub const TASK_DELTAS_SET: &str = "prev_state = t.state,
            n_active = t.n_active + d.da,
            n_done = t.n_done + d.dd,
            n_error = t.n_error + d.de,
            state = CASE
                WHEN t.state IN ('complete', 'cancelled') THEN t.state
                WHEN t.n_active + d.da = 0 AND t.n_done + d.dd = t.n_total THEN 'complete'
                WHEN t.n_active + d.da = 0 THEN 'error'
                WHEN t.state = 'error' THEN 'running'
                ELSE t.state END,
            finished_at = CASE
                WHEN t.state IN ('complete', 'cancelled') THEN t.finished_at
                WHEN t.n_active + d.da = 0 THEN COALESCE(t.finished_at, $NOW)
                ELSE NULL END,
            updated_at = $NOW";

/// `template` with `$NOW` replaced by the given placeholder, built once per statement.
pub fn with_now(template: &str, placeholder: &str) -> String {
    template.replace("$NOW", placeholder)
}

/// The task rows reported by a counter update, as transitions and final states.
pub fn finalized(
    mut changed: Vec<(i64, Option<String>, String)>,
    trs: &mut Vec<Tr>,
) -> HashMap<i64, String> {
    changed.sort_unstable_by_key(|c| c.0);
    let mut states = HashMap::with_capacity(changed.len());
    for (id, prev, state) in changed {
        if prev.as_deref() != Some(state.as_str()) {
            trs.push(Tr::task(id, prev.as_deref(), &state, reason::FINALIZED));
        }
        states.insert(id, state);
    }
    states
}

/// Decrements the parent counters of the children of `parents`; children reaching zero
/// become `ready`. The children are locked in id order first, so two transactions
/// releasing overlapping children cannot deadlock. Rows are found by primary key
/// (`= ANY(ARRAY(..))`), never by a join the planner could turn into a table scan.
pub async fn release_children(
    conn: &mut PgConnection,
    parents: &[i64],
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    if parents.is_empty() {
        return Ok(());
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH d AS (SELECT child_id, count(*) AS n FROM tasker_edges
                    WHERE parent_id = ANY($1) GROUP BY child_id),
              locked AS (SELECT id FROM tasker_steps WHERE id = ANY(ARRAY(SELECT child_id FROM d)) ORDER BY id FOR UPDATE)
         UPDATE tasker_steps s SET {}
         FROM d WHERE s.id = ANY(ARRAY(SELECT id FROM locked)) AND s.id = d.child_id
         RETURNING s.id, s.task_id, s.name, s.state, s.pending_parents",
            with_now(RELEASE_SET, "$2")
        )
    });
    let rows = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(parents)
        .bind(now)
        .fetch_all(conn)
        .await?;
    let mut released: Vec<(i64, i64, String)> = Vec::new();
    for row in rows {
        let state: String = row.try_get(3)?;
        let pending: i64 = row.try_get(4)?;
        if state == "ready" && pending == 0 {
            released.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
        }
    }
    released.sort_unstable_by_key(|r| r.0);
    for (id, task_id, name) in released {
        bump(deltas, task_id, |d| d.active += 1);
        trs.push(Tr::step(
            task_id,
            id,
            &name,
            Some("pending"),
            "ready",
            reason::PARENTS_DONE,
        ));
    }
    Ok(())
}

/// Applies counter deltas and finalizes tasks (same rules as SQLite), locking the task
/// rows in id order first, by primary key.
pub async fn apply_deltas(
    conn: &mut PgConnection,
    deltas: &Deltas,
    now: i64,
    trs: &mut Vec<Tr>,
) -> Result<HashMap<i64, String>> {
    if deltas.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids: Vec<i64> = deltas.keys().copied().collect();
    ids.sort_unstable();
    let da: Vec<i64> = ids.iter().map(|i| deltas[i].active).collect();
    let dd: Vec<i64> = ids.iter().map(|i| deltas[i].done).collect();
    let de: Vec<i64> = ids.iter().map(|i| deltas[i].error).collect();
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH d AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS d(id, da, dd, de)),
              locked AS (SELECT id FROM tasker_tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE)
         UPDATE tasker_tasks t SET {}
         FROM d WHERE t.id = ANY(ARRAY(SELECT id FROM locked)) AND t.id = d.id
         RETURNING t.id, t.prev_state, t.state",
            with_now(TASK_DELTAS_SET, "$5")
        )
    });
    let rows = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(&ids)
        .bind(da)
        .bind(dd)
        .bind(de)
        .bind(now)
        .fetch_all(conn)
        .await?;
    let mut changed: Vec<(i64, Option<String>, String)> = Vec::with_capacity(rows.len());
    for row in rows {
        changed.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    Ok(finalized(changed, trs))
}

/// Writes failed attempts (from `fail` or the sweep) and their transitions.
pub async fn apply_failures(
    conn: &mut PgConnection,
    failed: &[FailedStep],
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = failed.iter().map(|f| f.step_id).collect();
    let states: Vec<&str> = failed.iter().map(|f| f.state).collect();
    let ready: Vec<Option<i64>> = failed.iter().map(|f| f.ready_at).collect();
    let errors: Vec<&str> = failed.iter().map(|f| f.error_json.as_str()).collect();
    sqlx::query(
        "UPDATE tasker_steps s SET state = d.state, ready_at = d.ready_at, last_error = d.error,
            claim_token = NULL, lease_expires_at = NULL,
            finished_at = CASE WHEN d.state = 'error' THEN $5 ELSE NULL END, updated_at = $5
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS d(id, state, ready_at, error)
         WHERE s.id = d.id",
    )
    .bind(ids)
    .bind(states)
    .bind(ready)
    .bind(errors)
    .bind(now)
    .execute(conn)
    .await?;
    for f in failed {
        if f.state == "error" {
            bump(deltas, f.task_id, |d| {
                d.active -= 1;
                d.error += 1;
            });
        }
        let details = json!({ "error": serde_json::from_str::<Value>(&f.error_json).unwrap_or(Value::Null), "retry_at": f.ready_at.map(crate::time::rfc3339) });
        trs.push(
            Tr::step(
                f.task_id,
                f.step_id,
                &f.name,
                Some("running"),
                f.state,
                f.reason,
            )
            .attempt(f.attempt, f.worker.clone())
            .details(Some(details.to_string())),
        );
    }
    Ok(())
}
