//! `Handle`: one open `tasker_core::api::Tasker`. Every engine call releases the GIL, so
//! other Python threads (handlers, the heartbeat) run while the engine works.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use serde::Deserialize;
use serde_json::value::RawValue;
use tasker_core::api::{Subscription as CoreSubscription, Tasker};

use crate::convert::{decode, encode};
use crate::errors::to_py;
use crate::step::{ClaimedStep, Step};

/// An open engine handle (see `tasker.Tasker` for the documented API).
#[pyclass(frozen, module = "tasker._native")]
pub struct Handle {
    inner: Tasker,
}

#[derive(Deserialize)]
struct ClaimPage {
    steps: Vec<ClaimedStep>,
    #[serde(default)]
    next_ready_at: Option<String>,
}

#[derive(Deserialize)]
struct ItemError {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ItemResult {
    step_id: i64,
    ok: bool,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct CompletePage {
    results: Vec<ItemResult>,
    #[serde(default)]
    steps: Vec<ClaimedStep>,
}

/// An item `complete_steps` did not record: `(step_id, code, message)`.
type Refused = (i64, String, String);

impl Handle {
    fn run(&self, py: Python<'_>, op: &str, request: &str) -> PyResult<String> {
        py.detach(|| self.inner.call(op, request))
            .map_err(|e| to_py(py, e))
    }
}

fn steps_list<'py>(py: Python<'py>, steps: Vec<ClaimedStep>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for s in steps {
        list.append(Bound::new(py, Step::from(s))?)?;
    }
    Ok(list)
}

fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> PyResult<T> {
    serde_json::from_str(text)
        .map_err(|e| PyValueError::new_err(format!("unexpected response from the engine: {e}")))
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
        let page: ClaimPage = parse(&out)?;
        Ok((steps_list(py, page.steps)?, page.next_ready_at))
    }

    /// Records results with `complete_steps`: `items` are `(step_id, claim_token,
    /// result_json)`; with `claim_json` the same transaction claims the next steps.
    /// Returns `(completed, refused, steps)` where `refused` lists
    /// `(step_id, code, message)` of items the engine did not record.
    #[pyo3(signature = (items, claim_json=None))]
    fn complete_steps<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyList>,
        claim_json: Option<&str>,
    ) -> PyResult<(usize, Vec<Refused>, Bound<'py, PyList>)> {
        let mut req = String::with_capacity(32 + items.len() * 96);
        req.push_str("{\"items\":[");
        for (i, item) in items.iter().enumerate() {
            let t = item.cast::<PyTuple>()?;
            let (step_id, token, result): (i64, String, String) = t.extract()?;
            // The result is JSON text made by `encode`; checking it here keeps a bad
            // item from failing the whole batch.
            let raw: &RawValue = serde_json::from_str(&result)
                .map_err(|e| PyValueError::new_err(format!("result is not JSON: {e}")))?;
            if i > 0 {
                req.push(',');
            }
            req.push_str("{\"step_id\":");
            req.push_str(&step_id.to_string());
            req.push_str(",\"claim_token\":");
            req.push_str(&serde_json::to_string(&token).unwrap_or_default());
            req.push_str(",\"result\":");
            req.push_str(raw.get());
            req.push('}');
        }
        req.push(']');
        if let Some(c) = claim_json {
            req.push_str(",\"claim\":");
            req.push_str(c);
        }
        req.push('}');
        let out = self.run(py, "complete_steps", &req)?;
        let page: CompletePage = parse(&out)?;
        let mut ok = 0;
        let mut refused = Vec::new();
        for r in page.results {
            if r.ok {
                ok += 1;
            } else {
                let e = r.error.unwrap_or(ItemError {
                    code: "internal".into(),
                    message: "refused without an error".into(),
                });
                refused.push((r.step_id, e.code, e.message));
            }
        }
        Ok((ok, refused, steps_list(py, page.steps)?))
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
