//! One claimed run from start to end: registering it, its watchers and log
//! writer, every step on every target with bounded concurrency, and the
//! run's end — also after a panic, which never leaves a run `running`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::super::Inner;
use super::super::notify::RunNotice;
use super::super::secrets::RunSecrets;
use super::lease::{LeaseClock, RunStop, StopReason, Watchers, after};
use super::logs::LogWriter;
use super::persist;
use super::strategy::{self, Progress};
use crate::bus::Event;
use crate::executor::{OutputSink, Session};
use crate::mask::Masker;
use crate::model::{Run, RunId, RunStatus, StepResult, StepStatus, Stream, Target};
use crate::store::FinishRun;

/// Per-run state shared by the step tasks.
pub(crate) struct RunState {
    pub inner: Arc<Inner>,
    pub run: Run,
    pub worker: String,
    pub stop: Arc<RunStop>,
    pub clock: Arc<LeaseClock>,
    pub run_deadline: Option<Instant>,
    pub sink: OutputSink,
    pub targets: Vec<Option<Target>>,
    pub sessions: Vec<Mutex<Option<Box<dyn Session>>>>,
    /// What earlier attempts recorded, by (step, target).
    pub previous: HashMap<(u32, String), StepResult>,
    pub secrets: RunSecrets,
    /// Finished results not stored yet (see [`RunState::record`]).
    pub pending: std::sync::Mutex<Vec<StepResult>>,
    /// Step tasks of the current round that have not ended yet.
    pub in_flight: AtomicUsize,
    /// Per target, how it failed, for the `failure` variable of cleanup steps.
    pub failures: std::sync::Mutex<Vec<serde_json::Value>>,
    /// What later steps see of earlier ones (`steps.NAME`, `run.outputs`).
    pub facts: super::outputs::Facts,
}

/// How a run ended, to be recorded by its owner.
pub(crate) struct RunEnd {
    pub status: RunStatus,
    pub error: Option<String>,
}

impl RunEnd {
    fn failed(why: String) -> Self {
        Self {
            status: RunStatus::Failed,
            error: Some(why),
        }
    }
}

/// Who holds a run: the worker name its writes are guarded by, its stop
/// switch and its lease clock.
struct Hold {
    worker: String,
    stop: Arc<RunStop>,
    clock: Arc<LeaseClock>,
}

/// What a run needs before its first step: its targets (`None` for one that
/// no longer exists) and its decrypted secrets.
struct Prepared {
    targets: Vec<Option<Target>>,
    secrets: RunSecrets,
}

/// Executes a claimed run inside a tracing span naming the run, its job and
/// the request that submitted it, so every log line of the run can be
/// matched with the API request (`request_id`) that made it.
///
/// A panic anywhere in the run's execution never leaves it `running`: it is
/// caught here and the run is finished `failed` with the panic message (its
/// heartbeat and watcher stop through drop guards while the panic unwinds).
pub(crate) async fn execute_run(inner: Arc<Inner>, run: Run) {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "run",
        run_id = %run.id,
        job = %run.job,
        attempt = run.attempt,
        request_id = %run.request_id.as_deref().unwrap_or("-"),
    );
    let (id, attempt) = (run.id, run.attempt);
    let worker = worker_of(&inner, &run);
    // The notification rules of the run, taken now: its end is written
    // with the deliveries it causes (also after a panic).
    let notice = inner.run_notice(&run);
    async move {
        tracing::info!("run started");
        let ended = std::panic::AssertUnwindSafe(run_to_end(inner.clone(), run, notice.as_ref()))
            .catch_unwind()
            .await;
        if let Err(panic) = ended {
            let why = format!("internal error: {}", panic_message(panic.as_ref()));
            tracing::error!(run = %id, "{why}");
            fail_running_results(&inner, id, &worker, attempt, &why).await;
            let end = RunEnd::failed(why);
            finish(&inner, id, &worker, attempt, end, notice.as_ref()).await;
        }
        tracing::info!("run ended");
    }
    .instrument(span)
    .await
}

/// The worker name a claimed run was claimed under.
fn worker_of(inner: &Inner, run: &Run) -> String {
    run.worker
        .clone()
        .unwrap_or_else(|| inner.config.worker_name.clone())
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("the worker panicked while running the run: {msg}")
}

/// After a panic: results of this attempt still `running` become `failed`
/// (only if this worker still holds the run).
async fn fail_running_results(inner: &Inner, id: RunId, worker: &str, attempt: u32, why: &str) {
    if let Ok(results) = inner.store.step_results(id).await {
        for mut r in results {
            if r.status == StepStatus::Running && r.attempt == attempt {
                r.status = StepStatus::Failed;
                r.error = Some(why.to_string());
                r.finished_at = Some(Utc::now());
                let _ = inner.store.put_step_result_as(worker, &r).await;
            }
        }
    }
}

/// Records the end of a run this worker holds, with the notifications it
/// causes in the same transaction.
async fn finish(
    inner: &Inner,
    id: RunId,
    worker: &str,
    attempt: u32,
    end: RunEnd,
    notice: Option<&RunNotice>,
) {
    let finished = persist(inner, "recording the end of the run", || {
        inner.finish_run_notifying(
            notice,
            FinishRun {
                id,
                worker,
                attempt,
                status: end.status,
                error: end.error.as_deref(),
            },
        )
    })
    .await;
    match finished {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(run = %id, "run was taken over before it finished; result not recorded")
        }
        Err(e) => tracing::error!(run = %id, error = %e, "recording the end of the run failed"),
    }
    inner.publish(Event::Updated(id));
}

/// Removes a run from the process's active runs when dropped (also while a
/// panic unwinds).
struct Registered<'a> {
    inner: &'a Inner,
    id: RunId,
}

impl<'a> Registered<'a> {
    fn new(inner: &'a Inner, id: RunId, stop: Arc<RunStop>) -> Self {
        if let Ok(mut a) = inner.active.lock() {
            a.insert(id, stop);
        }
        Self { inner, id }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        match self.inner.active.lock() {
            Ok(mut a) => a.remove(&self.id),
            Err(p) => p.into_inner().remove(&self.id),
        };
    }
}

/// Executes a claimed run to its end, unless its lease is lost.
async fn run_to_end(inner: Arc<Inner>, run: Run, notice: Option<&RunNotice>) {
    let (id, attempt) = (run.id, run.attempt);
    let worker = worker_of(&inner, &run);
    let stop = RunStop::new();
    if run.cancel_requested {
        stop.stop(StopReason::Cancel);
    }
    let _registered = Registered::new(&inner, id, stop.clone());
    let clock = Arc::new(LeaseClock::new(&inner, &run));
    // Dropped (so stopped) also when this future unwinds.
    let watchers = Watchers::start(&inner, &run, &worker, clock.clone(), stop.clone());

    // The next log `seq` continues the run's log (after a rescue too). If it
    // cannot be read even after retrying, leave the run for rescue rather
    // than number output twice.
    let Ok(start_seq) = persist(&inner, "reading the run's log position", || {
        inner.store.last_log_seq(id)
    })
    .await
    else {
        watchers.stop().await;
        return;
    };
    // Targets and secrets first: the log writer must know every secret value
    // before the first byte of output.
    let prepared = prepare(&inner, &run).await;
    let (sink, rx) = OutputSink::channel(1024);
    let writer = LogWriter {
        inner: inner.clone(),
        id,
        worker: worker.clone(),
        attempt,
        stop: stop.clone(),
        seq: start_seq,
        masker: match &prepared {
            Ok(Some(p)) => p.secrets.masker.clone(),
            _ => Masker::none(),
        },
    };
    let writer = tokio::spawn(writer.run(rx));
    let end = match prepared {
        Ok(Some(p)) => {
            let hold = Hold {
                worker: worker.clone(),
                stop: stop.clone(),
                clock,
            };
            run_guarded(RunState::new(inner.clone(), run, hold, sink, p).await).await
        }
        Ok(None) => None,
        Err(e) => {
            let why = format!("cannot start: {e}");
            sink.write(Stream::System, format!("error: {why}\n")).await;
            drop(sink);
            Some(RunEnd::failed(why))
        }
    };
    // Every sink clone is gone; the writer ends once it stored all output.
    let _ = writer.await;
    watchers.stop().await;
    let Some(end) = end else { return };
    if stop.lease_lost() {
        tracing::warn!(run = %id, "lost the lease; another worker may own this run now, so nothing more is recorded");
        return;
    }
    finish(&inner, id, &worker, attempt, end, notice).await;
}

/// Runs the steps, turning a panic among them into a failed run (the run's
/// state — sessions, output sink — is dropped while unwinding, so the log
/// writer ends once it stored what came before).
async fn run_guarded(st: Option<RunState>) -> Option<RunEnd> {
    let st = st?;
    let (inner, id, worker, attempt) = (
        st.inner.clone(),
        st.run.id,
        st.worker.clone(),
        st.run.attempt,
    );
    let st = Arc::new(st);
    match std::panic::AssertUnwindSafe(run_steps(st.clone()))
        .catch_unwind()
        .await
    {
        Ok(end) => end,
        Err(panic) => {
            let why = format!("internal error: {}", panic_message(panic.as_ref()));
            tracing::error!(run = %id, "{why}");
            // A result held back is true: store it before failing the rest.
            st.flush_pending().await;
            fail_running_results(&inner, id, &worker, attempt, &why).await;
            Some(RunEnd::failed(why))
        }
    }
}

/// Loads the run's targets and decrypts its secrets. `Ok(None)`: the store
/// failed, leave the run for rescue; `Err`: the run cannot start (a missing
/// secret, no master key) and fails.
async fn prepare(inner: &Arc<Inner>, run: &Run) -> crate::error::Result<Option<Prepared>> {
    let mut targets = Vec::with_capacity(run.targets.len());
    for name in &run.targets {
        let t = match inner.store.get_target(name).await {
            Ok(Some(t)) => Some(t),
            Ok(None) if name == "local" => Some(Target::local()),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "cannot read targets; leaving the run for rescue");
                return Ok(None);
            }
        };
        targets.push(t);
    }
    let secrets = inner.run_secrets(run, &targets).await?;
    Ok(Some(Prepared { targets, secrets }))
}

impl RunState {
    /// The run's state before its first step: what earlier attempts recorded
    /// (`None` when that cannot be read: the run is left for rescue) and the
    /// run's deadline, counted from when it first started.
    async fn new(
        inner: Arc<Inner>,
        run: Run,
        hold: Hold,
        sink: OutputSink,
        p: Prepared,
    ) -> Option<Self> {
        let previous = match inner.store.step_results(run.id).await {
            Ok(rs) => rs
                .into_iter()
                .map(|r| ((r.step, r.target.clone()), r))
                .collect(),
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "cannot read earlier results; leaving the run for rescue");
                return None;
            }
        };
        let run_deadline = run.spec.timeout.map(|limit| {
            let started = run.started_at.unwrap_or_else(Utc::now);
            let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
            after(limit.saturating_sub(elapsed))
        });
        let facts = super::outputs::Facts::from_previous(&previous);
        Some(Self {
            inner,
            sessions: (0..run.targets.len()).map(|_| Mutex::new(None)).collect(),
            targets: p.targets,
            run,
            worker: hold.worker,
            stop: hold.stop,
            clock: hold.clock,
            run_deadline,
            sink,
            previous,
            secrets: p.secrets,
            pending: std::sync::Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            failures: std::sync::Mutex::new(Vec::new()),
            facts,
        })
    }

    pub(crate) fn deadline_passed(&self) -> bool {
        self.run_deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sets what `failure` is in target `ti`'s cleanup steps.
    pub(crate) fn set_failure(&self, ti: usize, failure: serde_json::Value) {
        let mut f = match self.failures.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        if f.len() < self.run.targets.len() {
            f.resize(self.run.targets.len(), serde_json::Value::Null);
        }
        f[ti] = failure;
    }

    /// What `failure` is in target `ti`'s cleanup steps.
    pub(crate) fn failure_of(&self, ti: usize) -> serde_json::Value {
        let f = match self.failures.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        f.get(ti)
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| strategy::Failure::to_value(None))
    }
}

/// Runs every step on every target as the job's strategy says, then the
/// cleanup steps; returns the run's end, or `None` when nothing should be
/// recorded.
async fn run_steps(state: Arc<RunState>) -> Option<RunEnd> {
    let mut progress = Progress::new(state.run.targets.len());
    strategy::run_batches(&state, &mut progress).await;
    state.flush_pending().await;
    // Read before the cleanup steps, which may run past the run's deadline.
    let timed_out = !state.stop.is_stopped() && state.deadline_passed();
    strategy::run_cleanup(&state, &mut progress).await;
    // Later steps of targets that stopped, and every step of targets the
    // rollout never reached, are recorded as skipped, for a complete picture.
    if !state.stop.is_stopped() && !timed_out {
        record_skipped(&state, &progress).await;
    }
    for s in &state.sessions {
        if let Some(session) = s.lock().await.take() {
            session.close().await;
        }
    }
    run_end(&state, progress, timed_out)
}

/// Records every main step without a result on a target that stopped or
/// never started as skipped.
async fn record_skipped(state: &RunState, progress: &Progress) {
    let recorded: HashSet<(u32, String)> = match state.inner.store.step_results(state.run.id).await
    {
        Ok(rs) => rs.into_iter().map(|r| (r.step, r.target)).collect(),
        Err(_) => Default::default(),
    };
    let steps = state.run.spec.steps.len() as u32;
    let stopped = (0..progress.targets.len())
        .filter(|&ti| !progress.alive(ti) || !progress.targets[ti].started);
    for ti in stopped {
        for si in 0..steps {
            let key = (si, state.run.targets[ti].clone());
            if recorded.contains(&key) {
                continue;
            }
            let now = Utc::now();
            let skipped = StepResult {
                run_id: state.run.id,
                step: si,
                target: key.1,
                status: StepStatus::Skipped,
                exit_code: None,
                signal: None,
                error: None,
                attempt: state.run.attempt,
                started_at: now,
                finished_at: Some(now),
                try_no: 1,
                tries: Vec::new(),
                outputs: Default::default(),
                children: Vec::new(),
            };
            match state
                .inner
                .store
                .put_step_result_as(&state.worker, &skipped)
                .await
            {
                Ok(true) => {}
                Ok(false) => state.stop.stop(StopReason::LeaseLost),
                Err(e) => {
                    tracing::warn!(run = %state.run.id, error = %e, "recording a skipped step failed")
                }
            }
        }
    }
}

/// The run's end from why its steps stopped and how they ended; `None`
/// when this worker lost the run (it belongs to whoever rescues it).
fn run_end(state: &RunState, progress: Progress, timed_out: bool) -> Option<RunEnd> {
    if state.stop.is_stopped() {
        return match state.stop.reason() {
            Some(StopReason::LeaseLost) | None => None,
            Some(StopReason::Shutdown) => Some(RunEnd::failed(
                "interrupted: the worker was shut down before the run ended; \
                 its running steps were stopped"
                    .into(),
            )),
            Some(StopReason::Cancel) => Some(RunEnd {
                status: RunStatus::Cancelled,
                error: Some("cancelled on request".into()),
            }),
        };
    }
    if timed_out {
        let limit = state
            .run
            .spec
            .timeout
            .map(crate::duration::format)
            .unwrap_or_default();
        return Some(RunEnd {
            status: RunStatus::TimedOut,
            error: Some(format!("the run's time limit ({limit}) was reached")),
        });
    }
    if let Some(halted) = progress.halted {
        let first = progress.first_failure.unwrap_or_default();
        return Some(RunEnd::failed(format!("{halted}; first: {first}")));
    }
    let status = match (&progress.first_failure, progress.only_timeouts) {
        (Some(_), true) => RunStatus::TimedOut,
        (Some(_), false) => RunStatus::Failed,
        (None, _) if progress.cleanup_failure.is_some() => RunStatus::Failed,
        (None, _) => RunStatus::Succeeded,
    };
    Some(RunEnd {
        status,
        error: progress.first_failure.or(progress.cleanup_failure),
    })
}
