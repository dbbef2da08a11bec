//! `Session`: one worker session of core's worker runtime (`worker_open`,
//! `worker_next`, `worker_report`, `worker_close`, `worker_stats`; docs/workers.md).
//! Core claims, keeps leases alive, retries and releases; this only carries the
//! session's requests: those that answer at once on the libuv pool, those that may
//! wait (for work, stop signals or a grace period) awaited on Tasker's runtime, so a
//! wait never holds a pool thread.

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Result, Task};
use napi_derive::napi;
use serde::Deserialize;
use tasker_core::api::Tasker;

use crate::convert::{next_request, report_request, session_request};
use crate::errors::{internal, to_napi};
use crate::handle::Handle;

/// A log line of core's, as `lib/worker.js` emits it (`'log'` events).
#[napi(object)]
pub struct LogLine {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The `tracing` target, for example `tasker::worker`.
    pub target: String,
    pub message: String,
}

/// Starts capturing core's log lines (idempotent): a Node process has no `tracing`
/// subscriber of its own. Returns false when another global subscriber was installed.
#[napi]
pub fn capture_logs() -> bool {
    tasker_core::logs::capture()
}

/// Takes up to `max` captured log lines, oldest first.
#[napi]
pub fn drain_logs(max: u32) -> Vec<LogLine> {
    tasker_core::logs::drain(max as usize)
        .into_iter()
        .map(|r| LogLine {
            level: r.level.to_owned(),
            target: r.target,
            message: r.message,
        })
        .collect()
}

/// An open worker session (see `Worker` in `lib/worker.js`).
#[napi]
pub struct Session {
    tasker: Tasker,
    id: String,
    opened: String,
}

#[derive(Deserialize)]
struct Opened {
    worker_id: String,
}

/// Opens a session on the libuv pool (`worker_open` answers without waiting).
pub struct OpenSession {
    tasker: Tasker,
    request: String,
}

impl Task for OpenSession {
    type Output = (String, String);
    type JsValue = Session;

    fn compute(&mut self) -> Result<(String, String)> {
        let out = self
            .tasker
            .call("worker_open", &self.request)
            .map_err(to_napi)?;
        let opened: Opened = serde_json::from_str(&out)
            .map_err(|e| internal(format!("unexpected worker_open response: {e}")))?;
        Ok((opened.worker_id, out))
    }

    fn resolve(&mut self, _env: Env, (id, opened): (String, String)) -> Result<Session> {
        Ok(Session {
            tasker: self.tasker.clone(),
            id,
            opened,
        })
    }
}

/// Opens a worker session with a JSON `worker_open` request.
#[napi]
pub fn open_session(handle: &Handle, request: String) -> AsyncTask<OpenSession> {
    AsyncTask::new(OpenSession {
        tasker: handle.inner.clone(),
        request,
    })
}

#[napi]
impl Session {
    /// The session's id (`worker_id`).
    #[napi(getter)]
    pub fn id(&self) -> String {
        self.id.clone()
    }

    /// The `worker_open` response, as JSON text.
    #[napi(getter)]
    pub fn opened(&self) -> String {
        self.opened.clone()
    }

    /// `worker_next` without waiting (`wait_ms` 0), on the libuv pool: resolves with
    /// the JSON response (claimed steps, stop signals, `idle`).
    #[napi]
    pub fn next(&self, max: u32) -> AsyncTask<SessionCall> {
        self.quick("worker_next", next_request(&self.id, max, 0))
    }

    /// `worker_next` waiting up to `wait_ms` for work or a stop signal, awaited on
    /// Tasker's runtime (no libuv pool thread is held while it waits).
    #[napi]
    pub async fn next_waiting(&self, max: u32, wait_ms: u32) -> Result<String> {
        let req = next_request(&self.id, max, wait_ms);
        self.waiting("worker_next", req).await
    }

    /// `worker_report` on the libuv pool: `outcomes_json` is a JSON array of outcomes;
    /// with `next_max` the same round trip claims up to that many next steps without
    /// waiting.
    #[napi]
    pub fn report(&self, outcomes_json: String, next_max: Option<u32>) -> AsyncTask<SessionCall> {
        let next = next_max.map(|m| (m, 0));
        self.quick(
            "worker_report",
            report_request(&self.id, &outcomes_json, next),
        )
    }

    /// `worker_report` whose claim of the next steps waits up to `next_wait_ms`,
    /// awaited on Tasker's runtime.
    #[napi]
    pub async fn report_waiting(
        &self,
        outcomes_json: String,
        next_max: u32,
        next_wait_ms: u32,
    ) -> Result<String> {
        let req = report_request(&self.id, &outcomes_json, Some((next_max, next_wait_ms)));
        self.waiting("worker_report", req).await
    }

    /// `worker_close`: stops claiming, waits up to `grace_ms` for reports, releases
    /// the rest; resolves with the counts as JSON. Awaited on Tasker's runtime.
    #[napi]
    pub async fn close(&self, grace_ms: u32) -> Result<String> {
        let req = session_request(&self.id, Some(grace_ms));
        self.waiting("worker_close", req).await
    }

    /// `worker_stats`, as JSON.
    #[napi]
    pub fn stats(&self) -> AsyncTask<SessionCall> {
        self.quick("worker_stats", session_request(&self.id, None))
    }
}

impl Session {
    fn quick(&self, op: &'static str, request: String) -> AsyncTask<SessionCall> {
        AsyncTask::new(SessionCall {
            tasker: self.tasker.clone(),
            op,
            request,
        })
    }

    async fn waiting(&self, op: &'static str, request: String) -> Result<String> {
        self.tasker.call_async(op, &request).await.map_err(to_napi)
    }
}

/// A session operation that answers without waiting, on the libuv pool.
pub struct SessionCall {
    tasker: Tasker,
    op: &'static str,
    request: String,
}

impl Task for SessionCall {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<String> {
        self.tasker.call(self.op, &self.request).map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, out: String) -> Result<String> {
        Ok(out)
    }
}
