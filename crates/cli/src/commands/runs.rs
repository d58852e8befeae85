//! `opsconductor runs …`: list, show, logs and cancel.

use futures::StreamExt;
use opsconductor::{Actor, Conductor, Error, RunFilter, RunId, RunStatus};

use super::report::run_duration;
use crate::exit;
use crate::output::{LogPrinter, Out, human_duration, local_time};

pub async fn runs_list(
    oc: &Conductor,
    out: &Out,
    job: Option<String>,
    status: Vec<String>,
    limit: usize,
    schedule: Option<String>,
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
        .runs(
            &RunFilter {
                job,
                statuses,
                before: None,
                limit,
                schedule,
            },
            &Actor::local_user(),
        )
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
    oc.resolve_run_id(id, &Actor::local_user()).await
}

pub async fn runs_show(oc: &Conductor, out: &Out, id: &str) -> Result<u8, Error> {
    let d = oc.run(resolve(oc, id).await?, &Actor::local_user()).await?;
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
    if let Some(p) = super::flow::parent_line(&d) {
        kv("Parent:", p);
    }
    println!();
    // Cleanup steps say which list they are in; a retried step shows each
    // earlier try on its own row above its latest one.
    let mut rows = Vec::new();
    for x in &d.results {
        let step = r
            .spec
            .step_at(x.step as usize)
            .map(|s| s.name.as_str())
            .unwrap_or("?");
        let phase = match r.spec.phase_of(x.step as usize) {
            opsconductor::StepPhase::Main => String::new(),
            p => format!(" [{}]", p.as_str()),
        };
        let name = |try_no: u32| {
            let t = if x.try_no > 1 {
                format!(" (try {try_no}/{})", x.try_no)
            } else {
                String::new()
            };
            format!("{}. {step}{phase}{t}", x.step + 1)
        };
        for t in &x.tries {
            rows.push(vec![
                name(t.try_no),
                x.target.clone(),
                out.step_status(t.status),
                t.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                human_duration(t.finished_at - t.started_at),
                t.error.clone().unwrap_or_default(),
            ]);
        }
        rows.push(vec![
            name(x.try_no),
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
        ]);
    }
    out.table(&["STEP", "TARGET", "STATUS", "EXIT", "TOOK", "ERROR"], rows);
    super::flow::print_flow(out, &d);
    Ok(exit::OK)
}

pub async fn runs_logs(oc: &Conductor, out: &Out, id: &str, follow: bool) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let d = oc.run(id, &Actor::local_user()).await?;
    let mut printer = LogPrinter::new(out, &d.run.targets, true);
    // Live, or what is stored now; the engine pages the store either way.
    let mut logs = if follow {
        oc.follow(id, 0, &Actor::local_user()).await?
    } else {
        oc.logs(id, 0, &Actor::local_user()).await?
    };
    while let Some(c) = logs.next().await {
        printer.chunk(&c?);
    }
    printer.flush();
    Ok(exit::OK)
}

pub async fn runs_cancel(oc: &Conductor, out: &Out, id: &str) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let before = oc.run(id, &Actor::local_user()).await?.run;
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
