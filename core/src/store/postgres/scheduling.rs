//! Delayed tasks, task timeouts and cron schedules on PostgreSQL (migration 0009).
//! Rows another process works on are skipped (`SKIP LOCKED`), so any number of
//! processes promote and time out tasks without waiting for each other.

use serde_json::json;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use super::{write, Ctx};
use crate::error::{Error, ErrorCode, Result};
use crate::model::events::reason;
use crate::store::shared::Tr;
use crate::store::*;

/// Promotes up to `limit` delayed tasks due at `now`: their root steps become ready.
/// The transitions' insert sends the one NOTIFY of the transaction (a step turned ready).
pub async fn promote_due(conn: &mut PgConnection, ctx: &Ctx, now: i64, limit: u32) -> Result<u32> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "WITH due AS (SELECT id FROM tasker_tasks WHERE due_at IS NOT NULL AND due_at <= $1
                      ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE tasker_tasks t SET due_at = NULL, updated_at = $1 FROM due WHERE t.id = due.id
         RETURNING t.id",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    // A task cancelled while it waited has no pending roots left: nothing to promote.
    let rows = sqlx::query(
        "UPDATE tasker_steps SET state = 'ready', ready_at = $2, updated_at = $2
         WHERE task_id = ANY($1) AND state = 'pending' AND pending_parents = 0
         RETURNING id, task_id, name",
    )
    .bind(&ids)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut released: Vec<(i64, i64, String)> = Vec::with_capacity(rows.len());
    for r in rows {
        released.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
    }
    released.sort_unstable_by_key(|r| r.0);
    let trs: Vec<Tr> = released
        .iter()
        .map(|(id, task_id, name)| {
            Tr::step(*task_id, *id, name, Some("pending"), "ready", reason::DUE)
        })
        .collect();
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(ids.len() as u32)
}

pub async fn next_due(conn: &mut PgConnection) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT min(due_at) FROM tasker_tasks WHERE due_at IS NOT NULL")
            .fetch_one(conn)
            .await?,
    )
}

/// Ends tasks whose deadline passed: unfinished steps `cancelled`, the task `error`
/// (event `task.failed`, reason `task_timeout`).
pub async fn time_out_tasks(
    conn: &mut PgConnection,
    ctx: &Ctx,
    now: i64,
    limit: u32,
) -> Result<Vec<i64>> {
    // The deadline index covers every task with a deadline (migration 0013: its
    // predicate names no state, so state changes stay HOT updates). Completed and
    // cancelled tasks never run again: their passed deadlines leave the index here, so
    // the range read below holds unfinished (and errored) tasks only.
    sqlx::query(
        "UPDATE tasker_tasks SET deadline_at = NULL
         WHERE id IN (SELECT id FROM tasker_tasks
                      WHERE deadline_at IS NOT NULL AND deadline_at <= $1
                        AND state IN ('complete', 'cancelled')
                      ORDER BY deadline_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let tasks = sqlx::query(
        "SELECT id, state, timeout_ms FROM tasker_tasks
         WHERE deadline_at IS NOT NULL AND state IN ('pending', 'running') AND deadline_at <= $1
         ORDER BY deadline_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut trs = Vec::new();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (task_id, state, timeout_ms): (i64, String, Option<i64>) =
            (t.try_get(0)?, t.try_get(1)?, t.try_get(2)?);
        let details = Some(timeout_details(timeout_ms));
        let rows = sqlx::query(
            "WITH old AS (SELECT id, state FROM tasker_steps
                          WHERE task_id = $1 AND state IN ('pending', 'ready', 'running', 'waiting') ORDER BY id FOR UPDATE)
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
            "UPDATE tasker_tasks SET prev_state = state, state = 'error', n_active = 0, due_at = NULL,
                 deadline_at = NULL, finished_at = $2, updated_at = $2 WHERE id = $1",
        )
        .bind(task_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let mut steps: Vec<(i64, String, String, i64, Option<String>)> =
            Vec::with_capacity(rows.len());
        for r in rows {
            steps.push((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ));
        }
        steps.sort_unstable_by_key(|s| s.0);
        for (id, name, from, attempts, worker) in steps {
            trs.push(
                Tr::step(
                    task_id,
                    id,
                    &name,
                    Some(&from),
                    "cancelled",
                    reason::TASK_TIMEOUT,
                )
                .attempt(attempts, worker)
                .details(details.clone()),
            );
        }
        trs.push(Tr::task(task_id, Some(&state), "error", reason::TASK_TIMEOUT).details(details));
        out.push(task_id);
    }
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(out)
}

fn timeout_details(timeout_ms: Option<i64>) -> String {
    crate::store::shared::task_timeout_details(timeout_ms)
}

pub async fn task_timing(conn: &mut PgConnection, task_id: i64) -> Result<Option<TaskTiming>> {
    // The sweep clears the passed deadline of a completed or cancelled task (see
    // `time_out_tasks`); such a task still shows the deadline it had.
    let row = sqlx::query(
        "SELECT run_at, due_at, timeout_ms,
                COALESCE(deadline_at, CASE WHEN state IN ('complete', 'cancelled')
                                           THEN COALESCE(run_at, created_at) + timeout_ms END)
         FROM tasker_tasks WHERE id = $1",
    )
    .bind(task_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        let due: Option<i64> = r.try_get(1)?;
        Ok(TaskTiming {
            run_at: r.try_get::<Option<i64>, _>(0)?.map(Ts),
            delayed: due.is_some(),
            timeout_s: r.try_get::<Option<i64>, _>(2)?.map(|ms| ms / 1000),
            deadline_at: r.try_get::<Option<i64>, _>(3)?.map(Ts),
        })
    })
    .transpose()
}

const SCHEDULE_COLUMNS: &str = "name, namespace, template_name, version, cron, timezone, context, \
     catch_up, catch_up_limit, paused, next_fire_at, last_tick_at, last_task_id, created_at, updated_at";

fn schedule_from(r: &PgRow) -> Result<ScheduleRow> {
    Ok(ScheduleRow {
        name: r.try_get(0)?,
        namespace: r.try_get(1)?,
        template_name: r.try_get(2)?,
        version: r.try_get(3)?,
        cron: r.try_get(4)?,
        timezone: r.try_get(5)?,
        context: r.try_get(6)?,
        catch_up: r.try_get(7)?,
        catch_up_limit: r.try_get(8)?,
        paused: r.try_get(9)?,
        next_fire_at: r.try_get(10)?,
        last_tick_at: r.try_get(11)?,
        last_task_id: r.try_get(12)?,
        created_at: r.try_get(13)?,
        updated_at: r.try_get(14)?,
    })
}

pub async fn insert_schedule(conn: &mut PgConnection, s: &ScheduleRow) -> Result<()> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO tasker_schedules ({SCHEDULE_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (name) DO NOTHING"
    )))
    .bind(&s.name)
    .bind(&s.namespace)
    .bind(&s.template_name)
    .bind(&s.version)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(&s.context)
    .bind(&s.catch_up)
    .bind(s.catch_up_limit)
    .bind(s.paused)
    .bind(s.next_fire_at)
    .bind(s.last_tick_at)
    .bind(s.last_task_id)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(schedule_exists(&s.name));
    }
    Ok(())
}

fn schedule_exists(name: &str) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!(
            "a schedule named `{name}` exists already; delete it first, or choose another name"
        ),
    )
    .with_details(json!({ "name": name }))
}

pub async fn list_schedules(conn: &mut PgConnection) -> Result<Vec<ScheduleRow>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHEDULE_COLUMNS} FROM tasker_schedules ORDER BY name"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(schedule_from)
    .collect()
}

pub async fn get_schedule(conn: &mut PgConnection, name: &str) -> Result<Option<ScheduleRow>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHEDULE_COLUMNS} FROM tasker_schedules WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(schedule_from)
    .transpose()
}

pub async fn set_paused(
    conn: &mut PgConnection,
    name: &str,
    paused: bool,
    next_fire_at: Option<i64>,
    now: i64,
) -> Result<Option<ScheduleRow>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE tasker_schedules SET paused = $2, next_fire_at = COALESCE($3, next_fire_at),
             updated_at = $4 WHERE name = $1 RETURNING {SCHEDULE_COLUMNS}"
    )))
    .bind(name)
    .bind(paused)
    .bind(next_fire_at)
    .bind(now)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(schedule_from)
    .transpose()
}

pub async fn delete_schedule(conn: &mut PgConnection, name: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM tasker_schedules WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected()
        > 0)
}

pub async fn due_schedules(
    conn: &mut PgConnection,
    now: i64,
    limit: u32,
) -> Result<Vec<ScheduleRow>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHEDULE_COLUMNS} FROM tasker_schedules
         WHERE NOT paused AND next_fire_at <= $1 ORDER BY next_fire_at, name LIMIT $2"
    )))
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?
    .iter()
    .map(schedule_from)
    .collect()
}

#[allow(clippy::too_many_arguments)]
pub async fn advance_schedule(
    conn: &mut PgConnection,
    name: &str,
    from: i64,
    to: i64,
    last_tick: Option<i64>,
    last_task: Option<i64>,
    now: i64,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE tasker_schedules SET next_fire_at = $3,
             last_tick_at = COALESCE($4, last_tick_at), last_task_id = COALESCE($5, last_task_id),
             updated_at = $6
         WHERE name = $1 AND next_fire_at = $2 AND NOT paused",
    )
    .bind(name)
    .bind(from)
    .bind(to)
    .bind(last_tick)
    .bind(last_task)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}
