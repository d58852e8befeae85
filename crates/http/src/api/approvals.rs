//! `/api/v1/approvals`: runs waiting for approval, their frozen plans, and
//! the approve / reject decisions. The rules (four-eyes, eligibility,
//! fresh login, expiry) are the engine's; this module converts.

use axum::Json;
use axum::extract::State;
use opsconductor::approval::ApprovalView;
use opsconductor::auth::Permission;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Caller, Lazy, P, Q};
use crate::state::AppState;

/// One approval request with its decisions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalDto {
    /// The run.
    pub run_id: String,
    /// The job.
    pub job: String,
    /// The run's status (`waiting_approval`, `queued`, `rejected`, `expired`, …).
    pub status: String,
    /// Who submitted it (never an approver).
    pub requested_by: String,
    /// Approvals needed.
    pub required: u32,
    /// Approvals so far.
    pub approvals: u32,
    /// Who may approve: `{"roles": [...]}` or `{"users": [...]}`.
    #[schema(value_type = Object)]
    pub approvers: serde_json::Value,
    /// Approvals must carry a comment.
    pub reason_required: bool,
    /// When the run ends `expired` if undecided (RFC 3339).
    pub expires_at: String,
    /// SHA-256 of the frozen plan.
    pub plan_digest: String,
    /// The rendered plan: `{"targets": [...], "steps": [{step, name, target, kind, text, …}]}`.
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
    /// Why approval is needed: `job` and/or `policy`.
    pub reasons: Vec<String>,
    /// Command policy hits (`warn`, `require_approval`).
    #[schema(value_type = Vec<Object>)]
    pub policy_hits: serde_json::Value,
    /// Decisions, oldest first: `{approver, decision, reason, plan_digest, time}`.
    #[schema(value_type = Vec<Object>)]
    pub decisions: serde_json::Value,
    /// When requested (RFC 3339).
    pub created_at: String,
}

impl From<ApprovalView> for ApprovalDto {
    fn from(v: ApprovalView) -> Self {
        let approvals = v.approvals();
        let r = v.request;
        Self {
            run_id: r.run_id.to_string(),
            job: r.job,
            status: v.status.as_str().to_string(),
            requested_by: r.requested_by,
            required: r.required,
            approvals,
            approvers: serde_json::to_value(&r.approvers).unwrap_or_default(),
            reason_required: r.reason_required,
            expires_at: r.expires_at.to_rfc3339(),
            plan_digest: r.plan_digest,
            plan: r.plan,
            reasons: r.reasons,
            policy_hits: serde_json::to_value(&r.policy_hits).unwrap_or_default(),
            decisions: serde_json::to_value(&v.decisions).unwrap_or_default(),
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

/// A page of approval requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalList {
    /// Newest first.
    pub items: Vec<ApprovalDto>,
}

/// Query of the list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// Also decided, expired and cancelled requests (default: only waiting).
    pub all: Option<bool>,
    /// At most this many (1-1000, default 50).
    pub limit: Option<usize>,
}

/// Body of an approval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Why (required when the job says `reason_required`; at most 2000 characters).
    pub comment: Option<String>,
}

/// Body of a rejection.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Why (required; at most 2000 characters).
    pub reason: String,
}

/// Approval requests, newest first.
#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals",
    params(ApprovalQuery),
    responses(
        (status = 200, description = "Requests", body = ApprovalList),
        (status = 422, description = "Bad limit", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<ApprovalQuery>,
) -> ApiResult<Json<ApprovalList>> {
    caller.require(Permission::Read)?;
    let views = state
        .inner
        .oc
        .approvals(
            !q.all.unwrap_or(false),
            q.limit.unwrap_or(50),
            &caller.actor,
        )
        .await?;
    Ok(Json(ApprovalList {
        items: views.into_iter().map(Into::into).collect(),
    }))
}

/// One run's approval request: the frozen plan, its digest, policy hits
/// and decisions.
#[utoipa::path(get, path = "/api/v1/approvals/{id}", tag = "approvals",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    responses(
        (status = 200, description = "The request", body = ApprovalDto),
        (status = 404, description = "No such run, or it needed no approval", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(id): P<String>,
) -> ApiResult<Json<ApprovalDto>> {
    caller.require(Permission::Read)?;
    let id = state.inner.oc.resolve_run_id(&id, &caller.actor).await?;
    Ok(Json(
        state.inner.oc.approval(id, &caller.actor).await?.into(),
    ))
}

/// Approve a waiting run (never your own; once per person; password
/// logins must be younger than 5 minutes). The last approval needed queues it.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    request_body = ApproveBody,
    responses(
        (status = 200, description = "Recorded", body = ApprovalDto),
        (status = 403, description = "Not allowed: role, approver list, own run, or stale login", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "Not waiting, expired, or already decided by you", body = ErrorBody),
        (status = 422, description = "Comment missing or too long", body = ErrorBody),
    ))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    P(id): P<String>,
    body: Lazy,
) -> ApiResult<Json<ApprovalDto>> {
    caller.require(Permission::Approve)?;
    let body: ApproveBody = body.json_or_default().await?;
    let id = state.inner.oc.resolve_run_id(&id, &caller.actor).await?;
    Ok(Json(
        state
            .inner
            .oc
            .approve(id, body.comment, &caller.actor)
            .await?
            .into(),
    ))
}

/// Reject a waiting run with a reason; it ends `rejected`.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", tag = "approvals",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "Rejected", body = ApprovalDto),
        (status = 403, description = "Not allowed: role, approver list, own run, or stale login", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "Not waiting, expired, or already decided by you", body = ErrorBody),
        (status = 422, description = "Reason missing or too long", body = ErrorBody),
    ))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    P(id): P<String>,
    body: Lazy,
) -> ApiResult<Json<ApprovalDto>> {
    caller.require(Permission::Approve)?;
    let body: RejectBody = body.json().await?;
    let id = state.inner.oc.resolve_run_id(&id, &caller.actor).await?;
    Ok(Json(
        state
            .inner
            .oc
            .reject(id, body.reason, &caller.actor)
            .await?
            .into(),
    ))
}
