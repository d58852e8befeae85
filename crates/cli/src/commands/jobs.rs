//! `opsconductor jobs …`: list, show and versions.

use opsconductor::{Action, Actor, Conductor, Error};

use crate::exit;
use crate::output::{Out, local_time};

pub async fn jobs_list(oc: &Conductor, out: &Out) -> Result<u8, Error> {
    let jobs = oc.jobs(&Actor::local_user()).await?;
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
    let j = oc.job(name, version, &Actor::local_user()).await?;
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
    let versions = oc.job_versions(name, &Actor::local_user()).await?;
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
