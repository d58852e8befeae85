//! `opsconductor._native`: the Rust half of the `opsconductor` Python module.
//!
//! Conversion glue only. Python calls land on [`conductor::PyConductor`] and
//! [`run::PyRun`], which convert arguments, call the core engine on a tokio
//! runtime owned by the Python `Conductor` (with the GIL released), and
//! convert the answers: data becomes the dataclasses of
//! `opsconductor/_types.py`, errors the exceptions of
//! `opsconductor/_errors.py` (one class per `ErrorKind`). Every rule — file
//! format, validation, scheduling, execution, masking — lives in the core.
//!
//! The Python half (`python/opsconductor/`) holds those dataclasses and
//! exceptions, the step builders and the type stubs. Build with maturin
//! (`pyproject.toml`); `scripts/test.sh` builds the wheel, installs it in a
//! fresh virtualenv and runs the pytest suite and mypy.

use pyo3::prelude::*;

mod conductor;
mod convert;
mod engine;
mod errors;
mod run;

/// Opens the store at `url` and builds an engine with `keyring` and every
/// executor compiled into this module. Like `opsconductor::builder`, minus
/// its key lookup: an explicit key must not create a key file.
pub(crate) async fn builder_with_keyring(
    url: &str,
    keyring: opsconductor::secrets::Keyring,
) -> opsconductor::Result<opsconductor::ConductorBuilder> {
    // The facade's registration: SSH known_hosts and the Docker engine come
    // from the same environment variables as for the CLI and the server.
    opsconductor::builder_with_keyring(url, Some(keyring)).await
}

/// The optional parts compiled into this build (stores and executors).
const FEATURES: &[&str] = &[
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "local")]
    "local",
    #[cfg(feature = "ssh")]
    "ssh",
    #[cfg(feature = "docker")]
    "docker",
    #[cfg(feature = "winrm")]
    "winrm",
];

/// The extension module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The asyncio bridge's own runtime only awaits tasks that run on each
    // Conductor's runtime, so one thread is plenty.
    let mut bridge = tokio::runtime::Builder::new_multi_thread();
    bridge
        .worker_threads(1)
        .thread_name("opsconductor-asyncio")
        .enable_all();
    pyo3_async_runtimes::tokio::init(bridge);

    m.add_class::<conductor::PyConductor>()?;
    m.add_class::<run::PyRun>()?;
    m.add_class::<run::LogIterator>()?;
    m.add_class::<run::AsyncLogIterator>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_DATABASE_URL", opsconductor::DEFAULT_DATABASE_URL)?;
    m.add("FEATURES", FEATURES.to_vec())?;
    Ok(())
}
