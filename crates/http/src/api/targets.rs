//! `/api/v1/targets`: list, read, create or replace (JSON or YAML), delete,
//! check (connect and probe now), and the SSH host-key trust flow (see the
//! key a host offers, then pin it).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opsconductor::auth::Permission;
use opsconductor::{ApplyAction, ApplyBatch};

use crate::dto::{
    ApplyItemView, HostKeyView, TargetCheckView, TargetPage, TargetView, TrustRequest,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Document, Lazy, P, Q};
use crate::page;
use crate::state::AppState;

/// Query of the target list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TargetQuery {
    /// Only names containing this text.
    pub q: Option<String>,
    /// Only targets with this tag.
    pub tag: Option<String>,
    /// Only this connection type (`local`, `ssh`, `winrm`, `docker`).
    pub connection: Option<String>,
    /// `name` (default) or `-name`.
    pub sort: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// List targets (the implicit `local` included).
#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", params(TargetQuery),
    responses(
        (status = 200, description = "Targets", body = TargetPage),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<TargetQuery>,
) -> ApiResult<Json<TargetPage>> {
    caller.require(Permission::Read)?;
    let limit = page::limit(q.limit)?;
    let sort = page::sort(q.sort.as_deref(), &["name"])?;
    let all: Vec<_> = state
        .inner
        .oc
        .targets(&caller.actor)
        .await?
        .into_iter()
        .filter(|t| q.q.as_deref().is_none_or(|s| t.name.contains(s)))
        .filter(|t| {
            q.tag
                .as_deref()
                .is_none_or(|tag| t.tags.iter().any(|x| x == tag))
        })
        .filter(|t| {
            q.connection
                .as_deref()
                .is_none_or(|c| t.connection.kind() == c)
        })
        .collect();
    let (items, next_cursor) = page::page(
        all,
        |t| t.name.clone(),
        sort.descending,
        limit,
        q.cursor.as_deref(),
    )?;
    Ok(Json(TargetPage {
        items: items.into_iter().map(TargetView::from).collect(),
        next_cursor,
    }))
}

/// One target.
#[utoipa::path(get, path = "/api/v1/targets/{name}", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 200, description = "The target", body = TargetView),
        (status = 404, description = "No such target", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<TargetView>> {
    caller.require(Permission::Read)?;
    Ok(Json(
        state.inner.oc.target(&name, &caller.actor).await?.into(),
    ))
}

/// Turns a JSON object or YAML text into the one object of `kind` named `name`.
pub(crate) fn one_document(
    doc: crate::extract::Document,
    kind: &str,
    name: Option<&str>,
) -> ApiResult<ApplyBatch> {
    let text = match doc {
        Document::Json(serde_json::Value::Object(mut m)) => {
            match m.get("kind") {
                None => {
                    m.insert("kind".into(), serde_json::Value::String(kind.into()));
                }
                Some(serde_json::Value::String(k)) if k == kind => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        "kind",
                        format!("must be '{kind}' here (or left out)"),
                    ));
                }
            }
            if let (Some(n), None) = (name, m.get("name")) {
                m.insert("name".into(), serde_json::Value::String(n.into()));
            }
            serde_json::to_string(&m).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        Document::Json(_) => {
            return Err(ApiError::invalid(
                "body",
                format!("send a {kind} as a JSON object"),
            ));
        }
        Document::Yaml(text) => text,
    };
    let batch = opsconductor::spec::parse_str(&text, "body", None)?;
    let count = batch.jobs.len() + batch.targets.len();
    let right = match kind {
        "Job" => batch.jobs.len() == 1 && count == 1,
        _ => batch.targets.len() == 1 && count == 1,
    };
    if !right {
        return Err(ApiError::invalid(
            "body",
            format!("send exactly one {kind} document (use POST /api/v1/apply for several)"),
        ));
    }
    let found = batch
        .jobs
        .first()
        .map(|j| j.name.as_str())
        .or_else(|| batch.targets.first().map(|t| t.name.as_str()))
        .unwrap_or_default();
    if let Some(n) = name
        && found != n
    {
        return Err(ApiError::invalid(
            "name",
            format!("the body names '{found}' but the URL names '{n}'"),
        ));
    }
    Ok(batch)
}

/// Create or replace a target (a JSON object or a YAML `kind: Target` document).
#[utoipa::path(put, path = "/api/v1/targets/{name}", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    request_body(description = "The target: name, description, tags, vars, connection {type, …}, credential. JSON or YAML (`application/yaml`).", content((Object = "application/json"), (String = "application/yaml"))),
    responses(
        (status = 200, description = "Replaced or unchanged", body = ApplyItemView),
        (status = 201, description = "Created", body = ApplyItemView),
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 422, description = "Invalid target", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::ManageTargets)?;
    let batch = one_document(body.document().await?, "Target", Some(&name))?;
    let items = state.inner.oc.apply(&batch, &caller.actor).await?;
    applied(items)
}

/// The response for a single applied object: 201 if created.
pub(crate) fn applied(items: Vec<opsconductor::ApplyItem>) -> ApiResult<Response> {
    let item = items.into_iter().next().ok_or_else(|| {
        ApiError::from(opsconductor::Error::Internal(
            "apply reported nothing".into(),
        ))
    })?;
    let status = if item.action == ApplyAction::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ApplyItemView::from(item))).into_response())
}

/// Delete a target (runs that used it keep their history).
#[utoipa::path(delete, path = "/api/v1/targets/{name}", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
    ))]
pub async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<StatusCode> {
    state.inner.oc.remove_target(&name, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check a target now: connect, authenticate, run a trivial probe. A target
/// that cannot be reached is a 200 with `ok: false` and the reason.
#[utoipa::path(post, path = "/api/v1/targets/{name}/check", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 200, description = "The outcome", body = TargetCheckView),
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
    ))]
pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<TargetCheckView>> {
    caller.require(Permission::ManageTargets)?;
    // The exact target, not a selector: resolve it first (404 if unknown).
    let target = state.inner.oc.target(&name, &caller.actor).await?;
    let checks = state
        .inner
        .oc
        .check_targets(&[target.name], 1, &caller.actor)
        .await?;
    let c = checks.into_iter().next().ok_or_else(|| {
        ApiError::from(opsconductor::Error::Internal(
            "the check reported nothing".into(),
        ))
    })?;
    Ok(Json(TargetCheckView {
        target: c.target,
        kind: c.kind,
        ok: c.ok,
        probe: c.probe.and_then(|p| serde_json::to_value(p).ok()),
        error: c.error,
        latency_ms: c.latency_ms,
    }))
}

/// The host key an SSH target offers now, and the one it pins. Show it to a
/// person, who compares it out of band before trusting it.
#[utoipa::path(get, path = "/api/v1/targets/{name}/host-key", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 200, description = "Offered and pinned keys", body = HostKeyView),
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 422, description = "Not an SSH target", body = ErrorBody),
        (status = 502, description = "The host could not be reached", body = ErrorBody),
    ))]
pub async fn host_key(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<HostKeyView>> {
    caller.require(Permission::ManageTargets)?;
    let (offered, pinned) = state
        .inner
        .oc
        .offered_host_key(&name, &caller.actor)
        .await?;
    Ok(Json(HostKeyView {
        matches: pinned.as_deref() == Some(offered.as_str()),
        offered,
        pinned,
    }))
}

/// Pin an SSH target's host key: the fingerprint a person checked (from
/// `GET …/host-key` and an out-of-band source).
#[utoipa::path(post, path = "/api/v1/targets/{name}/trust", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    request_body = TrustRequest,
    responses(
        (status = 200, description = "The target with its pinned key", body = TargetView),
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 422, description = "Not an SSH target, or not a fingerprint", body = ErrorBody),
    ))]
pub async fn trust(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Json<TargetView>> {
    caller.require(Permission::ManageTargets)?;
    let body: TrustRequest = body.json().await?;
    let t = state
        .inner
        .oc
        .trust_host_key(&name, body.fingerprint.trim(), &caller.actor)
        .await?;
    Ok(Json(t.into()))
}
