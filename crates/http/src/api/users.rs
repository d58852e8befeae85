//! `/api/v1/users`: admins list, create, change and disable users; everyone
//! reads and changes their own account (password change needs the current one).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::dto::{CreateUserRequest, PasswordRequest, UpdateUserRequest, UserPage, UserView};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Lazy, P, Q, Source};
use crate::page;
use crate::state::AppState;
use opsconductor::auth::Permission;
use opsconductor::auth::same_user;

/// Query of the user list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Only names containing this text.
    pub q: Option<String>,
    /// Only this role.
    pub role: Option<String>,
    /// Only disabled (true) or enabled (false) users.
    pub disabled: Option<bool>,
    /// `username` (default) or `created_at`; prefix `-` for descending.
    pub sort: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// List users (admins).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserQuery),
    responses(
        (status = 200, description = "Users", body = UserPage),
        (status = 403, description = "Admins only", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<UserQuery>,
) -> ApiResult<Json<UserPage>> {
    let limit = page::limit(q.limit)?;
    let sort = page::sort(q.sort.as_deref(), &["username", "created_at"])?;
    let role: Option<opsconductor::auth::Role> = q.role.as_deref().map(str::parse).transpose()?;
    let all: Vec<_> = state
        .inner
        .oc
        .users(&caller.actor)
        .await?
        .into_iter()
        .filter(|u| q.q.as_deref().is_none_or(|s| u.username.contains(s)))
        .filter(|u| role.is_none_or(|r| u.role == r))
        .filter(|u| q.disabled.is_none_or(|d| u.disabled == d))
        .collect();
    let by_time = sort.field == "created_at";
    let (items, next_cursor) = page::page(
        all,
        |u| {
            if by_time {
                format!("{}|{}", page::time_key(u.created_at), u.username)
            } else {
                u.username.clone()
            }
        },
        sort.descending,
        limit,
        q.cursor.as_deref(),
    )?;
    Ok(Json(UserPage {
        items: items.into_iter().map(UserView::from).collect(),
        next_cursor,
    }))
}

/// Create a user (admins).
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "Invalid name or weak password", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::ManageUsers)?;
    let body: CreateUserRequest = body.json().await?;
    let user = state
        .inner
        .oc
        .create_user(
            &body.username,
            body.role.into(),
            &body.password,
            &caller.actor,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(UserView::from(user))).into_response())
}

/// One user (admins, or the user themself).
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "Username")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 403, description = "Another user (admins only)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(
        state.inner.oc.user(&name, &caller.actor).await?.into(),
    ))
}

/// Change a user's role or disable/enable them (admins). Disabling ends
/// every login of the user at once.
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "Username")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The user now", body = UserView),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Disabling or demoting yourself", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Json<UserView>> {
    caller.require(Permission::ManageUsers)?;
    let body: UpdateUserRequest = body.json().await?;
    if body.role.is_none() && body.disabled.is_none() {
        return Err(ApiError::invalid("body", "give `role` and/or `disabled`"));
    }
    let user = state
        .inner
        .oc
        .update_user(
            &name,
            body.role.map(Into::into),
            body.disabled,
            &caller.actor,
        )
        .await?;
    Ok(Json(user.into()))
}

/// Change a password: your own (with the current one), or anyone's (admins).
/// Ends every login of that user.
#[utoipa::path(post, path = "/api/v1/users/{name}/password", tag = "users",
    params(("name" = String, Path, description = "Username")),
    request_body = PasswordRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = "The current password is wrong", body = ErrorBody),
        (status = 403, description = "Another user (admins only)", body = ErrorBody),
        (status = 422, description = "Weak password", body = ErrorBody),
        (status = 429, description = "Too many attempts (the login limits)", body = ErrorBody),
    ))]
pub async fn password(
    State(state): State<AppState>,
    caller: Caller,
    source: Source,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<StatusCode> {
    let own = same_user(&caller.principal.username, &name);
    if !own {
        caller.require(Permission::ManageUsers)?;
    }
    let body: PasswordRequest = body.json().await?;
    let current = body.current_password.unwrap_or_default();
    if own && current.is_empty() {
        return Err(ApiError::invalid(
            "current_password",
            "give your current password to change it",
        ));
    }
    if own {
        // Checking the current password is a guess like a login: same limits.
        crate::api::auth::guard_password_guess(&state, &caller.principal.username, &source.ip)?;
    }
    state
        .inner
        .oc
        .change_password(&name, &current, &body.new_password, &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
