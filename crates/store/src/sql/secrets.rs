//! Secrets, master key records and the audit log: [`secret_sql!`]. Only
//! ciphertexts are stored; every secret change adds a history row in the
//! same transaction; audit appends hold [`Lock::Audit`](crate::sql::Lock),
//! so the hash chain stays linear across processes.

/// Writes `SecretStore` and `AuditStore` for one backend.
macro_rules! secret_sql {
    ($store:ty, $db:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use opsconductor_core::model::AuditEvent;
            use opsconductor_core::secrets::{KeyRecord, SecretChange, SecretRecord};
            use opsconductor_core::store::{AuditStore, SecretStore};
            use opsconductor_core::{Error, Result};

            use $crate::common::{micros, to_u32};
            use $crate::rows::{audit_columns, secret_columns};
            use $crate::sql::Lock;

            impl $store {
                /// Adds a secret history row inside a secret change's transaction.
                async fn secret_history_row(
                    &self,
                    conn: &mut <$db as sqlx::Database>::Connection,
                    (name, version, action): (&str, u32, &str),
                    by: &str,
                    at: i64,
                ) -> Result<()> {
                    sqlx::query(
                        "INSERT INTO secret_history (name, version, action, by_user, at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(name)
                    .bind(i64::from(version))
                    .bind(action)
                    .bind(by)
                    .bind(at)
                    .execute(conn)
                    .await
                    .map_err(self.fail("recording secret history"))?;
                    Ok(())
                }
            }

            #[async_trait]
            impl SecretStore for $store {
                async fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>> {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        secret_columns!(),
                        " FROM secrets WHERE name = $1"
                    ))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading a secret"))?;
                    row.as_ref().map(rows::secret).transpose()
                }

                async fn list_secrets(&self) -> Result<Vec<SecretRecord>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        secret_columns!(),
                        " FROM secrets ORDER BY name"
                    ))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing secrets"))?;
                    rows.iter().map(rows::secret).collect()
                }

                async fn create_secret(&self, rec: &SecretRecord) -> Result<()> {
                    let op = "creating a secret";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    let m = &rec.meta;
                    let done = sqlx::query(concat!(
                        "INSERT INTO secrets (",
                        secret_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (name) DO NOTHING"
                    ))
                    .bind(&m.name)
                    .bind(&rec.id)
                    .bind(&m.kind)
                    .bind(&m.description)
                    .bind(i64::from(m.version))
                    .bind(i64::from(m.key_version))
                    .bind(&rec.ciphertext)
                    .bind(micros(m.created_at))
                    .bind(&m.created_by)
                    .bind(micros(m.updated_at))
                    .bind(&m.updated_by)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    if done.rows_affected() == 0 {
                        return Err(Error::Conflict(format!(
                            "secret '{}' already exists",
                            m.name
                        )));
                    }
                    let change = (m.name.as_str(), m.version, "created");
                    self.secret_history_row(&mut tx, change, &m.created_by, micros(m.created_at))
                        .await?;
                    tx.commit().await.map_err(self.fail(op))
                }

                async fn update_secret(&self, rec: &SecretRecord) -> Result<bool> {
                    let op = "updating a secret";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    let m = &rec.meta;
                    let done = sqlx::query(
                        "UPDATE secrets SET kind = $1, description = $2, version = $3, \
                         key_version = $4, ciphertext = $5, updated_at = $6, updated_by = $7 \
                         WHERE name = $8 AND version = $9",
                    )
                    .bind(&m.kind)
                    .bind(&m.description)
                    .bind(i64::from(m.version))
                    .bind(i64::from(m.key_version))
                    .bind(&rec.ciphertext)
                    .bind(micros(m.updated_at))
                    .bind(&m.updated_by)
                    .bind(&m.name)
                    .bind(i64::from(m.version) - 1)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    if done.rows_affected() == 0 {
                        return Ok(false);
                    }
                    let change = (m.name.as_str(), m.version, "updated");
                    self.secret_history_row(&mut tx, change, &m.updated_by, micros(m.updated_at))
                        .await?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(true)
                }

                async fn rewrap_secret(
                    &self,
                    name: &str,
                    from_key: u32,
                    to_key: u32,
                    ciphertext: &[u8],
                ) -> Result<bool> {
                    let op = "re-encrypting a secret";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    let version: Option<i64> = sqlx::query_scalar(
                        "UPDATE secrets SET key_version = $1, ciphertext = $2 \
                         WHERE name = $3 AND key_version = $4 RETURNING version",
                    )
                    .bind(i64::from(to_key))
                    .bind(ciphertext)
                    .bind(name)
                    .bind(i64::from(from_key))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    let Some(version) = version else {
                        return Ok(false);
                    };
                    let action = format!("rewrapped to key {to_key}");
                    let change = (name, to_u32("secret version", version)?, action.as_str());
                    let now = micros(chrono::Utc::now());
                    self.secret_history_row(&mut tx, change, "system", now).await?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(true)
                }

                async fn delete_secret(&self, name: &str, by: &str) -> Result<bool> {
                    let op = "deleting a secret";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    let version: Option<i64> =
                        sqlx::query_scalar("DELETE FROM secrets WHERE name = $1 RETURNING version")
                            .bind(name)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                    let Some(version) = version else {
                        return Ok(false);
                    };
                    let change = (name, to_u32("secret version", version)?, "deleted");
                    let now = micros(chrono::Utc::now());
                    self.secret_history_row(&mut tx, change, by, now).await?;
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(true)
                }

                async fn secret_history(&self, name: &str) -> Result<Vec<SecretChange>> {
                    let rows = sqlx::query(
                        "SELECT name, version, action, by_user, at FROM secret_history \
                         WHERE name = $1 ORDER BY seq",
                    )
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading secret history"))?;
                    rows.iter().map(rows::secret_change).collect()
                }

                async fn key_records(&self) -> Result<Vec<KeyRecord>> {
                    let rows = sqlx::query(
                        "SELECT version, salt, check_value, created_at, retired_at \
                         FROM master_keys ORDER BY version",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading master key records"))?;
                    rows.iter().map(rows::key_record).collect()
                }

                async fn put_key_record(&self, rec: &KeyRecord) -> Result<()> {
                    let _turn = self.writer().await;
                    sqlx::query(
                        "INSERT INTO master_keys (version, salt, check_value, created_at, \
                         retired_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version) DO NOTHING",
                    )
                    .bind(i64::from(rec.version))
                    .bind(&rec.salt)
                    .bind(&rec.check)
                    .bind(micros(rec.created_at))
                    .bind(rec.retired_at.map(micros))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("registering a master key version"))?;
                    Ok(())
                }

                async fn retire_key(&self, version: u32) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query(
                        "UPDATE master_keys SET retired_at = $1 \
                         WHERE version = $2 AND retired_at IS NULL",
                    )
                    .bind(micros(chrono::Utc::now()))
                    .bind(i64::from(version))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("retiring a master key version"))?;
                    Ok(done.rows_affected() > 0)
                }
            }

            #[async_trait]
            impl AuditStore for $store {
                async fn append_audit(&self, e: &AuditEvent) -> Result<()> {
                    let op = "recording an audit event";
                    // One appender at a time across every process: the chain
                    // stays linear, and the next number follows the newest
                    // event (which pruning always keeps).
                    let (_turn, mut tx) = self.write_tx(op, Lock::Audit).await?;
                    let last: Option<(i64, String)> =
                        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(self.fail(op))?;
                    let (seq, prev) = match last {
                        Some((s, h)) => (s + 1, h),
                        None => (1, String::new()),
                    };
                    let hash = e.chain_hash(&prev);
                    sqlx::query(concat!(
                        "INSERT INTO audit_events (",
                        audit_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    ))
                    .bind(seq)
                    .bind(micros(e.time))
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.object)
                    .bind(e.detail.to_string())
                    .bind(&prev)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    tx.commit().await.map_err(self.fail(op))
                }

                async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>> {
                    let limit = if limit == 0 { 1000 } else { limit.min(10_000) } as i64;
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        audit_columns!(),
                        " FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ))
                    .bind(i64::try_from(after).unwrap_or(i64::MAX))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading the audit log"))?;
                    rows.iter().map(rows::audit_event).collect()
                }

                async fn list_audit(
                    &self,
                    object: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<AuditEvent>> {
                    let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
                    let query = match object {
                        Some(o) => sqlx::query(concat!(
                            "SELECT ",
                            audit_columns!(),
                            " FROM audit_events WHERE object = $1 ORDER BY seq DESC LIMIT $2"
                        ))
                        .bind(o)
                        .bind(limit),
                        None => sqlx::query(concat!(
                            "SELECT ",
                            audit_columns!(),
                            " FROM audit_events ORDER BY seq DESC LIMIT $1"
                        ))
                        .bind(limit),
                    };
                    let rows = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.fail("reading the audit log"))?;
                    rows.iter().map(rows::audit_event).collect()
                }

                async fn audit_before(
                    &self,
                    object: Option<&str>,
                    before: u64,
                    limit: usize,
                ) -> Result<Vec<AuditEvent>> {
                    let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
                    let before = i64::try_from(before).unwrap_or(i64::MAX);
                    let query = match object {
                        Some(o) => sqlx::query(concat!(
                            "SELECT ",
                            audit_columns!(),
                            " FROM audit_events WHERE seq < $1 AND object = $2 \
                             ORDER BY seq DESC LIMIT $3"
                        ))
                        .bind(before)
                        .bind(o)
                        .bind(limit),
                        None => sqlx::query(concat!(
                            "SELECT ",
                            audit_columns!(),
                            " FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
                        ))
                        .bind(before)
                        .bind(limit),
                    };
                    let rows = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.fail("reading the audit log"))?;
                    rows.iter().map(rows::audit_event).collect()
                }
            }
        };
    };
}
pub(crate) use secret_sql;
