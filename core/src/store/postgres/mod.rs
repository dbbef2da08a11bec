//! The PostgreSQL store (sqlx): many processes on many machines share one database.
//!
//! The same model and the same set-based statements as SQLite, with PostgreSQL's
//! concurrency tools: claims use `FOR UPDATE SKIP LOCKED`; rows another transaction may
//! also touch (released children, task counters) are locked in id order, and a
//! deadlock or serialization failure retries the whole operation; `LISTEN/NOTIFY` wakes
//! waiting claimers and event readers in every process. Tables live in the configured
//! schema (`postgres_schema`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::model::template::Template;
use crate::store::*;

mod children;
mod claims;
mod fan_out;
mod hot;
mod limits;
mod migrate;
mod reads;
mod scheduling;
mod signals;
mod tasks;
mod write;

pub struct PgStore {
    pool: PgPool,
    /// The advisory lock that keeps event cursors from skipping a row (writers hold it
    /// shared, readers take it exclusive for an instant: migration 0006), and the
    /// NOTIFY channel: both
    /// per schema, so separate installations in one server do not interfere.
    lock_key: i64,
    channel: String,
    listener: tokio::task::JoinHandle<()>,
    /// The one connection that LISTENs (outside `pool`).
    listen_pool: PgPool,
    /// The pool's settings, named in its timeout error.
    pool_size: u32,
    acquire_timeout_ms: u64,
    /// Task ids reserved from the server for this process's next creations, ascending
    /// (see [`TASK_ID_BLOCK`]).
    task_ids: std::sync::Mutex<std::collections::VecDeque<i64>>,
    /// Asks the notifier task for one NOTIFY (requests made while it is busy coalesce).
    wanted: Arc<tokio::sync::Notify>,
    notifier: tokio::task::JoinHandle<()>,
    /// The notifier's one connection (outside `pool`).
    notify_pool: PgPool,
}

/// How many task ids one reservation takes (`tasker_reserve_task_ids`, migration 0005).
/// A creation carries its own id, which is what makes it safe to repeat after a lost
/// connection, so even creations without an idempotency key are one round trip; one
/// more round trip per block refills it. Small, because ids of different processes
/// interleave by blocks (ids follow creation order within a process, and within a
/// block's span across processes), and ids left in a block at exit are never used.
const TASK_ID_BLOCK: i32 = 16;

/// How every write transaction starts (one round trip: a simple query may hold several
/// statements). The hot-path statements are large CTEs that take longer to plan than to
/// run for a small batch (a one-step claim: 0.6 ms re-planned, 0.25 ms with its cached
/// plan), and PostgreSQL's default keeps re-planning statements whose generic plan
/// looks costlier than a custom one. Every write finds its rows by primary key or a
/// partial index, so the generic plan is the plan. Reads keep the default: their optional
/// filters (`$1 IS NULL OR state = $1`) need custom plans to use an index.
const BEGIN_WRITE: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// How often an operation is retried after a deadlock or serialization failure.
const RETRIES: u32 = 5;

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// FNV-1a: a stable 64-bit number from the schema name.
fn key_of(s: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl PgStore {
    pub async fn open(config: &Config, signals: Arc<Signals>) -> Result<PgStore> {
        let schema = config.postgres_schema.clone();
        if !valid_schema(&schema) {
            return Err(Error::invalid_argument(format!(
                "postgres_schema `{schema}` must be 1-63 letters, digits or `_`, not starting with a digit"
            )));
        }
        let opts = PgConnectOptions::from_str(&config.database_url)
            .map_err(|e| Error::invalid_argument(format!("invalid PostgreSQL database_url: {e}")))?
            .options([
                ("search_path", schema.as_str()),
                (
                    "statement_timeout",
                    &config.postgres_statement_timeout_ms.to_string(),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.postgres_pool_size.max(1))
            // No ping per call; `write`/`read` retry on another connection instead.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_with(opts.clone())
            .await
            .map_err(|e| {
                Error::new(
                    ErrorCode::Unavailable,
                    format!("cannot connect to PostgreSQL: {e}"),
                )
            })?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&pool)
        .await
        .or_else(|e| match &e {
            // Two processes creating the schema at once: the loser sees a duplicate.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
                Ok(Default::default())
            }
            _ => Err(e),
        })?;
        let channel = format!("tasker_{schema}");
        // The listener holds its connection for good, so it gets a pool of its own:
        // taken from the work pool it left `postgres_pool_size - 1` connections for
        // operations, and none at all with a pool of one (every call timed out). The
        // pool exhaustion test in tests/reliability.rs found this.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_lazy_with(opts.clone());
        let opts_for_notify = opts;
        let listener = tokio::spawn(listen(listen_pool.clone(), channel.clone(), signals));
        let notify_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_lazy_with(opts_for_notify);
        let wanted = Arc::new(tokio::sync::Notify::new());
        let notifier = tokio::spawn(notify_forever(
            notify_pool.clone(),
            channel.clone(),
            wanted.clone(),
        ));
        Ok(PgStore {
            pool,
            lock_key: key_of(&schema),
            channel,
            listener,
            listen_pool,
            pool_size: config.postgres_pool_size.max(1),
            acquire_timeout_ms: config.acquire_timeout_ms,
            task_ids: Default::default(),
            wanted,
            notifier,
            notify_pool,
        })
    }

    /// Wakes waiting claimers in other processes after a commit that made work ready
    /// without notifying inside its transaction (creations: migration 0008).
    fn wake_others(&self) {
        self.wanted.notify_one();
    }

    /// sqlx's own timeout message ("pool timed out while waiting for an open
    /// connection") names neither setting to look at; say which, and the two causes
    /// (found by the pool exhaustion test in tests/reliability.rs).
    fn pool_error(&self, e: sqlx::Error) -> Error {
        match e {
            sqlx::Error::PoolTimedOut => Error::new(
                ErrorCode::Unavailable,
                format!(
                    "no PostgreSQL connection within acquire_timeout_ms ({} ms): the server does not answer, or all postgres_pool_size ({}) connections are busy",
                    self.acquire_timeout_ms, self.pool_size
                ),
            ),
            e => Error::from(e),
        }
    }

    /// Runs one operation in a transaction, retrying it after a deadlock or a
    /// serialization failure (the transaction was rolled back, so a retry is safe), and
    /// on a fresh connection when a pooled one turns out dead before COMMIT.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> Fn(&'c mut PgConnection, Ctx) -> BoxFut<'c, T>,
    {
        let ctx = self.ctx();
        let mut attempt = 0;
        let mut dead = 0;
        loop {
            let mut tx = match self.pool.begin_with(BEGIN_WRITE).await {
                Ok(tx) => tx,
                Err(e) if is_dead_connection(&e) && dead < self.pool_size => {
                    dead += 1;
                    tracing::debug!(error = %e, "a pooled connection was dead; retrying on another");
                    continue;
                }
                Err(e) => return Err(self.pool_error(e)),
            };
            let e = match f(&mut tx, ctx.clone()).await {
                Ok(v) => match tx.commit().await {
                    Ok(()) => return Ok(v),
                    // Lost at COMMIT, the commit may have happened: never repeated.
                    Err(e) if is_dead_connection(&e) => return Err(Error::from(e)),
                    Err(e) => Error::from(e),
                },
                Err(e) => e,
            };
            // Lost before COMMIT: the transaction died with the connection.
            if !self.again(&e, &mut attempt, &mut dead).await {
                return Err(e);
            }
        }
    }

    /// Runs one hot-path function call outside an explicit transaction: the call is its
    /// own transaction and commits as it returns, so the whole operation is one round
    /// trip. Retried after a deadlock or serialization failure (rolled back), and on
    /// another connection when the one used turns out dead. Unlike [`Self::write`], a
    /// connection lost mid-call leaves open whether the call committed, so this is only
    /// for operations whose repeat is harmless: claims and completions are fenced by
    /// their claim tokens (a repeated completion is told `lease_lost`; steps of a claim
    /// whose answer was lost come back when their lease runs out, as after a crash),
    /// and a creation with an idempotency key returns the task the first call made.
    async fn autocommit<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> Fn(&'c mut PgConnection, Ctx) -> BoxFut<'c, T>,
    {
        let ctx = self.ctx();
        let mut attempt = 0;
        let mut dead = 0;
        loop {
            let mut conn = self.pool.acquire().await.map_err(|e| self.pool_error(e))?;
            let e = match f(&mut conn, ctx.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !self.again(&e, &mut attempt, &mut dead).await {
                return Err(e);
            }
        }
    }

    /// The id for the next task this process creates: from the reserved block, refilled
    /// with one round trip when empty. Reserving changes only the sequence, so it is
    /// repeated on another connection like a read.
    async fn reserve_task_id(&self) -> Result<i64> {
        let next = self
            .task_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if let Some(id) = next {
            return Ok(id);
        }
        let mut block = self.reserve_from_server(TASK_ID_BLOCK).await?.into_iter();
        let first = block
            .next()
            .ok_or_else(|| Error::internal("tasker_reserve_task_ids returned no id"))?;
        // Another thread may have refilled meanwhile: both blocks are kept, in order.
        let mut ids = self.task_ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<i64> = ids.drain(..).chain(block).collect();
        all.sort_unstable();
        ids.extend(all);
        Ok(first)
    }

    /// `n` ids for a batch of creations, ascending: what is left of this process's
    /// reserved block first, then one round trip for the rest. Taking the block first
    /// keeps ids in creation order within the process (a later `create_task` does not
    /// go back to lower ids than a batch got).
    async fn reserve_task_ids(&self, n: usize) -> Result<Vec<i64>> {
        let mut ids: Vec<i64> = {
            let mut cached = self.task_ids.lock().unwrap_or_else(|p| p.into_inner());
            let take = n.min(cached.len());
            cached.drain(..take).collect()
        };
        if ids.len() < n {
            let more = i32::try_from(n - ids.len())
                .map_err(|_| Error::invalid_argument("too many tasks in one batch"))?;
            ids.extend(self.reserve_from_server(more).await?);
        }
        if ids.len() != n {
            return Err(Error::internal(
                "tasker_reserve_task_ids returned too few ids",
            ));
        }
        Ok(ids)
    }

    /// Takes `n` fresh ids from the server's task id sequence (one round trip), as one
    /// array value rather than a row per id (decoding rows was most of the client's
    /// cost of the reservation).
    async fn reserve_from_server(&self, n: i32) -> Result<Vec<i64>> {
        self.read(move |c| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(
                    "SELECT ARRAY(SELECT r.id FROM tasker_reserve_task_ids($1) AS r(id) ORDER BY r.id)",
                )
                .bind(n)
                .fetch_one(c)
                .await?)
            })
        })
        .await
    }

    /// What every write needs besides its connection.
    fn ctx(&self) -> Ctx {
        Ctx {
            lock_key: self.lock_key,
            channel: self.channel.clone(),
        }
    }

    /// Whether a failed write is tried again: after a deadlock or serialization failure
    /// (rolled back; up to `RETRIES` times, after a short random pause), or when the
    /// connection turned out dead (up to once per pooled connection). The caller knows
    /// a repeat is safe.
    async fn again(&self, e: &Error, attempt: &mut u32, dead: &mut u32) -> bool {
        if matches!(e.sqlstate(), Some("40P01" | "40001")) && *attempt < RETRIES {
            *attempt += 1;
            tracing::debug!(attempt = *attempt, error = %e, "retrying after a deadlock");
            tokio::time::sleep(Duration::from_millis(
                fastrand::u64(1..5) * u64::from(*attempt),
            ))
            .await;
            true
        } else if lost_connection(e) && *dead < self.pool_size {
            *dead += 1;
            tracing::debug!(error = %e, "a pooled connection was dead; retrying on another");
            true
        } else {
            false
        }
    }

    /// Runs one read, retrying on another connection when a pooled one turns out dead
    /// (reads change nothing, so repeating one is always safe).
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFut<'c, T>,
    {
        let mut dead = 0;
        loop {
            let mut conn = self.pool.acquire().await.map_err(|e| self.pool_error(e))?;
            match f(&mut conn).await {
                Err(e) if lost_connection(&e) && dead < self.pool_size => {
                    dead += 1;
                    tracing::debug!(error = %e, "a pooled connection was dead; retrying on another");
                }
                other => return other,
            }
        }
    }
}

/// sqlx does not ping a pooled connection before handing it out (`test_before_acquire`
/// is off: the ping was one more round trip on every call). A connection the server
/// dropped (a restart, a failover, an idle timeout) shows up instead as an I/O error or
/// an "administrator command"/connection-class SQLSTATE on its first use.
fn is_dead_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

/// The converted form of [`is_dead_connection`]: `unavailable` for a connection-level
/// cause, not a statement timeout (57014, which would only time out again) nor a pool
/// timeout (raised before any connection was used).
fn lost_connection(e: &Error) -> bool {
    e.code == ErrorCode::Unavailable
        && match e.sqlstate() {
            Some(s) => s.starts_with("57P") || s.starts_with("08"),
            None => e.message.starts_with("database unavailable"),
        }
}

/// What every write needs besides its connection.
#[derive(Clone)]
pub struct Ctx {
    pub lock_key: i64,
    pub channel: String,
}

/// Sends one NOTIFY each time it is asked (requests made meanwhile coalesce into the
/// next one), each in a transaction of its own with `synchronous_commit = off`: a
/// notifying commit holds a cluster-wide lock until it is done, and this one has
/// nothing to flush (the change it announces committed durably before). A NOTIFY lost
/// in a server crash only delays the waiters until their `claim_poll_ms` re-check.
async fn notify_forever(pool: PgPool, channel: String, wanted: Arc<tokio::sync::Notify>) {
    loop {
        wanted.notified().await;
        let sent = async {
            let mut tx = pool
                .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(&channel)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot NOTIFY other processes; they notice new work within claim_poll_ms");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Wakes this process's waiters when any process commits a change.
async fn listen(pool: PgPool, channel: String, signals: Arc<Signals>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => signals.wake(),
                // The connection dropped: notifications may have been missed, so wake
                // everyone to re-check, then listen again.
                Ok(None) => {
                    signals.wake();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification stream failed; reconnecting");
                    signals.wake();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
    }
}

impl Store for PgStore {
    fn migrate(&self) -> BoxFut<'_, u32> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            migrate::run(&mut conn, self.lock_key).await
        })
    }

    fn put_template<'a>(&'a self, t: &'a Template, replace: bool, now: i64) -> BoxFut<'a, bool> {
        Box::pin(self.write(move |c, _| {
            let t = t.clone();
            Box::pin(async move { reads::put_template(c, &t, replace, now).await })
        }))
    }

    fn get_template<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Option<Template>> {
        let (ns, n, v) = (
            namespace.to_owned(),
            name.to_owned(),
            version.map(str::to_owned),
        );
        Box::pin(self.read(move |c| {
            let (ns, n, v) = (ns.clone(), n.clone(), v.clone());
            Box::pin(async move { reads::get_template(c, &ns, &n, v.as_deref()).await })
        }))
    }

    fn list_templates<'a>(
        &'a self,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> BoxFut<'a, Vec<TemplateSummary>> {
        let (ns, n) = (namespace.map(str::to_owned), name.map(str::to_owned));
        Box::pin(self.read(move |c| {
            let (ns, n) = (ns.clone(), n.clone());
            Box::pin(async move { reads::list_templates(c, ns.as_deref(), n.as_deref()).await })
        }))
    }

    fn registered_handlers(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(self.read(|c| Box::pin(reads::registered_handlers(c))))
    }

    fn find_task_by_key<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Option<CreatedTask>> {
        let (ns, n, k) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        Box::pin(self.read(move |c| {
            let (ns, n, k) = (ns.clone(), n.clone(), k.clone());
            Box::pin(async move { tasks::find_by_key(c, &ns, &n, &k).await })
        }))
    }

    fn create_task(&self, task: NewTask) -> BoxFut<'_, CreatedTask> {
        Box::pin(async move {
            let task = std::sync::Arc::new(task);
            // The task's id is reserved before the call and sent with it, so a repeat
            // after a lost connection finds the task the first call made instead of
            // making a second one (migration 0005): one round trip, key or no key.
            let task_id = self.reserve_task_id().await?;
            let id = if task.limits.is_some() {
                // Steps with limits get their keys in the creating transaction, so no
                // claimer sees them without.
                self.write(|c, ctx| {
                    let task = task.clone();
                    Box::pin(async move {
                        let id = hot::create(c, &ctx, task_id, &task).await?;
                        if let (Some(id), Some(l)) = (id, &task.limits) {
                            limits::apply(c, id, &task.template, l).await?;
                        }
                        Ok(id)
                    })
                })
                .await?
            } else {
                self.autocommit(|c, ctx| {
                    let task = task.clone();
                    Box::pin(async move { hot::create(c, &ctx, task_id, &task).await })
                })
                .await?
            };
            match id {
                Some(task_id) => {
                    self.wake_others();
                    Ok(CreatedTask {
                        task_id,
                        created: true,
                        state: "pending".into(),
                    })
                }
                None => {
                    let t = &task.template;
                    let key = task.idempotency_key.as_deref().unwrap_or_default();
                    self.find_task_by_key(&t.namespace, &t.name, key)
                        .await?
                        .ok_or_else(|| Error::internal("idempotency conflict without a task"))
                }
            }
        })
    }

    fn find_tasks_by_keys(&self, keys: Vec<TaskKey>) -> BoxFut<'_, Vec<Option<CreatedTask>>> {
        let keys = Arc::new(keys);
        Box::pin(self.read(move |c| {
            let keys = keys.clone();
            Box::pin(async move { tasks::find_by_keys(c, &keys).await })
        }))
    }

    fn create_tasks(&self, batch: Vec<NewTask>) -> BoxFut<'_, Vec<CreatedTask>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            // One id per task, reserved before the call and sent with it, so a repeat
            // after a lost connection finds the tasks the first call made.
            let ids: Arc<Vec<i64>> = Arc::new(self.reserve_task_ids(batch.len()).await?);
            let batch = Arc::new(batch);
            let made = if batch.iter().any(|t| t.limits.is_some()) {
                // As in `create_task`: limits in the creating transaction.
                self.write(|c, ctx| {
                    let (ids, batch) = (ids.clone(), batch.clone());
                    Box::pin(async move {
                        let made = hot::create_many(c, &ctx, &ids, &batch).await?;
                        for (t, m) in batch.iter().zip(&made) {
                            if let (true, Some(l)) = (m.created, &t.limits) {
                                limits::apply(c, m.task_id, &t.template, l).await?;
                            }
                        }
                        Ok(made)
                    })
                })
                .await?
            } else {
                self.autocommit(|c, ctx| {
                    let (ids, batch) = (ids.clone(), batch.clone());
                    Box::pin(async move { hot::create_many(c, &ctx, &ids, &batch).await })
                })
                .await?
            };
            if made.iter().any(|t| t.created) {
                self.wake_others();
            }
            Ok(made)
        })
    }

    fn claim(&self, params: ClaimParams) -> BoxFut<'_, ClaimBatch> {
        Box::pin(self.autocommit(move |c, ctx| {
            let params = params.clone();
            Box::pin(async move { hot::claim(c, &ctx, &params).await })
        }))
    }

    fn heartbeat(&self, step_id: i64, token: i64, lease_ms: u64, now: i64) -> BoxFut<'_, i64> {
        Box::pin(
            self.write(move |c, _| Box::pin(claims::heartbeat(c, step_id, token, lease_ms, now))),
        )
    }

    fn complete(
        &self,
        items: Vec<Completion>,
        claim: Option<ClaimParams>,
        now: i64,
    ) -> BoxFut<'_, (Vec<ItemOutcome>, ClaimBatch)> {
        let items = std::sync::Arc::new(items);
        Box::pin(self.autocommit(move |c, ctx| {
            let (items, claim) = (items.clone(), claim.clone());
            Box::pin(async move { hot::complete(c, &ctx, &items, claim.as_ref(), now).await })
        }))
    }

    fn fail(&self, report: FailureReport) -> BoxFut<'_, FailOutcome> {
        Box::pin(self.write(move |c, ctx| {
            let report = report.clone();
            Box::pin(async move { claims::fail(c, &ctx, report).await })
        }))
    }

    fn release(
        &self,
        step_id: i64,
        token: i64,
        delay_ms: u64,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, i64> {
        Box::pin(self.write(move |c, ctx| {
            let reason = reason.clone();
            Box::pin(async move {
                claims::release(c, &ctx, step_id, token, delay_ms, reason, now).await
            })
        }))
    }

    fn sweep(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        Box::pin(
            self.write(move |c, ctx| {
                Box::pin(async move { claims::sweep(c, &ctx, now, limit).await })
            }),
        )
    }

    fn cancel_task(
        &self,
        task_id: i64,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, TaskChange> {
        Box::pin(self.write(move |c, ctx| {
            let reason = reason.clone();
            Box::pin(async move { tasks::cancel(c, &ctx, task_id, reason, now).await })
        }))
    }

    fn retry_step(&self, step: StepRef, now: i64) -> BoxFut<'_, StepChange> {
        Box::pin(self.write(move |c, ctx| {
            let step = step.clone();
            Box::pin(async move { tasks::retry_step(c, &ctx, step, now).await })
        }))
    }

    fn resolve_step(
        &self,
        step: StepRef,
        result: Option<String>,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, StepChange> {
        Box::pin(self.write(move |c, ctx| {
            let (step, result, reason) = (step.clone(), result.clone(), reason.clone());
            Box::pin(async move { tasks::resolve_step(c, &ctx, step, result, reason, now).await })
        }))
    }

    fn get_task(&self, task_id: i64) -> BoxFut<'_, Option<TaskView>> {
        Box::pin(self.read(move |c| Box::pin(reads::get_task(c, task_id))))
    }

    fn list_tasks(&self, filter: TaskFilter) -> BoxFut<'_, Vec<TaskSummary>> {
        Box::pin(self.read(move |c| {
            let filter = filter.clone();
            Box::pin(async move { reads::list_tasks(c, &filter).await })
        }))
    }

    fn stats(&self, now: i64, window_ms: i64) -> BoxFut<'_, Stats> {
        let key = self.lock_key;
        Box::pin(self.read(move |c| Box::pin(reads::stats(c, now, window_ms, key))))
    }

    fn events(&self, since: i64, limit: u32, task_id: Option<i64>) -> BoxFut<'_, Vec<Event>> {
        let key = self.lock_key;
        Box::pin(self.read(move |c| Box::pin(reads::events(c, since, limit, task_id, key))))
    }

    fn last_event_id(&self) -> BoxFut<'_, i64> {
        let key = self.lock_key;
        Box::pin(self.read(move |c| Box::pin(reads::last_event_id(c, key))))
    }

    fn next_ready_at(&self, handlers: Option<Vec<String>>) -> BoxFut<'_, Option<i64>> {
        Box::pin(self.read(move |c| {
            let handlers = handlers.clone();
            Box::pin(async move { reads::next_ready_at(c, handlers.as_deref()).await })
        }))
    }

    fn promote_due(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move { scheduling::promote_due(c, &ctx, now, limit).await })
        }))
    }

    fn next_due(&self) -> BoxFut<'_, Option<i64>> {
        Box::pin(self.read(|c| Box::pin(scheduling::next_due(c))))
    }

    fn time_out_tasks(&self, now: i64, limit: u32) -> BoxFut<'_, Vec<i64>> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move { scheduling::time_out_tasks(c, &ctx, now, limit).await })
        }))
    }

    fn task_timing(&self, task_id: i64) -> BoxFut<'_, Option<TaskTiming>> {
        Box::pin(self.read(move |c| Box::pin(scheduling::task_timing(c, task_id))))
    }

    fn insert_schedule(&self, s: ScheduleRow) -> BoxFut<'_, ()> {
        let s = Arc::new(s);
        Box::pin(self.write(move |c, _| {
            let s = s.clone();
            Box::pin(async move { scheduling::insert_schedule(c, &s).await })
        }))
    }

    fn list_schedules(&self) -> BoxFut<'_, Vec<ScheduleRow>> {
        Box::pin(self.read(|c| Box::pin(scheduling::list_schedules(c))))
    }

    fn get_schedule(&self, name: String) -> BoxFut<'_, Option<ScheduleRow>> {
        Box::pin(self.read(move |c| {
            let name = name.clone();
            Box::pin(async move { scheduling::get_schedule(c, &name).await })
        }))
    }

    fn set_schedule_paused(
        &self,
        name: String,
        paused: bool,
        next_fire_at: Option<i64>,
        now: i64,
    ) -> BoxFut<'_, Option<ScheduleRow>> {
        Box::pin(self.write(move |c, _| {
            let name = name.clone();
            Box::pin(
                async move { scheduling::set_paused(c, &name, paused, next_fire_at, now).await },
            )
        }))
    }

    fn delete_schedule(&self, name: String) -> BoxFut<'_, bool> {
        Box::pin(self.write(move |c, _| {
            let name = name.clone();
            Box::pin(async move { scheduling::delete_schedule(c, &name).await })
        }))
    }

    fn due_schedules(&self, now: i64, limit: u32) -> BoxFut<'_, Vec<ScheduleRow>> {
        Box::pin(self.read(move |c| Box::pin(scheduling::due_schedules(c, now, limit))))
    }

    fn advance_schedule(
        &self,
        name: String,
        from: i64,
        to: i64,
        last_tick: Option<i64>,
        last_task: Option<i64>,
        now: i64,
    ) -> BoxFut<'_, bool> {
        Box::pin(self.write(move |c, _| {
            let name = name.clone();
            Box::pin(async move {
                scheduling::advance_schedule(c, &name, from, to, last_tick, last_task, now).await
            })
        }))
    }

    fn limited_next_ready_at(
        &self,
        handlers: Option<Vec<String>>,
        now: i64,
    ) -> BoxFut<'_, Option<i64>> {
        Box::pin(self.read(move |c| {
            let handlers = handlers.clone();
            Box::pin(async move { limits::next_ready(c, handlers.as_deref(), now).await })
        }))
    }

    fn step_limits(&self, task_id: i64, now: i64) -> BoxFut<'_, Vec<StepLimitState>> {
        Box::pin(self.read(move |c| Box::pin(limits::task_state(c, task_id, now))))
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            self.listener.abort();
            self.notifier.abort();
            self.pool.close().await;
            self.listen_pool.close().await;
            self.notify_pool.close().await;
            Ok(())
        })
    }

    fn begin_waits(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move { signals::begin_waits(c, &ctx, now, limit).await })
        }))
    }

    fn send_signal<'a>(
        &'a self,
        task_id: i64,
        name: &'a str,
        payload: &'a str,
        now: i64,
    ) -> BoxFut<'a, crate::store::signals::SignalSent> {
        let (name, payload) = (name.to_owned(), payload.to_owned());
        Box::pin(async move {
            self.write(move |c, ctx| {
                let (name, payload) = (name.clone(), payload.clone());
                Box::pin(async move {
                    signals::send_signal(c, &ctx, task_id, &name, &payload, now).await
                })
            })
            .await
        })
    }

    fn expire_waits(&self, now: i64, limit: u32) -> BoxFut<'_, u32> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move { signals::expire_waits(c, &ctx, now, limit).await })
        }))
    }

    fn advance_fan_outs(&self, now: i64, limit: u32, max_steps: i64) -> BoxFut<'_, u32> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move { fan_out::advance_fan_outs(c, &ctx, now, limit, max_steps).await })
        }))
    }

    fn held_step(&self, step_id: i64, token: i64) -> BoxFut<'_, (i64, String)> {
        Box::pin(self.read(move |c| Box::pin(children::held_step(c, step_id, token))))
    }

    fn link_child<'a>(
        &'a self,
        step_id: i64,
        token: i64,
        child: i64,
        key: &'a str,
        now: i64,
    ) -> BoxFut<'a, i64> {
        let key = key.to_owned();
        Box::pin(async move {
            self.write(move |c, _| {
                let key = key.clone();
                Box::pin(
                    async move { children::link_child(c, step_id, token, child, &key, now).await },
                )
            })
            .await
        })
    }

    fn wait_for_children(
        &self,
        step_id: i64,
        token: i64,
        wait_until: i64,
        now: i64,
    ) -> BoxFut<'_, crate::store::children::WaitStarted> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move {
                children::wait_for_children(c, &ctx, step_id, token, wait_until, now).await
            })
        }))
    }

    fn advance_children(&self, now: i64, limit: u32, max_result_bytes: usize) -> BoxFut<'_, u32> {
        Box::pin(self.write(move |c, ctx| {
            Box::pin(async move {
                children::advance_children(c, &ctx, now, limit, max_result_bytes).await
            })
        }))
    }

    fn task_links(&self, task_id: i64) -> BoxFut<'_, crate::store::children::TaskLinks> {
        Box::pin(self.read(move |c| Box::pin(children::task_links(c, task_id))))
    }

    fn unfinished_children(&self, task_id: i64) -> BoxFut<'_, Vec<i64>> {
        Box::pin(self.read(move |c| Box::pin(children::unfinished_children(c, task_id))))
    }
}
