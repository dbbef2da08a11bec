//! Delayed tasks, task timeouts and cron schedules on SQLite (migration 0003).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::json;

use super::write;
use crate::error::{Error, ErrorCode, Result};
use crate::model::events::reason;
use crate::store::shared::Tr;
use crate::store::*;

/// Promotes up to `limit` delayed tasks due at `now`: their root steps become ready.
pub fn promote_due(conn: &Connection, now: i64, limit: u32) -> Result<u32> {
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM tasker_tasks WHERE due_at IS NOT NULL AND due_at <= ?1
             ORDER BY due_at, id LIMIT ?2",
        )?
        .query_map(params![now, limit], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if ids.is_empty() {
        return Ok(0);
    }
    let array = serde_json::Value::from(ids.clone()).to_string();
    conn.prepare_cached(
        "UPDATE tasker_tasks SET due_at = NULL, updated_at = ?2
         WHERE id IN (SELECT value FROM json_each(?1))",
    )?
    .execute(params![array, now])?;
    // A task cancelled while it waited has no pending roots left: nothing to promote.
    let mut released: Vec<(i64, i64, String)> = conn
        .prepare_cached(
            "UPDATE tasker_steps SET state = 'ready', ready_at = ?2, updated_at = ?2
             WHERE task_id IN (SELECT value FROM json_each(?1))
               AND state = 'pending' AND pending_parents = 0
             RETURNING id, task_id, name",
        )?
        .query_map(params![array, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    released.sort_unstable_by_key(|r| r.0);
    let trs: Vec<Tr> = released
        .iter()
        .map(|(id, task_id, name)| {
            Tr::step(*task_id, *id, name, Some("pending"), "ready", reason::DUE)
        })
        .collect();
    write::insert_transitions(conn, &trs, now)?;
    Ok(ids.len() as u32)
}

pub fn next_due(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MIN(due_at) FROM tasker_tasks WHERE due_at IS NOT NULL")?
        .query_row([], |r| r.get(0))?)
}

/// Ends tasks whose deadline passed: unfinished steps `cancelled`, the task `error`
/// (event `task.failed`, reason `task_timeout`).
pub fn time_out_tasks(conn: &Connection, now: i64, limit: u32) -> Result<Vec<i64>> {
    let tasks: Vec<(i64, String, Option<i64>)> = conn
        .prepare_cached(
            "SELECT id, state, timeout_ms FROM tasker_tasks
             WHERE deadline_at IS NOT NULL AND state IN ('pending', 'running') AND deadline_at <= ?1
             ORDER BY deadline_at, id LIMIT ?2",
        )?
        .query_map(params![now, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut trs = Vec::new();
    for (task_id, state, timeout_ms) in &tasks {
        let details = Some(timeout_details(*timeout_ms));
        let steps: Vec<(i64, String, String, i64, Option<String>)> = conn
            .prepare_cached(
                "SELECT id, name, state, attempts, worker FROM tasker_steps
                 WHERE task_id = ?1 AND state IN ('pending', 'ready', 'running', 'waiting') ORDER BY id",
            )?
            .query_map([task_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        conn.prepare_cached(
            "UPDATE tasker_steps SET state = 'cancelled', claim_token = NULL, lease_expires_at = NULL,
                 finished_at = ?2, updated_at = ?2
             WHERE task_id = ?1 AND state IN ('pending', 'ready', 'running', 'waiting')",
        )?
        .execute(params![task_id, now])?;
        conn.prepare_cached(
            "UPDATE tasker_tasks SET prev_state = state, state = 'error', n_active = 0, due_at = NULL,
                 deadline_at = NULL, finished_at = ?2, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![task_id, now])?;
        for (id, name, from, attempts, worker) in steps {
            trs.push(
                Tr::step(
                    *task_id,
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
        trs.push(Tr::task(*task_id, Some(state), "error", reason::TASK_TIMEOUT).details(details));
    }
    write::insert_transitions(conn, &trs, now)?;
    Ok(tasks.into_iter().map(|t| t.0).collect())
}

pub fn task_timing(conn: &Connection, task_id: i64) -> Result<Option<TaskTiming>> {
    Ok(conn
        .prepare_cached(
            "SELECT run_at, due_at, timeout_ms, deadline_at FROM tasker_tasks WHERE id = ?1",
        )?
        .query_row([task_id], |r| {
            let due: Option<i64> = r.get(1)?;
            Ok(TaskTiming {
                run_at: r.get::<_, Option<i64>>(0)?.map(Ts),
                delayed: due.is_some(),
                timeout_s: r.get::<_, Option<i64>>(2)?.map(|ms| ms / 1000),
                deadline_at: r.get::<_, Option<i64>>(3)?.map(Ts),
            })
        })
        .optional()?)
}

const SCHEDULE_COLUMNS: &str = "name, namespace, template_name, version, cron, timezone, context, \
     catch_up, catch_up_limit, paused, next_fire_at, last_tick_at, last_task_id, created_at, updated_at";

fn schedule_from(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    Ok(ScheduleRow {
        name: r.get(0)?,
        namespace: r.get(1)?,
        template_name: r.get(2)?,
        version: r.get(3)?,
        cron: r.get(4)?,
        timezone: r.get(5)?,
        context: r.get(6)?,
        catch_up: r.get(7)?,
        catch_up_limit: r.get(8)?,
        paused: r.get::<_, i64>(9)? != 0,
        next_fire_at: r.get(10)?,
        last_tick_at: r.get(11)?,
        last_task_id: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
    })
}

pub fn insert_schedule(conn: &Connection, s: &ScheduleRow) -> Result<()> {
    let taken = conn
        .prepare_cached("SELECT 1 FROM tasker_schedules WHERE name = ?1")?
        .query_row([&s.name], |_| Ok(()))
        .optional()?;
    if taken.is_some() {
        return Err(schedule_exists(&s.name));
    }
    conn.prepare_cached(&format!(
        "INSERT INTO tasker_schedules ({SCHEDULE_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        s.name,
        s.namespace,
        s.template_name,
        s.version,
        s.cron,
        s.timezone,
        s.context,
        s.catch_up,
        s.catch_up_limit,
        i64::from(s.paused),
        s.next_fire_at,
        s.last_tick_at,
        s.last_task_id,
        s.created_at,
        s.updated_at
    ])?;
    Ok(())
}

/// The `conflict` of a schedule name that is taken.
pub fn schedule_exists(name: &str) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!(
            "a schedule named `{name}` exists already; delete it first, or choose another name"
        ),
    )
    .with_details(json!({ "name": name }))
}

pub fn list_schedules(conn: &Connection) -> Result<Vec<ScheduleRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM tasker_schedules ORDER BY name"
        ))?
        .query_map([], schedule_from)?
        .collect::<rusqlite::Result<_>>()?)
}

pub fn get_schedule(conn: &Connection, name: &str) -> Result<Option<ScheduleRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM tasker_schedules WHERE name = ?1"
        ))?
        .query_row([name], schedule_from)
        .optional()?)
}

pub fn set_paused(
    conn: &Connection,
    name: &str,
    paused: bool,
    next_fire_at: Option<i64>,
    now: i64,
) -> Result<Option<ScheduleRow>> {
    conn.prepare_cached(
        "UPDATE tasker_schedules SET paused = ?2, next_fire_at = COALESCE(?3, next_fire_at),
             updated_at = ?4 WHERE name = ?1",
    )?
    .execute(params![name, i64::from(paused), next_fire_at, now])?;
    get_schedule(conn, name)
}

pub fn delete_schedule(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM tasker_schedules WHERE name = ?1")?
        .execute([name])?
        > 0)
}

pub fn due_schedules(conn: &Connection, now: i64, limit: u32) -> Result<Vec<ScheduleRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM tasker_schedules
             WHERE paused = 0 AND next_fire_at <= ?1 ORDER BY next_fire_at, name LIMIT ?2"
        ))?
        .query_map(params![now, limit], schedule_from)?
        .collect::<rusqlite::Result<_>>()?)
}

pub fn advance_schedule(
    conn: &Connection,
    name: &str,
    from: i64,
    to: i64,
    last_tick: Option<i64>,
    last_task: Option<i64>,
    now: i64,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE tasker_schedules SET next_fire_at = ?3,
                 last_tick_at = COALESCE(?4, last_tick_at), last_task_id = COALESCE(?5, last_task_id),
                 updated_at = ?6
             WHERE name = ?1 AND next_fire_at = ?2 AND paused = 0",
        )?
        .execute(params![name, from, to, last_tick, last_task, now])?
        == 1)
}

fn timeout_details(timeout_ms: Option<i64>) -> String {
    crate::store::shared::task_timeout_details(timeout_ms)
}
