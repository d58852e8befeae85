//! `/api/v1/jobs` (versions, search by name, tag and status; create or add
//! a version from JSON or YAML in the job-file format) and `/api/v1/apply`
//! (several targets and jobs at once, all or nothing).

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use opsconductor::auth::Permission;
use opsconductor::model::JobStatus;

use crate::api::targets::{applied, one_document};
use crate::dto::{ApplyItemView, ApplyReport, JobPage, JobVersions, JobView};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Document, Lazy, P, Q};
use crate::page;
use crate::state::AppState;

/// Query of the job list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only names containing this text.
    pub q: Option<String>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Only jobs whose latest version has this status (`draft`, `active`, `deprecated`).
    pub status: Option<String>,
    /// `name` (default), `created_at`; prefix `-` for descending.
    pub sort: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// List jobs (latest versions).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobQuery),
    responses(
        (status = 200, description = "Jobs (without their definitions)", body = JobPage),
        (status = 422, description = "Bad filter", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<JobQuery>,
) -> ApiResult<Json<JobPage>> {
    caller.require(Permission::Read)?;
    let limit = page::limit(q.limit)?;
    let sort = page::sort(q.sort.as_deref(), &["name", "created_at"])?;
    let status: Option<JobStatus> = q.status.as_deref().map(str::parse).transpose()?;
    let all: Vec<_> = state
        .inner
        .oc
        .jobs(&caller.actor)
        .await?
        .into_iter()
        .filter(|j| q.q.as_deref().is_none_or(|s| j.spec.name.contains(s)))
        .filter(|j| {
            q.tag
                .as_deref()
                .is_none_or(|t| j.spec.tags.iter().any(|x| x == t))
        })
        .filter(|j| status.is_none_or(|s| j.spec.status == s))
        .collect();
    let by_time = sort.field == "created_at";
    let (items, next_cursor) = page::page(
        all,
        |j| {
            if by_time {
                format!("{}|{}", page::time_key(j.created_at), j.spec.name)
            } else {
                j.spec.name.clone()
            }
        },
        sort.descending,
        limit,
        q.cursor.as_deref(),
    )?;
    Ok(Json(JobPage {
        items: items.into_iter().map(|j| JobView::new(j, false)).collect(),
        next_cursor,
    }))
}

/// Query of one job.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A version (default: the latest).
    pub version: Option<u32>,
}

/// One job version, with its definition.
#[utoipa::path(get, path = "/api/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "Job name"), VersionQuery),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job or version", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    Q(q): Q<VersionQuery>,
) -> ApiResult<Json<JobView>> {
    caller.require(Permission::Read)?;
    Ok(Json(JobView::new(
        state.inner.oc.job(&name, q.version, &caller.actor).await?,
        true,
    )))
}

/// Every version of a job, oldest first.
#[utoipa::path(get, path = "/api/v1/jobs/{name}/versions", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    responses(
        (status = 200, description = "Versions", body = JobVersions),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<JobVersions>> {
    caller.require(Permission::Read)?;
    let versions = state.inner.oc.job_versions(&name, &caller.actor).await?;
    Ok(Json(JobVersions {
        items: versions
            .into_iter()
            .map(|j| JobView::new(j, true))
            .collect(),
    }))
}

/// Create a job (or add a version), named in the body.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(description = "A job in the job-file format (docs/job-format.md): name, description, tags, status, params (JSON Schema), targets, steps … JSON or YAML.", content((Object = "application/json"), (String = "application/yaml"))),
    responses(
        (status = 200, description = "A new version, or unchanged", body = ApplyItemView),
        (status = 201, description = "Created", body = ApplyItemView),
        (status = 403, description = "Your role may not manage jobs", body = ErrorBody),
        (status = 422, description = "Invalid job", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::ManageJobs)?;
    let batch = one_document(body.document().await?, "Job", None)?;
    applied(state.inner.oc.apply(&batch, &caller.actor).await?)
}

/// Create a job or add a version (an equal definition stores nothing).
#[utoipa::path(put, path = "/api/v1/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    request_body(description = "A job in the job-file format; JSON or YAML.", content((Object = "application/json"), (String = "application/yaml"))),
    responses(
        (status = 200, description = "A new version, or unchanged", body = ApplyItemView),
        (status = 201, description = "Created", body = ApplyItemView),
        (status = 403, description = "Your role may not manage jobs", body = ErrorBody),
        (status = 422, description = "Invalid job", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::ManageJobs)?;
    let batch = one_document(body.document().await?, "Job", Some(&name))?;
    applied(state.inner.oc.apply(&batch, &caller.actor).await?)
}

/// Query of apply.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// Check everything, store nothing.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// Apply several targets and jobs at once (YAML documents with `kind`, or a
/// JSON array of such objects): all are stored, or none.
#[utoipa::path(post, path = "/api/v1/apply", tag = "jobs", params(ApplyQuery),
    request_body(description = "YAML documents (`kind: Job` / `kind: Target`), or a JSON array of such objects.", content((Object = "application/json"), (String = "application/yaml"))),
    responses(
        (status = 200, description = "What was done", body = ApplyReport),
        (status = 403, description = "Your role may not manage these objects", body = ErrorBody),
        (status = 422, description = "Something is invalid; nothing was stored", body = ErrorBody),
    ))]
pub async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<ApplyQuery>,
    body: Lazy,
) -> ApiResult<Json<ApplyReport>> {
    caller.require(Permission::Read)?;
    let text = match body.document().await? {
        Document::Yaml(t) => t,
        Document::Json(serde_json::Value::Array(items)) => {
            let mut out = String::new();
            for v in items {
                out.push_str("---\n");
                out.push_str(
                    &serde_json::to_string(&v).map_err(|e| ApiError::bad_request(e.to_string()))?,
                );
                out.push('\n');
            }
            out
        }
        Document::Json(v @ serde_json::Value::Object(_)) => {
            serde_json::to_string(&v).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        Document::Json(_) => {
            return Err(ApiError::invalid(
                "body",
                "send YAML documents, a JSON object or a JSON array of objects",
            ));
        }
    };
    // Parsing is bounded (linear, with limits) but still CPU work: off the reactor.
    let batch =
        tokio::task::spawn_blocking(move || opsconductor::spec::parse_str(&text, "body", None))
            .await
            .map_err(|e| {
                ApiError::from(opsconductor::Error::Internal(format!("parsing: {e}")))
            })??;
    // An empty batch is refused by the engine (one rule and message for every front end).
    if q.dry_run == Some(true) {
        state.inner.oc.validate(&batch)?;
        return Ok(Json(ApplyReport {
            dry_run: true,
            items: vec![],
        }));
    }
    let items = state.inner.oc.apply(&batch, &caller.actor).await?;
    Ok(Json(ApplyReport {
        dry_run: false,
        items: items.into_iter().map(ApplyItemView::from).collect(),
    }))
}
