//! Concurrency and rate limits on PostgreSQL (migration 0010, docs/scheduling.md): the
//! keys a task's steps are created with, and the reads of when a held-back step can
//! start. The claim itself, with its per-key advisory locks, is in the migration's
//! `tasker_complete_and_claim` / `tasker_admit_limited`.

use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::error::Result;
use crate::model::limits::StepLimits;
use crate::model::template::Template;
use crate::store::{LimitState, StepLimitState, Ts};

/// Sets the limits of the steps of task `task_id`, in the transaction that created it
/// (so no claimer sees its steps without them).
pub async fn apply(
    conn: &mut PgConnection,
    task_id: i64,
    t: &Template,
    limits: &[StepLimits],
) -> Result<()> {
    let (mut names, mut ckeys, mut cmaxs, mut rkeys, mut rlimits, mut rpers) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (s, l) in t.steps.iter().zip(limits) {
        if !l.is_limited() {
            continue;
        }
        names.push(s.name.as_str());
        ckeys.push(l.concurrency.as_ref().map(|c| c.0.clone()));
        cmaxs.push(l.concurrency.as_ref().map(|c| i64::from(c.1)));
        rkeys.push(l.rate.as_ref().map(|r| r.0.clone()));
        rlimits.push(l.rate.as_ref().map(|r| i64::from(r.1)));
        rpers.push(l.rate.as_ref().map(|r| r.2 as i64));
    }
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE tasker_steps s SET limited = s.handler NOT LIKE 'tasker.%', concurrency_key = u.ckey, concurrency_max = u.cmax,
             rate_key = u.rkey, rate_limit = u.rlimit, rate_per_ms = u.rper
         FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[])
              AS u(name, ckey, cmax, rkey, rlimit, rper)
         WHERE s.task_id = $1 AND s.name = u.name",
    )
    .bind(task_id)
    .bind(names)
    .bind(ckeys)
    .bind(cmaxs)
    .bind(rkeys)
    .bind(rlimits)
    .bind(rpers)
    .execute(conn)
    .await?;
    Ok(())
}

async fn running(conn: &mut PgConnection, key: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tasker_steps WHERE concurrency_key = $1 AND state = 'running'",
    )
    .bind(key)
    .fetch_one(conn)
    .await?)
}

/// Starts of `key` in the window ending at `now`, and the oldest of them.
async fn starts(
    conn: &mut PgConnection,
    key: &str,
    per_ms: i64,
    now: i64,
) -> Result<(i64, Option<i64>)> {
    let r = sqlx::query(
        "SELECT count(*), min(at) FROM tasker_rate_starts
         WHERE key = $1 AND per_ms = $2 AND at > $3 - $2",
    )
    .bind(key)
    .bind(per_ms)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// As the SQLite store's `limits::next_ready`: when a limited ready step of `handlers`
/// can start next (a concurrency-held step does not count).
pub async fn next_ready(
    conn: &mut PgConnection,
    handlers: Option<&[String]>,
    now: i64,
) -> Result<Option<i64>> {
    let future: Option<i64> = sqlx::query_scalar(
        "SELECT min(ready_at) FROM tasker_steps
         WHERE state = 'ready' AND limited = true AND ready_at > $1
           AND ($2::text[] IS NULL OR handler = ANY($2))",
    )
    .bind(now)
    .bind(handlers)
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "SELECT concurrency_key, concurrency_max, rate_key, rate_limit, rate_per_ms, min(ready_at)
         FROM tasker_steps
         WHERE state = 'ready' AND limited = true AND ready_at <= $1
           AND ($2::text[] IS NULL OR handler = ANY($2))
         GROUP BY 1, 2, 3, 4, 5 LIMIT 1000",
    )
    .bind(now)
    .bind(handlers)
    .fetch_all(&mut *conn)
    .await?;
    let mut best = future;
    for r in rows {
        let (ckey, cmax): (Option<String>, Option<i64>) = (r.try_get(0)?, r.try_get(1)?);
        let (rkey, rlimit, rper): (Option<String>, Option<i64>, Option<i64>) =
            (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
        let ready_at: i64 = r.try_get(5)?;
        if let (Some(k), Some(max)) = (&ckey, cmax) {
            if running(conn, k).await? >= max {
                continue;
            }
        }
        let mut at = ready_at;
        if let (Some(k), Some(lim), Some(per)) = (&rkey, rlimit, rper) {
            let (n, oldest) = starts(conn, k, per, now).await?;
            if n >= lim {
                at = oldest.unwrap_or(now) + per;
            }
        }
        best = Some(best.map_or(at, |b| b.min(at)));
    }
    Ok(best)
}

/// The limits of task `task_id`'s limited steps and their use now.
pub async fn task_state(
    conn: &mut PgConnection,
    task_id: i64,
    now: i64,
) -> Result<Vec<StepLimitState>> {
    let rows = sqlx::query(
        "SELECT name, concurrency_key, concurrency_max, rate_key, rate_limit, rate_per_ms
         FROM tasker_steps WHERE task_id = $1 AND limited = true ORDER BY id",
    )
    .bind(task_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0)?;
        let (ckey, cmax): (Option<String>, Option<i64>) = (r.try_get(1)?, r.try_get(2)?);
        let (rkey, rlimit, rper): (Option<String>, Option<i64>, Option<i64>) =
            (r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
        let concurrency = match (ckey, cmax) {
            (Some(key), Some(max)) => Some(LimitState {
                running: running(conn, &key).await?,
                key,
                max,
                per_ms: None,
                next_free_at: None,
            }),
            _ => None,
        };
        let rate = match (rkey, rlimit, rper) {
            (Some(key), Some(limit), Some(per)) => {
                let (n, oldest) = starts(conn, &key, per, now).await?;
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
