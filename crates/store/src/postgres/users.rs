//! Users, login families (rotating refresh tokens) and API tokens in
//! PostgreSQL. Tokens are stored as hashes only. Presenting a refresh token
//! locks its row and its family's (`FOR UPDATE`) in one transaction, so of
//! concurrent uses — from any number of servers — exactly one wins.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opsconductor_core::auth::{ApiToken, RefreshToken, RefreshUse, Role, User};
use opsconductor_core::store::UserStore;
use opsconductor_core::{Error, Result};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
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

fn user_row(r: &PgRow) -> Result<User> {
    let op = "reading a user";
    Ok(User {
        username: r.try_get("username").ctx(op)?,
        role: role(r.try_get::<&str, _>("role").ctx(op)?)?,
        disabled: r.try_get("disabled").ctx(op)?,
        password_hash: r.try_get("password_hash").ctx(op)?,
        created_at: from_micros(r.try_get("created_at").ctx(op)?)?,
        password_changed_at: from_micros(r.try_get("password_changed_at").ctx(op)?)?,
    })
}

fn token_row(r: &PgRow) -> Result<ApiToken> {
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
impl UserStore for PostgresStore {
    async fn create_user(&self, user: &User) -> Result<()> {
        let done = sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
        ))
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(user.disabled)
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
            " FROM users WHERE lower(username) = lower($1)"
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
        let done = sqlx::query(
            "UPDATE users SET role = $1, disabled = $2, password_hash = $3, password_changed_at = $4 \
             WHERE username = $5",
        )
        .bind(user.role.as_str())
        .bind(user.disabled)
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
        let mut tx = self.pool.begin().await.map_err(self.fail(op))?;
        sqlx::query(
            "INSERT INTO login_families (family, username, created_at) VALUES ($1, $2, $3) \
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
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO NOTHING",
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
        // The rows are locked until commit: a concurrent use (from any
        // server) waits, then sees this one's `used_at`.
        let mut tx = self.pool.begin().await.map_err(self.fail(op))?;
        let row = sqlx::query(
            "SELECT t.family, t.username, t.expires_at, t.used_at, f.revoked_at \
             FROM refresh_tokens AS t JOIN login_families AS f ON f.family = t.family \
             WHERE t.token_hash = $1 FOR UPDATE OF t, f",
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
                        "UPDATE login_families SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
                    )
                    .bind(micros(now))
                    .bind(&family)
                    .execute(&mut *tx)
                    .await
                    .ctx(op)?;
                    Decision::Reused(family)
                } else {
                    sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2")
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
        sqlx::query(
            "UPDATE login_families SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
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
            sqlx::query_scalar("SELECT revoked_at FROM login_families WHERE family = $1")
                .bind(family)
                .fetch_optional(&self.pool)
                .await
                .ctx("checking a login")?;
        // An unknown family was never issued by this database: treat it as revoked.
        Ok(!matches!(row, Some(None)))
    }

    async fn family_owner(&self, family: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT username FROM login_families WHERE family = $1")
            .bind(family)
            .fetch_optional(&self.pool)
            .await
            .ctx("checking a login")
    }

    async fn revoke_user_families(&self, username: &str) -> Result<()> {
        sqlx::query(
            "UPDATE login_families SET revoked_at = $1 WHERE username = $2 AND revoked_at IS NULL",
        )
        .bind(micros(Utc::now()))
        .bind(username)
        .execute(&self.pool)
        .await
        .ctx("revoking a user's logins")?;
        Ok(())
    }

    async fn create_api_token(&self, token: &ApiToken) -> Result<()> {
        let done = sqlx::query(concat!(
            "INSERT INTO api_tokens (",
            token_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING"
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
            " FROM api_tokens WHERE id = $1"
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
                " FROM api_tokens WHERE username = $1 ORDER BY created_at, id"
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
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(micros(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .ctx("revoking an API token")?;
        Ok(done.rows_affected() > 0)
    }
}
