//! Signals on SQLite: ready `tasker.signal` steps moved to `waiting` (or completed at
//! once with a signal sent earlier), `send_signal`, and waits whose deadline passed.
//! Each function runs inside the caller's write transaction.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::write;
use crate::error::Result;
use crate::model::events::reason;
use crate::model::template::SIGNAL_HANDLER;
use crate::store::shared::{bump, Deltas, Tr};
use crate::store::signals::{self, SignalSent, SignalledStep, Waiter};

/// Moves up to `limit` ready `tasker.signal` steps to `waiting` (deadline: now plus the
/// step's timeout); those whose signal was already sent complete with its payload in
/// the same transaction. Returns how many steps were moved.
pub fn begin_waits(conn: &Connection, now: i64, limit: u32) -> Result<u32> {
    let rows: Vec<(Waiter, i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT s.id, s.task_id, s.name, s.attempts + 1, json_extract(s.config, '$.signal'),
                    s.timeout_ms, g.payload
             FROM tasker_steps AS s
             LEFT JOIN tasker_signals AS g
                    ON g.task_id = s.task_id AND g.name = json_extract(s.config, '$.signal')
             WHERE s.handler = ?1 AND s.state = 'ready'
             ORDER BY s.priority DESC, s.ready_at, s.id LIMIT ?2",
        )?
        .query_map(params![SIGNAL_HANDLER, i64::from(limit)], |r| {
            Ok((
                Waiter {
                    step_id: r.get(0)?,
                    task_id: r.get(1)?,
                    name: r.get(2)?,
                    attempt: r.get(3)?,
                    signal: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                },
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut trs = Vec::with_capacity(rows.len() * 2);
    let mut tasks: Vec<i64> = Vec::with_capacity(rows.len());
    let mut arrived: Vec<(Waiter, String)> = Vec::new();
    {
        let mut wait = conn.prepare_cached(
            "UPDATE tasker_steps SET state = 'waiting', attempts = attempts + 1, wait_until = ?2,
                 ready_at = NULL, first_started_at = COALESCE(first_started_at, ?3),
                 started_at = ?3, updated_at = ?3
             WHERE id = ?1",
        )?;
        for (w, timeout_ms, payload) in rows {
            wait.execute(params![w.step_id, now + timeout_ms, now])?;
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
            tasks.push(w.task_id);
            if let Some(p) = payload {
                arrived.push((w, p));
            }
        }
    }
    let n = trs.len() as u32;
    start_tasks(conn, &tasks, now, &mut trs)?;
    let mut deltas = Deltas::new();
    complete_waiters(conn, &arrived, now, &mut deltas, &mut trs)?;
    write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    Ok(n)
}

/// A pending task whose first step starts waiting is running, as at a first claim.
pub(super) fn start_tasks(
    conn: &Connection,
    tasks: &[i64],
    now: i64,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    let ids = Value::from(tasks.to_vec()).to_string();
    let mut started: Vec<i64> = conn
        .prepare_cached(
            "UPDATE tasker_tasks SET prev_state = state, state = 'running',
                 started_at = COALESCE(started_at, ?2), updated_at = ?2
             WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'
             RETURNING id",
        )?
        .query_map(params![ids, now], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    started.sort_unstable();
    for id in started {
        trs.push(Tr::task(id, Some("pending"), "running", reason::WAITING));
    }
    Ok(())
}

/// Completes waiting steps with their signals' payloads; their children proceed.
fn complete_waiters(
    conn: &Connection,
    done: &[(Waiter, String)],
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'complete', result = ?2, wait_until = NULL,
             finished_at = ?3, updated_at = ?3
         WHERE id = ?1 AND state = 'waiting'",
    )?;
    let mut ids = Vec::with_capacity(done.len());
    for (w, payload) in done {
        stmt.execute(params![w.step_id, payload, now])?;
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
        ids.push(w.step_id);
    }
    write::release_children(conn, &ids, now, deltas, trs)
}

/// Records a signal for a task and completes the steps waiting for it. See
/// [`crate::store::Store::send_signal`].
pub fn send_signal(
    conn: &Connection,
    task_id: i64,
    signal: &str,
    payload: &str,
    now: i64,
) -> Result<SignalSent> {
    let task_state: String = conn
        .prepare_cached("SELECT state FROM tasker_tasks WHERE id = ?1")?
        .query_row([task_id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| {
            crate::error::Error::not_found(format!("task {task_id} does not exist"))
                .with_details(json!({ "task_id": task_id }))
        })?;
    if matches!(task_state.as_str(), "complete" | "cancelled") {
        return Err(signals::task_finished(task_id, &task_state));
    }
    let steps: Vec<(i64, String, String, i64)> = conn
        .prepare_cached(
            "SELECT id, name, state, attempts FROM tasker_steps
             WHERE task_id = ?1 AND handler = ?2 AND json_extract(config, '$.signal') = ?3
             ORDER BY id",
        )?
        .query_map(params![task_id, SIGNAL_HANDLER, signal], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if steps.is_empty() {
        let known: Vec<String> = conn
            .prepare_cached(
                "SELECT DISTINCT json_extract(config, '$.signal') FROM tasker_steps
                 WHERE task_id = ?1 AND handler = ?2 ORDER BY 1",
            )?
            .query_map(params![task_id, SIGNAL_HANDLER], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        return Err(signals::no_waiter(task_id, signal, &known));
    }
    let sent: Option<i64> = conn
        .prepare_cached("SELECT sent_at FROM tasker_signals WHERE task_id = ?1 AND name = ?2")?
        .query_row(params![task_id, signal], |r| r.get(0))
        .optional()?;
    if let Some(at) = sent {
        return Err(signals::already_sent(task_id, signal, at));
    }
    conn.prepare_cached(
        "INSERT INTO tasker_signals (task_id, name, payload, sent_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![task_id, signal, payload, now])?;
    let mut done = Vec::new();
    let mut out = Vec::with_capacity(steps.len());
    for (id, name, state, attempts) in steps {
        let state = if state == "waiting" {
            done.push((
                Waiter {
                    step_id: id,
                    task_id,
                    name: name.clone(),
                    attempt: attempts,
                    signal: signal.to_owned(),
                },
                payload.to_owned(),
            ));
            "complete".to_owned()
        } else {
            state
        };
        out.push(SignalledStep {
            step_id: id,
            step_name: name,
            state,
        });
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::new();
    complete_waiters(conn, &done, now, &mut deltas, &mut trs)?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    Ok(SignalSent {
        task_id,
        signal: signal.to_owned(),
        steps: out,
        task_state: states.get(&task_id).cloned().unwrap_or(task_state),
    })
}

/// Fails up to `limit` waiting steps whose deadline has passed, permanently, with kind
/// `signal_timeout`; their tasks follow the usual failure rules. Returns how many.
pub fn expire_waits(conn: &Connection, now: i64, limit: u32) -> Result<u32> {
    let rows: Vec<(Waiter, i64, bool)> = conn
        .prepare_cached(
            "SELECT id, task_id, name, attempts, json_extract(config, '$.signal'), timeout_ms,
                    handler = ?3
             FROM tasker_steps WHERE state = 'waiting' AND wait_until <= ?1
             ORDER BY wait_until, id LIMIT ?2",
        )?
        .query_map(params![now, i64::from(limit), SIGNAL_HANDLER], |r| {
            Ok((
                Waiter {
                    step_id: r.get(0)?,
                    task_id: r.get(1)?,
                    name: r.get(2)?,
                    attempt: r.get(3)?,
                    signal: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                },
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(rows.len() + 1);
    let mut stmt = conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'error', last_error = ?2, wait_until = NULL,
             finished_at = ?3, updated_at = ?3
         WHERE id = ?1",
    )?;
    for (w, timeout_ms, is_signal) in &rows {
        // A step that waits for its child tasks (its own handler, not `tasker.signal`)
        // fails with kind `children_timeout` instead.
        let (error, why, details) = if *is_signal {
            let error = signals::timeout_error(&w.signal, *timeout_ms);
            let details = json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null), "signal": w.signal });
            (error, reason::SIGNAL_TIMEOUT, details)
        } else {
            let unfinished = super::children::unfinished_of(conn, w.step_id)?;
            let error = crate::store::children::timeout_error(
                crate::store::children::WAIT_TIMEOUT_MS,
                &unfinished,
            );
            let details = json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null), "unfinished": unfinished });
            (error, reason::CHILDREN_TIMEOUT, details)
        };
        stmt.execute(params![w.step_id, error, now])?;
        bump(&mut deltas, w.task_id, |d| {
            d.active -= 1;
            d.error += 1;
        });
        trs.push(
            Tr::step(w.task_id, w.step_id, &w.name, Some("waiting"), "error", why)
                .attempt(w.attempt, None)
                .details(Some(details.to_string())),
        );
    }
    write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    tracing::info!(count = rows.len(), "signal waits timed out");
    Ok(rows.len() as u32)
}
