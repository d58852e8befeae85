//! Users, login families (rotating refresh tokens) and API tokens:
//! [`user_sql!`]. Tokens are stored as hashes only. Presenting a refresh
//! token is one write transaction that reads the token and its family with
//! `refresh_lock` (PostgreSQL: `FOR UPDATE OF t, f`; SQLite's
//! `BEGIN IMMEDIATE` already excludes every other writer), so of concurrent
//! uses — from any number of processes — exactly one wins.

/// Writes `UserStore` for one backend.
macro_rules! user_sql {
    ($store:ty, refresh_lock = $refresh_lock:literal) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use opsconductor_core::auth::{ApiToken, RefreshToken, RefreshUse, User};
            use opsconductor_core::store::UserStore;
            use opsconductor_core::{Error, Result};

            use $crate::common::{from_micros, from_micros_opt, micros};
            use $crate::rows::{token_columns, user_columns};
            use $crate::sql::Lock;

            /// What `use_refresh_token` decided inside its transaction.
            enum Decision {
                Fresh(RefreshToken),
                Reused(String),
                Invalid,
            }

            #[async_trait]
            impl UserStore for $store {
                async fn create_user(&self, user: &User) -> Result<()> {
                    let _turn = self.writer().await;
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
                    .map_err(self.fail("creating a user"))?;
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
                    .map_err(self.fail("reading a user"))?;
                    row.as_ref().map(rows::user).transpose()
                }

                async fn list_users(&self) -> Result<Vec<User>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        user_columns!(),
                        " FROM users ORDER BY username"
                    ))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing users"))?;
                    rows.iter().map(rows::user).collect()
                }

                async fn update_user(&self, user: &User) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query(
                        "UPDATE users SET role = $1, disabled = $2, password_hash = $3, \
                         password_changed_at = $4 WHERE username = $5",
                    )
                    .bind(user.role.as_str())
                    .bind(user.disabled)
                    .bind(&user.password_hash)
                    .bind(micros(user.password_changed_at))
                    .bind(&user.username)
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("updating a user"))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn put_refresh_token(&self, token: &RefreshToken) -> Result<()> {
                    let op = "storing a refresh token";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    sqlx::query(
                        "INSERT INTO login_families (family, username, created_at) \
                         VALUES ($1, $2, $3) ON CONFLICT (family) DO NOTHING",
                    )
                    .bind(&token.family)
                    .bind(&token.username)
                    .bind(micros(Utc::now()))
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    let done = sqlx::query(
                        "INSERT INTO refresh_tokens (token_hash, family, username, expires_at, \
                         used_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO NOTHING",
                    )
                    .bind(&token.token_hash)
                    .bind(&token.family)
                    .bind(&token.username)
                    .bind(micros(token.expires_at))
                    .bind(token.used_at.map(micros))
                    .execute(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    if done.rows_affected() == 0 {
                        return Err(Error::Conflict("this refresh token already exists".into()));
                    }
                    tx.commit().await.map_err(self.fail(op))
                }

                async fn use_refresh_token(
                    &self,
                    token_hash: &str,
                    now: DateTime<Utc>,
                ) -> Result<RefreshUse> {
                    let op = "using a refresh token";
                    // Concurrent uses are serialised until commit (SQLite: the
                    // write transaction; PostgreSQL: the row locks), so only one
                    // sees `used_at` empty.
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    let row = sqlx::query(concat!(
                        "SELECT t.family, t.username, t.expires_at, t.used_at, f.revoked_at \
                         FROM refresh_tokens AS t JOIN login_families AS f ON f.family = t.family \
                         WHERE t.token_hash = $1",
                        $refresh_lock
                    ))
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(self.fail(op))?;
                    let decision = match row {
                        None => Decision::Invalid,
                        Some(r) => {
                            let family: String = rows::get(&r, "family")?;
                            let expires_at = from_micros(rows::get(&r, "expires_at")?)?;
                            let used_at = from_micros_opt(rows::get(&r, "used_at")?)?;
                            let revoked: Option<i64> = rows::get(&r, "revoked_at")?;
                            if revoked.is_some() || expires_at <= now {
                                Decision::Invalid
                            } else if used_at.is_some() {
                                sqlx::query(
                                    "UPDATE login_families SET revoked_at = $1 \
                                     WHERE family = $2 AND revoked_at IS NULL",
                                )
                                .bind(micros(now))
                                .bind(&family)
                                .execute(&mut *tx)
                                .await
                                .map_err(self.fail(op))?;
                                Decision::Reused(family)
                            } else {
                                sqlx::query(
                                    "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2",
                                )
                                .bind(micros(now))
                                .bind(token_hash)
                                .execute(&mut *tx)
                                .await
                                .map_err(self.fail(op))?;
                                Decision::Fresh(RefreshToken {
                                    token_hash: token_hash.to_string(),
                                    family,
                                    username: rows::get(&r, "username")?,
                                    expires_at,
                                    used_at: Some(now),
                                })
                            }
                        }
                    };
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(match decision {
                        Decision::Fresh(t) => RefreshUse::Fresh(t),
                        Decision::Reused(family) => RefreshUse::Reused { family },
                        Decision::Invalid => RefreshUse::Invalid,
                    })
                }

                async fn revoke_family(&self, family: &str) -> Result<()> {
                    let _turn = self.writer().await;
                    sqlx::query(
                        "UPDATE login_families SET revoked_at = $1 \
                         WHERE family = $2 AND revoked_at IS NULL",
                    )
                    .bind(micros(Utc::now()))
                    .bind(family)
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("revoking a login"))?;
                    Ok(())
                }

                async fn is_family_revoked(&self, family: &str) -> Result<bool> {
                    let row: Option<Option<i64>> =
                        sqlx::query_scalar("SELECT revoked_at FROM login_families WHERE family = $1")
                            .bind(family)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(self.fail("checking a login"))?;
                    // An unknown family was never issued by this database:
                    // treat it as revoked.
                    Ok(!matches!(row, Some(None)))
                }

                async fn family_owner(&self, family: &str) -> Result<Option<String>> {
                    sqlx::query_scalar("SELECT username FROM login_families WHERE family = $1")
                        .bind(family)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(self.fail("checking a login"))
                }

                async fn revoke_user_families(&self, username: &str) -> Result<()> {
                    let _turn = self.writer().await;
                    sqlx::query(
                        "UPDATE login_families SET revoked_at = $1 \
                         WHERE username = $2 AND revoked_at IS NULL",
                    )
                    .bind(micros(Utc::now()))
                    .bind(username)
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("revoking a user's logins"))?;
                    Ok(())
                }

                async fn create_api_token(&self, token: &ApiToken) -> Result<()> {
                    let _turn = self.writer().await;
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
                    .map_err(self.fail("creating an API token"))?;
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
                    .map_err(self.fail("reading an API token"))?;
                    row.as_ref().map(rows::api_token).transpose()
                }

                async fn list_api_tokens(&self, username: Option<&str>) -> Result<Vec<ApiToken>> {
                    let query = match username {
                        Some(u) => sqlx::query(concat!(
                            "SELECT ",
                            token_columns!(),
                            " FROM api_tokens WHERE username = $1 ORDER BY created_at, id"
                        ))
                        .bind(u),
                        None => sqlx::query(concat!(
                            "SELECT ",
                            token_columns!(),
                            " FROM api_tokens ORDER BY created_at, id"
                        )),
                    };
                    let rows = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.fail("listing API tokens"))?;
                    rows.iter().map(rows::api_token).collect()
                }

                async fn revoke_api_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query(
                        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(micros(now))
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("revoking an API token"))?;
                    Ok(done.rows_affected() > 0)
                }
            }
        };
    };
}
pub(crate) use user_sql;
