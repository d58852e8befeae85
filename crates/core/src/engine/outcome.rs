//! What each target's part of a run came to: the rules every front end
//! shows (status, the step that failed it, its exit code, how long it took),
//! computed once from a [`RunDetail`].

use crate::model::{RunStatus, StepResult, StepStatus};

use super::RunDetail;

/// One target's outcome in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetOutcome {
    /// Its overall status; `None` while it still has steps to run (and the
    /// run is not over).
    pub status: Option<StepStatus>,
    /// The exit code of the step that failed it, else of its last step that
    /// had one.
    pub exit_code: Option<i32>,
    /// Why it failed; for a target whose only failures were tolerated
    /// (`continue_on_error`), `tolerated: step 'NAME': …`.
    pub error: Option<String>,
    /// From its first step's start to its last step's end (skipped steps
    /// not counted); `None` until a step has ended.
    pub duration: Option<chrono::Duration>,
}

impl RunDetail {
    /// `target`'s outcome; `run_over` says the run has ended (or its
    /// execution has), so a target with steps left is decided by the run's
    /// status.
    pub fn target_outcome(&self, target: &str, run_over: bool) -> TargetOutcome {
        let failing = self.failing_result(target);
        let exit_code = failing
            .filter(|x| x.exit_code.is_some())
            .or_else(|| {
                self.results
                    .iter()
                    .filter(|x| x.target == target && x.exit_code.is_some())
                    .max_by_key(|x| x.step)
            })
            .and_then(|x| x.exit_code);
        let error = failing
            .and_then(|x| x.error.clone())
            .or_else(|| self.tolerated_error(target));
        TargetOutcome {
            status: self.target_status(target, run_over),
            exit_code,
            error,
            duration: self.target_duration(target),
        }
    }

    /// The result that failed `target`: the first one, by step, that neither
    /// succeeded nor was allowed to fail (`continue_on_error`).
    pub fn failing_result<'a>(&'a self, target: &'a str) -> Option<&'a StepResult> {
        self.main_results(target)
            .filter(|r| !matches!(r.status, StepStatus::Succeeded | StepStatus::Skipped))
            .filter(|r| !self.tolerated(r))
            .min_by_key(|r| r.step)
    }

    fn tolerated(&self, r: &StepResult) -> bool {
        self.run
            .spec
            .steps
            .get(r.step as usize)
            .is_some_and(|s| s.continue_on_error)
    }

    fn target_status(&self, target: &str, run_over: bool) -> Option<StepStatus> {
        let steps = self.run.spec.steps.len();
        let mine: Vec<_> = self.main_results(target).collect();
        let terminal = mine
            .iter()
            .filter(|r| r.status != StepStatus::Running)
            .count();
        if terminal < steps && !run_over {
            return None;
        }
        if let Some(r) = mine.iter().find(|r| {
            !matches!(r.status, StepStatus::Succeeded | StepStatus::Skipped) && !self.tolerated(r)
        }) {
            return Some(r.status);
        }
        if mine.is_empty() || terminal < steps {
            return Some(match self.run.status {
                RunStatus::Cancelled => StepStatus::Cancelled,
                RunStatus::TimedOut => StepStatus::TimedOut,
                RunStatus::Succeeded => StepStatus::Succeeded,
                _ => StepStatus::Skipped,
            });
        }
        Some(StepStatus::Succeeded)
    }

    fn target_duration(&self, target: &str) -> Option<chrono::Duration> {
        let mine = self
            .results
            .iter()
            .filter(|r| r.target == target && r.status != StepStatus::Skipped);
        let start = mine.clone().map(|r| r.started_at).min()?;
        let end = mine.filter_map(|r| r.finished_at).max()?;
        Some(end - start)
    }

    /// `target`'s results of the job's steps (not of `on_failure` and
    /// `finally`, which clean up after the outcome and do not decide it).
    fn main_results<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a StepResult> + Clone {
        let steps = self.run.spec.steps.len();
        self.results
            .iter()
            .filter(move |r| r.target == target && (r.step as usize) < steps)
    }

    fn tolerated_error(&self, target: &str) -> Option<String> {
        self.main_results(target)
            .filter(|x| x.status != StepStatus::Skipped)
            .find_map(|x| {
                let name = self
                    .run
                    .spec
                    .steps
                    .get(x.step as usize)
                    .map(|s| s.name.as_str())
                    .unwrap_or("?");
                x.error
                    .as_ref()
                    .map(|e| format!("tolerated: step '{name}': {e}"))
            })
    }
}
