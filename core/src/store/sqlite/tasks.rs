//! Task creation and the operator actions: cancel, retry a step, resolve a step.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use super::write::{self, bump, Deltas, Tr};
use crate::error::{Error, Result};
use crate::model::events::reason;
use crate::model::state::StepState;
use crate::store::*;

/// Creates a task, its steps, its edges and their transitions in one transaction.
/// Step and task ids are assigned here (the writer holds the database's write lock),
/// so steps and edges are inserted with one statement each, whatever the DAG's size.
pub async fn create(conn: &mut SqliteConnection, task: NewTask) -> Result<CreatedTask> {
    let t = &task.template;
    let now = task.now;
    if let Some(key) = &task.idempotency_key {
        let existing = sqlx::query(
            "SELECT id, state FROM tasker_tasks WHERE namespace = ?1 AND name = ?2 AND idempotency_key = ?3",
        )
        .bind(&t.namespace)
        .bind(&t.name)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = existing {
            return Ok(CreatedTask {
                task_id: row.try_get(0)?,
                created: false,
                state: row.try_get(1)?,
            });
        }
    }
    let roots = t.steps.iter().filter(|s| s.depends_on.is_empty()).count() as i64;
    let task_id: i64 = sqlx::query(
        "INSERT INTO tasker_tasks (namespace, name, version, state, context, idempotency_key, priority,
                                   n_total, n_active, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?9) RETURNING id",
    )
    .bind(&t.namespace)
    .bind(&t.name)
    .bind(&t.version)
    .bind(&task.context)
    .bind(&task.idempotency_key)
    .bind(task.priority)
    .bind(t.steps.len() as i64)
    .bind(roots)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;

    let first_id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 FROM tasker_steps")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
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
        let state = if s.depends_on.is_empty() {
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
    sqlx::query(
        "INSERT INTO tasker_steps (id, task_id, name, handler, state, pending_parents, max_attempts,
             backoff, base_ms, max_ms, jitter, timeout_ms, priority, config, ready_at, created_at, updated_at)
         SELECT value ->> 0, ?2, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
                value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11,
                value ->> 12, value ->> 13, ?3, ?3
         FROM json_each(?1)",
    )
    .bind(Value::Array(steps).to_string())
    .bind(task_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if !edges.is_empty() {
        sqlx::query(
            "INSERT INTO tasker_edges (parent_id, child_id) SELECT value ->> 0, value ->> 1 FROM json_each(?1)",
        )
        .bind(Value::Array(edges).to_string())
        .execute(&mut *conn)
        .await?;
    }
    write::insert_transitions(conn, &trs, now).await?;
    Ok(CreatedTask {
        task_id,
        created: true,
        state: "pending".into(),
    })
}

pub async fn cancel(
    conn: &mut SqliteConnection,
    task_id: i64,
    why: Option<String>,
    now: i64,
) -> Result<TaskChange> {
    let state = task_state_of(conn, task_id).await?;
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
    let rows = sqlx::query(
        "SELECT id, name, state, attempts, worker FROM tasker_steps
         WHERE task_id = ?1 AND state IN ('pending', 'ready', 'running', 'error')",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE tasker_steps SET state = 'cancelled', claim_token = NULL, lease_expires_at = NULL,
             finished_at = ?2, updated_at = ?2
         WHERE task_id = ?1 AND state IN ('pending', 'ready', 'running', 'error')",
    )
    .bind(task_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE tasker_tasks SET prev_state = state, state = 'cancelled', n_active = 0,
             finished_at = ?2, updated_at = ?2 WHERE id = ?1",
    )
    .bind(task_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut trs = Vec::with_capacity(rows.len() + 1);
    for row in rows {
        let from: String = row.try_get(2)?;
        let name: String = row.try_get(1)?;
        trs.push(
            Tr::step(
                task_id,
                row.try_get(0)?,
                &name,
                Some(&from),
                "cancelled",
                reason::CANCELLED,
            )
            .attempt(row.try_get(3)?, row.try_get(4)?)
            .details(details.clone()),
        );
    }
    trs.push(Tr::task(task_id, Some(&state), "cancelled", reason::CANCELLED).details(details));
    write::insert_transitions(conn, &trs, now).await?;
    Ok(TaskChange {
        task_id,
        state: "cancelled".into(),
        changed: true,
    })
}

async fn task_state_of(conn: &mut SqliteConnection, task_id: i64) -> Result<String> {
    let row = sqlx::query("SELECT state FROM tasker_tasks WHERE id = ?1")
        .bind(task_id)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(Error::not_found(format!("task {task_id} does not exist"))),
    }
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

async fn find_step(conn: &mut SqliteConnection, step: &StepRef) -> Result<Target> {
    const COLS: &str = "SELECT s.id, s.task_id, s.name, s.state, s.attempts, s.worker, t.state
         FROM tasker_steps AS s JOIN tasker_tasks AS t ON t.id = s.task_id";
    let row = match step {
        StepRef::Id(id) => {
            sqlx::query(sqlx::AssertSqlSafe(format!("{COLS} WHERE s.id = ?1")))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        }
        StepRef::Named { task_id, step_name } => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{COLS} WHERE s.task_id = ?1 AND s.name = ?2"
            )))
            .bind(task_id)
            .bind(step_name)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some(row) = row else {
        return Err(Error::not_found(match step {
            StepRef::Id(id) => format!("step {id} does not exist"),
            StepRef::Named { task_id, step_name } => {
                format!("task {task_id} has no step `{step_name}`")
            }
        }));
    };
    let state: String = row.try_get(3)?;
    Ok(Target {
        id: row.try_get(0)?,
        task_id: row.try_get(1)?,
        name: row.try_get(2)?,
        state: StepState::parse(&state)
            .ok_or_else(|| Error::internal(format!("unknown stored step state {state}")))?,
        attempts: row.try_get(4)?,
        worker: row.try_get(5)?,
        task_state: row.try_get(6)?,
    })
}

/// Puts an errored step back to `ready` with a fresh attempt budget; an errored task
/// resumes running.
pub async fn retry_step(
    conn: &mut SqliteConnection,
    step: StepRef,
    now: i64,
) -> Result<StepChange> {
    let t = find_step(conn, &step).await?;
    if t.state != StepState::Error || t.task_state == "cancelled" {
        return Err(Error::invalid_state(format!(
            "step `{}` of task {} is {} (task {}); only a step in error can be retried",
            t.name, t.task_id, t.state, t.task_state
        ))
        .with_details(
            json!({ "step_id": t.id, "state": t.state.as_str(), "task_state": t.task_state }),
        ));
    }
    sqlx::query(
        "UPDATE tasker_steps SET state = 'ready', ready_at = ?2, retry_base = attempts, finished_at = NULL,
             updated_at = ?2 WHERE id = ?1",
    )
    .bind(t.id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
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
    let states = write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, &trs, now).await?;
    Ok(StepChange {
        step_id: t.id,
        task_id: t.task_id,
        step_name: t.name,
        state: "ready".into(),
        task_state: states.get(&t.task_id).cloned().unwrap_or(t.task_state),
    })
}

/// Marks a step done by hand (with an optional result its children receive).
pub async fn resolve_step(
    conn: &mut SqliteConnection,
    step: StepRef,
    result: Option<String>,
    why: Option<String>,
    now: i64,
) -> Result<StepChange> {
    let t = find_step(conn, &step).await?;
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
    sqlx::query(
        "UPDATE tasker_steps SET state = 'resolved_manually', result = ?2, claim_token = NULL,
             lease_expires_at = NULL, finished_at = ?3, updated_at = ?3 WHERE id = ?1",
    )
    .bind(t.id)
    .bind(result.unwrap_or_else(|| "null".into()))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut deltas = Deltas::new();
    bump(&mut deltas, t.task_id, |d| {
        d.done += 1;
        match t.state {
            StepState::Ready | StepState::Running => d.active -= 1,
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
    write::release_children(conn, &[t.id], now, &mut deltas, &mut trs).await?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, &trs, now).await?;
    Ok(StepChange {
        step_id: t.id,
        task_id: t.task_id,
        step_name: t.name,
        state: "resolved_manually".into(),
        task_state: states.get(&t.task_id).cloned().unwrap_or(t.task_state),
    })
}
