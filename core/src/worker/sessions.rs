//! The worker sessions of one engine, and what each session operation does with them.
//! `api/worker_ops.rs` turns JSON into these calls; `docs/workers.md` is the contract.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engine::{Claim, Engine, StepFailure};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{ClaimBatch, ClaimedStep, Completion};

use super::claimer::{Claimer, GroupKey};
use super::failure;
use super::session::{Counts, Session, Stop, StopReason};

/// Most handlers one session runs at once.
pub const MAX_CONCURRENCY: u32 = 1_000;
/// Bounds of a session's `lease_ms`.
pub const LEASE_MS_RANGE: (u64, u64) = (10, 86_400_000);
/// Longest worker name.
pub const MAX_NAME_LEN: usize = 200;

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
    claimer: Claimer,
    /// Wakes the keeper (new steps with a nearer due time, a new session).
    pub(crate) keeper_wake: Notify,
    /// When the keeper plans to wake next (ms since the epoch; 0 = unknown).
    pub(crate) keeper_next: AtomicI64,
}

pub struct OpenRequest {
    pub handlers: Vec<String>,
    pub concurrency: Option<u32>,
    pub batch: Option<u32>,
    pub lease_ms: Option<u64>,
    pub name: Option<String>,
}

#[derive(Serialize)]
pub struct Opened {
    pub worker_id: String,
    pub name: String,
    pub handlers: Vec<String>,
    pub concurrency: u32,
    pub batch: u32,
    pub lease_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// What `worker_next` hands the host.
#[derive(Serialize, Default)]
pub struct Page {
    pub steps: Vec<ClaimedStep>,
    pub stop: Vec<Stop>,
    pub idle: bool,
}

/// A reported step with no payload: (index in the report, step id, claim token).
type Held = (usize, i64, i64);

/// One outcome a host reports.
pub enum Outcome {
    Result(Box<RawValue>),
    Error(StepFailure),
    InvalidResult(String),
    Release,
    /// The step waits for the child tasks its handler started (state `waiting`).
    WaitForChildren,
}

pub struct OutcomeItem {
    pub step_id: i64,
    pub outcome: Outcome,
}

pub struct NextRequest {
    pub max: Option<u32>,
    pub wait_ms: u64,
}

#[derive(Serialize)]
pub struct ItemResult {
    pub step_id: i64,
    /// `completed`, `failed`, `released`, `waiting` (for its child tasks) or `lost`.
    pub outcome: &'static str,
    /// For `failed`: the step's state now (`ready`: a retry is scheduled; `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// For a failure core decided (`result_too_large`, `invalid_result`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

impl ItemResult {
    fn plain(step_id: i64, outcome: &'static str) -> ItemResult {
        ItemResult {
            step_id,
            outcome,
            state: None,
            reason: None,
            error: None,
        }
    }

    fn lost(step_id: i64, e: Error) -> ItemResult {
        ItemResult {
            error: Some(e),
            ..ItemResult::plain(step_id, "lost")
        }
    }
}

#[derive(Serialize)]
pub struct Reported {
    pub results: Vec<ItemResult>,
    pub steps: Vec<ClaimedStep>,
    pub stop: Vec<Stop>,
}

#[derive(Serialize)]
pub struct Closed {
    pub worker_id: String,
    pub completed: u64,
    pub failed: u64,
    pub lost: u64,
    pub released: u64,
    pub unavailable: u64,
}

#[derive(Serialize)]
pub struct SessionStats {
    pub worker_id: String,
    pub name: String,
    pub handlers: Vec<String>,
    pub concurrency: u32,
    pub batch: u32,
    pub held: usize,
    #[serde(flatten)]
    pub counts: Counts,
    pub claims_per_s: f64,
    pub uptime_ms: u64,
}

/// Calls `f` again while it fails with `unavailable`, pausing 50 ms doubling to 2 s, for
/// up to `worker_patience_ms`; warns once per outage.
async fn patiently<T, F, Fut>(engine: &Engine, s: &Session, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let patience = Duration::from_millis(engine.config().worker_patience_ms);
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match f().await {
            Err(e) if e.code == ErrorCode::Unavailable && started.elapsed() < patience => {
                s.state().counts.unavailable += 1;
                if !warned {
                    tracing::warn!(target: "tasker::worker", error = %e,
                        "database unavailable; {what} paused, trying again");
                    warned = true;
                }
                let left = patience.saturating_sub(started.elapsed());
                tokio::time::sleep(pause.min(left).max(Duration::from_millis(1))).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => {
                if warned && other.is_ok() {
                    tracing::info!(target: "tasker::worker", "database reachable again; {what} resumed");
                }
                return other;
            }
        }
    }
}

fn closed_while_waiting() -> Error {
    Error::new(
        ErrorCode::Closed,
        "the handle was closed while this call waited",
    )
}

fn bad(field: &str, message: String) -> Error {
    Error::invalid_argument(format!("{field}: {message}"))
        .with_details(serde_json::json!({ "field": field }))
}

/// The registered handler name nearest to `name`, if it is near enough to be a typo.
fn nearest<'a>(name: &str, registered: &'a [String]) -> Option<&'a str> {
    crate::model::suggest::did_you_mean(name, registered.iter().map(String::as_str))
}

impl Sessions {
    fn get(&self, id: &str) -> Result<Arc<Session>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "worker session `{id}` does not exist in this process (never opened, closed, or opened before a fork)"
                ))
                .with_details(serde_json::json!({ "worker_id": id }))
            })
    }

    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Raises `cancelled` for the held steps of a task cancelled in this process.
    pub(crate) fn task_cancelled(&self, task_id: i64) {
        self.task_stopped(task_id, StopReason::Cancelled);
    }

    /// Raises `reason` for the held steps of a task stopped in this process.
    pub(crate) fn task_stopped(&self, task_id: i64, reason: StopReason) {
        for s in self.all() {
            let ids: Vec<i64> = s
                .state()
                .held
                .iter()
                .filter(|(_, h)| h.task_id == task_id)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                s.stop(id, reason);
            }
        }
    }

    /// The engine is closing: waiting calls return, sessions are gone.
    pub(crate) fn shut(&self) {
        let sessions: Vec<Arc<Session>> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in sessions {
            s.state().closing = true;
            s.wake.notify_waiters();
        }
        self.keeper_wake.notify_one();
    }

    /// The engine's clock moved (a manual clock was advanced): held steps' renewals and
    /// timeouts may be due now.
    pub(crate) fn clock_moved(&self) {
        self.keeper_wake.notify_one();
    }

    /// Wakes the keeper when a step now held falls due before its planned wake-up.
    fn keeper_check(&self, due: i64) {
        let planned = self.keeper_next.load(Ordering::Acquire);
        if planned == 0 || due < planned {
            self.keeper_wake.notify_one();
        }
    }

    fn hold(&self, now: i64, s: &Session, steps: &[ClaimedStep]) {
        if let Some(deadline) = s.hold(steps, now) {
            let renew = now + (s.lease_ms / 3).max(1) as i64;
            self.keeper_check(deadline.min(renew));
        }
    }

    pub async fn open(&self, engine: &Arc<Engine>, req: OpenRequest) -> Result<Opened> {
        engine.check_open()?;
        let config = engine.config();
        if let Some(bad_name) = req.handlers.iter().find(|h| h.is_empty()) {
            return Err(bad(
                "handlers",
                format!("a handler name is empty ({bad_name:?})"),
            ));
        }
        let params = engine
            .claim_params(Claim {
                handlers: req.handlers,
                limit: 1,
                wait_ms: 0,
                worker: String::new(),
                lease_ms: None,
            })
            .map_err(|e| bad("handlers", e.message))?;
        let concurrency = req.concurrency.unwrap_or(1);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(bad(
                "concurrency",
                format!("expected an integer from 1 to {MAX_CONCURRENCY}, got {concurrency}"),
            ));
        }
        let batch = req.batch.unwrap_or(concurrency);
        if !(1..=config.claim_limit_max).contains(&batch) {
            return Err(bad(
                "batch",
                format!(
                    "expected an integer from 1 to {} (claim_limit_max), got {batch}",
                    config.claim_limit_max
                ),
            ));
        }
        let lease_ms = req.lease_ms.unwrap_or(config.lease_ms);
        if !(LEASE_MS_RANGE.0..=LEASE_MS_RANGE.1).contains(&lease_ms) {
            return Err(bad(
                "lease_ms",
                format!(
                    "expected an integer from {} to {}, got {lease_ms}",
                    LEASE_MS_RANGE.0, LEASE_MS_RANGE.1
                ),
            ));
        }
        let name = req
            .name
            .unwrap_or_else(|| format!("worker-{}", std::process::id()));
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
            return Err(bad(
                "name",
                format!(
                    "expected 1 to {MAX_NAME_LEN} bytes without NUL, got {} bytes",
                    name.len()
                ),
            ));
        }
        let registered = engine.registered_handlers().await?;
        let unknown: Vec<String> = params
            .handlers
            .iter()
            .filter(|h| registered.binary_search(h).is_err())
            .map(|h| match nearest(h, &registered) {
                Some(n) => format!("`{h}` (did you mean `{n}`?)"),
                None => format!("`{h}`"),
            })
            .collect();
        let warning = (!unknown.is_empty()).then(|| {
            format!(
                "no step of any registered template uses the handler {}; this worker will not run it until a template that does is registered",
                unknown.join(", ")
            )
        });
        let id = format!("w{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let session = Arc::new(Session::new(
            id.clone(),
            name.clone(),
            params.handlers.clone(),
            concurrency,
            batch,
            lease_ms,
        ));
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), session);
        tracing::info!(target: "tasker::worker", worker = %name, session = %id,
            handlers = ?params.handlers, store = engine.store_label(), concurrency, batch, lease_ms,
            "worker session opened");
        if let Some(w) = &warning {
            tracing::warn!(target: "tasker::worker", worker = %name, session = %id, "{w}");
        }
        Ok(Opened {
            worker_id: id,
            name,
            handlers: params.handlers,
            concurrency,
            batch,
            lease_ms,
            warning,
        })
    }

    pub async fn next(
        &self,
        engine: &Arc<Engine>,
        id: &str,
        max: Option<u32>,
        wait_ms: u64,
    ) -> Result<Page> {
        engine.check_open()?;
        let s = self.get(id)?;
        let want = max.unwrap_or(s.batch);
        if want > s.batch {
            return Err(bad(
                "max",
                format!(
                    "expected an integer from 0 to the session's batch ({}), got {want}",
                    s.batch
                ),
            ));
        }
        let wait = Duration::from_millis(wait_ms.min(engine.config().wait_ms_max));
        self.wait_for_work(engine, &s, want, Instant::now() + wait)
            .await
    }

    /// Claims up to `want` steps for the session through the shared claimer, waiting
    /// until `deadline`; returns early with the stop signals raised meanwhile.
    async fn wait_for_work(
        &self,
        engine: &Arc<Engine>,
        s: &Arc<Session>,
        want: u32,
        deadline: Instant,
    ) -> Result<Page> {
        let (capacity, was_empty, progress) = {
            let st = s.state();
            let free = s.batch.saturating_sub(st.held.len() as u32);
            let cap = if st.closing { 0 } else { want.min(free) };
            (cap, st.held.is_empty(), st.progress)
        };
        let stops = s.take_stops();
        if !stops.is_empty() {
            return Ok(Page {
                stop: stops,
                ..Page::default()
            });
        }
        if capacity == 0 {
            // Nothing to claim for: wait only for a stop signal (or close).
            loop {
                let woken = s.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let stop = s.take_stops();
                if !stop.is_empty() || s.state().closing || Instant::now() >= deadline {
                    return Ok(Page {
                        stop,
                        ..Page::default()
                    });
                }
                tokio::select! {
                    _ = tokio::time::timeout_at(deadline, woken) => {}
                    _ = crate::engine::caller_closed() => return Err(closed_while_waiting()),
                }
            }
        }
        let key = GroupKey {
            handlers: s.handlers.clone(),
            worker: s.name.clone(),
            lease_ms: s.lease_ms,
        };
        let mut rx = self.claimer.demand(engine, key, capacity, deadline);
        let answer = loop {
            let woken = s.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let interrupted = {
                let st = s.state();
                !st.stops.is_empty() || st.closing
            };
            if !interrupted {
                tokio::select! {
                    r = &mut rx => break r.unwrap_or_else(|_| Ok(ClaimBatch::default())),
                    _ = &mut woken => continue,
                    // The demand is dropped; a step claimed for it is handed back.
                    _ = crate::engine::caller_closed() => return Err(closed_while_waiting()),
                }
            }
            // A stop signal or close: stop waiting, but keep what was claimed for us.
            rx.close();
            break rx.try_recv().unwrap_or_else(|_| Ok(ClaimBatch::default()));
        };
        let mut unavailable = false;
        let batch = match answer {
            Ok(b) => {
                s.state().outage_since = None;
                b
            }
            Err(e) if e.code == ErrorCode::Unavailable => {
                let patience = Duration::from_millis(engine.config().worker_patience_ms);
                let since = *s
                    .state()
                    .outage_since
                    .get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= patience {
                    return Err(e);
                }
                unavailable = true;
                s.state().counts.unavailable += 1;
                ClaimBatch::default()
            }
            Err(e) => return Err(e),
        };
        self.hold(engine.now_ms(), s, &batch.steps);
        // On a manual clock a scheduled retry does not keep the session busy: only
        // `advance_clock` can bring it due, and waiting never will.
        let scheduled = batch.next_ready_at.is_some() && !engine.clock().is_manual();
        let idle = !unavailable && batch.steps.is_empty() && !scheduled && {
            let st = s.state();
            was_empty && st.held.is_empty() && st.progress == progress
        };
        Ok(Page {
            steps: batch.steps,
            stop: s.take_stops(),
            idle,
        })
    }

    pub async fn report(
        &self,
        engine: &Arc<Engine>,
        id: &str,
        outcomes: Vec<OutcomeItem>,
        next: Option<NextRequest>,
    ) -> Result<Reported> {
        engine.check_open()?;
        let s = self.get(id)?;
        let limit = engine.config().max_payload_bytes;
        let n = outcomes.len();
        let mut results: Vec<Option<ItemResult>> = (0..n).map(|_| None).collect();
        // (index, step_id, token, ...)
        let mut completions: Vec<(usize, i64, i64, Box<RawValue>)> = Vec::with_capacity(n);
        let mut failures: Vec<(usize, i64, i64, StepFailure, Option<&'static str>)> = Vec::new();
        let mut releases: Vec<Held> = Vec::new();
        let mut waits: Vec<Held> = Vec::new();
        let mut reported: Vec<i64> = Vec::with_capacity(n);
        let claim_cap;
        {
            let mut st = s.state();
            let mut seen = HashSet::with_capacity(n);
            for (i, item) in outcomes.into_iter().enumerate() {
                let step_id = item.step_id;
                let held = if seen.insert(step_id) {
                    st.held.get_mut(&step_id).filter(|h| !h.reporting)
                } else {
                    None
                };
                let Some(h) = held else {
                    results[i] = Some(ItemResult::lost(
                        step_id,
                        Error::new(
                            ErrorCode::LeaseLost,
                            format!("step {step_id} is not held by worker session {id} (not claimed by it, already reported, or taken back); nothing was recorded"),
                        )
                        .with_details(serde_json::json!({ "step_id": step_id })),
                    ));
                    continue;
                };
                h.reporting = true;
                reported.push(step_id);
                let token = h.token;
                match item.outcome {
                    Outcome::Result(raw) if raw.get().len() > limit => failures.push((
                        i,
                        step_id,
                        token,
                        failure::result_too_large(&h.handler, raw.get().len(), limit),
                        Some("result_too_large"),
                    )),
                    Outcome::Result(raw) => completions.push((i, step_id, token, raw)),
                    Outcome::Error(f) => {
                        failures.push((i, step_id, token, failure::fit(f, limit), None))
                    }
                    Outcome::InvalidResult(why) => failures.push((
                        i,
                        step_id,
                        token,
                        failure::invalid_result(&h.handler, &why),
                        Some("invalid_result"),
                    )),
                    Outcome::Release => releases.push((i, step_id, token)),
                    Outcome::WaitForChildren => waits.push((i, step_id, token)),
                }
            }
            let lost_now = results.iter().filter(|r| r.is_some()).count() as u64;
            st.counts.lost += lost_now;
            let held_after = st.held.len().saturating_sub(reported.len()) as u32;
            claim_cap = match &next {
                Some(nx) if !st.closing => nx
                    .max
                    .unwrap_or(s.batch)
                    .min(s.batch)
                    .min(s.batch.saturating_sub(held_after)),
                _ => 0,
            };
        }
        let outcome = self
            .record(
                engine,
                &s,
                completions,
                failures,
                (releases, waits),
                claim_cap,
            )
            .await;
        let (records, mut steps) = match outcome {
            Ok(v) => v,
            Err(e) => {
                // Nothing of the transaction committed: the steps stay held (and renewed).
                let mut st = s.state();
                for id in &reported {
                    if let Some(h) = st.held.get_mut(id) {
                        h.reporting = false;
                    }
                }
                return Err(e);
            }
        };
        {
            let mut st = s.state();
            for id in &reported {
                st.held.remove(id);
            }
            for (i, r) in records {
                if let Some(e) = r.error.as_ref().filter(|_| r.outcome == "lost") {
                    tracing::warn!(target: "tasker::worker", worker = %s.name, step_id = r.step_id,
                        code = e.code.as_str(), "outcome not recorded: {}", e.message);
                }
                match r.outcome {
                    "completed" => st.counts.completed += 1,
                    "failed" => st.counts.failed += 1,
                    "released" => st.counts.released += 1,
                    "waiting" => st.counts.completed += 1,
                    _ => st.counts.lost += 1,
                }
                results[i] = Some(r);
            }
            st.progress += 1;
        }
        self.hold(engine.now_ms(), &s, &steps);
        s.wake.notify_waiters();
        let mut stop = s.take_stops();
        if let Some(nx) = next.filter(|nx| nx.wait_ms > 0 && claim_cap > 0 && steps.is_empty()) {
            let wait = Duration::from_millis(nx.wait_ms.min(engine.config().wait_ms_max));
            let page = self
                .wait_for_work(engine, &s, claim_cap, Instant::now() + wait)
                .await?;
            steps = page.steps;
            stop.extend(page.stop);
        }
        Ok(Reported {
            results: results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| ItemResult::plain(0, "lost")))
                .collect(),
            steps,
            stop,
        })
    }

    /// Records a report's outcomes: every result and the next claim in one
    /// transaction, then each failure and release. Returns each outcome's result by
    /// its index in the report, and the claimed steps.
    async fn record(
        &self,
        engine: &Arc<Engine>,
        s: &Session,
        completions: Vec<(usize, i64, i64, Box<RawValue>)>,
        failures: Vec<(usize, i64, i64, StepFailure, Option<&'static str>)>,
        (releases, waits): (Vec<Held>, Vec<Held>),
        claim_cap: u32,
    ) -> Result<(Vec<(usize, ItemResult)>, Vec<ClaimedStep>)> {
        let mut records = Vec::with_capacity(completions.len() + failures.len() + releases.len());
        let claim = (claim_cap > 0).then(|| Claim {
            handlers: s.handlers.clone(),
            limit: claim_cap,
            wait_ms: 0,
            worker: s.name.clone(),
            lease_ms: Some(s.lease_ms),
        });
        let mut steps = Vec::new();
        if !completions.is_empty() || claim.is_some() {
            let (outs, batch) = patiently(engine, s, "reports", || {
                let items = completions
                    .iter()
                    .map(|(_, step_id, token, raw)| Completion {
                        step_id: *step_id,
                        claim_token: *token,
                        result: raw.clone(),
                    })
                    .collect();
                engine.complete_and_claim(items, claim.clone())
            })
            .await?;
            let mut by_id: HashMap<i64, crate::store::ItemOutcome> =
                outs.into_iter().map(|o| (o.step_id, o)).collect();
            for (i, step_id, _, _) in &completions {
                let r = match by_id.remove(step_id) {
                    Some(o) if o.ok => ItemResult::plain(*step_id, "completed"),
                    Some(o) => ItemResult::lost(
                        *step_id,
                        o.error
                            .unwrap_or_else(|| Error::new(ErrorCode::LeaseLost, "not recorded")),
                    ),
                    None => ItemResult::lost(
                        *step_id,
                        Error::internal("the store returned no outcome for this step"),
                    ),
                };
                records.push((*i, r));
            }
            steps = batch.steps;
        }
        for (i, step_id, token, f, reason) in failures {
            let kind = f.kind.clone();
            let message = f.message.clone();
            let r = match patiently(engine, s, "reports", || {
                engine.fail_step(step_id, token, f.clone())
            })
            .await
            {
                Ok(out) => {
                    tracing::warn!(target: "tasker::worker", worker = %s.name, step_id,
                        attempt = out.attempt, kind = %kind, state = %out.state,
                        "step attempt failed: {}", message.chars().take(300).collect::<String>());
                    ItemResult {
                        state: Some(out.state),
                        reason,
                        ..ItemResult::plain(step_id, "failed")
                    }
                }
                Err(e) => ItemResult::lost(step_id, e),
            };
            records.push((i, r));
        }
        for (i, step_id, token) in releases {
            let why = Some(format!("released unrun by worker {}", s.name));
            let r = match engine.release_step(step_id, token, 0, why).await {
                Ok(_) => ItemResult::plain(step_id, "released"),
                Err(e) => ItemResult::lost(step_id, e),
            };
            records.push((i, r));
        }
        for (i, step_id, token) in waits {
            let r = match engine.wait_for_children(step_id, token).await {
                Ok(_) => ItemResult::plain(step_id, "waiting"),
                Err(e) => ItemResult::lost(step_id, e),
            };
            records.push((i, r));
        }
        Ok((records, steps))
    }

    pub async fn close(&self, engine: &Arc<Engine>, id: &str, grace_ms: u64) -> Result<Closed> {
        let s = self.get(id)?;
        s.state().closing = true;
        s.wake.notify_waiters();
        let grace = Duration::from_millis(grace_ms.min(engine.config().wait_ms_max));
        let deadline = Instant::now() + grace;
        loop {
            let woken = s.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if s.state().held.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, woken) => {}
                // Closing the handle ends the grace: what is left is released now.
                _ = crate::engine::caller_closed() => break,
            }
        }
        let rest: Vec<(i64, i64)> = {
            let mut st = s.state();
            let ids: Vec<i64> = st
                .held
                .iter()
                .filter(|(_, h)| !h.reporting)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| st.held.remove(&id).map(|h| (id, h.token)))
                .collect()
        };
        for (step_id, token) in rest {
            let why = Some(format!("worker {} closed", s.name));
            match engine.release_step(step_id, token, 0, why).await {
                Ok(_) => s.state().counts.released += 1,
                Err(e) if e.code == ErrorCode::LeaseLost => s.state().counts.lost += 1,
                Err(e) => tracing::warn!(target: "tasker::worker", step_id, error = %e,
                    "could not hand back a held step; its lease will expire"),
            }
        }
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let c = s.state().counts;
        tracing::info!(target: "tasker::worker", worker = %s.name, session = %s.id,
            claimed = c.claimed, completed = c.completed, failed = c.failed, lost = c.lost,
            released = c.released, stopped = c.stopped, "worker session closed");
        Ok(Closed {
            worker_id: s.id.clone(),
            completed: c.completed,
            failed: c.failed,
            lost: c.lost,
            released: c.released,
            unavailable: c.unavailable,
        })
    }

    pub fn stats(&self, id: &str) -> Result<SessionStats> {
        let s = self.get(id)?;
        let st = s.state();
        let uptime = s.opened.elapsed();
        let secs = uptime.as_secs_f64().max(1e-3);
        Ok(SessionStats {
            worker_id: s.id.clone(),
            name: s.name.clone(),
            handlers: s.handlers.clone(),
            concurrency: s.concurrency,
            batch: s.batch,
            held: st.held.len(),
            counts: st.counts,
            claims_per_s: (st.counts.claimed as f64 / secs * 10.0).round() / 10.0,
            uptime_ms: uptime.as_millis() as u64,
        })
    }
}
