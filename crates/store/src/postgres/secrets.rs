//! Secrets, master key records and the audit log in PostgreSQL. Only
//! ciphertexts are stored; every change adds a history row in the same
//! transaction; audit appends are serialised between processes by a
//! transaction-scoped advisory lock, so the hash chain stays linear.

use async_trait::async_trait;
use opsconductor_core::model::AuditEvent;
use opsconductor_core::secrets::{KeyRecord, SecretChange, SecretMeta, SecretRecord};
use opsconductor_core::store::{AuditStore, SecretStore};
use opsconductor_core::{Error, Result};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use crate::common::{Context, from_micros, from_micros_opt, micros, to_u32};

/// The advisory lock key serialising audit appends (`opsc:aud` in ASCII).
pub(super) const AUDIT_LOCK: i64 = 0x6f70_7363_3a61_7564;

/// The secret columns, as a literal so queries stay `&'static str` (sqlx refuses built strings).
macro_rules! secret_columns {
    () => {
        "name, id, kind, description, version, key_version, ciphertext, created_at, created_by, updated_at, updated_by"
    };
}

fn secret_row(r: &PgRow) -> Result<SecretRecord> {
    let get = |e: sqlx::Error| Error::store(format!("reading a secret: {e}"));
    Ok(SecretRecord {
        id: r.try_get("id").map_err(get)?,
        ciphertext: r.try_get("ciphertext").map_err(get)?,
        meta: SecretMeta {
            name: r.try_get("name").map_err(get)?,
            kind: r.try_get("kind").map_err(get)?,
            description: r.try_get("description").map_err(get)?,
            version: to_u32("secret version", r.try_get("version").map_err(get)?)?,
            key_version: to_u32("key version", r.try_get("key_version").map_err(get)?)?,
            created_at: from_micros(r.try_get("created_at").map_err(get)?)?,
            created_by: r.try_get("created_by").map_err(get)?,
            updated_at: from_micros(r.try_get("updated_at").map_err(get)?)?,
            updated_by: r.try_get("updated_by").map_err(get)?,
        },
    })
}

async fn history(
    tx: &mut sqlx::PgConnection,
    name: &str,
    version: u32,
    action: &str,
    by: &str,
    at: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO secret_history (name, version, action, by_user, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(name)
        .bind(i64::from(version))
        .bind(action)
        .bind(by)
        .bind(at)
        .execute(tx)
        .await
        .ctx("recording secret history")?;
    Ok(())
}

#[async_trait]
impl SecretStore for PostgresStore {
    async fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            secret_columns!(),
            " FROM secrets WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a secret")?;
        row.as_ref().map(secret_row).transpose()
    }

    async fn list_secrets(&self) -> Result<Vec<SecretRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            secret_columns!(),
            " FROM secrets ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx("listing secrets")?;
        rows.iter().map(secret_row).collect()
    }

    async fn create_secret(&self, rec: &SecretRecord) -> Result<()> {
        let op = "creating a secret";
        let mut tx = self.pool.begin().await.ctx(op)?;
        let m = &rec.meta;
        let done = sqlx::query(concat!(
            "INSERT INTO secrets (",
            secret_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (name) DO NOTHING"
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
        .ctx(op)?;
        if done.rows_affected() == 0 {
            return Err(Error::Conflict(format!(
                "secret '{}' already exists",
                m.name
            )));
        }
        history(
            &mut tx,
            &m.name,
            m.version,
            "created",
            &m.created_by,
            micros(m.created_at),
        )
        .await?;
        tx.commit().await.ctx(op)
    }

    async fn update_secret(&self, rec: &SecretRecord) -> Result<bool> {
        let op = "updating a secret";
        let mut tx = self.pool.begin().await.ctx(op)?;
        let m = &rec.meta;
        let done = sqlx::query(
            "UPDATE secrets SET kind = $1, description = $2, version = $3, key_version = $4, ciphertext = $5, \
             updated_at = $6, updated_by = $7 WHERE name = $8 AND version = $9",
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
        .ctx(op)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        history(
            &mut tx,
            &m.name,
            m.version,
            "updated",
            &m.updated_by,
            micros(m.updated_at),
        )
        .await?;
        tx.commit().await.ctx(op)?;
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
        let mut tx = self.pool.begin().await.ctx(op)?;
        let row = sqlx::query("UPDATE secrets SET key_version = $1, ciphertext = $2 WHERE name = $3 AND key_version = $4 RETURNING version")
            .bind(i64::from(to_key))
            .bind(ciphertext)
            .bind(name)
            .bind(i64::from(from_key))
            .fetch_optional(&mut *tx)
            .await
            .ctx(op)?;
        let Some(row) = row else { return Ok(false) };
        let version: i64 = row.try_get("version").ctx(op)?;
        let now = micros(chrono::Utc::now());
        history(
            &mut tx,
            name,
            to_u32("secret version", version)?,
            &format!("rewrapped to key {to_key}"),
            "system",
            now,
        )
        .await?;
        tx.commit().await.ctx(op)?;
        Ok(true)
    }

    async fn delete_secret(&self, name: &str, by: &str) -> Result<bool> {
        let op = "deleting a secret";
        let mut tx = self.pool.begin().await.ctx(op)?;
        let row = sqlx::query("DELETE FROM secrets WHERE name = $1 RETURNING version")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .ctx(op)?;
        let Some(row) = row else { return Ok(false) };
        let version: i64 = row.try_get("version").ctx(op)?;
        history(
            &mut tx,
            name,
            to_u32("secret version", version)?,
            "deleted",
            by,
            micros(chrono::Utc::now()),
        )
        .await?;
        tx.commit().await.ctx(op)?;
        Ok(true)
    }

    async fn secret_history(&self, name: &str) -> Result<Vec<SecretChange>> {
        let rows = sqlx::query("SELECT name, version, action, by_user, at FROM secret_history WHERE name = $1 ORDER BY seq")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .ctx("reading secret history")?;
        rows.iter()
            .map(|r| {
                Ok(SecretChange {
                    name: r.try_get("name").ctx("reading secret history")?,
                    version: to_u32(
                        "secret version",
                        r.try_get("version").ctx("reading secret history")?,
                    )?,
                    action: r.try_get("action").ctx("reading secret history")?,
                    by: r.try_get("by_user").ctx("reading secret history")?,
                    at: from_micros(r.try_get("at").ctx("reading secret history")?)?,
                })
            })
            .collect()
    }

    async fn key_records(&self) -> Result<Vec<KeyRecord>> {
        let op = "reading master key records";
        let rows = sqlx::query("SELECT version, salt, check_value, created_at, retired_at FROM master_keys ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .ctx(op)?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    version: to_u32("key version", r.try_get("version").ctx(op)?)?,
                    salt: r.try_get("salt").ctx(op)?,
                    check: r.try_get("check_value").ctx(op)?,
                    created_at: from_micros(r.try_get("created_at").ctx(op)?)?,
                    retired_at: from_micros_opt(r.try_get("retired_at").ctx(op)?)?,
                })
            })
            .collect()
    }

    async fn put_key_record(&self, rec: &KeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO master_keys (version, salt, check_value, created_at, retired_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(i64::from(rec.version))
        .bind(&rec.salt)
        .bind(&rec.check)
        .bind(micros(rec.created_at))
        .bind(rec.retired_at.map(micros))
        .execute(&self.pool)
        .await
        .ctx("registering a master key version")?;
        Ok(())
    }

    async fn retire_key(&self, version: u32) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE master_keys SET retired_at = $1 WHERE version = $2 AND retired_at IS NULL",
        )
        .bind(micros(chrono::Utc::now()))
        .bind(i64::from(version))
        .execute(&self.pool)
        .await
        .ctx("retiring a master key version")?;
        Ok(done.rows_affected() > 0)
    }
}

fn audit_row(r: &PgRow) -> Result<AuditEvent> {
    let op = "reading the audit log";
    let detail: String = r.try_get("detail").ctx(op)?;
    let seq: i64 = r.try_get("seq").ctx(op)?;
    Ok(AuditEvent {
        time: from_micros(r.try_get("time").ctx(op)?)?,
        actor: r.try_get("actor").ctx(op)?,
        action: r.try_get("action").ctx(op)?,
        object: r.try_get("object").ctx(op)?,
        // Kept as text if it is not JSON any more: the verifier must see what is stored.
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        seq: u64::try_from(seq).unwrap_or(0),
        prev_hash: r.try_get("prev_hash").ctx(op)?,
        hash: r.try_get("hash").ctx(op)?,
    })
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<()> {
        let op = "recording an audit event";
        let mut tx = self.pool.begin().await.ctx(op)?;
        // One appender at a time across every process: the chain stays linear.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .ctx(op)?;
        let (seq, prev) = match last {
            Some((s, h)) => (s + 1, h),
            None => (1, String::new()),
        };
        let hash = e.chain_hash(&prev);
        sqlx::query("INSERT INTO audit_events (seq, time, actor, action, object, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
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
            .ctx(op)?;
        tx.commit().await.ctx(op)
    }

    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>> {
        let limit = if limit == 0 { 1000 } else { limit.min(10_000) } as i64;
        let rows = sqlx::query(
            "SELECT seq, time, actor, action, object, detail, prev_hash, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("reading the audit log")?;
        rows.iter().map(audit_row).collect()
    }

    async fn list_audit(&self, object: Option<&str>, limit: usize) -> Result<Vec<AuditEvent>> {
        let op = "reading the audit log";
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
        let rows = match object {
            Some(o) => sqlx::query(
                "SELECT seq, time, actor, action, object, detail, prev_hash, hash FROM audit_events WHERE object = $1 ORDER BY seq DESC LIMIT $2",
            )
            .bind(o)
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query(
                "SELECT seq, time, actor, action, object, detail, prev_hash, hash FROM audit_events ORDER BY seq DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
        }
        .ctx(op)?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_before(
        &self,
        object: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>> {
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT seq, time, actor, action, object, detail, prev_hash, hash FROM audit_events WHERE seq < $1 AND ($2::text IS NULL OR object = $2) ORDER BY seq DESC LIMIT $3",
        )
        .bind(before)
        .bind(object)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("reading the audit log")?;
        rows.iter().map(audit_row).collect()
    }
}
