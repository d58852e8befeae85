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
use super::retry::{self, Retries, Waited};
use super::run::RunState;
use super::{Rendered, persist};
use crate::bus::Event;
use crate::executor::{ExecError, ExitStatus, FileSpec, OutputSink, Session, StepContext};
use crate::model::{
    Action, AuditEvent, Step, StepPhase, StepResult, StepStatus, Stream, Target, TryRecord,
};
use crate::rollout::FailureKind;

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
    /// The exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// What kind of failure it was, for the retry policy.
    pub kind: FailureKind,
}

impl StepEnd {
    pub(crate) fn ok() -> Self {
        Self::new(Outcome::Ok, None)
    }

    pub(crate) fn new(outcome: Outcome, why: Option<String>) -> Self {
        let kind = match outcome {
            Outcome::TimedOut => FailureKind::Timeout,
            _ => FailureKind::Other,
        };
        Self {
            outcome,
            why,
            exit_code: None,
            kind,
        }
    }

    fn exited(mut self, code: Option<i32>) -> Self {
        self.exit_code = code;
        if let (Outcome::Failed, Some(c)) = (self.outcome, code) {
            self.kind = FailureKind::Exit(c);
        }
        self
    }

    fn of_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }

    /// The stored status this end is recorded as.
    fn status(&self) -> StepStatus {
        match self.outcome {
            Outcome::Ok => StepStatus::Succeeded,
            Outcome::Failed => StepStatus::Failed,
            Outcome::TimedOut => StepStatus::TimedOut,
            Outcome::Cancelled => StepStatus::Cancelled,
        }
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
    /// Which try this is (1 without retries).
    pub try_no: u32,
    /// The earlier tries.
    pub tries: Vec<TryRecord>,
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
            try_no: o.try_no,
            tries: o.tries,
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

/// One try of one step on one target while it runs: where its output goes
/// and what it records.
struct StepRun<'a> {
    st: &'a RunState,
    si: u32,
    ti: usize,
    step: &'a Step,
    name: &'a str,
    out: OutputSink,
    /// Which list the step is in: cleanup steps (`on_failure`, `finally`)
    /// still run after a cancel or the run's deadline.
    phase: StepPhase,
    try_no: u32,
    /// The earlier tries, recorded with this one.
    tries: Vec<TryRecord>,
    /// The step's stdout as seen for outputs (exec and script steps).
    capture: Option<Arc<std::sync::Mutex<crate::flow::OutputCapture>>>,
}

/// What an earlier attempt of the run left of a step on a target.
enum Resume {
    /// It ended; nothing runs.
    Settled(StepEnd),
    /// It runs (again): try `try_no`, after `tries`.
    Run { try_no: u32, tries: Vec<TryRecord> },
}

/// Longest a cleanup step (`on_failure`, `finally`) without a `timeout` of
/// its own may run: it runs after the run's own deadline may have passed,
/// so that deadline cannot bound it.
pub(crate) const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs step `si` (an index across `steps`, `on_failure` and `finally`) on
/// target `ti`, with its retries, or settles it from an earlier attempt.
pub(crate) async fn step_on_target(st: &RunState, si: u32, ti: usize) -> StepEnd {
    let name = st.run.targets[ti].as_str();
    let Some(step) = st.run.spec.step_at(si as usize) else {
        return StepEnd::new(Outcome::Failed, Some(format!("no step {si}")));
    };
    let base = st.sink.for_step(si, name);
    let retries = Retries::of(&st.run.spec, step);
    let mut sr = StepRun {
        st,
        si,
        ti,
        step,
        name,
        out: base.clone(),
        phase: st.run.spec.phase_of(si as usize),
        try_no: 1,
        tries: Vec::new(),
        capture: None,
    };
    match sr.resume(&retries).await {
        Resume::Settled(end) => return end,
        Resume::Run { try_no, tries } => {
            sr.try_no = try_no;
            sr.tries = tries;
        }
    }
    loop {
        // Each try has its own output, and its own outputs (exec and
        // script steps publish them on stdout).
        sr.capture = matches!(step.action, Action::Exec { .. } | Action::Script { .. })
            .then(super::outputs::capture);
        sr.out = match &sr.capture {
            Some(c) => base.for_try(sr.try_no).with_capture(c.clone()),
            None => base.for_try(sr.try_no),
        };
        let started = Utc::now();
        if sr.try_no > 1 {
            sr.system(format!("try {} of {}\n", sr.try_no, retries.attempts()))
                .await;
        }
        let end = sr.once(started).await;
        let ended = Utc::now();
        if end.outcome == Outcome::Ok || !retries.again(&end.kind, sr.try_no) {
            return end;
        }
        let delay = retries.delay_before(sr.try_no + 1);
        sr.system(format!(
            "retrying in {} ({} of {} tries used)\n",
            crate::duration::format(delay),
            sr.try_no,
            retries.attempts()
        ))
        .await;
        let deadline = Limits::of(st, step, sr.phase).run;
        match retry::wait(delay, &sr.token(), deadline).await {
            Waited::Done => {}
            Waited::Stopped => return end,
            Waited::Deadline => {
                sr.system("not retrying: the run's time limit comes first\n".into())
                    .await;
                return end;
            }
        }
        sr.tries.push(TryRecord {
            try_no: sr.try_no,
            status: end.status(),
            exit_code: end.exit_code,
            error: end.why.as_ref().map(|e| st.secrets.masker.mask_str(e)),
            started_at: started,
            finished_at: ended,
        });
        sr.try_no += 1;
    }
}

impl StepRun<'_> {
    /// One try: renders the step for the target, records it running, runs
    /// it and records how it ended.
    async fn once(&self, started: DateTime<Utc>) -> StepEnd {
        let st = self.st;
        let Some(target) = st.targets[self.ti].clone() else {
            return self
                .fail(started, format!("target '{}' no longer exists", self.name))
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
        if self.phase != StepPhase::Main
            && let Some(m) = ctx.as_object_mut()
        {
            m.insert("failure".into(), st.failure_of(self.ti));
        }
        // What earlier steps did costs a pass over every recorded step:
        // only steps that read it pay (a long job stays linear).
        if self.step.when.is_some() || crate::flow::reads_run_facts(self.step, &st.inner.templates)
        {
            st.facts.extend_context(&st.run.spec, self.name, &mut ctx);
        }
        if let Some(when) = &self.step.when {
            match st.inner.templates.condition(when, &ctx) {
                Ok(true) => {}
                Ok(false) => return self.skip(started, when).await,
                Err(m) => return self.fail(started, format!("condition error: {m}")).await,
            }
        }
        let quoting = exec_quoting(&st.inner, &target);
        let rendered = match render_step(&st.inner.templates, self.step, quoting, &ctx) {
            Ok(r) => r,
            Err(m) => return self.fail(started, format!("template error: {m}")).await,
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
            return super::child::run(st, self.si, self.name, call).await;
        }
        self.record(StepStatus::Running, None, None, started).await;
        self.run(target, rendered, started).await
    }

    /// The token this step's executor watches: the run's stop switch, or
    /// for cleanup steps the one a cancel does not pull.
    fn token(&self) -> tokio_util::sync::CancellationToken {
        match self.phase {
            StepPhase::Main => self.st.stop.token(),
            _ => self.st.stop.hard_token(),
        }
    }

    /// Settles the step from what an earlier attempt of the run recorded,
    /// or says which try runs next. A try that failed in a way its retry
    /// policy retries is tried again (the worker stopped during the wait).
    async fn resume(&self, retries: &Retries<'_>) -> Resume {
        let Some(prev) = self.st.previous.get(&(self.si, self.name.to_string())) else {
            return Resume::Run {
                try_no: 1,
                tries: Vec::new(),
            };
        };
        let again = |kind: FailureKind| {
            let mut tries = prev.tries.clone();
            tries.push(TryRecord {
                try_no: prev.try_no,
                status: prev.status,
                exit_code: prev.exit_code,
                error: prev.error.clone(),
                started_at: prev.started_at,
                finished_at: prev.finished_at.unwrap_or_else(Utc::now),
            });
            retries.again(&kind, prev.try_no).then_some(Resume::Run {
                try_no: prev.try_no + 1,
                tries,
            })
        };
        let settled = |e: StepEnd| Resume::Settled(e.exited(prev.exit_code));
        match prev.status {
            StepStatus::Succeeded | StepStatus::Skipped => settled(StepEnd::ok()),
            StepStatus::Failed => {
                let kind = match (prev.exit_code, prev.error.as_deref()) {
                    (Some(c), _) => FailureKind::Exit(c),
                    (None, Some(e)) if e.starts_with(CONNECT_PREFIX) => FailureKind::Connection,
                    _ => FailureKind::Other,
                };
                again(kind)
                    .unwrap_or_else(|| settled(StepEnd::new(Outcome::Failed, prev.error.clone())))
            }
            StepStatus::Interrupted => settled(StepEnd::new(Outcome::Failed, prev.error.clone())),
            StepStatus::TimedOut => again(FailureKind::Timeout)
                .unwrap_or_else(|| settled(StepEnd::new(Outcome::TimedOut, prev.error.clone()))),
            StepStatus::Cancelled => settled(StepEnd::new(Outcome::Cancelled, None)),
            // A `job:` step is always resumed: its child is found again, never
            // started twice (see `child.rs`).
            StepStatus::Running
                if !self.step.idempotent && !matches!(self.step.action, Action::Job { .. }) =>
            {
                let why = "interrupted: its worker stopped while it ran, and the step is not marked idempotent, so it is not run again".to_string();
                let me = StepRun {
                    try_no: prev.try_no,
                    tries: prev.tries.clone(),
                    out: self.out.clone(),
                    capture: None,
                    ..*self
                };
                me.system(format!("{why}\n")).await;
                let why = Some(why);
                me.record(StepStatus::Interrupted, None, why.clone(), Utc::now())
                    .await;
                Resume::Settled(StepEnd::new(Outcome::Failed, why))
            }
            StepStatus::Running if matches!(self.step.action, Action::Job { .. }) => {
                self.system(
                    "resuming: its worker stopped while it waited for its child run, which is found again, never started twice\n"
                        .into(),
                )
                .await;
                Resume::Run {
                    try_no: prev.try_no,
                    tries: prev.tries.clone(),
                }
            }
            StepStatus::Running => {
                self.system(
                    "re-running: its worker stopped while it ran, and the step is idempotent\n"
                        .into(),
                )
                .await;
                Resume::Run {
                    try_no: prev.try_no,
                    tries: prev.tries.clone(),
                }
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
                try_no: self.try_no,
                tries: self.tries.clone(),
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
                    // Before the command started: always safe to try again.
                    let why = format!("{CONNECT_PREFIX}{why}");
                    return self
                        .fail(started, why)
                        .await
                        .of_kind(FailureKind::Connection);
                }
            }
        }
        let Some(session) = slot.as_ref() else {
            drop(slot);
            return self.fail(started, "no session".into()).await;
        };
        let limits = Limits::of(self.st, self.step, self.phase);
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
                cancel: self.token(),
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
                try_no: self.try_no,
                tries: self.tries.clone(),
                outputs,
                children: Vec::new(),
            })
            .await;
        StepEnd::new(end.outcome, end.why).exited(end.exit.and_then(|e| e.code))
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
    /// The run's deadline, when it applies to the step (not to cleanup
    /// steps, which run after it).
    run: Option<Instant>,
}

impl Limits {
    fn of(st: &RunState, step: &Step, phase: StepPhase) -> Self {
        let (own, run) = match phase {
            StepPhase::Main => (step.timeout.map(after), st.run_deadline),
            _ => (Some(after(step.timeout.unwrap_or(CLEANUP_TIMEOUT))), None),
        };
        let deadline = match (own, run) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self {
            step: own,
            deadline,
            run,
        }
    }

    /// Which limit a timed-out step reached, in words.
    fn which(&self, st: &RunState, step: &Step) -> String {
        match (step.timeout, st.run.spec.timeout) {
            (Some(t), _) if self.step == self.deadline => {
                format!("the step's time limit ({})", crate::duration::format(t))
            }
            (None, _) if self.run.is_none() => format!(
                "the time limit of cleanup steps ({})",
                crate::duration::format(CLEANUP_TIMEOUT)
            ),
            (_, Some(t)) => format!("the run's time limit ({})", crate::duration::format(t)),
            _ => "the time limit".into(),
        }
    }
}

/// How a failure to open the target's session starts its error (rescue
/// reads it back to know the failure was a connection's).
const CONNECT_PREFIX: &str = "cannot reach the target: ";

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
