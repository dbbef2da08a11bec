//! The raw commit rate of SQLite with the engine's settings (WAL, same `synchronous`):
//! one connection, an autocommit single-row UPDATE in a loop.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use crate::results::Results;
use crate::util::{self, Res, Scratch};

pub fn run(sync: &str, seconds: f64, out: &mut Results) -> Res<()> {
    let scratch = Scratch::new("commits")?;
    let url = util::sqlite_url(&scratch.db());
    let synchronous = match sync {
        "full" => SqliteSynchronous::Full,
        "off" => SqliteSynchronous::Off,
        _ => SqliteSynchronous::Normal,
    };
    let opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (commits, elapsed, select_us) = rt.block_on(async move {
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        sqlx::query("CREATE TABLE scratch (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            .execute(&mut conn)
            .await?;
        sqlx::query("INSERT INTO scratch (id, v) VALUES (1, 0)")
            .execute(&mut conn)
            .await?;
        let limit = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut commits = 0u64;
        while start.elapsed() < limit {
            for _ in 0..50 {
                sqlx::query("UPDATE scratch SET v = v + 1 WHERE id = 1")
                    .execute(&mut conn)
                    .await?;
            }
            commits += 50;
        }
        let elapsed = start.elapsed().as_secs_f64();
        // The floor of one statement through sqlx (its worker thread and channels),
        // with no write: what every statement of an engine operation pays at least.
        let start = Instant::now();
        let mut selects = 0u64;
        while start.elapsed() < limit / 4 {
            for _ in 0..50 {
                sqlx::query("SELECT v FROM scratch WHERE id = 1")
                    .fetch_one(&mut conn)
                    .await?;
            }
            selects += 50;
        }
        let select_us = start.elapsed().as_secs_f64() * 1e6 / selects as f64;
        conn.close().await?;
        Ok::<_, sqlx::Error>((commits, elapsed, select_us))
    })?;
    let rate = commits as f64 / elapsed;
    out.num("sqlite_commits_per_s", rate);
    out.num("sqlx_select_roundtrip_us", select_us);
    eprintln!(
        "  sqlite: {rate:.0} commits/s ({commits} in {elapsed:.2} s); sqlx SELECT round trip {select_us:.1} us"
    );
    Ok(())
}
