//! `opsconductor run` and `opsconductor exec`: submit a run, execute it in
//! this process with live output or progress, and summarise it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use opsconductor::{Actor, Conductor, Error, ExecRequest, Run, SubmitRequest};

use super::report::{exit_code, print_grouped, progress, summary};
use crate::exit;
use crate::output::{LogPrinter, Out};
use crate::signals::Interrupts;

/// `opsconductor run`.
#[derive(Args, Debug)]
#[command(
    after_help = "Parameters are typed by the job's schema: -p count=3 gives a number when the schema says integer.\n\nExamples:\n  opsconductor run deploy -p version=1.4.2 --follow\n  opsconductor run deploy --params-file params.yaml -t 'tag:web,!web-3'"
)]
pub struct RunArgs {
    /// Job name.
    job: String,
    /// A parameter as key=value. Repeatable.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Parameters from a YAML or JSON file (an object); -p values override it.
    #[arg(long, value_name = "FILE")]
    params_file: Option<PathBuf>,
    /// Override the job's targets: names, globs, tag:NAME, * — comma-separated, `!` excludes.
    #[arg(short = 't', long = "target", value_name = "SELECTOR")]
    targets: Option<String>,
    /// Run a specific version of the job (default: latest).
    #[arg(long)]
    version: Option<u32>,
    /// Stream the output live, prefixed by target.
    #[arg(short, long)]
    follow: bool,
    /// Only queue the run and print its id; `opsconductor worker` processes execute it.
    #[arg(long, conflicts_with = "follow")]
    detach: bool,
    /// Do not prefix output lines with the target name.
    #[arg(long)]
    no_prefix: bool,
    /// Show live progress, then each target's output as one block (instead of interleaved lines).
    #[arg(long, conflicts_with_all = ["follow", "detach"])]
    group: bool,
    /// Print the plan (batches, steps per target, rendered commands with
    /// secrets shown by name) without running anything.
    #[arg(long, conflicts_with_all = ["follow", "detach", "group"])]
    dry_run: bool,
}

/// `opsconductor exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Targets: names, globs, tag:NAME, * — comma-separated, `!` excludes.
    #[arg(
        short = 't',
        long = "target",
        value_name = "SELECTOR",
        default_value = "local"
    )]
    targets: String,
    /// Kill the command on a target after this long (e.g. 30s, 5m; at most 7d).
    #[arg(long, value_parser = opsconductor::duration::parse_timeout)]
    timeout: Option<Duration>,
    /// How many targets run at once.
    #[arg(long, default_value_t = opsconductor::model::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Do not prefix output lines with the target name.
    #[arg(long)]
    no_prefix: bool,
    /// Show live progress, then each target's output as one block (instead of interleaved lines).
    #[arg(long)]
    group: bool,
    /// The command, run by each target's shell. Several words are joined with spaces (as ssh does).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub async fn run(oc: &Conductor, out: &Out, args: RunArgs) -> Result<u8, Error> {
    let job = oc
        .job(&args.job, args.version, &Actor::local_user())
        .await?;
    let mut params = serde_json::Map::new();
    if let Some(path) = &args.params_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::validation(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let v: serde_json::Value = serde_yaml_ng_compat(&text)
            .map_err(|e| Error::validation(path.display().to_string(), e))?;
        match v {
            serde_json::Value::Object(m) => params.extend(m),
            serde_json::Value::Null => {}
            _ => {
                return Err(Error::validation(
                    path.display().to_string(),
                    "must hold an object of parameters",
                ));
            }
        }
    }
    if let serde_json::Value::Object(m) =
        opsconductor::params::from_pairs(&job.spec.params, &args.params)?
    {
        params.extend(m);
    }
    let req = SubmitRequest {
        job: args.job.clone(),
        version: Some(job.version),
        params: serde_json::Value::Object(params),
        targets: args.targets.map(|t| vec![t]),
    };
    if args.dry_run {
        let plan = oc.plan(req, &Actor::local_user()).await?;
        super::plan::print_plan(out, &plan);
        return Ok(exit::OK);
    }
    // Listen before the run is queued, so that an interrupt at any moment
    // cancels it (and kills its processes) instead of killing only us and
    // leaving the run behind.
    let signals = Interrupts::listen()?;
    let run = oc.submit(req, &Actor::local_user()).await?;
    if args.detach {
        if out.json {
            out.json(&run);
        } else {
            println!("{}", run.id);
            out.note(&format!(
                "queued; a worker will run it — follow with: opsconductor runs logs {} --follow",
                run.id
            ));
        }
        return Ok(exit::OK);
    }
    let id = run.id;
    let code = drive(oc, out, run, signals, args.follow, !args.no_prefix).await?;
    if args.group {
        print_grouped(oc, out, id).await?;
    }
    Ok(code)
}

/// Job files are YAML; parameter files may be YAML or JSON (JSON is YAML).
fn serde_yaml_ng_compat(text: &str) -> Result<serde_json::Value, String> {
    opsconductor::spec::parse_value(text)
}

pub async fn exec(oc: &Conductor, out: &Out, args: ExecArgs) -> Result<u8, Error> {
    let req = ExecRequest {
        command: args.command.join(" "),
        targets: vec![args.targets],
        timeout: args.timeout,
        concurrency: args.concurrency,
    };
    let signals = Interrupts::listen()?;
    let run = oc.submit_exec(req, &Actor::local_user()).await?;
    let id = run.id;
    let code = drive(oc, out, run, signals, !args.group, !args.no_prefix).await?;
    if args.group {
        print_grouped(oc, out, id).await?;
    }
    Ok(code)
}

/// Executes a submitted run in this process, showing output or progress,
/// then a summary; returns the exit code the run deserves.
async fn drive(
    oc: &Conductor,
    out: &Out,
    run: Run,
    mut signals: Interrupts,
    follow: bool,
    prefix: bool,
) -> Result<u8, Error> {
    let id = run.id;
    if !out.json {
        out.note(&format!(
            "run {id} · {} · {} target(s)",
            match run.job_version {
                Some(v) => format!("{} v{v}", run.job),
                None => "ad-hoc command".to_string(),
            },
            run.targets.len()
        ));
    }
    if run.status == opsconductor::RunStatus::WaitingApproval && !out.json {
        crate::approvals::note_waiting(oc, out, id).await;
    }
    let exec = {
        let oc = oc.clone();
        tokio::spawn(async move { oc.execute(id).await })
    };
    let interrupt = {
        let oc = oc.clone();
        let color = out.color_err;
        tokio::spawn(async move {
            if signals.next().await {
                let msg = "cancelling the run… (Ctrl-C again to quit without waiting)";
                if color {
                    eprintln!("\x1b[33m{msg}\x1b[0m")
                } else {
                    eprintln!("{msg}")
                }
                let _ = oc.cancel(id, &Actor::local_user()).await;
                if signals.next().await {
                    std::process::exit(i32::from(exit::CANCELLED));
                }
            }
        })
    };
    if follow {
        let mut printer = LogPrinter::new(out, &run.targets, prefix);
        let mut logs = oc.follow(id, 0, &Actor::local_user()).await?;
        while let Some(chunk) = logs.next().await {
            printer.chunk(&chunk?);
        }
        printer.flush();
    } else if !out.json {
        progress(oc, out, &run, &exec).await;
    }
    let done = match exec.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::Internal(format!("the run task failed: {e}"))),
    };
    interrupt.abort();
    let detail = oc.run(done.id, &Actor::local_user()).await?;
    if out.json && follow {
        // The output went out as JSON lines; the run is one more line.
        match serde_json::to_string(&detail) {
            Ok(s) => println!("{s}"),
            Err(e) => return Err(Error::Internal(format!("cannot encode JSON: {e}"))),
        }
    } else if out.json {
        out.json(&detail);
    } else {
        summary(out, &detail, follow);
    }
    Ok(exit_code(&detail))
}
