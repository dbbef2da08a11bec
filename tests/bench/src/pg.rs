//! The PostgreSQL server the bench runs against: one admin connection (its own small
//! runtime) for schemas, server facts and the raw commit rate. The engine under test
//! opens its own pool from the same URL, so both use the same TLS mode.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::results::Results;
use crate::util::Res;

pub struct Pg {
    pub url: String,
    rt: tokio::runtime::Runtime,
    conn: Mutex<PgConnection>,
}

impl Pg {
    pub fn connect(url: &str) -> Res<Pg> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let conn = rt
            .block_on(PgConnection::connect(url))
            .map_err(|e| format!("cannot connect to the bench's PostgreSQL server: {e}"))?;
        Ok(Pg {
            url: url.to_owned(),
            rt,
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>) -> Res<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.rt.block_on(f(&mut conn))?)
    }

    pub fn exec(&self, sql: &str) -> Res<()> {
        let sql = sql.to_owned();
        self.with(async move |c| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(c).await?;
            Ok(())
        })
    }

    pub fn text(&self, sql: &str) -> Res<String> {
        let sql = sql.to_owned();
        self.with(async move |c| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(c)
                .await?
                .try_get(0)
        })
    }

    /// A new, empty schema name for one benchmark (any leftover of that name dropped).
    pub fn fresh_schema(&self, tag: &str) -> Res<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tasker_bench_{}_{}_{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.drop_schema(&name)?;
        Ok(name)
    }

    pub fn drop_schema(&self, name: &str) -> Res<()> {
        self.exec(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
    }

    /// Records the server version and whether this connection (same URL, same client
    /// library as the engine) uses TLS.
    pub fn describe(&self, out: &mut Results) -> Res<()> {
        out.text("pg_server_version", &self.text("SHOW server_version")?);
        let tls = self.text(
            "SELECT CASE WHEN ssl THEN 'on' ELSE 'off' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )?;
        out.text("pg_tls_engine", &tls);
        out.text(
            "pg_synchronous_commit",
            &self.text("SHOW synchronous_commit")?,
        );
        Ok(())
    }

    /// The raw commit rate: one connection, autocommit, a single-row UPDATE in a loop.
    pub fn commits(&self, seconds: f64, out: &mut Results) -> Res<()> {
        let schema = self.fresh_schema("commits")?;
        self.exec(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".scratch (id integer PRIMARY KEY, v bigint NOT NULL);
             INSERT INTO \"{schema}\".scratch VALUES (1, 0);"
        ))?;
        let update = format!("UPDATE \"{schema}\".scratch SET v = v + 1 WHERE id = 1");
        let limit = Duration::from_secs_f64(seconds);
        let measured = self.with(async |c| {
            let start = Instant::now();
            let mut commits = 0u64;
            while start.elapsed() < limit {
                for _ in 0..20 {
                    sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                        .execute(&mut *c)
                        .await?;
                }
                commits += 20;
            }
            Ok((commits, start.elapsed().as_secs_f64()))
        });
        self.drop_schema(&schema)?;
        let (commits, elapsed) = measured?;
        let rate = commits as f64 / elapsed;
        out.num("pg_commits_per_s", rate);
        eprintln!("  postgres: {rate:.0} commits/s ({commits} in {elapsed:.2} s)");
        Ok(())
    }
}
