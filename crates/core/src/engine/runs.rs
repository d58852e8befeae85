//! Runs through the engine: submitting (validated and rendered before
//! anything is queued), reading, cancelling, waiting, following output and
//! executing one run in the calling task.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Conductor, worker};
use crate::auth::Permission;
use crate::bus::Event;
use crate::error::{Error, Result};
use crate::model::{
    Action, Actor, JobSpec, JobStatus, LogChunk, Run, RunId, RunStatus, Step, StepResult,
};
use crate::store::RunFilter;
use crate::{params, selector};

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

impl RunDetail {
    /// The run's outputs by target (`run.outputs` in templates): each
    /// target's step outputs merged in step order, a later step's key
    /// replacing an earlier one's — from the results held here.
    pub fn outputs(&self) -> std::collections::BTreeMap<String, serde_json::Map<String, Value>> {
        let mut out: std::collections::BTreeMap<String, serde_json::Map<String, Value>> =
            Default::default();
        // Results are by step, then target: merging in order keeps step order.
        let mut results: Vec<&StepResult> = self.results.iter().collect();
        results.sort_by_key(|r| r.step);
        for r in results {
            if !r.outputs.is_empty() {
                out.entry(r.target.clone())
                    .or_default()
                    .extend(r.outputs.clone());
            }
        }
        out
    }
}

/// A live stream of log chunks; ends when the run has ended and all output was delivered.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk>> + Send>>;

/// Largest page of stored output [`Conductor::log_page`] returns.
pub const MAX_LOG_PAGE: usize = 5000;

/// Largest page of results [`Conductor::run_page`] returns: a page is read
/// whole into memory, so its size is bounded here, whatever the front end
/// asks (the HTTP API asks for at most 5,000 and one more, to learn whether
/// more follow).
pub const MAX_RESULT_PAGE: usize = 10_000;

/// Chunks read from the store per statement when streaming output.
const LOG_BATCH: usize = 500;

/// One page of a run's stored output.
#[derive(Debug, Clone, Serialize)]
pub struct LogPage {
    /// The chunks, by `seq`.
    pub chunks: Vec<LogChunk>,
    /// The `after` of the next page (the last `seq` here, or the `after` asked for).
    pub next_after: u64,
    /// The run's status, read before the chunks.
    pub run_status: RunStatus,
    /// The run had ended and no chunk comes after this page.
    pub complete: bool,
}

/// A run that passed every check of [`Conductor::check_run`].
pub(super) struct Checked {
    pub id: RunId,
    pub spec: JobSpec,
    pub version: Option<u32>,
    pub params: Value,
    pub targets: Vec<crate::model::Target>,
    /// What approvers see (and the command policy's findings).
    pub plan: super::approvals::Plan,
}

/// Why a prepared run waits for approval: the approval it needs, the
/// reasons (`job`, `policy`) and the frozen plan approvers see.
pub(crate) type Gate = (
    crate::approval::ApprovalSpec,
    Vec<String>,
    super::approvals::Plan,
);

/// The name ad-hoc runs are listed under.
pub const ADHOC_JOB: &str = "exec";

impl Conductor {
    /// Validates and queues a run of a stored job: the parameters against the
    /// schema, the targets against the selector, every template against each
    /// target. Nothing is queued if anything is wrong.
    pub async fn submit(&self, req: SubmitRequest, actor: &Actor) -> Result<Run> {
        actor.require(crate::auth::Permission::Run)?;
        let job = self.find_job(&req.job, req.version).await?;
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
            None,
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
            notify: vec![],
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
                retry: None,
                when: None,
                outputs: None,
                origin: Default::default(),
            }],
            strategy: Default::default(),
            batch: None,
            pause: None,
            max_failures: None,
            retry: None,
            on_failure: vec![],
            finally: vec![],
            approval: None,
        };
        self.enqueue(
            spec,
            None,
            Value::Object(Default::default()),
            &req.targets,
            actor,
            None,
        )
        .await
    }

    /// Queues a run of `spec` (a stored version, or an ad-hoc one) once
    /// everything about it was checked; `parent` links a child run to the
    /// `job:` step that started it.
    pub(super) async fn enqueue(
        &self,
        spec: JobSpec,
        version: Option<(u32, &str)>,
        params: Value,
        selector: &[String],
        actor: &Actor,
        parent: Option<crate::model::RunParent>,
    ) -> Result<Run> {
        let all = self.all_targets().await?;
        let (mut run, targets, gate) = self
            .prepare_run(spec, version, params, selector, &all, actor)
            .await?;
        run.parent = parent;
        self.insert_prepared(run, &targets, gate, actor).await
    }

    /// Everything `submit` checks and renders, up to a `queued` run that is
    /// not stored yet (the scheduler stores it with its fire record).
    /// `all_targets` is the list the selector is resolved against.
    pub(crate) async fn prepare_run(
        &self,
        spec: JobSpec,
        version: Option<(u32, &str)>,
        params: Value,
        selector: &[String],
        all_targets: &[crate::model::Target],
        actor: &Actor,
    ) -> Result<(Run, Vec<crate::model::Target>, Option<Gate>)> {
        let Checked {
            id,
            spec,
            version,
            params,
            targets,
            plan,
        } = self
            .check_run(spec, version, params, selector, all_targets, actor)
            .await?;
        let gate = super::approvals::gate(&spec, &plan);
        let run = Run {
            id,
            job: spec.name.clone(),
            job_version: version,
            spec,
            params,
            targets: targets.iter().map(|t| t.name.clone()).collect(),
            status: if gate.is_some() {
                RunStatus::WaitingApproval
            } else {
                RunStatus::Queued
            },
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
            schedule: None,
            parent: None,
        };
        let gate = gate.map(|(g, reasons)| (g, reasons, plan));
        Ok((run, targets, gate))
    }

    /// Stores a prepared run, wakes workers and records `run.submit`.
    async fn insert_prepared(
        &self,
        run: Run,
        targets: &[crate::model::Target],
        gate: Option<Gate>,
        actor: &Actor,
    ) -> Result<Run> {
        // An ad-hoc command is recorded in the audit log, masked with the
        // secrets the run will hold (its targets' credentials).
        let command = match (&run.job_version, run.spec.steps.first().map(|s| &s.action)) {
            (None, Some(Action::Exec { command })) if run.job == ADHOC_JOB => {
                Some(self.inner.mask_for_audit(&run, targets, command).await)
            }
            _ => None,
        };
        match gate {
            Some((gate, reasons, plan)) => {
                self.inner
                    .insert_waiting(&run, gate, reasons, plan, actor)
                    .await?;
                self.inner.publish(Event::Updated(run.id));
            }
            None => {
                self.inner.store.insert_run(&run).await?;
                self.inner.publish(Event::Queued(run.id));
            }
        }
        let mut detail =
            serde_json::json!({"job": run.job, "version": run.job_version, "targets": run.targets});
        if let (Some(p), Some(m)) = (&run.parent, detail.as_object_mut()) {
            m.insert("parent".into(), serde_json::json!(p));
        }
        if let (Some(c), Some(m)) = (command, detail.as_object_mut()) {
            m.insert("command".into(), Value::String(c));
        }
        self.inner
            .audit_as(actor, "run.submit", format!("run:{}", run.id), detail)
            .await;
        Ok(run)
    }

    /// Everything `submit` checks before a run is queued (and a dry run
    /// before it shows the plan): targets, the local-host policy, secrets,
    /// every template of every step (cleanup steps included) on every
    /// target, and what each target's executor can do.
    pub(super) async fn check_run(
        &self,
        spec: JobSpec,
        version: Option<(u32, &str)>,
        params: Value,
        selector: &[String],
        all_targets: &[crate::model::Target],
        actor: &Actor,
    ) -> Result<Checked> {
        let (version, author) = version.unzip();
        let targets = selector::resolve(selector, all_targets)?;
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
        let policy = self.command_policy();
        let (inner, spec, targets, params, plan) = {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                // Every rendered text is screened by the command policy and
                // goes into the plan approvers see (engine/approvals.rs).
                let mut plan = super::approvals::PlanBuilder::new(policy, &spec, version, &params);
                for t in &targets {
                    for (i, phase, step) in spec.all_steps() {
                        // Outputs of earlier steps exist only while the run runs.
                        if crate::flow::reads_run_facts(step, &inner.templates) {
                            continue;
                        }
                        let run = worker::RunView {
                            id,
                            spec: &spec,
                            version,
                            attempt: 1,
                            params: &params,
                        };
                        let rendered = worker::render_step(
                            &inner.templates,
                            step,
                            worker::exec_quoting(&inner, t),
                            &worker::context_for(&run, t, phase),
                        )
                        .map_err(|e| match e {
                            // Paths name their own field (`steps[1].copy.dest`).
                            super::RenderError::Path(p) => Error::validation(
                                format!("{}.{}", spec.field_of(i), p.field),
                                format!(
                                    "{} (step '{}', target '{}')",
                                    p.message, step.name, t.name
                                ),
                            ),
                            super::RenderError::Template(m) => Error::validation(
                                format!(
                                    "{} ({}) on target '{}'",
                                    spec.field_of(i),
                                    step.name,
                                    t.name
                                ),
                                m,
                            ),
                        })?;
                        plan.add(&spec, i, t, &rendered)?;
                    }
                }
                let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
                let plan = plan.finish(&names);
                Ok::<_, Error>((inner, spec, targets, params, plan))
            })
            .await
            .map_err(|e| Error::Internal(format!("rendering templates: {e}")))??
        };
        drop(inner);
        for t in &targets {
            for (i, _, step) in spec.all_steps() {
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
                            format!(
                                "{} ({}) on target '{}'",
                                spec.field_of(i),
                                step.name,
                                t.name
                            ),
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
                            format!(
                                "{} ({}).limits on target '{}'",
                                spec.field_of(i),
                                step.name,
                                t.name
                            ),
                            m,
                        )
                    })?;
                }
            }
        }
        Ok(Checked {
            id,
            spec,
            version,
            params,
            targets,
            plan,
        })
    }

    /// Finds a run by full id or by a unique prefix of it (as people type).
    pub async fn resolve_run_id(&self, text: &str, actor: &Actor) -> Result<RunId> {
        actor.require(Permission::Read)?;
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
    pub async fn run(&self, id: RunId, actor: &Actor) -> Result<RunDetail> {
        actor.require(Permission::Read)?;
        let run = self.get_run(id).await?;
        let results = self.inner.store.step_results(id).await?;
        Ok(RunDetail { run, results })
    }

    /// A run with one page of its results: at most `limit` (1 to
    /// [`MAX_RESULT_PAGE`]), by step then target in byte order, after
    /// `after` (the step and target of the previous page's last result). A
    /// large run's detail is read a page at a time, never whole.
    pub async fn run_page(
        &self,
        id: RunId,
        after: Option<(u32, &str)>,
        limit: usize,
        actor: &Actor,
    ) -> Result<RunDetail> {
        actor.require(Permission::Read)?;
        if !(1..=MAX_RESULT_PAGE).contains(&limit) {
            return Err(Error::validation(
                "limit",
                format!("{limit} is out of range (1-{MAX_RESULT_PAGE})"),
            ));
        }
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
    pub async fn runs(&self, filter: &RunFilter, actor: &Actor) -> Result<Vec<Run>> {
        actor.require(Permission::Read)?;
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
    pub async fn wait(&self, id: RunId, actor: &Actor) -> Result<Run> {
        actor.require(Permission::Read)?;
        self.wait_run(id).await
    }

    async fn wait_run(&self, id: RunId) -> Result<Run> {
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
    pub async fn follow(&self, id: RunId, after: u64, actor: &Actor) -> Result<LogStream> {
        actor.require(Permission::Read)?;
        self.get_run(id).await?;
        Ok(self.stream_logs(id, after, true))
    }

    /// The run's stored output from `after`, read from the store in bounded
    /// pages: everything stored now, without waiting for more (use
    /// [`Conductor::follow`] for that). Front ends never page the store
    /// themselves.
    pub async fn logs(&self, id: RunId, after: u64, actor: &Actor) -> Result<LogStream> {
        actor.require(Permission::Read)?;
        self.get_run(id).await?;
        Ok(self.stream_logs(id, after, false))
    }

    /// One page of stored output: at most `limit` chunks after `after`
    /// (1 to [`MAX_LOG_PAGE`]), with the run's status read first, so that
    /// `complete` (the run had ended and this page holds the rest) is exact.
    pub async fn log_page(
        &self,
        id: RunId,
        after: u64,
        limit: usize,
        actor: &Actor,
    ) -> Result<LogPage> {
        actor.require(Permission::Read)?;
        if !(1..=MAX_LOG_PAGE).contains(&limit) {
            return Err(Error::validation(
                "limit",
                format!("{limit} is out of range (1-{MAX_LOG_PAGE})"),
            ));
        }
        // Status first: if the run had ended, every chunk is stored already.
        let run = self.get_run(id).await?;
        let chunks = self.inner.store.read_logs(id, after, limit).await?;
        let complete = run.status.is_terminal() && chunks.len() < limit;
        let next_after = chunks.last().map_or(after, |c| c.seq);
        Ok(LogPage {
            chunks,
            next_after,
            run_status: run.status,
            complete,
        })
    }

    /// Pages the store into a channel (bounded memory); `live` keeps going,
    /// woken by the bus or the poll, until the run has ended.
    fn stream_logs(&self, id: RunId, after: u64, live: bool) -> LogStream {
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
                    let chunks = match this.inner.store.read_logs(id, last, LOG_BATCH).await {
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
                    if n < LOG_BATCH {
                        break;
                    }
                }
                if ended || !live {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = this.wait_event(&mut bus, id, this.inner.config.follow_poll) => {}
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Claims this one queued run and executes it in the calling task (the CLI
    /// runs what it submitted this way). If another worker already took it,
    /// waits for it instead; a run waiting for approval is waited for until
    /// it is approved (then executed here) or ends.
    pub async fn execute(&self, id: RunId) -> Result<Run> {
        let claim = crate::store::Claim {
            worker: self.inner.config.worker_name.clone(),
            lease: self.inner.config.lease,
            limit: 1,
            only: Some(id),
        };
        let mut rx = self.inner.bus.subscribe();
        loop {
            let claimed = self.inner.store.claim_queued(&claim).await?;
            if let Some(run) = claimed.into_iter().next() {
                self.inner.publish(Event::Updated(id));
                worker::execute_run(self.inner.clone(), run).await;
                return self.get_run(id).await;
            }
            // A run waiting for approval is claimed once approved (or ends).
            if self.inner.store.run_status(id).await? != Some(RunStatus::WaitingApproval) {
                return self.wait_run(id).await;
            }
            self.wait_event(&mut rx, id, self.inner.config.poll).await;
        }
    }
}
