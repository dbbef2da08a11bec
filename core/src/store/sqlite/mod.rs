//! The embedded SQLite store: one writer connection (SQLite allows one writer at a time,
//! so writes queue in-process instead of contending for the file lock) and a small pool
//! of read-only connections for queries. WAL mode lets readers run beside the writer.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::model::template::Template;
use crate::store::*;

mod claims;
mod migrate;
mod reads;
mod tasks;
mod write;

pub struct SqliteStore {
    writer: Mutex<Option<SqliteConnection>>,
    readers: SqlitePool,
    /// Claim statements by number of handlers (the SQL unions one index range per handler).
    claim_sql: StdMutex<HashMap<usize, Arc<str>>>,
}

/// `sqlite://path`, `sqlite:path` or `sqlite::memory:` to connect options.
fn connect_options(config: &Config) -> Result<SqliteConnectOptions> {
    let url = &config.database_url;
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid_argument(format!("invalid SQLite database_url `{url}`: {e}"))
    };
    let opts = SqliteConnectOptions::from_str(url).map_err(|e| bad(&e))?;
    let synchronous = match config.sqlite_synchronous.as_str() {
        "full" => SqliteSynchronous::Full,
        "off" => SqliteSynchronous::Off,
        _ => SqliteSynchronous::Normal,
    };
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_millis(config.sqlite_busy_timeout_ms))
        .foreign_keys(true)
        .statement_cache_capacity(256))
}

impl SqliteStore {
    pub async fn open(config: &Config) -> Result<SqliteStore> {
        let opts = connect_options(config)?;
        let writer = SqliteConnection::connect_with(&opts).await.map_err(|e| {
            Error::new(
                ErrorCode::Unavailable,
                format!("cannot open SQLite database `{}`: {e}", config.database_url),
            )
        })?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.sqlite_read_connections.max(1))
            .min_connections(0)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_lazy_with(opts.read_only(true));
        Ok(SqliteStore {
            writer: Mutex::new(Some(writer)),
            readers,
            claim_sql: StdMutex::new(HashMap::new()),
        })
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction on the writer connection; commits
    /// on success and rolls back on error.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFut<'c, T>,
    {
        let mut guard = self.writer.lock().await;
        let conn = guard
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::Closed, "the store is closed"))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let value = f(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    fn claim_statement(&self, handlers: usize) -> AssertSqlSafe<Arc<str>> {
        let mut cache = self.claim_sql.lock().unwrap_or_else(|p| p.into_inner());
        let sql = cache
            .entry(handlers)
            .or_insert_with(|| claims::claim_sql(handlers).into())
            .clone();
        AssertSqlSafe(sql)
    }
}

impl Store for SqliteStore {
    fn migrate(&self) -> BoxFut<'_, u32> {
        Box::pin(async move {
            let mut guard = self.writer.lock().await;
            let conn = guard
                .as_mut()
                .ok_or_else(|| Error::new(ErrorCode::Closed, "the store is closed"))?;
            migrate::run(conn).await
        })
    }

    fn put_template<'a>(&'a self, t: &'a Template, replace: bool, now: i64) -> BoxFut<'a, bool> {
        let t = t.clone();
        Box::pin(self.write(move |c| {
            Box::pin(async move { reads::put_template(c, &t, replace, now).await })
        }))
    }

    fn get_template<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Option<Template>> {
        Box::pin(async move {
            let mut conn = self.readers.acquire().await?;
            reads::get_template(&mut conn, namespace, name, version).await
        })
    }

    fn create_task(&self, task: NewTask) -> BoxFut<'_, CreatedTask> {
        Box::pin(self.write(move |c| Box::pin(tasks::create(c, task))))
    }

    fn claim(&self, params: ClaimParams) -> BoxFut<'_, ClaimBatch> {
        Box::pin(async move {
            let sql = self.claim_statement(params.handlers.len());
            let claimed = self
                .write({
                    let params = params.clone();
                    move |c| Box::pin(claims::claim(c, sql, params))
                })
                .await?;
            let mut conn = self.readers.acquire().await?;
            claims::load_claim_inputs(&mut conn, claimed, &params).await
        })
    }

    fn heartbeat(&self, step_id: i64, token: i64, lease_ms: u64, now: i64) -> BoxFut<'_, i64> {
        Box::pin(async move {
            let mut guard = self.writer.lock().await;
            let conn = guard
                .as_mut()
                .ok_or_else(|| Error::new(ErrorCode::Closed, "the store is closed"))?;
            claims::heartbeat(conn, step_id, token, lease_ms, now).await
        })
    }

    fn complete(&self, items: Vec<Completion>, now: i64) -> BoxFut<'_, Vec<ItemOutcome>> {
        Box::pin(self.write(move |c| Box::pin(claims::complete(c, items, now))))
    }

    fn fail(&self, report: FailureReport) -> BoxFut<'_, FailOutcome> {
        Box::pin(self.write(move |c| Box::pin(claims::fail(c, report))))
    }

    fn sweep(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        Box::pin(self.write(move |c| Box::pin(claims::sweep(c, now, limit))))
    }

    fn cancel_task(
        &self,
        task_id: i64,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, TaskChange> {
        Box::pin(self.write(move |c| Box::pin(tasks::cancel(c, task_id, reason, now))))
    }

    fn retry_step(&self, step: StepRef, now: i64) -> BoxFut<'_, StepChange> {
        Box::pin(self.write(move |c| Box::pin(tasks::retry_step(c, step, now))))
    }

    fn resolve_step(
        &self,
        step: StepRef,
        result: Option<String>,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, StepChange> {
        Box::pin(self.write(move |c| Box::pin(tasks::resolve_step(c, step, result, reason, now))))
    }

    fn get_task(&self, task_id: i64) -> BoxFut<'_, Option<TaskView>> {
        Box::pin(async move {
            let mut conn = self.readers.acquire().await?;
            reads::get_task(&mut conn, task_id).await
        })
    }

    fn list_tasks(&self, filter: TaskFilter) -> BoxFut<'_, Vec<TaskSummary>> {
        Box::pin(async move {
            let mut conn = self.readers.acquire().await?;
            reads::list_tasks(&mut conn, &filter).await
        })
    }

    fn stats(&self, now: i64) -> BoxFut<'_, Stats> {
        Box::pin(async move {
            let mut conn = self.readers.acquire().await?;
            reads::stats(&mut conn, now).await
        })
    }

    fn events(&self, since: i64, limit: u32, task_id: Option<i64>) -> BoxFut<'_, Vec<Event>> {
        Box::pin(async move {
            let mut conn = self.readers.acquire().await?;
            reads::events(&mut conn, since, limit, task_id).await
        })
    }

    fn last_event_id(&self) -> BoxFut<'_, i64> {
        Box::pin(async move {
            let mut conn = self.readers.acquire().await?;
            reads::last_event_id(&mut conn).await
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            if let Some(conn) = self.writer.lock().await.take() {
                conn.close().await?;
            }
            self.readers.close().await;
            Ok(())
        })
    }
}
