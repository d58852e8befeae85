//! Approval requests and decisions: [`approval_sql!`]. A decision is one
//! write transaction that reads the run with `row_lock` (PostgreSQL:
//! `FOR UPDATE`, which also waits for a concurrent cancel's or expiry's
//! `UPDATE`; SQLite's `BEGIN IMMEDIATE` already excludes every other
//! writer), checks state and expiry, records the decision and moves the
//! run with guarded writes — so of racing decisions, cancels and expiries
//! exactly one outcome holds.

/// The columns of `approval_requests`, in insert order.
macro_rules! request_columns {
    () => {
        "run_id, job, requested_by, required, approvers, reason_required, expires_at, \
         plan_digest, plan, reasons, policy_hits, created_at"
    };
}
pub(crate) use request_columns;

/// Writes `ApprovalStore` for one backend.
macro_rules! approval_sql {
    ($store:ty, $db:ty, row_lock = $row_lock:literal) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use opsconductor_core::approval::{
                ApprovalDecision, ApprovalRequest, DecideOutcome, Decision,
            };
            use opsconductor_core::model::{RunId, RunStatus};
            use opsconductor_core::store::ApprovalStore;
            use opsconductor_core::{Error, Result};

            use $crate::common::{corrupt, from_micros, micros, to_u32};
            use $crate::rows::{run_id, to_json};
            use $crate::sql::Lock;
            use $crate::sql::approvals::request_columns;

            /// Decodes a row of `request_columns!`.
            fn request(row: &<$db as sqlx::Database>::Row) -> Result<ApprovalRequest> {
                let id: String = rows::get(row, "run_id")?;
                let required: i64 = rows::get(row, "required")?;
                Ok(ApprovalRequest {
                    run_id: run_id(&id)?,
                    job: rows::get(row, "job")?,
                    requested_by: rows::get(row, "requested_by")?,
                    required: to_u32("required approvals", required)?,
                    approvers: rows::json(row, "approvers")?,
                    reason_required: rows::get(row, "reason_required")?,
                    expires_at: from_micros(rows::get(row, "expires_at")?)?,
                    plan_digest: rows::get(row, "plan_digest")?,
                    plan: rows::json(row, "plan")?,
                    reasons: rows::json(row, "reasons")?,
                    policy_hits: rows::json(row, "policy_hits")?,
                    created_at: from_micros(rows::get(row, "created_at")?)?,
                })
            }

            fn decision_row(row: &<$db as sqlx::Database>::Row) -> Result<ApprovalDecision> {
                let id: String = rows::get(row, "run_id")?;
                let d: String = rows::get(row, "decision")?;
                Ok(ApprovalDecision {
                    run_id: run_id(&id)?,
                    approver: rows::get(row, "approver")?,
                    decision: d.parse().map_err(|_| corrupt("decision", &d))?,
                    reason: rows::get(row, "reason")?,
                    plan_digest: rows::get(row, "plan_digest")?,
                    time: from_micros(rows::get(row, "decided_at")?)?,
                })
            }

            fn status_of(text: &str) -> Result<RunStatus> {
                text.parse().map_err(|_| corrupt("run status", text))
            }

            #[async_trait]
            impl ApprovalStore for $store {
                async fn put_approval_request(&self, req: &ApprovalRequest) -> Result<()> {
                    let approvers = to_json("approvers", &req.approvers)?;
                    let plan = to_json("plan", &req.plan)?;
                    let reasons = to_json("approval reasons", &req.reasons)?;
                    let hits = to_json("policy hits", &req.policy_hits)?;
                    let _turn = self.writer().await;
                    sqlx::query(concat!(
                        "INSERT INTO approval_requests (",
                        request_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                    ))
                    .bind(req.run_id.to_string())
                    .bind(&req.job)
                    .bind(&req.requested_by)
                    .bind(i64::from(req.required))
                    .bind(approvers)
                    .bind(req.reason_required)
                    .bind(micros(req.expires_at))
                    .bind(&req.plan_digest)
                    .bind(plan)
                    .bind(reasons)
                    .bind(hits)
                    .bind(micros(req.created_at))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| match &e {
                        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict(
                            format!("run {} already has an approval request", req.run_id),
                        ),
                        _ => self.fail("recording an approval request")(e),
                    })?;
                    Ok(())
                }

                async fn approval_request(&self, run: RunId) -> Result<Option<ApprovalRequest>> {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        request_columns!(),
                        " FROM approval_requests a WHERE run_id = $1 \
                           AND EXISTS (SELECT 1 FROM runs r WHERE r.id = a.run_id)"
                    ))
                    .bind(run.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading an approval request"))?;
                    row.as_ref().map(request).transpose()
                }

                async fn approval_decisions(&self, run: RunId) -> Result<Vec<ApprovalDecision>> {
                    let rows = sqlx::query(
                        "SELECT run_id, approver, decision, reason, plan_digest, decided_at \
                         FROM approvals WHERE run_id = $1 ORDER BY decided_at, approver",
                    )
                    .bind(run.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading approval decisions"))?;
                    rows.iter().map(decision_row).collect()
                }

                async fn list_approval_requests(
                    &self,
                    waiting_only: bool,
                    limit: usize,
                ) -> Result<Vec<(ApprovalRequest, RunStatus)>> {
                    let limit = i64::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
                    let rows = sqlx::query(
                        "SELECT r.status AS run_status, a.run_id, a.job, a.requested_by, \
                           a.required, a.approvers, a.reason_required, a.expires_at, \
                           a.plan_digest, a.plan, a.reasons, a.policy_hits, a.created_at \
                         FROM approval_requests a JOIN runs r ON r.id = a.run_id \
                         WHERE (NOT $1 OR r.status = 'waiting_approval') \
                         ORDER BY a.created_at DESC, a.run_id DESC LIMIT $2",
                    )
                    .bind(waiting_only)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing approval requests"))?;
                    rows.iter()
                        .map(|row| {
                            let s: String = rows::get(row, "run_status")?;
                            Ok((request(row)?, status_of(&s)?))
                        })
                        .collect()
                }

                async fn decide(
                    &self,
                    d: &ApprovalDecision,
                    now: DateTime<Utc>,
                ) -> Result<DecideOutcome> {
                    let op = "recording an approval decision";
                    let id = d.run_id.to_string();
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    let status: Option<String> = sqlx::query_scalar(concat!(
                        "SELECT status FROM runs WHERE id = $1",
                        $row_lock
                    ))
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    let Some(status) = status else {
                        return Err(Error::not_found("run", id));
                    };
                    let status = status_of(&status)?;
                    if status != RunStatus::WaitingApproval {
                        return Ok(DecideOutcome::NotWaiting(status));
                    }
                    let req: Option<(i64, i64)> = sqlx::query_as(
                        "SELECT required, expires_at FROM approval_requests WHERE run_id = $1",
                    )
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    let Some((required, expires_at)) = req else {
                        return Err(corrupt("approval request", format!("run {id} has none")));
                    };
                    let t = micros(now);
                    let end = |to: &'static str, error: String| {
                        sqlx::query(
                            "UPDATE runs SET status = $1, error = $2, finished_at = $3 \
                             WHERE id = $4 AND status = 'waiting_approval'",
                        )
                        .bind(to)
                        .bind(error)
                        .bind(t)
                        .bind(id.clone())
                    };
                    if t >= expires_at {
                        end("expired", "nobody approved it in time".into())
                            .execute(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                        tx.commit().await.map_err(self.fail(op))?;
                        return Ok(DecideOutcome::Expired);
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO approvals \
                           (run_id, approver, decision, reason, plan_digest, decided_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    )
                    .bind(&id)
                    .bind(&d.approver)
                    .bind(d.decision.as_str())
                    .bind(d.reason.as_deref())
                    .bind(&d.plan_digest)
                    .bind(t)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    if inserted.rows_affected() == 0 {
                        return Ok(DecideOutcome::AlreadyDecided);
                    }
                    let outcome = match d.decision {
                        Decision::Reject => {
                            end(
                                "rejected",
                                format!(
                                    "rejected by {}: {}",
                                    d.approver,
                                    d.reason.as_deref().unwrap_or("")
                                ),
                            )
                            .execute(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                            DecideOutcome::Rejected
                        }
                        Decision::Approve => {
                            let n: i64 = sqlx::query_scalar(
                                "SELECT COUNT(*) FROM approvals \
                                 WHERE run_id = $1 AND decision = 'approve'",
                            )
                            .bind(&id)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                            if n >= required {
                                sqlx::query(
                                    "UPDATE runs SET status = 'queued' \
                                     WHERE id = $1 AND status = 'waiting_approval'",
                                )
                                .bind(&id)
                                .execute(&mut *tx)
                                .await
                                .map_err(self.fail(op))?;
                                DecideOutcome::Approved
                            } else {
                                DecideOutcome::Recorded {
                                    approvals: to_u32("approvals", n)?,
                                }
                            }
                        }
                    };
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(outcome)
                }

                async fn expire_approvals(
                    &self,
                    now: DateTime<Utc>,
                    limit: usize,
                ) -> Result<Vec<RunId>> {
                    let limit = i64::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
                    let _turn = self.writer().await;
                    let ids: Vec<String> = sqlx::query_scalar(
                        "UPDATE runs SET status = 'expired', finished_at = $1, \
                           error = 'nobody approved it in time' \
                         WHERE status = 'waiting_approval' AND id IN ( \
                           SELECT a.run_id FROM approval_requests a JOIN runs r ON r.id = a.run_id \
                           WHERE a.expires_at <= $1 AND r.status = 'waiting_approval' \
                           ORDER BY a.expires_at LIMIT $2) \
                         RETURNING id",
                    )
                    .bind(micros(now))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("expiring approval requests"))?;
                    ids.iter().map(|s| run_id(s)).collect()
                }
            }
        };
    };
}
pub(crate) use approval_sql;
