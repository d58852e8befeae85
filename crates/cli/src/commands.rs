//! One function per command: parse what the user typed into engine calls and
//! print the answers.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use opsconductor::store::{ApplyBatch, RunFilter};
use opsconductor::{
    Action, Actor, Conductor, Connection, Error, ExecRequest, Run, RunDetail, RunId, RunStatus,
    StepResult, StepStatus, SubmitRequest,
};

use crate::exit;
use crate::output::{LogPrinter, Out, human_duration, local_time};
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

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    opsconductor::duration::parse(s)
}

pub async fn apply(
    oc: &Conductor,
    out: &Out,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<u8, Error> {
    let mut batch = ApplyBatch::default();
    // Which file defined each object, to name both files of a duplicate.
    let mut origin: HashMap<(&'static str, String), String> = HashMap::new();
    for f in files {
        for (source, b) in load_files(f)? {
            // Check each file on its own first, so a semantic error (a bad
            // schema, a template error) names the file it is in.
            oc.validate(&b).map_err(|e| in_file(e, &source))?;
            let names = b
                .targets
                .iter()
                .map(|t| ("target", t.name.clone()))
                .chain(b.jobs.iter().map(|j| ("job", j.name.clone())));
            for key in names {
                if let Some(first) = origin.get(&key) {
                    return Err(Error::validation(
                        format!("{} '{}'", key.0, key.1),
                        format!("defined twice in this batch: in {first} and in {source}"),
                    ));
                }
                origin.insert(key, source.clone());
            }
            batch.targets.extend(b.targets);
            batch.jobs.extend(b.jobs);
        }
    }
    if batch.targets.is_empty() && batch.jobs.is_empty() {
        return Err(Error::invalid(
            "nothing to apply: the files hold no Job or Target documents",
        ));
    }
    if dry_run {
        oc.validate(&batch)?;
        if out.json {
            out.json(&serde_json::json!({"valid": true, "targets": batch.targets.len(), "jobs": batch.jobs.len()}));
        } else {
            println!(
                "valid: {} target(s), {} job(s) — dry run, nothing stored",
                batch.targets.len(),
                batch.jobs.len()
            );
        }
        return Ok(exit::OK);
    }
    let items = oc.apply(&batch, &Actor::local_user()).await?;
    if out.json {
        out.json(&items);
    } else {
        let rows = items
            .iter()
            .map(|i| {
                vec![
                    i.kind.to_string(),
                    i.name.clone(),
                    format!("{:?}", i.action).to_lowercase(),
                    i.version.map(|v| v.to_string()).unwrap_or_default(),
                ]
            })
            .collect();
        out.table(&["KIND", "NAME", "ACTION", "VERSION"], rows);
    }
    Ok(exit::OK)
}

/// Loads what one `-f` argument names, one batch per file: `-` (stdin), a
/// file, or every job file under a directory (the files `spec::load_path`
/// reads, in the same order).
fn load_files(arg: &Path) -> Result<Vec<(String, ApplyBatch)>, Error> {
    if arg.as_os_str() == "-" {
        let limit = opsconductor::spec::MAX_FILE_BYTES;
        let mut text = String::new();
        std::io::stdin()
            .take(limit + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::validation("<stdin>", format!("cannot read: {e}")))?;
        if text.len() as u64 > limit {
            return Err(Error::validation(
                "<stdin>",
                format!("more than {limit} bytes; the limit is {limit}"),
            ));
        }
        let b = opsconductor::spec::parse_str(
            &text,
            "<stdin>",
            std::env::current_dir().ok().as_deref(),
        )?;
        return Ok(vec![("<stdin>".into(), b)]);
    }
    let files = opsconductor::spec::files(arg)?;
    if files.len() <= 1 {
        // A plain file, or a directory with one or no job files: the core's
        // loader reads it or says what is wrong.
        return Ok(vec![(
            arg.display().to_string(),
            opsconductor::spec::load_path(arg)?,
        )]);
    }
    files
        .into_iter()
        .map(|f| Ok((f.display().to_string(), opsconductor::spec::load_path(&f)?)))
        .collect()
}

/// Puts the file name in front of a validation error's field.
fn in_file(e: Error, source: &str) -> Error {
    match e {
        Error::Validation { field, message } => Error::Validation {
            field: Some(match field {
                Some(f) if f.starts_with(source) => f,
                Some(f) => format!("{source}: {f}"),
                None => source.to_string(),
            }),
            message,
        },
        other => other,
    }
}

pub async fn run(oc: &Conductor, out: &Out, args: RunArgs) -> Result<u8, Error> {
    let job = oc.job(&args.job, args.version).await?;
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

/// Prints a run's stored output as one block per target, in target order,
/// each headed by the target's outcome.
pub(crate) async fn print_grouped(oc: &Conductor, out: &Out, id: RunId) -> Result<(), Error> {
    if out.json {
        return Ok(());
    }
    let d = oc.get(id).await?;
    let mut per: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let mut after = 0;
    loop {
        let chunks = oc.store().read_logs(id, after, 1000).await?;
        let n = chunks.len();
        for c in chunks {
            after = c.seq;
            if c.stream != opsconductor::Stream::System {
                per.entry(c.target.clone().unwrap_or_default())
                    .or_default()
                    .extend_from_slice(&c.data);
            }
        }
        if n < 1000 {
            break;
        }
    }
    for t in &d.run.targets {
        let status = target_status(&d, t, true).unwrap_or(StepStatus::Skipped);
        println!(
            "{} {} {}",
            out.dim("──"),
            out.bold(t),
            out.step_status(status)
        );
        let text = per.remove(t).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
    }
    Ok(())
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
        let mut logs = oc.follow(id, 0).await?;
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
    let detail = oc.get(done.id).await?;
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

/// Prints a line per target as each one finishes (plus a live counter on a terminal).
async fn progress(
    oc: &Conductor,
    out: &Out,
    run: &Run,
    exec: &tokio::task::JoinHandle<Result<Run, Error>>,
) {
    let mut events = oc.subscribe();
    let mut reported = std::collections::HashSet::new();
    let width = run.targets.iter().map(|t| t.len()).max().unwrap_or(0);
    let steps = run.spec.steps.len();
    loop {
        let finished = exec.is_finished();
        if let Ok(d) = oc.get(run.id).await {
            let mut running = 0;
            let (mut ok, mut bad) = (0, 0);
            for t in &run.targets {
                let status = target_status(&d, t, d.run.status.is_terminal() || finished);
                match status {
                    None => running += 1,
                    Some(s) => {
                        if s == StepStatus::Succeeded {
                            ok += 1
                        } else {
                            bad += 1
                        }
                        if reported.insert(t.clone()) {
                            if out.tty {
                                print!("\r\x1b[2K");
                            }
                            let took = target_duration(&d, t)
                                .map(human_duration)
                                .unwrap_or_default();
                            let mark = if s == StepStatus::Succeeded {
                                out.paint("\x1b[32m", "✓")
                            } else {
                                out.paint("\x1b[31m", "✗")
                            };
                            println!(
                                "{mark} {t:<width$}  {}  {}",
                                out.step_status(s),
                                out.dim(&took)
                            );
                        }
                    }
                }
            }
            if out.tty && !finished {
                use std::io::Write;
                let done_steps = d
                    .results
                    .iter()
                    .filter(|r| r.status != StepStatus::Running)
                    .count();
                print!(
                    "\r\x1b[2K{} {ok} ok · {bad} failed · {running} running · {done_steps}/{} steps",
                    out.dim("…"),
                    steps * run.targets.len()
                );
                let _ = std::io::stdout().flush();
            }
        }
        if finished {
            if out.tty {
                print!("\r\x1b[2K");
            }
            return;
        }
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            _ = tick => {}
            _ = events.recv() => {}
        }
    }
}

/// A target's overall state: `None` while it still has steps to run.
fn target_status(d: &RunDetail, target: &str, run_over: bool) -> Option<StepStatus> {
    let steps = &d.run.spec.steps;
    let mine: Vec<_> = d.results.iter().filter(|r| r.target == target).collect();
    let terminal = mine
        .iter()
        .filter(|r| r.status != StepStatus::Running)
        .count();
    if terminal < steps.len() && !run_over {
        return None;
    }
    for r in &mine {
        let tolerated = steps
            .get(r.step as usize)
            .is_some_and(|s| s.continue_on_error);
        if !matches!(r.status, StepStatus::Succeeded | StepStatus::Skipped) && !tolerated {
            return Some(r.status);
        }
    }
    if mine.is_empty() || terminal < steps.len() {
        return Some(match d.run.status {
            RunStatus::Cancelled => StepStatus::Cancelled,
            RunStatus::TimedOut => StepStatus::TimedOut,
            RunStatus::Succeeded => StepStatus::Succeeded,
            _ => StepStatus::Skipped,
        });
    }
    Some(StepStatus::Succeeded)
}

fn target_duration(d: &RunDetail, target: &str) -> Option<chrono::Duration> {
    let mine = d
        .results
        .iter()
        .filter(|r| r.target == target && r.status != StepStatus::Skipped);
    let start = mine.clone().map(|r| r.started_at).min()?;
    let end = mine.filter_map(|r| r.finished_at).max()?;
    Some(end - start)
}

fn run_duration(r: &Run) -> String {
    match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => human_duration(f - s),
        (Some(s), None) => format!("{} so far", human_duration(chrono::Utc::now() - s)),
        _ => String::new(),
    }
}

fn summary(out: &Out, d: &RunDetail, followed: bool) {
    let r = &d.run;
    let multi = r.targets.len() > 1;
    // The summary goes to stderr: stdout carries the commands' output.
    let eout = out.for_stderr();
    let failed = r.status != RunStatus::Succeeded;
    if multi && (followed || failed) {
        let rows = r
            .targets
            .iter()
            .map(|t| {
                let st = target_status(d, t, true).unwrap_or(StepStatus::Skipped);
                // The step that failed the target, else its last one.
                let failing = failing_result(d, t);
                let last = failing.filter(|x| x.exit_code.is_some()).or_else(|| {
                    d.results
                        .iter()
                        .filter(|x| &x.target == t && x.exit_code.is_some())
                        .max_by_key(|x| x.step)
                });
                let err = failing
                    .and_then(|x| x.error.clone())
                    .or_else(|| {
                        // Only tolerated failures (continue_on_error): say so.
                        d.results.iter().filter(|x| &x.target == t).find_map(|x| {
                            let name = d
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
                    })
                    .unwrap_or_default();
                vec![
                    t.clone(),
                    eout.step_status(st),
                    last.and_then(|x| x.exit_code)
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    target_duration(d, t)
                        .map(human_duration)
                        .unwrap_or_default(),
                    err,
                ]
            })
            .collect();
        eprintln!();
        out.table_err(&["TARGET", "STATUS", "EXIT", "TOOK", "ERROR"], rows);
    }
    let mut line = format!(
        "run {} {} in {}",
        eout.bold(&r.id.to_string()),
        eout.run_status(r.status),
        run_duration(r)
    );
    if let Some(e) = &r.error
        && r.status != RunStatus::Succeeded
    {
        line.push_str(&format!(": {e}"));
    }
    out.note(&line);
    if !followed && failed {
        out.note(&format!(
            "see the output with: opsconductor runs logs {}",
            r.id
        ));
    }
}

/// 0 succeeded; a single-target command's own exit code when it failed; 1
/// other failures; 124 timed out; 130 cancelled.
fn exit_code(d: &RunDetail) -> u8 {
    match d.run.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::TimedOut => exit::TIMED_OUT,
        RunStatus::Cancelled => exit::CANCELLED,
        RunStatus::Failed if d.run.targets.len() == 1 => failing_result(d, &d.run.targets[0])
            .filter(|r| r.status == StepStatus::Failed)
            .and_then(|r| r.exit_code)
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(exit::FAILED),
        _ => exit::FAILED,
    }
}

/// The result that failed `target`: the first one, by step, that neither
/// succeeded nor was allowed to fail (`continue_on_error`).
fn failing_result<'a>(d: &'a RunDetail, target: &str) -> Option<&'a StepResult> {
    d.results
        .iter()
        .filter(|r| r.target == target)
        .filter(|r| !matches!(r.status, StepStatus::Succeeded | StepStatus::Skipped))
        .filter(|r| {
            !d.run
                .spec
                .steps
                .get(r.step as usize)
                .is_some_and(|s| s.continue_on_error)
        })
        .min_by_key(|r| r.step)
}

pub async fn runs_list(
    oc: &Conductor,
    out: &Out,
    job: Option<String>,
    status: Vec<String>,
    limit: usize,
) -> Result<u8, Error> {
    let statuses = status
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().parse::<RunStatus>())
        .collect::<Result<Vec<_>, _>>()?;
    if limit == 0 || limit > 1000 {
        return Err(Error::validation("--limit", "must be between 1 and 1000"));
    }
    let runs = oc
        .list(&RunFilter {
            job,
            statuses,
            before: None,
            limit,
        })
        .await?;
    if out.json {
        out.json(&runs);
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        out.note(
            "no runs yet — start one with `opsconductor run JOB` or `opsconductor exec -- COMMAND`",
        );
        return Ok(exit::OK);
    }
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                match r.job_version {
                    Some(v) => format!("{} v{v}", r.job),
                    None => r.job.clone(),
                },
                out.run_status(r.status),
                targets_summary(&r.targets),
                r.requested_by.clone(),
                local_time(r.created_at),
                run_duration(r),
            ]
        })
        .collect();
    out.table(
        &["ID", "JOB", "STATUS", "TARGETS", "BY", "CREATED", "TOOK"],
        rows,
    );
    Ok(exit::OK)
}

fn targets_summary(t: &[String]) -> String {
    match t.len() {
        0..=3 => t.join(","),
        n => format!("{},… ({n})", t[..2].join(",")),
    }
}

async fn resolve(oc: &Conductor, id: &str) -> Result<RunId, Error> {
    oc.resolve_run_id(id).await
}

pub async fn runs_show(oc: &Conductor, out: &Out, id: &str) -> Result<u8, Error> {
    let d = oc.get(resolve(oc, id).await?).await?;
    if out.json {
        out.json(&d);
        return Ok(exit::OK);
    }
    let r = &d.run;
    let kv = |k: &str, v: String| println!("{} {v}", out.bold(&format!("{k:<13}")));
    kv("Run:", r.id.to_string());
    kv(
        "Job:",
        match r.job_version {
            Some(v) => format!("{} (version {v})", r.job),
            None => format!("{} (ad-hoc command)", r.job),
        },
    );
    kv("Status:", out.run_status(r.status));
    if let Some(e) = &r.error {
        kv("Error:", e.clone());
    }
    if r.status == RunStatus::Running
        && let Some(l) = r.lease_until.filter(|l| *l < chrono::Utc::now())
    {
        kv(
            "Warning:",
            format!(
                "its worker stopped heartbeating at {} — the run will be rescued by the next worker",
                local_time(l)
            ),
        );
    }
    kv(
        "Params:",
        serde_json::to_string(&r.params).unwrap_or_default(),
    );
    kv("Targets:", r.targets.join(", "));
    kv("Requested by:", r.requested_by.clone());
    kv("Created:", local_time(r.created_at));
    if let Some(s) = r.started_at {
        kv("Started:", local_time(s));
    }
    if let Some(f) = r.finished_at {
        kv(
            "Finished:",
            format!("{} (took {})", local_time(f), run_duration(r)),
        );
    }
    if let Some(w) = &r.worker {
        kv("Worker:", format!("{w} (attempt {})", r.attempt));
    }
    println!();
    let rows = d
        .results
        .iter()
        .map(|x| {
            let step = r
                .spec
                .steps
                .get(x.step as usize)
                .map(|s| s.name.as_str())
                .unwrap_or("?");
            vec![
                format!("{}. {step}", x.step + 1),
                x.target.clone(),
                out.step_status(x.status),
                x.exit_code
                    .map(|c| c.to_string())
                    .or(x.signal.map(|s| format!("signal {s}")))
                    .unwrap_or_default(),
                x.finished_at
                    .map(|f| human_duration(f - x.started_at))
                    .unwrap_or_default(),
                x.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.table(&["STEP", "TARGET", "STATUS", "EXIT", "TOOK", "ERROR"], rows);
    Ok(exit::OK)
}

pub async fn runs_logs(oc: &Conductor, out: &Out, id: &str, follow: bool) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let d = oc.get(id).await?;
    let mut printer = LogPrinter::new(out, &d.run.targets, true);
    if follow {
        let mut logs = oc.follow(id, 0).await?;
        while let Some(c) = logs.next().await {
            printer.chunk(&c?);
        }
    } else {
        let mut after = 0;
        loop {
            let chunks = oc.store().read_logs(id, after, 1000).await?;
            let n = chunks.len();
            for c in &chunks {
                after = c.seq;
                printer.chunk(c);
            }
            if n < 1000 {
                break;
            }
        }
    }
    printer.flush();
    Ok(exit::OK)
}

pub async fn runs_cancel(oc: &Conductor, out: &Out, id: &str) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let before = oc.get(id).await?.run;
    if before.status.is_terminal() {
        // Nothing to stop; say so rather than "cancelled" for a run that
        // had been cancelled (or had ended) before.
        if out.json {
            out.json(&before);
        } else {
            println!("run {id} had already ended ({})", before.status);
        }
        return Ok(exit::OK);
    }
    let r = oc.cancel(id, &Actor::local_user()).await?;
    if out.json {
        out.json(&r);
    } else if r.status == RunStatus::Cancelled {
        println!("run {id} cancelled");
    } else if r.status.is_terminal() {
        println!("run {id} had already ended ({})", r.status);
    } else {
        println!("cancel requested: run {id} will stop shortly (its processes are killed)");
    }
    Ok(exit::OK)
}

pub async fn jobs_list(oc: &Conductor, out: &Out) -> Result<u8, Error> {
    let jobs = oc.jobs().await?;
    if out.json {
        out.json(&jobs);
        return Ok(exit::OK);
    }
    if jobs.is_empty() {
        out.note("no jobs yet — define some in YAML and run `opsconductor apply -f FILE` (see examples/jobs/)");
        return Ok(exit::OK);
    }
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.spec.name.clone(),
                j.version.to_string(),
                j.spec.status.as_str().to_string(),
                j.spec.steps.len().to_string(),
                j.spec.targets.join(","),
                j.spec.description.lines().next().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out.table(
        &[
            "NAME",
            "VERSION",
            "STATUS",
            "STEPS",
            "TARGETS",
            "DESCRIPTION",
        ],
        rows,
    );
    Ok(exit::OK)
}

pub async fn jobs_show(
    oc: &Conductor,
    out: &Out,
    name: &str,
    version: Option<u32>,
) -> Result<u8, Error> {
    let j = oc.job(name, version).await?;
    if out.json {
        out.json(&j);
        return Ok(exit::OK);
    }
    let s = &j.spec;
    let kv = |k: &str, v: String| println!("{} {v}", out.bold(&format!("{k:<12}")));
    kv("Job:", s.name.clone());
    kv(
        "Version:",
        format!(
            "{} (stored {} by {})",
            j.version,
            local_time(j.created_at),
            j.created_by
        ),
    );
    kv("Status:", s.status.as_str().to_string());
    if !s.description.is_empty() {
        kv("Description:", s.description.trim().to_string());
    }
    kv("Targets:", s.targets.join(", "));
    kv("Concurrency:", s.concurrency.to_string());
    if let Some(t) = s.timeout {
        kv("Timeout:", opsconductor::duration::format(t));
    }
    if !s.params.is_null() {
        kv(
            "Params:",
            serde_json::to_string(&s.params).unwrap_or_default(),
        );
    }
    println!();
    let rows = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let detail = match &st.action {
                Action::Exec { command } => command.clone(),
                Action::Script { interpreter, body } => {
                    format!("{interpreter}: {}", body.lines().next().unwrap_or(""))
                }
                Action::Copy { dest, mode, .. } => format!("→ {dest} ({mode:04o})"),
                _ => String::new(),
            };
            let mut flags = vec![];
            if let Some(t) = st.timeout {
                flags.push(format!("timeout {}", opsconductor::duration::format(t)));
            }
            if st.continue_on_error {
                flags.push("continue_on_error".into());
            }
            if st.idempotent {
                flags.push("idempotent".into());
            }
            vec![
                format!("{}. {}", i + 1, st.name),
                st.action.kind().to_string(),
                detail,
                flags.join(", "),
            ]
        })
        .collect();
    out.table(&["STEP", "KIND", "WHAT", "OPTIONS"], rows);
    Ok(exit::OK)
}

pub async fn jobs_versions(oc: &Conductor, out: &Out, name: &str) -> Result<u8, Error> {
    oc.job(name, None).await?;
    let versions = oc.store().job_versions(name).await?;
    if out.json {
        out.json(&versions);
        return Ok(exit::OK);
    }
    let rows = versions
        .iter()
        .map(|j| {
            vec![
                j.version.to_string(),
                j.spec.status.as_str().into(),
                local_time(j.created_at),
                j.created_by.clone(),
            ]
        })
        .collect();
    out.table(&["VERSION", "STATUS", "STORED", "BY"], rows);
    Ok(exit::OK)
}

fn address(c: &Connection) -> String {
    match c {
        Connection::Local => "this host".into(),
        Connection::Ssh {
            host, port, user, ..
        } => format!("{user}@{host}:{port}"),
        Connection::Winrm {
            host, port, tls, ..
        } => format!("{}://{host}:{port}", if *tls { "https" } else { "http" }),
        Connection::Docker { image, .. } => image.clone(),
        _ => String::new(),
    }
}

pub async fn targets_list(oc: &Conductor, out: &Out) -> Result<u8, Error> {
    let targets = oc.targets().await?;
    if out.json {
        out.json(&targets);
        return Ok(exit::OK);
    }
    let rows = targets
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.connection.kind().to_string(),
                address(&t.connection),
                t.tags.join(","),
                t.description.clone(),
            ]
        })
        .collect();
    out.table(&["NAME", "KIND", "ADDRESS", "TAGS", "DESCRIPTION"], rows);
    Ok(exit::OK)
}

pub async fn targets_show(oc: &Conductor, out: &Out, name: &str) -> Result<u8, Error> {
    let t = oc.target(name).await?;
    if out.json {
        out.json(&t);
        return Ok(exit::OK);
    }
    let kv = |k: &str, v: String| println!("{} {v}", out.bold(&format!("{k:<12}")));
    kv("Target:", t.name.clone());
    kv("Kind:", t.connection.kind().to_string());
    kv("Address:", address(&t.connection));
    if !t.tags.is_empty() {
        kv("Tags:", t.tags.join(", "));
    }
    if !t.description.is_empty() {
        kv("Description:", t.description.clone());
    }
    for (k, v) in &t.vars {
        // A string as it is; anything else as JSON.
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        kv(&format!("var {k}:"), v);
    }
    if let Some(c) = &t.credential {
        kv("Credential:", format!("secret '{c}'"));
    }
    Ok(exit::OK)
}
