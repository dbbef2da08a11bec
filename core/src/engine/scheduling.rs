//! Scheduling (issue 19): delayed tasks come due, task timeouts fire, cron schedules
//! create their tasks. Each is found by an index range scan on the engine clock's
//! time, so it works in every process and after a crash:
//!
//! - a delayed task waits with its root steps `pending` (the claim index holds nothing
//!   of it). This process keeps the earliest due time it knows of; a claim compares the
//!   clock with it (an atomic read) and promotes due tasks before claiming. The sweep
//!   promotes whatever other processes created, and refreshes that time.
//! - a task timeout is found by the sweep: the task ends in `error`, its unfinished
//!   steps are cancelled, and the handlers still running get the stop signal
//!   (`task_timeout`).
//! - schedules are fired by each engine's schedule loop (`schedule_poll_ms`) and by
//!   `advance_clock`: a tick's task has the tick as its idempotency key, and the next
//!   tick moves only by a conditional update, so each tick makes one task.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{CreateTask, Engine};
use crate::api::validate::{check_str, field_error};
use crate::error::{Error, ErrorCode, Result};
use crate::model::schedule::{tick_key, CatchUp, CronSpec};
use crate::model::template::MAX_TIMEOUT_S;
use crate::store::{ScheduleRow, TaskTiming, Ts};
use crate::worker::StopReason;

/// Most schedules fired in one pass of the schedule loop.
const SCHEDULE_BATCH: u32 = 100;
/// Longest schedule name.
pub const SCHEDULE_NAME_MAX: usize = 128;

/// This process's scheduling state.
pub(crate) struct State {
    /// The earliest due time of a delayed task this process knows of (`i64::MAX`:
    /// none; `i64::MIN`: not known yet, so the first claim looks).
    due: AtomicI64,
    /// One promotion pass at a time in this process.
    promoting: tokio::sync::Mutex<()>,
    /// One schedule pass at a time in this process.
    firing: tokio::sync::Mutex<()>,
}

impl Default for State {
    fn default() -> State {
        State {
            due: AtomicI64::new(i64::MIN),
            promoting: tokio::sync::Mutex::new(()),
            firing: tokio::sync::Mutex::new(()),
        }
    }
}

/// A request to create a schedule.
#[derive(Debug)]
pub struct NewSchedule {
    pub name: String,
    pub namespace: String,
    pub template_name: String,
    pub version: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub context: Option<Box<RawValue>>,
    pub catch_up: CatchUp,
    pub paused: bool,
}

/// A schedule as the API shows it.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub template: TemplateRef,
    pub cron: String,
    pub timezone: String,
    pub context: Box<RawValue>,
    pub catch_up: CatchUpView,
    pub paused: bool,
    /// The next tick to fire (`null` while paused).
    pub next_fire_at: Option<Ts>,
    pub last_tick_at: Option<Ts>,
    pub last_task_id: Option<i64>,
    pub created_at: Ts,
    pub updated_at: Ts,
}

#[derive(Debug, Serialize)]
pub struct TemplateRef {
    pub namespace: String,
    pub name: String,
    pub version: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CatchUpView {
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

impl ScheduleView {
    fn from_row(r: ScheduleRow) -> Result<ScheduleView> {
        let context = RawValue::from_string(r.context)
            .map_err(|e| Error::internal(format!("stored schedule context is invalid: {e}")))?;
        Ok(ScheduleView {
            template: TemplateRef {
                namespace: r.namespace,
                name: r.template_name,
                version: r.version,
            },
            cron: r.cron,
            timezone: r.timezone,
            context,
            catch_up: CatchUpView {
                limit: (r.catch_up == "all").then_some(r.catch_up_limit),
                policy: r.catch_up,
            },
            paused: r.paused,
            next_fire_at: (!r.paused).then_some(Ts(r.next_fire_at)),
            last_tick_at: r.last_tick_at.map(Ts),
            last_task_id: r.last_task_id,
            created_at: Ts(r.created_at),
            updated_at: Ts(r.updated_at),
            name: r.name,
        })
    }
}

fn no_schedule(name: &str) -> Error {
    Error::not_found(format!("no schedule named `{name}`")).with_details(json!({ "name": name }))
}

impl Engine {
    /// A delayed task due at `at` was created in this process.
    pub(crate) fn note_due(&self, at: i64) {
        self.scheduling.due.fetch_min(at, Ordering::AcqRel);
    }

    /// The earliest due time of a delayed task this process knows of.
    pub(crate) fn due_hint(&self) -> Option<i64> {
        match self.scheduling.due.load(Ordering::Acquire) {
            i64::MAX | i64::MIN => None,
            at => Some(at),
        }
    }

    /// Promotes due delayed tasks when one this process knows of is due: an atomic
    /// read when none is, so the claim path pays nothing for delayed tasks.
    pub(crate) async fn promote_if_due(&self) -> Result<()> {
        if self.now_ms() >= self.scheduling.due.load(Ordering::Acquire) {
            self.promote_due().await?;
        }
        Ok(())
    }

    /// Promotes every delayed task due now (root steps -> `ready`, `step.ready`
    /// events, waiters woken) and refreshes the earliest due time; returns how many.
    pub async fn promote_due(&self) -> Result<u32> {
        self.check_open()?;
        let _one = self.scheduling.promoting.lock().await;
        let seen = self.scheduling.due.load(Ordering::Acquire);
        let now = self.now_ms();
        let batch = self.config.sweep_batch;
        let mut total = 0;
        loop {
            let n = self.store.promote_due(now, batch).await?;
            total += n;
            if n < batch {
                break;
            }
        }
        let next = self.store.next_due().await?.unwrap_or(i64::MAX);
        // A creation noted meanwhile only lowered the value: keep the lower one.
        if self
            .scheduling
            .due
            .compare_exchange(seen, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.scheduling.due.fetch_min(next, Ordering::AcqRel);
        }
        if total > 0 {
            tracing::debug!(count = total, "delayed tasks came due");
            self.changed(true);
        }
        Ok(total)
    }

    /// Ends every task whose timeout passed in `error` and stops its running handlers
    /// in this process (other processes' hear it at their next lease renewal).
    pub async fn time_out_tasks(&self) -> Result<u32> {
        self.check_open()?;
        let now = self.now_ms();
        let batch = self.config.sweep_batch;
        let mut total = 0;
        loop {
            let ids = self.store.time_out_tasks(now, batch).await?;
            for &id in &ids {
                self.workers.task_stopped(id, StopReason::TaskTimeout);
            }
            total += ids.len() as u32;
            if (ids.len() as u32) < batch {
                break;
            }
        }
        if total > 0 {
            tracing::info!(count = total, "tasks ran past their timeout");
            self.changed(false);
        }
        Ok(total)
    }

    /// Everything a moved clock may have made due: delayed tasks, task timeouts and
    /// schedule ticks (what `advance_clock` runs before it answers).
    pub async fn run_due(&self) -> Result<u32> {
        self.promote_due().await?;
        self.time_out_tasks().await?;
        self.run_schedules().await
    }

    /// The delay and the timeout of a creation: the due time when it is in the future,
    /// and the timeout in milliseconds.
    pub(crate) fn task_timing(
        &self,
        run_at: Option<i64>,
        delay_ms: Option<u64>,
        timeout_s: Option<u64>,
        now: i64,
    ) -> Result<(Option<i64>, Option<i64>)> {
        let due = match (run_at, delay_ms) {
            (Some(_), Some(_)) => {
                return Err(
                    Error::invalid_argument("give `run_at` or `delay_ms`, not both")
                        .with_details(json!({ "fields": ["run_at", "delay_ms"] })),
                )
            }
            (Some(at), None) => Some(at),
            (None, Some(ms)) => Some(now.saturating_add(ms.min(i64::MAX as u64) as i64)),
            (None, None) => None,
        };
        let timeout_ms = match timeout_s {
            Some(s) if s == 0 || s > MAX_TIMEOUT_S => {
                return Err(field_error(
                    "timeout_s",
                    format!("expected an integer between 1 and {MAX_TIMEOUT_S}, got {s}"),
                ))
            }
            Some(s) => Some(s as i64 * 1000),
            None => None,
        };
        Ok((due.filter(|&at| at > now), timeout_ms))
    }

    /// Fills a task view's delay and timeout.
    pub(crate) async fn add_timing(&self, view: &mut crate::store::TaskView) -> Result<()> {
        view.timing = self
            .store
            .task_timing(view.summary.id)
            .await?
            .unwrap_or_else(TaskTiming::default);
        Ok(())
    }

    // --- Schedules ---

    pub async fn create_schedule(&self, req: NewSchedule) -> Result<ScheduleView> {
        self.check_open()?;
        check_str("name", &req.name, 1, SCHEDULE_NAME_MAX)?;
        let spec = CronSpec::parse(&req.cron, &req.timezone)?;
        let context = req
            .context
            .map(|c| c.get().to_owned())
            .unwrap_or_else(|| "{}".into());
        // The template must exist and take this context, as each tick's task will.
        let now = self.now_ms();
        let probe = self
            .prepare_task(
                CreateTask {
                    namespace: req.namespace.clone(),
                    name: req.template_name.clone(),
                    version: req.version.clone(),
                    context: Some(
                        RawValue::from_string(context.clone())
                            .map_err(|e| field_error("context", format!("not JSON: {e}")))?,
                    ),
                    idempotency_key: None,
                    priority: 0,
                    run_at: None,
                    delay_ms: None,
                    timeout_s: None,
                    parent: None,
                },
                now,
            )
            .await?;
        drop(probe);
        let row = ScheduleRow {
            name: req.name,
            namespace: req.namespace,
            template_name: req.template_name,
            version: req.version,
            cron: req.cron,
            timezone: req.timezone,
            context,
            catch_up: req.catch_up.policy().into(),
            catch_up_limit: i64::from(req.catch_up.limit()),
            paused: req.paused,
            next_fire_at: spec.next_after(now)?,
            last_tick_at: None,
            last_task_id: None,
            created_at: now,
            updated_at: now,
        };
        let name = row.name.clone();
        self.store.insert_schedule(row).await?;
        self.get_schedule(&name).await
    }

    pub async fn list_schedules(&self) -> Result<Vec<ScheduleView>> {
        self.check_open()?;
        self.store
            .list_schedules()
            .await?
            .into_iter()
            .map(ScheduleView::from_row)
            .collect()
    }

    pub async fn get_schedule(&self, name: &str) -> Result<ScheduleView> {
        self.check_open()?;
        let row = self
            .store
            .get_schedule(name.to_owned())
            .await?
            .ok_or_else(|| no_schedule(name))?;
        ScheduleView::from_row(row)
    }

    /// Pauses (`paused`) or resumes a schedule. A resumed schedule fires from its next
    /// tick after now: ticks that passed while it was paused never fire.
    pub async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<ScheduleView> {
        self.check_open()?;
        let row = self
            .store
            .get_schedule(name.to_owned())
            .await?
            .ok_or_else(|| no_schedule(name))?;
        if row.paused == paused {
            return ScheduleView::from_row(row);
        }
        let now = self.now_ms();
        let next = if paused {
            None
        } else {
            Some(CronSpec::parse(&row.cron, &row.timezone)?.next_after(now)?)
        };
        let row = self
            .store
            .set_schedule_paused(name.to_owned(), paused, next, now)
            .await?
            .ok_or_else(|| no_schedule(name))?;
        ScheduleView::from_row(row)
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        self.check_open()?;
        if self.store.delete_schedule(name.to_owned()).await? {
            Ok(())
        } else {
            Err(no_schedule(name))
        }
    }

    /// Fires every schedule whose next tick is due on the engine clock; returns how
    /// many tasks were created.
    pub async fn run_schedules(&self) -> Result<u32> {
        self.check_open()?;
        let _one = self.scheduling.firing.lock().await;
        let mut created = 0;
        loop {
            let now = self.now_ms();
            let due = self.store.due_schedules(now, SCHEDULE_BATCH).await?;
            let n = due.len() as u32;
            for row in due {
                created += self.fire(row, now).await?;
            }
            if n < SCHEDULE_BATCH {
                return Ok(created);
            }
        }
    }

    /// Fires one due schedule: creates the tasks of its due ticks (idempotent: each
    /// tick's key), then moves its next tick if no other process did.
    async fn fire(&self, row: ScheduleRow, now: i64) -> Result<u32> {
        let spec = match CronSpec::parse(&row.cron, &row.timezone) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "schedule cannot be read; pausing it");
                self.store
                    .set_schedule_paused(row.name.clone(), true, None, now)
                    .await?;
                return Ok(0);
            }
        };
        let limit = (row.catch_up == "all").then_some(row.catch_up_limit.clamp(1, 1_000) as u32);
        let catch_up = CatchUp::parse(&row.catch_up, limit).unwrap_or(CatchUp::Skip);
        let (ticks, next) = spec.due_ticks(row.next_fire_at, now, catch_up)?;
        let mut reqs = Vec::with_capacity(ticks.len());
        for &tick in &ticks {
            reqs.push(CreateTask {
                namespace: row.namespace.clone(),
                name: row.template_name.clone(),
                version: row.version.clone(),
                context: Some(RawValue::from_string(row.context.clone()).map_err(|e| {
                    Error::internal(format!("stored schedule context is invalid: {e}"))
                })?),
                idempotency_key: Some(tick_key(&row.name, tick)),
                priority: 0,
                run_at: None,
                delay_ms: None,
                timeout_s: None,
                parent: None,
            });
        }
        let (made, last_task) = match self.create_tasks(reqs).await {
            Ok(tasks) => (
                tasks.iter().filter(|t| t.created).count() as u32,
                tasks.last().map(|t| t.task_id),
            ),
            // The store is unreachable: try again at the next pass, nothing skipped.
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::Unavailable | ErrorCode::Database | ErrorCode::Closed
                ) =>
            {
                return Err(e)
            }
            // The template is gone or no longer takes the context: the tick is skipped
            // (and said so), so one broken schedule does not stop the others.
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "schedule tick skipped: its task could not be created");
                (0, None)
            }
        };
        let advanced = self
            .store
            .advance_schedule(
                row.name.clone(),
                row.next_fire_at,
                next,
                ticks.last().copied(),
                last_task,
                now,
            )
            .await?;
        if made > 0 {
            tracing::debug!(schedule = %row.name, tasks = made, advanced, "schedule fired");
        }
        Ok(made)
    }

    /// Fires due schedules every `schedule_poll_ms` until the engine closes.
    pub async fn schedule_forever(self: Arc<Engine>) {
        let every = Duration::from_millis(self.config.schedule_poll_ms);
        loop {
            tokio::time::sleep(every).await;
            if self.is_closed() {
                return;
            }
            if let Err(e) = self.run_schedules().await {
                if e.code != ErrorCode::Closed {
                    tracing::warn!(error = %e, "firing schedules failed; trying again");
                }
            }
        }
    }
}
