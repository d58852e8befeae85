//! Dry runs: the plan a submit would queue — batches, steps per target,
//! rendered commands — after every check a submit makes, without running
//! or recording anything. Secrets appear by name only: they reach steps as
//! environment variables, never inside a rendered command.

use serde::Serialize;

use super::runs::{Checked, SubmitRequest};
use super::{Conductor, worker};
use crate::auth::Permission;
use crate::error::{Error, Result};
use crate::executor::Command;
use crate::model::{Actor, JobStatus, RetryPolicy, StepPhase, Strategy, Threshold};
use crate::params;

/// What a run of a job would do, from [`Conductor::plan`].
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    /// Job name.
    pub job: String,
    /// Job version.
    pub version: Option<u32>,
    /// `parallel` or `rolling`.
    pub strategy: Strategy,
    /// Targets at once (within a batch, for `rolling`).
    pub concurrency: usize,
    /// Failed targets tolerated before no new target starts (`None`: no limit).
    pub max_failures: Option<Threshold>,
    /// The wait between batches (`30s`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    /// Target names per batch, in order.
    pub batches: Vec<Vec<String>>,
    /// Secrets the steps get, by name, and the environment variable each
    /// arrives in.
    pub secrets: Vec<PlannedSecret>,
    /// The steps, across `steps`, `on_failure` and `finally`.
    pub steps: Vec<PlannedStep>,
    /// Per target, in run order: its batch and its rendered commands.
    pub targets: Vec<TargetPlan>,
}

/// A secret a run would use.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedSecret {
    /// The secret's name.
    pub name: String,
    /// The environment variable its value arrives in.
    pub env: String,
}

/// One step of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// Step index (across the three lists).
    pub index: u32,
    /// Name.
    pub name: String,
    /// `main`, `on_failure` or `finally`.
    pub phase: StepPhase,
    /// `exec`, `script` or `copy`.
    pub kind: String,
    /// Its time limit, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The retry policy it runs under, if any (its own or the job's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The job's retry policy applies to connection failures only (the
    /// step is not idempotent and has no `retry` of its own).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry_connection_only: bool,
}

/// One target's part of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPlan {
    /// Target name.
    pub target: String,
    /// Its batch, from 1.
    pub batch: usize,
    /// Each step's rendered command on it, by step index.
    pub commands: Vec<PlannedCommand>,
}

/// One step rendered for one target.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedCommand {
    /// Step index.
    pub step: u32,
    /// The command line, the script (after its interpreter), or what a copy
    /// writes. Cleanup steps are rendered with an example `failure` (the
    /// first step failed with exit code 1).
    pub command: String,
    /// Extra environment variables the step sets, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

impl Conductor {
    /// The plan of a run of `req` — batches, steps per target, rendered
    /// commands — after every check [`submit`](Self::submit) makes, without
    /// queueing, running or recording anything. Needs the `Run` permission
    /// (it shows what the caller could run).
    pub async fn plan(&self, req: SubmitRequest, actor: &Actor) -> Result<RunPlan> {
        actor.require(Permission::Run)?;
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
        let all = self.all_targets().await?;
        let checked = self
            .check_run(
                job.spec,
                Some((job.version, author.as_str())),
                params,
                &selector,
                &all,
                actor,
            )
            .await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || plan_of(&inner, checked))
            .await
            .map_err(|e| Error::Internal(format!("rendering the plan: {e}")))?
    }
}

/// Renders the plan of a checked run (CPU work bounded by the template
/// budget, on the blocking pool).
fn plan_of(inner: &super::Inner, c: Checked) -> Result<RunPlan> {
    let spec = &c.spec;
    let ranges = worker::plan::batches(spec, c.targets.len());
    let batches = ranges
        .iter()
        .map(|r| {
            c.targets[r.clone()]
                .iter()
                .map(|t| t.name.clone())
                .collect()
        })
        .collect();
    let batch_of = |ti: usize| ranges.iter().position(|r| r.contains(&ti)).unwrap_or(0) + 1;
    let steps = spec
        .all_steps()
        .map(|(i, phase, s)| {
            let (retry, connection_only) = match (&s.retry, &spec.retry) {
                (Some(own), _) => (Some(own.clone()), false),
                (None, Some(job)) => (Some(job.clone()), !s.idempotent),
                (None, None) => (None, false),
            };
            PlannedStep {
                index: i as u32,
                name: s.name.clone(),
                phase,
                kind: s.action.kind().into(),
                timeout: s.timeout.map(crate::duration::format),
                retry,
                retry_connection_only: connection_only,
            }
        })
        .collect();
    let mut targets = Vec::with_capacity(c.targets.len());
    for (ti, t) in c.targets.iter().enumerate() {
        let view = worker::RunView {
            id: c.id,
            spec,
            version: c.version,
            attempt: 1,
            params: &c.params,
        };
        let mut commands = Vec::new();
        for (i, phase, step) in spec.all_steps() {
            // Outputs of earlier steps exist only while the run runs: such a
            // step is shown unrendered.
            if crate::flow::reads_run_facts(step, &inner.templates) {
                commands.push(PlannedCommand {
                    step: i as u32,
                    command: format!(
                        "(rendered when it runs: it reads earlier steps) {}",
                        step.action.kind()
                    ),
                    env: Vec::new(),
                });
                continue;
            }
            let rendered = worker::render_step(
                &inner.templates,
                step,
                worker::exec_quoting(inner, t),
                &worker::context_for(&view, t, phase),
            )
            .map_err(|e| {
                Error::validation(
                    format!(
                        "{} ({}) on target '{}'",
                        spec.field_of(i),
                        step.name,
                        t.name
                    ),
                    e.to_string(),
                )
            })?;
            let (command, env) = match rendered {
                worker::Rendered::Run { cmd, env, .. } => {
                    let text = match cmd {
                        Command::Shell(line) => line,
                        Command::Script { interpreter, body } => {
                            format!("{interpreter} <<'script'\n{body}\nscript")
                        }
                    };
                    (text, env.into_iter().map(|(k, _)| k).collect())
                }
                worker::Rendered::Job {
                    job,
                    params,
                    targets,
                } => (
                    format!(
                        "run job {job} with params {params} on {}",
                        if targets.is_empty() {
                            "its own targets".to_string()
                        } else {
                            targets.join(", ")
                        }
                    ),
                    Vec::new(),
                ),
                worker::Rendered::Copy {
                    dest,
                    content,
                    src,
                    mode,
                } => {
                    let what = match (content, src) {
                        (Some(c), _) => format!("{} bytes of content", c.len()),
                        (None, Some(p)) => format!("the file {p}"),
                        (None, None) => "an empty file".into(),
                    };
                    (
                        format!("copy {what} to {dest} (mode {mode:04o})"),
                        Vec::new(),
                    )
                }
            };
            commands.push(PlannedCommand {
                step: i as u32,
                command,
                env,
            });
        }
        targets.push(TargetPlan {
            target: t.name.clone(),
            batch: batch_of(ti),
            commands,
        });
    }
    Ok(RunPlan {
        job: spec.name.clone(),
        version: c.version,
        strategy: spec.strategy,
        concurrency: spec.concurrency,
        max_failures: worker::plan::threshold(spec),
        pause: spec.pause.map(crate::duration::format),
        batches,
        secrets: spec
            .secrets
            .iter()
            .map(|s| PlannedSecret {
                name: s.clone(),
                env: crate::secrets::env_name(s),
            })
            .collect(),
        steps,
        targets,
    })
}
