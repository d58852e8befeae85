//! Executing runs: the worker loop (claim, heartbeat, rescue), each step on
//! each target with bounded concurrency, results and ordered logs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::secrets::RunSecrets;
use crate::bus::Event;
use crate::executor::{
    Command, ExecError, FileSpec, OutputEvent, OutputSink, Session, StepContext,
};
use crate::mask::{MaskStream, Masker};
use crate::model::{
    Action, JobSpec, LogChunk, Run, RunId, RunStatus, Step, StepResult, StepStatus, Stream, Target,
};
use crate::store::Claim;
use crate::template::{Quoting, Templates};

/// What a step becomes once its templates are rendered for one target.
pub(crate) enum Rendered {
    Run {
        cmd: Command,
        env: Vec<(String, String)>,
        workdir: Option<String>,
    },
    Copy {
        dest: String,
        content: Option<String>,
        src: Option<String>,
        mode: u32,
    },
}

/// The variables templates see.
pub(crate) fn template_context(
    id: RunId,
    spec: &JobSpec,
    version: Option<u32>,
    attempt: u32,
    params: &Value,
    target: &Target,
) -> Value {
    json!({
        "params": params,
        "target": {
            "name": target.name,
            "tags": target.tags,
            "vars": target.vars,
            "kind": target.connection.kind(),
        },
        "run": { "id": id.to_string(), "attempt": attempt },
        "job": { "name": spec.name, "version": version },
    })
}

/// How `exec` commands are quoted on a target: POSIX shell, except on
/// WinRM targets, where it depends on the target's `shell` variable
/// (`powershell`/`pwsh`: PowerShell quoting; `sh`: POSIX; cmd, the default:
/// no safe quoting exists, so substitutions are refused).
pub(crate) fn exec_quoting(target: &Target) -> Quoting {
    match &target.connection {
        crate::model::Connection::Winrm { .. } => {
            match target
                .vars
                .get("shell")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("powershell" | "pwsh") => Quoting::PowerShell,
                Some("sh" | "raw" | "posix") => Quoting::Shell,
                _ => Quoting::Refuse,
            }
        }
        _ => Quoting::Shell,
    }
}

/// Renders a step's templates for one target.
pub(crate) fn render_step(
    t: &Templates,
    step: &Step,
    target: &Target,
    ctx: &Value,
) -> Result<Rendered, super::RenderError> {
    let r = |src: &str, q: Quoting| {
        if step.raw {
            Ok(src.to_string())
        } else {
            t.render(src, q, ctx)
        }
    };
    let plain = |src: &str| t.render(src, Quoting::None, ctx);
    let mut env = Vec::with_capacity(step.env.len());
    for (k, v) in &step.env {
        env.push((k.clone(), plain(v).map_err(|m| format!("env.{k}: {m}"))?));
    }
    let workdir = step
        .workdir
        .as_deref()
        .map(|w| super::render_path(plain(w), "workdir", w))
        .transpose()?;
    Ok(match &step.action {
        Action::Exec { command } => Rendered::Run {
            cmd: Command::Shell(r(command, exec_quoting(target))?),
            env,
            workdir,
        },
        Action::Script { interpreter, body } => Rendered::Run {
            cmd: Command::Script {
                interpreter: interpreter.clone(),
                body: r(body, Quoting::for_interpreter(interpreter))?,
            },
            env,
            workdir,
        },
        Action::Copy {
            dest,
            content,
            src,
            mode,
        } => Rendered::Copy {
            dest: super::render_path(plain(dest), "copy.dest", dest)?,
            content: content
                .as_deref()
                .map(|c| r(c, Quoting::None))
                .transpose()?,
            src: src.clone(),
            mode: *mode,
        },
    })
}

/// Most runs one claim statement takes at once.
const MAX_BATCH: usize = 32;

/// Claims queued runs (and rescues expired ones) for `slots` concurrent
/// executions until shutdown, then waits for the runs it started.
///
/// One claimer per pool rather than one per slot: when several slots are
/// free, a single statement claims that many runs (the store's batch claim),
/// which is what keeps a busy queue cheap on PostgreSQL. Expired leases are
/// looked for at least every heartbeat interval even while queued work keeps
/// the pool busy, so a dead worker's runs are rescued within about
/// `lease + heartbeat` however long the queue is.
pub(crate) async fn worker_loop(inner: Arc<Inner>, idx: usize, slots: usize) {
    let worker = format!("{}#{idx}", inner.config.worker_name);
    let mut rx = inner.bus.subscribe();
    let free = Arc::new(tokio::sync::Semaphore::new(slots.max(1)));
    let mut running = tokio::task::JoinSet::new();
    let rescue_every = inner.config.heartbeat;
    let mut last_rescue: Option<Instant> = None;
    'claiming: loop {
        // Reap finished executions so the set does not grow.
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = inner.shutdown.cancelled() => break 'claiming,
            p = free.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break 'claiming,
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match free.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let claim = |limit: usize| Claim {
            worker: worker.clone(),
            lease: inner.config.lease,
            limit,
            only: None,
        };
        let mut got = Vec::new();
        let rescue_due = last_rescue.is_none_or(|t| t.elapsed() >= rescue_every);
        if rescue_due {
            got = rescue(&inner, &worker, &claim(permits.len())).await;
            last_rescue = Some(Instant::now());
        }
        if got.len() < permits.len() {
            match inner
                .store
                .claim_queued(&claim(permits.len() - got.len()))
                .await
            {
                Ok(runs) => got.extend(runs),
                Err(e) => {
                    tracing::warn!(worker = %worker, error = %e, "claiming runs failed; retrying")
                }
            }
        }
        if got.is_empty() && !rescue_due {
            got = rescue(&inner, &worker, &claim(permits.len())).await;
            last_rescue = Some(Instant::now());
        }
        if got.is_empty() {
            drop(permits);
            let sleep = tokio::time::sleep(inner.config.poll);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = inner.shutdown.cancelled() => break 'claiming,
                    _ = &mut sleep => break,
                    ev = rx.recv() => match ev {
                        Ok(Event::Queued(_)) | Err(_) => break,
                        Ok(_) => continue,
                    },
                }
            }
            continue;
        }
        // Permits beyond what was claimed go back (dropped) at the end of
        // this iteration; each claimed run holds one until it ends.
        for (mut run, permit) in got.into_iter().zip(permits) {
            run.worker = Some(worker.clone());
            inner.publish(Event::Updated(run.id));
            let inner = inner.clone();
            running.spawn(async move {
                execute_run(inner, run).await;
                drop(permit);
            });
        }
    }
    // Shutdown: let the runs in progress end (they hand back or finish).
    while running.join_next().await.is_some() {}
}

/// Claims runs whose lease expired (their worker died), logging each.
async fn rescue(inner: &Inner, worker: &str, claim: &Claim) -> Vec<Run> {
    match inner.store.claim_expired(claim, Utc::now()).await {
        Ok(runs) => {
            for r in &runs {
                tracing::warn!(run = %r.id, attempt = r.attempt, "rescuing a run whose worker stopped heartbeating");
            }
            runs
        }
        Err(e) => {
            tracing::warn!(worker = %worker, error = %e, "rescuing runs failed; retrying");
            Vec::new()
        }
    }
}

/// Why a run's steps were stopped. The first reason given wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Someone asked to cancel the run.
    Cancel = 1,
    /// This worker may no longer hold the run (a heartbeat was refused, or
    /// none succeeded for too long): it stops and writes nothing more.
    LeaseLost = 2,
    /// The process is shutting down and the grace period is running out.
    Shutdown = 3,
}

/// A run's stop switch: the token its steps watch and why it was pulled.
pub(crate) struct RunStop {
    token: CancellationToken,
    reason: AtomicU8,
}

impl RunStop {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            token: CancellationToken::new(),
            reason: AtomicU8::new(0),
        })
    }

    /// Stops the run's steps (their processes are killed) for `reason`,
    /// unless it was stopped already for another one.
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::LeaseLost),
            3 => Some(StopReason::Shutdown),
            _ => None,
        }
    }
}

/// How long this worker may still act on a run without a newer successful
/// heartbeat: the lease it last obtained, minus a safety margin, measured on
/// the monotonic clock from the moment that heartbeat was *sent*. Past it,
/// another node may take the run over, so the worker fences itself: it
/// starts nothing more and kills its steps (see `heartbeat_loop`).
struct LeaseClock {
    valid_until: std::sync::Mutex<Instant>,
    /// The lease minus the margin.
    valid_for: Duration,
}

impl LeaseClock {
    fn new(inner: &Inner, run: &Run) -> Self {
        let valid_for = inner.config.lease.saturating_sub(fence_margin(inner));
        // The claim set the first lease end; measure the rest of it from now.
        let left = run
            .lease_until
            .and_then(|until| (until - Utc::now()).to_std().ok())
            .unwrap_or(inner.config.lease)
            .saturating_sub(fence_margin(inner));
        Self {
            valid_until: std::sync::Mutex::new(after(left)),
            valid_for,
        }
    }

    fn valid_until(&self) -> Instant {
        match self.valid_until.lock() {
            Ok(v) => *v,
            Err(p) => *p.into_inner(),
        }
    }

    /// A heartbeat sent at `sent` was accepted.
    fn renewed(&self, sent: Instant) {
        let until = after_from(sent, self.valid_for);
        match self.valid_until.lock() {
            Ok(mut v) => *v = until,
            Err(p) => *p.into_inner() = until,
        }
    }

    /// True once the lease may have run out (or is about to).
    fn fenced(&self) -> bool {
        Instant::now() >= self.valid_until()
    }
}

/// The part of the lease a worker never uses: it stops its steps this long
/// before the lease ends, so they are dead before another node may rescue
/// the run (and small clock differences between hosts are covered).
fn fence_margin(inner: &Inner) -> Duration {
    inner.config.lease / 6
}

/// `now + d`, or a point so far ahead that it never comes when `d` is too
/// large to add (a huge time limit means "no practical deadline", never a panic).
pub(crate) fn after(d: Duration) -> Instant {
    after_from(Instant::now(), d)
}

fn after_from(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365 * 30))
}

/// Per-run state shared by the step tasks.
struct RunState {
    inner: Arc<Inner>,
    run: Run,
    worker: String,
    cancel: CancellationToken,
    stop: Arc<RunStop>,
    clock: Arc<LeaseClock>,
    run_deadline: Option<Instant>,
    sink: OutputSink,
    targets: Vec<Option<Target>>,
    sessions: Vec<Mutex<Option<Box<dyn Session>>>>,
    previous: HashMap<(u32, String), StepResult>,
    secrets: RunSecrets,
}

/// How one step ended on one target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    TimedOut,
    Cancelled,
}

/// Executes a claimed run inside a tracing span naming the run, its job and
/// the request that submitted it, so every log line of the run can be
/// matched with the API request (`request_id`) that made it.
///
/// A panic anywhere in the run's execution never leaves it `running`: it is
/// caught here and the run is finished `failed` with the panic message (its
/// heartbeat and watcher stop through drop guards while the panic unwinds).
pub(crate) async fn execute_run(inner: Arc<Inner>, run: Run) {
    use futures::FutureExt;
    use tracing::Instrument;
    let span = tracing::info_span!(
        "run",
        run_id = %run.id,
        job = %run.job,
        attempt = run.attempt,
        request_id = %run.request_id.as_deref().unwrap_or("-"),
    );
    let (id, attempt) = (run.id, run.attempt);
    let worker = run
        .worker
        .clone()
        .unwrap_or_else(|| inner.config.worker_name.clone());
    async move {
        tracing::info!("run started");
        let ended = std::panic::AssertUnwindSafe(run_to_end(inner.clone(), run))
            .catch_unwind()
            .await;
        if let Err(panic) = ended {
            let why = format!("internal error: {}", panic_message(panic.as_ref()));
            tracing::error!(run = %id, "{why}");
            fail_after_panic(&inner, id, &worker, attempt, &why).await;
        }
        tracing::info!("run ended");
    }
    .instrument(span)
    .await
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

/// After a panic: results still `running` become `failed` and the run is
/// finished `failed` (both only if this worker still holds the run).
async fn fail_after_panic(inner: &Inner, id: RunId, worker: &str, attempt: u32, why: &str) {
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
    let finished = persist(inner, "recording the end of the run", || {
        inner
            .store
            .finish_run(id, worker, attempt, RunStatus::Failed, Some(why))
    })
    .await;
    if let Err(e) = finished {
        tracing::error!(run = %id, error = %e, "recording the end of the run failed");
    }
    inner.publish(Event::Updated(id));
}

/// Removes a run from the process's active runs when dropped (also while a
/// panic unwinds).
struct Registered<'a> {
    inner: &'a Inner,
    id: RunId,
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
async fn run_to_end(inner: Arc<Inner>, run: Run) {
    use futures::FutureExt;
    let id = run.id;
    let worker = run
        .worker
        .clone()
        .unwrap_or_else(|| inner.config.worker_name.clone());
    let stop = RunStop::new();
    if run.cancel_requested {
        stop.stop(StopReason::Cancel);
    }
    if let Ok(mut a) = inner.active.lock() {
        a.insert(id, stop.clone());
    }
    let _registered = Registered { inner: &inner, id };
    // Heartbeat and cancel watcher: their own tasks and timers, so neither
    // log traffic nor step count can delay a heartbeat. Both end when `done`
    // is cancelled — by the guard, so also when this future unwinds.
    let done = CancellationToken::new();
    let _done_guard = done.clone().drop_guard();
    let clock = Arc::new(LeaseClock::new(&inner, &run));
    let heart = tokio::spawn(heartbeat_loop(
        inner.clone(),
        run.id,
        worker.clone(),
        run.attempt,
        clock.clone(),
        stop.clone(),
        done.clone(),
    ));
    let watcher = tokio::spawn(watch_cancel(
        inner.clone(),
        run.id,
        stop.clone(),
        done.clone(),
    ));

    // The next log `seq` continues the run's log (after a rescue too). If it
    // cannot be read even after retrying, leave the run for rescue rather
    // than number output twice.
    let Ok(start_seq) = persist(&inner, "reading the run's log position", || {
        inner.store.last_log_seq(id)
    })
    .await
    else {
        done.cancel();
        let _ = heart.await;
        let _ = watcher.await;
        return;
    };
    // Targets and secrets first: the log writer must know every secret value
    // before the first byte of output.
    let prepared = prepare(&inner, &run).await;
    let masker = match &prepared {
        Ok(Some((_, s))) => s.masker.clone(),
        _ => Masker::none(),
    };
    let (sink, rx) = OutputSink::channel(1024);
    let writer = tokio::spawn(write_logs(
        inner.clone(),
        id,
        (worker.clone(), run.attempt),
        stop.clone(),
        start_seq,
        masker,
        rx,
    ));

    let attempt = run.attempt;
    let outcome = match prepared {
        Ok(Some((targets, secrets))) => {
            let steps = run_steps(
                inner.clone(),
                run,
                worker.clone(),
                stop.clone(),
                clock.clone(),
                sink,
                targets,
                secrets,
            );
            match std::panic::AssertUnwindSafe(steps).catch_unwind().await {
                Ok(o) => o,
                // The run's state (sessions, output sink) was dropped while
                // unwinding: the writer ends once it stored what came before.
                Err(panic) => {
                    let why = format!("internal error: {}", panic_message(panic.as_ref()));
                    tracing::error!(run = %id, "{why}");
                    if let Ok(results) = inner.store.step_results(id).await {
                        for mut r in results {
                            if r.status == StepStatus::Running && r.attempt == attempt {
                                r.status = StepStatus::Failed;
                                r.error = Some(why.clone());
                                r.finished_at = Some(Utc::now());
                                let _ = inner.store.put_step_result_as(&worker, &r).await;
                            }
                        }
                    }
                    Some((RunStatus::Failed, Some(why), attempt))
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            let why = format!("cannot start: {e}");
            sink.write(Stream::System, format!("error: {why}\n")).await;
            drop(sink);
            Some((RunStatus::Failed, Some(why), attempt))
        }
    };
    // `run_steps` dropped every sink clone; the writer ends once it stored all output.
    let _ = writer.await;
    done.cancel();
    let _ = heart.await;
    let _ = watcher.await;
    let Some((status, error, attempt)) = outcome else {
        return;
    };
    if stop.reason() == Some(StopReason::LeaseLost) {
        tracing::warn!(run = %id, "lost the lease; another worker may own this run now, so nothing more is recorded");
        return;
    }
    let finished = persist(&inner, "recording the end of the run", || {
        inner
            .store
            .finish_run(id, &worker, attempt, status, error.as_deref())
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

/// Retries a store write through a database outage (a restart, a failover):
/// with backoff, for up to one lease length. Writes are guarded by owner and
/// attempt, so a retry after the lease was lost changes nothing.
async fn persist<T, F, Fut>(inner: &Inner, what: &str, mut op: F) -> crate::error::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let give_up = after(inner.config.lease);
    let mut wait = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == crate::error::ErrorKind::Store && after(wait) < give_up => {
                tracing::warn!(error = %e, "{what} failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Renews the run's lease every heartbeat interval on its own timer, until
/// `done`. A refused heartbeat, or none accepted before the lease (minus the
/// margin) runs out, stops the run's steps as [`StopReason::LeaseLost`]: the
/// worker fences itself before another node may take the run over.
async fn heartbeat_loop(
    inner: Arc<Inner>,
    id: RunId,
    worker: String,
    attempt: u32,
    clock: Arc<LeaseClock>,
    stop: Arc<RunStop>,
    done: CancellationToken,
) {
    let every = inner.config.heartbeat;
    let lease = chrono::Duration::from_std(inner.config.lease)
        .unwrap_or_else(|_| chrono::Duration::seconds(30));
    let mut next = after(every);
    loop {
        let fence_at = clock.valid_until();
        tokio::select! {
            biased;
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(fence_at) => {
                tracing::error!(run = %id, "no heartbeat succeeded within the lease; stopping the run's steps before another worker takes it over");
                stop.stop(StopReason::LeaseLost);
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let until = Utc::now() + lease;
        let beat =
            tokio::time::timeout_at(fence_at, inner.store.heartbeat(id, &worker, attempt, until));
        match beat.await {
            Ok(Ok(true)) => {
                clock.renewed(sent);
                next = after_from(sent, every);
            }
            Ok(Ok(false)) => {
                tracing::warn!(run = %id, "heartbeat refused: this worker no longer holds the run; stopping its steps");
                stop.stop(StopReason::LeaseLost);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(run = %id, error = %e, "heartbeat failed; retrying");
                next = after((every / 4).max(Duration::from_millis(50)));
            }
            // The fence is reached; the next turn of the loop stops the run.
            Err(_) => {}
        }
    }
}

/// Watches for a cancel request (a wake-up on the bus, or the store polled
/// on its own fixed interval) until `done`.
async fn watch_cancel(inner: Arc<Inner>, id: RunId, stop: Arc<RunStop>, done: CancellationToken) {
    let mut rx = inner.bus.subscribe();
    let mut poll = tokio::time::interval(inner.config.cancel_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = poll.tick() => {
                if let Ok(Some(r)) = inner.store.get_run(id).await
                    && r.cancel_requested
                {
                    stop.stop(StopReason::Cancel);
                    return;
                }
            }
            ev = rx.recv() => match ev {
                Ok(Event::CancelRequested(c)) if c == id => {
                    stop.stop(StopReason::Cancel);
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    rx = inner.bus.subscribe();
                }
                _ => {}
            },
        }
    }
}

/// Numbers output chunks and stores them in batches as they come.
async fn write_logs(
    inner: Arc<Inner>,
    id: RunId,
    (worker, attempt): (String, u32),
    stop: Arc<RunStop>,
    start: u64,
    masker: Masker,
    mut rx: mpsc::Receiver<OutputEvent>,
) {
    let mut seq = start;
    let mut batch: Vec<LogChunk> = Vec::new();
    // One masking state per step × target × stream: a secret split across
    // chunks of one stream is still caught, and streams never mix.
    let mut streams: HashMap<(u32, Arc<str>, Stream), MaskStream> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(ev) = next {
            let key = (ev.step, ev.target.clone(), ev.stream);
            let data = if ev.eof {
                streams
                    .remove(&key)
                    .map(|mut s| s.finish())
                    .unwrap_or_default()
            } else {
                streams
                    .entry(key)
                    .or_insert_with(|| masker.stream())
                    .push(&ev.data)
            };
            if !data.is_empty() {
                seq += 1;
                let run_level = ev.target.is_empty();
                batch.push(LogChunk {
                    run_id: id,
                    seq,
                    step: (!run_level).then_some(ev.step),
                    target: (!run_level).then(|| ev.target.to_string()),
                    stream: ev.stream,
                    data,
                    time: Utc::now(),
                });
            }
            next = if batch.len() < 256 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if batch.is_empty() {
            continue;
        }
        // After the lease was lost nothing is written (the store would refuse
        // it anyway); the channel is still drained so no producer blocks.
        if stop.reason() != Some(StopReason::LeaseLost) {
            match persist(&inner, "storing output", || {
                inner.store.append_logs_as(&worker, attempt, &batch)
            })
            .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(run = %id, "output refused: this worker no longer holds the run; stopping its steps");
                    stop.stop(StopReason::LeaseLost);
                }
                Err(e) => {
                    tracing::error!(run = %id, error = %e, "output lost: the store keeps failing")
                }
            }
        }
        batch.clear();
        inner.publish(Event::Log(id, seq));
    }
}

/// Runs every step on every target; returns the run's end state, or `None`
/// when nothing should be recorded.
/// Loads the run's targets and decrypts its secrets. `Ok(None)`: the store
/// failed, leave the run for rescue; `Err`: the run cannot start (a missing
/// secret, no master key) and fails.
async fn prepare(
    inner: &Arc<Inner>,
    run: &Run,
) -> crate::error::Result<Option<(Vec<Option<Target>>, RunSecrets)>> {
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
    Ok(Some((targets, secrets)))
}

#[allow(clippy::too_many_arguments)]
async fn run_steps(
    inner: Arc<Inner>,
    run: Run,
    worker: String,
    stop: Arc<RunStop>,
    clock: Arc<LeaseClock>,
    sink: OutputSink,
    targets: Vec<Option<Target>>,
    secrets: RunSecrets,
) -> Option<(RunStatus, Option<String>, u32)> {
    let attempt = run.attempt;
    let previous: HashMap<(u32, String), StepResult> = match inner.store.step_results(run.id).await
    {
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
    let cancel = stop.token.clone();
    let n = run.targets.len();
    let state = Arc::new(RunState {
        inner: inner.clone(),
        sessions: (0..n).map(|_| Mutex::new(None)).collect(),
        targets,
        run,
        worker,
        cancel: cancel.clone(),
        stop: stop.clone(),
        clock,
        run_deadline,
        sink,
        previous,
        secrets,
    });

    let mut alive = vec![true; n];
    let mut first_failure: Option<String> = None;
    let mut only_timeouts = true;
    let steps = state.run.spec.steps.clone();
    for (si, step) in steps.iter().enumerate() {
        if cancel.is_cancelled() || deadline_passed(state.run_deadline) {
            break;
        }
        let concurrency = state.run.spec.concurrency.max(1);
        let outcomes: Vec<(usize, Outcome, Option<String>)> =
            futures::stream::iter((0..n).filter(|ti| alive[*ti]).map(|ti| {
                let st = state.clone();
                async move {
                    let (o, why) = step_on_target(&st, si as u32, ti).await;
                    (ti, o, why)
                }
            }))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (ti, outcome, why) in outcomes {
            if outcome == Outcome::Ok || step.continue_on_error {
                continue;
            }
            alive[ti] = false;
            if outcome != Outcome::TimedOut {
                only_timeouts = false;
            }
            if first_failure.is_none() && outcome != Outcome::Cancelled {
                let target = &state.run.targets[ti];
                let why = why.unwrap_or_else(|| "failed".into());
                // Stored as the run's error: masked like its output.
                let why = state.secrets.masker.mask_str(&why);
                first_failure = Some(format!("step '{}' on {target}: {why}", step.name));
            }
        }
        if !alive.iter().any(|a| *a) {
            break;
        }
    }
    // Later steps of targets that stopped are recorded as skipped, for a complete picture.
    if !cancel.is_cancelled() && alive.iter().any(|a| !*a) {
        let recorded: std::collections::HashSet<(u32, String)> =
            match state.inner.store.step_results(state.run.id).await {
                Ok(rs) => rs.into_iter().map(|r| (r.step, r.target)).collect(),
                Err(_) => Default::default(),
            };
        for (ti, a) in alive.iter().enumerate() {
            if *a {
                continue;
            }
            for si in 0..steps.len() as u32 {
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
                    attempt,
                    started_at: now,
                    finished_at: Some(now),
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
    for s in &state.sessions {
        if let Some(session) = s.lock().await.take() {
            session.close().await;
        }
    }
    let status = if cancel.is_cancelled() {
        return match state.stop.reason() {
            // A lost lease records nothing: the run belongs to whoever rescues it.
            Some(StopReason::LeaseLost) | None => None,
            Some(StopReason::Shutdown) => Some((
                RunStatus::Failed,
                Some(
                    "interrupted: the worker was shut down before the run ended; \
                     its running steps were stopped"
                        .into(),
                ),
                attempt,
            )),
            Some(StopReason::Cancel) => Some((
                RunStatus::Cancelled,
                Some("cancelled on request".into()),
                attempt,
            )),
        };
    } else if deadline_passed(state.run_deadline) {
        let limit = state
            .run
            .spec
            .timeout
            .map(crate::duration::format)
            .unwrap_or_default();
        return Some((
            RunStatus::TimedOut,
            Some(format!("the run's time limit ({limit}) was reached")),
            attempt,
        ));
    } else if first_failure.is_some() && only_timeouts {
        RunStatus::TimedOut
    } else if first_failure.is_some() {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    Some((status, first_failure, attempt))
}

fn deadline_passed(d: Option<Instant>) -> bool {
    d.is_some_and(|d| Instant::now() >= d)
}

/// One step on one target: resume logic, rendering, execution, result.
async fn step_on_target(st: &RunState, si: u32, ti: usize) -> (Outcome, Option<String>) {
    let step = &st.run.spec.steps[si as usize];
    let name = &st.run.targets[ti];
    let out = st.sink.for_step(si, name);
    if let Some(prev) = st.previous.get(&(si, name.clone())) {
        match prev.status {
            StepStatus::Succeeded | StepStatus::Skipped => return (Outcome::Ok, None),
            StepStatus::Failed | StepStatus::Interrupted => {
                return (Outcome::Failed, prev.error.clone());
            }
            StepStatus::TimedOut => return (Outcome::TimedOut, prev.error.clone()),
            StepStatus::Cancelled => return (Outcome::Cancelled, None),
            StepStatus::Running if !step.idempotent => {
                let why = "interrupted: its worker stopped while it ran, and the step is not marked idempotent, so it is not run again".to_string();
                out.write(Stream::System, format!("{why}\n")).await;
                record(
                    st,
                    si,
                    name,
                    StepStatus::Interrupted,
                    None,
                    Some(why.clone()),
                    Utc::now(),
                )
                .await;
                return (Outcome::Failed, Some(why));
            }
            StepStatus::Running => {
                out.write(
                    Stream::System,
                    "re-running: its worker stopped while it ran, and the step is idempotent\n",
                )
                .await;
            }
        }
    }
    let started = Utc::now();
    let fail = |why: String| {
        let out = out.clone();
        async move {
            out.write(Stream::System, format!("error: {why}\n")).await;
            record(
                st,
                si,
                name,
                StepStatus::Failed,
                None,
                Some(why.clone()),
                started,
            )
            .await;
            (Outcome::Failed, Some(why))
        }
    };
    let Some(target) = st.targets[ti].clone() else {
        return fail(format!("target '{name}' no longer exists")).await;
    };
    let ctx_json = template_context(
        st.run.id,
        &st.run.spec,
        st.run.job_version,
        st.run.attempt,
        &st.run.params,
        &target,
    );
    let rendered = match render_step(&st.inner.templates, step, &target, &ctx_json) {
        Ok(r) => r,
        Err(m) => return fail(format!("template error: {m}")).await,
    };
    record(st, si, name, StepStatus::Running, None, None, started).await;

    // One session per target per run, opened on first use.
    let mut slot = st.sessions[ti].lock().await;
    if slot.is_none() {
        let kind = target.connection.kind();
        let Some(exec) = st.inner.executors.get(kind) else {
            let have: Vec<&str> = st.inner.executors.keys().copied().collect();
            drop(slot);
            return fail(format!(
                "no executor for '{kind}' targets in this build (available: {})",
                have.join(", ")
            ))
            .await;
        };
        let cred = st.secrets.creds.get(name.as_str());
        if let Some(c) = cred {
            let secret = target.credential.clone().unwrap_or_default();
            st.inner
                .audit(crate::model::AuditEvent::now(
                    &st.run.requested_by,
                    "secret.use",
                    format!("secret:{secret}"),
                    // The step that opened the session: the credential is used once per
                    // target per run, for that step and the ones after it.
                    json!({"run": st.run.id, "step": si, "step_name": step.name, "target": name, "as": "credential", "kind": c.kind}),
                ))
                .await;
        }
        match exec.connect(&target, cred).await {
            Ok(s) => *slot = Some(s),
            Err(e) => {
                drop(slot);
                return fail(e.to_string()).await;
            }
        }
    }
    let Some(session) = slot.as_ref() else {
        drop(slot);
        return fail("no session".into()).await;
    };
    let step_deadline = step.timeout.map(after);
    let deadline = match (step_deadline, st.run_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Fencing: never start a step once the lease may have run out (the
    // heartbeat task stops the run too, but it may not have run yet, e.g.
    // right after this process was paused).
    if st.clock.fenced() || st.stop.reason() == Some(StopReason::LeaseLost) {
        drop(slot);
        st.stop.stop(StopReason::LeaseLost);
        return (Outcome::Cancelled, None);
    }
    let mut env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    env.insert("OPSC_RUN_ID".into(), st.run.id.to_string());
    env.insert("OPSC_JOB".into(), st.run.job.clone());
    env.insert("OPSC_TARGET".into(), name.clone());
    env.insert("OPSC_STEP".into(), step.name.clone());
    // Declared secrets reach the process as environment variables only.
    if !st.secrets.env.is_empty() {
        env.extend(st.secrets.env.iter().cloned());
        for secret in &st.secrets.names {
            st.inner
                .audit(crate::model::AuditEvent::now(
                    &st.run.requested_by,
                    "secret.use",
                    format!("secret:{secret}"),
                    json!({"run": st.run.id, "step": si, "step_name": step.name, "target": name}),
                ))
                .await;
        }
    }
    let ctx = |extra: Vec<(String, String)>, workdir: Option<String>| {
        let mut env = env.clone();
        env.extend(extra);
        StepContext {
            run_id: st.run.id,
            step: si,
            target: target.clone(),
            env,
            workdir,
            deadline,
            cancel: st.cancel.clone(),
            limits: step.limits.clone(),
        }
    };
    let result = match rendered {
        Rendered::Run {
            cmd,
            env: extra,
            workdir,
        } => session.exec(&ctx(extra, workdir), &cmd, &out).await,
        Rendered::Copy {
            dest,
            content,
            src,
            mode,
        } => {
            let bytes = match (content, src) {
                (Some(c), _) => Ok(c.into_bytes()),
                (None, Some(path)) => tokio::fs::read(&path)
                    .await
                    .map_err(|e| ExecError::Io(format!("cannot read copy source {path}: {e}"))),
                (None, None) => Ok(Vec::new()),
            };
            match bytes {
                Ok(content) => {
                    let len = content.len();
                    let file = FileSpec {
                        dest: dest.clone(),
                        content,
                        mode,
                    };
                    let r = session.copy(&ctx(Vec::new(), None), &file).await;
                    if r.is_ok() {
                        out.write(
                            Stream::System,
                            format!("copied {len} bytes to {dest} (mode {mode:04o})\n"),
                        )
                        .await;
                    }
                    r.map(|()| crate::executor::ExitStatus::code(0))
                }
                Err(e) => Err(e),
            }
        }
    };
    drop(slot);
    out.finish().await;
    match result {
        Ok(status) if status.success() => {
            record(
                st,
                si,
                name,
                StepStatus::Succeeded,
                Some(status),
                None,
                started,
            )
            .await;
            (Outcome::Ok, None)
        }
        Ok(status) => {
            let why = status.to_string();
            record(
                st,
                si,
                name,
                StepStatus::Failed,
                Some(status),
                Some(why.clone()),
                started,
            )
            .await;
            (Outcome::Failed, Some(why))
        }
        Err(ExecError::TimedOut) => {
            let which = match (step.timeout, st.run.spec.timeout) {
                (Some(t), _) if step_deadline == deadline => {
                    format!("the step's time limit ({})", crate::duration::format(t))
                }
                (_, Some(t)) => format!("the run's time limit ({})", crate::duration::format(t)),
                _ => "the time limit".into(),
            };
            let why = format!("timed out: {which} was reached; the process was killed");
            out.write(Stream::System, format!("{why}\n")).await;
            record(
                st,
                si,
                name,
                StepStatus::TimedOut,
                None,
                Some(why.clone()),
                started,
            )
            .await;
            (Outcome::TimedOut, Some(why))
        }
        Err(ExecError::Cancelled) => match st.stop.reason() {
            // Another node may own the run now: write nothing.
            Some(StopReason::LeaseLost) => (Outcome::Cancelled, None),
            Some(StopReason::Shutdown) => {
                let why = "interrupted: the worker was shut down while the step ran; the process was killed";
                out.write(Stream::System, format!("{why}\n")).await;
                record(
                    st,
                    si,
                    name,
                    StepStatus::Interrupted,
                    None,
                    Some(why.into()),
                    started,
                )
                .await;
                (Outcome::Cancelled, None)
            }
            Some(StopReason::Cancel) | None => {
                out.write(Stream::System, "cancelled; the process was killed\n")
                    .await;
                record(
                    st,
                    si,
                    name,
                    StepStatus::Cancelled,
                    None,
                    Some("cancelled".into()),
                    started,
                )
                .await;
                (Outcome::Cancelled, None)
            }
        },
        Err(e) => {
            let why = e.to_string();
            out.write(Stream::System, format!("error: {why}\n")).await;
            record(
                st,
                si,
                name,
                StepStatus::Failed,
                None,
                Some(why.clone()),
                started,
            )
            .await;
            (Outcome::Failed, Some(why))
        }
    }
}

async fn record(
    st: &RunState,
    si: u32,
    target: &str,
    status: StepStatus,
    exit: Option<crate::executor::ExitStatus>,
    error: Option<String>,
    started: chrono::DateTime<Utc>,
) {
    let r = StepResult {
        run_id: st.run.id,
        step: si,
        target: target.to_string(),
        status,
        exit_code: exit.and_then(|e| e.code),
        signal: exit.and_then(|e| e.signal),
        // An error can quote output or a command (a failed `connect`, an
        // executor message): stored masked like the output itself.
        error: error.map(|e| st.secrets.masker.mask_str(&e)),
        attempt: st.run.attempt,
        started_at: started,
        finished_at: (status != StepStatus::Running).then(Utc::now),
    };
    if st.stop.reason() == Some(StopReason::LeaseLost) {
        return;
    }
    match persist(&st.inner, "recording a step result", || {
        st.inner.store.put_step_result_as(&st.worker, &r)
    })
    .await
    {
        Ok(true) => {}
        // Fenced by the store: another node holds the run. Stop, write nothing more.
        Ok(false) => {
            tracing::warn!(run = %st.run.id, worker = %st.worker, "step result refused: this worker no longer holds the run; stopping its steps");
            st.stop.stop(StopReason::LeaseLost);
            return;
        }
        Err(e) => {
            tracing::error!(run = %st.run.id, worker = %st.worker, error = %e, "recording a step result failed")
        }
    }
    st.inner.publish(Event::Updated(st.run.id));
}
