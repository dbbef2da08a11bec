//! Signals on PostgreSQL: ready `tasker.signal` steps moved to `waiting` (or completed
//! at once with a signal sent earlier), `send_signal`, and waits whose deadline passed.
//! New statements only: no existing function changes. Locks are taken steps first, then
//! tasks, as every other write does; `begin_waits` and `send_signal` both hold the task
//! row while they read or write its signals, so a signal sent while its step starts to
//! wait is never missed.

use serde_json::{json, Value};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::{write, Ctx};
use crate::error::{Error, Result};
use crate::model::events::reason;
use crate::model::template::SIGNAL_HANDLER;
use crate::store::shared::{bump, Deltas, Tr};
use crate::store::signals::{self, SignalSent, SignalledStep, Waiter};

async fn lock_tasks(conn: &mut PgConnection, ids: &[i64]) -> Result<()> {
    sqlx::query("SELECT id FROM tasker_tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(())
}

/// See the SQLite `begin_waits`: the same rules, with rows other transactions hold
/// skipped (they are taken at the next call).
pub async fn begin_waits(conn: &mut PgConnection, ctx: &Ctx, now: i64, limit: u32) -> Result<u32> {
    let rows = sqlx::query(
        "SELECT id, task_id, name, attempts + 1, (config::jsonb ->> 'signal'), timeout_ms
         FROM tasker_steps WHERE handler = $1 AND state = 'ready'
         ORDER BY priority DESC, ready_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(SIGNAL_HANDLER)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut waiters: Vec<(Waiter, i64)> = Vec::with_capacity(rows.len());
    for r in rows {
        waiters.push((
            Waiter {
                step_id: r.try_get(0)?,
                task_id: r.try_get(1)?,
                name: r.try_get(2)?,
                attempt: r.try_get(3)?,
                signal: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
            },
            r.try_get(5)?,
        ));
    }
    let mut tasks: Vec<i64> = waiters.iter().map(|(w, _)| w.task_id).collect();
    tasks.sort_unstable();
    tasks.dedup();
    lock_tasks(conn, &tasks).await?;
    // Read under the task locks: a `send_signal` of these tasks commits before or after.
    let task_ids: Vec<i64> = waiters.iter().map(|(w, _)| w.task_id).collect();
    let names: Vec<String> = waiters.iter().map(|(w, _)| w.signal.clone()).collect();
    let sent = sqlx::query(
        "SELECT g.task_id, g.name, g.payload FROM tasker_signals g
         JOIN unnest($1::bigint[], $2::text[]) AS u(task_id, name)
           ON g.task_id = u.task_id AND g.name = u.name",
    )
    .bind(&task_ids)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    let mut payloads = std::collections::HashMap::new();
    for r in sent {
        let k: (i64, String) = (r.try_get(0)?, r.try_get(1)?);
        payloads.insert(k, r.try_get::<String, _>(2)?);
    }
    let ids: Vec<i64> = waiters.iter().map(|(w, _)| w.step_id).collect();
    let until: Vec<i64> = waiters.iter().map(|(_, t)| now + t).collect();
    sqlx::query(
        "UPDATE tasker_steps s SET state = 'waiting', attempts = s.attempts + 1, wait_until = u.until,
             ready_at = NULL, first_started_at = COALESCE(s.first_started_at, $3),
             started_at = $3, updated_at = $3
         FROM unnest($1::bigint[], $2::bigint[]) AS u(id, until)
         WHERE s.id = u.id",
    )
    .bind(&ids)
    .bind(&until)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut trs = Vec::with_capacity(waiters.len() * 2);
    let mut arrived = Vec::new();
    for (w, timeout_ms) in waiters {
        trs.push(
            Tr::step(
                w.task_id,
                w.step_id,
                &w.name,
                Some("ready"),
                "waiting",
                reason::WAITING,
            )
            .attempt(w.attempt, None)
            .details(Some(
                json!({ "signal": w.signal, "wait_until": crate::time::rfc3339(now + timeout_ms) })
                    .to_string(),
            )),
        );
        if let Some(p) = payloads.remove(&(w.task_id, w.signal.clone())) {
            arrived.push((w, p));
        }
    }
    let n = ids.len() as u32;
    let started: Vec<i64> = sqlx::query_scalar(
        "UPDATE tasker_tasks SET prev_state = state, state = 'running',
             started_at = COALESCE(started_at, $2), updated_at = $2
         WHERE id = ANY($1) AND state = 'pending' RETURNING id",
    )
    .bind(&tasks)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut started = started;
    started.sort_unstable();
    for id in started {
        trs.push(Tr::task(id, Some("pending"), "running", reason::WAITING));
    }
    let mut deltas = Deltas::new();
    complete_waiters(conn, &arrived, now, &mut deltas, &mut trs).await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(n)
}

async fn complete_waiters(
    conn: &mut PgConnection,
    done: &[(Waiter, String)],
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = done.iter().map(|(w, _)| w.step_id).collect();
    let results: Vec<&str> = done.iter().map(|(_, p)| p.as_str()).collect();
    sqlx::query(
        "UPDATE tasker_steps s SET state = 'complete', result = u.result, wait_until = NULL,
             finished_at = $3, updated_at = $3
         FROM unnest($1::bigint[], $2::text[]) AS u(id, result)
         WHERE s.id = u.id AND s.state = 'waiting'",
    )
    .bind(&ids)
    .bind(&results)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    for (w, _) in done {
        bump(deltas, w.task_id, |d| {
            d.active -= 1;
            d.done += 1;
        });
        trs.push(
            Tr::step(
                w.task_id,
                w.step_id,
                &w.name,
                Some("waiting"),
                "complete",
                reason::SIGNALLED,
            )
            .attempt(w.attempt, None)
            .details(Some(json!({ "signal": w.signal }).to_string())),
        );
    }
    write::release_children(conn, &ids, now, deltas, trs).await
}

/// See the SQLite `send_signal`.
pub async fn send_signal(
    conn: &mut PgConnection,
    ctx: &Ctx,
    task_id: i64,
    signal: &str,
    payload: &str,
    now: i64,
) -> Result<SignalSent> {
    let steps = sqlx::query(
        "SELECT id, name, state, attempts FROM tasker_steps
         WHERE task_id = $1 AND handler = $2 AND (config::jsonb ->> 'signal') = $3
         ORDER BY id FOR UPDATE",
    )
    .bind(task_id)
    .bind(SIGNAL_HANDLER)
    .bind(signal)
    .fetch_all(&mut *conn)
    .await?;
    let task_state: String =
        sqlx::query_scalar("SELECT state FROM tasker_tasks WHERE id = $1 FOR UPDATE")
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!("task {task_id} does not exist"))
                    .with_details(json!({ "task_id": task_id }))
            })?;
    if matches!(task_state.as_str(), "complete" | "cancelled") {
        return Err(signals::task_finished(task_id, &task_state));
    }
    if steps.is_empty() {
        let known: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT (config::jsonb ->> 'signal') FROM tasker_steps
             WHERE task_id = $1 AND handler = $2 ORDER BY 1",
        )
        .bind(task_id)
        .bind(SIGNAL_HANDLER)
        .fetch_all(&mut *conn)
        .await?;
        return Err(signals::no_waiter(task_id, signal, &known));
    }
    let sent: Option<i64> =
        sqlx::query_scalar("SELECT sent_at FROM tasker_signals WHERE task_id = $1 AND name = $2")
            .bind(task_id)
            .bind(signal)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(at) = sent {
        return Err(signals::already_sent(task_id, signal, at));
    }
    sqlx::query(
        "INSERT INTO tasker_signals (task_id, name, payload, sent_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(task_id)
    .bind(signal)
    .bind(payload)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let mut done = Vec::new();
    let mut out = Vec::with_capacity(steps.len());
    for r in steps {
        let id: i64 = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let mut state: String = r.try_get(2)?;
        if state == "waiting" {
            done.push((
                Waiter {
                    step_id: id,
                    task_id,
                    name: name.clone(),
                    attempt: r.try_get(3)?,
                    signal: signal.to_owned(),
                },
                payload.to_owned(),
            ));
            state = "complete".into();
        }
        out.push(SignalledStep {
            step_id: id,
            step_name: name,
            state,
        });
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::new();
    complete_waiters(conn, &done, now, &mut deltas, &mut trs).await?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    Ok(SignalSent {
        task_id,
        signal: signal.to_owned(),
        steps: out,
        task_state: states.get(&task_id).cloned().unwrap_or(task_state),
    })
}

/// See the SQLite `expire_waits`.
pub async fn expire_waits(conn: &mut PgConnection, ctx: &Ctx, now: i64, limit: u32) -> Result<u32> {
    let rows = sqlx::query(
        "SELECT id, task_id, name, attempts, (config::jsonb ->> 'signal'), timeout_ms,
                handler = $3
         FROM tasker_steps WHERE state = 'waiting' AND wait_until <= $1
         ORDER BY wait_until, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(i64::from(limit))
    .bind(SIGNAL_HANDLER)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(rows.len() + 1);
    let mut ids = Vec::with_capacity(rows.len());
    let mut errors = Vec::with_capacity(rows.len());
    for r in &rows {
        let w = Waiter {
            step_id: r.try_get(0)?,
            task_id: r.try_get(1)?,
            name: r.try_get(2)?,
            attempt: r.try_get(3)?,
            signal: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        };
        let timeout_ms: i64 = r.try_get(5)?;
        let is_signal: bool = r.try_get(6)?;
        // A step that waits for its child tasks (its own handler, not `tasker.signal`)
        // fails with kind `children_timeout` instead.
        let (error, why, details) = if is_signal {
            let error = signals::timeout_error(&w.signal, timeout_ms);
            let details = json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null), "signal": w.signal });
            (error, reason::SIGNAL_TIMEOUT, details)
        } else {
            let unfinished = super::children::unfinished_of(conn, w.step_id).await?;
            let error = crate::store::children::timeout_error(
                crate::store::children::WAIT_TIMEOUT_MS,
                &unfinished,
            );
            let details = json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null), "unfinished": unfinished });
            (error, reason::CHILDREN_TIMEOUT, details)
        };
        bump(&mut deltas, w.task_id, |d| {
            d.active -= 1;
            d.error += 1;
        });
        trs.push(
            Tr::step(w.task_id, w.step_id, &w.name, Some("waiting"), "error", why)
                .attempt(w.attempt, None)
                .details(Some(details.to_string())),
        );
        ids.push(w.step_id);
        errors.push(error);
    }
    sqlx::query(
        "UPDATE tasker_steps s SET state = 'error', last_error = u.error, wait_until = NULL,
             finished_at = $3, updated_at = $3
         FROM unnest($1::bigint[], $2::text[]) AS u(id, error)
         WHERE s.id = u.id",
    )
    .bind(&ids)
    .bind(&errors)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    write::apply_deltas(conn, &deltas, now, &mut trs).await?;
    write::insert_transitions(conn, ctx, &trs, now).await?;
    tracing::info!(count = ids.len(), "signal waits timed out");
    Ok(ids.len() as u32)
}
