//! `Session`: one worker session of core's worker runtime (`worker_open`,
//! `worker_next`, `worker_report`, `worker_close`, `worker_stats`; docs/workers.md).
//! Core claims, keeps leases alive, retries and releases; this only carries the
//! session's requests, awaited on Tasker's runtime (a `worker_next` may wait for
//! work without holding a libuv pool thread).

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Result, Task};
use napi_derive::napi;
use serde::Deserialize;
use tasker_core::api::Tasker;

use crate::convert::{next_request, report_request, session_request};
use crate::errors::{internal, to_napi};
use crate::handle::Handle;

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

    /// `worker_next`: resolves with the JSON response (claimed steps, stop signals,
    /// `idle`).
    #[napi]
    pub async fn next(&self, max: u32, wait_ms: u32) -> Result<String> {
        let req = next_request(&self.id, max, wait_ms);
        self.tasker
            .call_async("worker_next", &req)
            .await
            .map_err(to_napi)
    }

    /// `worker_report`: `outcomes_json` is a JSON array of outcomes; with `next_max`
    /// the same round trip claims the next steps (waiting up to `next_wait_ms`).
    #[napi]
    pub async fn report(
        &self,
        outcomes_json: String,
        next_max: Option<u32>,
        next_wait_ms: Option<u32>,
    ) -> Result<String> {
        let next = next_max.map(|m| (m, next_wait_ms.unwrap_or(0)));
        let req = report_request(&self.id, &outcomes_json, next);
        self.tasker
            .call_async("worker_report", &req)
            .await
            .map_err(to_napi)
    }

    /// `worker_close`: stops claiming, waits up to `grace_ms` for reports, releases
    /// the rest; resolves with the counts as JSON.
    #[napi]
    pub async fn close(&self, grace_ms: u32) -> Result<String> {
        let req = session_request(&self.id, Some(grace_ms));
        self.tasker
            .call_async("worker_close", &req)
            .await
            .map_err(to_napi)
    }

    /// `worker_stats`, as JSON.
    #[napi]
    pub async fn stats(&self) -> Result<String> {
        let req = session_request(&self.id, None);
        self.tasker
            .call_async("worker_stats", &req)
            .await
            .map_err(to_napi)
    }
}
