//! Commits per second from many connections at once, raw and through the engine's
//! transition writer. Each connection commits a tiny transaction in a loop: a single-row
//! update (raw), or one call of `tasker_insert_transitions` with one row, the statement
//! every engine write ends with (it takes the event-order lock): a task's row, which
//! sends no NOTIFY, and a step turning ready, which does (migration 0008: only work that
//! becomes claimable notifies).
//! When writers serialize on a lock held to commit, the second rate stays near one
//! connection's commit rate whatever the number of connections; when they do not, it
//! follows the raw rate, which grows with connections as the server flushes several
//! commits at once.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::pg::Pg;
use crate::results::Results;
use crate::util::{Db, Res, Store};

/// One lock key for every writer, as all writers of one schema share one.
const LOCK_KEY: i64 = 0x7461_736b;

pub fn run(pg: &Pg, clients: usize, seconds: f64, out: &mut Results) -> Res<()> {
    let db = Db::open(Store::Postgres(pg), "writers")?;
    let schema = db.schema().ok_or("no schema")?.to_owned();
    pg.exec(&format!(
        "CREATE TABLE \"{schema}\".scratch (id integer PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO \"{schema}\".scratch SELECT g, 0 FROM generate_series(1, {clients}) g;"
    ))?;
    let raw = rate(pg, clients, seconds, |i| {
        format!(
            "UPDATE \"{schema}\".scratch SET v = v + 1 WHERE id = {}",
            i + 1
        )
    })?;
    let events = rate(pg, clients, seconds, |_| {
        format!(
            "SELECT \"{schema}\".tasker_insert_transitions(
                 ARRAY[ROW(1, NULL, NULL, NULL, 'pending', NULL, NULL, 'created', NULL)]::\"{schema}\".tasker_tr[],
                 0, {LOCK_KEY}, 'tasker_bench_writers')"
        )
    })?;
    let notifying = rate(pg, clients, seconds, |_| {
        format!(
            "SELECT \"{schema}\".tasker_insert_transitions(
                 ARRAY[ROW(1, 1, 'a', 'pending', 'ready', NULL, NULL, 'parents_done', NULL)]::\"{schema}\".tasker_tr[],
                 0, {LOCK_KEY}, 'tasker_bench_writers')"
        )
    })?;
    drop(db);
    out.int("pg_writers_clients", clients as u64);
    out.num(&format!("pg_commits_per_s_{clients}clients"), raw);
    out.num(&format!("pg_event_commits_per_s_{clients}clients"), events);
    out.num(
        &format!("pg_notify_commits_per_s_{clients}clients"),
        notifying,
    );
    eprintln!(
        "  {clients} connections: {raw:.0} raw commits/s, {events:.0} transition-writer commits/s ({:.2} of raw), {notifying:.0} with a NOTIFY ({:.2} of raw)",
        events / raw,
        notifying / raw
    );
    Ok(())
}

/// Commits per second of `clients` connections, connection `i` running `sql(i)` in a
/// loop (autocommit) for `seconds`.
fn rate(pg: &Pg, clients: usize, seconds: f64, sql: impl Fn(usize) -> String) -> Res<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let limit = Duration::from_secs_f64(seconds);
    let (total, elapsed) = rt.block_on(async {
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(PgConnection::connect(&pg.url).await?);
        }
        let start = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let sql = sql(i);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < limit {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                            .execute(&mut c)
                            .await?;
                        n += 1;
                    }
                    Ok::<_, sqlx::Error>(n)
                })
            })
            .collect();
        let mut total = 0u64;
        for t in tasks {
            total += t
                .await
                .map_err(|e| format!("a writer task failed: {e}"))??;
        }
        Res::Ok((total, start.elapsed().as_secs_f64()))
    })?;
    Ok(total as f64 / elapsed)
}
