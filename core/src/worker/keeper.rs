//! The keeper: one task per engine that renews the leases of every step the sessions
//! hold (every third of the session's lease) and acts on timeouts, so no host needs a
//! heartbeat thread. A renewal refused because the task was cancelled, the step timed
//! out or the lease was taken back raises the matching stop signal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::error::{Error, ErrorCode};

use super::failure;
use super::session::{Session, StopReason};

/// Longest the keeper sleeps when nothing is due sooner (it is woken early when a
/// claim brings a nearer deadline).
const IDLE_TICK_MS: i64 = 1_000;

enum Due {
    Renew {
        step_id: i64,
        token: i64,
    },
    Timeout {
        step_id: i64,
        token: i64,
        timeout_ms: i64,
    },
}

/// What a refused renewal means for the running handler.
fn stop_reason(e: &Error) -> Option<StopReason> {
    if e.code != ErrorCode::LeaseLost {
        return None;
    }
    let details = e.details.as_ref();
    if details
        .and_then(|d| d.get("timed_out"))
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        return Some(StopReason::Timeout);
    }
    if details
        .and_then(|d| d.get("task_timed_out"))
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        return Some(StopReason::TaskTimeout);
    }
    match details
        .and_then(|d| d.get("state"))
        .and_then(|v| v.as_str())
    {
        Some("cancelled") => Some(StopReason::Cancelled),
        _ => Some(StopReason::LeaseLost),
    }
}

/// Collects what is due in one session now; returns when its next item falls due.
fn due_in(session: &Session, now: i64, out: &mut Vec<Due>) -> i64 {
    let every = (session.lease_ms / 3).max(1) as i64;
    let mut next = i64::MAX;
    let st = session.state();
    for (&step_id, h) in &st.held {
        if h.stopped || h.reporting {
            continue;
        }
        if h.deadline_ms <= now {
            out.push(Due::Timeout {
                step_id,
                token: h.token,
                timeout_ms: h.timeout_ms,
            });
            continue;
        }
        let renew_at = h.renewed_ms + every;
        if renew_at <= now {
            out.push(Due::Renew {
                step_id,
                token: h.token,
            });
            next = next.min(now + every);
        } else {
            next = next.min(renew_at);
        }
        next = next.min(h.deadline_ms);
    }
    next
}

/// Records a timed-out attempt as failed (kind `timeout`), then raises the stop
/// signal, so whoever hears the stop sees the failure.
async fn time_out(engine: &Engine, session: &Session, step_id: i64, token: i64, timeout_ms: i64) {
    match engine
        .fail_step(step_id, token, failure::timed_out(timeout_ms))
        .await
    {
        Ok(out) => {
            session.state().counts.failed += 1;
            tracing::warn!(target: "tasker::worker", worker = %session.name, step_id,
                state = %out.state, attempt = out.attempt, kind = "timeout",
                "step attempt failed: ran past its timeout");
        }
        // The sweep took it back first (also a failed attempt).
        Err(e) if e.code == ErrorCode::LeaseLost => {}
        Err(e) => {
            tracing::warn!(target: "tasker::worker", step_id, error = %e,
                "could not record a timeout; the lease sweep will take the step back");
        }
    }
    session.stop(step_id, StopReason::Timeout);
}

/// Runs until the engine closes.
pub async fn run(engine: Arc<Engine>) {
    let workers = &engine.workers;
    let mut outage: Option<Instant> = None;
    loop {
        let woken = workers.keeper_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if engine.is_closed() {
            return;
        }
        let now = engine.now_ms();
        let mut next = now + IDLE_TICK_MS;
        for session in workers.all() {
            let mut due = Vec::new();
            next = next.min(due_in(&session, now, &mut due));
            for item in due {
                match item {
                    Due::Renew { step_id, token } => {
                        match engine
                            .heartbeat(step_id, token, Some(session.lease_ms))
                            .await
                        {
                            Ok(_) => {
                                if outage.take().is_some() {
                                    tracing::info!(target: "tasker::worker",
                                        "database reachable again; renewing leases");
                                }
                                if let Some(h) = session.state().held.get_mut(&step_id) {
                                    h.renewed_ms = now;
                                }
                            }
                            Err(e) if e.code == ErrorCode::Unavailable => {
                                session.state().counts.unavailable += 1;
                                if outage.is_none() {
                                    tracing::warn!(target: "tasker::worker", error = %e,
                                        "database unavailable; lease renewals paused, trying again");
                                    outage = Some(Instant::now());
                                }
                                next = next.min(engine.now_ms() + 250);
                            }
                            Err(e) if e.code == ErrorCode::Closed => return,
                            Err(e) => match stop_reason(&e) {
                                Some(StopReason::Timeout) => {
                                    let timeout_ms = session
                                        .state()
                                        .held
                                        .get(&step_id)
                                        .map_or(0, |h| h.timeout_ms);
                                    time_out(&engine, &session, step_id, token, timeout_ms).await;
                                }
                                Some(reason) => {
                                    session.stop(step_id, reason);
                                }
                                None => {
                                    tracing::warn!(target: "tasker::worker", step_id, error = %e,
                                        "lease renewal failed; trying again");
                                    next = next.min(engine.now_ms() + 1_000);
                                }
                            },
                        }
                    }
                    Due::Timeout {
                        step_id,
                        token,
                        timeout_ms,
                    } => time_out(&engine, &session, step_id, token, timeout_ms).await,
                }
            }
        }
        workers
            .keeper_next
            .store(next, std::sync::atomic::Ordering::Release);
        let nap = (next - engine.now_ms()).clamp(1, IDLE_TICK_MS) as u64;
        let _ = tokio::time::timeout(Duration::from_millis(nap), woken).await;
    }
}
