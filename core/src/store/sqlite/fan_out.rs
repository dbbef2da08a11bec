//! Dynamic fan-out on SQLite: a ready `tasker.fan_out` step is expanded into its
//! instances (or completes at once with `[]`, or fails), and once its instances are
//! done (it is ready again) its results are collected. One transaction per call: a
//! crash leaves the step ready, and the next call (or the sweep) does it again.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use super::{signals, write};
use crate::error::{Error, Result};
use crate::model::events::reason;
use crate::model::fan_out::{self, FAN_OUT_HANDLER};
use crate::store::shared::{bump, Deltas, Tr};

/// A ready fan-out step with what its instances inherit.
struct Ready {
    id: i64,
    task_id: i64,
    name: String,
    config: Value,
    attempt: i64,
    run_attempts: i64,
    max_attempts: i64,
    backoff: String,
    base_ms: i64,
    max_ms: i64,
    jitter: f64,
    timeout_ms: i64,
    priority: i64,
    context: Value,
    n_total: i64,
}

fn parse(text: Option<String>) -> Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// Expands or collects up to `limit` ready fan-out steps; returns how many.
pub fn advance_fan_outs(conn: &Connection, now: i64, limit: u32, max_steps: i64) -> Result<u32> {
    let rows: Vec<Ready> = conn
        .prepare_cached(
            "SELECT s.id, s.task_id, s.name, s.config, s.attempts + 1, s.attempts - s.retry_base,
                    s.max_attempts, s.backoff, s.base_ms, s.max_ms, s.jitter, s.timeout_ms,
                    s.priority, t.context, t.n_total
             FROM tasker_steps AS s JOIN tasker_tasks AS t ON t.id = s.task_id
             WHERE s.handler = ?1 AND s.state = 'ready'
             ORDER BY s.priority DESC, s.ready_at, s.id LIMIT ?2",
        )?
        .query_map(params![FAN_OUT_HANDLER, i64::from(limit)], |r| {
            Ok(Ready {
                id: r.get(0)?,
                task_id: r.get(1)?,
                name: r.get(2)?,
                config: parse(r.get(3)?),
                attempt: r.get(4)?,
                run_attempts: r.get(5)?,
                max_attempts: r.get(6)?,
                backoff: r.get(7)?,
                base_ms: r.get(8)?,
                max_ms: r.get(9)?,
                jitter: r.get(10)?,
                timeout_ms: r.get(11)?,
                priority: r.get(12)?,
                context: parse(r.get(13)?),
                n_total: r.get(14)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut deltas = Deltas::new();
    let mut trs = Vec::new();
    let mut started = Vec::new();
    let mut finished = Vec::new();
    let mut added: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for s in &rows {
        let parents: Vec<(String, Option<String>)> = conn
            .prepare_cached(
                "SELECT p.name, p.result FROM tasker_edges AS e JOIN tasker_steps AS p ON p.id = e.parent_id
                 WHERE e.child_id = ?1",
            )?
            .query_map([s.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if s.run_attempts > 0 {
            collect(conn, s, parents, now, &mut deltas, &mut trs)?;
            finished.push(s.id);
            continue;
        }
        let results: BTreeMap<String, Value> =
            parents.into_iter().map(|(n, r)| (n, parse(r))).collect();
        // Earlier expansions of this call grew the task: count them in.
        let grown = s.n_total + added.get(&s.task_id).copied().unwrap_or(0);
        let planned = fan_out::items(&s.config, &s.context, &results).and_then(|items| {
            fan_out::check_task_size(grown, items.len(), max_steps).map(|()| items)
        });
        match planned {
            Err(refusal) => {
                let error = refusal.error_json();
                conn.prepare_cached(
                    "UPDATE tasker_steps SET state = 'error', attempts = attempts + 1, last_error = ?2,
                         ready_at = NULL, first_started_at = COALESCE(first_started_at, ?3),
                         started_at = ?3, finished_at = ?3, updated_at = ?3
                     WHERE id = ?1",
                )?
                .execute(params![s.id, error, now])?;
                bump(&mut deltas, s.task_id, |d| {
                    d.active -= 1;
                    d.error += 1;
                });
                let details = json!({ "error": serde_json::from_str::<Value>(&error).unwrap_or(Value::Null) });
                trs.push(
                    Tr::step(
                        s.task_id,
                        s.id,
                        &s.name,
                        Some("ready"),
                        "error",
                        reason::FAN_OUT_FAILED,
                    )
                    .attempt(s.attempt, None)
                    .details(Some(details.to_string())),
                );
                started.push(s.task_id);
            }
            Ok(items) if items.is_empty() => {
                conn.prepare_cached(
                    "UPDATE tasker_steps SET state = 'complete', attempts = attempts + 1, result = '[]',
                         ready_at = NULL, first_started_at = COALESCE(first_started_at, ?2),
                         started_at = ?2, finished_at = ?2, updated_at = ?2
                     WHERE id = ?1",
                )?
                .execute(params![s.id, now])?;
                bump(&mut deltas, s.task_id, |d| {
                    d.active -= 1;
                    d.done += 1;
                });
                trs.push(
                    Tr::step(
                        s.task_id,
                        s.id,
                        &s.name,
                        Some("ready"),
                        "complete",
                        reason::FANNED_OUT,
                    )
                    .attempt(s.attempt, None)
                    .details(Some(json!({ "items": 0 }).to_string())),
                );
                started.push(s.task_id);
                finished.push(s.id);
            }
            Ok(items) => {
                *added.entry(s.task_id).or_default() += items.len() as i64;
                expand(conn, s, items, now, &mut deltas, &mut trs)?;
                started.push(s.task_id);
            }
        }
    }
    started.sort_unstable();
    started.dedup();
    let mut started_trs = Vec::new();
    signals::start_tasks(conn, &started, now, &mut started_trs)?;
    // The task starts before its first step moves on, as at a first claim.
    trs.splice(0..0, started_trs);
    write::release_children(conn, &finished, now, &mut deltas, &mut trs)?;
    write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    Ok(rows.len() as u32)
}

/// Adds one ready instance per item (parents of the fan-out step, which goes back to
/// `pending` on them) and counts them in the task.
fn expand(
    conn: &Connection,
    s: &Ready,
    items: Vec<Value>,
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    let count = items.len();
    let handler = s
        .config
        .get("handler")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::internal(format!(
                "fan-out step {} has no handler in its config",
                s.id
            ))
        })?
        .to_owned();
    trs.push(
        Tr::step(
            s.task_id,
            s.id,
            &s.name,
            Some("ready"),
            "pending",
            reason::FANNED_OUT,
        )
        .attempt(s.attempt, None)
        .details(Some(json!({ "items": count }).to_string())),
    );
    let mut insert = conn.prepare_cached(
        // The instances run under the step's concurrency and rate limits, if any.
        "INSERT INTO tasker_steps (task_id, name, handler, state, pending_parents, max_attempts,
             backoff, base_ms, max_ms, jitter, timeout_ms, priority, config, ready_at, created_at, updated_at,
             limited, concurrency_key, concurrency_max, rate_key, rate_limit, rate_per_ms)
         SELECT ?1, ?2, ?3, 'ready', 0, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?12,
                f.concurrency_key IS NOT NULL OR f.rate_key IS NOT NULL,
                f.concurrency_key, f.concurrency_max, f.rate_key, f.rate_limit, f.rate_per_ms
         FROM tasker_steps f WHERE f.id = ?13
         RETURNING id",
    )?;
    let mut edge =
        conn.prepare_cached("INSERT INTO tasker_edges (parent_id, child_id) VALUES (?1, ?2)")?;
    for (i, item) in items.into_iter().enumerate() {
        let name = fan_out::instance_name(&s.name, i);
        let config = fan_out::instance_config(&s.config, item, i, count).to_string();
        let id: i64 = insert.query_row(
            params![
                s.task_id,
                name,
                handler,
                s.max_attempts,
                s.backoff,
                s.base_ms,
                s.max_ms,
                s.jitter,
                s.timeout_ms,
                s.priority,
                config,
                now,
                s.id
            ],
            |r| r.get(0),
        )?;
        edge.execute(params![id, s.id])?;
        trs.push(Tr::step(
            s.task_id,
            id,
            &name,
            None,
            "ready",
            reason::CREATED,
        ));
    }
    conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'pending', pending_parents = pending_parents + ?2,
             attempts = attempts + 1, ready_at = NULL,
             first_started_at = COALESCE(first_started_at, ?3), started_at = ?3, updated_at = ?3
         WHERE id = ?1",
    )?
    .execute(params![s.id, count as i64, now])?;
    conn.prepare_cached("UPDATE tasker_tasks SET n_total = n_total + ?2 WHERE id = ?1")?
        .execute(params![s.task_id, count as i64])?;
    bump(deltas, s.task_id, |d| d.active += count as i64 - 1);
    Ok(())
}

/// The instances are done: the step completes with their results in item order.
fn collect(
    conn: &Connection,
    s: &Ready,
    parents: Vec<(String, Option<String>)>,
    now: i64,
    deltas: &mut Deltas,
    trs: &mut Vec<Tr>,
) -> Result<()> {
    let mut got: Vec<(usize, String)> = parents
        .into_iter()
        .filter_map(|(n, r)| {
            fan_out::index_of(&s.name, &n).map(|i| (i, r.unwrap_or_else(|| "null".into())))
        })
        .collect();
    got.sort_unstable_by_key(|g| g.0);
    let result = format!(
        "[{}]",
        got.iter()
            .map(|g| g.1.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    conn.prepare_cached(
        "UPDATE tasker_steps SET state = 'complete', result = ?2, ready_at = NULL,
             finished_at = ?3, updated_at = ?3
         WHERE id = ?1",
    )?
    .execute(params![s.id, result, now])?;
    bump(deltas, s.task_id, |d| {
        d.active -= 1;
        d.done += 1;
    });
    trs.push(
        Tr::step(
            s.task_id,
            s.id,
            &s.name,
            Some("ready"),
            "complete",
            reason::COMPLETED,
        )
        .attempt(s.attempt - 1, None)
        .details(Some(json!({ "items": got.len() }).to_string())),
    );
    Ok(())
}
