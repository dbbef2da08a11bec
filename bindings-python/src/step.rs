//! The step object handlers receive, built straight from a claim response. Context,
//! config and parent results stay JSON text until a handler first reads them, so a
//! handler that does not look at them costs no conversion.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::decode;

/// One claimed step as the claim response gives it.
#[derive(Deserialize)]
pub struct ClaimedStep {
    step_id: i64,
    task_id: i64,
    step_name: String,
    handler: String,
    claim_token: String,
    attempt: i64,
    max_attempts: i64,
    #[serde(default)]
    timeout_ms: Option<i64>,
    #[serde(default)]
    lease_expires_at: Option<String>,
    #[serde(default)]
    context: Option<Box<RawValue>>,
    #[serde(default)]
    config: Option<Box<RawValue>>,
    #[serde(default)]
    results: Option<Box<RawValue>>,
}

/// Makes `step.logger` (a `logging.LoggerAdapter` carrying the step's ids); set by the
/// package at import.
static LOGGER_FACTORY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pyfunction]
pub fn _set_logger_factory(py: Python<'_>, factory: Py<PyAny>) {
    let _ = LOGGER_FACTORY.set(py, factory);
}

/// A claimed step, handed to a handler.
#[pyclass(frozen, module = "tasker._native")]
pub struct Step {
    /// The step's id.
    #[pyo3(get)]
    step_id: i64,
    /// The id of the task the step belongs to.
    #[pyo3(get)]
    task_id: i64,
    /// The step's name in its template.
    #[pyo3(get)]
    step_name: String,
    /// The handler name the step was claimed for.
    #[pyo3(get)]
    handler: String,
    /// The token that proves this claim; reports must present it.
    #[pyo3(get)]
    claim_token: String,
    /// 1 on the first attempt (counted since the last operator retry).
    #[pyo3(get)]
    attempt: i64,
    /// The step's retry budget.
    #[pyo3(get)]
    max_attempts: i64,
    /// The step's timeout in milliseconds.
    #[pyo3(get)]
    timeout_ms: Option<i64>,
    /// When the lease runs out unless renewed (RFC 3339).
    #[pyo3(get)]
    lease_expires_at: Option<String>,
    context_raw: Option<Box<RawValue>>,
    config_raw: Option<Box<RawValue>>,
    results_raw: Option<Box<RawValue>>,
    context: PyOnceLock<Py<PyAny>>,
    config: PyOnceLock<Py<PyAny>>,
    results: PyOnceLock<Py<PyAny>>,
    logger: PyOnceLock<Py<PyAny>>,
    cancelled: PyOnceLock<Py<PyAny>>,
    /// The `tasker.Tasker` of the worker that claimed the step (for `start_child`).
    client: PyOnceLock<Py<PyAny>>,
}

impl From<ClaimedStep> for Step {
    fn from(c: ClaimedStep) -> Step {
        Step {
            step_id: c.step_id,
            task_id: c.task_id,
            step_name: c.step_name,
            handler: c.handler,
            claim_token: c.claim_token,
            attempt: c.attempt,
            max_attempts: c.max_attempts,
            timeout_ms: c.timeout_ms,
            lease_expires_at: c.lease_expires_at,
            context_raw: c.context,
            config_raw: c.config,
            results_raw: c.results,
            context: PyOnceLock::new(),
            config: PyOnceLock::new(),
            results: PyOnceLock::new(),
            logger: PyOnceLock::new(),
            cancelled: PyOnceLock::new(),
            client: PyOnceLock::new(),
        }
    }
}

fn lazy(
    py: Python<'_>,
    cell: &PyOnceLock<Py<PyAny>>,
    raw: &Option<Box<RawValue>>,
    absent: &str,
) -> PyResult<Py<PyAny>> {
    cell.get_or_try_init(py, || {
        let text = raw.as_ref().map(|r| r.get()).unwrap_or(absent);
        decode(py, text).map(Bound::unbind)
    })
    .map(|v| v.clone_ref(py))
}

#[pymethods]
impl Step {
    /// The task's context (its input), as given to `create_task`.
    #[getter]
    fn context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        lazy(py, &self.context, &self.context_raw, "null")
    }

    /// The step's `config` from the template (None when it has none).
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        lazy(py, &self.config, &self.config_raw, "null")
    }

    /// The results of the step's parents, by step name.
    #[getter]
    fn results(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        lazy(py, &self.results, &self.results_raw, "{}")
    }

    /// A `logging.LoggerAdapter` (logger `tasker.handler`) that adds the task id, step
    /// name and attempt to every record.
    #[getter]
    fn logger(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.logger
            .get_or_try_init(py, || match LOGGER_FACTORY.get(py) {
                Some(f) => f.call1(py, (slf,)),
                None => Ok(py
                    .import("logging")?
                    .call_method1("getLogger", ("tasker.handler",))?
                    .unbind()),
            })
            .map(|v| v.clone_ref(py))
    }

    /// A `threading.Event` the worker sets when this run should stop: the task was
    /// cancelled, the step's timeout passed, or its lease was taken back. A long
    /// handler checks `step.cancelled.is_set()` (or waits on it) and returns early;
    /// whatever it returns then is not recorded.
    #[getter]
    fn cancelled(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.cancelled
            .get_or_try_init(py, || {
                Ok::<_, PyErr>(py.import("threading")?.call_method0("Event")?.unbind())
            })
            .map(|v| v.clone_ref(py))
    }

    /// Binds the step to the client its worker claimed it with (done by the worker).
    fn _attach(&self, py: Python<'_>, client: Py<PyAny>) {
        let _ = self.client.set(py, client);
    }

    /// Starts a child task of this step (`create_task` with `parent`): `key` names the
    /// child among this step's children, so a retried handler that starts it again gets
    /// the same task back. Returns the child task's id. Return
    /// `tasker.wait_for_children()` to have the step wait for its children.
    #[pyo3(signature = (namespace, name, context=None, *, key, version=None, priority=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_child(
        &self,
        py: Python<'_>,
        namespace: &str,
        name: &str,
        context: Option<Py<PyAny>>,
        key: &str,
        version: Option<&str>,
        priority: Option<i64>,
    ) -> PyResult<i64> {
        let Some(client) = self.client.get(py) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "start_child needs a step a tasker.Worker handed to its handler",
            ));
        };
        let req = pyo3::types::PyDict::new(py);
        req.set_item("namespace", namespace)?;
        req.set_item("name", name)?;
        if let Some(c) = context {
            req.set_item("context", c)?;
        }
        req.set_item("idempotency_key", key)?;
        if let Some(v) = version {
            req.set_item("version", v)?;
        }
        if let Some(p) = priority {
            req.set_item("priority", p)?;
        }
        let parent = pyo3::types::PyDict::new(py);
        parent.set_item("step_id", self.step_id)?;
        parent.set_item("claim_token", &self.claim_token)?;
        req.set_item("parent", parent)?;
        let out = client.call_method1(py, "call", ("create_task", req))?;
        out.bind(py).get_item("task_id")?.extract()
    }

    fn __repr__(&self) -> String {
        format!(
            "Step(task_id={}, step_name={:?}, step_id={}, attempt={})",
            self.task_id, self.step_name, self.step_id, self.attempt
        )
    }
}
