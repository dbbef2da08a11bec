//! Templates and the read side: task views, listings, statistics and events.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::model::events;
use crate::model::template::Template;
use crate::store::shared::{raw_opt, ts, SUMMARY_COLUMNS};
use crate::store::*;

pub fn put_template(conn: &Connection, t: &Template, replace: bool, now: i64) -> Result<bool> {
    let body = serde_json::to_string(t).map_err(|e| Error::internal(e.to_string()))?;
    let stored: Option<String> = conn
        .prepare_cached(
            "SELECT body FROM tasker_templates WHERE namespace = ?1 AND name = ?2 AND version = ?3",
        )?
        .query_row(params![t.namespace, t.name, t.version], |r| r.get(0))
        .optional()?;
    if let Some(stored) = stored {
        let registered = serde_json::from_str::<Template>(&stored).ok();
        if registered.as_ref() == Some(t) {
            return Ok(false);
        }
        if !replace {
            return Err(crate::store::shared::template_conflict(
                registered.as_ref(),
                t,
            ));
        }
        conn.prepare_cached(
            "UPDATE tasker_templates SET body = ?4, created_at = ?5 WHERE namespace = ?1 AND name = ?2 AND version = ?3",
        )?
        .execute(params![t.namespace, t.name, t.version, body, now])?;
        return Ok(true);
    }
    conn.prepare_cached(
        "INSERT INTO tasker_templates (namespace, name, version, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![t.namespace, t.name, t.version, body, now])?;
    Ok(true)
}

pub fn get_template(
    conn: &Connection,
    namespace: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Option<Template>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, body FROM tasker_templates WHERE namespace = ?1 AND name = ?2",
    )?;
    let rows = stmt
        .query_map(params![namespace, name], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<std::result::Result<Vec<(String, String)>, _>>()?;
    crate::store::shared::pick_template(rows, version)
}

pub fn list_templates(
    conn: &Connection,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<crate::store::TemplateSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT namespace, name, version, body, created_at FROM tasker_templates
         WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR name = ?2)",
    )?;
    let rows = stmt
        .query_map(params![namespace, name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    crate::store::shared::template_summaries(rows)
}

pub fn registered_handlers(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT body FROM tasker_templates")?;
    let bodies = stmt
        .query_map([], |row| row.get(0))?
        .collect::<std::result::Result<Vec<String>, _>>()?;
    Ok(crate::store::shared::handlers_of(bodies))
}

pub fn next_ready_at(conn: &Connection, handlers: Option<&[String]>) -> Result<Option<i64>> {
    Ok(match handlers {
        None => conn
            .prepare_cached(
                "SELECT MIN(ready_at) FROM tasker_steps WHERE state = 'ready' AND limited = 0",
            )?
            .query_row([], |r| r.get(0))?,
        Some(h) => conn
            .prepare_cached(
                "SELECT MIN(ready_at) FROM tasker_steps
                 WHERE state = 'ready' AND limited = 0 AND handler IN (SELECT value FROM json_each(?1))",
            )?
            .query_row([serde_json::Value::from(h.to_vec()).to_string()], |r| {
                r.get(0)
            })?,
    })
}

fn summary_from(row: &Row<'_>) -> rusqlite::Result<TaskSummary> {
    let started: Option<i64> = row.get(11)?;
    let finished: Option<i64> = row.get(12)?;
    Ok(TaskSummary {
        id: row.get(0)?,
        namespace: row.get(1)?,
        name: row.get(2)?,
        version: row.get(3)?,
        state: row.get(4)?,
        priority: row.get(5)?,
        idempotency_key: row.get(6)?,
        steps_total: row.get(7)?,
        steps_done: row.get(8)?,
        steps_error: row.get(9)?,
        created_at: Ts(row.get(10)?),
        started_at: ts(started),
        finished_at: ts(finished),
        duration_ms: match (started, finished) {
            (Some(s), Some(f)) => Some(f - s),
            _ => None,
        },
    })
}

pub fn get_task(conn: &Connection, task_id: i64) -> Result<Option<TaskView>> {
    let Some((summary, context)) = conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS}, context FROM tasker_tasks WHERE id = ?1"
        ))?
        .query_row([task_id], |r| {
            Ok((summary_from(r)?, r.get::<_, String>(13)?))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut parents: HashMap<i64, Vec<String>> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT e.child_id, p.name FROM tasker_steps AS p JOIN tasker_edges AS e ON e.parent_id = p.id
             WHERE p.task_id = ?1 ORDER BY p.id",
        )?;
        let mut rows = stmt.query([task_id])?;
        while let Some(r) = rows.next()? {
            parents.entry(r.get(0)?).or_default().push(r.get(1)?);
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, handler, state, pending_parents, attempts, retry_base, max_attempts, priority, config,
                result, last_error, worker, ready_at, lease_expires_at, first_started_at, started_at, finished_at,
                wait_until
         FROM tasker_steps WHERE task_id = ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([task_id])?;
    let mut steps = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let first: Option<i64> = r.get(15)?;
        let finished: Option<i64> = r.get(17)?;
        let ready_at: Option<i64> = r.get(13)?;
        let lease: Option<i64> = r.get(14)?;
        let attempts: i64 = r.get(5)?;
        let policy_attempts: i64 = r.get::<_, i64>(7)?;
        let retry_base: i64 = r.get(6)?;
        steps.push(StepView {
            id,
            name: r.get(1)?,
            handler: r.get(2)?,
            state: r.get(3)?,
            depends_on: parents.remove(&id).unwrap_or_default(),
            level: 0,
            pending_parents: r.get(4)?,
            attempts,
            max_attempts: policy_attempts + retry_base,
            run: 1,
            run_attempts: attempts - retry_base,
            run_max_attempts: policy_attempts,
            priority: r.get(8)?,
            config: raw_opt(r.get(9)?)?,
            result: raw_opt(r.get(10)?)?,
            errors: Vec::new(),
            error: raw_opt(r.get(11)?)?,
            worker: r.get(12)?,
            ready_at: ts(ready_at),
            lease_expires_at: ts(lease),
            wait_until: ts(r.get(18)?),
            first_started_at: ts(first),
            started_at: ts(r.get(16)?),
            finished_at: ts(finished),
            duration_ms: match (first, finished) {
                (Some(s), Some(f)) => Some(f - s),
                _ => None,
            },
            ready_at_ms: ready_at,
            lease_expires_at_ms: lease,
            children: Vec::new(),
        });
    }
    Ok(Some(TaskView {
        timing: TaskTiming::default(),
        summary,
        context: RawValue::from_string(context).map_err(|e| Error::internal(e.to_string()))?,
        parent: None,
        steps,
    }))
}

pub fn list_tasks(conn: &Connection, f: &TaskFilter) -> Result<Vec<TaskSummary>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM tasker_tasks
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR name = ?3)
               AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5"
        ))?
        .query_map(params![f.state, f.namespace, f.name, f.before_id, i64::from(f.limit)], summary_from)?
        .collect::<rusqlite::Result<_>>()?)
}

fn counts(conn: &Connection, sql: &str) -> Result<BTreeMap<String, i64>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

fn counts_since(conn: &Connection, sql: &str, since: i64) -> Result<Vec<(String, i64)>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

pub fn stats(conn: &Connection, now: i64, window_ms: i64) -> Result<Stats> {
    let tasks = counts(
        conn,
        "SELECT state, count(*) FROM tasker_tasks GROUP BY state",
    )?;
    let steps = counts(
        conn,
        "SELECT state, count(*) FROM tasker_steps GROUP BY state",
    )?;
    let oldest: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(ready_at) FROM tasker_steps WHERE state = 'ready' AND ready_at <= ?1",
        )?
        .query_row([now], |r| r.get(0))?;
    let slowest_steps = conn
        .prepare_cached(
            "SELECT task_id, id, name, handler, finished_at - first_started_at AS ms FROM tasker_steps
             WHERE state = 'complete' AND first_started_at IS NOT NULL ORDER BY ms DESC, id LIMIT 10",
        )?
        .query_map([], |r| {
            Ok(SlowStep {
                task_id: r.get(0)?,
                step_id: r.get(1)?,
                step_name: r.get(2)?,
                handler: r.get(3)?,
                duration_ms: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let since = now - window_ms;
    let mut throughput = Throughput {
        window_ms,
        ..Default::default()
    };
    for (state, n) in counts_since(
        conn,
        "SELECT state, count(*) FROM tasker_steps WHERE finished_at >= ?1 GROUP BY state",
        since,
    )? {
        match state.as_str() {
            "complete" => throughput.steps_completed = n,
            "error" => throughput.steps_failed = n,
            _ => {}
        }
    }
    for (state, n) in counts_since(
        conn,
        "SELECT state, count(*) FROM tasker_tasks WHERE finished_at >= ?1 GROUP BY state",
        since,
    )? {
        match state.as_str() {
            "complete" => throughput.tasks_completed = n,
            "error" => throughput.tasks_failed = n,
            "cancelled" => throughput.tasks_cancelled = n,
            _ => {}
        }
    }
    let slowest_tasks = conn
        .prepare_cached(
            "SELECT id, namespace, name, finished_at - started_at AS ms FROM tasker_tasks
             WHERE state = 'complete' AND started_at IS NOT NULL ORDER BY ms DESC, id LIMIT 10",
        )?
        .query_map([], |r| {
            Ok(SlowTask {
                task_id: r.get(0)?,
                namespace: r.get(1)?,
                name: r.get(2)?,
                duration_ms: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Stats {
        tasks,
        steps,
        oldest_ready_age_ms: oldest.map(|t| (now - t).max(0)).unwrap_or(0),
        throughput: throughput.finish(),
        slowest_steps,
        slowest_tasks,
        last_event_id: last_event_id(conn)?,
    })
}

pub fn events(
    conn: &Connection,
    since: i64,
    limit: u32,
    task_id: Option<i64>,
) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details
         FROM tasker_transitions WHERE id > ?1 AND (?2 IS NULL OR task_id = ?2) ORDER BY id LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![since, task_id, i64::from(limit)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let step_id: Option<i64> = r.get(2)?;
        let from: Option<String> = r.get(4)?;
        let to: String = r.get(5)?;
        let why: Option<String> = r.get(9)?;
        let event = match step_id {
            Some(_) => events::step_event(from.as_deref(), &to, why.as_deref()),
            None => events::task_event(from.as_deref(), &to),
        };
        out.push(Event {
            id: r.get(0)?,
            event,
            task_id: r.get(1)?,
            step_id,
            step_name: r.get(3)?,
            from,
            to,
            at: Ts(r.get(6)?),
            attempt: r.get(7)?,
            worker: r.get(8)?,
            reason: why,
            details: raw_opt(r.get(10)?)?,
        });
    }
    Ok(out)
}

pub fn last_event_id(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM tasker_transitions")?
        .query_row([], |r| r.get(0))?)
}
