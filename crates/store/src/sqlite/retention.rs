//! Pruning old data in SQLite: every call is one short write (the writer
//! lock is held for one bounded statement), so claims and heartbeats queue
//! behind at most one batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opsconductor_core::Result;
use opsconductor_core::store::{AuditCheckpoint, PruneCounts, RetentionStore};

use super::SqliteStore;
use crate::common::{Context, from_micros, micros};

/// The runs pruning may touch: finished ones, by `finished_at`.
macro_rules! finished_before {
    ($alias:literal) => {
        concat!(
            $alias,
            ".finished_at IS NOT NULL AND ",
            $alias,
            ".finished_at < ? AND ",
            $alias,
            ".status IN ('succeeded', 'failed', 'cancelled', 'timed_out')"
        )
    };
}

fn batch(limit: usize) -> i64 {
    i64::try_from(limit.clamp(1, 100_000)).unwrap_or(100_000)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl RetentionStore for SqliteStore {
    async fn count_prunable(
        &self,
        runs_before: Option<DateTime<Utc>>,
        logs_before: Option<DateTime<Utc>>,
    ) -> Result<PruneCounts> {
        let op = "counting what a prune would remove";
        let mut out = PruneCounts::default();
        if let Some(before) = runs_before {
            let runs: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM runs r WHERE ",
                finished_before!("r")
            ))
            .bind(micros(before))
            .fetch_one(&self.pool)
            .await
            .ctx(op)?;
            let results: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM runs r JOIN step_results s ON s.run_id = r.id WHERE ",
                finished_before!("r")
            ))
            .bind(micros(before))
            .fetch_one(&self.pool)
            .await
            .ctx(op)?;
            out.runs = count(runs);
            out.results = count(results);
        }
        if let Some(before) = runs_before.max(logs_before) {
            let logs: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM runs r JOIN logs l ON l.run_id = r.id WHERE ",
                finished_before!("r")
            ))
            .bind(micros(before))
            .fetch_one(&self.pool)
            .await
            .ctx(op)?;
            out.logs = count(logs);
        }
        Ok(out)
    }

    async fn prune_logs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let _w = self.writer().await;
        let done = sqlx::query(concat!(
            "DELETE FROM logs WHERE rowid IN (SELECT l.rowid FROM runs r \
             JOIN logs l ON l.run_id = r.id WHERE ",
            finished_before!("r"),
            " LIMIT ?)"
        ))
        .bind(micros(before))
        .bind(batch(limit))
        .execute(&self.pool)
        .await
        .ctx("pruning old log chunks")?;
        Ok(done.rows_affected())
    }

    async fn prune_results(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let _w = self.writer().await;
        let done = sqlx::query(concat!(
            "DELETE FROM step_results WHERE rowid IN (SELECT s.rowid FROM runs r \
             JOIN step_results s ON s.run_id = r.id WHERE ",
            finished_before!("r"),
            " LIMIT ?)"
        ))
        .bind(micros(before))
        .bind(batch(limit))
        .execute(&self.pool)
        .await
        .ctx("pruning old step results")?;
        Ok(done.rows_affected())
    }

    async fn prune_runs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let _w = self.writer().await;
        let done = sqlx::query(concat!(
            "DELETE FROM runs WHERE id IN (SELECT r.id FROM runs r WHERE ",
            finished_before!("r"),
            " LIMIT ?)"
        ))
        .bind(micros(before))
        .bind(batch(limit))
        .execute(&self.pool)
        .await
        .ctx("pruning old runs")?;
        Ok(done.rows_affected())
    }

    async fn audit_seq_before(&self, before: DateTime<Utc>) -> Result<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM audit_events WHERE time < ?")
                .bind(micros(before))
                .fetch_one(&self.pool)
                .await
                .ctx("finding old audit events")?;
        Ok(count(seq.unwrap_or(0)))
    }

    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>> {
        let row: Option<(Option<i64>, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT checkpoint_seq, checkpoint_hash, checkpoint_at FROM audit_retention WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .ctx("reading the audit checkpoint")?;
        match row {
            Some((Some(seq), Some(hash), Some(at))) => Ok(Some(AuditCheckpoint {
                seq: count(seq),
                hash,
                at: from_micros(at)?,
            })),
            _ => Ok(None),
        }
    }

    async fn audit_exported_through(&self) -> Result<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT exported_through FROM audit_retention WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .ctx("reading how far the audit log was exported")?;
        Ok(count(seq.unwrap_or(0)))
    }

    async fn set_audit_exported_through(&self, seq: u64) -> Result<()> {
        let _w = self.writer().await;
        sqlx::query(
            "UPDATE audit_retention SET exported_through = MAX(exported_through, ?) WHERE id = 1",
        )
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .ctx("recording an audit export")?;
        Ok(())
    }

    async fn prune_audit(&self, through: u64, limit: usize) -> Result<u64> {
        let op = "pruning old audit events";
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        let _w = self.writer().await;
        // BEGIN IMMEDIATE: appenders of other processes wait, the chain stays linear.
        let mut tx = self.begin_write(op).await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
            .fetch_one(&mut *tx)
            .await
            .ctx(op)?;
        // The newest event always stays: appends chain to it.
        let through = through.min(newest.unwrap_or(0) - 1);
        let current: Option<i64> =
            sqlx::query_scalar("SELECT checkpoint_seq FROM audit_retention WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .ctx(op)?;
        if through > current.unwrap_or(0) {
            let hash: Option<String> =
                sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = ?")
                    .bind(through)
                    .fetch_optional(&mut *tx)
                    .await
                    .ctx(op)?;
            if let Some(hash) = hash {
                sqlx::query(
                    "UPDATE audit_retention SET checkpoint_seq = ?, checkpoint_hash = ?, \
                     checkpoint_at = ? WHERE id = 1",
                )
                .bind(through)
                .bind(hash)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await
                .ctx(op)?;
            }
        }
        let done = sqlx::query(
            "DELETE FROM audit_events WHERE seq IN (SELECT seq FROM audit_events \
             WHERE seq <= (SELECT COALESCE(checkpoint_seq, 0) FROM audit_retention WHERE id = 1) \
             ORDER BY seq LIMIT ?)",
        )
        .bind(batch(limit))
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        Ok(done.rows_affected())
    }
}
