//! Rendering a step's templates for one target: the variables templates see,
//! and which quoting each field gets. The quoting of `exec` lines is the
//! executor's answer ([`Executor::quoting`](crate::executor::Executor::quoting)):
//! only it knows which shell reads the line.

use serde_json::{Value, json};

use super::super::Inner;
use crate::executor::Command;
use crate::model::{Action, JobSpec, RunId, Step, StepPhase, Target};
use crate::template::{Quoting, Templates};

/// What a step becomes once its templates are rendered for one target.
#[derive(Clone, Debug)]
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
    /// A `job:` step: the child run's request (see `child.rs`).
    Job {
        job: String,
        params: Value,
        targets: Vec<String>,
    },
}

/// Which run a step's templates are rendered for: everything of the run that
/// templates can see, besides the target.
pub(crate) struct RunView<'a> {
    pub id: RunId,
    pub spec: &'a JobSpec,
    pub version: Option<u32>,
    pub attempt: u32,
    pub params: &'a Value,
}

/// The variables templates see.
pub(crate) fn template_context(run: &RunView<'_>, target: &Target) -> Value {
    json!({
        "params": run.params,
        "target": {
            "name": target.name,
            "tags": target.tags,
            "vars": target.vars,
            "kind": target.connection.kind(),
        },
        "run": { "id": run.id.to_string(), "attempt": run.attempt },
        "job": { "name": run.spec.name, "version": run.version },
    })
}

/// The variables of a step in `phase`: cleanup steps (`on_failure`,
/// `finally`) also see `failure` — here an example one (the first step
/// failed with exit code 1), for checking templates and for dry runs; the
/// worker sets the target's real one.
pub(crate) fn context_for(run: &RunView<'_>, target: &Target, phase: StepPhase) -> Value {
    let mut ctx = template_context(run, target);
    if phase != StepPhase::Main
        && let Some(m) = ctx.as_object_mut()
    {
        let first = run.spec.steps.first().map(|s| s.name.as_str());
        m.insert(
            "failure".into(),
            json!({"step": first, "index": 0, "status": "failed", "exit_code": 1, "error": "exit code 1"}),
        );
    }
    ctx
}

/// How `exec` command lines are quoted on `target`: as its executor says.
/// A build without an executor for the target's kind cannot reach it at all
/// (the run fails before any command exists), so the trait's default, POSIX
/// shell quoting, only decides whether the submission validates.
pub(crate) fn exec_quoting(inner: &Inner, target: &Target) -> Quoting {
    inner
        .executors
        .get(target.connection.kind())
        .map_or(Quoting::Shell, |e| e.quoting(target))
}

/// Renders a step's templates for one target; `exec` lines get `quoting`
/// (see [`exec_quoting`]).
pub(crate) fn render_step(
    t: &Templates,
    step: &Step,
    quoting: Quoting,
    ctx: &Value,
) -> Result<Rendered, super::super::RenderError> {
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
        .map(|w| super::super::render_path(plain(w), "workdir", w))
        .transpose()?;
    Ok(match &step.action {
        Action::Exec { command } => Rendered::Run {
            cmd: Command::Shell(r(command, quoting)?),
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
            dest: super::super::render_path(plain(dest), "copy.dest", dest)?,
            content: content
                .as_deref()
                .map(|c| r(c, Quoting::None))
                .transpose()?,
            src: src.clone(),
            mode: *mode,
        },
        Action::Job {
            job,
            params,
            targets,
        } => Rendered::Job {
            job: job.clone(),
            params: Value::Object(
                params
                    .iter()
                    .map(|(k, v)| {
                        render_json(v, &plain)
                            .map(|v| (k.clone(), v))
                            .map_err(|m| format!("params.{k}: {m}"))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            targets: targets
                .iter()
                .map(|t| plain(t).map_err(|m| format!("targets: {m}")))
                .collect::<Result<_, String>>()?,
        },
    })
}

/// Renders every string inside a JSON value (child parameters).
fn render_json(v: &Value, r: &dyn Fn(&str) -> Result<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(r(s)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, r))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| render_json(x, r).map(|x| (k.clone(), x)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}
