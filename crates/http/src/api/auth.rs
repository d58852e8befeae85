//! `/api/v1/auth`: log in (rate-limited per account and per address), refresh
//! (rotating; a replayed refresh token revokes its login), log out (the
//! access token stops working at once), and API tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opsconductor::auth::Role;

use crate::dto::{
    CreateTokenRequest, CreatedToken, LoginRequest, MeView, RefreshRequest, TokenPage,
    TokenResponse, TokenView,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, JsonBody, P, Q, Source};
use crate::limit::retry_after_secs;
use crate::page;
use crate::state::AppState;

fn tokens_for(state: &AppState, login: opsconductor::Login) -> ApiResult<TokenResponse> {
    let access = state
        .inner
        .jwt
        .issue(&login.user.username, login.user.role, &login.family)?;
    Ok(TokenResponse {
        access_token: access,
        refresh_token: login.refresh_token,
        token_type: "Bearer".into(),
        expires_in: state.inner.jwt.ttl_secs(),
        refresh_expires_in: (login.refresh_expires_at - chrono::Utc::now())
            .num_seconds()
            .max(0),
    })
}

/// Limits on password guesses (login and password change), before the
/// password is checked. Returns the (account, address) key to remember on
/// success. In order: per client address over all accounts (spraying), per
/// account and address (the strict limit), and per account over every
/// address that has not logged in to it lately (distributed guessing; the
/// real user's usual address is exempt, so guessing cannot lock them out).
pub(crate) fn guard_password_guess(
    state: &AppState,
    username: &str,
    ip: &str,
) -> ApiResult<String> {
    let account = username.to_ascii_lowercase();
    let key = format!("{account}\u{0}{ip}");
    if let Err(wait) = state.inner.login_per_account_address.check(&key) {
        return Err(ApiError::rate_limited(
            "too many password attempts for this account from this address; wait and try again",
            retry_after_secs(wait),
        ));
    }
    if !state.inner.known_clients.knows(&key)
        && let Err(wait) = state.inner.login_per_account.check(&account)
    {
        return Err(ApiError::rate_limited(
            "too many login attempts for this account; wait and try again (addresses that logged in to it recently are not held back)",
            retry_after_secs(wait),
        ));
    }
    Ok(key)
}

/// Log in with a username and password (the name ignores letter case).
///
/// Rate-limited per client address, per account and address, and per
/// account from addresses that have not logged in to it lately (429 with
/// `Retry-After`; see docs/server.md, "Logins and throttling").
/// An unknown user, a wrong password and a disabled account give the same
/// answer after the same work.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 422, description = "Malformed credentials", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    source: Source,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if let Err(wait) = state.inner.login_per_ip.check(&source.ip) {
        return Err(ApiError::rate_limited(
            "too many login attempts from this address; wait and try again",
            retry_after_secs(wait),
        ));
    }
    if body.username.len() > 256 || body.password.len() > 4096 {
        return Err(ApiError::invalid("username", "too long"));
    }
    let key = guard_password_guess(&state, &body.username, &source.ip)?;
    let actor = source.actor(&body.username);
    let user = state
        .inner
        .oc
        .authenticate(&body.username, &body.password, &actor)
        .await?;
    state.inner.known_clients.remember(&key);
    let login = state
        .inner
        .oc
        .start_login(user, state.inner.refresh_ttl)
        .await?;
    Ok(Json(tokens_for(&state, login)?))
}

/// Exchange a refresh token for new tokens.
///
/// Each refresh token works once. Presenting one a second time revokes the
/// whole login (every token of it), since it was probably stolen.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 401, description = "Invalid, expired or already used refresh token", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    source: Source,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if let Err(wait) = state
        .inner
        .login_per_ip
        .check(&format!("refresh:{}", source.ip))
    {
        return Err(ApiError::rate_limited(
            "too many refresh attempts from this address",
            retry_after_secs(wait),
        ));
    }
    let login = state
        .inner
        .oc
        .refresh(
            &body.refresh_token,
            state.inner.refresh_ttl,
            &source.actor("unknown"),
        )
        .await?;
    Ok(Json(tokens_for(&state, login)?))
}

/// Log out: ends this login; its access and refresh tokens stop working now.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 409, description = "Authenticated with an API token (revoke it instead)", body = ErrorBody),
    ))]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    let Some(family) = &caller.principal.family else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "this request uses an API token, not a login; revoke it with DELETE /api/v1/auth/tokens/{id}",
        ));
    };
    state.inner.oc.logout(family, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who am I: the caller's name, role and how they authenticated.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = MeView),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ))]
pub async fn me(caller: Caller) -> Json<MeView> {
    Json(MeView {
        username: caller.principal.username,
        role: caller.principal.role.into(),
        via: caller.principal.via.to_string(),
        token_id: caller.principal.token_id,
    })
}

/// Query of the token list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// API tokens: your own, or everyone's for admins; oldest first.
#[utoipa::path(get, path = "/api/v1/auth/tokens", tag = "auth", params(TokenQuery),
    responses(
        (status = 200, description = "Tokens (never their secrets)", body = TokenPage),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ))]
pub async fn tokens(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<TokenQuery>,
) -> ApiResult<Json<TokenPage>> {
    let limit = page::limit(q.limit)?;
    let all = state.inner.oc.api_tokens(&caller.actor).await?;
    let (items, next_cursor) = page::page(
        all,
        |t| format!("{}|{}", page::time_key(t.created_at), t.id),
        false,
        limit,
        q.cursor.as_deref(),
    )?;
    Ok(Json(TokenPage {
        items: items.into_iter().map(TokenView::from).collect(),
        next_cursor,
    }))
}

/// Create an API token for automation. The token is in this response only.
#[utoipa::path(post, path = "/api/v1/auth/tokens", tag = "auth",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; store `token` now", body = CreatedToken),
        (status = 403, description = "A role above yours", body = ErrorBody),
        (status = 422, description = "Invalid name, role or lifetime", body = ErrorBody),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateTokenRequest>,
) -> ApiResult<Response> {
    let role: Role = body.role.map(Role::from).unwrap_or(caller.principal.role);
    let expires_at = match &body.expires_in {
        None => None,
        Some(text) => {
            let d = opsconductor::duration::parse_lifetime(text)
                .map_err(|m| ApiError::invalid("expires_in", m))?;
            let d = chrono::Duration::from_std(d)
                .map_err(|_| ApiError::invalid("expires_in", "too large"))?;
            Some(chrono::Utc::now() + d)
        }
    };
    let (record, token) = state
        .inner
        .oc
        .create_api_token(&body.name, role, expires_at, &caller.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            record: record.into(),
        }),
    )
        .into_response())
}

/// Revoke an API token (your own, or anyone's for admins).
#[utoipa::path(delete, path = "/api/v1/auth/tokens/{id}", tag = "auth",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Another user's token", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 409, description = "Already revoked", body = ErrorBody),
    ))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    P(id): P<String>,
) -> ApiResult<StatusCode> {
    state.inner.oc.revoke_api_token(&id, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
