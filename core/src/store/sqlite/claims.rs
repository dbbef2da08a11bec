//! The worker path: claim, heartbeat, complete, fail, and the lease sweep.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use rusqlite::{
    params, params_from_iter, types::Value as SqlValue, Connection, OptionalExtension, Row,
};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{limits, write};
use crate::error::{Error, ErrorCode, Result};
use crate::model::events::reason;
use crate::model::retry::{self, Backoff, RetryPolicy};
use crate::store::shared::{bump, decide, Deltas, Held, Tr};
use crate::store::*;

/// The claim statement for `k` handlers: one index range scan per handler over its
/// steps without limits (each already in priority, `ready_at` order), merged, limited,
/// and flipped to `running` in place. With `admitted`, the limited steps the limits let
/// start (a JSON array of ids, ?{6+k}) compete for the batch too.
/// Parameters: ?1 token, ?2 worker, ?3 now, ?4 lease ms, ?5 limit, ?6.. handlers.
/// (`?5 + 0` keeps the limit out of the planner's view: a bare bound LIMIT makes
/// SQLite re-prepare the statement on every run.)
pub fn claim_sql(k: usize, admitted: bool) -> String {
    let mut inner = String::new();
    for i in 0..k {
        if i > 0 {
            inner.push_str(" UNION ALL ");
        }
        let _ = write!(
            inner,
            "SELECT * FROM (SELECT id, priority, ready_at FROM tasker_steps \
             WHERE state = 'ready' AND handler = ?{} AND limited = 0 AND ready_at <= ?3 \
             ORDER BY priority DESC, ready_at LIMIT ?5 + 0)",
            6 + i
        );
    }
    if admitted {
        let _ = write!(
            inner,
            " UNION ALL SELECT id, priority, ready_at FROM tasker_steps \
             WHERE id IN (SELECT value FROM json_each(?{})) AND state = 'ready'",
            6 + k
        );
    }
    format!(
        "UPDATE tasker_steps SET state = 'running', attempts = attempts + 1, claim_token = ?1, \
         worker = ?2, started_at = ?3, first_started_at = COALESCE(first_started_at, ?3), \
         lease_expires_at = MIN(?3 + ?4, ?3 + timeout_ms), updated_at = ?3 \
         WHERE id IN (SELECT id FROM ({inner}) ORDER BY priority DESC, ready_at, id LIMIT ?5 + 0) \
         RETURNING id, task_id, name, handler, attempts, retry_base, max_attempts, \
         lease_expires_at, timeout_ms, config, rate_key, rate_per_ms"
    )
}

/// A claimed row before its inputs (context, parent results) are loaded.
struct ClaimedRow {
    step_id: i64,
    task_id: i64,
    name: String,
    handler: String,
    attempts: i64,
    retry_base: i64,
    max_attempts: i64,
    lease_expires_at: i64,
    timeout_ms: i64,
    config: Option<String>,
    /// The rate-limit key and window, for the start it records.
    rate: Option<(String, i64)>,
}

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| Error::internal(format!("stored JSON is invalid: {e}")))
}

pub fn claim(conn: &Connection, params: &ClaimParams) -> Result<ClaimBatch> {
    let token = fastrand::i64(1..(1i64 << 53));
    let mut args: Vec<SqlValue> = vec![
        SqlValue::Integer(token),
        SqlValue::Text(params.worker.clone()),
        SqlValue::Integer(params.now),
        SqlValue::Integer(params.lease_ms as i64),
        SqlValue::Integer(i64::from(params.limit)),
    ];
    args.extend(params.handlers.iter().map(|h| SqlValue::Text(h.clone())));
    // Limited steps first: which of the best of them the limits let start now.
    let scan = limits::scan_for(params.limit);
    let mut cands = limits::candidates(conn, &params.handlers, params.now, scan)?;
    if cands.len() as i64 >= scan {
        // The best ones may all be held back: other keys' best steps compete too.
        let heads = limits::key_heads(conn, &params.handlers, &cands, params.now, scan)?;
        cands.extend(heads);
    }
    let (admitted, rate_next) = if cands.is_empty() {
        (Vec::new(), None)
    } else {
        limits::admit(conn, &cands, params.limit, params.now)?
    };
    if !admitted.is_empty() {
        args.push(SqlValue::Text(Value::from(admitted.clone()).to_string()));
    }
    let mut claimed = Vec::new();
    {
        let mut stmt =
            conn.prepare_cached(&claim_sql(params.handlers.len(), !admitted.is_empty()))?;
        let mut rows = stmt.query(params_from_iter(args))?;
        while let Some(row) = rows.next()? {
            claimed.push(ClaimedRow {
                step_id: row.get(0)?,
                task_id: row.get(1)?,
                name: row.get(2)?,
                handler: row.get(3)?,
                attempts: row.get(4)?,
                retry_base: row.get(5)?,
                max_attempts: row.get(6)?,
                lease_expires_at: row.get(7)?,
                timeout_ms: row.get(8)?,
                config: row.get(9)?,
                rate: match (row.get::<_, Option<String>>(10)?, row.get(11)?) {
                    (Some(k), Some(per)) => Some((k, per)),
                    _ => None,
                },
            });
        }
    }
    if claimed.is_empty() {
        // Nothing claimable now: tell the waiter when the next retry comes due, or a
        // rate window frees (limited steps held back now do not count: a concurrency
        // slot frees at a completion, which wakes waiters).
        let handlers = Value::from(params.handlers.clone()).to_string();
        let due: Option<i64> = conn
            .prepare_cached(
                "SELECT MIN(ready_at) FROM tasker_steps
                 WHERE state = 'ready' AND handler IN (SELECT value FROM json_each(?1))
                   AND (limited = 0 OR ready_at > ?2)",
            )?
            .query_row(params![&handlers, params.now], |r| r.get(0))?;
        let next = [due, rate_next].into_iter().flatten().min();
        return Ok(ClaimBatch {
            steps: Vec::new(),
            next_ready_at: next,
        });
    }
    claimed.sort_unstable_by_key(|c| c.step_id);
    let starts: Vec<(String, i64)> = claimed.iter().filter_map(|c| c.rate.clone()).collect();
    if !starts.is_empty() {
        limits::record_starts(conn, &starts, params.now)?;
    }
    let mut task_ids: Vec<i64> = claimed.iter().map(|c| c.task_id).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    let task_list = Value::from(task_ids).to_string();

    // The task starts before its first step does, in the event log too.
    let mut trs = Vec::with_capacity(claimed.len() + 1);
    {
        let mut stmt = conn.prepare_cached(
            "UPDATE tasker_tasks SET state = 'running', prev_state = state, started_at = ?2, updated_at = ?2
             WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'
             RETURNING id",
        )?;
        let mut started: Vec<i64> = stmt
            .query_map(params![task_list, params.now], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        started.sort_unstable();
        for id in started {
            trs.push(Tr::task(id, Some("pending"), "running", reason::CLAIMED));
        }
    }
    for c in &claimed {
        trs.push(
            Tr::step(
                c.task_id,
                c.step_id,
                &c.name,
                Some("ready"),
                "running",
                reason::CLAIMED,
            )
            .attempt(c.attempts, Some(params.worker.clone())),
        );
    }
    write::insert_transitions(conn, &trs, params.now)?;

    // What the handlers need: task contexts and the results of each step's parents
    // (both immutable once written).
    let mut contexts: HashMap<i64, String> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, context FROM tasker_tasks WHERE id IN (SELECT value FROM json_each(?1))",
        )?;
        let mut rows = stmt.query([&task_list])?;
        while let Some(r) = rows.next()? {
            contexts.insert(r.get(0)?, r.get(1)?);
        }
    }
    let step_list = Value::from(claimed.iter().map(|c| c.step_id).collect::<Vec<_>>()).to_string();
    let mut results: HashMap<i64, BTreeMap<String, Box<RawValue>>> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT e.child_id, p.name, p.result FROM tasker_edges AS e
             JOIN tasker_steps AS p ON p.id = e.parent_id
             WHERE e.child_id IN (SELECT value FROM json_each(?1))",
        )?;
        let mut rows = stmt.query([&step_list])?;
        while let Some(r) = rows.next()? {
            let result: Option<String> = r.get(2)?;
            results
                .entry(r.get(0)?)
                .or_default()
                .insert(r.get(1)?, raw(result.unwrap_or_else(|| "null".into()))?);
        }
    }
    let token_text = token.to_string();
    let mut steps = Vec::with_capacity(claimed.len());
    for r in claimed {
        let context = contexts.get(&r.task_id).cloned().ok_or_else(|| {
            Error::internal(format!("task {} of a claimed step is missing", r.task_id))
        })?;
        steps.push(ClaimedStep {
            step_id: r.step_id,
            task_id: r.task_id,
            step_name: r.name,
            handler: r.handler,
            claim_token: token_text.clone(),
            attempt: r.attempts - r.retry_base,
            max_attempts: r.max_attempts,
            lease_expires_at: Ts(r.lease_expires_at),
            timeout_ms: r.timeout_ms,
            context: raw(context)?,
            config: r.config.map(raw).transpose()?,
            results: results.remove(&r.step_id).unwrap_or_default(),
        });
    }
    Ok(ClaimBatch {
        steps,
        next_ready_at: None,
    })
}

/// Why a fenced update matched nothing: the step is unknown, or no longer held by
/// this claim.
pub(super) fn fence_error(conn: &Connection, step_id: i64) -> Result<Error> {
    let state: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT s.state, t.state FROM tasker_steps AS s JOIN tasker_tasks AS t ON t.id = s.task_id
             WHERE s.id = ?1",
        )?
        .query_row([step_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match state {
        None => Error::not_found(format!("step {step_id} does not exist")),
        Some((state, task_state)) => crate::store::shared::mark_task_timeout(
            Error::new(
                ErrorCode::LeaseLost,
                format!("step {step_id} is no longer held by this claim (it is {state}); nothing was recorded"),
            )
            .with_details(json!({ "step_id": step_id, "state": state })),
            &state,
            &task_state,
        ),
    })
}

pub fn heartbeat(
    conn: &Connection,
    step_id: i64,
    token: i64,
    lease_ms: u64,
    now: i64,
) -> Result<i64> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "UPDATE tasker_steps SET lease_expires_at = MIN(?3 + ?4, started_at + timeout_ms), updated_at = ?3
             WHERE id = ?1 AND claim_token = ?2 AND state = 'running'
             RETURNING lease_expires_at, started_at + timeout_ms",
        )?
        .query_row(params![step_id, token, now, lease_ms as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((_, deadline)) if deadline <= now => Err(Error::new(
            ErrorCode::LeaseLost,
            format!("step {step_id} ran past its timeout; its lease cannot be extended and the attempt will be failed"),
        )
        .with_details(json!({ "step_id": step_id, "state": "running", "timed_out": true }))),
        Some((expires, _)) => Ok(expires),
        None => Err(fence_error(conn, step_id)?),
    }
}

pub fn complete(conn: &Connection, items: Vec<Completion>, now: i64) -> Result<Vec<ItemOutcome>> {
    // Only the first report of a step in a batch is applied; later ones are refused.
    let mut first: HashSet<i64> = HashSet::with_capacity(items.len());
    let mut array = String::with_capacity(items.len() * 48);
    array.push('[');
    for item in &items {
        if !first.insert(item.step_id) {
            continue;
        }
        if array.len() > 1 {
            array.push(',');
        }
        let _ = write!(
            array,
            "[{},{},{}]",
            item.step_id,
            item.claim_token,
            item.result.get()
        );
    }
    array.push(']');
    let mut done_ids = Vec::with_capacity(items.len());
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(items.len() * 2);
    {
        let mut stmt = conn.prepare_cached(
            "UPDATE tasker_steps AS s SET state = 'complete', result = j.value -> 2,
                claim_token = NULL, lease_expires_at = NULL, finished_at = ?2, updated_at = ?2
             FROM json_each(?1) AS j
             WHERE s.id = j.value ->> 0 AND s.claim_token = j.value ->> 1 AND s.state = 'running'
             RETURNING id, task_id, name, attempts, worker",
        )?;
        let mut rows = stmt.query(params![array, now])?;
        let mut done: Vec<(i64, i64, String, i64, Option<String>)> = Vec::new();
        while let Some(r) = rows.next()? {
            done.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
        }
        done.sort_unstable_by_key(|d| d.0);
        for (id, task_id, name, attempts, worker) in done {
            bump(&mut deltas, task_id, |d| {
                d.active -= 1;
                d.done += 1;
            });
            trs.push(
                Tr::step(
                    task_id,
                    id,
                    &name,
                    Some("running"),
                    "complete",
                    reason::COMPLETED,
                )
                .attempt(attempts, worker),
            );
            done_ids.push(id);
        }
    }
    write::release_children(conn, &done_ids, now, &mut deltas, &mut trs)?;
    write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;

    let done: HashSet<i64> = done_ids.into_iter().collect();
    let mut reported: HashSet<i64> = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        let error = if !reported.insert(item.step_id) {
            Some(Error::invalid_argument(format!(
                "step {} appears more than once in the batch; only its first report was considered",
                item.step_id
            )))
        } else if done.contains(&item.step_id) {
            None
        } else {
            Some(fence_error(conn, item.step_id)?)
        };
        out.push(ItemOutcome {
            step_id: item.step_id,
            ok: error.is_none(),
            error,
        });
    }
    Ok(out)
}

pub fn release(
    conn: &Connection,
    step_id: i64,
    token: i64,
    delay_ms: u64,
    why: Option<String>,
    now: i64,
) -> Result<i64> {
    let ready_at = now.saturating_add(delay_ms.min(retry::MAX_RETRY_AFTER_MS) as i64);
    let row: Option<(i64, String, i64, Option<String>)> = conn
        .prepare_cached(
            "UPDATE tasker_steps SET state = 'ready', ready_at = ?3, attempts = attempts - 1,
                 claim_token = NULL, lease_expires_at = NULL, updated_at = ?4
             WHERE id = ?1 AND claim_token = ?2 AND state = 'running'
             RETURNING task_id, name, attempts + 1, worker",
        )?
        .query_row(params![step_id, token, ready_at, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((task_id, name, attempt, worker)) = row else {
        return Err(fence_error(conn, step_id)?);
    };
    let details = json!({ "reason": why, "ready_at": crate::time::rfc3339(ready_at) }).to_string();
    let tr = Tr::step(
        task_id,
        step_id,
        &name,
        Some("running"),
        "ready",
        reason::RELEASED,
    )
    .attempt(attempt, worker)
    .details(Some(details));
    write::insert_transitions(conn, &[tr], now)?;
    Ok(ready_at)
}

const HELD_COLUMNS: &str =
    "id, task_id, name, attempts, retry_base, worker, max_attempts, backoff, base_ms, max_ms, jitter, started_at, timeout_ms";

fn held_from(row: &Row<'_>) -> rusqlite::Result<Held> {
    let backoff: String = row.get(7)?;
    Ok(Held {
        id: row.get(0)?,
        task_id: row.get(1)?,
        name: row.get(2)?,
        attempts: row.get(3)?,
        retry_base: row.get(4)?,
        worker: row.get(5)?,
        policy: RetryPolicy {
            max_attempts: row.get::<_, i64>(6)? as u32,
            backoff: Backoff::parse(&backoff).unwrap_or(Backoff::Exponential),
            base_ms: row.get::<_, i64>(8)? as u64,
            max_ms: row.get::<_, i64>(9)? as u64,
            jitter: row.get(10)?,
        },
        started_at: row.get::<_, Option<i64>>(11)?.unwrap_or(0),
        timeout_ms: row.get(12)?,
    })
}

pub fn task_state(conn: &Connection, task_id: i64) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT state FROM tasker_tasks WHERE id = ?1")?
        .query_row([task_id], |r| r.get(0))?)
}

pub fn fail(conn: &Connection, report: FailureReport) -> Result<FailOutcome> {
    let now = report.now;
    let held = conn
        .prepare_cached(&format!(
            "SELECT {HELD_COLUMNS} FROM tasker_steps WHERE id = ?1 AND claim_token = ?2 AND state = 'running'"
        ))?
        .query_row(params![report.step_id, report.claim_token], held_from)
        .optional()?;
    let Some(held) = held else {
        return Err(fence_error(conn, report.step_id)?);
    };
    let failed = decide(
        &held,
        report.retryable,
        report.retry_after_ms,
        report.error_json,
        reason::FAILED,
        now,
    );
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(2);
    write::apply_failures(
        conn,
        std::slice::from_ref(&failed),
        now,
        &mut deltas,
        &mut trs,
    )?;
    let states = write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    let task_state = match states.get(&held.task_id) {
        Some(s) => s.clone(),
        None => task_state(conn, held.task_id)?,
    };
    Ok(FailOutcome {
        step_id: held.id,
        state: failed.state.to_owned(),
        retry_at: failed.ready_at.map(Ts),
        attempt: held.attempts - held.retry_base,
        task_state,
    })
}

pub fn sweep(conn: &Connection, now: i64, limit: u32) -> Result<u32> {
    let expired: Vec<Held> = conn
        .prepare_cached(&format!(
            "SELECT {HELD_COLUMNS} FROM tasker_steps
             WHERE state = 'running' AND lease_expires_at < ?1 ORDER BY lease_expires_at, id LIMIT ?2"
        ))?
        .query_map(params![now, i64::from(limit)], held_from)?
        .collect::<rusqlite::Result<_>>()?;
    if expired.is_empty() {
        return Ok(0);
    }
    let failed: Vec<_> = expired
        .iter()
        .map(|held| crate::store::shared::expired(held, now))
        .collect();
    let mut deltas = Deltas::new();
    let mut trs = Vec::with_capacity(failed.len() + 1);
    write::apply_failures(conn, &failed, now, &mut deltas, &mut trs)?;
    write::apply_deltas(conn, &deltas, now, &mut trs)?;
    write::insert_transitions(conn, &trs, now)?;
    tracing::info!(count = failed.len(), "took back expired leases");
    Ok(failed.len() as u32)
}
