//! Conversions between Python objects and the engine's data: JSON values,
//! durations, target selectors, and the dataclasses of `opsconductor._types`.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyModule, PyString, PyTuple, PyType};
use serde_json::{Map, Number, Value};

/// `opsconductor._types`, imported once.
pub(crate) fn types(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static TYPES: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    TYPES
        .get_or_try_init(py, || py.import("opsconductor._types").map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// Calls `opsconductor._types.<func>(value, *extra)` to build a dataclass
/// from the engine's JSON form of it.
pub(crate) fn build<'py>(
    py: Python<'py>,
    func: &str,
    value: &Value,
) -> PyResult<Bound<'py, PyAny>> {
    let arg = to_py(py, value)?;
    types(py)?.getattr(func)?.call1((arg,))
}

/// Serializes `data` and builds a dataclass from it with `func`.
pub(crate) fn build_from<'py, T: serde::Serialize>(
    py: Python<'py>,
    func: &str,
    data: &T,
) -> PyResult<Bound<'py, PyAny>> {
    build(py, func, &json(data)?)
}

/// The JSON form of an engine value.
pub(crate) fn json<T: serde::Serialize>(data: &T) -> PyResult<Value> {
    serde_json::to_value(data).map_err(|e| {
        crate::errors::internal(format!("cannot convert the engine's data to Python: {e}"))
    })
}

/// A JSON value as plain Python objects (dict, list, str, int, float, bool, None).
pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// A Python value as JSON: `None`, bool, int, float, str, mappings with
/// string keys, lists and tuples, and path-like objects (as strings).
/// `at` names the place in errors (`params.count`).
pub(crate) fn from_py(obj: &Bound<'_, PyAny>, at: &str) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        return Err(PyValueError::new_err(format!(
            "{at}: the integer {obj} is too large (64 bits at most)"
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{at}: {obj} is not a JSON number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return mapping(d.items().iter(), at);
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut out = Vec::new();
        for (i, item) in obj.try_iter()?.enumerate() {
            out.push(from_py(&item?, &format!("{at}[{i}]"))?);
        }
        return Ok(Value::Array(out));
    }
    // Other mappings (e.g. MappingProxyType, OrderedDict subclasses handled above).
    if obj.hasattr("items")? && obj.hasattr("keys")? {
        let items = obj.call_method0("items")?;
        let items: Vec<Bound<'_, PyAny>> = items.try_iter()?.collect::<PyResult<_>>()?;
        return mapping(items.into_iter(), at);
    }
    if let Ok(path) = fspath(obj) {
        return Ok(Value::String(path));
    }
    Err(PyTypeError::new_err(format!(
        "{at}: cannot use a {} here (expected None, bool, int, float, str, dict or list)",
        obj.get_type().name()?
    )))
}

fn mapping<'py>(items: impl Iterator<Item = Bound<'py, PyAny>>, at: &str) -> PyResult<Value> {
    let mut map = Map::new();
    for pair in items {
        let (k, v): (Bound<'py, PyAny>, Bound<'py, PyAny>) = pair.extract()?;
        let key: String = k.extract().map_err(|_| {
            PyTypeError::new_err(format!("{at}: mapping keys must be strings, not {k:?}"))
        })?;
        let value = from_py(&v, &format!("{at}.{key}"))?;
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// `os.fspath(obj)` for `str` and `os.PathLike` objects, as a string.
pub(crate) fn fspath(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let os = obj.py().import("os")?;
    let p = os.getattr("fspath")?.call1((obj,))?;
    p.extract::<String>()
        .map_err(|_| PyTypeError::new_err("paths must be text, not bytes"))
}

/// True for `os.PathLike` objects (e.g. `pathlib.Path`), which are not `str`.
pub(crate) fn is_pathlike(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    static PATHLIKE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let cls = PATHLIKE.import(obj.py(), "os", "PathLike")?;
    obj.is_instance(cls)
}

/// A time limit: `None`, seconds (int or float), a `timedelta`, or a string
/// in the job-file syntax (`"30s"`, `"1h30m"`, `"500ms"`). At most the
/// core's maximum time limit (7 days); NaN, infinities, negative and huge
/// values are a `ValidationError` (a `ValueError`), never a panic.
pub(crate) fn duration(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Duration>> {
    use opsconductor::duration::{MAX_TIMEOUT, format, from_secs_f64, parse};
    let Some(obj) = obj else { return Ok(None) };
    if obj.is_none() {
        return Ok(None);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let d = parse(&s.to_cow()?).map_err(|m| crate::errors::validation(what, &m))?;
        if d > MAX_TIMEOUT {
            return Err(crate::errors::validation(
                what,
                &format!(
                    "{} is longer than the maximum time limit of {}",
                    format(d),
                    format(MAX_TIMEOUT)
                ),
            ));
        }
        return Ok(Some(d));
    }
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what}: a time limit cannot be a bool"
        )));
    }
    let secs: f64 = if obj.hasattr("total_seconds")? {
        obj.call_method0("total_seconds")?.extract()?
    } else if obj.is_instance_of::<pyo3::types::PyInt>() {
        // An int too large for a float is too large for a time limit.
        obj.extract().unwrap_or(f64::INFINITY)
    } else {
        obj.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{what}: expected seconds, a timedelta or a string like \"30s\""
            ))
        })?
    };
    from_secs_f64(secs, MAX_TIMEOUT)
        .map(Some)
        .map_err(|m| crate::errors::validation(what, &m))
}

/// A target selector: a string (`"web-*,!web-3"`, `"tag:web"`) or a list of them.
pub(crate) fn selector(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(vec![s.to_cow()?.into_owned()]);
    }
    let mut out = Vec::new();
    for item in obj.try_iter().map_err(|_| {
        PyTypeError::new_err("targets: expected a selector string or a list of them")
    })? {
        let item = item?;
        out.push(
            item.extract::<String>()
                .map_err(|_| PyTypeError::new_err("targets: every selector must be a string"))?,
        );
    }
    Ok(out)
}
