//! A worker for Rust programs, built on the same JSON operations as every binding:
//! claim a batch for the registered handlers, run each handler, report every success
//! in one `complete_steps` call and each failure with `fail_step`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

pub struct Worker {
    tasker: Tasker,
    id: String,
    handlers: HashMap<String, Handler>,
    batch: u32,
    idle_wait_ms: u64,
}

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

    /// How long a claim waits for work before the worker considers itself idle.
    pub fn idle_wait_ms(mut self, ms: u64) -> Worker {
        self.idle_wait_ms = ms;
        self
    }

    fn handler_names(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.handlers.keys().collect();
        names.sort();
        names
    }

    fn claim(&self, wait_ms: u64) -> Result<ClaimPage> {
        let req = json!({ "handlers": self.handler_names(), "limit": self.batch, "wait_ms": wait_ms, "worker_id": self.id });
        crate::api::ops::parse_json(&self.tasker.call("claim", &req.to_string())?)
    }

    /// Runs the handlers of one claimed page, reports the results and, in the same
    /// transaction, claims the next page (empty when nothing is claimable right now).
    fn run_page(
        &self,
        steps: Vec<StepInput>,
        stats: &mut RunStats,
        claim_next: bool,
    ) -> Result<Vec<StepInput>> {
        let mut items = Vec::with_capacity(steps.len());
        for step in &steps {
            let outcome = match self.handlers.get(&step.handler) {
                Some(h) => h(step),
                None => Err(HandlerError::retryable(format!(
                    "no handler `{}` in worker {}",
                    step.handler, self.id
                ))),
            };
            match outcome {
                Ok(result) => items.push(json!({ "step_id": step.step_id, "claim_token": step.claim_token, "result": result })),
                Err(e) => {
                    let req = json!({ "step_id": step.step_id, "claim_token": step.claim_token, "error": e.to_json() });
                    match self.tasker.call("fail_step", &req.to_string()) {
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
            crate::api::ops::parse_json(&self.tasker.call("complete_steps", &req.to_string())?)?;
        for r in &out.results {
            if r["ok"].as_bool() == Some(true) {
                stats.completed += 1;
            } else {
                stats.lost += 1;
            }
        }
        Ok(out.steps)
    }

    /// Works until a claim finds nothing to do and no step of these handlers is
    /// scheduled for a retry. (Steps that other workers may still make ready later are
    /// not waited for.)
    pub fn run_until_idle(&self) -> Result<RunStats> {
        let mut stats = RunStats::default();
        let mut page = self.claim(self.idle_wait_ms)?;
        loop {
            if page.steps.is_empty() {
                if page.next_ready_at.is_none() {
                    return Ok(stats);
                }
                // A retry is due later: the claim wakes at its ready_at.
                page = self.claim(self.tasker.config().wait_ms_max)?;
                continue;
            }
            let next = self.run_page(page.steps, &mut stats, true)?;
            page = if next.is_empty() {
                self.claim(self.idle_wait_ms)?
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
                steps = self.claim(self.idle_wait_ms.max(1))?.steps;
                continue;
            }
            // Claimed steps are always run: stopping only stops claiming more.
            steps = self.run_page(steps, &mut stats, !stopping)?;
        }
        Ok(stats)
    }
}
