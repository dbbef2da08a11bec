//! `tasker._native`: the native half of the Python package `tasker`. It links
//! `tasker-core` directly (not the C ABI) and keeps the per-call path lean: requests
//! and responses convert between Python objects and JSON text in Rust, and the GIL is
//! released during every engine call. The Python half (`python/tasker`) adds the
//! documented API, the exception classes and the worker.

use pyo3::prelude::*;

mod convert;
mod errors;
mod handle;
mod step;
mod worker;

/// The version of tasker-core this module was built with.
#[pyfunction]
fn version() -> &'static str {
    tasker_core::VERSION
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::Subscription>()?;
    m.add_class::<step::Step>()?;
    m.add_function(wrap_pyfunction!(handle::to_json, m)?)?;
    m.add_function(wrap_pyfunction!(handle::from_json, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(worker::drain_logs, m)?)?;
    tasker_core::logs::capture();
    m.add_function(wrap_pyfunction!(errors::_set_error_classes, m)?)?;
    m.add_function(wrap_pyfunction!(step::_set_logger_factory, m)?)?;
    Ok(())
}
