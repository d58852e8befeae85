//! Commands that manage rather than run: the audit log, and `worker`,
//! which only executes runs queued by others.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use opsconductor::{Actor, Conductor, Error};

use crate::exit;
use crate::output::{Out, local_time};
use crate::signals::wait_for_signal;

/// `opsconductor worker`.
#[derive(Args, Debug)]
#[command(
    after_help = "Point every worker at the same database (PostgreSQL for several hosts):\n  OPSC_DATABASE_URL=postgres://ops@db/ops opsconductor worker --concurrency 8\n\nSIGTERM or Ctrl-C: stop claiming, let the runs in progress finish (up to --drain-timeout);\na second signal quits at once (unfinished runs are rescued by another worker when their lease expires)."
)]
pub struct WorkerArgs {
    /// Runs executed at the same time by this process.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Run only the scheduler (queue the runs schedules fire; execute none):
    /// a dedicated scheduling node.
    #[arg(long)]
    pub scheduler_only: bool,
    /// Lease length: a run whose worker stops heartbeating is rescued after this.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "30s")]
    pub lease: Duration,
    /// Safety-net poll for queued runs. On PostgreSQL a submission wakes the
    /// workers at once (LISTEN/NOTIFY); this only bounds how late a missed
    /// wake-up is noticed. SQLite has no cross-process wake-ups and polls
    /// every 250 ms at most.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "1s")]
    pub poll: Duration,
    /// How long to wait for runs in progress on shutdown.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "5m")]
    pub drain_timeout: Duration,
    /// Prune finished runs older than this, periodically (default: keep forever).
    #[arg(long, env = "OPSC_RETENTION_RUNS", value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub retention_runs: Option<Duration>,
    /// Prune logs of finished runs older than this, periodically (may be shorter than runs).
    #[arg(long, env = "OPSC_RETENTION_LOGS", value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub retention_logs: Option<Duration>,
    /// How often the pruner runs when a retention is set.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "1h")]
    pub retention_interval: Duration,
}

impl WorkerArgs {
    /// The engine's retention from the flags.
    pub fn retention(&self) -> opsconductor::Retention {
        opsconductor::Retention {
            runs: self.retention_runs,
            logs: self.retention_logs,
            interval: self.retention_interval,
            ..opsconductor::Retention::default()
        }
    }
}

/// `opsconductor audit verify`.
#[derive(Subcommand, Debug, Clone)]
pub enum AuditCmd {
    /// Recompute the audit hash chain; exits 1 and names the first bad event if it was tampered with.
    #[command(
        after_help = "The chain alone cannot show that the newest events were deleted. Keep the head this\ncommand prints (SEQ:HASH) outside the database and pass it back:\n  opsconductor audit verify --anchor 1842:9f2c…"
    )]
    Verify {
        /// The head (`SEQ:HASH`) of an earlier verification, kept elsewhere: that event
        /// must still be there with that hash, so deleting the newest events is detected.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<String>,
    },
    /// Write the audit events (after the pruning checkpoint) as JSON lines, and record
    /// that they were exported: audit pruning never goes past the last export.
    Export {
        /// Only events up to this seq.
        #[arg(long, value_name = "SEQ")]
        until: Option<u64>,
        /// Write to this file (default: stdout).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Checks the audit chain; exit code 0 if intact, 1 if not.
pub async fn audit_verify(oc: &Conductor, out: &Out, anchor: Option<&str>) -> Result<u8, Error> {
    let anchor = match anchor {
        None => None,
        Some(a) => {
            let (seq, hash) = a
                .split_once(':')
                .and_then(|(s, h)| Some((s.trim().parse::<u64>().ok()?, h.trim())))
                .filter(|(_, h)| !h.is_empty())
                .ok_or_else(|| {
                    Error::validation(
                        "--anchor",
                        format!("{a:?} is not SEQ:HASH (as printed by an earlier `audit verify`)"),
                    )
                })?;
            Some((seq, hash))
        }
    };
    let v = oc
        .verify_audit_against(anchor, &Actor::local_user())
        .await?;
    if out.json {
        out.json(&v);
    } else if v.ok {
        println!("audit log intact: {} event(s) verified", v.events);
        if let (Some(seq), Some(hash)) = (v.head_seq, v.head_hash.as_deref()) {
            println!(
                "head: {seq}:{hash}\n  keep it outside the database; `audit verify --anchor {seq}:{hash}` later also detects deleted newest events"
            );
        }
    } else {
        println!(
            "audit log TAMPERED: event {} — {}",
            v.first_bad_seq.map(|s| s.to_string()).unwrap_or_default(),
            v.problem.as_deref().unwrap_or("")
        );
    }
    Ok(if v.ok { exit::OK } else { exit::FAILED })
}

pub async fn audit(
    oc: &Conductor,
    out: &Out,
    object: Option<String>,
    limit: usize,
) -> Result<u8, Error> {
    let events = oc
        .audit_log(object.as_deref(), limit, &Actor::local_user())
        .await?;
    if out.json {
        out.json(&events);
        return Ok(exit::OK);
    }
    let rows = events
        .iter()
        .map(|e| {
            vec![
                local_time(e.time),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                if e.detail.is_null() {
                    String::new()
                } else {
                    e.detail.to_string()
                },
            ]
        })
        .collect();
    out.table(&["TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"], rows);
    Ok(exit::OK)
}

/// Runs workers until SIGTERM/SIGINT, then drains.
pub async fn worker(oc: &Conductor, out: &Out, args: &WorkerArgs) -> Result<u8, Error> {
    if args.concurrency == 0 {
        return Err(Error::validation("--concurrency", "must be at least 1"));
    }
    if !args.scheduler_only {
        oc.start_workers(args.concurrency);
    }
    // Every worker also runs the scheduler; the database lets exactly one
    // process queue each fire time.
    oc.start_scheduler();
    out.note(&format!(
        "worker {} started: {} at a time on {} (lease {}) — SIGTERM or Ctrl-C to stop",
        oc.config().worker_name,
        args.concurrency,
        oc.backend(),
        opsconductor::duration::format(args.lease)
    ));
    wait_for_signal().await;
    out.note(&format!(
        "stopping: no new runs; waiting up to {} for runs in progress (signal again to quit now)",
        opsconductor::duration::format(args.drain_timeout)
    ));
    // Late in the drain period, runs still going are stopped (processes
    // killed) and recorded as interrupted before the process exits.
    let drain = oc.shutdown_within(args.drain_timeout);
    tokio::select! {
        ended = drain => {
            if ended {
                out.note("all runs in progress ended (finished or interrupted); bye");
                Ok(exit::OK)
            } else {
                out.note("drain timeout: quitting; unfinished runs will be rescued by another worker after their lease");
                Ok(exit::FAILED)
            }
        }
        _ = wait_for_signal() => {
            let n = oc.stop_active_runs();
            out.note(&format!("quitting now: stopping {n} run(s) in progress"));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), oc.shutdown()).await;
            Ok(exit::FAILED)
        }
    }
}
