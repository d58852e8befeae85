//! `/api/v1/targets`: list, read, create or replace (JSON or YAML), delete;
//! `check` and `trust` answer 501 until the engine offers them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opsconductor::auth::Permission;
use opsconductor::store::{ApplyAction, ApplyBatch};

use crate::dto::{ApplyItemView, TargetPage, TargetView};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Document, P, Q};
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
        .targets()
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
    Ok(Json(state.inner.oc.target(&name).await?.into()))
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
    doc: Document,
) -> ApiResult<Response> {
    caller.require(Permission::ManageTargets)?;
    let batch = one_document(doc, "Target", Some(&name))?;
    let items = state.inner.oc.apply(&batch, &caller.actor).await?;
    applied(items)
}

/// The response for a single applied object: 201 if created.
pub(crate) fn applied(items: Vec<opsconductor::store::ApplyItem>) -> ApiResult<Response> {
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

/// Delete a target.
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
    caller.require(Permission::ManageTargets)?;
    let oc = &state.inner.oc;
    if !oc.store().delete_target(&name).await? {
        return Err(opsconductor::Error::not_found("target", name).into());
    }
    oc.record_audit(
        &caller.actor,
        "target.delete",
        &format!("target:{name}"),
        serde_json::Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn not_yet(what: &str) -> ApiError {
    ApiError::not_implemented(format!(
        "{what} from the server needs an engine call that does not exist yet; \
         meanwhile run `opsconductor exec -t NAME -- true` (check) or pin the host key in the target's connection (trust)"
    ))
}

/// Check that a target is reachable (not implemented yet: 501).
#[utoipa::path(post, path = "/api/v1/targets/{name}/check", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 501, description = "Not implemented yet", body = ErrorBody),
    ))]
pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ManageTargets)?;
    state.inner.oc.target(&name).await?;
    Err(not_yet("checking a target"))
}

/// Trust (pin) an SSH target's host key (not implemented yet: 501).
#[utoipa::path(post, path = "/api/v1/targets/{name}/trust", tag = "targets",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 403, description = "Your role may not manage targets", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 501, description = "Not implemented yet", body = ErrorBody),
    ))]
pub async fn trust(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ManageTargets)?;
    state.inner.oc.target(&name).await?;
    Err(not_yet("trusting a host key"))
}
