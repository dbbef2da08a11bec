//! The embedded SQLite store (rusqlite, WAL). One writer connection behind a mutex
//! (SQLite allows one writer at a time, so writes queue in-process instead of
//! contending for the file lock) and a small pool of reader connections.
//!
//! Every operation runs synchronously on the calling thread, one transaction per
//! operation. That is deliberate: a driver that ships each statement to a connection
//! thread pays two context switches per statement, which dominated latency here (see
//! docs/architecture.md).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::model::template::Template;
use crate::store::*;

mod children;
mod claims;
mod fan_out;
mod limits;
mod migrate;
mod reads;
mod scheduling;
mod signals;
mod tasks;
mod write;

pub struct SqliteStore {
    /// A file path, or `None` for a private in-memory database.
    path: Option<String>,
    writer: Mutex<Option<Connection>>,
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    synchronous: &'static str,
    busy_timeout: Duration,
}

/// Creates a task, then gives its steps their limits in the same transaction.
fn create_limited(conn: &Connection, task: NewTask) -> Result<CreatedTask> {
    let (template, limits) = (task.template.clone(), task.limits.clone());
    let created = tasks::create(conn, task)?;
    if let (true, Some(l)) = (created.created, limits) {
        limits::apply(conn, created.task_id, &template, &l)?;
    }
    Ok(created)
}

/// `sqlite://path`, `sqlite:path` (relative or absolute) or `sqlite::memory:`.
fn parse_url(url: &str) -> Result<Option<String>> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| Error::invalid_argument(format!("`{url}` is not an sqlite: URL")))?;
    if rest == ":memory:" || rest.is_empty() {
        return Ok(None);
    }
    if rest.contains('?') {
        return Err(Error::invalid_argument(format!(
            "database_url `{url}`: query parameters are not supported; use the sqlite_* settings"
        )));
    }
    Ok(Some(rest.to_owned()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turns off the page cache's up-front bulk allocation (20 pages, about 87 KB) before
/// SQLite initialises. Every ephemeral B-tree (an `IN (SELECT ...)` list, a GROUP BY)
/// gets its own cache; with the bulk allocation each statement allocated and freed
/// 87 KB at the top of the heap, so glibc shrank and regrew the heap (page faults)
/// every operation. Measured: linear4 p50 1.24 ms -> about 0.5 ms. SQLite is linked
/// into this library, so the setting touches no one else's SQLite.
///
/// Runs at the first open. A program that also uses this SQLite directly (through
/// rusqlite) should call it before its own first connection.
pub fn configure_sqlite_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is called before any connection exists in this process
        // (the Once runs before the first open); it only records three values. If SQLite
        // was already initialised by other code it returns SQLITE_MISUSE and changes
        // nothing, which only costs speed.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<std::ffi::c_void>(),
                0 as std::ffi::c_int,
                0 as std::ffi::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialised before Tasker; page cache bulk allocation stays on"
            );
        }
    });
}

impl SqliteStore {
    pub fn open(config: &Config) -> Result<SqliteStore> {
        configure_sqlite_once();
        let path = parse_url(&config.database_url)?;
        let store = SqliteStore {
            path,
            writer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            max_readers: config.sqlite_read_connections.max(1) as usize,
            synchronous: match config.sqlite_synchronous.as_str() {
                "full" => "FULL",
                "off" => "OFF",
                _ => "NORMAL",
            },
            busy_timeout: Duration::from_millis(config.sqlite_busy_timeout_ms),
        };
        let writer = store.connect(false).map_err(|e| {
            Error::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot open SQLite database `{}`: {}",
                    config.database_url, e.message
                ),
            )
        })?;
        *lock(&store.writer) = Some(writer);
        Ok(store)
    }

    fn connect(&self, reader: bool) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match &self.path {
            Some(p) => Connection::open_with_flags(p, flags)?,
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(self.busy_timeout)?;
        // Keep each statement's plan fixed: without this, SQLite re-prepares statements
        // whose bound values might change the plan (LIMIT ?, LIKE ?, partial indexes),
        // which cost 15% of a claim/complete cycle in profiles.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        conn.set_prepared_statement_cache_capacity(128);
        if self.path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        conn.pragma_update(None, "synchronous", self.synchronous)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        if reader {
            conn.pragma_update(None, "query_only", "ON")?;
        }
        Ok(conn)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer; commits on success,
    /// rolls back on error (the transaction's drop).
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut guard = lock(&self.writer);
        let conn = guard
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::Closed, "the store is closed"))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in a read transaction (one consistent snapshot) on a pooled reader.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.path.is_none() {
            // A private in-memory database is visible to its one connection only.
            let mut guard = lock(&self.writer);
            let conn = guard
                .as_mut()
                .ok_or_else(|| Error::new(ErrorCode::Closed, "the store is closed"))?;
            let tx = conn.transaction()?;
            return f(&tx);
        }
        if lock(&self.writer).is_none() {
            return Err(Error::new(ErrorCode::Closed, "the store is closed"));
        }
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect(true)?,
        };
        let out = {
            let tx = conn.transaction()?;
            f(&tx)
        };
        let mut pool = lock(&self.readers);
        if pool.len() < self.max_readers {
            pool.push(conn);
        }
        out
    }
}

/// Wraps the result of synchronous store work (already done) as the trait's future.
fn done<T: Send + 'static>(value: Result<T>) -> BoxFut<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Store for SqliteStore {
    fn migrate(&self) -> BoxFut<'_, u32> {
        let mut guard = lock(&self.writer);
        done(match guard.as_mut() {
            Some(conn) => migrate::run(conn),
            None => Err(Error::new(ErrorCode::Closed, "the store is closed")),
        })
    }

    fn put_template<'a>(&'a self, t: &'a Template, replace: bool, at: i64) -> BoxFut<'a, bool> {
        done(self.write(|c| reads::put_template(c, t, replace, at)))
    }

    fn get_template<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Option<Template>> {
        done(self.read(|c| reads::get_template(c, namespace, name, version)))
    }

    fn list_templates<'a>(
        &'a self,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> BoxFut<'a, Vec<TemplateSummary>> {
        done(self.read(|c| reads::list_templates(c, namespace, name)))
    }

    fn registered_handlers(&self) -> BoxFut<'_, Vec<String>> {
        done(self.read(reads::registered_handlers))
    }

    fn find_task_by_key<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Option<CreatedTask>> {
        done(self.read(|c| tasks::find_by_key(c, namespace, name, key)))
    }

    fn create_task(&self, task: NewTask) -> BoxFut<'_, CreatedTask> {
        done(self.write(|c| create_limited(c, task)))
    }

    fn find_tasks_by_keys(&self, keys: Vec<TaskKey>) -> BoxFut<'_, Vec<Option<CreatedTask>>> {
        done(self.read(|c| {
            keys.iter()
                .map(|k| tasks::find_by_key(c, &k.namespace, &k.name, &k.key))
                .collect()
        }))
    }

    fn create_tasks(&self, batch: Vec<NewTask>) -> BoxFut<'_, Vec<CreatedTask>> {
        // One write transaction: every task of the batch commits, or none does.
        done(self.write(|c| batch.into_iter().map(|t| create_limited(c, t)).collect()))
    }

    fn claim(&self, params: ClaimParams) -> BoxFut<'_, ClaimBatch> {
        done(self.write(|c| claims::claim(c, &params)))
    }

    fn heartbeat(&self, step_id: i64, token: i64, lease_ms: u64, at: i64) -> BoxFut<'_, i64> {
        done(self.write(|c| claims::heartbeat(c, step_id, token, lease_ms, at)))
    }

    fn complete(
        &self,
        items: Vec<Completion>,
        claim: Option<ClaimParams>,
        at: i64,
    ) -> BoxFut<'_, (Vec<ItemOutcome>, ClaimBatch)> {
        done(self.write(|c| {
            let outcomes = claims::complete(c, items, at)?;
            let batch = match &claim {
                Some(params) => claims::claim(c, params)?,
                None => ClaimBatch::default(),
            };
            Ok((outcomes, batch))
        }))
    }

    fn fail(&self, report: FailureReport) -> BoxFut<'_, FailOutcome> {
        done(self.write(|c| claims::fail(c, report)))
    }

    fn release(
        &self,
        step_id: i64,
        token: i64,
        delay_ms: u64,
        reason: Option<String>,
        at: i64,
    ) -> BoxFut<'_, i64> {
        done(self.write(|c| claims::release(c, step_id, token, delay_ms, reason, at)))
    }

    fn sweep(&self, at: i64, limit: u32) -> BoxFut<'_, u32> {
        done(self.write(|c| claims::sweep(c, at, limit)))
    }

    fn cancel_task(&self, task_id: i64, reason: Option<String>, at: i64) -> BoxFut<'_, TaskChange> {
        done(self.write(|c| tasks::cancel(c, task_id, reason, at)))
    }

    fn retry_step(&self, step: StepRef, at: i64) -> BoxFut<'_, StepChange> {
        done(self.write(|c| tasks::retry_step(c, step, at)))
    }

    fn resolve_step(
        &self,
        step: StepRef,
        result: Option<String>,
        reason: Option<String>,
        at: i64,
    ) -> BoxFut<'_, StepChange> {
        done(self.write(|c| tasks::resolve_step(c, step, result, reason, at)))
    }

    fn get_task(&self, task_id: i64) -> BoxFut<'_, Option<TaskView>> {
        done(self.read(|c| reads::get_task(c, task_id)))
    }

    fn list_tasks(&self, filter: TaskFilter) -> BoxFut<'_, Vec<TaskSummary>> {
        done(self.read(|c| reads::list_tasks(c, &filter)))
    }

    fn stats(&self, at: i64, window_ms: i64) -> BoxFut<'_, Stats> {
        done(self.read(|c| reads::stats(c, at, window_ms)))
    }

    fn events(&self, since: i64, limit: u32, task_id: Option<i64>) -> BoxFut<'_, Vec<Event>> {
        done(self.read(|c| reads::events(c, since, limit, task_id)))
    }

    fn last_event_id(&self) -> BoxFut<'_, i64> {
        done(self.read(reads::last_event_id))
    }

    fn next_ready_at(&self, handlers: Option<Vec<String>>) -> BoxFut<'_, Option<i64>> {
        done(self.read(|c| reads::next_ready_at(c, handlers.as_deref())))
    }

    fn promote_due(&self, at: i64, limit: u32) -> BoxFut<'_, u32> {
        done(self.write(|c| scheduling::promote_due(c, at, limit)))
    }

    fn next_due(&self) -> BoxFut<'_, Option<i64>> {
        done(self.read(scheduling::next_due))
    }

    fn time_out_tasks(&self, at: i64, limit: u32) -> BoxFut<'_, Vec<i64>> {
        done(self.write(|c| scheduling::time_out_tasks(c, at, limit)))
    }

    fn task_timing(&self, task_id: i64) -> BoxFut<'_, Option<TaskTiming>> {
        done(self.read(|c| scheduling::task_timing(c, task_id)))
    }

    fn insert_schedule(&self, s: ScheduleRow) -> BoxFut<'_, ()> {
        done(self.write(|c| scheduling::insert_schedule(c, &s)))
    }

    fn list_schedules(&self) -> BoxFut<'_, Vec<ScheduleRow>> {
        done(self.read(scheduling::list_schedules))
    }

    fn get_schedule(&self, name: String) -> BoxFut<'_, Option<ScheduleRow>> {
        done(self.read(|c| scheduling::get_schedule(c, &name)))
    }

    fn set_schedule_paused(
        &self,
        name: String,
        paused: bool,
        next_fire_at: Option<i64>,
        at: i64,
    ) -> BoxFut<'_, Option<ScheduleRow>> {
        done(self.write(|c| scheduling::set_paused(c, &name, paused, next_fire_at, at)))
    }

    fn delete_schedule(&self, name: String) -> BoxFut<'_, bool> {
        done(self.write(|c| scheduling::delete_schedule(c, &name)))
    }

    fn due_schedules(&self, at: i64, limit: u32) -> BoxFut<'_, Vec<ScheduleRow>> {
        done(self.read(|c| scheduling::due_schedules(c, at, limit)))
    }

    fn advance_schedule(
        &self,
        name: String,
        from: i64,
        to: i64,
        last_tick: Option<i64>,
        last_task: Option<i64>,
        at: i64,
    ) -> BoxFut<'_, bool> {
        done(
            self.write(|c| {
                scheduling::advance_schedule(c, &name, from, to, last_tick, last_task, at)
            }),
        )
    }

    fn limited_next_ready_at(
        &self,
        handlers: Option<Vec<String>>,
        now: i64,
    ) -> BoxFut<'_, Option<i64>> {
        done(self.read(|c| limits::next_ready(c, handlers.as_deref(), now)))
    }

    fn step_limits(&self, task_id: i64, now: i64) -> BoxFut<'_, Vec<StepLimitState>> {
        done(self.read(|c| limits::task_state(c, task_id, now)))
    }

    fn close(&self) -> BoxFut<'_, ()> {
        lock(&self.readers).clear();
        let writer = lock(&self.writer).take();
        done(match writer {
            Some(conn) => conn.close().map_err(|(_, e)| e.into()),
            None => Ok(()),
        })
    }

    fn begin_waits(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        done(self.write(|c| signals::begin_waits(c, now, limit)))
    }

    fn send_signal<'a>(
        &'a self,
        task_id: i64,
        name: &'a str,
        payload: &'a str,
        now: i64,
    ) -> BoxFut<'a, crate::store::signals::SignalSent> {
        done(self.write(|c| signals::send_signal(c, task_id, name, payload, now)))
    }

    fn expire_waits(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        done(self.write(|c| signals::expire_waits(c, now, limit)))
    }

    fn advance_fan_outs(&self, now: i64, limit: u32, max_steps: i64) -> BoxFut<'_, u32> {
        done(self.write(|c| fan_out::advance_fan_outs(c, now, limit, max_steps)))
    }

    fn held_step(&self, step_id: i64, token: i64) -> BoxFut<'_, (i64, String)> {
        done(self.read(|c| children::held_step(c, step_id, token)))
    }

    fn link_child<'a>(
        &'a self,
        step_id: i64,
        token: i64,
        child: i64,
        key: &'a str,
        now: i64,
    ) -> BoxFut<'a, i64> {
        done(self.write(|c| children::link_child(c, step_id, token, child, key, now)))
    }

    fn wait_for_children(
        &self,
        step_id: i64,
        token: i64,
        wait_until: i64,
        now: i64,
    ) -> BoxFut<'_, crate::store::children::WaitStarted> {
        done(self.write(|c| children::wait_for_children(c, step_id, token, wait_until, now)))
    }

    fn advance_children(&self, now: i64, limit: u32, max_result_bytes: usize) -> BoxFut<'_, u32> {
        done(self.write(|c| children::advance_children(c, now, limit, max_result_bytes)))
    }

    fn task_links(&self, task_id: i64) -> BoxFut<'_, crate::store::children::TaskLinks> {
        done(self.read(|c| children::task_links(c, task_id)))
    }

    fn unfinished_children(&self, task_id: i64) -> BoxFut<'_, Vec<i64>> {
        done(self.read(|c| children::unfinished_children(c, task_id)))
    }
}
