//! A worker for Rust programs, built on the same JSON operations as every binding:
//! claim a batch for the registered handlers, run the handlers on up to `concurrency`
//! threads while a heartbeat keeps the leases of unfinished steps alive, report every
//! success in one `complete_steps` call (which also claims the next batch) and each
//! failure with `fail_step`. A panicking handler is a retryable failure.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::Tasker;
use crate::error::Result;

/// What a handler receives.
#[derive(Debug, Clone, Deserialize)]
pub struct StepInput {
    pub step_id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub handler: String,
    pub claim_token: String,
    /// 1 on the first attempt.
    pub attempt: i64,
    pub max_attempts: i64,
    pub context: Value,
    #[serde(default)]
    pub config: Value,
    /// Parent results by step name.
    #[serde(default)]
    pub results: Map<String, Value>,
}

/// A handler's failure.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerError {
    /// Retried per the step's policy, or after `retry_after_ms` when given.
    Retryable {
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// Never retried: the step goes to `error`.
    Permanent { message: String },
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            message: message.into(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            HandlerError::Retryable {
                message,
                retry_after_ms,
            } => {
                json!({ "message": message, "kind": "retryable", "retryable": true, "retry_after_ms": retry_after_ms })
            }
            HandlerError::Permanent { message } => {
                json!({ "message": message, "kind": "permanent", "retryable": false })
            }
        }
    }
}

pub type Handler =
    Box<dyn Fn(&StepInput) -> std::result::Result<Value, HandlerError> + Send + Sync>;

/// Counts of what a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub completed: u64,
    pub failed: u64,
    /// Reports refused with `lease_lost` (another worker had taken the step back).
    pub lost: u64,
    /// Calls refused with `unavailable` (server restarting, pool exhausted) and tried
    /// again after a pause.
    pub unavailable: u64,
}

pub struct Worker {
    tasker: Tasker,
    id: String,
    handlers: HashMap<String, Handler>,
    batch: u32,
    idle_wait_ms: u64,
    concurrency: usize,
    patience: Duration,
}

type Outcome = std::result::Result<Value, HandlerError>;

#[derive(Deserialize)]
struct CompletePage {
    results: Vec<Value>,
    #[serde(default)]
    steps: Vec<StepInput>,
}

#[derive(Deserialize)]
struct ClaimPage {
    steps: Vec<StepInput>,
    #[serde(default)]
    next_ready_at: Option<String>,
}

impl Worker {
    pub fn new(tasker: &Tasker, id: impl Into<String>) -> Worker {
        Worker {
            tasker: tasker.clone(),
            id: id.into(),
            handlers: HashMap::new(),
            batch: 64,
            idle_wait_ms: 50,
            concurrency: 1,
            patience: Duration::from_secs(60),
        }
    }

    /// Registers the handler for steps whose template names `name`.
    pub fn handle<F>(mut self, name: &str, f: F) -> Worker
    where
        F: Fn(&StepInput) -> std::result::Result<Value, HandlerError> + Send + Sync + 'static,
    {
        self.handlers.insert(name.to_owned(), Box::new(f));
        self
    }

    /// Steps claimed per round trip.
    pub fn batch(mut self, n: u32) -> Worker {
        self.batch = n.max(1);
        self
    }

    /// How many handlers run at once (threads); the batch is raised to at least this.
    pub fn concurrency(mut self, n: usize) -> Worker {
        self.concurrency = n.max(1);
        self.batch = self.batch.max(self.concurrency as u32);
        self
    }

    /// How long a claim waits for work before the worker considers itself idle.
    pub fn idle_wait_ms(mut self, ms: u64) -> Worker {
        self.idle_wait_ms = ms;
        self
    }

    /// How long the worker rides out `unavailable` (a database restarting, a failover,
    /// an exhausted pool): refused calls are tried again, pausing 50 ms and doubling up
    /// to 2 s, until one succeeds or `patience` has passed since the first refusal in a
    /// row; then the run returns the error. Zero returns the first refusal at once.
    pub fn patience(mut self, patience: Duration) -> Worker {
        self.patience = patience;
        self
    }

    /// `tasker.call`, tried again while the database is `unavailable` (see `patience`).
    /// Safe to repeat: a claim that never committed claimed nothing; a report that did
    /// commit is refused item by item the second time (its claim tokens are spent), so
    /// no step is completed twice; steps it claimed alongside, whose answer was lost,
    /// come back when their lease runs out.
    fn call(&self, op: &str, req: &str, stats: &mut RunStats) -> Result<String> {
        let mut pause = Duration::from_millis(50);
        let mut first_refusal: Option<std::time::Instant> = None;
        loop {
            match self.tasker.call(op, req) {
                Err(e) if e.code == crate::ErrorCode::Unavailable => {
                    let since = *first_refusal.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= self.patience {
                        return Err(e);
                    }
                    stats.unavailable += 1;
                    tracing::warn!(worker = %self.id, op, error = %e, ?pause, "database unavailable; trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    fn handler_names(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.handlers.keys().collect();
        names.sort();
        names
    }

    fn claim(&self, wait_ms: u64, stats: &mut RunStats) -> Result<ClaimPage> {
        let req = json!({ "handlers": self.handler_names(), "limit": self.batch, "wait_ms": wait_ms, "worker_id": self.id });
        crate::api::ops::parse_json(&self.call("claim", &req.to_string(), stats)?)
    }

    /// Runs the handlers of one claimed page, reports the results and, in the same
    /// transaction, claims the next page (empty when nothing is claimable right now).
    fn run_page(
        &self,
        steps: Vec<StepInput>,
        stats: &mut RunStats,
        claim_next: bool,
    ) -> Result<Vec<StepInput>> {
        let outcomes = self.run_handlers(&steps);
        let mut items = Vec::with_capacity(steps.len());
        for (step, outcome) in steps.iter().zip(outcomes) {
            match outcome {
                Ok(result) => items.push(json!({ "step_id": step.step_id, "claim_token": step.claim_token, "result": result })),
                Err(e) => {
                    let req = json!({ "step_id": step.step_id, "claim_token": step.claim_token, "error": e.to_json() });
                    match self.call("fail_step", &req.to_string(), stats) {
                        Ok(_) => stats.failed += 1,
                        Err(e) if e.code == crate::ErrorCode::LeaseLost => stats.lost += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let mut req = json!({ "items": items });
        if claim_next {
            req["claim"] = json!({ "handlers": self.handler_names(), "limit": self.batch, "worker_id": self.id });
        }
        let out: CompletePage =
            crate::api::ops::parse_json(&self.call("complete_steps", &req.to_string(), stats)?)?;
        for r in &out.results {
            if r["ok"].as_bool() == Some(true) {
                stats.completed += 1;
            } else {
                stats.lost += 1;
            }
        }
        Ok(out.steps)
    }

    /// Runs the page's handlers on up to `concurrency` threads; meanwhile a heartbeat
    /// thread renews the leases of the steps still running every third of a lease.
    fn run_handlers(&self, steps: &[StepInput]) -> Vec<Outcome> {
        let slots: Vec<Mutex<Option<Outcome>>> = steps.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let runners: Vec<_> = (0..self.concurrency.min(steps.len()).max(1))
                .map(|_| {
                    scope.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(step) = steps.get(i) else { break };
                        let outcome = self.run_one(step);
                        *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
                    })
                })
                .collect();
            let beats = scope.spawn(|| self.heartbeat_until(steps, &slots, stopped));
            for r in runners {
                let _ = r.join();
            }
            let _ = stop.send(());
            let _ = beats.join();
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| Err(HandlerError::retryable("the handler did not finish")))
            })
            .collect()
    }

    fn run_one(&self, step: &StepInput) -> Outcome {
        let Some(handler) = self.handlers.get(&step.handler) else {
            return Err(HandlerError::retryable(format!(
                "no handler `{}` in worker {}",
                step.handler, self.id
            )));
        };
        catch_unwind(AssertUnwindSafe(|| handler(step))).unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic".to_owned());
            Err(HandlerError::retryable(format!(
                "handler `{}` panicked: {text}",
                step.handler
            )))
        })
    }

    fn heartbeat_until(
        &self,
        steps: &[StepInput],
        slots: &[Mutex<Option<Outcome>>],
        stop: Receiver<()>,
    ) {
        let every = Duration::from_millis((self.tasker.config().lease_ms / 3).max(1));
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
            for (step, slot) in steps.iter().zip(slots) {
                if slot.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    continue;
                }
                let req = json!({ "step_id": step.step_id, "claim_token": step.claim_token });
                if let Err(e) = self.tasker.call("heartbeat", &req.to_string()) {
                    tracing::warn!(step_id = step.step_id, error = %e, "heartbeat refused; the result will be too");
                }
            }
        }
    }

    /// Works until a claim finds nothing to do and no step of these handlers is
    /// scheduled for a retry. (Steps that other workers may still make ready later are
    /// not waited for.)
    pub fn run_until_idle(&self) -> Result<RunStats> {
        let mut stats = RunStats::default();
        let mut page = self.claim(self.idle_wait_ms, &mut stats)?;
        loop {
            if page.steps.is_empty() {
                if page.next_ready_at.is_none() {
                    return Ok(stats);
                }
                // A retry is due later: the claim wakes at its ready_at.
                page = self.claim(self.tasker.config().wait_ms_max, &mut stats)?;
                continue;
            }
            let next = self.run_page(page.steps, &mut stats, true)?;
            page = if next.is_empty() {
                self.claim(self.idle_wait_ms, &mut stats)?
            } else {
                ClaimPage {
                    steps: next,
                    next_ready_at: None,
                }
            };
        }
    }

    /// Works until `stop` is set (checked between claims).
    pub fn run_until(&self, stop: &AtomicBool) -> Result<RunStats> {
        let mut stats = RunStats::default();
        let mut steps = Vec::new();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if steps.is_empty() {
                if stopping {
                    break;
                }
                steps = self.claim(self.idle_wait_ms.max(1), &mut stats)?.steps;
                continue;
            }
            // Claimed steps are always run: stopping only stops claiming more.
            steps = self.run_page(steps, &mut stats, !stopping)?;
        }
        Ok(stats)
    }
}
