//! The routes of `/api/v1` (plus `/health`, `/ready`, `/metrics`) and the
//! OpenAPI document generated from the handlers' annotations.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod jobs;
pub mod notify;
pub mod ops;
pub mod plan;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod targets;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth as authn, middleware as mw};

/// The OpenAPI document (OpenAPI 3.1), generated from the code.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpsConductor API",
        description = "Operations automation: targets, secrets, jobs, runs with live logs, users, tokens and the audit log.\n\n\
            Authenticate with `Authorization: Bearer TOKEN`: an access token from `POST /api/v1/auth/login` \
            (short-lived; renew it with the refresh token) or an API token (`opsc_…`).\n\n\
            Errors always look like `{\"error\": {\"code\", \"message\", \"field\"?}}`. Lists take `limit` (1-500, default 50), \
            `cursor` (the previous page's `next_cursor`) and, where offered, `sort` (`field` or `-field`).\n\n\
            Every response carries `X-Request-Id` (yours if you sent one)."
    ),
    paths(
        ops::health, ops::ready, ops::metrics,
        auth::login, auth::refresh, auth::logout, auth::me, auth::tokens, auth::create_token, auth::revoke_token,
        targets::list, targets::get_one, targets::put, targets::delete_one, targets::check, targets::host_key, targets::trust,
        jobs::list, jobs::get_one, jobs::versions, jobs::create, jobs::put, jobs::apply,
        plan::plan,
        runs::list, runs::submit, runs::get_one, runs::cancel, runs::logs, runs::ws, runs::exec,
        secrets::list, secrets::get_one, secrets::put, secrets::delete_one, secrets::history,
        secrets::keys, secrets::rotate, secrets::retire,
        users::list, users::create, users::get_one, users::update, users::password,
        audit::list, audit::verify,
        schedules::list, schedules::get_one, schedules::next, schedules::pause, schedules::resume,
        schedules::run_now, schedules::delete_one,
        notify::list, notify::get_one, notify::put, notify::delete_one, notify::test, notify::history,
        approvals::list, approvals::get_one, approvals::approve, approvals::reject,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "auth", description = "Logins, refresh tokens, API tokens"),
        (name = "targets", description = "Where work runs"),
        (name = "jobs", description = "Versioned job definitions"),
        (name = "runs", description = "Runs, live logs, ad-hoc commands"),
        (name = "secrets", description = "Write-only secrets and master keys"),
        (name = "users", description = "Users and roles"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "schedules", description = "Cron schedules of jobs (created with /api/v1/apply)"),
        (name = "notifications", description = "Notification channels and delivery history"),
        (name = "ops", description = "Health, readiness, metrics"),
        (name = "approvals", description = "Runs waiting for approval and the decisions on them"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or opsc_ API token")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The whole application: every route with its layers, over `state`.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/targets", get(targets::list))
        .route(
            "/api/v1/targets/{name}",
            get(targets::get_one)
                .put(targets::put)
                .delete(targets::delete_one),
        )
        .route("/api/v1/targets/{name}/check", post(targets::check))
        .route("/api/v1/targets/{name}/trust", post(targets::trust))
        .route("/api/v1/targets/{name}/host-key", get(targets::host_key))
        .route("/api/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/api/v1/jobs/{name}", get(jobs::get_one).put(jobs::put))
        .route("/api/v1/jobs/{name}/versions", get(jobs::versions))
        .route("/api/v1/jobs/{name}/plan", post(plan::plan))
        .route("/api/v1/apply", post(jobs::apply))
        .route("/api/v1/runs", get(runs::list).post(runs::submit))
        .route("/api/v1/runs/{id}", get(runs::get_one))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/logs", get(runs::logs))
        .route("/api/v1/runs/{id}/ws", get(runs::ws))
        .route("/api/v1/exec", post(runs::exec))
        .route("/api/v1/secrets", get(secrets::list))
        .route(
            "/api/v1/secrets/{name}",
            get(secrets::get_one)
                .put(secrets::put)
                .delete(secrets::delete_one),
        )
        .route("/api/v1/secrets/{name}/history", get(secrets::history))
        .route("/api/v1/keys", get(secrets::keys))
        .route("/api/v1/keys/rotate", post(secrets::rotate))
        .route("/api/v1/keys/{version}/retire", post(secrets::retire))
        .route("/api/v1/users", get(users::list).post(users::create))
        .route(
            "/api/v1/users/{name}",
            get(users::get_one).patch(users::update),
        )
        .route("/api/v1/users/{name}/password", post(users::password))
        .route("/api/v1/auth/me", get(auth::me))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route(
            "/api/v1/auth/tokens",
            get(auth::tokens).post(auth::create_token),
        )
        .route("/api/v1/auth/tokens/{id}", delete(auth::revoke_token))
        .route("/api/v1/notifications/channels", get(notify::list))
        .route(
            "/api/v1/notifications/channels/{name}",
            get(notify::get_one)
                .put(notify::put)
                .delete(notify::delete_one),
        )
        .route(
            "/api/v1/notifications/channels/{name}/test",
            post(notify::test),
        )
        .route("/api/v1/notifications/deliveries", get(notify::history))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/verify", get(audit::verify))
        .route("/api/v1/schedules", get(schedules::list))
        .route(
            "/api/v1/schedules/{name}",
            get(schedules::get_one).delete(schedules::delete_one),
        )
        .route("/api/v1/schedules/{name}/next", get(schedules::next))
        .route("/api/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/api/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/api/v1/schedules/{name}/run-now", post(schedules::run_now))
        .route("/api/v1/approvals", get(approvals::list))
        .route("/api/v1/approvals/{id}", get(approvals::get_one))
        .route("/api/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/api/v1/approvals/{id}/reject", post(approvals::reject))
        .route_layer(from_fn_with_state(state.clone(), mw::audit_refusals))
        .route_layer(from_fn_with_state(state.clone(), authn::require_auth));
    let public = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/api/v1/openapi.json", get(ops::openapi_json))
        .route("/api/v1/docs", get(ops::docs))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/refresh", post(auth::refresh));
    let mut app = protected
        .merge(public)
        .fallback(|| async {
            ApiError::not_found("no such endpoint (the API is described at /api/v1/openapi.json)")
        })
        .layer(from_fn(mw::normalize_errors))
        .layer(from_fn_with_state(state.clone(), mw::security_headers))
        .layer(from_fn_with_state(state.clone(), mw::metrics))
        .layer(DefaultBodyLimit::max(state.inner.body_limit));
    if !state.inner.cors_origins.is_empty() {
        app = app.layer(cors(&state.inner.cors_origins));
    }
    app.layer(from_fn_with_state(state.clone(), mw::request_id))
        .with_state(state)
}

fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            header::LOCATION,
        ])
        .max_age(std::time::Duration::from_secs(600))
}
