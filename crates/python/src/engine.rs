//! The engine handle behind a Python `Conductor`: the core `Conductor` and the
//! tokio runtime it runs on, owned by the Python object, and the ways Python
//! calls into it — briefly with the GIL released, or for as long as a run
//! takes while still answering Ctrl-C.

use std::future::Future;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use opsconductor::{Actor, Conductor};
use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::errors::{self, IntoPyResult};

/// How often a long wait wakes up to let Python handle signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// A running engine. Shared by the `Conductor` and the `Run`s it returns.
pub(crate) struct Engine {
    /// `None` once closed. Read-locked while a call runs on it, so `close`
    /// waits for calls in flight (every call holds it for a bounded time).
    rt: RwLock<Option<Runtime>>,
    handle: Handle,
    /// The core engine.
    pub(crate) oc: Conductor,
    /// Who this process acts as (recorded on runs and in the audit log).
    pub(crate) actor: Actor,
    /// Background workers started (0: runs execute in the caller's process on `wait`).
    pub(crate) workers: usize,
    /// The database URL as given.
    pub(crate) url: String,
}

/// How a long wait ended without a result.
pub(crate) enum Stop {
    /// A signal handler raised (usually `KeyboardInterrupt`).
    Signal(PyErr),
    /// The caller's deadline passed.
    Timeout,
}

impl Engine {
    /// Starts a runtime, opens the store and builds the engine on it.
    pub(crate) fn open(
        py: Python<'_>,
        url: String,
        master_key: Option<String>,
        workers: usize,
        actor: Actor,
    ) -> PyResult<(Self, Option<String>)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("opsconductor")
            .build()
            .map_err(|e| errors::internal(format!("cannot start the engine's runtime: {e}")))?;
        let built = py.detach(|| {
            rt.block_on(async {
                let (builder, notice) = match master_key {
                    // An explicit key: do not look for (or generate) a key file.
                    Some(key) => {
                        let keyring = opsconductor::secrets::Keyring::from_env_value(&key)
                            .map_err(|e| match e {
                                opsconductor::Error::Validation { message, .. } => {
                                    opsconductor::Error::validation("master_key", message)
                                }
                                other => other,
                            })?;
                        (crate::builder_with_keyring(&url, keyring).await?, None)
                    }
                    None => opsconductor::builder_with_notice(&url).await?,
                };
                let oc = builder.workers(workers).build().await?;
                Ok::<_, opsconductor::Error>((oc, notice))
            })
        });
        let (oc, notice) = match built {
            Ok(b) => b,
            Err(e) => {
                rt.shutdown_background();
                return Err(errors::to_py(py, &e));
            }
        };
        let handle = rt.handle().clone();
        Ok((
            Self {
                rt: RwLock::new(Some(rt)),
                handle,
                oc,
                actor,
                workers,
                url,
            },
            notice,
        ))
    }

    /// True once closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.rt
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Runs a short engine call to completion with the GIL released.
    pub(crate) fn block<T, F>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = opsconductor::Result<T>> + Send,
        T: Send,
    {
        let out = py.detach(|| {
            let guard = self.rt.read().unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().map(|rt| rt.block_on(fut))
        });
        match out {
            None => Err(errors::closed(py)),
            Some(r) => r.py(py),
        }
    }

    /// Starts `fut` on the engine's runtime.
    pub(crate) fn spawn<T, F>(&self, py: Python<'_>, fut: F) -> PyResult<JoinHandle<T>>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        if self.is_closed() {
            return Err(errors::closed(py));
        }
        Ok(self.handle.spawn(fut))
    }

    /// Waits for a task, with the GIL released, waking every 100 ms to let
    /// Python run signal handlers: Ctrl-C interrupts the wait cleanly (the
    /// task goes on; the caller decides what to do with it).
    pub(crate) fn wait_task<T: Send>(
        &self,
        py: Python<'_>,
        task: &mut JoinHandle<T>,
        deadline: Option<Instant>,
    ) -> PyResult<Result<T, Stop>> {
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SIGNAL_POLL),
                None => SIGNAL_POLL,
            };
            let polled = py.detach(|| {
                let guard = self.rt.read().unwrap_or_else(PoisonError::into_inner);
                guard
                    .as_ref()
                    .map(|rt| rt.block_on(async { tokio::time::timeout(slice, &mut *task).await }))
            });
            match polled {
                None => return Err(errors::closed(py)),
                Some(Ok(Ok(v))) => return Ok(Ok(v)),
                Some(Ok(Err(join))) => {
                    return Err(if join.is_cancelled() {
                        errors::closed(py)
                    } else {
                        errors::internal(format!("an engine task failed: {join}"))
                    });
                }
                Some(Err(_elapsed)) => {
                    if let Err(e) = py.check_signals() {
                        return Ok(Err(Stop::Signal(e)));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Err(Stop::Timeout));
                    }
                }
            }
        }
    }

    /// Receives the next item from a channel fed by an engine task, with
    /// the GIL released and Ctrl-C honoured like [`Engine::wait_task`].
    /// `Ok(None)` once the channel is closed and empty.
    pub(crate) fn recv<T: Send>(
        &self,
        py: Python<'_>,
        rx: &tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>,
    ) -> PyResult<Result<Option<T>, Stop>> {
        loop {
            let polled = py.detach(|| {
                let guard = self.rt.read().unwrap_or_else(PoisonError::into_inner);
                guard.as_ref().map(|rt| {
                    rt.block_on(async {
                        // `recv` is cancel-safe: a timeout loses no item.
                        tokio::time::timeout(SIGNAL_POLL, async { rx.lock().await.recv().await })
                            .await
                    })
                })
            });
            match polled {
                None => return Err(errors::closed(py)),
                Some(Ok(item)) => return Ok(Ok(item)),
                Some(Err(_elapsed)) => {
                    if let Err(e) = py.check_signals() {
                        return Ok(Err(Stop::Signal(e)));
                    }
                }
            }
        }
    }

    /// The runtime's handle, for futures handed to asyncio (they spawn their
    /// work here; the handle does not keep a closed engine alive).
    pub(crate) fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops the workers (waiting for the runs in progress to end), then the
    /// runtime. A Ctrl-C while waiting stops at once instead; runs cut short
    /// that way are rescued by the next worker once their lease expires.
    pub(crate) fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.is_closed() {
            return Ok(());
        }
        let oc = self.oc.clone();
        let mut task = self.spawn(py, async move { oc.shutdown().await })?;
        let waited = self.wait_task(py, &mut task, None);
        let rt = self
            .rt
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rt) = rt {
            py.detach(|| rt.shutdown_timeout(Duration::from_secs(2)));
        }
        match waited? {
            Ok(()) => Ok(()),
            Err(Stop::Signal(e)) => Err(e),
            Err(Stop::Timeout) => Ok(()),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Not closed explicitly: stop without waiting. This may run on any
        // thread, even inside another runtime, where only a background
        // shutdown is allowed.
        if let Some(rt) = self
            .rt
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
    }
}
