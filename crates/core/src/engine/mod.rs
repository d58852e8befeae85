//! The [`Conductor`]: the only thing front ends talk to. It validates and
//! stores definitions, submits runs, runs workers that claim them under a
//! lease, and streams their logs.

mod approvals;
mod audit;
mod auth;
mod children;
mod definitions;
mod dry_run;
mod local;
pub mod notify;
mod outcome;
mod retention;
mod runs;
mod scheduler;
mod schedules;
mod secret_cache;
mod secrets;
mod targets;
mod worker;

pub use approvals::MAX_APPROVALS_PAGE;
pub use dry_run::{PlannedCommand, PlannedSecret, PlannedStep, RunPlan, TargetPlan};
pub use local::LocalPolicy;
pub use outcome::TargetOutcome;
pub use runs::{
    ADHOC_JOB, ExecRequest, LogPage, LogStream, MAX_LOG_PAGE, MAX_RESULT_PAGE, RunDetail,
    SubmitRequest,
};
pub use scheduler::{SchedulerConfig, TickReport};
pub use schedules::{MAX_NEXT_COUNT, ScheduleDetail};
pub use targets::TargetCheck;

pub use retention::{
    AuditExport, DEFAULT_PRUNE_BATCH, PRUNE_BATCH_RANGE, PruneReport, PruneRequest, Retention,
};

pub use audit::{AuditPage, AuditQuery, AuditVerification, MAX_AUDIT_PAGE};
pub use auth::{Login, token_hash};

pub use secrets::{MAX_SECRET_BYTES, RotationReport, SecretInfo, SetSecret, SetSecretOutcome};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Event};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::model::RunId;
use crate::store::Store;
use crate::template::Templates;

/// Why a step's templates could not be rendered for a target.
#[derive(Debug)]
pub(crate) enum RenderError {
    /// A path field (`copy.dest`, `workdir`) that could not be rendered or
    /// left the directory the job names: typed, with its field.
    Path(crate::paths::PathError),
    /// A template error (`env.NAME: …` or the renderer's message).
    Template(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Path(p) => p.fmt(f),
            RenderError::Template(m) => f.write_str(m),
        }
    }
}

impl From<String> for RenderError {
    fn from(m: String) -> Self {
        RenderError::Template(m)
    }
}

/// A rendered path field (`copy.dest`, `workdir`) confined to the
/// directory its template names; a template error there names the field too.
pub(crate) fn render_path(
    rendered: std::result::Result<String, String>,
    field: &'static str,
    template: &str,
) -> std::result::Result<String, RenderError> {
    let path = rendered
        .map_err(|message| RenderError::Path(crate::paths::PathError { field, message }))?;
    crate::paths::confine_field(field, template, &path).map_err(RenderError::Path)
}

/// Tunables of the engine. The defaults suit one machine; see each field.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a claim is valid without a heartbeat. A dead worker's runs are
    /// rescued after this.
    pub lease: Duration,
    /// How often a worker renews its leases (must be well under `lease`).
    pub heartbeat: Duration,
    /// Safety-net poll for queued runs when no wake-up arrives. With a store
    /// that has no cross-process wake-ups (SQLite) it is the only way to see
    /// runs queued by another process, so it is capped at 250 ms there.
    pub poll: Duration,
    /// How often followers and waiters re-read the store without a wake-up
    /// (another process may be writing).
    pub follow_poll: Duration,
    /// How often a running run checks whether someone asked to cancel it.
    pub cancel_poll: Duration,
    /// This worker's identity, recorded on each run it claims.
    pub worker_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            follow_poll: Duration::from_millis(250),
            cancel_poll: Duration::from_millis(500),
            worker_name: default_worker_name(),
        }
    }
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Builds a [`Conductor`].
#[must_use]
pub struct ConductorBuilder {
    store: Option<Arc<dyn Store>>,
    executors: Vec<Arc<dyn Executor>>,
    config: Config,
    workers: usize,
    keyring: Option<crate::secrets::Keyring>,
    local_policy: LocalPolicy,
    retention: Retention,
    scheduler: SchedulerConfig,
    notify: notify::NotifySettings,
    command_policy: crate::policy::Policy,
}

impl ConductorBuilder {
    /// The scheduler's settings and clock (tests inject a
    /// [`crate::clock::ManualClock`]); the loop itself starts with
    /// [`Conductor::start_scheduler`].
    pub fn scheduler(mut self, scheduler: SchedulerConfig) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// Notification rules, public URL, SSRF guard and retry policy (see
    /// [`notify::NotifySettings`]); deliverers run wherever workers run.
    pub fn notifications(mut self, settings: notify::NotifySettings) -> Self {
        self.notify = settings;
        self
    }

    /// Which roles may run steps on the engine's own host (`local` targets,
    /// `copy.src`); default: admin only. Trusted actors are not affected.
    pub fn local_policy(mut self, policy: LocalPolicy) -> Self {
        self.local_policy = policy;
        self
    }

    /// The command policy that screens rendered commands at submit and job
    /// text at apply (default: [`crate::policy::default_rules`]).
    pub fn command_policy(mut self, policy: crate::policy::Policy) -> Self {
        self.command_policy = policy;
        self
    }

    /// The master keys for secrets. Checked against the database on build:
    /// a wrong or missing key is an error then, not later.
    pub fn keyring(mut self, keyring: crate::secrets::Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The persistence backend (required).
    pub fn store(mut self, store: impl Store + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The persistence backend, already shared.
    pub fn store_arc(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds an executor; it serves targets whose connection kind equals its `kind()`.
    pub fn executor(mut self, executor: impl Executor + 'static) -> Self {
        self.executors.push(Arc::new(executor));
        self
    }

    /// Adds a shared executor.
    pub fn executor_arc(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executors.push(executor);
        self
    }

    /// Starts `n` worker tasks on build (default 0: submit only, or call
    /// [`Conductor::execute`] / [`Conductor::start_workers`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Lease length; the heartbeat becomes a third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self.config.heartbeat = lease / 3;
        // A dead node's notifications are taken over after the same lease
        // (but never before an attempt could have timed out).
        self.notify.lease = lease.max(self.notify.timeout + Duration::from_secs(1));
        self
    }

    /// The safety-net poll for queued runs when no wake-up arrives (stores
    /// without cross-process wake-ups cap it at 250 ms).
    pub fn poll(mut self, poll: Duration) -> Self {
        self.config.poll = poll;
        self
    }

    /// How long finished runs, their logs and audit events are kept. When any
    /// is set, a pruner removes older data every `retention.interval` while the
    /// engine runs (default: keep everything, no pruner).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Builds the engine and starts its workers. Must run inside a tokio runtime.
    pub async fn build(self) -> Result<Conductor> {
        let store = self.store.ok_or_else(|| {
            Error::invalid("Conductor::builder() needs a store (e.g. SqliteStore)")
        })?;
        if self.config.heartbeat >= self.config.lease {
            return Err(Error::validation(
                "heartbeat",
                "must be shorter than the lease",
            ));
        }
        retention::check_batch("retention.batch", self.retention.batch)?;
        self.notify.check()?;
        let mut executors = HashMap::new();
        for e in self.executors {
            executors.insert(e.kind(), e);
        }
        let mut config = self.config;
        if !store.capabilities().notifications {
            config.poll = config.poll.min(Duration::from_millis(250));
        }
        let mut keyring = self.keyring;
        secrets::verify_keyring(store.as_ref(), keyring.as_mut()).await?;
        let bus = Bus::new();
        // Cross-process wake-ups: forward what other processes announce into
        // our bus, and announce ours through the store.
        if let Some(mut remote) = store.listen().await? {
            let bus = bus.clone();
            tokio::spawn(async move {
                while let Some(ev) = futures::StreamExt::next(&mut remote).await {
                    bus.publish(ev);
                }
            });
        }
        let notify_tx = if store.capabilities().notifications {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(notifier(store.clone(), rx));
            Some(tx)
        } else {
            None
        };
        let oc = Conductor {
            inner: Arc::new(Inner {
                store,
                executors,
                notify_tx,
                keyring: tokio::sync::RwLock::new(keyring),
                bus,
                templates: Templates::new(),
                local_policy: std::sync::RwLock::new(self.local_policy),
                command_policy: std::sync::RwLock::new(Arc::new(self.command_policy)),
                config,
                shutdown: CancellationToken::new(),
                active: Mutex::new(HashMap::new()),
                secret_cache: Mutex::new(secret_cache::SecretCache::default()),
                workers: Mutex::new(Vec::new()),
                scheduler: self.scheduler,
                notify: notify::NotifyState::new(self.notify),
            }),
        };
        oc.start_workers(self.workers);
        if self.retention.is_active() {
            if self.retention.interval.is_zero() {
                return Err(Error::validation(
                    "retention.interval",
                    "must be longer than zero",
                ));
            }
            tokio::spawn(retention::pruner(oc.inner.clone(), self.retention));
        }
        Ok(oc)
    }
}

/// Sends our events to other processes, coalescing bursts (many log events
/// of one run become one with the highest `seq`).
async fn notifier(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let mut batch: Vec<Event> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 1024 {
                break;
            }
        }
        let mut out: Vec<Event> = Vec::with_capacity(batch.len());
        for ev in batch.drain(..) {
            if let Event::Log(id, seq) = ev
                && let Some(Event::Log(_, s)) = out
                    .iter_mut()
                    .find(|e| matches!(e, Event::Log(i, _) if *i == id))
            {
                *s = (*s).max(seq);
                continue;
            }
            if !out.contains(&ev) {
                out.push(ev);
            }
        }
        for ev in out {
            if let Err(e) = store.notify(ev).await {
                tracing::debug!(error = %e, "cross-process notification failed (followers fall back to polling)");
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    notify_tx: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
    pub(crate) keyring: tokio::sync::RwLock<Option<crate::secrets::Keyring>>,
    pub(crate) executors: HashMap<&'static str, Arc<dyn Executor>>,
    pub(crate) bus: Bus,
    pub(crate) templates: Templates,
    local_policy: std::sync::RwLock<LocalPolicy>,
    /// The command policy screening every submit and apply.
    command_policy: std::sync::RwLock<Arc<crate::policy::Policy>>,
    pub(crate) config: Config,
    pub(crate) shutdown: CancellationToken,
    /// Stop switches of the runs this process executes right now.
    pub(crate) active: Mutex<HashMap<RunId, Arc<worker::RunStop>>>,
    /// Decrypted secret values kept between run starts (see `secret_cache`).
    pub(crate) secret_cache: Mutex<secret_cache::SecretCache>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// The scheduler's settings and clock.
    pub(crate) scheduler: SchedulerConfig,
    /// Notification settings and the deliverers' wake-up.
    pub(crate) notify: notify::NotifyState,
}

impl Inner {
    /// Announces an event in this process and, if the store can, to the others.
    pub(crate) fn publish(&self, ev: Event) {
        self.bus.publish(ev);
        if let Some(tx) = &self.notify_tx {
            let _ = tx.send(ev);
        }
    }
}

/// The engine. Cheap to clone; clones share everything. The store it holds
/// is private: front ends reach data only through its methods, which check
/// the actor against the permission matrix and record the audit events.
#[derive(Clone)]
pub struct Conductor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Conductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conductor")
            .field("store", &self.inner.store.backend())
            .field(
                "executors",
                &self.inner.executors.keys().collect::<Vec<_>>(),
            )
            .field("worker", &self.inner.config.worker_name)
            .finish()
    }
}

impl Conductor {
    /// Starts building an engine.
    pub fn builder() -> ConductorBuilder {
        ConductorBuilder {
            store: None,
            executors: Vec::new(),
            config: Config::default(),
            workers: 0,
            keyring: None,
            local_policy: LocalPolicy::default(),
            retention: Retention::default(),
            scheduler: SchedulerConfig::default(),
            notify: notify::NotifySettings::default(),
            command_policy: crate::policy::Policy::default(),
        }
    }

    /// Replaces the policy for the engine's own host (see
    /// [`ConductorBuilder::local_policy`]); servers set it from their config.
    pub fn set_local_policy(&self, policy: LocalPolicy) {
        match self.inner.local_policy.write() {
            Ok(mut p) => *p = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    /// The policy for the engine's own host.
    pub fn local_policy(&self) -> LocalPolicy {
        match self.inner.local_policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The persistence backend's name (`sqlite`, `postgres`), for start-up
    /// lines and health checks.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// The engine's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Wake-ups for front ends that want to react to runs (e.g. progress displays).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.bus.subscribe()
    }

    /// Starts a pool of `n` more execution slots that claim and execute
    /// queued runs (and rescue runs whose worker died), claiming as many runs
    /// in one statement as slots are free.
    pub fn start_workers(&self, n: usize) {
        let mut handles = match self.inner.workers.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        if n == 0 {
            return;
        }
        let inner = self.inner.clone();
        let idx = handles.len();
        // Notifications are delivered wherever runs are executed.
        notify::start_deliverer(&self.inner);
        handles.push(tokio::spawn(async move {
            worker::worker_loop(inner, idx, n).await
        }));
    }

    /// Stops claiming new runs and waits for the runs in progress to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let handles: Vec<JoinHandle<()>> = match self.inner.workers.lock() {
            Ok(mut h) => h.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        for h in handles {
            let _ = h.await;
        }
    }

    /// Graceful stop within `grace`: stops claiming, lets the runs in
    /// progress end on their own for the first part of the grace period,
    /// then stops their steps (processes killed) and finishes each such run
    /// `failed` ("interrupted: the worker was shut down …", stopped steps
    /// `interrupted`) before returning — nothing is left `running` for
    /// another node to rescue. The last part of the period (half of it, at
    /// most 5 s) is kept for that. Returns `true` if every run had ended
    /// (on its own or interrupted) within `grace`.
    pub async fn shutdown_within(&self, grace: Duration) -> bool {
        self.inner.shutdown.cancel();
        let handles: Vec<JoinHandle<()>> = match self.inner.workers.lock() {
            Ok(mut h) => h.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        let inner = self.inner.clone();
        // Also runs executed outside the pools (`execute`): wait until no
        // run of this process is active.
        let all = async move {
            futures::future::join_all(handles).await;
            while inner.active.lock().map(|a| !a.is_empty()).unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(all);
        let reserve = (grace / 2).min(Duration::from_secs(5));
        if tokio::time::timeout(grace.saturating_sub(reserve), &mut all)
            .await
            .is_ok()
        {
            return true;
        }
        let stopped = self.stop_active_runs();
        tracing::warn!(
            runs = stopped,
            "shutting down: stopping the runs still in progress; they end as interrupted"
        );
        tokio::time::timeout(reserve, &mut all).await.is_ok()
    }

    /// Stops the steps of every run this process executes now, as for a
    /// shutdown; returns how many runs that was.
    pub fn stop_active_runs(&self) -> usize {
        let active = match self.inner.active.lock() {
            Ok(a) => a.values().cloned().collect::<Vec<_>>(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        for stop in &active {
            stop.stop(worker::StopReason::Shutdown);
        }
        active.len()
    }

    /// How many worker pools started by [`Conductor::start_workers`] are
    /// still running: 0 once [`Conductor::shutdown`] was called or when a pool
    /// ended on its own (a panic). Front ends report it in readiness checks,
    /// since a configured worker count says nothing about live workers.
    pub fn worker_pools_running(&self) -> usize {
        if self.inner.shutdown.is_cancelled() {
            return 0;
        }
        let handles = match self.inner.workers.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        handles.iter().filter(|h| !h.is_finished()).count()
    }
}
