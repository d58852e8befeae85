//! Cross-cutting layers: the request id (`X-Request-Id`, generated when
//! absent, on every response, in logs and in the engine's actor), the client
//! address, security headers, metrics per route, the one error shape for
//! errors produced outside handlers (unknown routes, wrong methods, bodies
//! too large…), and an audit event for every denied (403) request and
//! every failed mutation.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::Principal;
use crate::error::{ApiError, Shaped};
use crate::state::AppState;

/// The request id of a request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The client's address (the peer, or `X-Forwarded-For` when trusted).
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn acceptable_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    ok.then(|| s.to_string())
}

/// Takes the client's `X-Request-Id` if it is sane, else makes one; puts it
/// in the extensions, the tracing span and the response.
pub async fn request_id(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(acceptable_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let ip = client_ip(&req, state.inner.trust_forwarded_for);
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(ClientIp(ip.clone()));
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        client = %ip,
        // Filled in by the handlers that create a run.
        run_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let _g = span.enter();
    tracing::info!(
        status = res.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    res
}

fn client_ip(req: &Request, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for
        && let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
    {
        return first.to_string();
    }
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Counts requests by method, route template and status.
pub async fn metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Standard methods only as label values: a client must not be able to
    // grow the metrics without bound with made-up methods.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "OTHER".to_string(),
    };
    let started = Instant::now();
    let res = next.run(req).await;
    state.inner.metrics.http_request(
        &method,
        &route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// Sets the security headers on every response (without overriding a
/// handler's own, e.g. the docs page's CSP).
pub async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if state.inner.tls {
        set(
            h,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        );
    }
    res
}

/// Gives errors produced outside handlers (no route, wrong method, a layer's
/// refusal) the API's error shape.
pub async fn normalize_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res.extensions().get::<Shaped>().is_some()
    {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::not_found(format!(
            "no such endpoint: {method} {path} (the API is described at /api/v1/openapi.json)"
        )),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            format!("{method} is not allowed on {path} (allowed: {allow})"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "payload_too_large",
            "the request body is larger than the server's limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            non_empty(text, "unsupported Content-Type"),
        ),
        s if s.is_server_error() => {
            tracing::error!(status = s.as_u16(), body = %text, "error response from a layer");
            ApiError::new(status, "internal", "an unexpected error occurred")
        }
        s => ApiError::new(s, "bad_request", non_empty(text, "bad request")),
    };
    let mut out = err.into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

fn non_empty(text: String, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_string()
    } else {
        text
    }
}

/// Whether a mutation answered `status` failed in a way worth an audit
/// event of its own: the engine records a change only once it is done, so a
/// refused or failed attempt would otherwise leave no trace. 403 is
/// `request.denied`; 429 is left out (the limiter exists because such
/// requests come in floods, and each would add a row to the chain).
fn failed_mutation(status: StatusCode) -> bool {
    (status.is_client_error()
        && status != StatusCode::FORBIDDEN
        && status != StatusCode::TOO_MANY_REQUESTS)
        || status.is_server_error()
}

/// Records an audit event for every authenticated request answered 403
/// (`request.denied`, outcome `denied`) and for every authenticated
/// mutation (any method but GET, HEAD, OPTIONS) that failed with another
/// 4xx or a 5xx (`request.failed`, outcome `failed`): the engine audits what
/// it does, and a refusal or a rejected input does nothing, so the front
/// end records it. The error's code and field are kept, not its message,
/// which may quote the input (a mistyped secret, a password).
/// Unauthenticated requests are not recorded: there is no actor, and
/// anyone could fill the log with them (failed logins are audited by the
/// engine).
pub async fn audit_refusals(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let principal = req.extensions().get::<Principal>().cloned();
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let source = req.extensions().get::<ClientIp>().map(|c| c.0.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let mutation = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    let status = res.status();
    let Some(p) = principal else {
        return res;
    };
    let err = res.extensions().get::<ApiError>();
    let (action, detail) = if status == StatusCode::FORBIDDEN {
        let reason = err.map(|e| e.message.clone()).unwrap_or_default();
        (
            "request.denied",
            serde_json::json!({"outcome": "denied", "path": path, "reason": reason}),
        )
    } else if mutation && failed_mutation(status) {
        (
            "request.failed",
            serde_json::json!({
                "outcome": "failed",
                "path": path,
                "status": status.as_u16(),
                // Rejections by axum's own extractors carry no ApiError; the
                // error-shaping layer outside gives them their code later.
                "code": err.map(|e| e.code).unwrap_or(match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    s if s.is_server_error() => "internal",
                    _ => "bad_request",
                }),
                "field": err.and_then(|e| e.field.clone()),
            }),
        )
    } else {
        return res;
    };
    let mut actor = opsconductor::Actor::user(&p.username, p.role, p.via);
    actor.request_id = request_id;
    actor.source = source;
    state
        .inner
        .oc
        .record_audit(&actor, action, &format!("route:{method} {route}"), detail)
        .await;
    res
}
