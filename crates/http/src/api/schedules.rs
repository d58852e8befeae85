//! `/api/v1/schedules`: list, read, next fire times, pause, resume,
//! run-now, delete. Schedules are created and changed with
//! `POST /api/v1/apply` (`kind: Schedule` documents), like jobs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use opsconductor::ScheduleDetail;
use opsconductor::auth::Permission;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Caller, P, Q};
use crate::state::AppState;

/// A schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Name.
    pub name: String,
    /// The job it runs.
    pub job: String,
    /// The pinned job version (absent: the latest at each fire time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Parameters.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Target selector override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// Enabled in its file.
    pub enabled: bool,
    /// Paused by someone.
    pub paused: bool,
    /// `active`, `paused`, `disabled` or `ended`.
    pub state: String,
    /// Window start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// Window end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// `skip`, `run_once` or `run_all`.
    pub misfire: String,
    /// `allow`, `skip`, `queue` or `cancel_previous`.
    pub overlap: String,
    /// The next fire time (UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire: Option<DateTime<Utc>>,
    /// The next fire time in the schedule's zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_local: Option<String>,
    /// Who last applied it (its runs run as them).
    pub owner: String,
    /// The newest fire times and what became of each (one schedule only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<FireView>,
}

/// What became of one fire time.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireView {
    /// The nominal fire time.
    pub fire_time: DateTime<Utc>,
    /// `queued`, `pending`, `skipped` or `failed`.
    pub outcome: String,
    /// The run it queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<ScheduleDetail> for ScheduleView {
    fn from(d: ScheduleDetail) -> Self {
        let s = d.schedule;
        Self {
            name: s.spec.name,
            job: s.spec.job,
            version: s.spec.version,
            cron: s.spec.cron,
            timezone: s.spec.timezone,
            params: s.spec.params,
            targets: s.spec.targets,
            enabled: s.spec.enabled,
            paused: s.paused,
            state: d.state.to_string(),
            start: s.spec.start,
            end: s.spec.end,
            misfire: s.spec.misfire.as_str().into(),
            overlap: s.spec.overlap.as_str().into(),
            next_fire: s.next_fire,
            next_fire_local: d.next_fire_local,
            owner: s.owner,
            recent: d
                .recent
                .into_iter()
                .map(|f| FireView {
                    fire_time: f.fire_time,
                    outcome: f.outcome.as_str().into(),
                    run_id: f.run_id.map(|r| r.to_string()),
                    detail: f.detail,
                })
                .collect(),
        }
    }
}

/// The list of schedules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// Every schedule, by name.
    pub items: Vec<ScheduleView>,
}

/// Next fire times.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextFires {
    /// UTC fire times, soonest first.
    pub times: Vec<DateTime<Utc>>,
}

/// Query of `next`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NextQuery {
    /// How many (1-1000, default 5).
    pub count: Option<usize>,
}

/// The queued run of `run-now`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunNow {
    /// The run's id.
    pub run_id: String,
}

/// List schedules.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules",
    responses(
        (status = 200, description = "Schedules", body = ScheduleList),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<ScheduleList>> {
    caller.require(Permission::Read)?;
    let items = state.inner.oc.schedules(&caller.actor).await?;
    Ok(Json(ScheduleList {
        items: items.into_iter().map(ScheduleView::from).collect(),
    }))
}

/// One schedule with its newest fire times.
#[utoipa::path(get, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleView>> {
    caller.require(Permission::Read)?;
    Ok(Json(
        state.inner.oc.schedule(&name, &caller.actor).await?.into(),
    ))
}

/// The next fire times of a schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{name}/next", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name"), NextQuery),
    responses(
        (status = 200, description = "Fire times", body = NextFires),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 422, description = "count out of range", body = ErrorBody),
    ))]
pub async fn next(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
    Q(q): Q<NextQuery>,
) -> ApiResult<Json<NextFires>> {
    caller.require(Permission::Read)?;
    let times = state
        .inner
        .oc
        .next_fire_times(&name, q.count.unwrap_or(5), &caller.actor)
        .await?;
    Ok(Json(NextFires { times }))
}

/// Pause a schedule (kept across re-applies of its file).
#[utoipa::path(post, path = "/api/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Paused", body = ScheduleView),
        (status = 403, description = "Your role may not manage schedules", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleView>> {
    caller.require(Permission::ManageSchedules)?;
    state.inner.oc.pause_schedule(&name, &caller.actor).await?;
    Ok(Json(
        state.inner.oc.schedule(&name, &caller.actor).await?.into(),
    ))
}

/// Resume a schedule from now.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Resumed", body = ScheduleView),
        (status = 403, description = "Your role may not manage schedules", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleView>> {
    caller.require(Permission::ManageSchedules)?;
    state.inner.oc.resume_schedule(&name, &caller.actor).await?;
    Ok(Json(
        state.inner.oc.schedule(&name, &caller.actor).await?.into(),
    ))
}

/// Queue a run of the schedule's job now, as the caller.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/run-now", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 201, description = "Queued", body = RunNow),
        (status = 403, description = "Your role may not run jobs", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ))]
pub async fn run_now(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<(StatusCode, Json<RunNow>)> {
    caller.require(Permission::Run)?;
    let run = state
        .inner
        .oc
        .run_schedule_now(&name, &caller.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RunNow {
            run_id: run.id.to_string(),
        }),
    ))
}

/// Delete a schedule (its runs stay).
#[utoipa::path(delete, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Your role may not manage schedules", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ))]
pub async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::ManageSchedules)?;
    state.inner.oc.delete_schedule(&name, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
