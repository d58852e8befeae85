//! Notification channels and the outbox: [`notify_sql!`]. The claim of due
//! deliveries is the one statement that differs: PostgreSQL picks rows
//! `FOR UPDATE SKIP LOCKED` (deliverers on many nodes never wait for each
//! other), SQLite serialises writers and needs no row lock.

/// Columns of a delivery, in the order [`notify_sql!`]'s decoder reads them.
macro_rules! delivery_columns {
    () => {
        "id, event_id, kind, run_id, job, channel, payload, status, attempts, next_at, \
         give_up_at, created_at, delivered_at, last_error"
    };
}
pub(crate) use delivery_columns;

/// Which deliveries are due at `$3`: pending ones whose time came, and
/// claimed ones whose deliverer's lease ended (it died mid-send).
macro_rules! due_deliveries {
    () => {
        "(status = 'pending' AND next_at <= $3) OR (status = 'delivering' AND lease_until < $3)"
    };
}
pub(crate) use due_deliveries;

/// Writes `NotifyStore` for one backend.
macro_rules! notify_sql {
    ($store:ty, $db:ty) => {
        const _: () = {
            use std::time::Duration;

            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use opsconductor_core::engine::notify::{
                Attempt, AttemptOutcome, Channel, ChannelSpec, Delivery, DeliveryFilter,
                DeliveryNext, DeliveryStatus, EventKind, NewDelivery,
            };
            use opsconductor_core::model::RunId;
            use opsconductor_core::store::{FinishRun, NotifyStore};
            use opsconductor_core::{Error, Result};
            use sqlx::Row;

            use $crate::common::{
                DEFAULT_LIST_LIMIT, corrupt, from_micros, from_micros_opt, lease_end, limit_or,
                micros, to_u32,
            };
            use $crate::sql::{Lock, delivery_columns, due_deliveries};

            type DbRow = <$db as sqlx::Database>::Row;

            const CLAIM_LOCKED: &str = concat!(
                "WITH picked AS MATERIALIZED (SELECT id FROM notify_deliveries WHERE ",
                due_deliveries!(),
                " ORDER BY next_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE notify_deliveries SET status = 'delivering', worker = $1, \
                   lease_until = $2, attempts = notify_deliveries.attempts + 1 \
                 FROM picked WHERE notify_deliveries.id = picked.id RETURNING ",
                "notify_deliveries.id, event_id, kind, run_id, job, channel, payload, status, \
                 attempts, next_at, give_up_at, created_at, delivered_at, last_error"
            );
            const CLAIM_SERIAL: &str = concat!(
                "UPDATE notify_deliveries SET status = 'delivering', worker = $1, \
                   lease_until = $2, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM notify_deliveries WHERE ",
                due_deliveries!(),
                " ORDER BY next_at, id LIMIT $4) RETURNING ",
                delivery_columns!()
            );

            fn uuid_of(what: &str, s: &str) -> Result<uuid::Uuid> {
                s.parse().map_err(|_| corrupt(what, s))
            }

            fn text_of(r: &DbRow, col: &str) -> Result<String> {
                r.try_get::<String, _>(col).map_err(|e| corrupt(col, e))
            }

            fn delivery(r: &DbRow) -> Result<Delivery> {
                let opt = |col: &str| -> Result<Option<String>> {
                    r.try_get::<Option<String>, _>(col).map_err(|e| corrupt(col, e))
                };
                let int = |col: &str| -> Result<i64> {
                    r.try_get::<i64, _>(col).map_err(|e| corrupt(col, e))
                };
                let kind = text_of(r, "kind")?;
                let status = text_of(r, "status")?;
                Ok(Delivery {
                    id: uuid_of("delivery id", &text_of(r, "id")?)?,
                    event_id: uuid_of("event id", &text_of(r, "event_id")?)?,
                    kind: EventKind::parse(&kind).map_err(|_| corrupt("event kind", &kind))?,
                    run_id: opt("run_id")?
                        .map(|s| s.parse::<RunId>().map_err(|_| corrupt("run id", &s)))
                        .transpose()?,
                    job: opt("job")?,
                    channel: text_of(r, "channel")?,
                    payload: text_of(r, "payload")?,
                    status: DeliveryStatus::parse(&status)
                        .ok_or_else(|| corrupt("delivery status", &status))?,
                    attempts: to_u32("attempts", int("attempts")?)?,
                    next_at: from_micros(int("next_at")?)?,
                    give_up_at: from_micros(int("give_up_at")?)?,
                    created_at: from_micros(int("created_at")?)?,
                    delivered_at: from_micros_opt(
                        r.try_get::<Option<i64>, _>("delivered_at")
                            .map_err(|e| corrupt("delivered_at", e))?,
                    )?,
                    last_error: opt("last_error")?,
                })
            }

            fn attempt(r: &DbRow) -> Result<Attempt> {
                let int = |col: &str| -> Result<i64> {
                    r.try_get::<i64, _>(col).map_err(|e| corrupt(col, e))
                };
                let outcome = text_of(r, "outcome")?;
                let code = r
                    .try_get::<Option<i64>, _>("code")
                    .map_err(|e| corrupt("code", e))?;
                Ok(Attempt {
                    delivery_id: uuid_of("delivery id", &text_of(r, "delivery_id")?)?,
                    n: to_u32("attempt", int("n")?)?,
                    at: from_micros(int("at")?)?,
                    latency_ms: u64::try_from(int("latency_ms")?).unwrap_or(0),
                    outcome: AttemptOutcome::parse(&outcome)
                        .ok_or_else(|| corrupt("attempt outcome", &outcome))?,
                    code: code.and_then(|c| u16::try_from(c).ok()),
                    reply: r.try_get("reply").map_err(|e| corrupt("reply", e))?,
                    error: r.try_get("error").map_err(|e| corrupt("error", e))?,
                    worker: text_of(r, "worker")?,
                })
            }

            fn channel(r: &DbRow) -> Result<Channel> {
                let spec_text = text_of(r, "spec")?;
                let spec: ChannelSpec =
                    serde_json::from_str(&spec_text).map_err(|e| corrupt("channel spec", e))?;
                Ok(Channel {
                    name: text_of(r, "name")?,
                    description: text_of(r, "description")?,
                    spec,
                    updated_at: from_micros(
                        r.try_get::<i64, _>("updated_at")
                            .map_err(|e| corrupt("updated_at", e))?,
                    )?,
                    updated_by: text_of(r, "updated_by")?,
                })
            }

            const INSERT_DELIVERY: &str =
                "INSERT INTO notify_deliveries (id, event_id, kind, run_id, job, channel, payload, \
                   status, attempts, next_at, give_up_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9, $10) \
                 ON CONFLICT (event_id, channel) DO NOTHING";

            impl $store {
                /// Inserts deliveries inside a transaction.
                async fn insert_deliveries(
                    &self,
                    tx: &mut sqlx::Transaction<'static, $db>,
                    op: &str,
                    deliveries: &[NewDelivery],
                ) -> Result<()> {
                    let now = micros(Utc::now());
                    for d in deliveries {
                        sqlx::query(INSERT_DELIVERY)
                            .bind(d.id.to_string())
                            .bind(d.event_id.to_string())
                            .bind(d.kind.as_str())
                            .bind(d.run_id.map(|r| r.to_string()))
                            .bind(d.job.as_deref())
                            .bind(&d.channel)
                            .bind(&d.payload)
                            .bind(micros(d.next_at))
                            .bind(micros(d.give_up_at))
                            .bind(now)
                            .execute(&mut **tx)
                            .await
                            .map_err(self.fail(op))?;
                    }
                    Ok(())
                }
            }

            #[async_trait]
            impl NotifyStore for $store {
                async fn put_channel(&self, ch: &Channel) -> Result<()> {
                    let spec = serde_json::to_string(&ch.spec)
                        .map_err(|e| Error::Internal(format!("channel spec: {e}")))?;
                    let _turn = self.writer().await;
                    sqlx::query(
                        "INSERT INTO notify_channels (name, kind, spec, description, updated_at, updated_by) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, spec = excluded.spec, \
                           description = excluded.description, updated_at = excluded.updated_at, \
                           updated_by = excluded.updated_by",
                    )
                    .bind(&ch.name)
                    .bind(ch.spec.kind())
                    .bind(spec)
                    .bind(&ch.description)
                    .bind(micros(ch.updated_at))
                    .bind(&ch.updated_by)
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("storing a notification channel"))?;
                    Ok(())
                }

                async fn get_channel(&self, name: &str) -> Result<Option<Channel>> {
                    let row = sqlx::query(
                        "SELECT name, spec, description, updated_at, updated_by \
                         FROM notify_channels WHERE name = $1",
                    )
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading a notification channel"))?;
                    row.as_ref().map(channel).transpose()
                }

                async fn list_channels(&self) -> Result<Vec<Channel>> {
                    let rows = sqlx::query(
                        "SELECT name, spec, description, updated_at, updated_by \
                         FROM notify_channels ORDER BY name",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing notification channels"))?;
                    rows.iter().map(channel).collect()
                }

                async fn delete_channel(&self, name: &str) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query("DELETE FROM notify_channels WHERE name = $1")
                        .bind(name)
                        .execute(&self.pool)
                        .await
                        .map_err(self.fail("deleting a notification channel"))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn finish_run_notifying(
                    &self,
                    f: &FinishRun<'_>,
                    deliveries: &[NewDelivery],
                ) -> Result<bool> {
                    if !f.status.is_terminal() {
                        return Err(Error::validation(
                            "status",
                            format!(
                                "a run cannot finish as '{}' (expected a final state)",
                                f.status
                            ),
                        ));
                    }
                    let op = "finishing a run with its notifications";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    // The same guarded write as `finish_run`: only the owner.
                    let done = sqlx::query(
                        "UPDATE runs SET status = $1, error = $2, finished_at = $3, \
                         lease_until = NULL \
                         WHERE id = $4 AND worker = $5 AND attempt = $6 AND status = 'running'",
                    )
                    .bind(f.status.as_str())
                    .bind(f.error)
                    .bind(micros(Utc::now()))
                    .bind(f.id.to_string())
                    .bind(f.worker)
                    .bind(i64::from(f.attempt))
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    if done.rows_affected() == 0 {
                        return Ok(false);
                    }
                    self.insert_deliveries(&mut tx, op, deliveries).await?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(true)
                }

                async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<()> {
                    if deliveries.is_empty() {
                        return Ok(());
                    }
                    let op = "storing notifications";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    self.insert_deliveries(&mut tx, op, deliveries).await?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(())
                }

                async fn claim_deliveries(
                    &self,
                    worker: &str,
                    lease: Duration,
                    limit: usize,
                    now: DateTime<Utc>,
                ) -> Result<Vec<Delivery>> {
                    if limit == 0 {
                        return Ok(vec![]);
                    }
                    let sql = if Self::BACKEND == "postgres" {
                        CLAIM_LOCKED
                    } else {
                        CLAIM_SERIAL
                    };
                    let _turn = self.writer().await;
                    let rows = sqlx::query(sql)
                        .bind(worker)
                        .bind(micros(lease_end(now, lease)?))
                        .bind(micros(now))
                        .bind(limit_or(limit, 1, 1000))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.fail("claiming notifications"))?;
                    let mut out = rows.iter().map(delivery).collect::<Result<Vec<_>>>()?;
                    out.sort_by(|a, b| (a.next_at, a.id).cmp(&(b.next_at, b.id)));
                    Ok(out)
                }

                async fn record_attempt(&self, a: &Attempt, next: DeliveryNext) -> Result<bool> {
                    let op = "recording a notification attempt";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    sqlx::query(
                        "INSERT INTO notify_attempts (delivery_id, n, at, latency_ms, outcome, code, \
                           reply, error, worker) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (delivery_id, n) DO NOTHING",
                    )
                    .bind(a.delivery_id.to_string())
                    .bind(i64::from(a.n))
                    .bind(micros(a.at))
                    .bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
                    .bind(a.outcome.as_str())
                    .bind(a.code.map(i64::from))
                    .bind(a.reply.as_deref())
                    .bind(a.error.as_deref())
                    .bind(&a.worker)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    let (status, next_at, delivered_at) = match next {
                        DeliveryNext::Delivered => ("delivered", None, Some(micros(Utc::now()))),
                        DeliveryNext::RetryAt(at) => ("pending", Some(micros(at)), None),
                        DeliveryNext::GiveUp => ("failed", None, None),
                    };
                    let done = sqlx::query(
                        "UPDATE notify_deliveries SET status = $1, \
                           next_at = COALESCE($2, next_at), delivered_at = $3, \
                           last_error = $4, worker = NULL, lease_until = NULL \
                         WHERE id = $5 AND worker = $6 AND attempts = $7 AND status = 'delivering'",
                    )
                    .bind(status)
                    .bind(next_at)
                    .bind(delivered_at)
                    .bind(a.error.as_deref())
                    .bind(a.delivery_id.to_string())
                    .bind(&a.worker)
                    .bind(i64::from(a.n))
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn get_delivery(&self, id: uuid::Uuid) -> Result<Option<Delivery>> {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        delivery_columns!(),
                        " FROM notify_deliveries WHERE id = $1"
                    ))
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading a notification"))?;
                    row.as_ref().map(delivery).transpose()
                }

                async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        delivery_columns!(),
                        " FROM notify_deliveries \
                         WHERE ($1 IS NULL OR run_id = $1) AND ($2 IS NULL OR channel = $2) \
                         ORDER BY created_at DESC, id DESC LIMIT $3"
                    ))
                    .bind(filter.run.map(|r| r.to_string()))
                    .bind(filter.channel.as_deref())
                    .bind(limit_or(filter.limit, DEFAULT_LIST_LIMIT, 1000))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing notifications"))?;
                    rows.iter().map(delivery).collect()
                }

                async fn attempts(&self, id: uuid::Uuid) -> Result<Vec<Attempt>> {
                    let rows = sqlx::query(
                        "SELECT delivery_id, n, at, latency_ms, outcome, code, reply, error, worker \
                         FROM notify_attempts WHERE delivery_id = $1 ORDER BY n",
                    )
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing notification attempts"))?;
                    rows.iter().map(attempt).collect()
                }
            }
        };
    };
}
pub(crate) use notify_sql;
