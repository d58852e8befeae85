//! `POST /api/v1/jobs/{name}/plan`: the dry run of a job — its batches,
//! steps per target and rendered commands (secrets by name), after every
//! check a submit makes, with nothing queued or run.

use axum::Json;
use axum::extract::State;
use opsconductor::SubmitRequest;
use opsconductor::auth::Permission;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Lazy, P};
use crate::state::AppState;

/// What to plan: the body of a run submit, without the job name (it is
/// in the path).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// A version (default: the latest).
    #[serde(default)]
    pub version: Option<u32>,
    /// Parameters (an object), validated against the job's schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Target selectors overriding the job's.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
}

/// The plan of a run of this job (a dry run: nothing is queued or run).
#[utoipa::path(post, path = "/api/v1/jobs/{name}/plan", tag = "jobs",
    params(("name" = String, Path, description = "Job name")),
    request_body = PlanRequest,
    responses(
        (status = 200, description = "The plan: strategy, batches, steps, per-target rendered commands", body = Object),
        (status = 403, description = "Your role may not run jobs", body = ErrorBody),
        (status = 404, description = "No such job, version or target", body = ErrorBody),
        (status = 409, description = "The job is deprecated", body = ErrorBody),
        (status = 422, description = "Invalid parameters or targets", body = ErrorBody),
    ))]
pub async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Json<opsconductor::RunPlan>> {
    caller.require(Permission::Run)?;
    let body: PlanRequest = body.json().await?;
    let params = match body.params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(ApiError::invalid("params", "must be an object")),
    };
    let req = SubmitRequest {
        job: name,
        version: body.version,
        params,
        targets: body.targets,
    };
    Ok(Json(state.inner.oc.plan(req, &caller.actor).await?))
}
