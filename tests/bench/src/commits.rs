//! The raw commit rate of SQLite with the engine's settings (WAL, same `synchronous`):
//! one connection, an autocommit single-row UPDATE in a loop.

use std::time::{Duration, Instant};

use crate::results::Results;
use crate::util::{Res, Scratch};

pub fn run(sync: &str, seconds: f64, out: &mut Results) -> Res<()> {
    let scratch = Scratch::new("commits")?;
    let conn = rusqlite::Connection::open(scratch.db())?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync.to_ascii_uppercase())?;
    conn.execute_batch(
        "CREATE TABLE scratch (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO scratch (id, v) VALUES (1, 0);",
    )?;
    let limit = Duration::from_secs_f64(seconds);
    let mut update = conn.prepare("UPDATE scratch SET v = v + 1 WHERE id = 1")?;
    let start = Instant::now();
    let mut commits = 0u64;
    while start.elapsed() < limit {
        for _ in 0..50 {
            update.execute([])?;
        }
        commits += 50;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = commits as f64 / elapsed;
    out.num("sqlite_commits_per_s", rate);
    eprintln!("  sqlite: {rate:.0} commits/s ({commits} in {elapsed:.2} s)");
    Ok(())
}
