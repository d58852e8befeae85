//! A `job:` step on one target: start (or find again, after a rescue) the
//! child run, record its id on the step's result, wait for it, and make its
//! final status the step's. Stopping the parent (cancel, shutdown, its time
//! limit) cancels the child; a parent whose worker lost the lease leaves
//! the child alone: the parent's rescuer finds it and waits for it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::time::Instant;

use super::super::Conductor;
use super::lease::{StopReason, after};
use super::run::RunState;
use super::step::{Outcome, StepEnd, StepOutcome};
use crate::bus::Event;
use crate::model::{RunId, RunParent, RunStatus, StepStatus, Stream};

/// How often a waiting parent re-reads its child's status besides wake-ups.
const POLL: Duration = Duration::from_millis(500);

/// What a `job:` step asks for, rendered for one target.
pub(crate) struct Call {
    pub job: String,
    pub params: Value,
    pub targets: Vec<String>,
    pub started: DateTime<Utc>,
}

/// One `job:` step on one parent target.
struct ChildStep<'a> {
    st: &'a RunState,
    si: u32,
    name: &'a str,
    started: DateTime<Utc>,
}

impl ChildStep<'_> {
    async fn system(&self, line: String) {
        self.st
            .sink
            .for_step(self.si, self.name)
            .write(Stream::System, line)
            .await;
    }

    async fn record(
        &self,
        status: StepStatus,
        why: Option<String>,
        child: Option<RunId>,
        outputs: BTreeMap<String, Value>,
    ) {
        self.st
            .record(StepOutcome {
                step: self.si,
                target: self.name,
                status,
                exit: None,
                error: why,
                started: self.started,
                try_no: 1,
                tries: Vec::new(),
                outputs,
                children: child.into_iter().collect(),
            })
            .await;
    }

    async fn end(
        &self,
        status: StepStatus,
        outcome: Outcome,
        why: Option<String>,
        child: Option<RunId>,
    ) -> StepEnd {
        if let Some(w) = &why {
            self.system(format!("{w}\n")).await;
        }
        self.record(status, why.clone(), child, BTreeMap::new())
            .await;
        self.st.sink.for_step(self.si, self.name).finish().await;
        StepEnd::new(outcome, why)
    }
}

/// Runs a `job:` step on one parent target (see the module docs).
pub(crate) async fn run(st: &RunState, si: u32, name: &str, call: Call) -> StepEnd {
    let cs = ChildStep {
        st,
        si,
        name,
        started: call.started,
    };
    let engine = Conductor {
        inner: st.inner.clone(),
    };
    let parent = RunParent {
        run: st.run.id,
        step: si,
        target: name.to_string(),
    };
    let submitted = engine
        .submit_child(
            parent,
            &call.job,
            call.params,
            call.targets,
            &st.run.requested_by,
        )
        .await;
    let (child, fresh) = match submitted {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start job '{}': {e}", call.job);
            return cs
                .end(StepStatus::Failed, Outcome::Failed, Some(why), None)
                .await;
        }
    };
    let id = child.id;
    cs.system(if fresh {
        format!("started child run {id} of job '{}'\n", call.job)
    } else {
        format!(
            "waiting for child run {id} of job '{}' (started by an earlier attempt)\n",
            call.job
        )
    })
    .await;
    // The link on the parent's side, before waiting: visible while it runs.
    cs.record(StepStatus::Running, None, Some(id), BTreeMap::new())
        .await;
    let step = &st.run.spec.steps[si as usize];
    let deadline = match (step.timeout.map(after), st.run_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match wait(st, id, deadline).await {
        Waited::Ended(status, error) => finish(&cs, id, status, error).await,
        Waited::Stopped(reason) => stopped(&cs, &engine, id, reason).await,
        Waited::TimedOut => {
            cancel_child(&engine, id, &st.run.requested_by).await;
            let why = format!(
                "timed out: the time limit was reached while child run {id} ran; it was cancelled"
            );
            cs.end(StepStatus::TimedOut, Outcome::TimedOut, Some(why), Some(id))
                .await
        }
    }
}

/// How waiting for a child ended.
enum Waited {
    /// The child ended with this status and error.
    Ended(RunStatus, Option<String>),
    /// The parent was stopped.
    Stopped(Option<StopReason>),
    /// The step's or the run's time limit passed.
    TimedOut,
}

/// Waits for the child to end. While nobody holds it — still queued, or
/// its worker died (an expired lease) — this task claims it and executes
/// it here, in the parent's slot: a child never waits for a free slot its
/// own parent holds, and after a kill -9 of the worker that ran both, the
/// parent's rescuer also rescues the child.
async fn wait(st: &RunState, id: RunId, deadline: Option<Instant>) -> Waited {
    let mut rx = st.inner.bus.subscribe();
    let token = st.stop.token();
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    loop {
        match st.inner.store.get_run(id).await {
            Ok(Some(r)) if r.status.is_terminal() => return Waited::Ended(r.status, r.error),
            Ok(Some(r)) => {
                if let Some(run) = take_over(st, &r).await {
                    let mut exec = execute_boxed(st.inner.clone(), run);
                    tokio::select! {
                        _ = &mut exec => {}
                        _ = token.cancelled() => {
                            // The parent's stop decides (see `stopped`); the
                            // child's execution is let finish its own way.
                            if st.stop.reason() != Some(StopReason::LeaseLost) {
                                cancel_child_of(st, id).await;
                            }
                            (&mut exec).await;
                            return Waited::Stopped(st.stop.reason());
                        }
                        _ = &mut until => {
                            cancel_child_of(st, id).await;
                            (&mut exec).await;
                            return Waited::TimedOut;
                        }
                    }
                    continue;
                }
            }
            Ok(None) => {
                return Waited::Ended(
                    RunStatus::Failed,
                    Some("the child run no longer exists".into()),
                );
            }
            Err(e) => {
                tracing::warn!(run = %st.run.id, child = %id, error = %e, "reading a child run failed; retrying")
            }
        }
        let sleep = tokio::time::sleep(POLL);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Waited::Stopped(st.stop.reason()),
                _ = &mut until => return Waited::TimedOut,
                _ = &mut sleep => break,
                ev = rx.recv() => match ev {
                    Ok(e) if e.run_id() == id => break,
                    Ok(_) => continue,
                    Err(_) => break,
                },
            }
        }
    }
}

/// A child's execution as a boxed future of a named type: a child run may
/// itself have `job:` steps, so the future of `execute_run` contains this
/// one, and only a named (not inferred) type ends that recursion.
fn execute_boxed(
    inner: std::sync::Arc<super::super::Inner>,
    run: crate::model::Run,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(super::execute_run(inner, run))
}

/// Claims the child for this worker if nobody holds it: queued, or
/// running under a lease that expired.
async fn take_over(st: &RunState, child: &crate::model::Run) -> Option<crate::model::Run> {
    if st.stop.is_stopped() || st.clock.fenced() {
        return None;
    }
    let claim = crate::store::Claim {
        worker: st.worker.clone(),
        lease: st.inner.config.lease,
        limit: 1,
        only: Some(child.id),
    };
    let now = Utc::now();
    let taken = match child.status {
        RunStatus::Queued => st.inner.store.claim_queued(&claim).await,
        RunStatus::Running if child.lease_until.is_some_and(|l| l < now) => {
            st.inner.store.claim_expired(&claim, now).await
        }
        _ => return None,
    };
    let mut run = taken.ok()?.into_iter().next()?;
    run.worker = Some(st.worker.clone());
    st.inner.publish(Event::Updated(run.id));
    Some(run)
}

/// Cancels the child of `st` (its parent's decision).
async fn cancel_child_of(st: &RunState, id: RunId) {
    let engine = Conductor {
        inner: st.inner.clone(),
    };
    cancel_child(&engine, id, &st.run.requested_by).await;
}

/// The child ended: its status is the step's.
async fn finish(
    cs: &ChildStep<'_>,
    id: RunId,
    status: RunStatus,
    error: Option<String>,
) -> StepEnd {
    let (st_status, outcome, why) = match status {
        RunStatus::Succeeded => (StepStatus::Succeeded, Outcome::Ok, None),
        RunStatus::TimedOut => (
            StepStatus::TimedOut,
            Outcome::TimedOut,
            Some(format!("child run {id} timed out")),
        ),
        other => (
            StepStatus::Failed,
            Outcome::Failed,
            Some(format!(
                "child run {id} ended {other}{}",
                error.map(|e| format!(": {e}")).unwrap_or_default()
            )),
        ),
    };
    // The child's outputs, merged over its targets in name order, become
    // the step's (when they fit the bounds of one step's outputs).
    let outputs = child_outputs(cs.st, id).await;
    if let Some(w) = &why {
        cs.system(format!("{w}\n")).await;
    } else {
        cs.system(format!("child run {id} succeeded\n")).await;
    }
    cs.record(st_status, why.clone(), Some(id), outputs).await;
    cs.st.sink.for_step(cs.si, cs.name).finish().await;
    StepEnd::new(outcome, why)
}

/// The outputs of a finished child run, merged over its targets (in step
/// order, then target name order), or none when they exceed one step's bounds.
async fn child_outputs(st: &RunState, id: RunId) -> BTreeMap<String, Value> {
    let Ok(results) = st.inner.store.step_results(id).await else {
        return BTreeMap::new();
    };
    let mut merged = BTreeMap::new();
    for r in results {
        merged.extend(r.outputs);
    }
    // Already masked by the child's worker; masked again with this run's
    // secrets (a child may hold fewer).
    let merged: BTreeMap<String, Value> = merged
        .into_iter()
        .map(|(k, v)| (k, super::outputs::mask_value(v, &st.secrets.masker)))
        .collect();
    match crate::flow::check_outputs(&merged) {
        Ok(()) => merged,
        Err(_) => BTreeMap::new(),
    }
}

/// The parent was stopped while its child ran.
async fn stopped(
    cs: &ChildStep<'_>,
    engine: &Conductor,
    id: RunId,
    reason: Option<StopReason>,
) -> StepEnd {
    match reason {
        // Another worker may own the parent now; it will wait for the child.
        Some(StopReason::LeaseLost) => StepEnd::new(Outcome::Cancelled, None),
        Some(StopReason::Shutdown) => {
            cancel_child(engine, id, &cs.st.run.requested_by).await;
            let why = format!(
                "interrupted: the worker was shut down while child run {id} ran; it was cancelled"
            );
            cs.end(
                StepStatus::Interrupted,
                Outcome::Cancelled,
                Some(why),
                Some(id),
            )
            .await;
            StepEnd::new(Outcome::Cancelled, None)
        }
        Some(StopReason::Cancel) | None => {
            cancel_child(engine, id, &cs.st.run.requested_by).await;
            cs.end(
                StepStatus::Cancelled,
                Outcome::Cancelled,
                Some(format!("cancelled, and so was child run {id}")),
                Some(id),
            )
            .await;
            StepEnd::new(Outcome::Cancelled, None)
        }
    }
}

/// Cancels a child run on behalf of its parent (the engine's own decision:
/// audited as the parent's requester, by way of the parent run).
async fn cancel_child(engine: &Conductor, id: RunId, requested_by: &str) {
    let actor = crate::model::Actor {
        via: Some("parent-run".into()),
        ..crate::model::Actor::new(requested_by)
    };
    if let Err(e) = engine.cancel(id, &actor).await {
        tracing::warn!(child = %id, error = %e, "cancelling a child run failed");
    }
    engine.inner.publish(Event::Updated(id));
}
