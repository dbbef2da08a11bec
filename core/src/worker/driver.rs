//! The Rust `Worker`: a driver of the worker session operations, like every binding's.
//! It runs handlers on `concurrency` threads ("lanes"), each claiming a batch with
//! `worker_next`, running it and reporting it with `worker_report` (which claims the
//! next batch in the same transaction), plus one thread that waits for stop signals.
//! Leases, retries, timeouts and failure documents are the session's business.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::ops::parse_json;
use crate::api::Tasker;
use crate::error::{Error, Result};

/// Handlers slower than this per step make their lane claim one step at a time.
const SLOW_STEP: std::time::Duration = std::time::Duration::from_millis(5);

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
    /// Raised when the step's run should stop (task cancelled, timeout, lease lost).
    #[serde(skip)]
    cancelled: Arc<AtomicBool>,
}

impl StepInput {
    /// True once the worker runtime said this run should stop: the task was cancelled,
    /// the step's timeout passed or its lease was taken back. A long handler checks it
    /// and returns early; whatever it returns then is not recorded.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
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

/// Counts of what a run did (from the session's own counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RunStats {
    pub completed: u64,
    pub failed: u64,
    /// Reports refused because the step was no longer held (taken back, cancelled).
    pub lost: u64,
    /// Steps handed back unrun when the run stopped.
    pub released: u64,
    /// Calls the session rode out while the database was `unavailable`.
    pub unavailable: u64,
}

pub struct Worker {
    tasker: Tasker,
    id: String,
    handlers: HashMap<String, Handler>,
    batch: u32,
    idle_wait_ms: u64,
    concurrency: usize,
    lease_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Opened {
    worker_id: String,
}

#[derive(Deserialize)]
struct StopItem {
    step_id: i64,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    steps: Vec<StepInput>,
    #[serde(default)]
    stop: Vec<StopItem>,
    #[serde(default)]
    idle: bool,
}

/// What the lanes of one run share.
struct Run<'a> {
    worker: &'a Worker,
    session: String,
    until_idle: bool,
    stop: Option<&'a AtomicBool>,
    finished: AtomicBool,
    /// The stop flags of the steps handed to the lanes and not reported yet, from the
    /// moment their page arrives: a page can carry a step and its stop, and the
    /// watching thread can hear a stop before the lane starts the handler.
    running: Mutex<HashMap<i64, Arc<AtomicBool>>>,
    error: Mutex<Option<Error>>,
}

impl Run<'_> {
    fn done(&self) -> bool {
        self.finished.load(Ordering::Acquire)
            || self.stop.is_some_and(|s| s.load(Ordering::Acquire))
    }

    fn call(&self, op: &str, req: Value) -> Option<Page> {
        match self
            .worker
            .tasker
            .call(op, &req.to_string())
            .and_then(|t| parse_json::<Page>(&t))
        {
            Ok(page) => {
                {
                    let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                    for step in &page.steps {
                        running.insert(step.step_id, step.cancelled.clone());
                    }
                }
                self.apply_stops(&page.stop);
                if page.idle && self.until_idle {
                    self.finished.store(true, Ordering::Release);
                }
                Some(page)
            }
            Err(e) => {
                self.error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                self.finished.store(true, Ordering::Release);
                None
            }
        }
    }

    fn apply_stops(&self, stops: &[StopItem]) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for s in stops {
            if let Some(flag) = running.get(&s.step_id) {
                flag.store(true, Ordering::Release);
            }
        }
    }

    /// One lane: claim, run, report-and-claim, until idle or stopped. A lane of several
    /// starts by claiming one step and doubles its claims while its handlers are fast
    /// (so slow steps spread over the lanes and fast ones go in batches).
    fn lane(&self) {
        let batch = self.worker.batch;
        let mut size = if self.worker.concurrency > 1 {
            1
        } else {
            batch
        };
        let mut steps: Vec<StepInput> = Vec::new();
        loop {
            if steps.is_empty() {
                if self.done() {
                    return;
                }
                let req = json!({ "worker_id": self.session, "max": size, "wait_ms": self.worker.idle_wait_ms.max(1) });
                match self.call("worker_next", req) {
                    Some(page) => steps = page.steps,
                    None => return,
                }
                continue;
            }
            let started = std::time::Instant::now();
            let mut outcomes = Vec::with_capacity(steps.len());
            for (i, step) in steps.iter().enumerate() {
                if self.stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                    // Stopping: the rest of the batch goes back unrun.
                    let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                    for s in &steps[i..] {
                        running.remove(&s.step_id);
                        outcomes.push(json!({ "step_id": s.step_id, "release": true }));
                    }
                    break;
                }
                let outcome = match self.worker.run_one(step) {
                    Ok(result) => json!({ "step_id": step.step_id, "result": result }),
                    Err(e) => json!({ "step_id": step.step_id, "error": e.to_json() }),
                };
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&step.step_id);
                outcomes.push(outcome);
            }
            let per_step = started.elapsed() / steps.len().max(1) as u32;
            size = if per_step < SLOW_STEP {
                (size * 2).min(batch)
            } else {
                1
            };
            let mut req = json!({ "worker_id": self.session, "outcomes": outcomes });
            if !self.done() {
                req["next"] = json!({ "max": size });
            }
            match self.call("worker_report", req) {
                Some(page) => steps = page.steps,
                None => return,
            }
        }
    }

    /// Waits for stop signals while the lanes run handlers.
    fn watch(&self) {
        while !self.done() {
            let req = json!({ "worker_id": self.session, "max": 0, "wait_ms": 1000 });
            if self.call("worker_next", req).is_none() {
                return;
            }
        }
    }
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
            lease_ms: None,
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

    /// Steps each lane claims per round trip.
    pub fn batch(mut self, n: u32) -> Worker {
        self.batch = n.max(1);
        self
    }

    /// How many handlers run at once (one lane thread each).
    pub fn concurrency(mut self, n: usize) -> Worker {
        self.concurrency = n.max(1);
        self
    }

    /// How long a claim waits for work before a lane asks again (and, in
    /// `run_until_idle`, before the session can call itself idle).
    pub fn idle_wait_ms(mut self, ms: u64) -> Worker {
        self.idle_wait_ms = ms;
        self
    }

    /// The lease the session's claims ask for (default: the engine's `lease_ms`).
    pub fn lease_ms(mut self, ms: u64) -> Worker {
        self.lease_ms = Some(ms);
        self
    }

    fn run_one(&self, step: &StepInput) -> std::result::Result<Value, HandlerError> {
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

    fn run(&self, until_idle: bool, stop: Option<&AtomicBool>) -> Result<RunStats> {
        let mut handlers: Vec<&String> = self.handlers.keys().collect();
        handlers.sort();
        let lanes = self.concurrency as u32;
        let mut open = json!({
            "handlers": handlers, "concurrency": lanes, "name": self.id,
            "batch": (self.batch.saturating_mul(lanes)).min(self.tasker.config().claim_limit_max),
        });
        if let Some(ms) = self.lease_ms {
            open["lease_ms"] = json!(ms);
        }
        let opened: Opened = parse_json(&self.tasker.call("worker_open", &open.to_string())?)?;
        let run = Run {
            worker: self,
            session: opened.worker_id,
            until_idle,
            stop,
            finished: AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
            error: Mutex::new(None),
        };
        let closed = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| run.watch());
            let lanes: Vec<_> = (0..self.concurrency)
                .map(|_| scope.spawn(|| run.lane()))
                .collect();
            for lane in lanes {
                let _ = lane.join();
            }
            run.finished.store(true, Ordering::Release);
            // Closing wakes the watcher's wait.
            let closed = self.tasker.call(
                "worker_close",
                &json!({ "worker_id": run.session, "grace_ms": 0 }).to_string(),
            );
            let _ = watcher.join();
            closed
        });
        if let Some(e) = run.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        parse_json(&closed?)
    }

    /// Works until the session is idle: it holds nothing, nothing is claimable for these
    /// handlers and no retry of them is scheduled. (Steps that other workers may still
    /// make ready later are not waited for.)
    pub fn run_until_idle(&self) -> Result<RunStats> {
        self.run(true, None)
    }

    /// Works until `stop` is set: then running handlers finish and are reported, and
    /// claimed steps not yet started are handed back (their attempt not counted).
    pub fn run_until(&self, stop: &AtomicBool) -> Result<RunStats> {
        self.run(false, Some(stop))
    }
}
