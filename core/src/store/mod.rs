//! Storage: the [`Store`] trait every backend implements, and the records that cross it.
//!
//! A store applies one engine operation in one transaction: the state changes, the
//! parent counters, the task counters and the transition rows (the audit trail and the
//! event log) always commit together. Policy that is not SQL (retry decisions, event
//! names) comes from [`crate::model`], so every backend shares it.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::Result;
use crate::model::template::Template;

pub mod children;
pub mod postgres;
pub mod shared;
pub mod signals;
pub mod sqlite;

/// A boxed future, so the trait stays object-safe (`Arc<dyn Store>`).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What wakes this process's waiters: claims waiting for work, readers waiting for
/// events. Stores that see other processes' changes (PostgreSQL's LISTEN) wake them too.
#[derive(Default)]
pub struct Signals {
    pub ready: tokio::sync::Notify,
    pub events: tokio::sync::Notify,
}

impl Signals {
    pub fn wake(&self) {
        self.ready.notify_waiters();
        self.events.notify_waiters();
    }
}

/// Milliseconds since the epoch, rendered as RFC 3339 in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts(pub i64);

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::rfc3339(self.0))
    }
}

/// One limit of a step and its use now: a concurrency limit (`running` of `max` run
/// now), or a rate limit (`running` starts in the last `per_ms` of `max`, the window
/// freeing at `next_free_at` when full).
#[derive(Debug, Clone, Serialize)]
pub struct LimitState {
    pub key: String,
    pub running: i64,
    pub max: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_free_at: Option<Ts>,
}

/// The limits of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepLimitState {
    pub step_name: String,
    pub concurrency: Option<LimitState>,
    pub rate: Option<LimitState>,
}

/// A task to create, already validated by the engine.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub template: std::sync::Arc<Template>,
    pub context: String,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    pub now: i64,
    /// A delayed task's due time (later than `now`): its root steps stay `pending`
    /// until the engine promotes the task at that time.
    pub run_at: Option<i64>,
    /// The task timeout: the task ends in `error` this long after it is due.
    pub timeout_ms: Option<i64>,
    /// The concurrency and rate limits of each step, in template order; `None` when no
    /// step has one (see `model::limits::resolve_task`).
    pub limits: Option<Vec<crate::model::limits::StepLimits>>,
}

impl NewTask {
    /// When the task's steps may first run: its `run_at`, or its creation.
    pub fn due(&self) -> i64 {
        self.run_at.unwrap_or(self.now)
    }

    /// When the task times out, if it has a timeout.
    pub fn deadline_at(&self) -> Option<i64> {
        self.timeout_ms.map(|t| self.due().saturating_add(t))
    }
}

/// An idempotency key with the template it is scoped to: namespace, name, key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreatedTask {
    pub task_id: i64,
    /// False when an existing task with the same idempotency key was returned.
    pub created: bool,
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct ClaimParams {
    pub handlers: Vec<String>,
    pub limit: u32,
    pub worker: String,
    pub lease_ms: u64,
    pub now: i64,
}

/// One claimed step with everything its handler needs.
#[derive(Debug, Serialize)]
pub struct ClaimedStep {
    pub step_id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub handler: String,
    pub claim_token: String,
    pub attempt: i64,
    pub max_attempts: i64,
    pub lease_expires_at: Ts,
    pub timeout_ms: i64,
    pub context: Box<RawValue>,
    pub config: Option<Box<RawValue>>,
    /// Results of the parent steps by step name.
    pub results: std::collections::BTreeMap<String, Box<RawValue>>,
}

#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub steps: Vec<ClaimedStep>,
    /// When claiming found nothing: the earliest future `ready_at` among these handlers.
    pub next_ready_at: Option<i64>,
}

/// A result reported for a claimed step.
#[derive(Debug)]
pub struct Completion {
    pub step_id: i64,
    pub claim_token: i64,
    pub result: Box<RawValue>,
}

/// The outcome of one item of a batch operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemOutcome {
    pub step_id: i64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::Error>,
}

/// A failed attempt as reported by a handler.
#[derive(Debug, Clone)]
pub struct FailureReport {
    pub step_id: i64,
    pub claim_token: i64,
    pub message: String,
    pub kind: String,
    pub retryable: bool,
    pub retry_after_ms: Option<u64>,
    /// The stored error document (message, kind, retryable, details, ...), as JSON.
    pub error_json: String,
    pub now: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailOutcome {
    pub step_id: i64,
    /// `ready` (a retry is scheduled) or `error`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Ts>,
    pub attempt: i64,
    pub task_state: String,
}

/// Names one step: by id, or by task and step name.
#[derive(Debug, Clone)]
pub enum StepRef {
    Id(i64),
    Named { task_id: i64, step_name: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct StepChange {
    pub step_id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub state: String,
    pub task_state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskChange {
    pub task_id: i64,
    pub state: String,
    /// False when the task already was in that state.
    pub changed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Return tasks with ids below this (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// A task as listed.
#[derive(Debug, Serialize)]
pub struct TaskSummary {
    pub id: i64,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub priority: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub steps_total: i64,
    pub steps_done: i64,
    pub steps_error: i64,
    pub created_at: Ts,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    pub duration_ms: Option<i64>,
}

/// A step as shown by `get_task`.
#[derive(Debug, Serialize)]
pub struct StepView {
    pub id: i64,
    pub name: String,
    pub handler: String,
    pub state: String,
    pub depends_on: Vec<String>,
    /// Dependency level: 0 for a step without parents, else 1 + its deepest parent's.
    pub level: i64,
    pub pending_parents: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    /// The run: 1, plus one per operator `retry_step` (each starts a fresh run).
    pub run: i64,
    /// Attempts of the current run, and the policy's attempts per run.
    pub run_attempts: i64,
    pub run_max_attempts: i64,
    pub priority: i64,
    pub config: Option<Box<RawValue>>,
    pub result: Option<Box<RawValue>>,
    pub error: Option<Box<RawValue>>,
    /// Every failed attempt, oldest first (filled by the engine from the event log).
    pub errors: Vec<AttemptError>,
    pub worker: Option<String>,
    pub ready_at: Option<Ts>,
    pub lease_expires_at: Option<Ts>,
    /// A `waiting` step's deadline: it fails with kind `signal_timeout` (or
    /// `children_timeout`) then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<Ts>,
    pub first_started_at: Option<Ts>,
    pub started_at: Option<Ts>,
    pub finished_at: Option<Ts>,
    /// The ids of the child tasks this step started, in start order (filled by the
    /// engine; absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<i64>,
    /// From the first claim to the finish.
    pub duration_ms: Option<i64>,
    #[serde(skip)]
    pub ready_at_ms: Option<i64>,
    #[serde(skip)]
    pub lease_expires_at_ms: Option<i64>,
}

/// One failed attempt of a step, from its event.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptError {
    pub run: i64,
    pub attempt: i64,
    pub at: Ts,
    /// The event: `step.failed`, `step.retry_scheduled`, `step.lease_expired`, `step.timed_out`.
    pub event: &'static str,
    pub message: String,
    pub kind: String,
}

#[derive(Debug, Serialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub summary: TaskSummary,
    /// The delay and the timeout (filled by the engine).
    #[serde(flatten)]
    pub timing: TaskTiming,
    pub context: Box<RawValue>,
    /// When this task is a child task: the step that started it (filled by the engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<children::ParentRef>,
    pub steps: Vec<StepView>,
}

/// A task's delay and timeout, as `get_task` shows them (absent when not set).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskTiming {
    /// A delayed task's due time (kept after it came due).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Ts>,
    /// True while a delayed task waits for its due time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<i64>,
    /// When the task times out (cleared when the timeout fired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Ts>,
}

/// A cron schedule as stored (see `crate::model::schedule`).
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub name: String,
    pub namespace: String,
    pub template_name: String,
    /// `None`: the highest registered version at each tick.
    pub version: Option<String>,
    pub cron: String,
    pub timezone: String,
    /// JSON text.
    pub context: String,
    /// `skip` or `all`.
    pub catch_up: String,
    pub catch_up_limit: i64,
    pub paused: bool,
    /// The next tick not yet fired.
    pub next_fire_at: i64,
    pub last_tick_at: Option<i64>,
    pub last_task_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One row of the transitions table, as an event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub event: &'static str,
    pub task_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub at: Ts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowStep {
    pub task_id: i64,
    pub step_id: i64,
    pub step_name: String,
    pub handler: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowTask {
    pub task_id: i64,
    pub namespace: String,
    pub name: String,
    pub duration_ms: i64,
}

/// What finished during the stats window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    pub window_ms: i64,
    pub steps_completed: i64,
    pub steps_failed: i64,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub tasks_cancelled: i64,
    pub steps_per_s: f64,
    /// Completed tasks over all tasks that finished in the window (none finished: null).
    pub completion_rate: Option<f64>,
    /// Failed tasks over all tasks that finished in the window.
    pub error_rate: Option<f64>,
}

impl Throughput {
    /// Fills the derived rates from the counts.
    pub fn finish(mut self) -> Throughput {
        let finished = self.tasks_completed + self.tasks_failed + self.tasks_cancelled;
        if finished > 0 {
            self.completion_rate = Some(self.tasks_completed as f64 / finished as f64);
            self.error_rate = Some(self.tasks_failed as f64 / finished as f64);
        }
        if self.window_ms > 0 {
            self.steps_per_s = self.steps_completed as f64 * 1000.0 / self.window_ms as f64;
        }
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Tasks by state (system health).
    pub tasks: std::collections::BTreeMap<String, i64>,
    /// Steps by state.
    pub steps: std::collections::BTreeMap<String, i64>,
    /// Age of the oldest step that is claimable now (0 when none waits).
    pub oldest_ready_age_ms: i64,
    /// What finished in the last `window_ms`.
    pub throughput: Throughput,
    /// The ten slowest completed steps (first claim to finish).
    pub slowest_steps: Vec<SlowStep>,
    /// The ten slowest completed tasks (first claim to finish).
    pub slowest_tasks: Vec<SlowTask>,
    pub last_event_id: i64,
}

/// One registered template, as `list_templates` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TemplateSummary {
    pub namespace: String,
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub steps: usize,
    pub registered_at: Ts,
}

/// Operations every storage backend provides, each one transaction.
pub trait Store: Send + Sync {
    /// Applies pending migrations; returns how many were applied.
    fn migrate(&self) -> BoxFut<'_, u32>;
    /// Stores a template. Returns false when an identical one was already stored.
    /// A different body under the same key is a `conflict` unless `replace`.
    fn put_template<'a>(&'a self, t: &'a Template, replace: bool, now: i64) -> BoxFut<'a, bool>;
    /// One version, or the highest version when `version` is `None`.
    fn get_template<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Option<Template>>;
    /// Every registered template (of this namespace and name, when given), sorted by
    /// namespace, name and version (versions compared as versions).
    fn list_templates<'a>(
        &'a self,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> BoxFut<'a, Vec<TemplateSummary>>;
    /// Every handler name that a step of a registered template names, sorted.
    fn registered_handlers(&self) -> BoxFut<'_, Vec<String>>;
    /// The task created earlier with this idempotency key, if any.
    fn find_task_by_key<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Option<CreatedTask>>;
    /// Creates a task; an existing task with the same idempotency key is returned instead.
    fn create_task(&self, task: NewTask) -> BoxFut<'_, CreatedTask>;
    /// The tasks created earlier with these idempotency keys, one answer per key in order
    /// (one read for a whole `create_tasks` batch).
    fn find_tasks_by_keys(&self, keys: Vec<TaskKey>) -> BoxFut<'_, Vec<Option<CreatedTask>>>;
    /// Creates many tasks in one transaction, one answer per task in order; each is
    /// created as [`Store::create_task`] would (an existing task with the same key is
    /// returned instead). The engine passes no two tasks with the same key.
    fn create_tasks(&self, tasks: Vec<NewTask>) -> BoxFut<'_, Vec<CreatedTask>>;
    fn claim(&self, params: ClaimParams) -> BoxFut<'_, ClaimBatch>;
    /// Renews a lease; returns the new expiry.
    fn heartbeat(&self, step_id: i64, token: i64, lease_ms: u64, now: i64) -> BoxFut<'_, i64>;
    /// Records results; when `claim` is given, claims the next batch in the same
    /// transaction (a worker's round trip and commit saved per batch).
    fn complete(
        &self,
        items: Vec<Completion>,
        claim: Option<ClaimParams>,
        now: i64,
    ) -> BoxFut<'_, (Vec<ItemOutcome>, ClaimBatch)>;
    fn fail(&self, report: FailureReport) -> BoxFut<'_, FailOutcome>;
    /// Hands a claimed step back unrun: `ready` again after `delay_ms`, the attempt not
    /// counted. Returns the new `ready_at`.
    fn release(
        &self,
        step_id: i64,
        token: i64,
        delay_ms: u64,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, i64>;
    /// Takes back up to `limit` expired leases as failed attempts; returns how many.
    fn sweep(&self, now: i64, limit: u32) -> BoxFut<'_, u32>;
    fn cancel_task(&self, task_id: i64, reason: Option<String>, now: i64)
        -> BoxFut<'_, TaskChange>;
    fn retry_step(&self, step: StepRef, now: i64) -> BoxFut<'_, StepChange>;
    fn resolve_step(
        &self,
        step: StepRef,
        result: Option<String>,
        reason: Option<String>,
        now: i64,
    ) -> BoxFut<'_, StepChange>;
    fn get_task(&self, task_id: i64) -> BoxFut<'_, Option<TaskView>>;
    fn list_tasks(&self, filter: TaskFilter) -> BoxFut<'_, Vec<TaskSummary>>;
    /// Counts, throughput and rates over `[now - window_ms, now]`, slowest work.
    fn stats(&self, now: i64, window_ms: i64) -> BoxFut<'_, Stats>;
    fn events(&self, since: i64, limit: u32, task_id: Option<i64>) -> BoxFut<'_, Vec<Event>>;
    fn last_event_id(&self) -> BoxFut<'_, i64>;
    /// The earliest `ready_at` of a `ready` step without limits (of these handlers when
    /// given); limited steps are [`Store::limited_next_ready_at`]'s.
    fn next_ready_at(&self, handlers: Option<Vec<String>>) -> BoxFut<'_, Option<i64>>;
    /// When a ready step with a concurrency or rate limit (of these handlers when given)
    /// can start next: a future `ready_at`, when a rate window frees, or a past time for
    /// one the limits let start now. Steps held back by a concurrency limit do not count.
    fn limited_next_ready_at(
        &self,
        handlers: Option<Vec<String>>,
        now: i64,
    ) -> BoxFut<'_, Option<i64>>;
    /// The limits of task `task_id`'s limited steps and how much of each is used now.
    fn step_limits(&self, task_id: i64, now: i64) -> BoxFut<'_, Vec<StepLimitState>>;
    /// Releases connections; later calls fail.
    fn close(&self) -> BoxFut<'_, ()>;

    // Scheduling (issue 19): delayed tasks, task timeouts, cron schedules.

    /// Promotes up to `limit` delayed tasks due at `now` (their root steps become
    /// `ready`, with `step.ready` events); returns how many tasks.
    fn promote_due(&self, now: i64, limit: u32) -> BoxFut<'_, u32>;
    /// The earliest due time of a delayed task not yet promoted.
    fn next_due(&self) -> BoxFut<'_, Option<i64>>;
    /// Ends up to `limit` unfinished tasks whose deadline passed by `now` in `error`
    /// (their unfinished steps `cancelled`); returns their ids.
    fn time_out_tasks(&self, now: i64, limit: u32) -> BoxFut<'_, Vec<i64>>;
    /// The delay and the timeout of a task (`None`: no such task).
    fn task_timing(&self, task_id: i64) -> BoxFut<'_, Option<TaskTiming>>;
    /// Stores a new schedule; a schedule of the same name is a `conflict`.
    fn insert_schedule(&self, s: ScheduleRow) -> BoxFut<'_, ()>;
    /// Every schedule, by name.
    fn list_schedules(&self) -> BoxFut<'_, Vec<ScheduleRow>>;
    fn get_schedule(&self, name: String) -> BoxFut<'_, Option<ScheduleRow>>;
    /// Pauses or resumes a schedule (`next_fire_at`, when given, replaces the next
    /// tick); returns it as it is now, or `None` when there is no such schedule.
    fn set_schedule_paused(
        &self,
        name: String,
        paused: bool,
        next_fire_at: Option<i64>,
        now: i64,
    ) -> BoxFut<'_, Option<ScheduleRow>>;
    /// Deletes a schedule; false when there was none.
    fn delete_schedule(&self, name: String) -> BoxFut<'_, bool>;
    /// Up to `limit` unpaused schedules whose next tick is at or before `now`.
    fn due_schedules(&self, now: i64, limit: u32) -> BoxFut<'_, Vec<ScheduleRow>>;
    /// Moves a schedule's next tick from `from` to `to` if it still is `from` (and the
    /// schedule is not paused): the one process whose update matches has fired it.
    fn advance_schedule(
        &self,
        name: String,
        from: i64,
        to: i64,
        last_tick: Option<i64>,
        last_task: Option<i64>,
        now: i64,
    ) -> BoxFut<'_, bool>;
    // Signals (steps with `wait_for`, handler `tasker.signal`).

    /// Moves up to `limit` ready `tasker.signal` steps to `waiting`, each with its
    /// deadline (now plus the step's timeout); a step whose signal was sent earlier takes
    /// it and completes in the same transaction. Returns how many steps it moved.
    fn begin_waits(&self, now: i64, limit: u32) -> BoxFut<'_, u32>;
    /// Records signal `name` for a task and completes every step waiting for it with
    /// `payload` (JSON text) as its result; steps that wait for it later take it then.
    /// `not_found` for an unknown task or a name no step of the task waits for,
    /// `invalid_state` for a complete or cancelled task, `conflict` when the name was
    /// already sent; nothing changes then.
    fn send_signal<'a>(
        &'a self,
        task_id: i64,
        name: &'a str,
        payload: &'a str,
        now: i64,
    ) -> BoxFut<'a, signals::SignalSent>;
    /// Fails up to `limit` waiting steps whose deadline passed (kind `signal_timeout`,
    /// permanent). Returns how many.
    fn expire_waits(&self, now: i64, limit: u32) -> BoxFut<'_, u32>;

    // Dynamic fan-out (steps with `fan_out`, handler `tasker.fan_out`).

    /// Takes up to `limit` ready fan-out steps: one not yet expanded in this run gets one
    /// ready instance per item (its parents from then on; the step goes back to
    /// `pending`), completes with `[]` for no items, or fails permanently (missing, not
    /// a list, too many); one whose instances are done completes with their results in
    /// item order. An expansion that would make the task more than `max_steps` steps
    /// fails like a list over `max_items`. Returns how many steps it took.
    fn advance_fan_outs(&self, now: i64, limit: u32, max_steps: i64) -> BoxFut<'_, u32>;

    // Child tasks (`create_task` with `parent`; a step waiting for its children).

    /// The task and name of step `step_id` when it is `running` under `token`; else
    /// `lease_lost` (or `not_found`), as for any stale token.
    fn held_step(&self, step_id: i64, token: i64) -> BoxFut<'_, (i64, String)>;
    /// Links task `child` to step `step_id` (still held by `token`) under `key`; a link
    /// of that key made before stands. Returns the linked child task's id.
    fn link_child<'a>(
        &'a self,
        step_id: i64,
        token: i64,
        child: i64,
        key: &'a str,
        now: i64,
    ) -> BoxFut<'a, i64>;
    /// Moves a step held by `token` from `running` to `waiting` until `wait_until`
    /// (lease released; event `step.waiting`). Says how many children it has and how
    /// many are unfinished.
    fn wait_for_children(
        &self,
        step_id: i64,
        token: i64,
        wait_until: i64,
        now: i64,
    ) -> BoxFut<'_, children::WaitStarted>;
    /// Finishes up to `limit` steps waiting for child tasks that are all final
    /// (complete with their results, or failed with kind `child_failed`). Returns how
    /// many.
    fn advance_children(&self, now: i64, limit: u32, max_result_bytes: usize) -> BoxFut<'_, u32>;
    /// A task's parent (when it is a child task) and its steps' children.
    fn task_links(&self, task_id: i64) -> BoxFut<'_, children::TaskLinks>;
    /// The child tasks of a task's steps that are not final yet.
    fn unfinished_children(&self, task_id: i64) -> BoxFut<'_, Vec<i64>>;
}
