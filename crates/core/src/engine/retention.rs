//! Retention: removing finished runs, their logs and old audit events in
//! bounded batches, by hand (`prune`) or periodically (the pruner started by
//! the builder), and exporting the audit log before its events go.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Conductor, Inner};
use crate::auth::Permission;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::store::{AuditCheckpoint, PruneCounts, RetentionStore};

/// Rows per delete statement: small enough that a claim or heartbeat waits
/// at most one short statement, large enough to prune millions of rows in minutes.
pub const DEFAULT_PRUNE_BATCH: usize = 2_000;

/// The rows per delete statement a prune accepts. One row is the smallest
/// batch that makes progress; above 100,000 a single statement holds the
/// SQLite writer (or PostgreSQL row locks) for seconds, which is what
/// batching exists to prevent, and memory for the statement grows with it.
pub const PRUNE_BATCH_RANGE: std::ops::RangeInclusive<usize> = 1..=100_000;

/// Refuses a batch size outside [`PRUNE_BATCH_RANGE`], naming `field` (the
/// flag or setting it came from).
pub(crate) fn check_batch(field: &str, batch: usize) -> Result<usize> {
    if PRUNE_BATCH_RANGE.contains(&batch) {
        return Ok(batch);
    }
    Err(Error::validation(
        field,
        format!(
            "{batch} rows per statement is outside the accepted range {}-{} (default {DEFAULT_PRUNE_BATCH})",
            PRUNE_BATCH_RANGE.start(),
            PRUNE_BATCH_RANGE.end()
        ),
    ))
}

/// How long data is kept; `None` keeps it forever (the default for everything).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Finished runs (with their step results and logs) older than this go.
    pub runs: Option<Duration>,
    /// Logs of finished runs older than this go (may be shorter than `runs`).
    pub logs: Option<Duration>,
    /// Audit events older than this go, up to a checkpoint (default: forever).
    pub audit: Option<Duration>,
    /// Audit events are pruned only up to what `audit export` wrote (default
    /// true); false prunes without an export.
    pub audit_require_export: bool,
    /// How often the periodic pruner runs (when any retention is set).
    pub interval: Duration,
    /// Rows per delete statement, within [`PRUNE_BATCH_RANGE`] (checked when
    /// the engine is built).
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            runs: None,
            logs: None,
            audit: None,
            audit_require_export: true,
            interval: Duration::from_secs(3600),
            batch: DEFAULT_PRUNE_BATCH,
        }
    }
}

impl Retention {
    /// True if anything is ever pruned.
    pub fn is_active(&self) -> bool {
        self.runs.is_some() || self.logs.is_some() || self.audit.is_some()
    }
}

/// One prune: what to remove.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// Remove finished runs older than this.
    pub runs_older_than: Option<Duration>,
    /// Remove logs of finished runs older than this.
    pub logs_older_than: Option<Duration>,
    /// Remove audit events older than this (up to a checkpoint).
    pub audit_older_than: Option<Duration>,
    /// Prune audit events even if they were not exported.
    pub audit_without_export: bool,
    /// Count only.
    pub dry_run: bool,
    /// Rows per statement, within [`PRUNE_BATCH_RANGE`] (default
    /// [`DEFAULT_PRUNE_BATCH`]); anything else is refused as `--batch`.
    pub batch: usize,
}

impl Default for PruneRequest {
    fn default() -> Self {
        Self {
            runs_older_than: None,
            logs_older_than: None,
            audit_older_than: None,
            audit_without_export: false,
            dry_run: false,
            batch: DEFAULT_PRUNE_BATCH,
        }
    }
}

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Nothing was removed; `counts` says what would be.
    pub dry_run: bool,
    /// Runs finished before this went.
    pub runs_before: Option<DateTime<Utc>>,
    /// Logs of runs finished before this went.
    pub logs_before: Option<DateTime<Utc>>,
    /// Counts by kind.
    pub counts: PruneCounts,
    /// Delete statements made.
    pub batches: u64,
    /// The audit checkpoint after the prune.
    pub audit_checkpoint: Option<AuditCheckpoint>,
    /// Audit events that were old enough but kept because they were not
    /// exported yet (0 when none).
    pub audit_kept_unexported: u64,
}

/// What `export_audit` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct AuditExport {
    /// Events written.
    pub events: u64,
    /// The first and last `seq` written.
    pub first_seq: Option<u64>,
    /// The last `seq` written (pruning may now go up to it).
    pub last_seq: Option<u64>,
    /// The checkpoint the export starts after, if events were pruned before.
    pub checkpoint: Option<AuditCheckpoint>,
}

fn retention_of(inner: &Inner) -> Result<&dyn RetentionStore> {
    Ok(inner.store.retention_store())
}

fn cutoff(now: DateTime<Utc>, age: Option<Duration>, what: &str) -> Result<Option<DateTime<Utc>>> {
    age.map(|d| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| Error::validation(what, "is too long to compute a cut-off date"))
    })
    .transpose()
}

/// Repeats one bounded delete until nothing is left.
async fn drain<F, Fut>(batch: usize, batches: &mut u64, mut step: F) -> Result<u64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut total = 0u64;
    loop {
        let n = step(batch).await?;
        *batches += 1;
        total += n;
        if n == 0 || (n as usize) < batch {
            return Ok(total);
        }
        // Let claims, heartbeats and log writes in between batches.
        tokio::task::yield_now().await;
    }
}

impl Inner {
    pub(crate) async fn prune(&self, req: &PruneRequest, actor: &Actor) -> Result<PruneReport> {
        let batch = check_batch("--batch", req.batch)?;
        let store = retention_of(self)?;
        let now = Utc::now();
        let runs_before = cutoff(now, req.runs_older_than, "--older-than")?;
        let logs_before = cutoff(now, req.logs_older_than, "--logs-older-than")?.max(runs_before);
        let audit_before = cutoff(now, req.audit_older_than, "--audit-older-than")?;
        let mut counts = store.count_prunable(runs_before, logs_before).await?;
        let mut batches = 0u64;
        // Audit: only up to the export mark unless told otherwise, and never past
        // the checkpoint backwards.
        let mut audit_through = 0u64;
        let mut kept_unexported = 0u64;
        if let Some(before) = audit_before {
            let wanted = store.audit_seq_before(before).await?;
            let floor = store.audit_checkpoint().await?.map_or(0, |c| c.seq);
            audit_through = wanted;
            if !req.audit_without_export {
                let exported = store.audit_exported_through().await?;
                if exported < wanted {
                    kept_unexported = wanted - exported.max(floor);
                    audit_through = exported;
                }
            }
            counts.audit_events = audit_through.saturating_sub(floor);
        }
        if !req.dry_run {
            let mut done = PruneCounts::default();
            // Logs first (the biggest tables), then results, then the runs:
            // every statement stays bounded; a crash in between leaves runs
            // without old logs, which is what retention wanted anyway.
            if let Some(before) = logs_before {
                done.logs = drain(batch, &mut batches, |n| store.prune_logs(before, n)).await?;
            }
            if let Some(before) = runs_before {
                done.results =
                    drain(batch, &mut batches, |n| store.prune_results(before, n)).await?;
                done.runs = drain(batch, &mut batches, |n| store.prune_runs(before, n)).await?;
            }
            if audit_through > 0 {
                done.audit_events =
                    drain(batch, &mut batches, |n| store.prune_audit(audit_through, n)).await?;
            }
            counts = done;
        }
        let audit_checkpoint = store.audit_checkpoint().await?;
        let report = PruneReport {
            dry_run: req.dry_run,
            runs_before,
            logs_before,
            counts,
            batches,
            audit_checkpoint,
            audit_kept_unexported: kept_unexported,
        };
        if !req.dry_run {
            self.audit_as(
                actor,
                "retention.prune",
                "retention".to_string(),
                serde_json::json!({
                    "runs": report.counts.runs,
                    "results": report.counts.results,
                    "logs": report.counts.logs,
                    "audit_events": report.counts.audit_events,
                    "runs_before": runs_before,
                    "logs_before": logs_before,
                    "audit_checkpoint": report.audit_checkpoint.as_ref().map(|c| c.seq),
                }),
            )
            .await;
        }
        Ok(report)
    }
}

/// The periodic pruner: prunes by the configured retention every
/// `interval` until the engine shuts down. Errors are logged, never fatal.
pub(crate) async fn pruner(inner: std::sync::Arc<Inner>, retention: Retention) {
    let actor = Actor::new("retention");
    let req = PruneRequest {
        runs_older_than: retention.runs,
        logs_older_than: retention.logs,
        audit_older_than: retention.audit,
        audit_without_export: !retention.audit_require_export,
        dry_run: false,
        batch: retention.batch,
    };
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(retention.interval) => {}
        }
        match inner.prune(&req, &actor).await {
            Ok(r) => tracing::info!(
                runs = r.counts.runs,
                logs = r.counts.logs,
                audit_events = r.counts.audit_events,
                "retention: pruned old data"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "retention: pruning failed (tried again next interval)")
            }
        }
    }
}

impl Conductor {
    /// Removes finished runs, their logs and (if asked) old audit events in
    /// bounded batches; never queued or running runs. Audited (one
    /// `retention.prune` event with the counts) unless `dry_run`.
    pub async fn prune(&self, req: &PruneRequest, actor: &Actor) -> Result<PruneReport> {
        actor.require(Permission::ManageSettings)?;
        self.inner.prune(req, actor).await
    }

    /// Writes audit events after the checkpoint up to `until` (default: all)
    /// as JSON lines, and records that they were exported, so audit pruning
    /// (which by default never goes past an export) may remove them.
    pub async fn export_audit(
        &self,
        until: Option<u64>,
        out: &mut (dyn Write + Send),
        actor: &Actor,
    ) -> Result<AuditExport> {
        actor.require(Permission::ReadAudit)?;
        let audit = self.inner.store.audit_store();
        let checkpoint = self
            .inner
            .store
            .retention_store()
            .audit_checkpoint()
            .await?;
        let until = until.unwrap_or(u64::MAX);
        let mut after = checkpoint.as_ref().map_or(0, |c| c.seq);
        let mut export = AuditExport {
            events: 0,
            first_seq: None,
            last_seq: None,
            checkpoint,
        };
        'pages: loop {
            let page = audit.audit_after(after, 1000).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                if e.seq > until {
                    break 'pages;
                }
                let line = serde_json::to_string(e)
                    .map_err(|e| Error::Internal(format!("encoding an audit event: {e}")))?;
                writeln!(out, "{line}")
                    .map_err(|e| Error::invalid(format!("writing the audit export: {e}")))?;
                export.events += 1;
                export.first_seq.get_or_insert(e.seq);
                export.last_seq = Some(e.seq);
                after = e.seq;
            }
        }
        out.flush()
            .map_err(|e| Error::invalid(format!("writing the audit export: {e}")))?;
        if let Some(last) = export.last_seq {
            let r = self.inner.store.retention_store();
            r.set_audit_exported_through(last).await?;
        }
        self.inner
            .audit_as(
                actor,
                "audit.export",
                "audit".to_string(),
                serde_json::json!({"events": export.events, "first_seq": export.first_seq, "last_seq": export.last_seq}),
            )
            .await;
        Ok(export)
    }
}
