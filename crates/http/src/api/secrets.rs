//! `/api/v1/secrets` (metadata, usage and history; values are write-only:
//! they can be set, never read) and `/api/v1/keys` (master key versions,
//! rotation, retirement).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use opsconductor::SetSecret;
use opsconductor::auth::Permission;

use crate::dto::{
    KeyList, KeyView, PutSecretRequest, PutSecretResponse, RotationView, SecretChangeView,
    SecretHistory, SecretPage, SecretView,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Lazy, P, Q};
use crate::page;
use crate::state::AppState;

/// Query of the secret list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SecretQuery {
    /// Only names containing this text.
    pub q: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// `name` (default) or `updated_at`; prefix `-` for descending.
    pub sort: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// List secrets: metadata and usage, never values.
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", params(SecretQuery),
    responses((status = 200, description = "Secrets", body = SecretPage)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<SecretQuery>,
) -> ApiResult<Json<SecretPage>> {
    caller.require(Permission::Read)?;
    let limit = page::limit(q.limit)?;
    let sort = page::sort(q.sort.as_deref(), &["name", "updated_at"])?;
    let all: Vec<_> = state
        .inner
        .oc
        .secrets(&caller.actor)
        .await?
        .into_iter()
        .filter(|s| q.q.as_deref().is_none_or(|x| s.meta.name.contains(x)))
        .filter(|s| q.kind.as_deref().is_none_or(|k| s.meta.kind == k))
        .collect();
    let by_time = sort.field == "updated_at";
    let (items, next_cursor) = page::page(
        all,
        |s| {
            if by_time {
                format!("{}|{}", page::time_key(s.meta.updated_at), s.meta.name)
            } else {
                s.meta.name.clone()
            }
        },
        sort.descending,
        limit,
        q.cursor.as_deref(),
    )?;
    Ok(Json(SecretPage {
        items: items.into_iter().map(SecretView::from).collect(),
        next_cursor,
    }))
}

/// One secret's metadata and usage (never the value).
#[utoipa::path(get, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 200, description = "The secret", body = SecretView),
        (status = 404, description = "No such secret", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<SecretView>> {
    caller.require(Permission::Read)?;
    Ok(Json(
        state.inner.oc.secret(&name, &caller.actor).await?.into(),
    ))
}

/// Create or update a secret. The value is write-only: no endpoint returns it.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name (letters, digits, `_ . -`)")),
    request_body = PutSecretRequest,
    responses(
        (status = 200, description = "Updated", body = PutSecretResponse),
        (status = 201, description = "Created", body = PutSecretResponse),
        (status = 403, description = "Your role may not manage secrets", body = ErrorBody),
        (status = 422, description = "Invalid name, kind or value", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::ManageSecrets)?;
    let body: PutSecretRequest = body.json().await?;
    let value = match (body.value, body.value_base64) {
        (Some(v), None) => v.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| ApiError::invalid("value_base64", format!("not base64: {e}")))?,
        _ => {
            return Err(ApiError::invalid(
                "value",
                "give exactly one of `value` and `value_base64`",
            ));
        }
    };
    let outcome = state
        .inner
        .oc
        .set_secret(
            SetSecret {
                name: name.clone(),
                kind: body.kind,
                description: body.description,
                value,
            },
            &caller.actor,
        )
        .await?;
    let info = state.inner.oc.secret(&name, &caller.actor).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(PutSecretResponse {
            secret: info.into(),
            created: outcome.created,
            warnings: outcome.warnings,
        }),
    )
        .into_response())
}

/// Query of a deletion.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even if jobs or targets use it.
    #[serde(default)]
    pub force: Option<bool>,
}

/// Delete a secret (refused while jobs or targets use it, unless `force`).
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Your role may not manage secrets", body = ErrorBody),
        (status = 404, description = "No such secret", body = ErrorBody),
        (status = 409, description = "In use", body = ErrorBody),
    ))]
pub async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    Q(q): Q<DeleteQuery>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ManageSecrets)?;
    state
        .inner
        .oc
        .delete_secret(&name, q.force.unwrap_or(false), &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The change history of a secret (also after deletion), oldest first.
#[utoipa::path(get, path = "/api/v1/secrets/{name}/history", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 200, description = "Changes", body = SecretHistory),
        (status = 404, description = "No such secret, ever", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<SecretHistory>> {
    caller.require(Permission::Read)?;
    let h = state.inner.oc.secret_history(&name, &caller.actor).await?;
    Ok(Json(SecretHistory {
        items: h.into_iter().map(SecretChangeView::from).collect(),
    }))
}

/// The master key versions this database knows.
#[utoipa::path(get, path = "/api/v1/keys", tag = "secrets",
    responses(
        (status = 200, description = "Key versions", body = KeyList),
        (status = 403, description = "Your role may not manage keys", body = ErrorBody),
    ))]
pub async fn keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<KeyList>> {
    caller.require(Permission::ManageKeys)?;
    let keys = state.inner.oc.key_versions(&caller.actor).await?;
    Ok(Json(KeyList {
        items: keys
            .into_iter()
            .map(|k| KeyView {
                version: k.version,
                created_at: k.created_at,
                retired_at: k.retired_at,
                passphrase: k.salt.is_some(),
            })
            .collect(),
    }))
}

/// Re-encrypt every secret with a new master key version (resumable: call
/// again if interrupted).
#[utoipa::path(post, path = "/api/v1/keys/rotate", tag = "secrets",
    responses(
        (status = 200, description = "Rotated", body = RotationView),
        (status = 403, description = "Your role may not manage keys", body = ErrorBody),
        (status = 422, description = "The key source cannot gain versions", body = ErrorBody),
    ))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<RotationView>> {
    caller.require(Permission::ManageKeys)?;
    let r = state.inner.oc.rotate_key(&caller.actor).await?;
    Ok(Json(RotationView {
        key_version: r.key_version,
        new_version: r.new_version,
        rewrapped: r.rewrapped,
        total: r.total,
    }))
}

/// Retire an old master key version once no secret uses it.
#[utoipa::path(post, path = "/api/v1/keys/{version}/retire", tag = "secrets",
    params(("version" = u32, Path, description = "Key version")),
    responses(
        (status = 204, description = "Retired"),
        (status = 403, description = "Your role may not manage keys", body = ErrorBody),
        (status = 409, description = "Still in use, or the current version", body = ErrorBody),
    ))]
pub async fn retire(
    State(state): State<AppState>,
    caller: Caller,
    P(version): P<u32>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ManageKeys)?;
    state.inner.oc.retire_key(version, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
