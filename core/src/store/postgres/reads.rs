//! Templates and the read side on PostgreSQL.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use crate::error::{Error, Result};
use crate::model::events;
use crate::model::template::Template;
use crate::store::shared::{raw_opt, ts, SUMMARY_COLUMNS};
use crate::store::*;

pub async fn put_template(
    conn: &mut PgConnection,
    t: &Template,
    replace: bool,
    now: i64,
) -> Result<bool> {
    let body = serde_json::to_string(t).map_err(|e| Error::internal(e.to_string()))?;
    let inserted = sqlx::query(
        "INSERT INTO tasker_templates (namespace, name, version, body, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (namespace, name, version) DO NOTHING RETURNING id",
    )
    .bind(&t.namespace)
    .bind(&t.name)
    .bind(&t.version)
    .bind(&body)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(true);
    }
    let stored: String = sqlx::query("SELECT body FROM tasker_templates WHERE namespace = $1 AND name = $2 AND version = $3 FOR UPDATE")
        .bind(&t.namespace)
        .bind(&t.name)
        .bind(&t.version)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
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
    sqlx::query("UPDATE tasker_templates SET body = $4, created_at = $5 WHERE namespace = $1 AND name = $2 AND version = $3")
        .bind(&t.namespace)
        .bind(&t.name)
        .bind(&t.version)
        .bind(body)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(true)
}

pub async fn get_template(
    conn: &mut PgConnection,
    namespace: &str,
    name: &str,
    version: Option<&str>,
) -> Result<Option<Template>> {
    let rows = sqlx::query(
        "SELECT version, body FROM tasker_templates WHERE namespace = $1 AND name = $2",
    )
    .bind(namespace)
    .bind(name)
    .fetch_all(conn)
    .await?;
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>>>()?;
    crate::store::shared::pick_template(rows, version)
}

pub async fn list_templates(
    conn: &mut PgConnection,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<crate::store::TemplateSummary>> {
    let rows = sqlx::query(
        "SELECT namespace, name, version, body, created_at FROM tasker_templates
         WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR name = $2)",
    )
    .bind(namespace)
    .bind(name)
    .fetch_all(conn)
    .await?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    crate::store::shared::template_summaries(rows)
}

pub async fn registered_handlers(conn: &mut PgConnection) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT body FROM tasker_templates")
        .fetch_all(conn)
        .await?;
    let bodies = rows
        .iter()
        .map(|row| Ok(row.try_get(0)?))
        .collect::<Result<Vec<String>>>()?;
    Ok(crate::store::shared::handlers_of(bodies))
}

pub async fn next_ready_at(
    conn: &mut PgConnection,
    handlers: Option<&[String]>,
) -> Result<Option<i64>> {
    let row =
        match handlers {
            None => sqlx::query(
                "SELECT min(ready_at) FROM tasker_steps WHERE state = 'ready' AND limited = false",
            )
            .fetch_one(conn)
            .await?,
            Some(h) => {
                sqlx::query(
                    "SELECT min(ready_at) FROM tasker_steps
             WHERE state = 'ready' AND limited = false AND handler = ANY($1)",
                )
                .bind(h)
                .fetch_one(conn)
                .await?
            }
        };
    Ok(row.try_get(0)?)
}

fn summary_from(row: &PgRow) -> Result<TaskSummary> {
    let started: Option<i64> = row.try_get(11)?;
    let finished: Option<i64> = row.try_get(12)?;
    Ok(TaskSummary {
        id: row.try_get(0)?,
        namespace: row.try_get(1)?,
        name: row.try_get(2)?,
        version: row.try_get(3)?,
        state: row.try_get(4)?,
        priority: row.try_get(5)?,
        idempotency_key: row.try_get(6)?,
        steps_total: row.try_get(7)?,
        steps_done: row.try_get(8)?,
        steps_error: row.try_get(9)?,
        created_at: Ts(row.try_get(10)?),
        started_at: ts(started),
        finished_at: ts(finished),
        duration_ms: match (started, finished) {
            (Some(s), Some(f)) => Some(f - s),
            _ => None,
        },
    })
}

pub async fn get_task(conn: &mut PgConnection, task_id: i64) -> Result<Option<TaskView>> {
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS}, context FROM tasker_tasks WHERE id = $1"
    )))
    .bind(task_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let summary = summary_from(&row)?;
    let context: String = row.try_get(13)?;
    let mut parents: HashMap<i64, Vec<String>> = HashMap::new();
    for r in sqlx::query(
        "SELECT e.child_id, p.name FROM tasker_steps p JOIN tasker_edges e ON e.parent_id = p.id
         WHERE p.task_id = $1 ORDER BY p.id",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?
    {
        parents
            .entry(r.try_get(0)?)
            .or_default()
            .push(r.try_get(1)?);
    }
    let rows = sqlx::query(
        "SELECT id, name, handler, state, pending_parents, attempts, retry_base, max_attempts, priority, config,
                result, last_error, worker, ready_at, lease_expires_at, first_started_at, started_at, finished_at,
                wait_until
         FROM tasker_steps WHERE task_id = $1 ORDER BY id",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut steps = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get(0)?;
        let first: Option<i64> = r.try_get(15)?;
        let finished: Option<i64> = r.try_get(17)?;
        let ready_at: Option<i64> = r.try_get(13)?;
        let lease: Option<i64> = r.try_get(14)?;
        let attempts: i64 = r.try_get(5)?;
        let policy_attempts: i64 = r.try_get::<i64, _>(7)?;
        let retry_base: i64 = r.try_get(6)?;
        steps.push(StepView {
            id,
            name: r.try_get(1)?,
            handler: r.try_get(2)?,
            state: r.try_get(3)?,
            depends_on: parents.remove(&id).unwrap_or_default(),
            level: 0,
            pending_parents: r.try_get(4)?,
            attempts,
            max_attempts: policy_attempts + retry_base,
            run: 1,
            run_attempts: attempts - retry_base,
            run_max_attempts: policy_attempts,
            priority: r.try_get(8)?,
            config: raw_opt(r.try_get(9)?)?,
            result: raw_opt(r.try_get(10)?)?,
            errors: Vec::new(),
            error: raw_opt(r.try_get(11)?)?,
            worker: r.try_get(12)?,
            ready_at: ts(ready_at),
            lease_expires_at: ts(lease),
            wait_until: ts(r.try_get(18)?),
            first_started_at: ts(first),
            started_at: ts(r.try_get(16)?),
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

pub async fn list_tasks(conn: &mut PgConnection, f: &TaskFilter) -> Result<Vec<TaskSummary>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUMMARY_COLUMNS} FROM tasker_tasks
         WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR namespace = $2)
           AND ($3::text IS NULL OR name = $3) AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    )))
    .bind(&f.state)
    .bind(&f.namespace)
    .bind(&f.name)
    .bind(f.before_id)
    .bind(i64::from(f.limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(summary_from).collect()
}

/// The document `tasker_stats()` (migrations/postgres/0002_analytics.sql) returns. Its
/// `last_event_id` is not used: see [`stats`].
#[derive(serde::Deserialize)]
struct StatsDoc {
    tasks: BTreeMap<String, i64>,
    steps: BTreeMap<String, i64>,
    oldest_ready_at: Option<i64>,
    finished: Vec<Finished>,
    slowest_steps: Vec<SlowStepDoc>,
    slowest_tasks: Vec<SlowTaskDoc>,
}

#[derive(serde::Deserialize)]
struct Finished {
    kind: String,
    state: String,
    n: i64,
}

#[derive(serde::Deserialize)]
struct SlowStepDoc {
    task_id: i64,
    step_id: i64,
    step_name: String,
    handler: String,
    duration_ms: i64,
}

#[derive(serde::Deserialize)]
struct SlowTaskDoc {
    task_id: i64,
    namespace: String,
    name: String,
    duration_ms: i64,
}

/// One round trip: the server computes every figure in `tasker_stats()`.
pub async fn stats(
    conn: &mut PgConnection,
    now: i64,
    window_ms: i64,
    lock_key: i64,
) -> Result<Stats> {
    // `tasker_stats` reads `max(id)`, which a writer still in flight may undercut; the
    // cursor for "from now on" comes from the horizon instead, read first.
    let last_event_id = last_event_id(&mut *conn, lock_key).await?;
    let doc: String = sqlx::query("SELECT tasker_stats($1, $2)::text")
        .bind(now)
        .bind(window_ms)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    let doc: StatsDoc = serde_json::from_str(&doc).map_err(|e| {
        Error::internal(format!(
            "tasker_stats() returned an unexpected document: {e}"
        ))
    })?;
    let mut throughput = Throughput {
        window_ms,
        ..Default::default()
    };
    for f in doc.finished {
        match (f.kind.as_str(), f.state.as_str()) {
            ("step", "complete") => throughput.steps_completed = f.n,
            ("step", "error") => throughput.steps_failed = f.n,
            ("task", "complete") => throughput.tasks_completed = f.n,
            ("task", "error") => throughput.tasks_failed = f.n,
            ("task", "cancelled") => throughput.tasks_cancelled = f.n,
            _ => {}
        }
    }
    Ok(Stats {
        tasks: doc.tasks,
        steps: doc.steps,
        oldest_ready_age_ms: doc.oldest_ready_at.map(|t| (now - t).max(0)).unwrap_or(0),
        throughput: throughput.finish(),
        slowest_steps: doc
            .slowest_steps
            .into_iter()
            .map(|s| SlowStep {
                task_id: s.task_id,
                step_id: s.step_id,
                step_name: s.step_name,
                handler: s.handler,
                duration_ms: s.duration_ms,
            })
            .collect(),
        slowest_tasks: doc
            .slowest_tasks
            .into_iter()
            .map(|t| SlowTask {
                task_id: t.task_id,
                namespace: t.namespace,
                name: t.name,
                duration_ms: t.duration_ms,
            })
            .collect(),
        last_event_id,
    })
}

/// Events after `since` up to the horizon (`tasker_events`, migration 0006): waits for
/// writers in flight, so the cursor never passes a row that commits later.
pub async fn events(
    conn: &mut PgConnection,
    since: i64,
    limit: u32,
    task_id: Option<i64>,
    lock_key: i64,
) -> Result<Vec<Event>> {
    let rows = sqlx::query(
        "SELECT id, task_id, step_id, step_name, from_state, to_state, at, attempt, worker, reason, details
         FROM tasker_events($1, $2, $3, $4)",
    )
    .bind(since)
    .bind(task_id)
    .bind(i64::from(limit))
    .bind(lock_key)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let step_id: Option<i64> = r.try_get(2)?;
        let from: Option<String> = r.try_get(4)?;
        let to: String = r.try_get(5)?;
        let why: Option<String> = r.try_get(9)?;
        let event = match step_id {
            Some(_) => events::step_event(from.as_deref(), &to, why.as_deref()),
            None => events::task_event(from.as_deref(), &to),
        };
        out.push(Event {
            id: r.try_get(0)?,
            event,
            task_id: r.try_get(1)?,
            step_id,
            step_name: r.try_get(3)?,
            from,
            to,
            at: Ts(r.try_get(6)?),
            attempt: r.try_get(7)?,
            worker: r.try_get(8)?,
            reason: why,
            details: raw_opt(r.try_get(10)?)?,
        });
    }
    Ok(out)
}

/// The newest event id that is safe as a "from now on" cursor (`tasker_last_event_id`).
pub async fn last_event_id(conn: &mut PgConnection, lock_key: i64) -> Result<i64> {
    Ok(sqlx::query("SELECT tasker_last_event_id($1)")
        .bind(lock_key)
        .fetch_one(conn)
        .await?
        .try_get(0)?)
}
