//! Running a run's plan: its batches in order, each step-major
//! (`parallel`: a step on every target of the batch, then the next step)
//! or target-major (`rolling`: every step on a target, targets of the
//! batch side by side up to `concurrency`); the failure threshold that
//! stops starting new work; the pause between batches; and afterwards the
//! cleanup steps (`on_failure` where a target failed, `finally` on every
//! target that started).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use serde_json::{Value, json};

use super::plan;
use super::retry::{self, Waited};
use super::run::RunState;
use super::step::{Outcome, StepEnd, step_on_target};
use crate::model::{Strategy, Stream, Threshold};

/// How a target failed: what `on_failure`/`finally` templates see as
/// `failure` and what the run's error says.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub step: String,
    pub index: u32,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub why: Option<String>,
}

impl Failure {
    /// The `failure` template variable.
    pub(crate) fn to_value(f: Option<&Failure>) -> Value {
        match f {
            Some(f) => json!({
                "step": f.step,
                "index": f.index,
                "status": match f.outcome {
                    Outcome::Ok => "succeeded",
                    Outcome::Failed => "failed",
                    Outcome::TimedOut => "timed_out",
                    Outcome::Cancelled => "cancelled",
                },
                "exit_code": f.exit_code,
                "error": f.why,
            }),
            None => {
                json!({"step": null, "index": null, "status": null, "exit_code": null, "error": null})
            }
        }
    }
}

/// Where one target stands.
#[derive(Clone, Debug, Default)]
pub(crate) struct TargetState {
    /// A step of it was started (or settled from an earlier attempt).
    pub started: bool,
    /// The step that stopped it, if one did.
    pub failed: Option<Failure>,
    /// How many of its steps ended (fine, or failed with `continue_on_error`).
    pub done: usize,
}

/// Where the targets of a run stand after the steps so far.
pub(crate) struct Progress {
    pub targets: Vec<TargetState>,
    /// The run's error: the first failure (masked).
    pub first_failure: Option<String>,
    /// Every target that stopped did so on a time limit.
    pub only_timeouts: bool,
    /// Why the rollout stopped early (the failure threshold was exceeded).
    pub halted: Option<String>,
    /// The first failure of a cleanup step (fails a run that succeeded).
    pub cleanup_failure: Option<String>,
}

impl Progress {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            targets: vec![TargetState::default(); n],
            first_failure: None,
            only_timeouts: true,
            halted: None,
            cleanup_failure: None,
        }
    }

    /// True while target `ti` goes on to its next step.
    pub(crate) fn alive(&self, ti: usize) -> bool {
        self.targets[ti].failed.is_none()
    }

    /// Takes in how step `si` ended on target `ti`; true if it stopped the target.
    fn absorb(&mut self, st: &RunState, si: usize, ti: usize, end: StepEnd) -> bool {
        self.targets[ti].started = true;
        let step = &st.run.spec.steps[si];
        if end.outcome == Outcome::Ok || step.continue_on_error {
            self.targets[ti].done += 1;
            return false;
        }
        if end.outcome != Outcome::TimedOut {
            self.only_timeouts = false;
        }
        let why = end.why.as_deref().map(|w| st.secrets.masker.mask_str(w));
        if self.first_failure.is_none() && end.outcome != Outcome::Cancelled {
            let target = &st.run.targets[ti];
            // Stored as the run's error: masked like its output.
            let w = why.clone().unwrap_or_else(|| "failed".into());
            self.first_failure = Some(format!("step '{}' on {target}: {w}", step.name));
        }
        self.targets[ti].failed = Some(Failure {
            step: step.name.clone(),
            index: si as u32,
            outcome: end.outcome,
            exit_code: end.exit_code,
            why,
        });
        true
    }

    /// Targets in `range` that ended every step fine, and that failed.
    fn counts(&self, range: &std::ops::Range<usize>) -> (usize, usize) {
        let ok = range
            .clone()
            .filter(|&t| self.targets[t].started && self.alive(t))
            .count();
        let failed = range.clone().filter(|&t| !self.alive(t)).count();
        (ok, failed)
    }
}

/// Counts failed targets across the run's tasks, so that no new target
/// starts once the threshold is exceeded.
struct Gate {
    failed: AtomicUsize,
    threshold: Option<Threshold>,
    total: usize,
}

impl Gate {
    fn exceeded(&self) -> bool {
        self.threshold
            .is_some_and(|t| t.exceeded(self.failed.load(Ordering::SeqCst), self.total))
    }
}

/// Runs the run's steps batch by batch, as its strategy says.
pub(crate) async fn run_batches(state: &Arc<RunState>, progress: &mut Progress) {
    let spec = &state.run.spec;
    let n = state.run.targets.len();
    let batches = plan::batches(spec, n);
    let gate = Arc::new(Gate {
        failed: AtomicUsize::new(0),
        threshold: plan::threshold(spec),
        total: n,
    });
    let total = batches.len();
    for (bi, range) in batches.iter().enumerate() {
        if state.stop.is_stopped() || state.deadline_passed() {
            break;
        }
        if gate.exceeded() {
            break;
        }
        if bi > 0
            && let Some(pause) = spec.pause
            && !reached(state, range)
        {
            state.flush_pending().await;
            say(
                state,
                format!(
                    "pausing {} before batch {}/{total}\n",
                    crate::duration::format(pause),
                    bi + 1
                ),
            )
            .await;
            if retry::wait(pause, &state.stop.token(), state.run_deadline).await != Waited::Done {
                break;
            }
        }
        match spec.strategy {
            Strategy::Parallel => step_major(state, range.clone(), progress, &gate).await,
            Strategy::Rolling => target_major(state, range.clone(), progress, &gate).await,
        }
        state.flush_pending().await;
        let (ok, failed) = progress.counts(range);
        let mut line = format!("batch {}/{total} · {ok} ok · {failed} failed", bi + 1);
        if gate.exceeded() {
            let t = gate.threshold.map(|t| t.0.to_string()).unwrap_or_default();
            line.push_str(&format!(" · stopping: max_failures {t}"));
            let failed_all = gate.failed.load(Ordering::SeqCst);
            progress.halted = Some(format!(
                "stopped after {failed_all} failed target{} (max_failures {t})",
                if failed_all == 1 { "" } else { "s" }
            ));
        }
        if spec.strategy == Strategy::Rolling || total > 1 || gate.threshold.is_some() {
            say(state, format!("{line}\n")).await;
        }
    }
}

/// True if some target of `range` already has a result: a rescued run
/// that had reached this batch does not pause before it again.
fn reached(state: &RunState, range: &std::ops::Range<usize>) -> bool {
    range.clone().any(|ti| {
        let name = &state.run.targets[ti];
        (0..state.run.spec.steps.len() as u32)
            .any(|si| state.previous.contains_key(&(si, name.clone())))
    })
}

/// A run-level line of the engine's own output.
async fn say(state: &RunState, line: String) {
    state.sink.write(Stream::System, line).await;
}

/// `parallel`: each step on every live target of `range`, then the next.
async fn step_major(
    state: &Arc<RunState>,
    range: std::ops::Range<usize>,
    progress: &mut Progress,
    gate: &Arc<Gate>,
) {
    let concurrency = state.run.spec.concurrency.max(1);
    for si in 0..state.run.spec.steps.len() {
        if state.stop.is_stopped() || state.deadline_passed() || gate.exceeded() {
            break;
        }
        let live: Vec<usize> = range.clone().filter(|ti| progress.alive(*ti)).collect();
        if live.is_empty() {
            break;
        }
        state.in_flight.store(live.len(), Ordering::SeqCst);
        let ends: Vec<(usize, Option<StepEnd>)> =
            futures::stream::iter(live.into_iter().map(|ti| {
                let st = state.clone();
                let gate = gate.clone();
                async move {
                    // No new work once the threshold is exceeded; running steps finish.
                    let end = if gate.exceeded() || st.stop.is_stopped() {
                        None
                    } else {
                        let end = step_on_target(&st, si as u32, ti).await;
                        if fails(&st, si, &end) {
                            gate.failed.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(end)
                    };
                    st.in_flight.fetch_sub(1, Ordering::SeqCst);
                    (ti, end)
                }
            }))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (ti, end) in ends {
            if let Some(end) = end {
                progress.absorb(state, si, ti, end);
            }
        }
    }
}

/// Whether `end` of main step `si` stops its target.
fn fails(st: &RunState, si: usize, end: &StepEnd) -> bool {
    end.outcome != Outcome::Ok && !st.run.spec.steps[si].continue_on_error
}

/// `rolling`: every step on each target of `range`, up to `concurrency`
/// targets at once; no target starts once the threshold is exceeded.
async fn target_major(
    state: &Arc<RunState>,
    range: std::ops::Range<usize>,
    progress: &mut Progress,
    gate: &Arc<Gate>,
) {
    let concurrency = state.run.spec.concurrency.max(1);
    let targets: Vec<usize> = range.filter(|ti| progress.alive(*ti)).collect();
    state.in_flight.store(targets.len(), Ordering::SeqCst);
    let steps = state.run.spec.steps.len();
    let ends: Vec<(usize, Vec<(usize, StepEnd)>)> =
        futures::stream::iter(targets.into_iter().map(|ti| {
            let st = state.clone();
            let gate = gate.clone();
            async move {
                let mut ends = Vec::new();
                if !gate.exceeded() {
                    for si in 0..steps {
                        if st.stop.is_stopped() || st.deadline_passed() {
                            break;
                        }
                        let end = step_on_target(&st, si as u32, ti).await;
                        let stop = fails(&st, si, &end);
                        ends.push((si, end));
                        if stop {
                            gate.failed.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                }
                st.in_flight.fetch_sub(1, Ordering::SeqCst);
                (ti, ends)
            }
        }))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (ti, ends) in ends {
        for (si, end) in ends {
            progress.absorb(state, si, ti, end);
        }
    }
}

/// Runs `on_failure` steps on the targets that failed (or were stopped by
/// a cancel or a time limit) and `finally` steps on every target that
/// started — also after a cancel or the run's deadline, not after the
/// worker lost the run or is shutting down.
pub(crate) async fn run_cleanup(state: &Arc<RunState>, progress: &mut Progress) {
    let spec = &state.run.spec;
    if spec.on_failure.is_empty() && spec.finally.is_empty() {
        return;
    }
    if state.stop.hard_token().is_cancelled() {
        return;
    }
    let n_main = spec.steps.len();
    let stopped = state.stop.is_stopped() || state.deadline_passed();
    let mut work = Vec::new();
    for (ti, t) in progress.targets.iter().enumerate() {
        if !t.started {
            continue;
        }
        // A target whose steps did not all end (a cancel or the deadline
        // came first) did not succeed either: it gets `on_failure` too.
        let failed = t.failed.is_some() || (stopped && t.done < n_main);
        state.set_failure(ti, Failure::to_value(t.failed.as_ref()));
        work.push((ti, failed));
    }
    if work.is_empty() {
        return;
    }
    state.in_flight.store(work.len(), Ordering::SeqCst);
    let concurrency = spec.concurrency.max(1);
    let n_fail = spec.on_failure.len();
    let results: Vec<Option<String>> =
        futures::stream::iter(work.into_iter().map(|(ti, failed)| {
            let st = state.clone();
            async move {
                let mut first: Option<String> = None;
                let mut note = |st: &RunState, si: usize, end: &StepEnd| {
                    if end.outcome != Outcome::Ok && first.is_none() {
                        let name = st.run.spec.step_at(si).map_or("?", |s| s.name.as_str());
                        let phase = st.run.spec.phase_of(si).as_str();
                        let why = end.why.clone().unwrap_or_else(|| "failed".into());
                        first = Some(format!(
                            "{phase} step '{name}' on {}: {}",
                            st.run.targets[ti],
                            st.secrets.masker.mask_str(&why)
                        ));
                    }
                };
                if failed {
                    for k in 0..n_fail {
                        if st.stop.hard_token().is_cancelled() {
                            break;
                        }
                        let si = n_main + k;
                        let end = step_on_target(&st, si as u32, ti).await;
                        let stop = end.outcome != Outcome::Ok
                            && !st.run.spec.on_failure[k].continue_on_error;
                        note(&st, si, &end);
                        if stop {
                            break;
                        }
                    }
                }
                // Every `finally` step runs, whatever the one before did.
                for k in 0..st.run.spec.finally.len() {
                    if st.stop.hard_token().is_cancelled() {
                        break;
                    }
                    let si = n_main + n_fail + k;
                    let end = step_on_target(&st, si as u32, ti).await;
                    note(&st, si, &end);
                }
                st.in_flight.fetch_sub(1, Ordering::SeqCst);
                first
            }
        }))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    state.flush_pending().await;
    progress.cleanup_failure = results.into_iter().flatten().next();
}
