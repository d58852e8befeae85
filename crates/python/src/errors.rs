//! The engine's errors as Python exceptions: each `ErrorKind` maps to exactly
//! one class of `opsconductor._errors`, with the engine's message unchanged.

use opsconductor::{Error, ErrorKind};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Builds an instance of `opsconductor._errors.<class>` as a `PyErr`.
fn make(py: Python<'_>, class: &str, message: &str, extra: &[(&str, Option<&str>)]) -> PyErr {
    let built = (|| -> PyResult<PyErr> {
        let cls = py.import("opsconductor._errors")?.getattr(class)?;
        let kwargs = PyDict::new(py);
        for (k, v) in extra {
            kwargs.set_item(*k, *v)?;
        }
        Ok(PyErr::from_value(cls.call((message,), Some(&kwargs))?))
    })();
    // If the package's Python half is missing, still say what went wrong.
    built.unwrap_or_else(|e| {
        PyRuntimeError::new_err(format!("{message} (and opsconductor._errors failed: {e})"))
    })
}

/// The Python exception for an engine error.
pub(crate) fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    let text = e.to_string();
    match e {
        Error::Validation { field, message } => make(
            py,
            "ValidationError",
            message,
            &[("field", field.as_deref())],
        ),
        Error::NotFound { what, name, .. } => make(
            py,
            "NotFound",
            &text,
            &[("what", Some(what)), ("name", Some(name))],
        ),
        _ => {
            let class = match e.kind() {
                ErrorKind::Conflict => "Conflict",
                ErrorKind::Forbidden => "PermissionDenied",
                ErrorKind::Unauthenticated => "Unauthenticated",
                ErrorKind::Store => "StoreError",
                ErrorKind::Executor => "ExecutionError",
                ErrorKind::Validation => "ValidationError",
                ErrorKind::NotFound => "NotFound",
                _ => "OpsConductorError",
            };
            make(py, class, &text, &[])
        }
    }
}

/// Converts engine results at the edge.
pub(crate) trait IntoPyResult<T> {
    /// The value, or the engine error as its Python exception.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, &e))
    }
}

/// A `ValidationError` about `field`, raised by the glue itself (argument checks).
pub(crate) fn validation(field: &str, message: &str) -> PyErr {
    Python::attach(|py| make(py, "ValidationError", message, &[("field", Some(field))]))
}

/// An `ExecutionError` about a run that did not succeed.
pub(crate) fn run_failed(py: Python<'_>, run_id: &str, status: &str, why: Option<&str>) -> PyErr {
    let message = match why {
        Some(w) => format!("run {run_id} {status}: {w}"),
        None => format!("run {run_id} {status}"),
    };
    make(
        py,
        "ExecutionError",
        &message,
        &[("run_id", Some(run_id)), ("status", Some(status))],
    )
}

/// `OpsConductorError` for a closed `Conductor`.
pub(crate) fn closed(py: Python<'_>) -> PyErr {
    make(
        py,
        "OpsConductorError",
        "this Conductor is closed (open a new one)",
        &[],
    )
}

/// `OpsConductorError` for an unexpected condition in the glue.
pub(crate) fn internal(message: String) -> PyErr {
    Python::attach(|py| {
        make(
            py,
            "OpsConductorError",
            &format!("internal error: {message}"),
            &[],
        )
    })
}
