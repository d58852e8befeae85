//! `opsconductor approvals list|show`, `approve ID`, `reject ID`: one short
//! function each; the rules (four-eyes, eligibility, expiry) are the
//! engine's.

use clap::Subcommand;
use opsconductor::approval::ApprovalView;
use opsconductor::{Actor, Conductor, Error, RunId};

use crate::exit;
use crate::output::{Out, local_time};

/// `opsconductor approvals …`.
#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Runs waiting for approval, newest first.
    List {
        /// Also decided, expired and cancelled requests.
        #[arg(long)]
        all: bool,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One request: the frozen plan, its digest, policy hits and decisions.
    Show {
        /// Run id, or a unique prefix of it.
        id: String,
    },
}

async fn resolve(oc: &Conductor, id: &str) -> Result<RunId, Error> {
    oc.resolve_run_id(id, &Actor::local_user()).await
}

pub async fn list(oc: &Conductor, out: &Out, all: bool, limit: usize) -> Result<u8, Error> {
    let views = oc.approvals(!all, limit, &Actor::local_user()).await?;
    if out.json {
        out.json(&views);
        return Ok(exit::OK);
    }
    if views.is_empty() {
        out.note("no runs are waiting for approval");
        return Ok(exit::OK);
    }
    let rows = views
        .iter()
        .map(|v| {
            vec![
                v.request.run_id.to_string(),
                v.request.job.clone(),
                out.run_status(v.status),
                format!("{}/{}", v.approvals(), v.request.required),
                v.request.approvers.describe(),
                v.request.requested_by.clone(),
                local_time(v.request.expires_at),
            ]
        })
        .collect();
    out.table(
        &[
            "RUN",
            "JOB",
            "STATUS",
            "APPROVALS",
            "BY",
            "REQUESTED BY",
            "EXPIRES",
        ],
        rows,
    );
    Ok(exit::OK)
}

pub async fn show(oc: &Conductor, out: &Out, id: &str) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let v = oc.approval(id, &Actor::local_user()).await?;
    if out.json {
        out.json(&v);
        return Ok(exit::OK);
    }
    print_view(out, &v);
    Ok(exit::OK)
}

fn print_view(out: &Out, v: &ApprovalView) {
    let r = &v.request;
    println!("run:          {}", r.run_id);
    println!("job:          {}", r.job);
    println!("status:       {}", out.run_status(v.status));
    println!(
        "requested by: {} at {}",
        r.requested_by,
        local_time(r.created_at)
    );
    println!(
        "approvers:    {} ({} of {})",
        r.approvers.describe(),
        v.approvals(),
        r.required
    );
    println!("expires:      {}", local_time(r.expires_at));
    println!("why:          {}", r.reasons.join(", "));
    println!("plan digest:  {}", r.plan_digest);
    for h in &r.policy_hits {
        println!(
            "policy:       {} ({}) step {} on {}: {}",
            h.rule,
            h.action.as_str(),
            h.step.map(|s| s.to_string()).unwrap_or_default(),
            h.target.as_deref().unwrap_or("-"),
            h.matched
        );
    }
    println!("plan:");
    if let Some(steps) = r.plan["steps"].as_array() {
        for s in steps {
            let text = s["text"]
                .as_str()
                .or_else(|| s["dest"].as_str())
                .unwrap_or("");
            println!(
                "  [{}] {} @ {}: {}",
                s["step"],
                s["name"].as_str().unwrap_or(""),
                s["target"].as_str().unwrap_or(""),
                text.replace('\n', "\n      ")
            );
        }
    }
    if r.plan["truncated"].as_bool() == Some(true) {
        println!("  … (the plan is longer; the digest covers all of it)");
    }
    for d in &v.decisions {
        println!(
            "decision:     {} by {} at {}{}",
            d.decision.as_str(),
            d.approver,
            local_time(d.time),
            d.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}

pub async fn approve(
    oc: &Conductor,
    out: &Out,
    id: &str,
    comment: Option<String>,
) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let v = oc.approve(id, comment, &Actor::local_user()).await?;
    if out.json {
        out.json(&v);
    } else if v.status == opsconductor::RunStatus::Queued {
        println!("run {id} approved: queued");
    } else {
        println!(
            "approval recorded: {} of {} for run {id}",
            v.approvals(),
            v.request.required
        );
    }
    Ok(exit::OK)
}

pub async fn reject(oc: &Conductor, out: &Out, id: &str, reason: String) -> Result<u8, Error> {
    let id = resolve(oc, id).await?;
    let v = oc.reject(id, reason, &Actor::local_user()).await?;
    if out.json {
        out.json(&v);
    } else {
        println!("run {id} rejected");
    }
    Ok(exit::OK)
}

/// `run --follow` on a waiting run: who it waits for.
pub async fn note_waiting(oc: &Conductor, out: &Out, id: RunId) {
    if let Ok(v) = oc.approval(id, &Actor::local_user()).await {
        out.note(&v.waiting_line());
        out.note(&format!(
            "plan digest {}; approve with: opsconductor approve {id}",
            v.request.plan_digest
        ));
    }
}
