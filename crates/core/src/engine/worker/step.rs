//! One step on one target: what an earlier attempt left (resume), rendering,
//! the target's session, running the action, and recording how it ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::time::Instant;

use super::lease::{StopReason, after};
use super::render::{RunView, exec_quoting, render_step, template_context};
use super::run::RunState;
use super::{Rendered, persist};
use crate::bus::Event;
use crate::executor::{ExecError, ExitStatus, FileSpec, OutputSink, Session, StepContext};
use crate::model::{Action, AuditEvent, Step, StepResult, StepStatus, Stream, Target};

/// How one step ended on one target, as the run's loop sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    TimedOut,
    Cancelled,
}

/// [`Outcome`] and, for a failure, why (becomes the run's error when first).
pub(crate) struct StepEnd {
    pub outcome: Outcome,
    pub why: Option<String>,
}

impl StepEnd {
    pub(crate) fn ok() -> Self {
        Self {
            outcome: Outcome::Ok,
            why: None,
        }
    }

    pub(crate) fn new(outcome: Outcome, why: Option<String>) -> Self {
        Self { outcome, why }
    }
}

/// One step result to store: a step on a target, its status so far, and
/// when it started.
pub(crate) struct StepOutcome<'a> {
    pub step: u32,
    pub target: &'a str,
    pub status: StepStatus,
    pub exit: Option<ExitStatus>,
    /// Stored masked, like the output.
    pub error: Option<String>,
    pub started: DateTime<Utc>,
    /// What the step published (already masked; see `outputs.rs`).
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Child runs a `job:` step started.
    pub children: Vec<crate::model::RunId>,
}

impl RunState {
    /// Stores a step result unless this worker lost the run. A finished
    /// result of the last step task of a round still going is held back
    /// instead: the next write — the next step starting, moments later, or
    /// the end of the steps — stores it together with its own (one write per
    /// step instead of two). Nothing is held while other steps of the round
    /// still run, so a result never waits in memory longer than it takes to
    /// start the next step.
    pub(crate) async fn record(&self, o: StepOutcome<'_>) {
        if self.stop.lease_lost() {
            return;
        }
        let r = StepResult {
            run_id: self.run.id,
            step: o.step,
            target: o.target.to_string(),
            status: o.status,
            exit_code: o.exit.and_then(|e| e.code),
            signal: o.exit.and_then(|e| e.signal),
            // An error can quote output or a command (a failed `connect`, an
            // executor message): stored masked like the output itself.
            error: o.error.map(|e| self.secrets.masker.mask_str(&e)),
            attempt: self.run.attempt,
            started_at: o.started,
            finished_at: (o.status != StepStatus::Running).then(Utc::now),
            outputs: o.outputs,
            children: o.children,
        };
        // Later steps' conditions and templates see it (`steps.NAME`).
        self.facts.note(&r);
        let mut batch = self.take_pending();
        if r.status != StepStatus::Running && self.in_flight.load(Ordering::SeqCst) <= 1 {
            batch.push(r);
            self.hold_back(batch);
            return;
        }
        batch.push(r);
        self.store_results(batch).await;
    }

    /// Stores what [`record`](Self::record) held back, if anything.
    pub(crate) async fn flush_pending(&self) {
        let batch = self.take_pending();
        if !batch.is_empty() && !self.stop.lease_lost() {
            self.store_results(batch).await;
        }
    }

    fn take_pending(&self) -> Vec<StepResult> {
        match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    fn hold_back(&self, batch: Vec<StepResult>) {
        match self.pending.lock() {
            Ok(mut p) => *p = batch,
            Err(p) => *p.into_inner() = batch,
        }
    }

    /// Writes results (retrying through a store outage); a write the store
    /// refuses fences the worker.
    async fn store_results(&self, mut batch: Vec<StepResult>) {
        // A later result of the same step and target replaces an earlier one.
        let mut seen = std::collections::HashSet::new();
        batch.reverse();
        batch.retain(|r| seen.insert((r.step, r.target.clone())));
        batch.reverse();
        let stored = persist(&self.inner, "recording a step result", || async {
            match batch.as_slice() {
                [one] => self.inner.store.put_step_result_as(&self.worker, one).await,
                many => {
                    self.inner
                        .store
                        .put_step_results_as(&self.worker, many)
                        .await
                }
            }
        })
        .await;
        match stored {
            Ok(true) => {}
            // Fenced by the store: another node holds the run. Stop, write nothing more.
            Ok(false) => {
                tracing::warn!(run = %self.run.id, worker = %self.worker, "step result refused: this worker no longer holds the run; stopping its steps");
                self.stop.stop(StopReason::LeaseLost);
                return;
            }
            Err(e) => {
                tracing::error!(run = %self.run.id, worker = %self.worker, error = %e, "recording a step result failed")
            }
        }
        self.inner.publish(Event::Updated(self.run.id));
    }
}

/// One step on one target while it runs: where its output goes and what
/// it records.
struct StepRun<'a> {
    st: &'a RunState,
    si: u32,
    ti: usize,
    step: &'a Step,
    name: &'a str,
    out: OutputSink,
    /// The step's stdout as seen for outputs (exec and script steps).
    capture: Option<Arc<std::sync::Mutex<crate::flow::OutputCapture>>>,
}

/// Runs step `si` on target `ti` (or settles it from an earlier attempt).
pub(crate) async fn step_on_target(st: &RunState, si: u32, ti: usize) -> StepEnd {
    let name = st.run.targets[ti].as_str();
    let step = &st.run.spec.steps[si as usize];
    let capture = matches!(step.action, Action::Exec { .. } | Action::Script { .. })
        .then(super::outputs::capture);
    let out = st.sink.for_step(si, name);
    let sr = StepRun {
        st,
        si,
        ti,
        step,
        name,
        out: match &capture {
            Some(c) => out.with_capture(c.clone()),
            None => out,
        },
        capture,
    };
    if let Some(end) = sr.resume().await {
        return end;
    }
    let started = Utc::now();
    let Some(target) = st.targets[ti].clone() else {
        return sr
            .fail(started, format!("target '{name}' no longer exists"))
            .await;
    };
    let view = RunView {
        id: st.run.id,
        spec: &st.run.spec,
        version: st.run.job_version,
        attempt: st.run.attempt,
        params: &st.run.params,
    };
    let mut ctx = template_context(&view, &target);
    st.facts.extend_context(&st.run.spec, name, &mut ctx);
    if let Some(when) = &sr.step.when {
        match st.inner.templates.condition(when, &ctx) {
            Ok(true) => {}
            Ok(false) => return sr.skip(started, when).await,
            Err(m) => return sr.fail(started, format!("condition error: {m}")).await,
        }
    }
    let quoting = exec_quoting(&st.inner, &target);
    let rendered = match render_step(&st.inner.templates, sr.step, quoting, &ctx) {
        Ok(r) => r,
        Err(m) => return sr.fail(started, format!("template error: {m}")).await,
    };
    if let Rendered::Job {
        job,
        params,
        targets,
    } = rendered
    {
        let call = super::child::Call {
            job,
            params,
            targets,
            started,
        };
        return super::child::run(st, si, name, call).await;
    }
    sr.record(StepStatus::Running, None, None, started).await;
    sr.run(target, rendered, started).await
}

impl StepRun<'_> {
    /// Settles the step from what an earlier attempt recorded, or says it
    /// must run (`None`).
    async fn resume(&self) -> Option<StepEnd> {
        let prev = self.st.previous.get(&(self.si, self.name.to_string()))?;
        match prev.status {
            StepStatus::Succeeded | StepStatus::Skipped => Some(StepEnd::ok()),
            StepStatus::Failed | StepStatus::Interrupted => {
                Some(StepEnd::new(Outcome::Failed, prev.error.clone()))
            }
            StepStatus::TimedOut => Some(StepEnd::new(Outcome::TimedOut, prev.error.clone())),
            StepStatus::Cancelled => Some(StepEnd::new(Outcome::Cancelled, None)),
            // A `job:` step is always resumed: its child is found again, never
            // started twice (see `child.rs`).
            StepStatus::Running
                if !self.step.idempotent && !matches!(self.step.action, Action::Job { .. }) =>
            {
                let why = "interrupted: its worker stopped while it ran, and the step is not marked idempotent, so it is not run again".to_string();
                self.system(format!("{why}\n")).await;
                let why = Some(why);
                self.record(StepStatus::Interrupted, None, why.clone(), Utc::now())
                    .await;
                Some(StepEnd::new(Outcome::Failed, why))
            }
            StepStatus::Running if matches!(self.step.action, Action::Job { .. }) => {
                self.system(
                    "resuming: its worker stopped while it waited for its child run, which is found again, never started twice\n"
                        .into(),
                )
                .await;
                None
            }
            StepStatus::Running => {
                self.system(
                    "re-running: its worker stopped while it ran, and the step is idempotent\n"
                        .into(),
                )
                .await;
                None
            }
        }
    }

    /// Writes a line of the engine's own (`system`) output.
    async fn system(&self, line: String) {
        self.out.write(Stream::System, line).await;
    }

    async fn record(
        &self,
        status: StepStatus,
        exit: Option<ExitStatus>,
        error: Option<String>,
        started: DateTime<Utc>,
    ) {
        self.st
            .record(StepOutcome {
                step: self.si,
                target: self.name,
                status,
                exit,
                error,
                started,
                outputs: BTreeMap::new(),
                children: Vec::new(),
            })
            .await;
    }

    /// Records the step `skipped` on this target: its condition was false.
    async fn skip(&self, started: DateTime<Utc>, when: &str) -> StepEnd {
        let why = format!("skipped: the condition `{}` is false", when.trim());
        self.system(format!("{why}\n")).await;
        self.record(StepStatus::Skipped, None, Some(why), started)
            .await;
        StepEnd::ok()
    }

    /// Fails the step before it ran: says why in its output and records it.
    async fn fail(&self, started: DateTime<Utc>, why: String) -> StepEnd {
        self.system(format!("error: {why}\n")).await;
        self.record(StepStatus::Failed, None, Some(why.clone()), started)
            .await;
        StepEnd::new(Outcome::Failed, Some(why))
    }

    /// Opens the target's session if needed, runs the rendered action in it
    /// and records the result.
    async fn run(&self, target: Target, rendered: Rendered, started: DateTime<Utc>) -> StepEnd {
        // One session per target per run, opened on first use.
        let mut slot = self.st.sessions[self.ti].lock().await;
        if slot.is_none() {
            match self.connect(&target).await {
                Ok(s) => *slot = Some(s),
                Err(why) => {
                    drop(slot);
                    return self.fail(started, why).await;
                }
            }
        }
        let Some(session) = slot.as_ref() else {
            drop(slot);
            return self.fail(started, "no session".into()).await;
        };
        let limits = Limits::of(self.st, self.step);
        // Fencing: never start a step once the lease may have run out (the
        // heartbeat task stops the run too, but it may not have run yet, e.g.
        // right after this process was paused).
        if self.st.clock.fenced() || self.st.stop.lease_lost() {
            drop(slot);
            self.st.stop.stop(StopReason::LeaseLost);
            return StepEnd::new(Outcome::Cancelled, None);
        }
        let env = self.env().await;
        let ctx = |extra: Vec<(String, String)>, workdir: Option<String>| {
            let mut env = env.clone();
            env.extend(extra);
            StepContext {
                run_id: self.st.run.id,
                step: self.si,
                target: target.clone(),
                env,
                workdir,
                deadline: limits.deadline,
                cancel: self.st.stop.token(),
                limits: self.step.limits.clone(),
                lease_margin: Some(super::lease::lease_margin(&self.st.inner)),
            }
        };
        let result = match rendered {
            Rendered::Run {
                cmd,
                env: extra,
                workdir,
            } => session.exec(&ctx(extra, workdir), &cmd, &self.out).await,
            Rendered::Copy {
                dest,
                content,
                src,
                mode,
            } => {
                let file = copy_source(dest, content, src, mode).await;
                self.copy(session.as_ref(), &ctx(Vec::new(), None), file)
                    .await
            }
            // Handled before a session is opened (`child.rs`).
            Rendered::Job { .. } => Err(ExecError::Io("a job step has no session".into())),
        };
        drop(slot);
        self.out.finish().await;
        self.conclude(result, started, &limits).await
    }

    /// Opens a session to `target`, auditing the use of its credential.
    async fn connect(&self, target: &Target) -> Result<Box<dyn Session>, String> {
        let st = self.st;
        let kind = target.connection.kind();
        let Some(exec) = st.inner.executors.get(kind) else {
            let have: Vec<&str> = st.inner.executors.keys().copied().collect();
            return Err(format!(
                "no executor for '{kind}' targets in this build (available: {})",
                have.join(", ")
            ));
        };
        let cred = st.secrets.creds.get(self.name);
        if let Some(c) = cred {
            let secret = target.credential.clone().unwrap_or_default();
            st.inner
                .audit(AuditEvent::now(
                    &st.run.requested_by,
                    "secret.use",
                    format!("secret:{secret}"),
                    // The step that opened the session: the credential is used once per
                    // target per run, for that step and the ones after it.
                    json!({"run": st.run.id, "step": self.si, "step_name": self.step.name, "target": self.name, "as": "credential", "kind": c.kind}),
                ))
                .await;
        }
        exec.connect(target, cred).await.map_err(|e| e.to_string())
    }

    /// The step's environment: the run's `OPSC_*` variables and the declared
    /// secrets (whose use is audited once per step and target).
    async fn env(&self) -> BTreeMap<String, String> {
        let st = self.st;
        let mut env = BTreeMap::new();
        env.insert("OPSC_RUN_ID".into(), st.run.id.to_string());
        env.insert("OPSC_JOB".into(), st.run.job.clone());
        env.insert("OPSC_TARGET".into(), self.name.to_string());
        env.insert("OPSC_STEP".into(), self.step.name.clone());
        // Declared secrets reach the process as environment variables only.
        if !st.secrets.env.is_empty() {
            env.extend(st.secrets.env.iter().cloned());
            for secret in &st.secrets.names {
                st.inner
                    .audit(AuditEvent::now(
                        &st.run.requested_by,
                        "secret.use",
                        format!("secret:{secret}"),
                        json!({"run": st.run.id, "step": self.si, "step_name": self.step.name, "target": self.name}),
                    ))
                    .await;
            }
        }
        env
    }

    /// Writes a file through the session and says so in the output.
    async fn copy(
        &self,
        session: &dyn Session,
        ctx: &StepContext,
        file: Result<FileSpec, ExecError>,
    ) -> Result<ExitStatus, ExecError> {
        let file = file?;
        let len = file.content.len();
        session.copy(ctx, &file).await?;
        self.system(format!(
            "copied {len} bytes to {} (mode {:04o})\n",
            file.dest, file.mode
        ))
        .await;
        Ok(ExitStatus::code(0))
    }

    /// Records how the action ended and says it in the output.
    async fn conclude(
        &self,
        result: Result<ExitStatus, ExecError>,
        started: DateTime<Utc>,
        limits: &Limits,
    ) -> StepEnd {
        // Outputs of a step that exited (also with a failure: a later step
        // with `continue_on_error` upstream may read them).
        let published = match (&self.capture, &result) {
            (Some(c), Ok(_)) => Some(super::outputs::finish_capture(
                c,
                self.step.outputs,
                &self.st.secrets.masker,
            )),
            _ => None,
        };
        let mut end = match result {
            Ok(status) if status.success() => Ending {
                status: StepStatus::Succeeded,
                outcome: Outcome::Ok,
                exit: Some(status),
                why: None,
                line: None,
            },
            Ok(status) => Ending {
                status: StepStatus::Failed,
                outcome: Outcome::Failed,
                exit: Some(status),
                why: Some(status.to_string()),
                line: None,
            },
            Err(ExecError::TimedOut) => {
                let why = format!(
                    "timed out: {} was reached; the process was killed",
                    limits.which(self.st, self.step)
                );
                Ending {
                    status: StepStatus::TimedOut,
                    outcome: Outcome::TimedOut,
                    exit: None,
                    line: Some(format!("{why}\n")),
                    why: Some(why),
                }
            }
            Err(ExecError::Cancelled) => return self.cancelled(started).await,
            Err(e) => {
                let why = e.to_string();
                Ending {
                    status: StepStatus::Failed,
                    outcome: Outcome::Failed,
                    exit: None,
                    line: Some(format!("error: {why}\n")),
                    why: Some(why),
                }
            }
        };
        let outputs = match published {
            Some(Ok(outputs)) => outputs,
            // A step that succeeded but published outputs out of bounds fails:
            // later steps would otherwise read half of what it meant.
            Some(Err(why)) if end.status == StepStatus::Succeeded => {
                let why = format!("outputs refused: {why}");
                end.status = StepStatus::Failed;
                end.outcome = Outcome::Failed;
                end.line = Some(format!("error: {why}\n"));
                end.why = Some(why);
                BTreeMap::new()
            }
            _ => BTreeMap::new(),
        };
        if let Some(line) = end.line {
            self.system(line).await;
        }
        self.st
            .record(StepOutcome {
                step: self.si,
                target: self.name,
                status: end.status,
                exit: end.exit,
                error: end.why.clone(),
                started,
                outputs,
                children: Vec::new(),
            })
            .await;
        StepEnd::new(end.outcome, end.why)
    }

    /// The step was stopped: record why, unless the run is no longer ours.
    async fn cancelled(&self, started: DateTime<Utc>) -> StepEnd {
        let (status, why, line) = match self.st.stop.reason() {
            // Another node may own the run now: write nothing.
            Some(StopReason::LeaseLost) => return StepEnd::new(Outcome::Cancelled, None),
            Some(StopReason::Shutdown) => {
                let why = "interrupted: the worker was shut down while the step ran; the process was killed";
                (StepStatus::Interrupted, why, format!("{why}\n"))
            }
            Some(StopReason::Cancel) | None => (
                StepStatus::Cancelled,
                "cancelled",
                "cancelled; the process was killed\n".to_string(),
            ),
        };
        self.system(line).await;
        self.record(status, None, Some(why.into()), started).await;
        StepEnd::new(Outcome::Cancelled, None)
    }
}

/// How an action ended, before it is recorded.
struct Ending {
    status: StepStatus,
    outcome: Outcome,
    exit: Option<ExitStatus>,
    why: Option<String>,
    /// What the engine says about it in the output, if anything.
    line: Option<String>,
}

/// The time limits of one step: its own and the run's.
struct Limits {
    /// The step's own deadline.
    step: Option<Instant>,
    /// The earlier of the step's and the run's.
    deadline: Option<Instant>,
}

impl Limits {
    fn of(st: &RunState, step: &Step) -> Self {
        let own = step.timeout.map(after);
        let deadline = match (own, st.run_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            step: own,
            deadline,
        }
    }

    /// Which limit a timed-out step reached, in words.
    fn which(&self, st: &RunState, step: &Step) -> String {
        match (step.timeout, st.run.spec.timeout) {
            (Some(t), _) if self.step == self.deadline => {
                format!("the step's time limit ({})", crate::duration::format(t))
            }
            (_, Some(t)) => format!("the run's time limit ({})", crate::duration::format(t)),
            _ => "the time limit".into(),
        }
    }
}

/// The file a `copy` step writes: its rendered content, or the bytes of its
/// source file on the worker's host.
async fn copy_source(
    dest: String,
    content: Option<String>,
    src: Option<String>,
    mode: u32,
) -> Result<FileSpec, ExecError> {
    let content = match (content, src) {
        (Some(c), _) => c.into_bytes(),
        (None, Some(path)) => tokio::fs::read(&path)
            .await
            .map_err(|e| ExecError::Io(format!("cannot read copy source {path}: {e}")))?,
        (None, None) => Vec::new(),
    };
    Ok(FileSpec {
        dest,
        content,
        mode,
    })
}
