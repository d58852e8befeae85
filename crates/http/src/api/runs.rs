//! `/api/v1/runs` and `/api/v1/exec`: submit, list, read with per step ×
//! target results, cancel, and logs — stored (JSON), or live from any
//! sequence number over Server-Sent Events or a WebSocket, ending when the
//! run ends. Live logs come from the engine's `follow`, which reads the
//! store, so a run executing on another node streams the same way.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, Stream, StreamExt};
use opsconductor::RunFilter;
use opsconductor::auth::Permission;
use opsconductor::model::{RunId, RunStatus};
use opsconductor::{ExecRequest, SubmitRequest};

use crate::auth::{BearerToken, Principal, STREAM_RECHECK, still_authorized};
use crate::dto::{
    ExecRequestBody, LogChunkView, LogPage, RunDetailView, RunPage, RunView, SubmitRunRequest,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Lazy, P, Q};
use crate::page;
use crate::state::AppState;

/// Query of the run list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Only runs of this job (`exec` for ad-hoc commands).
    pub job: Option<String>,
    /// Only runs of this schedule.
    pub schedule: Option<String>,
    /// Only runs in these states, comma-separated (`queued,running`).
    pub status: Option<String>,
    /// Page size (1-500, default 50).
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Only runs created before this run id (same as a cursor; for scripts).
    pub before: Option<String>,
}

/// List runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunQuery),
    responses(
        (status = 200, description = "Runs", body = RunPage),
        (status = 422, description = "Bad filter or cursor", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Q(q): Q<RunQuery>,
) -> ApiResult<Json<RunPage>> {
    caller.require(Permission::Read)?;
    let limit = page::limit(q.limit)?;
    let statuses = match q.status.as_deref() {
        None | Some("") => vec![],
        Some(s) => s
            .split(',')
            .map(|x| x.trim().parse::<RunStatus>())
            .collect::<opsconductor::Result<Vec<_>>>()?,
    };
    let before_text = match (page::decode_cursor(q.cursor.as_deref())?, q.before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "before",
                "give `cursor` or `before`, not both",
            ));
        }
        (Some(c), None) => Some(c),
        (None, b) => b,
    };
    let before = before_text
        .map(|t| {
            t.parse::<RunId>()
                .map_err(|_| ApiError::invalid("cursor", "not a run id"))
        })
        .transpose()?;
    let filter = RunFilter {
        job: q.job,
        schedule: q.schedule,
        statuses,
        before,
        limit: limit + 1,
    };
    let mut runs = match state.inner.oc.runs(&filter, &caller.actor).await {
        Ok(r) => r,
        Err(opsconductor::Error::NotFound { .. }) => {
            return Err(ApiError::invalid(
                "cursor",
                "the run this page starts after does not exist (any more)",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let next_cursor = if runs.len() > limit {
        runs.truncate(limit);
        runs.last().map(|r| page::encode_cursor(&r.id.to_string()))
    } else {
        None
    };
    Ok(Json(RunPage {
        items: runs.into_iter().map(RunView::from).collect(),
        next_cursor,
    }))
}

fn created(run: opsconductor::Run) -> Response {
    // The run keeps the request id (`Run::request_id`, also on the workers'
    // log lines for it); the request's span gets the run id, so the
    // request's own log lines — and this one — name the run too.
    let span = tracing::Span::current();
    span.record("run_id", tracing::field::display(run.id));
    tracing::info!(run_id = %run.id, job = %run.job, "run queued");
    let location = format!("/api/v1/runs/{}", run.id);
    let mut res = (StatusCode::CREATED, Json(RunView::from(run))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Run a job: validates the parameters against its schema and the targets
/// against its selector, then queues it.
#[utoipa::path(post, path = "/api/v1/runs", tag = "runs",
    request_body = SubmitRunRequest,
    responses(
        (status = 201, description = "Queued", body = RunView),
        (status = 403, description = "Your role may not run jobs", body = ErrorBody),
        (status = 404, description = "No such job, version or target", body = ErrorBody),
        (status = 409, description = "The job is deprecated", body = ErrorBody),
        (status = 422, description = "Invalid parameters or targets", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::Run)?;
    let body: SubmitRunRequest = body.json().await?;
    let params = match body.params {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return Err(ApiError::invalid("params", "must be an object")),
    };
    let req = SubmitRequest {
        job: body.job,
        version: body.version,
        params,
        targets: body.targets,
    };
    let run = state.inner.oc.submit(req, &caller.actor).await?;
    Ok(created(run))
}

/// Run an ad-hoc command on targets.
#[utoipa::path(post, path = "/api/v1/exec", tag = "runs",
    request_body = ExecRequestBody,
    responses(
        (status = 201, description = "Queued", body = RunView),
        (status = 403, description = "Your role may not run commands", body = ErrorBody),
        (status = 422, description = "Invalid command, targets or timeout", body = ErrorBody),
    ))]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    body: Lazy,
) -> ApiResult<Response> {
    caller.require(Permission::Run)?;
    let body: ExecRequestBody = body.json().await?;
    let mut req = ExecRequest::new(body.command);
    if let Some(t) = body.targets {
        req.targets = t;
    }
    if let Some(t) = body.timeout {
        req.timeout = Some(
            opsconductor::duration::parse_timeout(&t)
                .map_err(|m| ApiError::invalid("timeout", m))?,
        );
    }
    if let Some(c) = body.concurrency {
        req.concurrency = c;
    }
    let run = state.inner.oc.submit_exec(req, &caller.actor).await?;
    Ok(created(run))
}

async fn resolve(state: &AppState, id: &str, actor: &opsconductor::Actor) -> ApiResult<RunId> {
    Ok(state.inner.oc.resolve_run_id(id, actor).await?)
}

/// Paging of a run's results (large runs have one per step × target).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunDetailQuery {
    /// Only results after this cursor (`results_next` of the previous page).
    pub results_after: Option<String>,
    /// At most this many results (1-5000, default 1000).
    pub results_limit: Option<usize>,
}

/// Default and largest page of results in a run detail.
const RESULTS_PAGE: usize = 1000;
const RESULTS_PAGE_MAX: usize = 5000;

fn results_cursor(step: u32, target: &str) -> String {
    format!("{step}:{target}")
}

fn parse_results_cursor(text: &str) -> ApiResult<(u32, String)> {
    text.split_once(':')
        .and_then(|(s, t)| Some((s.parse::<u32>().ok()?, t.to_string())))
        .ok_or_else(|| {
            ApiError::invalid(
                "results_after",
                format!("'{text}' is not a cursor (STEP:TARGET, as given in results_next)"),
            )
        })
}

/// One run with its definition and per step × target results. Results come
/// in pages (`results_limit`, default 1000, at most 5000); when more follow,
/// `results_next` is the cursor for `results_after`. Logs are paged by
/// `GET /api/v1/runs/{id}/logs`.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id, or a unique prefix of at least 4 characters"), RunDetailQuery),
    responses(
        (status = 200, description = "The run", body = RunDetailView),
        (status = 404, description = "No such run", body = ErrorBody),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    P(id): P<String>,
    Q(q): Q<RunDetailQuery>,
) -> ApiResult<Json<RunDetailView>> {
    caller.require(Permission::Read)?;
    let limit = match q.results_limit {
        None => RESULTS_PAGE,
        Some(n) if (1..=RESULTS_PAGE_MAX).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::invalid(
                "results_limit",
                format!("{n} is out of range (1-{RESULTS_PAGE_MAX})"),
            ));
        }
    };
    let after = q
        .results_after
        .as_deref()
        .map(parse_results_cursor)
        .transpose()?;
    let id = resolve(&state, &id, &caller.actor).await?;
    // One page (and one more result, to know whether more follow) read by
    // the store, by step, then target in byte order: a run with 10,000
    // results never sits whole in memory.
    let mut detail = state
        .inner
        .oc
        .run_page(
            id,
            after.as_ref().map(|(s, t)| (*s, t.as_str())),
            limit + 1,
            &caller.actor,
        )
        .await?;
    let more = detail.results.len() > limit;
    detail.results.truncate(limit);
    let next = more
        .then(|| {
            detail
                .results
                .last()
                .map(|r| results_cursor(r.step, &r.target))
        })
        .flatten();
    let mut view: RunDetailView = detail.into();
    view.results_next = next;
    Ok(Json(view))
}

/// Stop a run: a queued run is cancelled at once, a running one has its
/// processes stopped within moments.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    responses(
        (status = 200, description = "The run after the request", body = RunView),
        (status = 403, description = "Your role may not cancel runs", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    P(id): P<String>,
) -> ApiResult<Json<RunView>> {
    caller.require(Permission::Cancel)?;
    let id = resolve(&state, &id, &caller.actor).await?;
    Ok(Json(state.inner.oc.cancel(id, &caller.actor).await?.into()))
}

/// Query of the logs.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only chunks after this sequence number (0: from the start). For SSE,
    /// the `Last-Event-ID` header takes precedence.
    pub after: Option<u64>,
    /// At most this many chunks (JSON only; 1-5000, default 1000).
    pub limit: Option<usize>,
}

fn after_of(headers: &HeaderMap, q: &LogQuery) -> ApiResult<u64> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request("Last-Event-ID must be a sequence number")
                    .with_field("Last-Event-ID")
            }),
        None => Ok(q.after.unwrap_or(0)),
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"))
}

/// A run's output: stored chunks as JSON, or — with
/// `Accept: text/event-stream` — a live Server-Sent Events stream from
/// `after` (or `Last-Event-ID`) that ends when the run ends. Each SSE event
/// is `event: log`, `id: SEQ`, `data: {chunk}`; the last is `event: end`
/// with `data: {"status": …, "last_seq": …}`.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "Run id or unique prefix"), LogQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "SSE: resume after this sequence number")),
    responses(
        (status = 200, description = "Stored output (JSON), or a live stream (text/event-stream)", content(
            (LogPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 404, description = "No such run", body = ErrorBody),
    ))]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    token: Option<Extension<BearerToken>>,
    P(id): P<String>,
    Q(q): Q<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Permission::Read)?;
    let id = resolve(&state, &id, &caller.actor).await?;
    let after = after_of(&headers, &q)?;
    if wants_sse(&headers) {
        let stream = state.inner.oc.follow(id, after, &caller.actor).await?;
        let guard = StreamGuard::new(&caller, token)?;
        return Ok(sse(state, id, after, stream, guard).into_response());
    }
    let page = state
        .inner
        .oc
        .log_page(id, after, q.limit.unwrap_or(1000), &caller.actor)
        .await?;
    Ok(Json(LogPage {
        items: page.chunks.into_iter().map(LogChunkView::from).collect(),
        next_after: page.next_after,
        run_status: page.run_status.as_str().to_string(),
        complete: page.complete,
    })
    .into_response())
}

/// The end-of-stream message (SSE `end` event, WebSocket `end` message).
async fn end_message(state: &AppState, id: RunId, last_seq: u64) -> serde_json::Value {
    let status = state
        .inner
        .oc
        .run(id, &opsconductor::Actor::new("server"))
        .await
        .map(|d| d.run.status.as_str().to_string())
        .unwrap_or_else(|_| "unknown".into());
    serde_json::json!({"type": "end", "status": status, "last_seq": last_seq})
}

/// What a live stream needs to check, every [`STREAM_RECHECK`], that its
/// caller may still read: a stream outlives the request that opened it, so
/// logout, revocation, disabling or a role change must end it too.
struct StreamGuard {
    principal: Principal,
    token: BearerToken,
}

impl StreamGuard {
    fn new(caller: &Caller, token: Option<Extension<BearerToken>>) -> ApiResult<Self> {
        let Some(Extension(token)) = token else {
            return Err(ApiError::unauthenticated("authentication required"));
        };
        Ok(Self {
            principal: caller.principal.clone(),
            token,
        })
    }

    /// `Err(body)` once the caller's login no longer stands (or lost `Read`).
    async fn check(&self, state: &AppState) -> Result<(), ErrorBody> {
        still_authorized(state, &self.token, &self.principal)
            .await
            .map_err(|e| e.body())
    }

    fn ticker() -> tokio::time::Interval {
        let mut t =
            tokio::time::interval_at(tokio::time::Instant::now() + STREAM_RECHECK, STREAM_RECHECK);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }
}

fn sse(
    state: AppState,
    id: RunId,
    after: u64,
    mut follow: opsconductor::LogStream,
    guard: StreamGuard,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stop = state.inner.shutdown.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut last = after;
        let mut recheck = StreamGuard::ticker();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tx.send(SseEvent::default().event("shutdown").data("{\"type\":\"shutdown\"}")).await;
                    return;
                }
                _ = tx.closed() => return,
                _ = recheck.tick() => {
                    if let Err(body) = guard.check(&state).await {
                        let data = serde_json::to_string(&body).unwrap_or_default();
                        let _ = tx.send(SseEvent::default().event("error").data(data)).await;
                        return;
                    }
                    continue;
                }
                n = follow.next() => n,
            };
            let ev = match next {
                Some(Ok(chunk)) => {
                    last = chunk.seq;
                    let seq = chunk.seq;
                    match serde_json::to_string(&LogChunkView::from(chunk)) {
                        Ok(data) => SseEvent::default()
                            .event("log")
                            .id(seq.to_string())
                            .data(data),
                        Err(_) => continue,
                    }
                }
                Some(Err(e)) => {
                    let body = ApiError::from(e).body();
                    let data = serde_json::to_string(&body).unwrap_or_default();
                    let _ = tx.send(SseEvent::default().event("error").data(data)).await;
                    return;
                }
                None => {
                    let end = end_message(&state, id, last).await;
                    let _ = tx
                        .send(SseEvent::default().event("end").data(end.to_string()))
                        .await;
                    return;
                }
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Live logs over a WebSocket from `after`: text messages
/// `{"type": "log", seq, step, target, stream, data, time}`, then
/// `{"type": "end", "status", "last_seq"}` and a normal close when the run ends.
#[utoipa::path(get, path = "/api/v1/runs/{id}/ws", tag = "runs",
    params(("id" = String, Path, description = "Run id or unique prefix"),
        ("after" = Option<u64>, Query, description = "Only chunks after this sequence number")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket request", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    ))]
pub async fn ws(
    State(state): State<AppState>,
    caller: Caller,
    token: Option<Extension<BearerToken>>,
    P(id): P<String>,
    Q(q): Q<LogQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::Read)?;
    let id = resolve(&state, &id, &caller.actor).await?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            e.status(),
            "bad_request",
            format!("this endpoint speaks WebSocket only: {}", e.body_text()),
        )
    })?;
    let after = q.after.unwrap_or(0);
    let guard = StreamGuard::new(&caller, token)?;
    let follow = state.inner.oc.follow(id, after, &caller.actor).await?;
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| stream_ws(state, id, after, follow, socket, guard)))
}

async fn stream_ws(
    state: AppState,
    id: RunId,
    after: u64,
    mut follow: opsconductor::LogStream,
    socket: WebSocket,
    guard: StreamGuard,
) {
    let (mut tx, mut rx) = socket.split();
    let stop = state.inner.shutdown.clone();
    let mut last = after;
    let mut recheck = StreamGuard::ticker();
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if let Err(body) = guard.check(&state).await {
                    let mut v = serde_json::to_value(body).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("type".into(), "error".into());
                    }
                    let _ = tx.send(Message::text(v.to_string())).await;
                    let _ = tx.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::POLICY,
                        reason: "the login no longer stands".into(),
                    }))).await;
                    return;
                }
            }
            _ = stop.cancelled() => {
                let _ = tx.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::AWAY,
                    reason: "server shutting down".into(),
                }))).await;
                return;
            }
            incoming = rx.next() => match incoming {
                // The client closed or the connection broke: stop following.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            next = follow.next() => match next {
                Some(Ok(chunk)) => {
                    last = chunk.seq;
                    let mut v = serde_json::to_value(LogChunkView::from(chunk)).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("type".into(), "log".into());
                    }
                    if tx.send(Message::text(v.to_string())).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let mut v = serde_json::to_value(ApiError::from(e).body()).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("type".into(), "error".into());
                    }
                    let _ = tx.send(Message::text(v.to_string())).await;
                    let _ = tx.send(Message::Close(None)).await;
                    return;
                }
                None => {
                    let end = end_message(&state, id, last).await;
                    let _ = tx.send(Message::text(end.to_string())).await;
                    let _ = tx.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::NORMAL,
                        reason: "run ended".into(),
                    }))).await;
                    return;
                }
            },
        }
    }
}
