//! `/api/v1/notifications`: channels (admins manage them; secrets appear by
//! name only), a test delivery, and the delivery history per run or channel.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use opsconductor::auth::Permission;
use opsconductor::engine::notify::{ChannelSpec, DeliveryFilter};
use serde::Serialize;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Lazy, P, Q};
use crate::state::AppState;

/// A channel: name, kind and settings (secrets by name), description, last change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    /// The channel.
    #[schema(value_type = Object)]
    pub channel: serde_json::Value,
}

/// Every channel, by name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelList {
    /// The channels.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

/// How a test delivery went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestView {
    /// The attempt: `delivered`, `code`, `reply`, `error`, `latency_ms`, `event_id`.
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
}

/// Deliveries, newest first, each with its attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// The deliveries.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

fn to_json<T: Serialize>(v: &T) -> ApiResult<serde_json::Value> {
    serde_json::to_value(v)
        .map_err(|e| ApiError::from(opsconductor::Error::Internal(e.to_string())))
}

/// List notification channels.
#[utoipa::path(get, path = "/api/v1/notifications/channels", tag = "notifications",
    responses((status = 200, description = "Channels", body = ChannelList)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<ChannelList>> {
    caller.require(Permission::Read)?;
    let list = state.inner.oc.channels(&caller.actor).await?;
    Ok(Json(ChannelList {
        items: list.iter().map(to_json).collect::<ApiResult<_>>()?,
    }))
}

/// One channel.
#[utoipa::path(get, path = "/api/v1/notifications/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "Channel name")),
    responses(
        (status = 200, description = "The channel", body = ChannelView),
        (status = 404, description = "No such channel", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ChannelView>> {
    caller.require(Permission::Read)?;
    let ch = state.inner.oc.channel(&name, &caller.actor).await?;
    Ok(Json(ChannelView {
        channel: to_json(&ch)?,
    }))
}

/// Create or replace a channel. The body is the channel's settings with its
/// `kind` (`webhook`, `slack`, `email`) and an optional `description`;
/// credentials are secret names (`signing_secret`, `url_secret`, `password_secret`).
#[utoipa::path(put, path = "/api/v1/notifications/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "Channel name")),
    request_body(content = Object, description = "kind, settings and description"),
    responses(
        (status = 200, description = "Stored", body = ChannelView),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 404, description = "A named secret does not exist", body = ErrorBody),
        (status = 422, description = "Invalid settings", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    body: Lazy,
) -> ApiResult<Json<ChannelView>> {
    caller.require(Permission::ManageSettings)?;
    let mut v: serde_json::Value = body.json().await?;
    let description = match v.as_object_mut().and_then(|m| m.remove("description")) {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(ApiError::invalid("description", "must be a string")),
    };
    let spec: ChannelSpec =
        serde_json::from_value(v).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let ch = state
        .inner
        .oc
        .set_channel(&name, &description, spec, &caller.actor)
        .await?;
    Ok(Json(ChannelView {
        channel: to_json(&ch)?,
    }))
}

/// Delete a channel (its pending deliveries then fail).
#[utoipa::path(delete, path = "/api/v1/notifications/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "Channel name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
    ))]
pub async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ManageSettings)?;
    state.inner.oc.delete_channel(&name, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test event to a channel now (outside the outbox) and say how it went.
#[utoipa::path(post, path = "/api/v1/notifications/channels/{name}/test", tag = "notifications",
    params(("name" = String, Path, description = "Channel name")),
    responses(
        (status = 200, description = "The attempt (delivered or not)", body = TestView),
        (status = 403, description = "Admins only", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
    ))]
pub async fn test(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<TestView>> {
    caller.require(Permission::ManageSettings)?;
    let t = state.inner.oc.test_channel(&name, &caller.actor).await?;
    Ok(Json(TestView {
        result: to_json(&t)?,
    }))
}

/// Query of the delivery history.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only deliveries about this run (full id or unique prefix).
    pub run: Option<String>,
    /// Only deliveries to this channel.
    pub channel: Option<String>,
    /// At most this many (1-1000, default 50).
    pub limit: Option<usize>,
}

/// Delivery history, newest first, with every attempt.
#[utoipa::path(get, path = "/api/v1/notifications/deliveries", tag = "notifications",
    params(HistoryQuery),
    responses(
        (status = 200, description = "Deliveries", body = DeliveryList),
        (status = 422, description = "Bad limit", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<HistoryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    caller.require(Permission::Read)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("{limit} is out of range (1-1000)"),
        ));
    }
    let run = match q.run {
        Some(r) => Some(state.inner.oc.resolve_run_id(&r, &caller.actor).await?),
        None => None,
    };
    let list = state
        .inner
        .oc
        .notification_history(
            &DeliveryFilter {
                run,
                channel: q.channel,
                limit,
            },
            &caller.actor,
        )
        .await?;
    Ok(Json(DeliveryList {
        items: list.iter().map(to_json).collect::<ApiResult<_>>()?,
    }))
}
