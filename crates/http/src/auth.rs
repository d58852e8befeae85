//! Who is calling: `Authorization: Bearer …` holds either an access JWT
//! (from `POST /api/v1/auth/login`) or an API token (`opsc_…`). Either way
//! the engine decides whether it still stands; the role used is the user's
//! current one (for API tokens: the token's role, never above the owner's
//! current role). Then the per-user rate limit applies.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opsconductor::auth::Role;

use crate::error::ApiError;
use crate::limit::retry_after_secs;
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The username.
    pub username: String,
    /// The role the request is held to.
    pub role: Role,
    /// `password` (an access token from a login) or `api_token`.
    pub via: &'static str,
    /// The login family, for access tokens.
    pub family: Option<String>,
    /// The API token id, for API tokens.
    pub token_id: Option<String>,
}

/// The bearer token a request authenticated with, kept in the request's
/// extensions so that long-lived responses (live log streams) can check
/// again that it still stands. Never printed.
#[derive(Clone)]
pub struct BearerToken(pub(crate) std::sync::Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// How often a live log stream checks that its caller's login still stands.
pub const STREAM_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks again that `token` still stands for `principal` with the same
/// role (after logout, token revocation, disabling, a password or a role
/// change it does not). `Err` carries the reason, for the stream's last message.
pub async fn still_authorized(
    state: &AppState,
    token: &BearerToken,
    principal: &Principal,
) -> Result<(), ApiError> {
    let now = principal_of(state, &token.0).await?;
    if now.username != principal.username || now.role != principal.role {
        return Err(ApiError::unauthenticated(format!(
            "the role of '{}' changed; reconnect",
            principal.username
        )));
    }
    Ok(())
}

/// The bearer token of a request, if any.
fn bearer(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("use `Authorization: Bearer TOKEN`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthenticated(format!(
            "the '{scheme}' scheme is not accepted; use `Authorization: Bearer TOKEN`"
        )));
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(ApiError::unauthenticated(
            "the bearer token is empty or too long",
        ));
    }
    Ok(Some(token.to_string()))
}

/// Resolves a bearer token to a principal.
pub async fn principal_of(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let oc = &state.inner.oc;
    if token.starts_with("opsc_") {
        let (t, user) = oc.authenticate_api_token(token).await?;
        return Ok(Principal {
            username: user.username,
            role: t.role.min(user.role),
            via: "api_token",
            family: None,
            token_id: Some(t.id),
        });
    }
    let claims = state.inner.jwt.verify(token)?;
    let issued = chrono::DateTime::from_timestamp(claims.iat, 0)
        .ok_or_else(|| ApiError::unauthenticated("the access token has a bad `iat`"))?;
    let user = oc.session_user(&claims.sub, &claims.sid, issued).await?;
    Ok(Principal {
        username: user.username,
        role: user.role,
        via: "password",
        family: Some(claims.sid),
        token_id: None,
    })
}

/// Middleware for the protected routes: 401 without a valid token, 429 past
/// the per-user rate limit; otherwise the [`Principal`] goes into the
/// request's extensions for [`crate::extract::Caller`].
pub async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = match bearer(&req) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return ApiError::unauthenticated(
                "authentication required: send `Authorization: Bearer TOKEN` (log in at POST /api/v1/auth/login)",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let principal = match principal_of(&state, &token).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let key = match &principal.token_id {
        Some(id) => format!("token:{id}"),
        None => format!("user:{}", principal.username),
    };
    if let Err(wait) = state.inner.api_per_user.check(&key) {
        return ApiError::rate_limited(
            "too many requests for this user; slow down",
            retry_after_secs(wait),
        )
        .into_response();
    }
    req.extensions_mut().insert(principal);
    req.extensions_mut().insert(BearerToken(token.into()));
    next.run(req).await
}
