//! `Handle`: one open `tasker_core::api::Tasker`. Every engine call releases the GIL, so
//! other Python threads (handlers, the heartbeat) run while the engine works.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use tasker_core::api::{Subscription as CoreSubscription, Tasker};

use crate::convert::{decode, encode};
use crate::errors::to_py;

/// An open engine handle (see `tasker.Tasker` for the documented API).
#[pyclass(frozen, module = "tasker._native")]
pub struct Handle {
    inner: Tasker,
}

impl Handle {
    pub(crate) fn run(&self, py: Python<'_>, op: &str, request: &str) -> PyResult<String> {
        py.detach(|| self.inner.call(op, request))
            .map_err(|e| to_py(py, e))
    }
}

/// A claim request without `wait_ms`, with `wait_ms` added in front.
fn with_wait(claim_json: &str, wait_ms: u64) -> PyResult<String> {
    let rest = claim_json
        .trim_start()
        .strip_prefix('{')
        .filter(|r| !r.trim_start().starts_with('}'))
        .ok_or_else(|| PyValueError::new_err("claim request must be a non-empty JSON object"))?;
    Ok(format!("{{\"wait_ms\":{wait_ms},{rest}"))
}

#[pymethods]
impl Handle {
    /// Opens a handle from a JSON object of settings ("" for the defaults).
    #[staticmethod]
    fn open(py: Python<'_>, config_json: &str) -> PyResult<Handle> {
        py.detach(|| Tasker::open(config_json))
            .map(|inner| Handle { inner })
            .map_err(|e| to_py(py, e))
    }

    /// Runs operation `op` with a JSON request text; returns the JSON response text.
    fn call(&self, py: Python<'_>, op: &str, request: &str) -> PyResult<String> {
        self.run(py, op, request)
    }

    /// Runs operation `op` with a request given as Python data (None: `{}`); returns
    /// the response as Python data.
    #[pyo3(signature = (op, request=None))]
    fn call_obj<'py>(
        &self,
        py: Python<'py>,
        op: &str,
        request: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let text = match request {
            Some(r) if !r.is_none() => encode(r)?,
            _ => String::new(),
        };
        let out = self.run(py, op, &text)?;
        decode(py, &out)
    }

    /// Claims steps: `claim_json` is a claim request without `wait_ms`. Returns the
    /// claimed steps and, when none was claimed, when the next retry comes due.
    fn claim<'py>(
        &self,
        py: Python<'py>,
        claim_json: &str,
        wait_ms: u64,
    ) -> PyResult<(Bound<'py, PyList>, Option<String>)> {
        let out = self.run(py, "claim", &with_wait(claim_json, wait_ms)?)?;
        crate::worker::claim_page(py, &out)
    }

    /// `worker_next`: claims up to `max` steps for session `worker_id`, waiting up to
    /// `wait_ms`; returns `(steps, stops, idle)` with stops as `(step_id, reason)`.
    fn worker_next<'py>(
        &self,
        py: Python<'py>,
        worker_id: &str,
        max: u32,
        wait_ms: u64,
    ) -> PyResult<crate::worker::NextPage<'py>> {
        self.session_next(py, worker_id, max, wait_ms)
    }

    /// `worker_report`: `outcomes` are `(step_id, kind, text)` with kind `result`,
    /// `error` (text: JSON), `invalid_result` (text: why) or `release`; with `next_max`
    /// the same round trip claims up to that many steps. Returns
    /// `((completed, failed, released, lost), steps, stops)`.
    #[pyo3(signature = (worker_id, outcomes, next_max=None))]
    fn worker_report<'py>(
        &self,
        py: Python<'py>,
        worker_id: &str,
        outcomes: &Bound<'py, PyList>,
        next_max: Option<u32>,
    ) -> PyResult<crate::worker::ReportPage<'py>> {
        self.session_report(py, worker_id, outcomes, next_max)
    }

    /// Follows the event log from cursor `since` on a background thread, calling
    /// `callback(event_dict)` for each event (only `types` when given).
    #[pyo3(signature = (since, types, callback))]
    fn subscribe(
        &self,
        py: Python<'_>,
        since: i64,
        types: Option<Vec<String>>,
        callback: Py<PyAny>,
    ) -> PyResult<Subscription> {
        let sub = self
            .inner
            .subscribe(since, types, move |event| {
                // None when the interpreter is shutting down: the event is dropped.
                Python::try_attach(|py| {
                    let delivered = decode(py, &event.to_string())
                        .and_then(|obj| callback.call1(py, (obj,)).map(|_| ()));
                    if let Err(e) = delivered {
                        e.write_unraisable(py, None);
                    }
                });
            })
            .map_err(|e| to_py(py, e))?;
        Ok(Subscription {
            inner: Mutex::new(Some(sub)),
            pid: std::process::id(),
        })
    }

    /// Closes the handle (idempotent); later calls raise `ClosedError`.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    /// The engine's lease length in milliseconds (the `lease_ms` setting): a worker
    /// heartbeats well within it.
    #[getter]
    fn lease_ms(&self) -> u64 {
        self.inner.config().lease_ms
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// A running event subscription (from `Handle.subscribe`).
#[pyclass(frozen, module = "tasker._native")]
pub struct Subscription {
    inner: Mutex<Option<CoreSubscription>>,
    /// The process whose thread delivers the events. A forked child inherits this
    /// object but not the thread, so it must never join it.
    pid: u32,
}

impl Subscription {
    fn take(&self) -> Option<CoreSubscription> {
        let sub = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        if self.pid != std::process::id() {
            // Inherited through fork: the delivery thread lives only in the parent.
            std::mem::forget(sub);
            return None;
        }
        Some(sub)
    }
}

#[pymethods]
impl Subscription {
    /// Stops delivery and waits for the delivery thread to end (idempotent). Called
    /// from inside the callback, it stops without waiting.
    fn stop(&self, py: Python<'_>) {
        if let Some(sub) = self.take() {
            // The delivery thread may be waiting for the GIL: release it while joining.
            py.detach(|| sub.stop());
        }
    }

    /// True while events are being delivered (never in a forked child).
    #[getter]
    fn active(&self) -> bool {
        self.pid == std::process::id()
            && self
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(sub) = self.take() {
            // Dropped while holding the GIL: join on another thread so the delivery
            // thread can finish its callback.
            std::thread::spawn(move || drop(sub));
        }
    }
}

/// Encodes Python data as JSON text (dict with str keys, list, tuple, str, int, finite
/// float, bool, None); anything else raises `TypeError` naming the type and its place.
#[pyfunction]
pub fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    encode(obj)
}

/// Parses JSON text into Python data.
#[pyfunction]
pub fn from_json<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    decode(py, text)
}
