//! The claimer: one per engine (so one per process and database). Sessions waiting for
//! work hand it a demand (how many steps, until when); demands for the same handlers,
//! worker name and lease are served together by one claim query per wake-up, whose
//! steps are shared out in arrival order. Eight idle slots, or eight sessions of one
//! process, therefore cost one query per wake-up, not eight.
//!
//! A group's loop wakes when steps may have become claimable in this process (the
//! engine's ready signal, and PostgreSQL's LISTEN for other processes), when a retry of
//! these handlers comes due, when a new demand arrives, and at `claim_poll_ms` (work made
//! ready by other processes on SQLite). It ends when no demand is left.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{ClaimBatch, ClaimParams, ClaimedStep};

/// What demands share a claim query on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub handlers: Vec<String>,
    pub worker: String,
    pub lease_ms: u64,
}

/// A demand's answer: the steps claimed for it, or (when its wait ran out with none)
/// when the next retry comes due; an error when claiming failed.
pub type Answer = Result<ClaimBatch>;

struct Demand {
    max: u32,
    deadline: Instant,
    /// The group's round when the demand arrived: it may expire only once a claim
    /// that started after it (a later round) found nothing for it.
    round: u64,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    demands: VecDeque<Demand>,
    running: bool,
    /// Claims started so far.
    round: u64,
}

struct Group {
    key: GroupKey,
    queue: Mutex<Queue>,
    arrived: Notify,
}

#[derive(Default)]
pub struct Claimer {
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
}

impl Claimer {
    /// Queues a demand for up to `max` steps, answered by `deadline` at the latest.
    pub fn demand(
        &self,
        engine: &Arc<Engine>,
        key: GroupKey,
        max: u32,
        deadline: Instant,
    ) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let group = {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            groups
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Group {
                        key,
                        queue: Mutex::new(Queue::default()),
                        arrived: Notify::new(),
                    })
                })
                .clone()
        };
        let start = {
            let mut q = group.queue.lock().unwrap_or_else(|p| p.into_inner());
            let round = q.round;
            q.demands.push_back(Demand {
                max,
                deadline,
                round,
                tx,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            tokio::spawn(serve(engine.clone(), group));
        } else {
            group.arrived.notify_one();
        }
        rx
    }
}

/// Hands claimed steps out to the waiting demands in arrival order. A step whose
/// demand went away meanwhile is released (no attempt counted).
fn share_out(engine: &Arc<Engine>, group: &Group, steps: Vec<ClaimedStep>) {
    let mut steps = VecDeque::from(steps);
    let mut orphans = Vec::new();
    {
        let mut q = group.queue.lock().unwrap_or_else(|p| p.into_inner());
        while !steps.is_empty() {
            let Some(d) = q.demands.pop_front() else {
                break;
            };
            let n = (d.max as usize).min(steps.len());
            let mine: Vec<ClaimedStep> = steps.drain(..n).collect();
            if let Err(Ok(back)) = d.tx.send(Ok(ClaimBatch {
                steps: mine,
                next_ready_at: None,
            })) {
                orphans.extend(back.steps);
            }
        }
    }
    orphans.extend(steps);
    if !orphans.is_empty() {
        let engine = engine.clone();
        tokio::spawn(async move {
            for s in orphans {
                let token = s.claim_token.parse::<i64>().unwrap_or_default();
                let why = Some("claimed for a worker that stopped waiting".to_owned());
                if let Err(e) = engine.release_step(s.step_id, token, 0, why).await {
                    tracing::warn!(target: "tasker::worker", step_id = s.step_id, error = %e,
                        "could not hand back a step nobody waits for; its lease will expire");
                }
            }
        });
    }
}

/// Answers every demand whose deadline passed (or whose waiter left) with `answer`.
/// Returns the total still wanted and the earliest remaining deadline; `None` when no
/// demand is left (and the group's loop ends).
fn settle(group: &Group, now: Instant, answer: impl Fn() -> Answer) -> Option<(u32, Instant)> {
    let mut q = group.queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut keep = VecDeque::with_capacity(q.demands.len());
    let demands = std::mem::take(&mut q.demands);
    for d in demands {
        if d.tx.is_closed() {
            continue;
        }
        if d.deadline <= now && d.round < q.round {
            let _ = d.tx.send(answer());
            continue;
        }
        keep.push_back(d);
    }
    q.demands = keep;
    if q.demands.is_empty() {
        q.running = false;
        return None;
    }
    let total = q.demands.iter().map(|d| d.max).sum::<u32>();
    let first = q.demands.iter().map(|d| d.deadline).min()?;
    // This claim covers every demand waiting now.
    q.round += 1;
    Some((total, first))
}

/// Fails every waiting demand with `e` (a claim the store refused for a reason that
/// waiting will not fix).
fn fail_all(group: &Group, e: &Error) {
    let mut q = group.queue.lock().unwrap_or_else(|p| p.into_inner());
    for d in q.demands.drain(..) {
        let _ = d.tx.send(Err(e.clone()));
    }
}

/// How long a handler whose claims fail is left out of its group's claims.
const QUARANTINE: Duration = Duration::from_secs(30);

/// Handlers whose claims fail for a reason waiting will not fix (a step the store
/// cannot hand out): they are left out for a while so that the group's other handlers
/// are still served, and each cause is logged once.
#[derive(Default)]
struct Quarantine {
    until: HashMap<String, Instant>,
    told: std::collections::HashSet<(String, String)>,
}

impl Quarantine {
    fn healthy(&mut self, handlers: &[String], now: Instant) -> Vec<String> {
        self.until.retain(|_, t| *t > now);
        handlers
            .iter()
            .filter(|h| !self.until.contains_key(*h))
            .cloned()
            .collect()
    }

    fn add(&mut self, handler: &str, e: &Error) {
        self.until
            .insert(handler.to_owned(), Instant::now() + QUARANTINE);
        if self.told.insert((handler.to_owned(), e.message.clone())) {
            tracing::warn!(target: "tasker::worker", handler, error = %e,
                "claims for this handler fail; serving the other handlers, trying it again every {}s",
                QUARANTINE.as_secs());
        }
    }
}

/// A claim that failed for several handlers: each is claimed alone, so the failing ones
/// are found and left out, and what the others had ready is claimed.
async fn claim_each(
    engine: &Engine,
    params: &ClaimParams,
    quarantine: &mut Quarantine,
) -> Result<ClaimBatch> {
    let mut out = ClaimBatch::default();
    let mut last_err = None;
    let mut failed = 0;
    for h in &params.handlers {
        let left = params.limit.saturating_sub(out.steps.len() as u32);
        if left == 0 {
            break;
        }
        let one = ClaimParams {
            handlers: vec![h.clone()],
            limit: left,
            ..params.clone()
        };
        match engine.claim_now(one).await {
            Ok(b) => {
                out.steps.extend(b.steps);
                out.next_ready_at = match (out.next_ready_at, b.next_ready_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Err(e) if e.code == ErrorCode::Unavailable || e.code == ErrorCode::Closed => {
                return Err(e)
            }
            Err(e) => {
                quarantine.add(h, &e);
                failed += 1;
                last_err = Some(e);
            }
        }
    }
    match last_err {
        // Every handler failed: the waiting sessions hear of it.
        Some(e) if failed == params.handlers.len() => Err(e),
        _ => Ok(out),
    }
}

async fn serve(engine: Arc<Engine>, group: Arc<Group>) {
    let config = engine.config().clone();
    let poll = Duration::from_millis(config.claim_poll_ms);
    let mut next_ready_at: Option<i64> = None;
    let mut outage: Option<(Error, Duration)> = None;
    let mut quarantine = Quarantine::default();
    loop {
        let ready = engine.signals().ready.notified();
        let arrived = group.arrived.notified();
        tokio::pin!(ready, arrived);
        ready.as_mut().enable();
        arrived.as_mut().enable();
        let now = Instant::now();
        let last_next = next_ready_at;
        let last_outage = outage.as_ref().map(|(e, _)| e.clone());
        let Some((total, first_deadline)) = settle(&group, now, || match &last_outage {
            Some(e) => Err(e.clone()),
            None => Ok(ClaimBatch {
                steps: Vec::new(),
                next_ready_at: last_next,
            }),
        }) else {
            return;
        };
        if engine.is_closed() {
            fail_all(
                &group,
                &Error::new(ErrorCode::Closed, "the engine is closed"),
            );
            let mut q = group.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.running = false;
            return;
        }
        let handlers = quarantine.healthy(&group.key.handlers, now);
        if handlers.is_empty() {
            // Every handler of the group is in its 30 s quarantine: wait as if nothing
            // were claimable, then try again (`healthy` lets each back in when its time is up).
            let until = (Instant::now() + poll).min(first_deadline);
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            continue;
        }
        let params = ClaimParams {
            handlers,
            limit: total.clamp(1, config.claim_limit_max),
            worker: group.key.worker.clone(),
            lease_ms: group.key.lease_ms,
            now: 0,
        };
        let mut nap = poll;
        let claimed = match engine.claim_now(params.clone()).await {
            Err(e)
                if params.handlers.len() > 1
                    && e.code != ErrorCode::Unavailable
                    && e.code != ErrorCode::Closed =>
            {
                claim_each(&engine, &params, &mut quarantine).await
            }
            Err(e) if e.code != ErrorCode::Unavailable && e.code != ErrorCode::Closed => {
                // The one healthy handler left fails too.
                if group.key.handlers.len() > 1 {
                    quarantine.add(&params.handlers[0], &e);
                }
                Err(e)
            }
            other => other,
        };
        match claimed {
            Ok(batch) => {
                if outage.take().is_some() {
                    tracing::info!(target: "tasker::worker", handlers = ?group.key.handlers,
                        "database reachable again; claiming");
                }
                let got = batch.steps.len() as u32;
                next_ready_at = batch.next_ready_at;
                if got > 0 {
                    share_out(&engine, &group, batch.steps);
                    if got >= total {
                        // Everyone was served: claim again at once for demands that
                        // arrived meanwhile (the loop ends when there are none).
                        continue;
                    }
                }
                if let Some(at) = next_ready_at {
                    let due = (at - engine.now_ms()).max(0) as u64 + 1;
                    nap = nap.min(Duration::from_millis(due));
                }
                // A delayed task this process knows of comes due: the next claim
                // promotes it (engine/scheduling.rs).
                if let Some(at) = engine.due_hint() {
                    let due = (at - engine.now_ms()).max(0) as u64 + 1;
                    nap = nap.min(Duration::from_millis(due));
                }
            }
            Err(e) if e.code == ErrorCode::Unavailable => {
                let pause = match &outage {
                    None => {
                        tracing::warn!(target: "tasker::worker", handlers = ?group.key.handlers,
                            error = %e, "database unavailable; claims paused, trying again");
                        Duration::from_millis(50)
                    }
                    Some((_, p)) => (*p * 2).min(Duration::from_secs(2)),
                };
                outage = Some((e, pause));
                nap = pause;
            }
            Err(e) => {
                fail_all(&group, &e);
                continue;
            }
        }
        let until = (Instant::now() + nap).min(first_deadline);
        tokio::select! {
            _ = &mut ready => {}
            _ = &mut arrived => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}
