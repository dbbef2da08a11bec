//! The worker session calls, shaped for the Python driver (`tasker/worker.py`): steps
//! come back as `Step` objects, stop signals and report results as tuples, and the
//! outcomes go out as one request text built here. The GIL is released during every
//! call, so handlers on other threads run while a call waits or commits.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use serde::Deserialize;

use crate::handle::Handle;
use crate::step::{ClaimedStep, Step};

#[derive(Deserialize)]
struct StopItem {
    step_id: i64,
    reason: String,
}

#[derive(Deserialize)]
struct ItemResult {
    outcome: String,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    steps: Vec<ClaimedStep>,
    #[serde(default)]
    stop: Vec<StopItem>,
    #[serde(default)]
    idle: bool,
    #[serde(default)]
    results: Vec<ItemResult>,
}

/// `(steps, stops, idle)`: the claimed `Step`s, `(step_id, reason)` stop signals, and
/// whether the session is idle.
pub(crate) type NextPage<'py> = (Bound<'py, PyList>, Vec<(i64, String)>, bool);

/// `(completed, failed, released, lost)` of a report, then the next steps and stops.
pub(crate) type ReportPage<'py> = ((u32, u32, u32, u32), Bound<'py, PyList>, Vec<(i64, String)>);

#[derive(Deserialize)]
struct ClaimPage {
    steps: Vec<ClaimedStep>,
    #[serde(default)]
    next_ready_at: Option<String>,
}

/// A `claim` response as `(steps, next_ready_at)`.
pub(crate) fn claim_page<'py>(
    py: Python<'py>,
    text: &str,
) -> PyResult<(Bound<'py, PyList>, Option<String>)> {
    let page: ClaimPage = serde_json::from_str(text)
        .map_err(|e| PyValueError::new_err(format!("unexpected response from the engine: {e}")))?;
    Ok((steps_list(py, page.steps)?, page.next_ready_at))
}

fn parse(text: &str) -> PyResult<Page> {
    serde_json::from_str(text)
        .map_err(|e| PyValueError::new_err(format!("unexpected response from the engine: {e}")))
}

fn steps_list<'py>(py: Python<'py>, steps: Vec<ClaimedStep>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for s in steps {
        list.append(Bound::new(py, Step::from(s))?)?;
    }
    Ok(list)
}

fn stops(page: &mut Page) -> Vec<(i64, String)> {
    page.stop.drain(..).map(|s| (s.step_id, s.reason)).collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Handle {
    /// `worker_next`: claims up to `max` steps for session `worker_id`, waiting up to
    /// `wait_ms`; returns `(steps, stops, idle)`.
    pub(crate) fn session_next<'py>(
        &self,
        py: Python<'py>,
        worker_id: &str,
        max: u32,
        wait_ms: u64,
    ) -> PyResult<NextPage<'py>> {
        let req = format!(
            "{{\"worker_id\":{},\"max\":{max},\"wait_ms\":{wait_ms}}}",
            json_str(worker_id)
        );
        let mut page = parse(&self.run(py, "worker_next", &req)?)?;
        let stop = stops(&mut page);
        Ok((steps_list(py, page.steps)?, stop, page.idle))
    }

    /// `worker_report`: `outcomes` are `(step_id, kind, text)` with kind `result`
    /// (text: the result as JSON), `error` (text: the error document as JSON),
    /// `invalid_result` (text: why the result is not JSON) or `release`. With
    /// `next_max` the same round trip claims up to that many steps.
    pub(crate) fn session_report<'py>(
        &self,
        py: Python<'py>,
        worker_id: &str,
        outcomes: &Bound<'py, PyList>,
        next_max: Option<u32>,
    ) -> PyResult<ReportPage<'py>> {
        let mut req = String::with_capacity(64 + outcomes.len() * 64);
        req.push_str("{\"worker_id\":");
        req.push_str(&json_str(worker_id));
        req.push_str(",\"outcomes\":[");
        for (i, item) in outcomes.iter().enumerate() {
            let t = item.cast::<PyTuple>()?;
            let (step_id, kind, text): (i64, String, String) = t.extract()?;
            if i > 0 {
                req.push(',');
            }
            req.push_str("{\"step_id\":");
            req.push_str(&step_id.to_string());
            match kind.as_str() {
                "result" | "error" => {
                    // JSON text made by `encode`; checked so one bad item cannot
                    // spoil the request.
                    let raw: &serde_json::value::RawValue = serde_json::from_str(&text)
                        .map_err(|e| PyValueError::new_err(format!("{kind} is not JSON: {e}")))?;
                    req.push_str(if kind == "result" {
                        ",\"result\":"
                    } else {
                        ",\"error\":"
                    });
                    req.push_str(raw.get());
                }
                "invalid_result" => {
                    req.push_str(",\"invalid_result\":");
                    req.push_str(&json_str(&text));
                }
                "release" => req.push_str(",\"release\":true"),
                "wait_for_children" => req.push_str(",\"wait_for_children\":true"),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "unknown outcome kind `{other}`"
                    )))
                }
            }
            req.push('}');
        }
        req.push(']');
        if let Some(n) = next_max {
            req.push_str(&format!(",\"next\":{{\"max\":{n}}}"));
        }
        req.push('}');
        let mut page = parse(&self.run(py, "worker_report", &req)?)?;
        let mut counts = (0, 0, 0, 0);
        for r in &page.results {
            match r.outcome.as_str() {
                "completed" | "waiting" => counts.0 += 1,
                "failed" => counts.1 += 1,
                "released" => counts.2 += 1,
                _ => counts.3 += 1,
            }
        }
        let stop = stops(&mut page);
        Ok((counts, steps_list(py, page.steps)?, stop))
    }
}

/// Takes up to `max` log records the engine wrote since the last call, as
/// `(level, target, message)` (see `tasker_core::logs`).
#[pyfunction]
pub fn drain_logs(max: usize) -> Vec<(&'static str, String, String)> {
    tasker_core::logs::drain(max)
        .into_iter()
        .map(|r| (r.level, r.target, r.message))
        .collect()
}
