//! `/api/v1/audit`: the audit log, newest first, and the verification of its
//! hash chain (which pinpoints the first altered, deleted or reordered event).

use axum::Json;
use axum::extract::State;
use opsconductor::auth::Permission;

use crate::dto::{AuditEventView, AuditPage, AuditVerifyView};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Q};
use crate::page;
use crate::state::AppState;

/// Query of the audit log.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events about this object (`run:ID`, `secret:NAME`, `user:NAME`, …).
    pub object: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// An anchor for the verification: the `head_seq` and `head_hash` of an
/// earlier one, kept outside the server.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// The `head_seq` of an earlier verification (with `head_hash`).
    pub head_seq: Option<u64>,
    /// The `head_hash` of that verification (with `head_seq`).
    pub head_hash: Option<String>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "Events", body = AuditPage),
        (status = 403, description = "Your role may not read the audit log", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(Permission::ReadAudit)?;
    let limit = page::limit(q.limit)?;
    let before: Option<u64> = page::decode_cursor(q.cursor.as_deref())?
        .map(|c| {
            c.parse()
                .map_err(|_| ApiError::invalid("cursor", "not an audit cursor"))
        })
        .transpose()?;
    // The engine pages the log with one bounded query per page.
    let page = state
        .inner
        .oc
        .audit_page(
            &opsconductor::AuditQuery {
                object: q.object,
                before,
                limit,
            },
            &caller.actor,
        )
        .await?;
    let events = page.events;
    let next_cursor = page
        .next_before
        .map(|seq| page::encode_cursor(&seq.to_string()));
    // What was typed as a username on a failed login may be a mistyped
    // password: only admins (who manage users) see it.
    let sees_attempts = caller.require(Permission::ManageUsers).is_ok();
    Ok(Json(AuditPage {
        items: events
            .into_iter()
            .map(|e| {
                let mut v = AuditEventView::from(e);
                if !sees_attempts {
                    redact_attempted_user(&mut v);
                }
                v
            })
            .collect(),
        next_cursor,
    }))
}

/// Shown instead of the name tried on a failed login.
pub const REDACTED: &str = "[redacted]";

/// Hides the name tried on a failed login (actor and object). The hashes
/// stay those of the stored event (the chain is verified on the server).
fn redact_attempted_user(v: &mut AuditEventView) {
    if v.action == "auth.login" && v.outcome != "success" {
        v.actor = REDACTED.to_string();
        v.object = format!("user:{REDACTED}");
    }
}

/// Recompute the hash chain and report the first event that is not what
/// the chain says (altered, deleted or reordered). With `head_seq` and
/// `head_hash` from an earlier verification, also check that this event is
/// still there unchanged: the only way to notice that the newest events
/// were deleted.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses(
        (status = 200, description = "The verdict", body = AuditVerifyView),
        (status = 403, description = "Your role may not read the audit log", body = ErrorBody),
        (status = 422, description = "Only one of `head_seq` and `head_hash`", body = ErrorBody),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<VerifyQuery>,
) -> ApiResult<Json<AuditVerifyView>> {
    caller.require(Permission::ReadAudit)?;
    let anchor = match (q.head_seq, q.head_hash.as_deref()) {
        (Some(seq), Some(hash)) => Some((seq, hash)),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "head_seq",
                "give head_seq with head_hash",
            ));
        }
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "head_hash",
                "give head_hash with head_seq",
            ));
        }
    };
    let v = state
        .inner
        .oc
        .verify_audit_against(anchor, &caller.actor)
        .await?;
    Ok(Json(AuditVerifyView {
        events: v.events,
        ok: v.ok,
        first_bad_seq: v.first_bad_seq,
        problem: v.problem,
        head_seq: v.head_seq,
        head_hash: v.head_hash,
        checkpoint_seq: v.checkpoint.as_ref().map(|c| c.seq),
        checkpoint_hash: v.checkpoint.map(|c| c.hash),
    }))
}
