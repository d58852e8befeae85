//! Users and logins through the engine: the first admin, password checks
//! that do not reveal whether a user exists, rotating refresh tokens with
//! reuse detection, API tokens, and verification of the audit chain. Access
//! tokens themselves (JWT) belong to the HTTP front end; the rules live here.

use chrono::{DateTime, Utc};
use sha2::Digest;

use super::Conductor;
use crate::auth::{self, ApiToken, Permission, RefreshToken, RefreshUse, Role, User};
use crate::error::{Error, Result};
use crate::model::Actor;

/// SHA-256 hex of a token; only this is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A new login: the family (the access token's `sid`) and the first refresh token.
#[derive(Debug, Clone)]
pub struct Login {
    /// The user.
    pub user: User,
    /// The login family.
    pub family: String,
    /// The refresh token (plaintext: give it to the client once).
    pub refresh_token: String,
    /// When the refresh token expires.
    pub refresh_expires_at: DateTime<Utc>,
}

const UNAUTHENTICATED: &str = "wrong username or password";

impl Conductor {
    /// Creates the first admin if there are no users yet. With no password
    /// given, generates one and returns it (to be shown once).
    pub async fn ensure_admin(&self, password: Option<&str>) -> Result<Option<String>> {
        let us = self.inner.store.user_store();
        if !us.list_users().await?.is_empty() {
            return Ok(None);
        }
        let (pw, generated) = match password {
            Some(p) => (p.to_string(), false),
            None => (auth::random_token()?, true),
        };
        let now = Utc::now();
        let user = User {
            username: "admin".into(),
            role: Role::Admin,
            disabled: false,
            password_hash: auth::hash_password(&pw)?,
            created_at: now,
            password_changed_at: now,
        };
        match us.create_user(&user).await {
            Ok(()) => {}
            // Another node created it at the same moment: fine.
            Err(Error::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        self.inner
            .audit_as(
                &Actor::new("system"),
                "user.create",
                "user:admin".into(),
                serde_json::json!({"role": "admin", "first_start": true}),
            )
            .await;
        Ok(generated.then_some(pw))
    }

    /// Checks a username and password. An unknown user, a wrong password and
    /// a disabled account give the same error after the same work.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        actor_source: &Actor,
    ) -> Result<User> {
        let us = self.inner.store.user_store();
        let user = us.get_user(username).await?;
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.as_str())
            .unwrap_or_else(|| auth::dummy_hash());
        let ok = auth::verify_password(password, hash);
        let result = match user {
            Some(u) if ok && !u.disabled => Ok(u),
            _ => Err(Error::Unauthenticated(UNAUTHENTICATED.into())),
        };
        let outcome = if result.is_ok() { "success" } else { "failure" };
        let mut who = actor_source.clone();
        who.name = username.to_string();
        // The role is the user's on success, and none on failure: the name
        // is only what was typed (it may even be a mistyped password, which
        // is why the audit API shows it to admins only).
        let role = result.as_ref().ok().map(|u| u.role);
        self.inner
            .audit_as(
                &who,
                "auth.login",
                format!("user:{username}"),
                serde_json::json!({"outcome": outcome, "role": role}),
            )
            .await;
        result
    }

    /// Starts a login family for an authenticated user.
    pub async fn start_login(&self, user: User, refresh_ttl: chrono::Duration) -> Result<Login> {
        let us = self.inner.store.user_store();
        let family = uuid::Uuid::now_v7().to_string();
        let token = auth::random_token()?;
        let expires = Utc::now() + refresh_ttl;
        us.put_refresh_token(&RefreshToken {
            token_hash: token_hash(&token),
            family: family.clone(),
            username: user.username.clone(),
            expires_at: expires,
            used_at: None,
        })
        .await?;
        Ok(Login {
            user,
            family,
            refresh_token: token,
            refresh_expires_at: expires,
        })
    }

    /// Exchanges a refresh token for the next one of its family. Presenting
    /// a token twice revokes the family (both the thief's and the owner's
    /// sessions end) and is an error.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        refresh_ttl: chrono::Duration,
        source: &Actor,
    ) -> Result<Login> {
        let us = self.inner.store.user_store();
        match us
            .use_refresh_token(&token_hash(refresh_token), Utc::now())
            .await?
        {
            RefreshUse::Fresh(old) => {
                let user = us
                    .get_user(&old.username)
                    .await?
                    .filter(|u| !u.disabled)
                    .ok_or_else(|| Error::Unauthenticated("the account is disabled".into()))?;
                let token = auth::random_token()?;
                let expires = Utc::now() + refresh_ttl;
                us.put_refresh_token(&RefreshToken {
                    token_hash: token_hash(&token),
                    family: old.family.clone(),
                    username: user.username.clone(),
                    expires_at: expires,
                    used_at: None,
                })
                .await?;
                Ok(Login {
                    user,
                    family: old.family,
                    refresh_token: token,
                    refresh_expires_at: expires,
                })
            }
            RefreshUse::Reused { family } => {
                self.inner
                    .audit_as(
                        source,
                        "auth.refresh_reuse",
                        format!("login:{family}"),
                        serde_json::json!({"outcome": "family revoked"}),
                    )
                    .await;
                Err(Error::Unauthenticated(
                    "this refresh token was already used; the login was revoked — log in again"
                        .into(),
                ))
            }
            RefreshUse::Invalid => Err(Error::Unauthenticated(
                "invalid or expired refresh token".into(),
            )),
        }
    }

    /// Ends a login family: its refresh tokens and access tokens stop working now.
    pub async fn logout(&self, family: &str, actor: &Actor) -> Result<()> {
        self.inner.store.user_store().revoke_family(family).await?;
        self.inner
            .audit_as(
                actor,
                "auth.logout",
                format!("login:{family}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// The user behind a valid access token's claims, if the login still
    /// stands: family not revoked, user enabled, password unchanged since `issued_at`.
    pub async fn session_user(
        &self,
        username: &str,
        family: &str,
        issued_at: DateTime<Utc>,
    ) -> Result<User> {
        let us = self.inner.store.user_store();
        if us.is_family_revoked(family).await? {
            return Err(Error::Unauthenticated(
                "this login was revoked (logged out)".into(),
            ));
        }
        // Lookups ignore case; a token names the account exactly as stored.
        // A login names its user: a token whose `sid` is another user's
        // login is forged or mixed up, never valid.
        if us.family_owner(family).await?.as_deref() != Some(username) {
            return Err(Error::Unauthenticated(
                "the access token's login belongs to another user".into(),
            ));
        }
        let user = us
            .get_user(username)
            .await?
            .filter(|u| u.username == username)
            .ok_or_else(|| Error::Unauthenticated("unknown user".into()))?;
        if user.disabled {
            return Err(Error::Unauthenticated("the account is disabled".into()));
        }
        if issued_at + chrono::Duration::seconds(1) < user.password_changed_at {
            return Err(Error::Unauthenticated(
                "the password changed since this token was issued".into(),
            ));
        }
        Ok(user)
    }

    /// Every user (admins only).
    pub async fn users(&self, actor: &Actor) -> Result<Vec<User>> {
        actor.require(Permission::ManageUsers)?;
        self.inner.store.user_store().list_users().await
    }

    /// One user: admins, or the user themself.
    pub async fn user(&self, username: &str, actor: &Actor) -> Result<User> {
        if !auth::same_user(&actor.name, username) {
            actor.require(Permission::ManageUsers)?;
        }
        self.inner
            .store
            .user_store()
            .get_user(username)
            .await?
            .ok_or_else(|| Error::not_found("user", username))
    }

    /// Creates a user (admins only).
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        password: &str,
        actor: &Actor,
    ) -> Result<User> {
        actor.require(Permission::ManageUsers)?;
        auth::check_username(username)?;
        let now = Utc::now();
        let user = User {
            username: username.to_string(),
            role,
            disabled: false,
            password_hash: auth::hash_password(password)?,
            created_at: now,
            password_changed_at: now,
        };
        self.inner.store.user_store().create_user(&user).await?;
        self.inner
            .audit_as(
                actor,
                "user.create",
                format!("user:{username}"),
                serde_json::json!({"role": role}),
            )
            .await;
        Ok(user)
    }

    /// Changes a user's role and/or disabled flag (admins only). Disabling
    /// ends every login of the user.
    pub async fn update_user(
        &self,
        username: &str,
        role: Option<Role>,
        disabled: Option<bool>,
        actor: &Actor,
    ) -> Result<User> {
        actor.require(Permission::ManageUsers)?;
        let us = self.inner.store.user_store();
        let mut user = us
            .get_user(username)
            .await?
            .ok_or_else(|| Error::not_found("user", username))?;
        if auth::same_user(&user.username, &actor.name)
            && (disabled == Some(true) || role.is_some_and(|r| r != Role::Admin))
        {
            return Err(Error::Conflict(
                "you cannot disable or demote yourself; ask another admin".into(),
            ));
        }
        if let Some(r) = role {
            user.role = r;
        }
        if let Some(d) = disabled {
            user.disabled = d;
        }
        us.update_user(&user).await?;
        if user.disabled {
            us.revoke_user_families(&user.username).await?;
            // API tokens die with the account: re-enabling it does not bring them back.
            for t in us.list_api_tokens(Some(&user.username)).await? {
                if t.revoked_at.is_none() {
                    us.revoke_api_token(&t.id, Utc::now()).await?;
                }
            }
        }
        self.inner
            .audit_as(
                actor,
                "user.update",
                format!("user:{username}"),
                serde_json::json!({"role": user.role, "disabled": user.disabled}),
            )
            .await;
        Ok(user)
    }

    /// Changes one's own password (the current one is required); ends every
    /// other login of the user.
    pub async fn change_password(
        &self,
        username: &str,
        current: &str,
        new: &str,
        actor: &Actor,
    ) -> Result<()> {
        if !auth::same_user(&actor.name, username) {
            actor.require(Permission::ManageUsers)?;
        }
        let us = self.inner.store.user_store();
        let mut user = us
            .get_user(username)
            .await?
            .ok_or_else(|| Error::not_found("user", username))?;
        if auth::same_user(&actor.name, &user.username)
            && !auth::verify_password(current, &user.password_hash)
        {
            return Err(Error::Unauthenticated(
                "the current password is wrong".into(),
            ));
        }
        user.password_hash = auth::hash_password(new)?;
        user.password_changed_at = Utc::now();
        us.update_user(&user).await?;
        us.revoke_user_families(&user.username).await?;
        self.inner
            .audit_as(
                actor,
                "user.password",
                format!("user:{username}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// Creates an API token acting with `role` (at most the creator's).
    /// Returns the token record and the token itself — shown once.
    pub async fn create_api_token(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
        actor: &Actor,
    ) -> Result<(ApiToken, String)> {
        // A token cannot mint tokens: a leaked token would otherwise be able
        // to outlive its own revocation or expiry through its children.
        if actor.via.as_deref() == Some("api_token") {
            return Err(Error::Forbidden(
                "an API token cannot create API tokens; log in with a password to create one"
                    .into(),
            ));
        }
        if let Some(mine) = actor.role
            && role > mine
        {
            return Err(Error::Forbidden(format!(
                "a {mine} cannot create a token with the {role} role"
            )));
        }
        if name.trim().is_empty() || name.len() > 100 {
            return Err(Error::validation(
                "name",
                "give the token a name (1-100 characters)",
            ));
        }
        let id = auth::random_token()?[..12].to_string();
        let secret = auth::random_token()?;
        let token = ApiToken {
            id: id.clone(),
            name: name.to_string(),
            role,
            username: actor.name.clone(),
            token_hash: token_hash(&secret),
            created_at: Utc::now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        self.inner
            .store
            .user_store()
            .create_api_token(&token)
            .await?;
        self.inner
            .audit_as(
                actor,
                "token.create",
                format!("token:{id}"),
                serde_json::json!({"role": role, "name": name}),
            )
            .await;
        Ok((token, format!("opsc_{id}_{secret}")))
    }

    /// Resolves an API token (`opsc_ID_SECRET`) to the actor it stands for.
    pub async fn authenticate_api_token(&self, presented: &str) -> Result<(ApiToken, User)> {
        let bad = || Error::Unauthenticated("invalid API token".into());
        let rest = presented.strip_prefix("opsc_").ok_or_else(bad)?;
        let (id, secret) = rest.split_at_checked(12).ok_or_else(bad)?;
        let secret = secret.strip_prefix('_').ok_or_else(bad)?;
        let us = self.inner.store.user_store();
        let token = us.get_api_token(id).await?.ok_or_else(bad)?;
        let expected = token_hash(secret);
        if !constant_time_eq(expected.as_bytes(), token.token_hash.as_bytes()) {
            return Err(bad());
        }
        if token.revoked_at.is_some() {
            return Err(Error::Unauthenticated("this API token was revoked".into()));
        }
        if token.expires_at.is_some_and(|e| e < Utc::now()) {
            return Err(Error::Unauthenticated("this API token has expired".into()));
        }
        let user = us
            .get_user(&token.username)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| Error::Unauthenticated("the token's owner is disabled".into()))?;
        // A password change revokes the owner's API tokens, as it ends their logins.
        if token.created_at < user.password_changed_at {
            return Err(Error::Unauthenticated(
                "this API token was revoked: its owner's password changed since it was created"
                    .into(),
            ));
        }
        Ok((token, user))
    }

    /// API tokens: one's own, or everyone's for admins.
    pub async fn api_tokens(&self, actor: &Actor) -> Result<Vec<ApiToken>> {
        let us = self.inner.store.user_store();
        if actor.require(Permission::ManageUsers).is_ok() {
            us.list_api_tokens(None).await
        } else {
            us.list_api_tokens(Some(&actor.name)).await
        }
    }

    /// Revokes an API token (its owner, or an admin).
    pub async fn revoke_api_token(&self, id: &str, actor: &Actor) -> Result<()> {
        let us = self.inner.store.user_store();
        let token = us
            .get_api_token(id)
            .await?
            .ok_or_else(|| Error::not_found("API token", id))?;
        if token.username != actor.name {
            actor.require(Permission::ManageUsers)?;
        }
        if !us.revoke_api_token(id, Utc::now()).await? {
            return Err(Error::Conflict(format!(
                "API token {id} was already revoked"
            )));
        }
        self.inner
            .audit_as(
                actor,
                "token.revoke",
                format!("token:{id}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
