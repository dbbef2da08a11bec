//! The engine: every operation over a [`Store`], plus what is not SQL: template lookup
//! and caching, context validation, payload limits, waiting for work or events without
//! polling, the background lease sweep, and readiness explanations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::api::validate::{check_str, field_error, MAX_DURATION_MS};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::model::template::{Template, TemplateDoc, TemplateLimits, MAX_PRIORITY, MAX_TIMEOUT_S};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::*;

pub mod children;
mod explain;
mod scheduling;
mod signals;
mod templates;

pub use explain::{explain, Explanation};
pub use scheduling::{NewSchedule, ScheduleView, SCHEDULE_NAME_MAX};

/// A template with its compiled input schema.
pub struct Compiled {
    pub template: Arc<Template>,
    validator: Option<jsonschema::Validator>,
}

type TemplateKey = (String, String, String);

pub struct Engine {
    config: Config,
    store: Arc<dyn Store>,
    templates: RwLock<HashMap<TemplateKey, Arc<Compiled>>>,
    /// Woken when steps may have become claimable, and when events were written.
    signals: Arc<Signals>,
    /// This process's worker sessions on this database (the worker runtime).
    pub(crate) workers: crate::worker::Sessions,
    /// The time every decision is made with (`clock` setting; see [`Clock`]).
    clock: Clock,
    closed: AtomicBool,
    /// Delayed tasks and schedules (see `scheduling.rs`).
    scheduling: scheduling::State,
    /// Set once this engine has seen a template with a step the engine itself runs
    /// (`wait_for`, `fan_out`) or sent a signal: calls that release steps then move
    /// such steps on at once (the sweep does it in every process regardless).
    waits_seen: AtomicBool,
    /// Set once this engine has created a child task or a step waits for children:
    /// calls that can finalize a task then finish such waits at once (the sweep does it
    /// in every process regardless).
    children_seen: AtomicBool,
}

/// A request to create a task.
#[derive(Debug)]
pub struct CreateTask {
    pub namespace: String,
    pub name: String,
    pub version: Option<String>,
    pub context: Option<Box<RawValue>>,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    /// Delayed task: when its steps may first run (epoch ms), or `delay_ms` from now.
    /// At most one of the two; a time not in the future starts the task now.
    pub run_at: Option<i64>,
    pub delay_ms: Option<u64>,
    /// The task timeout, counted from when the task is due.
    pub timeout_s: Option<u64>,
    /// A child task: the step (running under this claim) that starts it.
    pub parent: Option<children::ParentLink>,
}

/// A claim request.
#[derive(Debug, Clone)]
pub struct Claim {
    pub handlers: Vec<String>,
    pub limit: u32,
    pub wait_ms: u64,
    pub worker: String,
    pub lease_ms: Option<u64>,
}

/// A failure reported by a handler.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub message: String,
    pub kind: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u64>,
    /// The whole error document as given (message, kind, details, backtrace, ...).
    pub document: Value,
}

/// Fills each step's dependency level. Steps are stored in topological order (ids are
/// assigned in the template's order), so one forward pass sees every parent first.
fn set_levels(view: &mut TaskView) {
    let mut levels: HashMap<String, i64> = HashMap::with_capacity(view.steps.len());
    for step in &mut view.steps {
        step.level = step
            .depends_on
            .iter()
            .map(|p| levels.get(p).copied().unwrap_or(0) + 1)
            .max()
            .unwrap_or(0);
        levels.insert(step.name.clone(), step.level);
    }
}

/// `result of step N` in a message about a completion's result, written out only if
/// the result is refused.
struct ResultOf(i64);

impl std::fmt::Display for ResultOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "result of step {}", self.0)
    }
}

/// A handle's close signal. The API runs each call with its handle's signal in
/// [`CALLER`], and the operations that wait (`claim`, `events`) end with `closed` when
/// it fires instead of finishing their wait.
#[derive(Default, Debug)]
pub struct CloseSignal {
    closed: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CloseSignal {
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the handle closes.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

/// Resolves when the handle the running call came through closes (never, outside a
/// call made through a handle).
pub async fn caller_closed() {
    match CALLER.try_with(Arc::clone) {
        Ok(c) => c.wait().await,
        Err(_) => std::future::pending().await,
    }
}

tokio::task_local! {
    /// The close signal of the handle the running call came through.
    pub static CALLER: Arc<CloseSignal>;
}

/// Largest number of handler names one claim may list.
pub const MAX_CLAIM_HANDLERS: usize = 64;

impl Engine {
    /// Opens the store named by `config.database_url` and applies migrations if
    /// configured to.
    pub async fn open(config: Config) -> Result<Arc<Engine>> {
        let url = config.database_url.as_str();
        let clock = Clock::from_setting(&config.clock)?;
        let signals = Arc::new(Signals::default());
        let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
            Arc::new(SqliteStore::open(&config)?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Arc::new(PgStore::open(&config, signals.clone()).await?)
        } else {
            return Err(Error::invalid_argument(format!(
                "unsupported database_url `{url}`: expected sqlite://path or postgres://..."
            )));
        };
        if config.migrate_on_open {
            store.migrate().await?;
        }
        Ok(Arc::new(Engine {
            config,
            store,
            templates: RwLock::new(HashMap::new()),
            signals,
            workers: crate::worker::Sessions::default(),
            clock,
            closed: AtomicBool::new(false),
            scheduling: scheduling::State::default(),
            waits_seen: AtomicBool::new(false),
            children_seen: AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The engine's time in epoch milliseconds (its [`Clock`]).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Moves a manual clock forward by `ms` and wakes every waiter, since retries and
    /// timeouts may have come due; returns the new time.
    pub fn advance_clock(&self, ms: i64) -> Result<i64> {
        self.check_open()?;
        let now = self.clock.advance(ms)?;
        self.workers.clock_moved();
        self.changed(true);
        Ok(now)
    }

    /// The earliest `ready_at` of a ready step (of these handlers, when given): when
    /// the next step becomes claimable, or `None` when no step is waiting to run.
    /// Steps whose parents have not finished are not counted: they become ready when
    /// a step completes, not at a time; nor are ready steps a concurrency limit holds
    /// back (a slot frees at a completion). A step a rate limit holds back counts at
    /// the time its window frees.
    pub async fn next_ready_at(&self, handlers: Option<Vec<String>>) -> Result<Option<i64>> {
        self.check_open()?;
        let plain = self.store.next_ready_at(handlers.clone()).await?;
        let limited = self
            .store
            .limited_next_ready_at(handlers, self.now_ms())
            .await?;
        // A delayed task's steps become ready at its due time.
        let due = self.store.next_due().await?;
        Ok([plain, limited, due].into_iter().flatten().min())
    }

    pub(crate) fn signals(&self) -> &Signals {
        &self.signals
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::Closed, "the engine is closed"));
        }
        Ok(())
    }

    fn changed(&self, ready: bool) {
        if ready {
            self.signals.ready.notify_waiters();
        }
        self.signals.events.notify_waiters();
    }

    /// Runs the lease sweep every `sweep_interval_ms` until the runtime stops.
    pub async fn sweep_forever(self: Arc<Engine>) {
        let every = Duration::from_millis(self.config.sweep_interval_ms);
        loop {
            tokio::time::sleep(every).await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            match self.sweep().await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease sweep failed"),
            }
        }
    }

    pub async fn migrate(&self) -> Result<u32> {
        self.check_open()?;
        self.store.migrate().await
    }

    fn limits(&self) -> TemplateLimits {
        TemplateLimits {
            default_retry: self.config.default_retry,
            default_timeout_s: self.config.default_timeout_s,
            max_steps: self.config.max_steps_per_task,
            max_json_depth: self.config.max_json_depth,
        }
    }

    /// Validates a template document without storing it.
    pub fn validate_template(&self, doc: TemplateDoc) -> Result<Template> {
        let template = doc.resolve(&self.config.env, &self.limits())?;
        // Step config is handed to every claim of the step: hold it to the payload limit.
        for step in &template.steps {
            let size = step.config.as_ref().map_or(0, |c| c.to_string().len());
            if size > self.config.max_payload_bytes {
                return Err(Error::invalid_template(
                    "config_too_large",
                    format!(
                        "step `{}` config is {size} bytes; the limit is {} (max_payload_bytes)",
                        step.name, self.config.max_payload_bytes
                    ),
                    serde_json::json!({ "step": step.name, "size": size, "limit": self.config.max_payload_bytes }),
                ));
            }
        }
        Ok(template)
    }

    /// Every registered template (of this namespace and name, when given).
    pub async fn list_templates(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<TemplateSummary>> {
        self.check_open()?;
        self.store.list_templates(namespace, name).await
    }

    /// Validates and stores a template; returns it and whether the store changed.
    pub async fn register_template(
        &self,
        doc: TemplateDoc,
        replace: bool,
    ) -> Result<(Arc<Template>, bool)> {
        let (compiled, changed) = self.register_compiled(doc, replace).await?;
        Ok((compiled.template.clone(), changed))
    }

    async fn register_compiled(
        &self,
        doc: TemplateDoc,
        replace: bool,
    ) -> Result<(Arc<Compiled>, bool)> {
        self.check_open()?;
        let template = self.validate_template(doc)?;
        let compiled = self.compile(template)?;
        let changed = self
            .store
            .put_template(&compiled.template, replace, self.now_ms())
            .await?;
        self.cache(compiled.clone());
        Ok((compiled, changed))
    }

    fn compile(&self, mut template: Template) -> Result<Arc<Compiled>> {
        // Templates validated by an older version may hold values now out of range (a
        // timeout of 10^16 s overflowed the stores' integers): hold them to the bounds
        // a template is validated against today, so every claim of their steps works.
        for step in &mut template.steps {
            step.timeout_s = step.timeout_s.clamp(1, MAX_TIMEOUT_S);
            step.priority = step.priority.clamp(-MAX_PRIORITY, MAX_PRIORITY);
        }
        let validator = match &template.input_schema {
            Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                Error::invalid_template(
                    "bad_input_schema",
                    format!("input_schema is not a valid JSON Schema: {e}"),
                    serde_json::json!({}),
                )
            })?),
            None => None,
        };
        Ok(Arc::new(Compiled {
            template: Arc::new(template),
            validator,
        }))
    }

    fn cache(&self, compiled: Arc<Compiled>) {
        if compiled
            .template
            .steps
            .iter()
            .any(|s| s.wait_for.is_some() || s.fan_out.is_some())
        {
            self.waits_seen.store(true, Ordering::Release);
        }
        let key = compiled.template.key();
        self.templates
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, compiled);
    }

    /// Finds a template: the in-process cache, then the store's registry, then the
    /// template directory (registering what it finds there).
    pub async fn find_template(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<Compiled>> {
        if let Some(v) = version {
            let key = (namespace.to_owned(), name.to_owned(), v.to_owned());
            if let Some(c) = self
                .templates
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                return Ok(c.clone());
            }
        }
        if let Some(t) = self.store.get_template(namespace, name, version).await? {
            let compiled = self.compile(t)?;
            self.cache(compiled.clone());
            return Ok(compiled);
        }
        if let Some(doc) =
            templates::find_in_directory(&self.config.templates_dir, namespace, name, version)?
        {
            let (compiled, _) = self.register_compiled(doc, false).await?;
            return Ok(compiled);
        }
        let versions: Vec<String> = self
            .store
            .list_templates(Some(namespace), Some(name))
            .await?
            .into_iter()
            .map(|t| t.version)
            .collect();
        if let (Some(v), false) = (version, versions.is_empty()) {
            return Err(Error::not_found(format!(
                "no template {namespace}/{name} version {v}; the registered versions are: {} \
                 (leave out the version for the highest)",
                versions.join(", ")
            ))
            .with_details(serde_json::json!({
                "namespace": namespace, "name": name, "version": v, "versions": versions
            })));
        }
        Err(Error::not_found(match version {
            Some(v) => format!(
                "no template {namespace}/{name} version {v} in the registry or under {}",
                self.config.templates_dir
            ),
            None => format!(
                "no template {namespace}/{name} in the registry or under {}",
                self.config.templates_dir
            ),
        })
        .with_details(
            serde_json::json!({ "namespace": namespace, "name": name, "version": version }),
        ))
    }

    fn check_payload(&self, what: &(impl std::fmt::Display + ?Sized), bytes: usize) -> Result<()> {
        if bytes > self.config.max_payload_bytes {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "{what} is {bytes} bytes; the limit is {} (max_payload_bytes)",
                    self.config.max_payload_bytes
                ),
            )
            .with_details(
                serde_json::json!({ "limit": self.config.max_payload_bytes, "size": bytes }),
            ));
        }
        Ok(())
    }

    pub async fn create_task(&self, mut req: CreateTask) -> Result<CreatedTask> {
        self.check_open()?;
        if let Some(parent) = req.parent.take() {
            return Box::pin(self.create_child(req, parent)).await;
        }
        if let Some(key) = &req.idempotency_key {
            check_key(key)?;
        }
        self.create_keyed(req).await
    }

    /// [`Engine::create_task`] once its key (if any) was checked: a child task's key is
    /// the scoped `child:<step_id>:<key>`, longer than a caller's key may be.
    pub(crate) async fn create_keyed(&self, req: CreateTask) -> Result<CreatedTask> {
        if let Some(key) = &req.idempotency_key {
            // A repeat returns the task the key made, whatever its context: it is the
            // same request, and the first one was already validated.
            if let Some(existing) = self
                .store
                .find_task_by_key(&req.namespace, &req.name, key)
                .await?
            {
                return Ok(existing);
            }
        }
        let task = self.prepare_task(req, self.now_ms()).await?;
        let due = task.run_at;
        let created = self.store.create_task(task).await?;
        if created.created {
            if let Some(at) = due {
                self.note_due(at);
            }
            self.changed(true);
            self.after_release().await;
        }
        Ok(created)
    }

    /// Creates many tasks in one transaction: every task of the batch is stored, or
    /// none is (the first invalid one is named by its index). Each is checked and made
    /// as [`Engine::create_task`] would, in order: a task whose idempotency key made a
    /// task before gets that task back (`created: false`) without further checks, and a
    /// later task of the batch with the key of an earlier one gets the earlier one's.
    pub async fn create_tasks(&self, reqs: Vec<CreateTask>) -> Result<Vec<CreatedTask>> {
        self.check_open()?;
        if reqs.len() > MAX_CREATE_BATCH {
            return Err(Error::invalid_argument(format!(
                "a batch may create at most {MAX_CREATE_BATCH} tasks, not {}",
                reqs.len()
            )));
        }
        let mut keys = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            if let Some(key) = &req.idempotency_key {
                check_key(key).map_err(|e| in_batch(e, i))?;
                keys.push(TaskKey {
                    namespace: req.namespace.clone(),
                    name: req.name.clone(),
                    key: key.clone(),
                });
            }
        }
        let mut existing = if keys.is_empty() {
            Vec::new()
        } else {
            self.store.find_tasks_by_keys(keys).await?
        }
        .into_iter();
        enum Slot {
            Known(CreatedTask),
            New(usize),
            SameAs(usize),
        }
        let now = self.now_ms();
        let mut slots = Vec::with_capacity(reqs.len());
        let mut first: HashMap<TaskKey, usize> = HashMap::new();
        let mut batch = Vec::with_capacity(reqs.len());
        // A request without a version takes the template's highest version, which only
        // the store knows (another process may have registered a newer one): looked up
        // once per template for the whole batch, not once per task (each lookup reads
        // every version's body and compiles the chosen one).
        let mut highest: HashMap<(String, String), Arc<Compiled>> = HashMap::new();
        for (i, req) in reqs.into_iter().enumerate() {
            if let Some(key) = &req.idempotency_key {
                if let Some(found) = existing.next().flatten() {
                    slots.push(Slot::Known(found));
                    continue;
                }
                let k = TaskKey {
                    namespace: req.namespace.clone(),
                    name: req.name.clone(),
                    key: key.clone(),
                };
                if let Some(&j) = first.get(&k) {
                    slots.push(Slot::SameAs(j));
                    continue;
                }
                first.insert(k, i);
            }
            let task = match self.batch_template(&req, &mut highest).await {
                Ok(compiled) => self.prepare_task_with(req, compiled, now),
                Err(e) => Err(e),
            }
            .map_err(|e| in_batch(e, i))?;
            slots.push(Slot::New(batch.len()));
            if let Some(at) = task.run_at {
                self.note_due(at);
            }
            batch.push(task);
        }
        let made = if batch.is_empty() {
            Vec::new()
        } else {
            self.store.create_tasks(batch).await?
        };
        if made.iter().any(|c| c.created) {
            self.changed(true);
            self.after_release().await;
        }
        let mut out: Vec<CreatedTask> = Vec::with_capacity(slots.len());
        for slot in slots {
            let task = match slot {
                Slot::Known(t) => t,
                Slot::New(k) => made
                    .get(k)
                    .cloned()
                    .ok_or_else(|| Error::internal("the store answered fewer tasks than given"))?,
                Slot::SameAs(j) => CreatedTask {
                    created: false,
                    ..out[j].clone()
                },
            };
            out.push(task);
        }
        Ok(out)
    }

    /// The template of one item of a batch: as `find_template` finds it, with the highest
    /// version of each template the batch leaves unversioned found once (`highest`).
    async fn batch_template(
        &self,
        req: &CreateTask,
        highest: &mut HashMap<(String, String), Arc<Compiled>>,
    ) -> Result<Arc<Compiled>> {
        if req.version.is_some() {
            return self
                .find_template(&req.namespace, &req.name, req.version.as_deref())
                .await;
        }
        let key = (req.namespace.clone(), req.name.clone());
        if let Some(c) = highest.get(&key) {
            return Ok(c.clone());
        }
        let compiled = self.find_template(&req.namespace, &req.name, None).await?;
        highest.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Checks a creation request against its template (found as `find_template` does):
    /// the context's size, depth and `input_schema`.
    async fn prepare_task(&self, req: CreateTask, now: i64) -> Result<NewTask> {
        let compiled = self
            .find_template(&req.namespace, &req.name, req.version.as_deref())
            .await?;
        self.prepare_task_with(req, compiled, now)
    }

    /// [`Engine::prepare_task`] with its template already found.
    fn prepare_task_with(
        &self,
        req: CreateTask,
        compiled: Arc<Compiled>,
        now: i64,
    ) -> Result<NewTask> {
        let context = req
            .context
            .map(|c| c.get().to_owned())
            .unwrap_or_else(|| "{}".into());
        self.check_payload("context", context.len())?;
        if let Some(validator) = &compiled.validator {
            // The request validator held the context to max_json_depth and sound
            // Unicode, so it reads back; a context given through the Rust API is checked
            // the same way here.
            crate::api::validate::check_payload(
                "context",
                &RawValue::from_string(context.clone())
                    .map_err(|e| field_error("context", format!("not JSON: {e}")))?,
                self.config.max_json_depth,
            )?;
            let value: Value = serde_json::from_str(&context)
                .map_err(|e| field_error("context", format!("not readable JSON: {e}")))?;
            let problems: Vec<Value> = validator
                .iter_errors(&value)
                .take(20)
                .map(|e| serde_json::json!({ "path": e.instance_path().to_string(), "message": e.to_string() }))
                .collect();
            if !problems.is_empty() {
                let first = problems[0]["message"].as_str().unwrap_or("").to_owned();
                return Err(Error::new(
                    ErrorCode::SchemaViolation,
                    format!(
                        "context does not match the input_schema of {}/{}: {first}",
                        req.namespace, req.name
                    ),
                )
                .with_details(serde_json::json!({ "errors": problems })));
            }
        }
        let (run_at, timeout_ms) =
            self.task_timing(req.run_at, req.delay_ms, req.timeout_s, now)?;
        let limits = crate::model::limits::resolve_task(&compiled.template, &context)?;
        Ok(NewTask {
            limits,
            template: compiled.template.clone(),
            context,
            idempotency_key: req.idempotency_key,
            priority: req.priority,
            now,
            run_at,
            timeout_ms,
        })
    }

    /// Validates a claim request into store parameters (handlers sorted and deduped).
    pub(crate) fn claim_params(&self, req: Claim) -> Result<ClaimParams> {
        if req.handlers.is_empty() {
            return Err(Error::invalid_argument(
                "claim needs at least one handler name",
            ));
        }
        if req.handlers.len() > MAX_CLAIM_HANDLERS {
            return Err(Error::invalid_argument(format!(
                "claim may name at most {MAX_CLAIM_HANDLERS} handlers"
            )));
        }
        if req.limit == 0 || req.limit > self.config.claim_limit_max {
            return Err(Error::invalid_argument(format!(
                "limit must be between 1 and {} (claim_limit_max)",
                self.config.claim_limit_max
            )));
        }
        for (i, h) in req.handlers.iter().enumerate() {
            let path = crate::api::validate::FieldPath::item("handlers", i);
            check_str(&path, h, 1, 256)?;
            if h.starts_with(crate::model::template::RESERVED_HANDLER_PREFIX) {
                return Err(crate::api::validate::field_error(
                    &path,
                    format!(
                        "`{h}`: handler names starting with `{}` are reserved for the engine, which runs those steps itself",
                        crate::model::template::RESERVED_HANDLER_PREFIX
                    ),
                ));
            }
        }
        check_str("worker_id", &req.worker, 0, 256)?;
        let mut handlers = req.handlers;
        handlers.sort();
        handlers.dedup();
        Ok(ClaimParams {
            handlers,
            limit: req.limit,
            worker: req.worker,
            lease_ms: req
                .lease_ms
                .unwrap_or(self.config.lease_ms)
                .clamp(1, MAX_DURATION_MS as u64),
            now: 0,
        })
    }

    /// Claims up to `limit` ready steps, waiting up to `wait_ms` for some to appear.
    /// In-process readiness wakes the waiter at once; a retry coming due wakes it at
    /// its `ready_at`; `claim_poll_ms` bounds each sleep to notice other processes.
    pub async fn claim(&self, req: Claim) -> Result<ClaimBatch> {
        self.check_open()?;
        let wait_ms = req.wait_ms.min(self.config.wait_ms_max);
        let mut params = self.claim_params(req)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let notified = self.signals.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.promote_if_due().await?;
            let now = self.now_ms();
            params.now = now;
            let batch = self.store.claim(params.clone()).await?;
            if !batch.steps.is_empty() {
                self.changed(false);
                return Ok(batch);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(batch);
            }
            let mut nap = left.min(Duration::from_millis(self.config.claim_poll_ms));
            if let Some(at) = batch.next_ready_at {
                nap = nap.min(Duration::from_millis((at - now).max(0) as u64 + 1));
            }
            if let Some(at) = self.due_hint() {
                nap = nap.min(Duration::from_millis((at - now).max(0) as u64 + 1));
            }
            self.nap(nap, notified).await?;
        }
    }

    /// One claim query, no waiting (the worker runtime's claimer waits itself).
    pub(crate) async fn claim_now(&self, mut params: ClaimParams) -> Result<ClaimBatch> {
        self.check_open()?;
        self.promote_if_due().await?;
        params.now = self.now_ms();
        let batch = self.store.claim(params).await?;
        if !batch.steps.is_empty() {
            self.changed(false);
        }
        Ok(batch)
    }

    /// Every handler name a step of a registered template names.
    pub(crate) async fn registered_handlers(&self) -> Result<Vec<String>> {
        self.check_open()?;
        self.store.registered_handlers().await
    }

    /// A short name of the store for logs: `sqlite` or `postgres`, without credentials.
    pub fn store_label(&self) -> &'static str {
        if self.config.database_url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        }
    }

    pub async fn heartbeat(&self, step_id: i64, token: i64, lease_ms: Option<u64>) -> Result<i64> {
        self.check_open()?;
        self.store
            .heartbeat(
                step_id,
                token,
                lease_ms
                    .unwrap_or(self.config.lease_ms)
                    .clamp(1, MAX_DURATION_MS as u64),
                self.now_ms(),
            )
            .await
    }

    pub async fn complete_steps(&self, items: Vec<Completion>) -> Result<Vec<ItemOutcome>> {
        Ok(self.complete_and_claim(items, None).await?.0)
    }

    /// Records results and, when `next` is given, claims the next batch in the same
    /// transaction (without waiting: a worker that gets nothing calls `claim` to wait).
    pub async fn complete_and_claim(
        &self,
        items: Vec<Completion>,
        next: Option<Claim>,
    ) -> Result<(Vec<ItemOutcome>, ClaimBatch)> {
        self.check_open()?;
        for item in &items {
            let what = ResultOf(item.step_id);
            self.check_payload(&what, item.result.get().len())?;
            // Also for callers that reach the engine without the request validator (the
            // worker sessions): no stored result may be unreadable.
            crate::api::validate::check_payload(&what, &item.result, self.config.max_json_depth)?;
        }
        if next.is_some() {
            self.promote_if_due().await?;
        }
        let now = self.now_ms();
        let params = match next {
            Some(c) => Some(ClaimParams {
                now,
                ..self.claim_params(c)?
            }),
            None => None,
        };
        if items.is_empty() && params.is_none() {
            return Ok((Vec::new(), ClaimBatch::default()));
        }
        let out = self.store.complete(items, params, now).await?;
        self.changed(true);
        self.after_release().await;
        Ok(out)
    }

    pub async fn fail_step(
        &self,
        step_id: i64,
        token: i64,
        failure: StepFailure,
    ) -> Result<FailOutcome> {
        self.check_open()?;
        let depth = crate::api::validate::value_depth(&failure.document);
        if depth > self.config.max_json_depth {
            return Err(field_error(
                "error",
                format!(
                    "nested {depth} levels deep; at most {} levels are accepted (max_json_depth)",
                    self.config.max_json_depth
                ),
            ));
        }
        let error_json = failure.document.to_string();
        self.check_payload(&format!("error of step {step_id}"), error_json.len())?;
        let out = self
            .store
            .fail(FailureReport {
                step_id,
                claim_token: token,
                message: failure.message,
                kind: failure.kind,
                retryable: failure.retryable,
                retry_after_ms: failure.retry_after_ms,
                error_json,
                now: self.now_ms(),
            })
            .await?;
        self.changed(true);
        self.after_children().await;
        Ok(out)
    }

    /// Hands a claimed step back without running it (a worker shutting down): it is
    /// claimable again after `delay_ms` and the attempt does not count.
    pub async fn release_step(
        &self,
        step_id: i64,
        token: i64,
        delay_ms: u64,
        reason: Option<String>,
    ) -> Result<i64> {
        self.check_open()?;
        let at = self
            .store
            .release(step_id, token, delay_ms, reason, self.now_ms())
            .await?;
        self.changed(true);
        Ok(at)
    }

    /// Takes back expired leases now (the background sweep does this periodically).
    pub async fn sweep(&self) -> Result<u32> {
        self.check_open()?;
        let mut total = 0;
        loop {
            let n = self
                .store
                .sweep(self.now_ms(), self.config.sweep_batch)
                .await?;
            total += n;
            if n < self.config.sweep_batch {
                break;
            }
        }
        // Waits: deadlines first (a wait that ran out fails even if it could start
        // now), then steps whose parents finished in a process that left them ready.
        total += self.expire_waits().await?;
        self.advance_waits().await?;
        // Child tasks: waits whose children are all final (a crash, or a process
        // that finalized the last child without knowing of child tasks).
        total += self.advance_children().await?;
        if total > 0 {
            self.changed(true);
        }
        // The crash backstop of delayed tasks and task timeouts: both are found by an
        // index range scan, whichever process runs the sweep.
        self.promote_due().await?;
        self.time_out_tasks().await?;
        Ok(total)
    }

    pub async fn cancel_task(&self, task_id: i64, reason: Option<String>) -> Result<TaskChange> {
        self.check_open()?;
        let out = self
            .store
            .cancel_task(task_id, reason, self.now_ms())
            .await?;
        self.changed(false);
        if out.changed {
            // Running handlers of this task in this process hear of it at once; other
            // processes' sessions at their next lease renewal.
            self.workers.task_cancelled(task_id);
        }
        // A cancelled task's child tasks are cancelled too (also when the task already
        // was: a repeat finishes a cascade a crash cut short).
        if out.state == "cancelled" {
            self.cancel_children(task_id).await?;
        }
        self.after_children().await;
        Ok(out)
    }

    pub async fn retry_step(&self, step: StepRef) -> Result<StepChange> {
        self.check_open()?;
        let out = self.store.retry_step(step, self.now_ms()).await?;
        self.changed(true);
        self.after_release().await;
        Ok(out)
    }

    pub async fn resolve_step(
        &self,
        step: StepRef,
        result: Option<Box<RawValue>>,
        reason: Option<String>,
    ) -> Result<StepChange> {
        self.check_open()?;
        if let Some(r) = &result {
            crate::api::validate::check_payload("result", r, self.config.max_json_depth)?;
        }
        let result = result.map(|r| r.get().to_owned());
        if let Some(r) = &result {
            self.check_payload("result", r.len())?;
        }
        let out = self
            .store
            .resolve_step(step, result, reason, self.now_ms())
            .await?;
        self.changed(true);
        self.after_release().await;
        Ok(out)
    }

    pub async fn get_task(&self, task_id: i64) -> Result<TaskView> {
        self.check_open()?;
        let mut view = self
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("task {task_id} does not exist")))?;
        set_levels(&mut view);
        self.add_links(&mut view).await?;
        self.add_timing(&mut view).await?;
        self.add_history(&mut view).await?;
        Ok(view)
    }

    /// Fills the task's parent (a child task) and each step's child tasks.
    async fn add_links(&self, view: &mut TaskView) -> Result<()> {
        let links = self.store.task_links(view.summary.id).await?;
        view.parent = links.parent;
        for (step_id, child) in links.children {
            if let Some(step) = view.steps.iter_mut().find(|s| s.id == step_id) {
                step.children.push(child);
            }
        }
        Ok(())
    }

    /// Fills each step's run number and its failed attempts from the task's events:
    /// `retry_step` starts a new run, and every failure event holds its error.
    async fn add_history(&self, view: &mut TaskView) -> Result<()> {
        const PAGE: u32 = 1_000;
        let index: HashMap<i64, usize> = view
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let mut since = 0;
        loop {
            let page = self
                .store
                .events(since, PAGE, Some(view.summary.id))
                .await?;
            for e in &page {
                let Some(&i) = e.step_id.as_ref().and_then(|id| index.get(id)) else {
                    continue;
                };
                let step = &mut view.steps[i];
                if e.event == "step.retry_requested" {
                    step.run += 1;
                    continue;
                }
                let Some(details) = &e.details else { continue };
                let Ok(d) = serde_json::from_str::<Value>(details.get()) else {
                    continue;
                };
                let Some(err) = d.get("error").filter(|v| v.is_object()) else {
                    continue;
                };
                let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                step.errors.push(AttemptError {
                    run: step.run,
                    attempt: e.attempt.unwrap_or(0),
                    at: e.at,
                    event: e.event,
                    message: text("message"),
                    kind: text("kind"),
                });
            }
            match page.last() {
                Some(last) if page.len() as u32 == PAGE => since = last.id,
                _ => break,
            }
        }
        Ok(())
    }

    pub async fn list_tasks(&self, mut filter: TaskFilter) -> Result<Vec<TaskSummary>> {
        self.check_open()?;
        if filter.limit == 0 || filter.limit > self.config.list_page_max {
            return Err(Error::invalid_argument(format!(
                "limit must be between 1 and {} (list_page_max)",
                self.config.list_page_max
            )));
        }
        if let Some(s) = &filter.state {
            if crate::model::state::TaskState::parse(s).is_none() {
                return Err(crate::api::ops::unknown_task_state(s));
            }
        }
        filter.limit = filter.limit.min(self.config.list_page_max);
        self.store.list_tasks(filter).await
    }

    pub async fn explain_task(&self, task_id: i64) -> Result<Explanation> {
        let view = self.get_task(task_id).await?;
        let now = self.now_ms();
        let ex = explain(&view, now);
        if !ex
            .steps
            .iter()
            .any(|s| s.state == "ready" || s.state == "running")
        {
            return Ok(ex);
        }
        let limits = self.store.step_limits(task_id, now).await?;
        Ok(explain::with_limits(ex, limits, now))
    }

    /// Health counts, throughput and rates over the last `window_ms` (default
    /// `stats_window_ms`), and the slowest steps and tasks.
    pub async fn stats(&self, window_ms: Option<u64>) -> Result<Stats> {
        self.check_open()?;
        let window = window_ms.unwrap_or(self.config.stats_window_ms).max(1) as i64;
        self.store.stats(self.now_ms(), window).await
    }

    /// Reads events after `since`, waiting up to `wait_ms` for one to appear.
    /// `types` keeps only the named events (the cursor still advances past others).
    pub async fn events(
        &self,
        since: i64,
        limit: u32,
        wait_ms: u64,
        task_id: Option<i64>,
        types: Option<&[String]>,
    ) -> Result<(Vec<Event>, i64)> {
        self.check_open()?;
        if limit == 0 || limit > self.config.event_page_max {
            return Err(Error::invalid_argument(format!(
                "limit must be between 1 and {} (event_page_max)",
                self.config.event_page_max
            )));
        }
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(wait_ms.min(self.config.wait_ms_max));
        let mut cursor = since;
        loop {
            let notified = self.signals.events.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rows = self.store.events(cursor, limit, task_id).await?;
            if let Some(last) = rows.last() {
                cursor = last.id;
            }
            let got: Vec<Event> = match types {
                Some(t) => rows
                    .into_iter()
                    .filter(|e| t.iter().any(|x| x == e.event))
                    .collect(),
                None => rows,
            };
            if !got.is_empty() {
                return Ok((got, cursor));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok((got, cursor));
            }
            let nap = left.min(Duration::from_millis(self.config.claim_poll_ms));
            self.nap(nap, notified).await?;
        }
    }

    /// One sleep of a waiting operation: until `wake` fires or `nap` passes. Fails with
    /// `closed` when the engine, or the handle the call came through (see [`CALLER`]),
    /// is closed meanwhile, so a wait in flight ends at `close()`.
    pub async fn nap(
        &self,
        nap: Duration,
        wake: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Result<()> {
        let caller = CALLER.try_with(Arc::clone).ok();
        let closed_err = || {
            Error::new(
                ErrorCode::Closed,
                "the handle was closed while this call waited",
            )
        };
        match caller {
            None => {
                let _ = tokio::time::timeout(nap, wake).await;
            }
            Some(c) => {
                let closing = c.notify.notified();
                tokio::pin!(closing);
                closing.as_mut().enable();
                if c.is_closed() {
                    return Err(closed_err());
                }
                let sleep = tokio::time::timeout(nap, wake);
                tokio::pin!(sleep);
                // Whichever comes first: the wake-up (or the nap's end), or the close.
                std::future::poll_fn(|cx| {
                    use std::task::Poll;
                    if sleep.as_mut().poll(cx).is_ready() || closing.as_mut().poll(cx).is_ready() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                if c.is_closed() {
                    return Err(closed_err());
                }
            }
        }
        self.check_open()
    }

    pub async fn last_event_id(&self) -> Result<i64> {
        self.check_open()?;
        self.store.last_event_id().await
    }

    /// Stops background work and releases the store's connections.
    pub async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.signals.ready.notify_waiters();
        self.signals.events.notify_waiters();
        self.workers.shut();
        self.store.close().await
    }
}

/// Most tasks one `create_tasks` call may create.
pub const MAX_CREATE_BATCH: usize = 10_000;

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 256 {
        return Err(Error::invalid_argument(
            "idempotency_key must be 1-256 characters",
        ));
    }
    Ok(())
}

/// An error about task `i` of a `create_tasks` batch: its message names `tasks[i]` and
/// its details carry `index`.
pub(crate) fn in_batch(mut e: Error, i: usize) -> Error {
    let path = format!("tasks[{i}]");
    if !e.message.starts_with(&path) {
        e.message = format!("{path}: {}", e.message);
    }
    let mut details = match e.details.take() {
        Some(Value::Object(m)) => m,
        Some(other) => {
            let mut m = serde_json::Map::new();
            m.insert("details".into(), other);
            m
        }
        None => serde_json::Map::new(),
    };
    details.insert("index".into(), Value::from(i));
    e.details = Some(Value::Object(details));
    e
}
