//! How a run's outcome is shown: per-target progress lines, grouped output,
//! the summary table and the exit code a run deserves.

use std::time::Duration;

use futures::StreamExt;
use opsconductor::{Actor, Conductor, Error, Run, RunDetail, RunId, RunStatus, StepStatus};

use crate::exit;
use crate::output::{Out, human_duration};

/// Prints a run's stored output as one block per target, in target order,
/// each headed by the target's outcome.
pub(super) async fn print_grouped(oc: &Conductor, out: &Out, id: RunId) -> Result<(), Error> {
    if out.json {
        return Ok(());
    }
    let me = Actor::local_user();
    let d = oc.run(id, &me).await?;
    let mut per: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let mut logs = oc.logs(id, 0, &me).await?;
    while let Some(c) = logs.next().await {
        let c = c?;
        if c.stream != opsconductor::Stream::System {
            per.entry(c.target.clone().unwrap_or_default())
                .or_default()
                .extend_from_slice(&c.data);
        }
    }
    for t in &d.run.targets {
        let status = d
            .target_outcome(t, true)
            .status
            .unwrap_or(StepStatus::Skipped);
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

/// Prints a line per target as each one finishes (plus a live counter on a terminal).
pub(super) async fn progress(
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
        if let Ok(d) = oc.run(run.id, &Actor::local_user()).await {
            let mut running = 0;
            let (mut ok, mut bad) = (0, 0);
            for t in &run.targets {
                let o = d.target_outcome(t, d.run.status.is_terminal() || finished);
                match o.status {
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
                            let took = o.duration.map(human_duration).unwrap_or_default();
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

pub(super) fn run_duration(r: &Run) -> String {
    match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => human_duration(f - s),
        (Some(s), None) => format!("{} so far", human_duration(chrono::Utc::now() - s)),
        _ => String::new(),
    }
}

pub(super) fn summary(out: &Out, d: &RunDetail, followed: bool) {
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
                let o = d.target_outcome(t, true);
                vec![
                    t.clone(),
                    eout.step_status(o.status.unwrap_or(StepStatus::Skipped)),
                    o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    o.duration.map(human_duration).unwrap_or_default(),
                    o.error.unwrap_or_default(),
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
pub(super) fn exit_code(d: &RunDetail) -> u8 {
    match d.run.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::TimedOut => exit::TIMED_OUT,
        RunStatus::Cancelled => exit::CANCELLED,
        RunStatus::Failed if d.run.targets.len() == 1 => d
            .failing_result(&d.run.targets[0])
            .filter(|r| r.status == StepStatus::Failed)
            .and_then(|r| r.exit_code)
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(exit::FAILED),
        _ => exit::FAILED,
    }
}
