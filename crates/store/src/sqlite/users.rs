//! Users, login families (rotating refresh tokens) and API tokens in SQLite.
//! Tokens are stored as hashes only. Presenting a refresh token is one
//! `BEGIN IMMEDIATE` transaction, so of two concurrent uses exactly one wins.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opsconductor_core::auth::{ApiToken, RefreshToken, RefreshUse, Role, User};
use opsconductor_core::store::UserStore;
use opsconductor_core::{Error, Result};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::common::{Context, corrupt, from_micros, from_micros_opt, micros};

/// The user columns, as a literal so queries stay `&'static str`.
macro_rules! user_columns {
    () => {
        "username, role, disabled, password_hash, created_at, password_changed_at"
    };
}

/// The API token columns.
macro_rules! token_columns {
    () => {
        "id, name, role, username, token_hash, created_at, expires_at, revoked_at, last_used_at"
    };
}

fn role(text: &str) -> Result<Role> {
    text.parse().map_err(|_| corrupt("role", text))
}

fn user_row(r: &SqliteRow) -> Result<User> {
    let op = "reading a user";
    let disabled: i64 = r.try_get("disabled").ctx(op)?;
    Ok(User {
        username: r.try_get("username").ctx(op)?,
        role: role(r.try_get::<&str, _>("role").ctx(op)?)?,
        disabled: disabled != 0,
        password_hash: r.try_get("password_hash").ctx(op)?,
        created_at: from_micros(r.try_get("created_at").ctx(op)?)?,
        password_changed_at: from_micros(r.try_get("password_changed_at").ctx(op)?)?,
    })
}

fn token_row(r: &SqliteRow) -> Result<ApiToken> {
    let op = "reading an API token";
    Ok(ApiToken {
        id: r.try_get("id").ctx(op)?,
        name: r.try_get("name").ctx(op)?,
        role: role(r.try_get::<&str, _>("role").ctx(op)?)?,
        username: r.try_get("username").ctx(op)?,
        token_hash: r.try_get("token_hash").ctx(op)?,
        created_at: from_micros(r.try_get("created_at").ctx(op)?)?,
        expires_at: from_micros_opt(r.try_get("expires_at").ctx(op)?)?,
        revoked_at: from_micros_opt(r.try_get("revoked_at").ctx(op)?)?,
        last_used_at: from_micros_opt(r.try_get("last_used_at").ctx(op)?)?,
    })
}

/// What `use_refresh_token` decided inside its transaction.
enum Decision {
    Fresh(RefreshToken),
    Reused(String),
    Invalid,
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &User) -> Result<()> {
        let _w = self.writer().await;
        let done = sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        ))
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(i64::from(user.disabled))
        .bind(&user.password_hash)
        .bind(micros(user.created_at))
        .bind(micros(user.password_changed_at))
        .execute(&self.pool)
        .await
        .ctx("creating a user")?;
        if done.rows_affected() == 0 {
            return Err(Error::Conflict(format!(
                "user '{}' already exists",
                user.username
            )));
        }
        Ok(())
    }

    async fn get_user(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE lower(username) = lower(?)"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a user")?;
        row.as_ref().map(user_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx("listing users")?;
        rows.iter().map(user_row).collect()
    }

    async fn update_user(&self, user: &User) -> Result<bool> {
        let _w = self.writer().await;
        let done = sqlx::query(
            "UPDATE users SET role = ?, disabled = ?, password_hash = ?, password_changed_at = ? \
             WHERE username = ?",
        )
        .bind(user.role.as_str())
        .bind(i64::from(user.disabled))
        .bind(&user.password_hash)
        .bind(micros(user.password_changed_at))
        .bind(&user.username)
        .execute(&self.pool)
        .await
        .ctx("updating a user")?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_refresh_token(&self, token: &RefreshToken) -> Result<()> {
        let op = "storing a refresh token";
        let _w = self.writer().await;
        let mut tx = self.begin_write(op).await?;
        sqlx::query(
            "INSERT INTO login_families (family, username, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (family) DO NOTHING",
        )
        .bind(&token.family)
        .bind(&token.username)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        let done = sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family, username, expires_at, used_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(&token.token_hash)
        .bind(&token.family)
        .bind(&token.username)
        .bind(micros(token.expires_at))
        .bind(token.used_at.map(micros))
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        if done.rows_affected() == 0 {
            return Err(Error::Conflict("this refresh token already exists".into()));
        }
        tx.commit().await.ctx(op)
    }

    async fn use_refresh_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<RefreshUse> {
        let op = "using a refresh token";
        let _w = self.writer().await;
        // One write transaction from the start: concurrent uses (also from
        // other processes) are serialised, so only one sees `used_at` empty.
        let mut tx = self.begin_write(op).await?;
        let row = sqlx::query(
            "SELECT t.family, t.username, t.expires_at, t.used_at, f.revoked_at \
             FROM refresh_tokens AS t JOIN login_families AS f ON f.family = t.family \
             WHERE t.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .ctx(op)?;
        let decision = match row {
            None => Decision::Invalid,
            Some(r) => {
                let family: String = r.try_get("family").ctx(op)?;
                let expires_at = from_micros(r.try_get("expires_at").ctx(op)?)?;
                let used_at = from_micros_opt(r.try_get("used_at").ctx(op)?)?;
                let revoked: Option<i64> = r.try_get("revoked_at").ctx(op)?;
                if revoked.is_some() || expires_at <= now {
                    Decision::Invalid
                } else if used_at.is_some() {
                    sqlx::query(
                        "UPDATE login_families SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
                    )
                    .bind(micros(now))
                    .bind(&family)
                    .execute(&mut *tx)
                    .await
                    .ctx(op)?;
                    Decision::Reused(family)
                } else {
                    sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?")
                        .bind(micros(now))
                        .bind(token_hash)
                        .execute(&mut *tx)
                        .await
                        .ctx(op)?;
                    Decision::Fresh(RefreshToken {
                        token_hash: token_hash.to_string(),
                        family,
                        username: r.try_get("username").ctx(op)?,
                        expires_at,
                        used_at: Some(now),
                    })
                }
            }
        };
        tx.commit().await.ctx(op)?;
        Ok(match decision {
            Decision::Fresh(t) => RefreshUse::Fresh(t),
            Decision::Reused(family) => RefreshUse::Reused { family },
            Decision::Invalid => RefreshUse::Invalid,
        })
    }

    async fn revoke_family(&self, family: &str) -> Result<()> {
        let _w = self.writer().await;
        sqlx::query(
            "UPDATE login_families SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
        )
        .bind(micros(Utc::now()))
        .bind(family)
        .execute(&self.pool)
        .await
        .ctx("revoking a login")?;
        Ok(())
    }

    async fn is_family_revoked(&self, family: &str) -> Result<bool> {
        let row: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM login_families WHERE family = ?")
                .bind(family)
                .fetch_optional(&self.pool)
                .await
                .ctx("checking a login")?;
        // An unknown family was never issued by this database: treat it as revoked.
        Ok(!matches!(row, Some(None)))
    }

    async fn family_owner(&self, family: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT username FROM login_families WHERE family = ?")
            .bind(family)
            .fetch_optional(&self.pool)
            .await
            .ctx("checking a login")
    }

    async fn revoke_user_families(&self, username: &str) -> Result<()> {
        let _w = self.writer().await;
        sqlx::query(
            "UPDATE login_families SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
        )
        .bind(micros(Utc::now()))
        .bind(username)
        .execute(&self.pool)
        .await
        .ctx("revoking a user's logins")?;
        Ok(())
    }

    async fn create_api_token(&self, token: &ApiToken) -> Result<()> {
        let _w = self.writer().await;
        let done = sqlx::query(concat!(
            "INSERT INTO api_tokens (",
            token_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&token.id)
        .bind(&token.name)
        .bind(token.role.as_str())
        .bind(&token.username)
        .bind(&token.token_hash)
        .bind(micros(token.created_at))
        .bind(token.expires_at.map(micros))
        .bind(token.revoked_at.map(micros))
        .bind(token.last_used_at.map(micros))
        .execute(&self.pool)
        .await
        .ctx("creating an API token")?;
        if done.rows_affected() == 0 {
            return Err(Error::Conflict(format!(
                "API token {} already exists",
                token.id
            )));
        }
        Ok(())
    }

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an API token")?;
        row.as_ref().map(token_row).transpose()
    }

    async fn list_api_tokens(&self, username: Option<&str>) -> Result<Vec<ApiToken>> {
        let op = "listing API tokens";
        let rows = match username {
            Some(u) => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE username = ? ORDER BY created_at, id"
            ))
            .bind(u)
            .fetch_all(&self.pool)
            .await
            .ctx(op)?,
            None => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens ORDER BY created_at, id"
            ))
            .fetch_all(&self.pool)
            .await
            .ctx(op)?,
        };
        rows.iter().map(token_row).collect()
    }

    async fn revoke_api_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let _w = self.writer().await;
        let done =
            sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(micros(now))
                .bind(id)
                .execute(&self.pool)
                .await
                .ctx("revoking an API token")?;
        Ok(done.rows_affected() > 0)
    }
}
