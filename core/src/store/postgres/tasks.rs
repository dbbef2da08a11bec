//! Idempotency-key lookups and the operator actions on PostgreSQL (creation is one
//! function call, in `hot`).

use serde_json::json;
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{write, Ctx};
use crate::error::{Error, Result};
use crate::model::events::reason;
use crate::model::state::StepState;
use crate::store::shared::{bump, Deltas, Tr};
use crate::store::*;

pub async fn find_by_key(
    conn: &mut PgConnection,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<CreatedTask>> {
    let row = sqlx::query("SELECT id, state FROM tasker_tasks WHERE namespace = $1 AND name = $2 AND idempotency_key = $3")
        .bind(namespace)
        .bind(name)
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(CreatedTask {
            task_id: r.try_get(0)?,
            created: false,
            state: r.try_get(1)?,
        })
    })
    .transpose()
}

/// The tasks with these idempotency keys, one answer per key in order (one query; each
/// key is a lookup in the unique key index).
pub async fn find_by_keys(
    conn: &mut PgConnection,
    keys: &[TaskKey],
) -> Result<Vec<Option<CreatedTask>>> {
    let namespaces: Vec<&str> = keys.iter().map(|k| k.namespace.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let values: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    let rows = sqlx::query(
        "SELECT u.n, t.id, t.state
         FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(ns, name, key, n)
         JOIN tasker_tasks t ON t.namespace = u.ns AND t.name = u.name AND t.idempotency_key = u.key",
    )
    .bind(namespaces)
    .bind(names)
    .bind(values)
    .fetch_all(conn)
    .await?;
    let mut out = vec![None; keys.len()];
    for r in rows {
        let n: i64 = r.try_get(0)?;
        let slot = out
            .get_mut((n - 1) as usize)
            .ok_or_else(|| Error::internal("a key lookup answered an unknown position"))?;
        *slot = Some(CreatedTask {
            task_id: r.try_get(1)?,
            created: false,
            state: r.try_get(2)?,
        });
    }
    Ok(out)
}

async fn lock_task(conn: &mut PgConnection, task_id: i64) -> Result<String> {
    sqlx::query("SELECT state FROM tasker_tasks WHERE id = $1 FOR UPDATE")
        .bind(task_id)
        .fetch_optional(conn)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .ok_or_else(|| Error::not_found(format!("task {task_id} does not exist")))
}

pub async fn cancel(
    conn: &mut PgConnection,
    ctx: &Ctx,
    task_id: i64,
    why: Option<String>,
    now: i64,
) -> Result<TaskChange> {
    let state = lock_task(conn, task_id).await?;
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
        "WITH old AS (SELECT id, state FROM tasker_steps
                      WHERE task_id = $1 AND state IN ('pending', 'ready', 'running', 'waiting', 'error') ORDER BY id FOR UPDATE)
         UPDATE tasker_steps s SET state = 'cancelled', claim_token = NULL, lease_expires_at = NULL,
             finished_at = $2, updated_at = $2
         FROM old WHERE s.id = old.id
         RETURNING s.id, s.name, old.state, s.attempts, s.worker",
    )
    .bind(task_id)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE tasker_tasks SET prev_state = state, state = 'cancelled', n_active = 0, n_error = 0, due_at = NULL,
             finished_at = $2, updated_at = $2 WHERE id = $1",
    )
    .bind(task_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut cancelled: Vec<(i64, String, String, i64, Option<String>)> =
        Vec::with_capacity(rows.len());
    for r in rows {
        cancelled.push((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        ));
    }
    cancelled.sort_unstable_by_key(|c| c.0);
    let mut trs = Vec::with_capacity(cancelled.len() + 1);
    for (id, name, from, attempts, worker) in cancelled {
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
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(TaskChange {
        task_id,
        state: "cancelled".into(),
        changed: true,
    })
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

async fn find_step(conn: &mut PgConnection, step: &StepRef) -> Result<Target> {
    const COLS: &str = "SELECT s.id, s.task_id, s.name, s.state, s.attempts, s.worker, t.state
         FROM tasker_steps s JOIN tasker_tasks t ON t.id = s.task_id";
    let row = match step {
        StepRef::Id(id) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{COLS} WHERE s.id = $1 FOR UPDATE OF s, t"
            )))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        }
        StepRef::Named { task_id, step_name } => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{COLS} WHERE s.task_id = $1 AND s.name = $2 FOR UPDATE OF s, t"
            )))
            .bind(task_id)
            .bind(step_name)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some(r) = row else {
        return Err(match step {
            StepRef::Id(id) => Error::not_found(format!("step {id} does not exist")),
            StepRef::Named { task_id, step_name } => {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM tasker_steps WHERE task_id = $1 ORDER BY id",
                )
                .bind(task_id)
                .fetch_all(&mut *conn)
                .await?;
                let exists = !names.is_empty()
                    || sqlx::query_scalar::<_, i64>("SELECT id FROM tasker_tasks WHERE id = $1")
                        .bind(task_id)
                        .fetch_optional(&mut *conn)
                        .await?
                        .is_some();
                crate::store::shared::missing_named_step(*task_id, step_name, exists, &names)
            }
        });
    };
    let state: String = r.try_get(3)?;
    Ok(Target {
        id: r.try_get(0)?,
        task_id: r.try_get(1)?,
        name: r.try_get(2)?,
        state: StepState::parse(&state)
            .ok_or_else(|| Error::internal(format!("unknown stored step state {state}")))?,
        attempts: r.try_get(4)?,
        worker: r.try_get(5)?,
        task_state: r.try_get(6)?,
    })
}

pub async fn retry_step(
    conn: &mut PgConnection,
    ctx: &Ctx,
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
        "UPDATE tasker_steps SET state = 'ready', ready_at = $2, retry_base = attempts, finished_at = NULL,
             updated_at = $2 WHERE id = $1",
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
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(StepChange {
        step_id: t.id,
        task_id: t.task_id,
        step_name: t.name,
        state: "ready".into(),
        task_state: states.get(&t.task_id).cloned().unwrap_or(t.task_state),
    })
}

pub async fn resolve_step(
    conn: &mut PgConnection,
    ctx: &Ctx,
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
    let due: Option<i64> = sqlx::query_scalar("SELECT due_at FROM tasker_tasks WHERE id = $1")
        .bind(t.task_id)
        .fetch_one(&mut *conn)
        .await?;
    if let Some(at) = due {
        return Err(crate::store::shared::delayed_task_refusal(
            t.task_id, &t.name, at,
        ));
    }
    sqlx::query(
        "UPDATE tasker_steps SET state = 'resolved_manually', result = $2, claim_token = NULL,
             lease_expires_at = NULL, finished_at = $3, updated_at = $3 WHERE id = $1",
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
    write::release_children(conn, &[t.id], now, &mut deltas, &mut trs).await?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(StepChange {
        step_id: t.id,
        task_id: t.task_id,
        step_name: t.name,
        state: "resolved_manually".into(),
        task_state: states.get(&t.task_id).cloned().unwrap_or(t.task_state),
    })
}
