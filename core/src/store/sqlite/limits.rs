//! Concurrency and rate limits on SQLite (migration 0004, docs/scheduling.md): the keys
//! a task's steps are created with, which limited steps a claim may start, and when a
//! held-back step can start. Every claim runs in the writer's `BEGIN IMMEDIATE`
//! transaction, which holds the database's write lock across processes, so counting
//! and claiming cannot interleave with another claimer's.

use rusqlite::{params, types::Value as SqlValue, Connection};
use serde_json::{json, Value};

use crate::error::Result;
use crate::model::limits::StepLimits;
use crate::model::template::Template;
use crate::store::{LimitState, StepLimitState, Ts};

/// Sets the limits of the steps of task `task_id` (created in this transaction).
pub fn apply(conn: &Connection, task_id: i64, t: &Template, limits: &[StepLimits]) -> Result<()> {
    let rows: Vec<Value> = t
        .steps
        .iter()
        .zip(limits)
        .filter(|(_, l)| l.is_limited())
        .map(|(s, l)| {
            json!([
                s.name,
                l.concurrency.as_ref().map(|c| &c.0),
                l.concurrency.as_ref().map(|c| c.1),
                l.rate.as_ref().map(|r| &r.0),
                l.rate.as_ref().map(|r| r.1),
                l.rate.as_ref().map(|r| r.2),
            ])
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE tasker_steps AS s SET limited = s.handler NOT LIKE 'tasker.%', concurrency_key = j.value ->> 1,
             concurrency_max = j.value ->> 2, rate_key = j.value ->> 3, rate_limit = j.value ->> 4,
             rate_per_ms = j.value ->> 5
         FROM json_each(?2) AS j
         WHERE s.task_id = ?1 AND s.name = j.value ->> 0",
    )?
    .execute(params![task_id, Value::Array(rows).to_string()])?;
    Ok(())
}

/// A limited ready step a claim looks at.
#[derive(Debug, Clone)]
pub struct Cand {
    pub id: i64,
    priority: i64,
    ready_at: i64,
    ckey: Option<String>,
    cmax: Option<i64>,
    rkey: Option<String>,
    rlimit: Option<i64>,
    rper: Option<i64>,
}

/// How many limited candidates a claim of `limit` steps looks at, past held-back ones.
pub fn scan_for(limit: u32) -> i64 {
    (i64::from(limit) * 4 + 128).min(1000)
}

/// The best `scan` limited steps of `handlers` that are due, best first.
pub fn candidates(
    conn: &Connection,
    handlers: &[String],
    now: i64,
    scan: i64,
) -> Result<Vec<Cand>> {
    let mut sql = String::new();
    for i in 0..handlers.len() {
        if i > 0 {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str(&format!(
            "SELECT * FROM (SELECT id, priority, ready_at, concurrency_key, concurrency_max, rate_key,
                 rate_limit, rate_per_ms FROM tasker_steps
             WHERE state = 'ready' AND handler = ?{} AND limited = 1 AND ready_at <= ?1
             ORDER BY priority DESC, ready_at LIMIT ?2 + 0)",
            3 + i
        ));
    }
    let sql = format!("SELECT * FROM ({sql}) ORDER BY priority DESC, ready_at, id LIMIT ?2 + 0");
    let mut args: Vec<SqlValue> = vec![SqlValue::Integer(now), SqlValue::Integer(scan)];
    args.extend(handlers.iter().map(|h| SqlValue::Text(h.clone())));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(Cand {
                id: r.get(0)?,
                priority: r.get(1)?,
                ready_at: r.get(2)?,
                ckey: r.get(3)?,
                cmax: r.get(4)?,
                rkey: r.get(5)?,
                rlimit: r.get(6)?,
                rper: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// When the best `scan` limited steps (`cands`) did not reach past the held-back ones,
/// the best due step of each other concurrency key of `handlers` (at most `scan` keys,
/// found by a skip scan of `tasker_steps_limited_key`, one index probe per key), best
/// first: so a long queue of one held-back key does not hide the steps of other keys.
pub fn key_heads(
    conn: &Connection,
    handlers: &[String],
    cands: &[Cand],
    now: i64,
    scan: i64,
) -> Result<Vec<Cand>> {
    use std::collections::HashSet;
    let seen: HashSet<&str> = cands.iter().filter_map(|c| c.ckey.as_deref()).collect();
    let ids: HashSet<i64> = cands.iter().map(|c| c.id).collect();
    let mut keys_stmt = conn.prepare_cached(
        "WITH RECURSIVE k(key, n) AS (
             SELECT MIN(concurrency_key), 1 FROM tasker_steps
             WHERE state = 'ready' AND limited = 1 AND handler = ?1 AND concurrency_key IS NOT NULL
             UNION ALL
             SELECT (SELECT MIN(concurrency_key) FROM tasker_steps
                     WHERE state = 'ready' AND limited = 1 AND handler = ?1 AND concurrency_key > k.key),
                    n + 1
             FROM k WHERE k.key IS NOT NULL AND n < ?2)
         SELECT key FROM k WHERE key IS NOT NULL",
    )?;
    let mut head_stmt = conn.prepare_cached(
        "SELECT id, priority, ready_at, concurrency_key, concurrency_max, rate_key, rate_limit,
                rate_per_ms FROM tasker_steps
         WHERE state = 'ready' AND limited = 1 AND handler = ?1 AND concurrency_key = ?2
           AND ready_at <= ?3
         ORDER BY priority DESC, ready_at LIMIT 1",
    )?;
    let mut out = Vec::new();
    for h in handlers {
        let keys: Vec<String> = keys_stmt
            .query_map(params![h, scan + seen.len() as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for key in keys.iter().filter(|k| !seen.contains(k.as_str())) {
            let head = head_stmt
                .query_map(params![h, key, now], |r| {
                    Ok(Cand {
                        id: r.get(0)?,
                        priority: r.get(1)?,
                        ready_at: r.get(2)?,
                        ckey: r.get(3)?,
                        cmax: r.get(4)?,
                        rkey: r.get(5)?,
                        rlimit: r.get(6)?,
                        rper: r.get(7)?,
                    })
                })?
                .next()
                .transpose()?;
            if let Some(c) = head.filter(|c| !ids.contains(&c.id)) {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.ready_at.cmp(&b.ready_at))
            .then(a.id.cmp(&b.id))
    });
    out.truncate(scan as usize);
    Ok(out)
}

fn running(conn: &Connection, key: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM tasker_steps WHERE concurrency_key = ?1 AND state = 'running'",
        )?
        .query_row([key], |r| r.get(0))?)
}

/// Starts of `key` in the window ending at `now`, and the oldest of them.
fn starts(conn: &Connection, key: &str, per_ms: i64, now: i64) -> Result<(i64, Option<i64>)> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*), MIN(at) FROM tasker_rate_starts
             WHERE key = ?1 AND per_ms = ?2 AND at > ?3 - ?2",
        )?
        .query_row(params![key, per_ms, now], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Which of `cands` (best first) the limits let start now, at most `limit`, and the
/// earliest time a rate window that held one back frees. Drops starts that left their
/// window.
pub fn admit(
    conn: &Connection,
    cands: &[Cand],
    limit: u32,
    now: i64,
) -> Result<(Vec<i64>, Option<i64>)> {
    use std::collections::HashMap;
    let mut used: HashMap<(u8, String, i64), (i64, Option<i64>)> = HashMap::new();
    let mut out = Vec::new();
    let mut next: Option<i64> = None;
    for c in cands {
        if out.len() >= limit as usize {
            break;
        }
        if let (Some(k), Some(max)) = (&c.ckey, c.cmax) {
            let key = (0, k.clone(), 0);
            if !used.contains_key(&key) {
                used.insert(key.clone(), (running(conn, k)?, None));
            }
            if used[&key].0 >= max {
                continue;
            }
        }
        if let (Some(k), Some(lim), Some(per)) = (&c.rkey, c.rlimit, c.rper) {
            let key = (1, k.clone(), per);
            if !used.contains_key(&key) {
                // Kept PRUNE_SLACK_MS past their window: a claimer's `now` is read
                // before it waits for the write lock, so another claimer may count with an
                // older `now` than this one, and must still see the starts in its window.
                conn.prepare_cached(
                    "DELETE FROM tasker_rate_starts WHERE key = ?1 AND per_ms = ?2 AND at <= ?3 - ?2 - ?4",
                )?
                .execute(params![k, per, now, PRUNE_SLACK_MS])?;
                used.insert(key.clone(), starts(conn, k, per, now)?);
            }
            let (n, oldest) = used[&key];
            if n >= lim {
                // A start admitted by this claim is made now.
                let free = oldest.unwrap_or(now) + per;
                next = Some(next.map_or(free, |x| x.min(free)));
                continue;
            }
        }
        out.push(c.id);
        if let Some(k) = &c.ckey {
            if let Some(u) = used.get_mut(&(0, k.clone(), 0)) {
                u.0 += 1;
            }
        }
        if let (Some(k), Some(per)) = (&c.rkey, c.rper) {
            if let Some(u) = used.get_mut(&(1, k.clone(), per)) {
                u.0 += 1;
                u.1 = Some(u.1.unwrap_or(now));
            }
        }
    }
    Ok((out, next))
}

/// How long a rate-limited start is kept past its window before it is dropped: far
/// longer than a claimer waits for the write lock (`sqlite_busy_timeout_ms`, 5 s by
/// default), so a claim made with a `now` read before that wait still counts every
/// start of its window.
pub const PRUNE_SLACK_MS: i64 = 600_000;

/// Records the starts of claimed rate-limited steps.
pub fn record_starts(conn: &Connection, starts: &[(String, i64)], now: i64) -> Result<()> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO tasker_rate_starts (key, per_ms, at) VALUES (?1, ?2, ?3)")?;
    for (key, per) in starts {
        stmt.execute(params![key, per, now])?;
    }
    Ok(())
}

/// When a limited ready step of `handlers` (all handlers: `None`) can start next: a
/// future `ready_at`, the time a rate window frees, or now for one the limits let
/// start. Steps held back by a concurrency limit are not counted: a slot frees at a
/// completion, not at a time.
pub fn next_ready(conn: &Connection, handlers: Option<&[String]>, now: i64) -> Result<Option<i64>> {
    let filter = handlers.map(|h| Value::from(h.to_vec()).to_string());
    let future: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(ready_at) FROM tasker_steps
             WHERE state = 'ready' AND limited = 1 AND ready_at > ?1
               AND (?2 IS NULL OR handler IN (SELECT value FROM json_each(?2)))",
        )?
        .query_row(params![now, filter], |r| r.get(0))?;
    let mut best = future;
    let mut stmt = conn.prepare_cached(
        "SELECT concurrency_key, concurrency_max, rate_key, rate_limit, rate_per_ms, MIN(ready_at)
         FROM tasker_steps
         WHERE state = 'ready' AND limited = 1 AND ready_at <= ?1
           AND (?2 IS NULL OR handler IN (SELECT value FROM json_each(?2)))
         GROUP BY 1, 2, 3, 4, 5 LIMIT 1000",
    )?;
    type Group = (
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
    );
    let groups: Vec<Group> = stmt
        .query_map(params![now, filter], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (ckey, cmax, rkey, rlimit, rper, ready_at) in groups {
        if let (Some(k), Some(max)) = (&ckey, cmax) {
            if running(conn, k)? >= max {
                continue;
            }
        }
        let mut at = ready_at;
        if let (Some(k), Some(lim), Some(per)) = (&rkey, rlimit, rper) {
            let (n, oldest) = starts(conn, k, per, now)?;
            if n >= lim {
                at = oldest.unwrap_or(now) + per;
            }
        }
        best = Some(best.map_or(at, |b| b.min(at)));
    }
    Ok(best)
}

/// The limits of the ready and running limited steps of task `task_id`, with what
/// holds them back now.
pub fn task_state(conn: &Connection, task_id: i64, now: i64) -> Result<Vec<StepLimitState>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, concurrency_key, concurrency_max, rate_key, rate_limit, rate_per_ms
         FROM tasker_steps WHERE task_id = ?1 AND limited = 1 ORDER BY id",
    )?;
    type Row = (
        String,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = stmt
        .query_map([task_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, ckey, cmax, rkey, rlimit, rper) in rows {
        let concurrency = match (ckey, cmax) {
            (Some(key), Some(max)) => Some(LimitState {
                running: running(conn, &key)?,
                key,
                max,
                per_ms: None,
                next_free_at: None,
            }),
            _ => None,
        };
        let rate = match (rkey, rlimit, rper) {
            (Some(key), Some(limit), Some(per)) => {
                let (n, oldest) = starts(conn, &key, per, now)?;
                Some(LimitState {
                    running: n,
                    max: limit,
                    per_ms: Some(per),
                    next_free_at: (n >= limit).then(|| Ts(oldest.unwrap_or(now) + per)),
                    key,
                })
            }
            _ => None,
        };
        out.push(StepLimitState {
            step_name: name,
            concurrency,
            rate,
        });
    }
    Ok(out)
}
