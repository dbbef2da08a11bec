//! Engine errors become instances of the Python exception classes `tasker` defines
//! (`tasker.TaskerError` and one subclass per code). The package hands its classes over
//! once at import with `_set_error_classes`, so the native module raises them directly.

use std::collections::HashMap;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use tasker_core::{Error, ErrorCode};

struct Classes {
    base: Py<PyAny>,
    by_code: HashMap<ErrorCode, Py<PyAny>>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// Registers the exception classes: `base(code, message, details)` and a dict from code
/// string to subclass. Every code of the engine must have a class.
#[pyfunction]
pub fn _set_error_classes(
    py: Python<'_>,
    base: Py<PyAny>,
    by_code: &Bound<'_, PyDict>,
) -> PyResult<()> {
    let mut map = HashMap::new();
    for code in ErrorCode::ALL {
        let cls = by_code.get_item(code.as_str())?.ok_or_else(|| {
            PyRuntimeError::new_err(format!("no exception class for error code `{code}`"))
        })?;
        map.insert(code, cls.unbind());
    }
    // A second import of the package (importlib.reload) keeps the first classes.
    let _ = CLASSES.set(py, Classes { base, by_code: map });
    Ok(())
}

/// The Python exception for an engine error.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let Some(classes) = CLASSES.get(py) else {
        return PyRuntimeError::new_err(e.to_json());
    };
    let cls = classes.by_code.get(&e.code).unwrap_or(&classes.base);
    let details = match &e.details {
        Some(d) => match crate::convert::decode(py, &d.to_string()) {
            Ok(v) => v,
            Err(err) => return err,
        },
        None => py.None().into_bound(py),
    };
    match cls.bind(py).call1((e.code.as_str(), e.message, details)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}
