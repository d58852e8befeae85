//! `Run`: a handle on one run (status and results read fresh from the store,
//! waiting, cancelling), and its live output as line iterators, blocking and
//! asyncio.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use opsconductor::{LineSplitter, RunDetail, RunId, RunStatus, Stream};
use pyo3::exceptions::{PyStopAsyncIteration, PyTimeoutError};
use pyo3::prelude::*;
use tokio::sync::mpsc;

use crate::convert;
use crate::engine::{Engine, Stop};
use crate::errors::{self, IntoPyResult};

/// How long `run(..., wait=True)` waits for a run it cancelled after a Ctrl-C.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// One run. Cheap: holds the engine and what never changes about the run;
/// everything that changes is read fresh on each access.
#[pyclass(name = "Run", module = "opsconductor._native", frozen)]
pub(crate) struct PyRun {
    engine: Arc<Engine>,
    run: opsconductor::Run,
}

impl PyRun {
    pub(crate) fn new(engine: Arc<Engine>, run: opsconductor::Run) -> Self {
        Self { engine, run }
    }

    fn fetch(&self, py: Python<'_>) -> PyResult<RunDetail> {
        self.engine
            .block(py, self.engine.oc.run(self.run.id, &self.engine.actor))
    }

    /// Waits for the run to end and returns it. With no background workers
    /// the run is executed here (if nobody has claimed it yet). On Ctrl-C,
    /// `cancel_on_interrupt` cancels the run (and waits briefly for it to
    /// stop) before the `KeyboardInterrupt` goes on.
    pub(crate) fn finish(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
        cancel_on_interrupt: bool,
    ) -> PyResult<opsconductor::Run> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let id = self.run.id;
        let oc = self.engine.oc.clone();
        let actor = self.engine.actor.clone();
        let in_process = self.engine.workers == 0;
        let mut task = self.engine.spawn(py, async move {
            if in_process {
                oc.execute(id).await
            } else {
                oc.wait(id, &actor).await
            }
        })?;
        match self.engine.wait_task(py, &mut task, deadline)? {
            Ok(r) => r.py(py),
            Err(stop) => {
                // A waiter is dropped; an in-process execution goes on in the
                // background (a later wait picks it up) unless cancelled below.
                if !in_process {
                    task.abort();
                }
                match stop {
                    Stop::Timeout => {
                        let status = self
                            .fetch(py)
                            .map(|d| d.run.status.as_str())
                            .unwrap_or("unfinished");
                        Err(PyTimeoutError::new_err(format!(
                            "run {id} is still {status} after {:.1}s",
                            timeout.unwrap_or_default().as_secs_f64()
                        )))
                    }
                    Stop::Signal(interrupt) => {
                        if cancel_on_interrupt {
                            self.engine
                                .block(py, self.engine.oc.cancel(id, &self.engine.actor))?;
                            if in_process {
                                // Let the cancellation reach the processes; a
                                // second Ctrl-C stops waiting at once.
                                let grace = Some(Instant::now() + CANCEL_GRACE);
                                let _ = self.engine.wait_task(py, &mut task, grace)?;
                            }
                        }
                        Err(interrupt)
                    }
                }
            }
        }
    }

    /// The final status, raising `ExecutionError` if `check` and it did not succeed.
    pub(crate) fn checked(
        py: Python<'_>,
        run: &opsconductor::Run,
        check: bool,
    ) -> PyResult<&'static str> {
        if check && run.status != RunStatus::Succeeded {
            return Err(errors::run_failed(
                py,
                &run.id.to_string(),
                run.status.as_str(),
                run.error.as_deref(),
            ));
        }
        Ok(run.status.as_str())
    }

    fn follow(&self, py: Python<'_>, after: u64) -> PyResult<Follower> {
        let (tx, rx) = mpsc::channel(256);
        let oc = self.engine.oc.clone();
        let id = self.run.id;
        let actor = self.engine.actor.clone();
        let task = self
            .engine
            .spawn(py, follow_lines(oc, actor, id, after, tx))?;
        Ok(Follower {
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            task: task.abort_handle(),
            closed: AtomicBool::new(false),
        })
    }
}

#[pymethods]
impl PyRun {
    /// The run's id (a UUID; runs sort by it in creation order).
    #[getter]
    fn id(&self) -> String {
        self.run.id.to_string()
    }

    /// The job's name (``exec`` for ad-hoc commands).
    #[getter]
    fn job(&self) -> &str {
        &self.run.job
    }

    /// The job version run (``None`` for ad-hoc commands).
    #[getter]
    fn job_version(&self) -> Option<u32> {
        self.run.job_version
    }

    /// The target names resolved when the run was submitted, in order.
    #[getter]
    fn targets(&self) -> Vec<String> {
        self.run.targets.clone()
    }

    /// The validated parameters (schema defaults filled in).
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::to_py(py, &self.run.params)
    }

    /// Who asked for the run.
    #[getter]
    fn requested_by(&self) -> &str {
        &self.run.requested_by
    }

    /// When the run was submitted (UTC).
    #[getter]
    fn created_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        time(py, &convert::json(&self.run.created_at)?)
    }

    /// The current status, read from the store: ``queued``, ``running``,
    /// ``succeeded``, ``failed``, ``cancelled`` or ``timed_out``.
    #[getter]
    fn status(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.fetch(py)?.run.status.as_str())
    }

    /// True once the run has ended (read from the store).
    #[getter]
    fn done(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.fetch(py)?.run.status.is_terminal())
    }

    /// Why the run ended badly, for people; ``None`` while running or if it succeeded.
    #[getter]
    fn error(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(self.fetch(py)?.run.error)
    }

    /// For a child run (started by a ``job:`` step of another run): a dict
    /// ``{"run": id, "step": index, "target": name}``; ``None`` otherwise.
    #[getter]
    fn parent<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::to_py(py, &convert::json(&self.run.parent)?)
    }

    /// The run's outputs by target: ``{target: {name: value}}``, each
    /// target's step outputs merged in step order (a later step's wins).
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = self.fetch(py)?;
        convert::to_py(py, &convert::json(&d.outputs())?)
    }

    /// When a worker first started it (``None`` while queued).
    #[getter]
    fn started_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = self.fetch(py)?;
        time(py, &convert::json(&d.run.started_at)?)
    }

    /// When it ended (``None`` until then).
    #[getter]
    fn finished_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = self.fetch(py)?;
        time(py, &convert::json(&d.run.finished_at)?)
    }

    /// The outcome of every step on every target so far (``StepResult``s,
    /// by step then target), read from the store.
    #[getter]
    fn results<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let d = self.fetch(py)?;
        let build = convert::types(py)?.getattr("_step_result_from_json")?;
        d.results
            .iter()
            .map(|r| {
                let name = usize::try_from(r.step)
                    .ok()
                    .and_then(|i| self.run.spec.step_at(i))
                    .map(|s| s.name.as_str())
                    .unwrap_or("");
                build.call1((convert::to_py(py, &convert::json(r)?)?, name))
            })
            .collect()
    }

    /// Waits until the run has ended and returns its final status.
    ///
    /// With ``workers=0`` the run is executed here, in this process, if no
    /// other worker has claimed it. ``timeout`` (seconds) raises
    /// ``TimeoutError`` if the run is still going then (the run goes on).
    /// ``check=True`` raises ``ExecutionError`` unless it succeeded. The GIL
    /// is released while waiting, and Ctrl-C interrupts the wait (the run
    /// goes on; call ``cancel()`` to stop it).
    #[pyo3(signature = (timeout = None, *, check = false))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
        check: bool,
    ) -> PyResult<&'static str> {
        let timeout = convert::duration(timeout, "timeout")?;
        let run = self.finish(py, timeout, false)?;
        Self::checked(py, &run, check)
    }

    /// Like ``wait()``, as an awaitable that does not block the event loop.
    #[pyo3(signature = (timeout = None, *, check = false))]
    fn wait_async<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
        check: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = convert::duration(timeout, "timeout")?;
        if self.engine.is_closed() {
            return Err(errors::closed(py));
        }
        let oc = self.engine.oc.clone();
        let actor = self.engine.actor.clone();
        let handle = self.engine.handle();
        let in_process = self.engine.workers == 0;
        let id = self.run.id;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let task = handle.spawn(async move {
                if in_process {
                    oc.execute(id).await
                } else {
                    oc.wait(id, &actor).await
                }
            });
            // A cancelled await stops a mere waiter, never an execution.
            let mut guard = AbortOnDrop(Some(task.abort_handle()).filter(|_| !in_process));
            let joined = match timeout {
                None => task.await,
                Some(t) => match tokio::time::timeout(t, task).await {
                    Ok(j) => j,
                    Err(_) => {
                        return Err(PyTimeoutError::new_err(format!(
                            "run {id} is still going after {:.1}s",
                            t.as_secs_f64()
                        )));
                    }
                },
            };
            guard.0 = None;
            let run = match joined {
                Ok(r) => r,
                Err(_) => return Err(Python::attach(errors::closed)),
            };
            Python::attach(|py| {
                let run = run.py(py)?;
                Self::checked(py, &run, check)
            })
        })
    }

    /// Asks the run to stop. A queued run is cancelled at once; a running
    /// one within moments (its processes are killed).
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.engine
            .block(py, self.engine.oc.cancel(self.run.id, &self.engine.actor))?;
        Ok(())
    }

    /// Approves this run, which waits for approval (never your own run;
    /// once per person). Returns the approval request with its decisions.
    #[pyo3(signature = (comment = None))]
    fn approve<'py>(
        &self,
        py: Python<'py>,
        comment: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = self.engine.block(
            py,
            self.engine
                .oc
                .approve(self.run.id, comment, &self.engine.actor),
        )?;
        convert::to_py(py, &convert::json(&v)?)
    }

    /// Rejects this run, which waits for approval; it ends ``rejected``.
    fn reject<'py>(&self, py: Python<'py>, reason: String) -> PyResult<Bound<'py, PyAny>> {
        let v = self.engine.block(
            py,
            self.engine
                .oc
                .reject(self.run.id, reason, &self.engine.actor),
        )?;
        convert::to_py(py, &convert::json(&v)?)
    }

    /// The run's output as ``LogLine``s, live: the iterator blocks (GIL
    /// released, Ctrl-C honoured) until the next line and ends when the run
    /// has ended and every line was delivered. ``after`` skips the chunks up
    /// to that ``seq``. (With ``workers=0``, a queued run has no output until
    /// something executes it: ``wait()``, in another thread, or a worker
    /// elsewhere.)
    #[pyo3(signature = (after = 0))]
    fn logs(&self, py: Python<'_>, after: u64) -> PyResult<LogIterator> {
        Ok(LogIterator {
            engine: self.engine.clone(),
            follower: self.follow(py, after)?,
        })
    }

    /// Like ``logs()``, as an async iterator: ``async for line in run.logs_async()``.
    #[pyo3(signature = (after = 0))]
    fn logs_async(&self, py: Python<'_>, after: u64) -> PyResult<AsyncLogIterator> {
        Ok(AsyncLogIterator {
            follower: self.follow(py, after)?,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let status = self
            .fetch(py)
            .map(|d| d.run.status)
            .unwrap_or(self.run.status);
        format!(
            "<Run {} job={:?} status={}>",
            self.run.id, self.run.job, status
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyRun>()
            .is_ok_and(|o| o.get().run.id == self.run.id)
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.run.id.hash(&mut h);
        h.finish()
    }
}

/// Aborts a task when dropped (an asyncio cancellation drops the future).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

fn time<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    convert::types(py)?
        .getattr("_time")?
        .call1((convert::to_py(py, v)?,))
}

// ---------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------

/// One line of output, before it becomes a `LogLine`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    target: Option<String>,
    stream: Stream,
    text: String,
    seq: u64,
    step: Option<u32>,
}

impl<'py> IntoPyObject<'py> for Line {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::types(py)?.getattr("LogLine")?.call1((
            self.target,
            self.stream.as_str(),
            self.text,
            self.seq,
            self.step,
        ))
    }
}

impl From<opsconductor::Line> for Line {
    fn from(l: opsconductor::Line) -> Self {
        Line {
            text: l.text(),
            target: l.target,
            stream: l.stream,
            seq: l.seq,
            step: l.step,
        }
    }
}

type LineResult = opsconductor::Result<Line>;
type LineReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<LineResult>>>;

/// Follows a run's output into `tx` as lines, until the run has ended or
/// the receiver is gone.
async fn follow_lines(
    oc: opsconductor::Conductor,
    actor: opsconductor::Actor,
    id: RunId,
    after: u64,
    tx: mpsc::Sender<LineResult>,
) {
    let mut stream = match oc.follow(id, after, &actor).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    // The core's line rules, the same as the CLI's.
    let mut split = LineSplitter::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                for l in split.push(&chunk) {
                    if tx.send(Ok(l.into())).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
    for l in split.finish() {
        if tx.send(Ok(l.into())).await.is_err() {
            return;
        }
    }
}

/// A run's output, line by line, as it is produced (``for line in run.logs()``).
#[pyclass(module = "opsconductor._native", frozen)]
pub(crate) struct LogIterator {
    engine: Arc<Engine>,
    follower: Follower,
}

#[pymethods]
impl LogIterator {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Line>> {
        if self.follower.is_closed() {
            return Ok(None);
        }
        match self.engine.recv(py, &self.follower.rx)? {
            Ok(None) => Ok(None),
            Ok(Some(Ok(line))) => Ok(Some(line)),
            Ok(Some(Err(e))) => Err(errors::to_py(py, &e)),
            Err(Stop::Signal(e)) => Err(e),
            Err(Stop::Timeout) => Ok(None),
        }
    }

    /// Stops following; the iterator ends.
    fn close(&self) {
        self.follower.close();
    }
}

/// A run's output, line by line, for asyncio (``async for line in run.logs_async()``).
#[pyclass(module = "opsconductor._native", frozen)]
pub(crate) struct AsyncLogIterator {
    follower: Follower,
}

#[pymethods]
impl AsyncLogIterator {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rx = self.follower.rx.clone();
        let closed = self.follower.is_closed();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let next = if closed {
                None
            } else {
                rx.lock().await.recv().await
            };
            match next {
                None => Err(PyStopAsyncIteration::new_err(())),
                Some(Ok(line)) => Ok(line),
                Some(Err(e)) => Err(Python::attach(|py| errors::to_py(py, &e))),
            }
        })
    }

    /// Stops following; the iterator ends.
    fn close(&self) {
        self.follower.close();
    }
}

/// The receiving end of a follower task.
pub(crate) struct Follower {
    rx: LineReceiver,
    task: tokio::task::AbortHandle,
    closed: AtomicBool,
}

impl Follower {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.task.abort();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}
