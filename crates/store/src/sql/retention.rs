//! Pruning old data: [`retention_sql!`]. Every call is one short statement
//! (or transaction) over at most `limit` rows, so claims and heartbeats wait
//! behind at most one batch (SQLite's one writer) or not at all (PostgreSQL:
//! deletes lock only finished runs' rows, which claims never touch).

/// The runs pruning may touch: finished ones, by `finished_at` (`$1`), as
/// `r`.
macro_rules! finished_before {
    () => {
        "r.finished_at IS NOT NULL AND r.finished_at < $1 \
         AND r.status IN ('succeeded', 'failed', 'cancelled', 'timed_out')"
    };
}
pub(crate) use finished_before;

/// The largest batch one prune call removes.
pub(crate) fn batch(limit: usize) -> i64 {
    i64::try_from(limit.clamp(1, 100_000)).unwrap_or(100_000)
}

/// A count read from the database (never negative).
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Writes `RetentionStore` for one backend.
macro_rules! retention_sql {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use opsconductor_core::Result;
            use opsconductor_core::store::{AuditCheckpoint, PruneCounts, RetentionStore};

            use $crate::common::{from_micros, micros};
            use $crate::sql::Lock;
            use $crate::sql::{batch, count, finished_before};

            #[async_trait]
            impl RetentionStore for $store {
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
                            finished_before!()
                        ))
                        .bind(micros(before))
                        .fetch_one(&self.pool)
                        .await
                        .map_err(self.fail(op))?;
                        let results: i64 = sqlx::query_scalar(concat!(
                            "SELECT COUNT(*) FROM runs r \
                             JOIN step_results s ON s.run_id = r.id WHERE ",
                            finished_before!()
                        ))
                        .bind(micros(before))
                        .fetch_one(&self.pool)
                        .await
                        .map_err(self.fail(op))?;
                        out.runs = count(runs);
                        out.results = count(results);
                    }
                    if let Some(before) = runs_before.max(logs_before) {
                        let logs: i64 = sqlx::query_scalar(concat!(
                            "SELECT COUNT(*) FROM runs r JOIN logs l ON l.run_id = r.id WHERE ",
                            finished_before!()
                        ))
                        .bind(micros(before))
                        .fetch_one(&self.pool)
                        .await
                        .map_err(self.fail(op))?;
                        out.logs = count(logs);
                    }
                    Ok(out)
                }

                async fn prune_logs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
                    let _turn = self.writer().await;
                    // By primary key (row values), one bounded batch.
                    let done = sqlx::query(concat!(
                        "DELETE FROM logs WHERE (run_id, seq) IN (SELECT l.run_id, l.seq \
                         FROM runs r JOIN logs l ON l.run_id = r.id WHERE ",
                        finished_before!(),
                        " LIMIT $2)"
                    ))
                    .bind(micros(before))
                    .bind(batch(limit))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("pruning old log chunks"))?;
                    Ok(done.rows_affected())
                }

                async fn prune_results(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
                    let _turn = self.writer().await;
                    let done = sqlx::query(concat!(
                        "DELETE FROM step_results WHERE (run_id, step, target) IN \
                         (SELECT s.run_id, s.step, s.target \
                          FROM runs r JOIN step_results s ON s.run_id = r.id WHERE ",
                        finished_before!(),
                        " LIMIT $2)"
                    ))
                    .bind(micros(before))
                    .bind(batch(limit))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("pruning old step results"))?;
                    Ok(done.rows_affected())
                }

                async fn prune_runs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
                    let _turn = self.writer().await;
                    let done = sqlx::query(concat!(
                        "DELETE FROM runs WHERE id IN (SELECT r.id FROM runs r WHERE ",
                        finished_before!(),
                        " LIMIT $2)"
                    ))
                    .bind(micros(before))
                    .bind(batch(limit))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("pruning old runs"))?;
                    Ok(done.rows_affected())
                }

                async fn audit_seq_before(&self, before: DateTime<Utc>) -> Result<u64> {
                    let seq: Option<i64> =
                        sqlx::query_scalar("SELECT MAX(seq) FROM audit_events WHERE time < $1")
                            .bind(micros(before))
                            .fetch_one(&self.pool)
                            .await
                            .map_err(self.fail("finding old audit events"))?;
                    Ok(count(seq.unwrap_or(0)))
                }

                async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>> {
                    let row: Option<(Option<i64>, Option<String>, Option<i64>)> = sqlx::query_as(
                        "SELECT checkpoint_seq, checkpoint_hash, checkpoint_at \
                         FROM audit_retention WHERE id = 1",
                    )
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading the audit checkpoint"))?;
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
                    let seq: Option<i64> = sqlx::query_scalar(
                        "SELECT exported_through FROM audit_retention WHERE id = 1",
                    )
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading how far the audit log was exported"))?;
                    Ok(count(seq.unwrap_or(0)))
                }

                async fn set_audit_exported_through(&self, seq: u64) -> Result<()> {
                    let _turn = self.writer().await;
                    // Only ever forward (a `GREATEST` both databases spell alike).
                    sqlx::query(
                        "UPDATE audit_retention SET exported_through = \
                         CASE WHEN exported_through < $1 THEN $1 ELSE exported_through END \
                         WHERE id = 1",
                    )
                    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("recording an audit export"))?;
                    Ok(())
                }

                async fn prune_audit(&self, through: u64, limit: usize) -> Result<u64> {
                    let op = "pruning old audit events";
                    let through = i64::try_from(through).unwrap_or(i64::MAX);
                    // The appenders' lock: the chain stays linear while the
                    // checkpoint moves.
                    let (_turn, mut tx) = self.write_tx(op, Lock::Audit).await?;
                    let newest: Option<i64> =
                        sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                    // The newest event always stays: appends chain to it (and
                    // number after it).
                    let through = through.min(newest.unwrap_or(0) - 1);
                    let current: Option<i64> = sqlx::query_scalar(
                        "SELECT checkpoint_seq FROM audit_retention WHERE id = 1",
                    )
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    if through > current.unwrap_or(0) {
                        let hash: Option<String> =
                            sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
                                .bind(through)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(self.fail(op))?;
                        if let Some(hash) = hash {
                            sqlx::query(
                                "UPDATE audit_retention SET checkpoint_seq = $1, \
                                 checkpoint_hash = $2, checkpoint_at = $3 WHERE id = 1",
                            )
                            .bind(through)
                            .bind(hash)
                            .bind(micros(Utc::now()))
                            .execute(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                        }
                    }
                    let done = sqlx::query(
                        "DELETE FROM audit_events WHERE seq IN (SELECT seq FROM audit_events \
                         WHERE seq <= (SELECT COALESCE(checkpoint_seq, 0) FROM audit_retention \
                         WHERE id = 1) ORDER BY seq LIMIT $1)",
                    )
                    .bind(batch(limit))
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(done.rows_affected())
                }
            }
        };
    };
}
pub(crate) use retention_sql;
