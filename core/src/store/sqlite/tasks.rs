//! Task creation and the operator actions: cancel, retry a step, resolve a step.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::write;
use crate::error::{Error, Result};
use crate::model::events::reason;
use crate::model::state::StepState;
use crate::store::shared::{bump, Deltas, Tr};
use crate::store::*;

pub fn find_by_key(
    conn: &Connection,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<CreatedTask>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, state FROM tasker_tasks WHERE namespace = ?1 AND name = ?2 AND idempotency_key = ?3",
        )?
        .query_row(params![namespace, name, key], |r| {
            Ok(CreatedTask { task_id: r.get(0)?, created: false, state: r.get(1)? })
        })
        .optional()?)
}

/// Creates a task, its steps, its edges and their transitions in one transaction.
/// Step ids are assigned here (the writer holds the database's write lock), so steps
/// and edges are inserted with one statement each, whatever the DAG's size.
pub fn create(conn: &Connection, task: NewTask) -> Result<CreatedTask> {
    let t = &task.template;
    let now = task.now;
    if let Some(key) = &task.idempotency_key {
        // Checked again inside the write lock: two racing creates make one task.
        if let Some(existing) = find_by_key(conn, &t.namespace, &t.name, key)? {
            return Ok(existing);
        }
    }
    // A delayed task's roots count as active from the start (they will be ready), so
    // nothing finalizes the task while it waits.
    let roots = t.steps.iter().filter(|s| s.depends_on.is_empty()).count() as i64;
    let task_id: i64 = conn
        .prepare_cached(
            "INSERT INTO tasker_tasks (namespace, name, version, state, context, idempotency_key, priority,
                                       n_total, n_active, created_at, updated_at, run_at, due_at,
                                       timeout_ms, deadline_at)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?10, ?11, ?12) RETURNING id",
        )?
        .query_row(
            params![
                t.namespace,
                t.name,
                t.version,
                task.context,
                task.idempotency_key,
                task.priority,
                t.steps.len() as i64,
                roots,
                now,
                task.run_at,
                task.timeout_ms,
                task.deadline_at()
            ],
            |r| r.get(0),
        )?;
    let first_id: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM tasker_steps")?
        .query_row([], |r| r.get(0))?;
    let ids: HashMap<&str, i64> = t
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), first_id + i as i64))
        .collect();
    let mut steps = Vec::with_capacity(t.steps.len());
    let mut edges = Vec::new();
    let mut trs = Vec::with_capacity(t.steps.len() + 1);
    trs.push(Tr::task(task_id, None, "pending", reason::CREATED));
    for (i, s) in t.steps.iter().enumerate() {
        let id = first_id + i as i64;
        // A delayed task's roots wait `pending` for its promotion (scheduling.rs).
        let state = if s.depends_on.is_empty() && task.run_at.is_none() {
            "ready"
        } else {
            "pending"
        };
        steps.push(json!([
            id,
            s.name,
            s.handler,
            state,
            s.depends_on.len(),
            s.retry.max_attempts,
            s.retry.backoff.as_str(),
            s.retry.base_ms,
            s.retry.max_ms,
            s.retry.jitter,
            s.timeout_s.saturating_mul(1000),
            i64::from(s.priority) + i64::from(task.priority),
            s.config.as_ref().map(Value::to_string),
            if state == "ready" { Some(now) } else { None },
        ]));
        for d in &s.depends_on {
            edges.push(json!([ids[d.as_str()], id]));
        }
        trs.push(Tr::step(task_id, id, &s.name, None, state, reason::CREATED));
    }
    conn.prepare_cached(
        "INSERT INTO tasker_steps (id, task_id, name, handler, state, pending_parents, max_attempts,
             backoff, base_ms, max_ms, jitter, timeout_ms, priority, config, ready_at, created_at, updated_at)
         SELECT value ->> 0, ?2, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
                value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11,
                value ->> 12, value ->> 13, ?3, ?3
         FROM json_each(?1)",
    )?
    .execute(params![Value::Array(steps).to_string(), task_id, now])?;
    if !edges.is_empty() {
        conn.prepare_cached(
            "INSERT INTO tasker_edges (parent_id, child_id) SELECT value ->> 0, value ->> 1 FROM json_each(?1)",
        )?
        .execute([Value::Array(edges).to_string()])?;
    }
    write::insert_transitions(conn, &trs, now)?;
    Ok(CreatedTask {
        task_id,
        created: true,
        state: "pending".into(),
    })
}

pub fn cancel(
    conn: &Connection,
    task_id: i64,
    why: Option<String>,
    now: i64,
) -> Result<TaskChange> {
    let state = task_state_of(conn, task_id)?;
    if state == "cancelled" {
        return Ok(TaskChange {
            task_id,
            state,
            changed: false,
        });
    }
    if state == "complete" {
        return Err(Error::invalid_state(format!(
            "task {task_id} is complete and cannot be cancelled"
        ))
        .with_details(json!({ "task_id": task_id, "state": state })));
    }
    let details = why.map(|r| json!({ "reason": r }).to_string());
    let rows: Vec<(i64, String, String, i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT id, name, state, attempts, worker FROM tasker_steps
             WHERE task_id = ?1 AND state IN ('pending', 'ready', 'running', 'waiting', 'error') ORDER BY id",
        )?
        .query_map([task_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'cancelled', claim_token = NULL, lease_expires_at = NULL,
             finished_at = ?2, updated_at = ?2
         WHERE task_id = ?1 AND state IN ('pending', 'ready', 'running', 'waiting', 'error')",
    )?
    .execute(params![task_id, now])?;
    conn.prepare_cached(
        "UPDATE tasker_tasks SET prev_state = state, state = 'cancelled', n_active = 0, n_error = 0, due_at = NULL,
             finished_at = ?2, updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![task_id, now])?;
    let mut trs = Vec::with_capacity(rows.len() + 1);
    for (id, name, from, attempts, worker) in rows {
        trs.push(
            Tr::step(
                task_id,
                id,
                &name,
                Some(&from),
                "cancelled",
                reason::CANCELLED,
            )
            .attempt(attempts, worker)
            .details(details.clone()),
        );
    }
    trs.push(Tr::task(task_id, Some(&state), "cancelled", reason::CANCELLED).details(details));
    write::insert_transitions(conn, &trs, now)?;
    Ok(TaskChange {
        task_id,
        state: "cancelled".into(),
        changed: true,
    })
}

fn task_state_of(conn: &Connection, task_id: i64) -> Result<String> {
    conn.prepare_cached("SELECT state FROM tasker_tasks WHERE id = ?1")?
        .query_row([task_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found(format!("task {task_id} does not exist")))
}

struct Target {
    id: i64,
    task_id: i64,
    name: String,
    state: StepState,
    attempts: i64,
    worker: Option<String>,
    task_state: String,
}

fn find_step(conn: &Connection, step: &StepRef) -> Result<Target> {
    const COLS: &str = "SELECT s.id, s.task_id, s.name, s.state, s.attempts, s.worker, t.state
         FROM tasker_steps AS s JOIN tasker_tasks AS t ON t.id = s.task_id";
    // The stored state is checked after the row is read (a closure cannot return ours).
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(Target, String)> {
        Ok((
            Target {
                id: r.get(0)?,
                task_id: r.get(1)?,
                name: r.get(2)?,
                state: StepState::Pending,
                attempts: r.get(4)?,
                worker: r.get(5)?,
                task_state: r.get(6)?,
            },
            r.get(3)?,
        ))
    };
    let row = match step {
        StepRef::Id(id) => conn
            .prepare_cached(&format!("{COLS} WHERE s.id = ?1"))?
            .query_row([id], map)
            .optional()?,
        StepRef::Named { task_id, step_name } => conn
            .prepare_cached(&format!("{COLS} WHERE s.task_id = ?1 AND s.name = ?2"))?
            .query_row(params![task_id, step_name], map)
            .optional()?,
    };
    let Some((mut target, state)) = row else {
        return Err(match step {
            StepRef::Id(id) => Error::not_found(format!("step {id} does not exist")),
            StepRef::Named { task_id, step_name } => {
                let names: Vec<String> = conn
                    .prepare_cached("SELECT name FROM tasker_steps WHERE task_id = ?1 ORDER BY id")?
                    .query_map([task_id], |r| r.get(0))?
                    .collect::<std::result::Result<_, _>>()?;
                let exists = !names.is_empty()
                    || conn
                        .prepare_cached("SELECT 1 FROM tasker_tasks WHERE id = ?1")?
                        .query_row([task_id], |_| Ok(()))
                        .optional()?
                        .is_some();
                crate::store::shared::missing_named_step(*task_id, step_name, exists, &names)
            }
        });
    };
    target.state = StepState::parse(&state)
        .ok_or_else(|| Error::internal(format!("unknown stored step state {state}")))?;
    Ok(target)
}

/// Puts an errored step back to `ready` with a fresh attempt budget; an errored task
/// resumes running.
pub fn retry_step(conn: &Connection, step: StepRef, now: i64) -> Result<StepChange> {
    let t = find_step(conn, &step)?;
    if t.state != StepState::Error || t.task_state == "cancelled" {
        return Err(Error::invalid_state(format!(
            "step `{}` of task {} is {} (task {}); only a step in error can be retried",
            t.name, t.task_id, t.state, t.task_state
        ))
        .with_details(
            json!({ "step_id": t.id, "state": t.state.as_str(), "task_state": t.task_state }),
        ));
    }
    conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'ready', ready_at = ?2, retry_base = attempts, finished_at = NULL,
             updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![t.id, now])?;
    let mut deltas = Deltas::new();
    bump(&mut deltas, t.task_id, |d| {
        d.error -= 1;
        d.active += 1;
    });
    let mut trs = vec![Tr::step(
        t.task_id,
        t.id,
        &t.name,
        Some("error"),
        "ready",
        reason::OPERATOR_RETRY,
    )
    .attempt(t.attempts, t.worker.clone())];
    let states = write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    Ok(StepChange {
        step_id: t.id,
        task_id: t.task_id,
        step_name: t.name,
        state: "ready".into(),
        task_state: states.get(&t.task_id).cloned().unwrap_or(t.task_state),
    })
}

/// Marks a step done by hand (with an optional result its children receive).
pub fn resolve_step(
    conn: &Connection,
    step: StepRef,
    result: Option<String>,
    why: Option<String>,
    now: i64,
) -> Result<StepChange> {
    let t = find_step(conn, &step)?;
    if !t.state.can_become(StepState::ResolvedManually)
        || matches!(t.task_state.as_str(), "cancelled" | "complete")
    {
        return Err(Error::invalid_state(format!(
            "step `{}` of task {} is {} (task {}); it cannot be resolved",
            t.name, t.task_id, t.state, t.task_state
        ))
        .with_details(
            json!({ "step_id": t.id, "state": t.state.as_str(), "task_state": t.task_state }),
        ));
    }
    let due: Option<i64> = conn
        .prepare_cached("SELECT due_at FROM tasker_tasks WHERE id = ?1")?
        .query_row([t.task_id], |r| r.get(0))?;
    if let Some(at) = due {
        return Err(crate::store::shared::delayed_task_refusal(
            t.task_id, &t.name, at,
        ));
    }
    conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'resolved_manually', result = ?2, claim_token = NULL,
             lease_expires_at = NULL, finished_at = ?3, updated_at = ?3 WHERE id = ?1",
    )?
    .execute(params![t.id, result.unwrap_or_else(|| "null".into()), now])?;
    let mut deltas = Deltas::new();
    bump(&mut deltas, t.task_id, |d| {
        d.done += 1;
        match t.state {
            StepState::Ready | StepState::Running | StepState::Waiting => d.active -= 1,
            StepState::Error => d.error -= 1,
            _ => {}
        }
    });
    let details = why.map(|r| json!({ "reason": r }).to_string());
    let mut trs = vec![Tr::step(
        t.task_id,
        t.id,
        &t.name,
        Some(t.state.as_str()),
        "resolved_manually",
        reason::OPERATOR_RESOLVED,
    )
    .attempt(t.attempts, t.worker.clone())
    .details(details)];
    write::release_children(conn, &[t.id], now, &mut deltas, &mut trs)?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    Ok(StepChange {
        step_id: t.id,
        task_id: t.task_id,
        step_name: t.name,
        state: "resolved_manually".into(),
        task_state: states.get(&t.task_id).cloned().unwrap_or(t.task_state),
    })
}
