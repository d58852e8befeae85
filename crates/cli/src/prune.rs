//! `opsconductor prune` and `opsconductor audit export`: retention for the
//! embedded default (or any database the CLI can open).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use opsconductor::{Actor, Conductor, Error, PruneRequest};

use crate::exit;
use crate::output::Out;

/// `opsconductor prune`.
#[derive(Args, Debug)]
#[command(
    after_help = "Only finished runs (succeeded, failed, cancelled, timed_out) are pruned; queued and running runs never.\nDeletes run in batches (--batch rows per statement), so workers keep claiming meanwhile.\n\nExamples:\n  opsconductor prune --older-than 90d --logs-older-than 30d --dry-run\n  opsconductor audit export --until 5000 -o audit-2026.jsonl && opsconductor prune --audit-older-than 365d"
)]
pub struct PruneArgs {
    /// Remove finished runs (with their results and logs) older than this (e.g. 90d).
    #[arg(long, value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub older_than: Option<Duration>,
    /// Remove only the logs of finished runs older than this (may be shorter than --older-than).
    #[arg(long, value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub logs_older_than: Option<Duration>,
    /// Remove audit events older than this, up to what `audit export` wrote; the newest
    /// pruned event becomes the checkpoint `audit verify` starts from.
    #[arg(long, value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub audit_older_than: Option<Duration>,
    /// Prune audit events even if they were never exported (they are lost).
    #[arg(long)]
    pub audit_without_export: bool,
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows per delete statement (1-100000; larger batches hold the database's
    /// writer longer).
    #[arg(long, default_value_t = opsconductor::DEFAULT_PRUNE_BATCH, value_name = "ROWS",
        value_parser = parse_rows, allow_hyphen_values = true)]
    pub batch: usize,
}

/// Reads `--batch` as a number of rows. The engine checks the range (so
/// every front end gets the same rule); this only turns text into a number,
/// saying what is wrong with a negative or oversized one.
fn parse_rows(text: &str) -> Result<usize, String> {
    let range = opsconductor::PRUNE_BATCH_RANGE;
    let accepted = format!("accepted: {}-{}", range.start(), range.end());
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("a number of rows cannot be negative ({accepted})"));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<usize>()
            .map_err(|_| format!("{t} is far too large ({accepted})"));
    }
    Err(format!("not a number of rows ({accepted})"))
}

/// Runs a prune; prints the counts (or JSON).
pub async fn prune(oc: &Conductor, out: &Out, args: &PruneArgs) -> Result<u8, Error> {
    if args.older_than.is_none()
        && args.logs_older_than.is_none()
        && args.audit_older_than.is_none()
    {
        return Err(Error::validation(
            "prune",
            "say what to remove: --older-than, --logs-older-than and/or --audit-older-than",
        ));
    }
    let req = PruneRequest {
        runs_older_than: args.older_than,
        logs_older_than: args.logs_older_than,
        audit_older_than: args.audit_older_than,
        audit_without_export: args.audit_without_export,
        dry_run: args.dry_run,
        batch: args.batch,
    };
    let report = oc.prune(&req, &Actor::local_user()).await?;
    if out.json {
        out.json(&report);
        return Ok(exit::OK);
    }
    let c = report.counts;
    println!(
        "{} {} run(s), {} step result(s), {} log chunk(s), {} audit event(s)",
        if report.dry_run {
            "would remove"
        } else {
            "removed"
        },
        c.runs,
        c.results,
        c.logs,
        c.audit_events
    );
    if report.audit_kept_unexported > 0 {
        out.note(&format!(
            "{} old audit event(s) kept: not exported yet (run `opsconductor audit export` first, or pass --audit-without-export)",
            report.audit_kept_unexported
        ));
    }
    if let Some(cp) = &report.audit_checkpoint {
        println!("audit checkpoint: {}:{}", cp.seq, cp.hash);
    }
    Ok(exit::OK)
}

/// Writes the audit log as JSON lines to a file or stdout.
pub async fn audit_export(
    oc: &Conductor,
    out: &Out,
    until: Option<u64>,
    output: Option<&PathBuf>,
) -> Result<u8, Error> {
    let actor = Actor::local_user();
    let export = match output {
        Some(path) => {
            // Written next to the target first, renamed when complete: a
            // half-written archive never looks finished.
            let tmp = path.with_extension("partial");
            let mut file = std::fs::File::create(&tmp).map_err(|e| {
                Error::validation(tmp.display().to_string(), format!("cannot create: {e}"))
            })?;
            let export = oc.export_audit(until, &mut file, &actor).await?;
            file.sync_all().map_err(|e| {
                Error::validation(tmp.display().to_string(), format!("cannot write: {e}"))
            })?;
            std::fs::rename(&tmp, path).map_err(|e| {
                Error::validation(path.display().to_string(), format!("cannot write: {e}"))
            })?;
            export
        }
        None => {
            let mut stdout = std::io::stdout();
            oc.export_audit(until, &mut stdout, &actor).await?
        }
    };
    if out.json && output.is_some() {
        out.json(&export);
    } else {
        out.note(&format!(
            "exported {} audit event(s){}",
            export.events,
            match (export.first_seq, export.last_seq) {
                (Some(a), Some(b)) =>
                    format!(" (seq {a}..={b}); audit pruning may now go up to {b}"),
                _ => String::new(),
            }
        ));
    }
    Ok(exit::OK)
}
