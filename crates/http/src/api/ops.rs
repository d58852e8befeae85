//! Operations endpoints, open to anyone: `/health` (the process answers),
//! `/ready` (the database answers, the workers run, the server is not
//! draining), `/metrics`
//! (Prometheus; may require authentication by configuration), and the API's
//! own description (`/api/v1/openapi.json`, `/api/v1/docs`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opsconductor::RunFilter;

use crate::dto::{HealthView, ReadyView};
use crate::error::{ApiError, ApiResult, ErrorBody, Shaped};
use crate::state::AppState;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/health", tag = "ops", security(()),
    responses((status = 200, description = "Alive", body = HealthView)))]
pub async fn health() -> Json<HealthView> {
    Json(HealthView {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Readiness: the database answers, the configured workers run, and the
/// server is not shutting down.
#[utoipa::path(get, path = "/ready", tag = "ops", security(()),
    responses(
        (status = 200, description = "Ready", body = ReadyView),
        (status = 503, description = "Not ready (database unreachable, workers not running, or shutting down)", body = ReadyView),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let oc = &state.inner.oc;
    let probe = RunFilter {
        limit: 1,
        ..Default::default()
    };
    let database = match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        oc.runs(&probe, &opsconductor::Actor::new("server")),
    )
    .await
    {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database failed");
            "unreachable".to_string()
        }
        Err(_) => "timeout".to_string(),
    };
    // The configured count alone would say "ready" after the workers were
    // stopped or died: ask the engine whether they still run.
    let workers_running = state.inner.workers == 0 || oc.worker_pools_running() > 0;
    let ok = database == "ok" && workers_running && !state.draining();
    let body = ReadyView {
        status: if ok { "ready" } else { "not_ready" }.into(),
        database,
        workers: state.inner.workers,
        workers_running,
        backend: oc.backend().into(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut res = (status, Json(body)).into_response();
    // A 503 here is an answer, not an error: keep the readiness body
    // (what is not ready) instead of the generic error shape.
    res.extensions_mut().insert(Shaped);
    res
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "ops", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "Authentication required (when configured)", body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if !state.inner.metrics_public {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::unauthenticated("metrics require `Authorization: Bearer TOKEN`")
            })?;
        crate::auth::principal_of(&state, token.trim()).await?;
    }
    let text = state.inner.metrics.render(&state.inner.oc).await;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.inner.openapi_json.clone(),
    )
        .into_response()
}

/// A self-contained HTML page describing the API (no scripts, no downloads).
pub async fn docs(State(state): State<AppState>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                ),
            ),
        ],
        state.inner.docs_html.clone(),
    )
        .into_response()
}
