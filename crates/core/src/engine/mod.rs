//! The [`Conductor`]: the only thing front ends talk to. It validates and
//! stores definitions, submits runs, runs workers that claim them under a
//! lease, and streams their logs.

mod auth;
mod local;
mod retention;
mod secret_cache;
mod secrets;
mod targets;
mod worker;

pub use local::LocalPolicy;
pub use targets::TargetCheck;

pub use retention::{
    AuditExport, DEFAULT_PRUNE_BATCH, PRUNE_BATCH_RANGE, PruneReport, PruneRequest, Retention,
};

pub use auth::{AuditVerification, Login, token_hash};

pub use secrets::{MAX_SECRET_BYTES, RotationReport, SecretInfo, SetSecret, SetSecretOutcome};

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Event};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::model::{
    Action, Actor, Job, JobSpec, JobStatus, LogChunk, Run, RunId, RunStatus, Step, StepResult,
    Target,
};
use crate::store::{ApplyBatch, ApplyItem, RunFilter, Store};
use crate::template::Templates;
use crate::{params, selector, spec};

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
}

impl ConductorBuilder {
    /// Which roles may run steps on the engine's own host (`local` targets,
    /// `copy.src`); default: admin only. Trusted actors are not affected.
    pub fn local_policy(mut self, policy: LocalPolicy) -> Self {
        self.local_policy = policy;
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
                config,
                shutdown: CancellationToken::new(),
                active: Mutex::new(HashMap::new()),
                secret_cache: Mutex::new(secret_cache::SecretCache::default()),
                workers: Mutex::new(Vec::new()),
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
    pub(crate) config: Config,
    pub(crate) shutdown: CancellationToken,
    /// Stop switches of the runs this process executes right now.
    pub(crate) active: Mutex<HashMap<RunId, Arc<worker::RunStop>>>,
    /// Decrypted secret values kept between run starts (see `secret_cache`).
    pub(crate) secret_cache: Mutex<secret_cache::SecretCache>,
    workers: Mutex<Vec<JoinHandle<()>>>,
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

/// The engine. Cheap to clone; clones share everything.
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

/// A request to run a stored job.
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    /// Job name.
    pub job: String,
    /// A specific version (default: the latest).
    pub version: Option<u32>,
    /// Parameters (an object); validated against the job's schema.
    pub params: Value,
    /// Overrides the job's target selector.
    pub targets: Option<Vec<String>>,
}

impl SubmitRequest {
    /// Runs the latest version of `job` with no parameters.
    pub fn new(job: impl Into<String>) -> Self {
        Self {
            job: job.into(),
            ..Default::default()
        }
    }

    /// Sets the parameters.
    pub fn params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// Overrides the targets.
    pub fn targets(mut self, selector: impl Into<String>) -> Self {
        self.targets = Some(vec![selector.into()]);
        self
    }
}

/// An ad-hoc command on some targets (`opsconductor exec`).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The command line, run by each target's shell. Not a template.
    pub command: String,
    /// Target selector (default `local`).
    pub targets: Vec<String>,
    /// Time limit per target.
    pub timeout: Option<Duration>,
    /// How many targets at once.
    pub concurrency: usize,
}

impl ExecRequest {
    /// A command on the local host.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            targets: vec!["local".into()],
            timeout: None,
            concurrency: crate::model::DEFAULT_CONCURRENCY,
        }
    }
}

/// A run with its per step × target results.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// Results, by step then target.
    pub results: Vec<StepResult>,
}

/// A live stream of log chunks; ends when the run has ended and all output was delivered.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk>> + Send>>;

/// The name ad-hoc runs are listed under.
pub const ADHOC_JOB: &str = "exec";

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

    /// The store, for front ends that list definitions.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The engine's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Wake-ups for front ends that want to react to runs (e.g. progress displays).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.bus.subscribe()
    }

    // -- definitions --------------------------------------------------------

    /// Validates every target and job of `batch`, then stores all of them in
    /// one transaction — or nothing, if any is invalid.
    pub async fn apply(&self, batch: &ApplyBatch, actor: &Actor) -> Result<Vec<ApplyItem>> {
        if !batch.jobs.is_empty() {
            actor.require(crate::auth::Permission::ManageJobs)?;
        }
        if !batch.targets.is_empty() {
            actor.require(crate::auth::Permission::ManageTargets)?;
            if actor.role.is_some() {
                let policy = self.local_policy();
                for t in &batch.targets {
                    let existing = self.target(&t.name).await.ok();
                    policy.check_target(actor, t, existing.as_ref())?;
                }
            }
        }
        self.validate(batch)?;
        let items = self.inner.store.apply(batch, &actor.name).await?;
        for i in &items {
            if i.action != crate::store::ApplyAction::Unchanged {
                let action = format!(
                    "{}.{}",
                    i.kind,
                    if i.action == crate::store::ApplyAction::Created {
                        "create"
                    } else {
                        "update"
                    }
                );
                self.inner
                    .audit_as(
                        actor,
                        &action,
                        format!("{}:{}", i.kind, i.name),
                        serde_json::json!({"version": i.version}),
                    )
                    .await;
            }
        }
        Ok(items)
    }

    /// Checks a batch the way [`Conductor::apply`] does, without storing anything.
    pub fn validate(&self, batch: &ApplyBatch) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for t in &batch.targets {
            spec::validate_target(t).map_err(|e| e.within(&format!("target '{}'", t.name)))?;
            if !seen.insert(("target", t.name.as_str())) {
                return Err(Error::validation(
                    format!("target '{}'", t.name),
                    "defined twice in this batch",
                ));
            }
        }
        for j in &batch.jobs {
            spec::validate_job(j, &self.inner.templates)
                .map_err(|e| e.within(&format!("job '{}'", j.name)))?;
            if !seen.insert(("job", j.name.as_str())) {
                return Err(Error::validation(
                    format!("job '{}'", j.name),
                    "defined twice in this batch",
                ));
            }
        }
        Ok(())
    }

    /// Every target, including the implicit `local` unless one is defined.
    pub async fn targets(&self) -> Result<Vec<Target>> {
        let mut all = self.inner.store.list_targets().await?;
        if !all.iter().any(|t| t.name == "local") {
            all.insert(0, Target::local());
        }
        Ok(all)
    }

    /// One target (the implicit `local` included).
    pub async fn target(&self, name: &str) -> Result<Target> {
        match self.inner.store.get_target(name).await? {
            Some(t) => Ok(t),
            None if name == "local" => Ok(Target::local()),
            None => Err(self.not_found_target(name).await),
        }
    }

    async fn not_found_target(&self, name: &str) -> Error {
        let names = self
            .targets()
            .await
            .map(|ts| ts.into_iter().map(|t| t.name).collect::<Vec<_>>());
        Error::NotFound {
            what: "target",
            name: name.into(),
            hint: names
                .ok()
                .map(|n| format!("known targets: {}", n.join(", "))),
        }
    }

    /// Removes a target (runs that name it keep their history).
    pub async fn remove_target(&self, name: &str, actor: &Actor) -> Result<()> {
        actor.require(crate::auth::Permission::ManageTargets)?;
        if !self.inner.store.delete_target(name).await? {
            return Err(self.not_found_target(name).await);
        }
        self.inner
            .audit_as(
                actor,
                "target.delete",
                format!("target:{name}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// Every version of a job, oldest first.
    pub async fn job_versions(&self, name: &str) -> Result<Vec<Job>> {
        let versions = self.inner.store.job_versions(name).await?;
        if versions.is_empty() {
            return Err(self
                .job(name, None)
                .await
                .err()
                .unwrap_or_else(|| Error::not_found("job", name)));
        }
        Ok(versions)
    }

    /// The latest version of every job.
    pub async fn jobs(&self) -> Result<Vec<Job>> {
        self.inner.store.list_jobs().await
    }

    /// One job version (latest if `version` is `None`).
    pub async fn job(&self, name: &str, version: Option<u32>) -> Result<Job> {
        if let Some(j) = self.inner.store.get_job(name, version).await? {
            return Ok(j);
        }
        if let (Some(v), Some(_)) = (version, self.inner.store.get_job(name, None).await?) {
            return Err(Error::NotFound {
                what: "job version",
                name: format!("{name}@{v}"),
                hint: None,
            });
        }
        let jobs = self.inner.store.list_jobs().await?;
        let hint = if jobs.is_empty() {
            "no jobs defined yet; add some with `opsconductor apply -f FILE`".to_string()
        } else {
            format!(
                "known jobs: {}",
                jobs.iter()
                    .map(|j| j.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Error::NotFound {
            what: "job",
            name: name.into(),
            hint: Some(hint),
        })
    }

    // -- runs ---------------------------------------------------------------

    /// Validates and queues a run of a stored job: the parameters against the
    /// schema, the targets against the selector, every template against each
    /// target. Nothing is queued if anything is wrong.
    pub async fn submit(&self, req: SubmitRequest, actor: &Actor) -> Result<Run> {
        actor.require(crate::auth::Permission::Run)?;
        let job = self.job(&req.job, req.version).await?;
        if job.spec.status == JobStatus::Deprecated {
            return Err(Error::Conflict(format!(
                "job '{}' version {} is deprecated; new runs are refused",
                job.spec.name, job.version
            )));
        }
        let params = params::validate(&job.spec.params, &req.params)?;
        let selector = req
            .targets
            .clone()
            .unwrap_or_else(|| job.spec.targets.clone());
        let author = job.created_by.clone();
        self.enqueue(
            job.spec,
            Some((job.version, author.as_str())),
            params,
            &selector,
            actor,
        )
        .await
    }

    /// Queues an ad-hoc command (listed under the job name `exec`).
    pub async fn submit_exec(&self, req: ExecRequest, actor: &Actor) -> Result<Run> {
        actor.require(crate::auth::Permission::Run)?;
        if req.command.trim().is_empty() {
            return Err(Error::validation("command", "empty command"));
        }
        if req.concurrency == 0 {
            return Err(Error::validation("concurrency", "must be at least 1"));
        }
        if let Some(t) = req.timeout {
            crate::duration::check_timeout(t).map_err(|m| Error::validation("timeout", m))?;
        }
        let spec = JobSpec {
            name: ADHOC_JOB.into(),
            description: String::new(),
            tags: vec![],
            status: JobStatus::Active,
            params: Value::Null,
            targets: req.targets.clone(),
            concurrency: req.concurrency,
            timeout: None,
            secrets: vec![],
            steps: vec![Step {
                name: "exec".into(),
                action: Action::Exec {
                    command: req.command,
                },
                timeout: req.timeout,
                continue_on_error: false,
                idempotent: false,
                env: Default::default(),
                workdir: None,
                raw: true,
                limits: Default::default(),
            }],
        };
        self.enqueue(
            spec,
            None,
            Value::Object(Default::default()),
            &req.targets,
            actor,
        )
        .await
    }

    async fn enqueue(
        &self,
        spec: JobSpec,
        version: Option<(u32, &str)>,
        params: Value,
        selector: &[String],
        actor: &Actor,
    ) -> Result<Run> {
        let (version, author) = version.unzip();
        let targets = selector::resolve(selector, &self.targets().await?)?;
        let policy = self.local_policy();
        policy.check_run(actor, &spec, &targets)?;
        // A job version written by a role that may not reach the server's
        // host is not run there by anyone else either (an operator editing
        // a job an admin runs would otherwise borrow the admin's reach).
        let users = self.inner.store.user_store();
        if let Some(author) = author
            && author != actor.name
            && policy.reaches_host(&spec, &targets)
            && let Some(u) = users.get_user(author).await?
        {
            policy.check_author(&spec.name, version.unwrap_or(0), &u.username, u.role)?;
        }
        self.inner
            .check_secrets_exist(&spec.secrets, &targets)
            .await?;
        // Render every template for every target now, so a template error is
        // the submitter's error, not a failed run later.
        let id = RunId::new();
        // Rendering is CPU work bounded by the template budget (fuel and
        // output size); it runs on the blocking pool, never on the reactor.
        let (inner, spec, targets, params) = {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                for t in &targets {
                    for (i, step) in spec.steps.iter().enumerate() {
                        let run = worker::RunView {
                            id,
                            spec: &spec,
                            version,
                            attempt: 1,
                            params: &params,
                        };
                        worker::render_step(
                            &inner.templates,
                            step,
                            worker::exec_quoting(&inner, t),
                            &worker::template_context(&run, t),
                        )
                        .map_err(|m| {
                            // Paths name their own field (`steps[1].copy.dest`).
                            for field in ["copy.dest", "workdir"] {
                                if let Some(why) = m.strip_prefix(&format!("{field}: ")) {
                                    return Error::validation(
                                        format!("steps[{i}].{field}"),
                                        format!(
                                            "{why} (step '{}', target '{}')",
                                            step.name, t.name
                                        ),
                                    );
                                }
                            }
                            Error::validation(
                                format!("steps[{i}] ({}) on target '{}'", step.name, t.name),
                                m,
                            )
                        })?;
                    }
                }
                Ok::<_, Error>((inner, spec, targets, params))
            })
            .await
            .map_err(|e| Error::Internal(format!("rendering templates: {e}")))??
        };
        drop(inner);
        for t in &targets {
            for (i, step) in spec.steps.iter().enumerate() {
                // What the target's executor cannot do is the submitter's
                // error, not a failed run later.
                if let Some(e) = self.inner.executors.get(t.connection.kind()) {
                    let caps = e.capabilities();
                    let missing = match step.action {
                        Action::Script { .. } if !caps.script => Some("scripts"),
                        Action::Copy { .. } if !caps.copy => Some("copies"),
                        _ => None,
                    };
                    if let Some(what) = missing {
                        return Err(Error::validation(
                            format!("steps[{i}] ({}) on target '{}'", step.name, t.name),
                            format!("{} targets cannot run {what}", e.kind()),
                        ));
                    }
                }
                if !step.limits.is_empty() {
                    let kind = t.connection.kind();
                    let checked = match self.inner.executors.get(kind) {
                        Some(e) => e.check_step_limits(t, &step.limits),
                        None => Err(format!(
                            "this build has no executor for {kind} targets (enable the '{kind}' feature)"
                        )),
                    };
                    checked.map_err(|m| {
                        Error::validation(
                            format!("steps[{i}] ({}).limits on target '{}'", step.name, t.name),
                            m,
                        )
                    })?;
                }
            }
        }
        let run = Run {
            id,
            job: spec.name.clone(),
            job_version: version,
            spec,
            params,
            targets: targets.iter().map(|t| t.name.clone()).collect(),
            status: RunStatus::Queued,
            requested_by: actor.name.clone(),
            attempt: 0,
            worker: None,
            lease_until: None,
            cancel_requested: false,
            error: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            request_id: actor.request_id.clone(),
        };
        // An ad-hoc command is recorded in the audit log, masked with the
        // secrets the run will hold (its targets' credentials).
        let command = match (&run.job_version, run.spec.steps.first().map(|s| &s.action)) {
            (None, Some(Action::Exec { command })) if run.job == ADHOC_JOB => {
                Some(self.inner.mask_for_audit(&run, &targets, command).await)
            }
            _ => None,
        };
        self.inner.store.insert_run(&run).await?;
        self.inner.publish(Event::Queued(run.id));
        let mut detail =
            serde_json::json!({"job": run.job, "version": run.job_version, "targets": run.targets});
        if let (Some(c), Some(m)) = (command, detail.as_object_mut()) {
            m.insert("command".into(), Value::String(c));
        }
        self.inner
            .audit_as(actor, "run.submit", format!("run:{}", run.id), detail)
            .await;
        Ok(run)
    }

    /// Finds a run by full id or by a unique prefix of it (as people type).
    pub async fn resolve_run_id(&self, text: &str) -> Result<RunId> {
        if let Ok(id) = text.parse::<RunId>() {
            return Ok(id);
        }
        if text.len() < 4 || !text.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Error::validation(
                "run id",
                format!(
                    "'{text}' is not a run id (give the id or at least 4 of its first characters)"
                ),
            ));
        }
        let found = self
            .inner
            .store
            .find_runs_by_prefix(&text.to_ascii_lowercase())
            .await?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::not_found("run", text)),
            _ => Err(Error::validation(
                "run id",
                format!("'{text}' matches several runs; give more characters"),
            )),
        }
    }

    /// One run with its results.
    pub async fn get(&self, id: RunId) -> Result<RunDetail> {
        let run = self.get_run(id).await?;
        let results = self.inner.store.step_results(id).await?;
        Ok(RunDetail { run, results })
    }

    /// A run with one page of its results: at most `limit`, by step then
    /// target in byte order, after `after` (the step and target of the
    /// previous page's last result). A large run's detail is read a page at
    /// a time, never whole.
    pub async fn get_page(
        &self,
        id: RunId,
        after: Option<(u32, &str)>,
        limit: usize,
    ) -> Result<RunDetail> {
        let run = self.get_run(id).await?;
        let results = self.inner.store.step_results_page(id, after, limit).await?;
        Ok(RunDetail { run, results })
    }

    async fn get_run(&self, id: RunId) -> Result<Run> {
        self.inner
            .store
            .get_run(id)
            .await?
            .ok_or_else(|| Error::not_found("run", id.to_string()))
    }

    /// Runs matching a filter, newest first.
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.inner.store.list_runs(filter).await
    }

    /// Asks a run to stop. A queued run is cancelled at once; a running one is
    /// stopped by its worker (processes killed) within moments.
    pub async fn cancel(&self, id: RunId, actor: &Actor) -> Result<Run> {
        actor.require(crate::auth::Permission::Cancel)?;
        let run = self
            .inner
            .store
            .request_cancel(id)
            .await?
            .ok_or_else(|| Error::not_found("run", id.to_string()))?;
        if let Ok(active) = self.inner.active.lock()
            && let Some(stop) = active.get(&id)
        {
            stop.stop(worker::StopReason::Cancel);
        }
        self.inner.publish(Event::CancelRequested(id));
        self.inner
            .audit_as(
                actor,
                "run.cancel",
                format!("run:{id}"),
                serde_json::json!({"status": run.status}),
            )
            .await;
        self.inner.publish(Event::Updated(id));
        Ok(run)
    }

    /// Waits until the run has ended and returns it.
    pub async fn wait(&self, id: RunId) -> Result<Run> {
        let mut rx = self.inner.bus.subscribe();
        loop {
            // Only the status, after every change: decoding the whole run
            // (its job spec) each time would cost a long job more than its steps.
            let status = self.inner.store.run_status(id).await?;
            if status.is_none_or(|s| s.is_terminal()) {
                return self.get_run(id).await;
            }
            self.wait_event(&mut rx, id, self.inner.config.follow_poll)
                .await;
        }
    }

    /// Waits for an event about `id` or the poll interval, whichever first.
    async fn wait_event(&self, rx: &mut broadcast::Receiver<Event>, id: RunId, poll: Duration) {
        let deadline = tokio::time::sleep(poll);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                ev = rx.recv() => match ev {
                    Ok(e) if e.run_id() == id => return,
                    Ok(_) => continue,
                    // Lagged: we may have missed ours. Closed: cannot happen while we hold the bus.
                    Err(_) => return,
                },
            }
        }
    }

    /// Streams the run's output from `after` (a `seq`, 0 for the beginning),
    /// live, until the run has ended and everything was delivered. In order,
    /// without gaps or duplicates, also when it starts late.
    pub async fn follow(&self, id: RunId, after: u64) -> Result<LogStream> {
        self.get_run(id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<LogChunk>>(256);
        let this = self.clone();
        tokio::spawn(async move {
            let mut bus = this.inner.bus.subscribe();
            let mut last = after;
            loop {
                // Read the status before the logs: a run that had ended before
                // this read has all its logs stored, so the read below gets them.
                let ended = match this.inner.store.run_status(id).await {
                    Ok(Some(s)) => s.is_terminal(),
                    Ok(None) => {
                        let _ = tx.send(Err(Error::not_found("run", id.to_string()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                loop {
                    let chunks = match this.inner.store.read_logs(id, last, 500).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let n = chunks.len();
                    for c in chunks {
                        last = c.seq;
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                    if n < 500 {
                        break;
                    }
                }
                if ended {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = this.wait_event(&mut bus, id, this.inner.config.follow_poll) => {}
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Claims this one queued run and executes it in the calling task (the CLI
    /// runs what it submitted this way). If another worker already took it,
    /// waits for it instead.
    pub async fn execute(&self, id: RunId) -> Result<Run> {
        let claim = crate::store::Claim {
            worker: self.inner.config.worker_name.clone(),
            lease: self.inner.config.lease,
            limit: 1,
            only: Some(id),
        };
        let claimed = self.inner.store.claim_queued(&claim).await?;
        match claimed.into_iter().next() {
            Some(run) => {
                self.inner.publish(Event::Updated(id));
                worker::execute_run(self.inner.clone(), run).await;
                self.get_run(id).await
            }
            None => self.wait(id).await,
        }
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
