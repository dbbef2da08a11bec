//! Building blocks shared by every write: transition rows, parent counters and task
//! counters with finalization. Each is one set-based statement over a JSON array bound
//! as a single parameter, so a batch costs the same number of round trips as one item.

use std::collections::HashMap;

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::error::Result;
use crate::model::events::reason;
use crate::store::shared::{bump, Deltas, FailedStep, Tr};

pub fn insert_transitions(conn: &Connection, rows: &[Tr], now: i64) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let array = Value::Array(rows.iter().map(Tr::to_json).collect()).to_string();
    conn.prepare_cached(
        "INSERT INTO tasker_transitions
            (task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2,
                value ->> 5, value ->> 6, value ->> 7, value ->> 8
         FROM json_each(?1)",
    )?
    .execute(params![array, now])?;
    Ok(())
}

/// Decrements the parent counters of the children of `parents` (which just finished);
/// children whose count reaches zero become `ready`. Records those transitions and
/// counts them as active.
pub fn release_children(
    conn: &Connection,
    parents: &[i64],
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    if parents.is_empty() {
        return Ok(());
    }
    let ids = Value::from(parents.to_vec()).to_string();
    let mut stmt = conn.prepare_cached(
        "UPDATE tasker_steps AS s SET
            pending_parents = s.pending_parents - d.n,
            state = CASE WHEN s.state = 'pending' AND s.pending_parents = d.n THEN 'ready' ELSE s.state END,
            ready_at = CASE WHEN s.state = 'pending' AND s.pending_parents = d.n THEN ?2 ELSE s.ready_at END,
            updated_at = ?2
         FROM (SELECT child_id, count(*) AS n FROM tasker_edges
               WHERE parent_id IN (SELECT value FROM json_each(?1)) GROUP BY child_id) AS d
         WHERE s.id = d.child_id
         RETURNING id, task_id, name, state, pending_parents",
    )?;
    let mut rows = stmt.query(params![ids, now])?;
    let mut released: Vec<(i64, i64, String)> = Vec::new();
    while let Some(row) = rows.next()? {
        let state: String = row.get(3)?;
        let pending: i64 = row.get(4)?;
        if state == "ready" && pending == 0 {
            released.push((row.get(0)?, row.get(1)?, row.get(2)?));
        }
    }
    // RETURNING order is unspecified: keep the event log in step order.
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

/// Applies counter deltas and finalizes tasks in one statement: a task with nothing
/// ready or running is `complete` when every step is done, else `error`; an errored task
/// that gets active steps again is `running`. Records task transitions.
/// Returns the new state of every touched task.
pub fn apply_deltas(
    conn: &Connection,
    deltas: &Deltas,
    now: i64,
    trs: &mut Vec<Tr>,
) -> Result<HashMap<i64, String>> {
    let mut states = HashMap::with_capacity(deltas.len());
    if deltas.is_empty() {
        return Ok(states);
    }
    let array = Value::Array(
        deltas
            .iter()
            .map(|(id, d)| json!([id, d.active, d.done, d.error]))
            .collect(),
    )
    .to_string();
    let mut stmt = conn.prepare_cached(
        "UPDATE tasker_tasks AS t SET
            prev_state = t.state,
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
                WHEN t.n_active + d.da = 0 THEN COALESCE(t.finished_at, ?2)
                ELSE NULL END,
            updated_at = ?2
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS da, value ->> 2 AS dd, value ->> 3 AS de
               FROM json_each(?1)) AS d
         WHERE t.id = d.id
         RETURNING id, prev_state, state",
    )?;
    let mut rows = stmt.query(params![array, now])?;
    let mut changed: Vec<(i64, Option<String>, String)> = Vec::new();
    while let Some(row) = rows.next()? {
        changed.push((row.get(0)?, row.get(1)?, row.get(2)?));
    }
    changed.sort_unstable_by_key(|c| c.0);
    for (id, prev, state) in changed {
        if prev.as_deref() != Some(state.as_str()) {
            trs.push(Tr::task(id, prev.as_deref(), &state, reason::FINALIZED));
        }
        states.insert(id, state);
    }
    Ok(states)
}

/// Writes failed attempts (from `fail` or from the lease sweep) and their transitions.
pub fn apply_failures(
    conn: &Connection,
    failed: &[FailedStep],
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let array = Value::Array(
        failed
            .iter()
            .map(|f| json!([f.step_id, f.state, f.ready_at, f.error_json]))
            .collect(),
    )
    .to_string();
    conn.prepare_cached(
        "UPDATE tasker_steps AS s SET
            state = d.value ->> 1,
            ready_at = d.value ->> 2,
            last_error = d.value ->> 3,
            claim_token = NULL,
            lease_expires_at = NULL,
            finished_at = CASE WHEN d.value ->> 1 = 'error' THEN ?2 ELSE NULL END,
            updated_at = ?2
         FROM json_each(?1) AS d
         WHERE s.id = d.value ->> 0",
    )?
    .execute(params![array, now])?;
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
