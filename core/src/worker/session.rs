//! One worker session: the steps it holds (with their claim tokens, deadlines and last
//! renewal), the stop signals waiting to be handed to the host, and its counters.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;

use crate::store::ClaimedStep;

/// Why a held step's run should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Its task was cancelled.
    Cancelled,
    /// Its timeout passed; core recorded the attempt as failed.
    Timeout,
    /// Its lease could not be renewed: the step was taken back.
    LeaseLost,
    /// Its task ran past the task's timeout (`timeout_s`): the task failed.
    TaskTimeout,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Cancelled => "cancelled",
            StopReason::Timeout => "timeout",
            StopReason::LeaseLost => "lease_lost",
            StopReason::TaskTimeout => "task_timeout",
        }
    }
}

/// A stop signal as handed to the host.
#[derive(Debug, Clone, Serialize)]
pub struct Stop {
    pub step_id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub reason: StopReason,
}

/// A step the session holds: claimed, not yet reported.
#[derive(Debug, Clone)]
pub struct Held {
    pub token: i64,
    pub task_id: i64,
    pub step_name: String,
    pub handler: String,
    pub attempt: i64,
    pub timeout_ms: i64,
    /// When the step's timeout passes (ms since the epoch).
    pub deadline_ms: i64,
    /// When its lease was last granted or renewed.
    pub renewed_ms: i64,
    /// A stop signal was raised for it: no more renewals.
    pub stopped: bool,
    /// A report naming it is being recorded: the keeper leaves it alone.
    pub reporting: bool,
}

/// What a session did, as `worker_stats` and `worker_close` report it.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counts {
    pub claimed: u64,
    pub completed: u64,
    /// Failed attempts recorded (each may be retried by the engine).
    pub failed: u64,
    /// Reports refused because the step was no longer held by this claim.
    pub lost: u64,
    /// Steps handed back unrun (their attempt not counted).
    pub released: u64,
    /// Stop signals raised.
    pub stopped: u64,
    /// Claims, renewals and reports refused with `unavailable` and tried again.
    pub unavailable: u64,
}

#[derive(Default)]
pub struct State {
    pub held: HashMap<i64, Held>,
    pub stops: Vec<Stop>,
    /// `worker_close` began: no more claims.
    pub closing: bool,
    /// Bumped whenever held steps are reported, so a claim that found nothing can
    /// tell whether a report landed meanwhile (see `worker_next`'s `idle`).
    pub progress: u64,
    pub counts: Counts,
    /// Since when claims or reports have been refused with `unavailable`.
    pub outage_since: Option<Instant>,
}

pub struct Session {
    pub id: String,
    pub name: String,
    pub handlers: Vec<String>,
    pub concurrency: u32,
    pub batch: u32,
    pub lease_ms: u64,
    pub opened: Instant,
    state: Mutex<State>,
    /// Woken when a stop signal is raised, a report is recorded, or closing begins.
    pub wake: Notify,
}

impl Session {
    pub fn new(
        id: String,
        name: String,
        handlers: Vec<String>,
        concurrency: u32,
        batch: u32,
        lease_ms: u64,
    ) -> Session {
        Session {
            id,
            name,
            handlers,
            concurrency,
            batch,
            lease_ms,
            opened: Instant::now(),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes claimed steps into the session. Returns the earliest deadline among them.
    pub fn hold(&self, steps: &[ClaimedStep], now: i64) -> Option<i64> {
        if steps.is_empty() {
            return None;
        }
        let mut st = self.state();
        let mut earliest = i64::MAX;
        for s in steps {
            // The lease is capped at the timeout: lease_expires_at is
            // min(start + lease, start + timeout), so the start is recoverable.
            let start = s.lease_expires_at.0 - (self.lease_ms as i64).min(s.timeout_ms);
            let deadline = start.saturating_add(s.timeout_ms);
            earliest = earliest.min(deadline);
            let token = s.claim_token.parse::<i64>().unwrap_or_default();
            st.held.insert(
                s.step_id,
                Held {
                    token,
                    task_id: s.task_id,
                    step_name: s.step_name.clone(),
                    handler: s.handler.clone(),
                    attempt: s.attempt,
                    timeout_ms: s.timeout_ms,
                    deadline_ms: deadline,
                    renewed_ms: now.max(start),
                    stopped: false,
                    reporting: false,
                },
            );
        }
        st.counts.claimed += steps.len() as u64;
        Some(earliest)
    }

    /// Raises a stop signal for a held step, once. Returns whether it was raised now.
    pub fn stop(&self, step_id: i64, reason: StopReason) -> bool {
        let raised = {
            let mut st = self.state();
            let State {
                held,
                stops,
                counts,
                ..
            } = &mut *st;
            match held.get_mut(&step_id) {
                Some(h) if !h.stopped => {
                    h.stopped = true;
                    counts.stopped += 1;
                    stops.push(Stop {
                        step_id,
                        task_id: h.task_id,
                        step_name: h.step_name.clone(),
                        reason,
                    });
                    tracing::info!(
                        target: "tasker::worker",
                        worker = %self.name,
                        session = %self.id,
                        step_id,
                        task_id = h.task_id,
                        step = %h.step_name,
                        reason = reason.as_str(),
                        "stop signal for a running step"
                    );
                    true
                }
                _ => false,
            }
        };
        if raised {
            self.wake.notify_waiters();
        }
        raised
    }

    /// The stop signals not yet handed to the host.
    pub fn take_stops(&self) -> Vec<Stop> {
        std::mem::take(&mut self.state().stops)
    }
}
