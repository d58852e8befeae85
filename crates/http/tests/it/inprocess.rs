//! The router in-process (`tower::ServiceExt::oneshot`, no socket): the
//! server is a library, and what does not need a socket is tested without
//! one. Without a socket there is no client address; the audit log says
//! `unknown` then.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use opsconductor_http::{AppState, ServerConfig, router};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn app() -> axum::Router {
    let oc = opsconductor::open("sqlite::memory:").await.expect("engine");
    oc.ensure_admin(Some("correct horse battery staple"))
        .await
        .expect("admin");
    let state = AppState::new(oc, &ServerConfig::default(), &[42u8; 32]).expect("state");
    router(state)
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    assert!(res.headers().contains_key("x-request-id"));
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn login_and_read_without_a_socket() {
    let app = app().await;
    let (status, v) = call(
        &app,
        Request::get("/health").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, v) = call(
        &app,
        Request::get("/api/v1/targets")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthenticated");
    let login = Request::post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"username": "admin", "password": "correct horse battery staple"}).to_string(),
        ))
        .expect("req");
    let (status, v) = call(&app, login).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let token = v["access_token"].as_str().expect("token").to_string();
    let (status, v) = call(
        &app,
        Request::get("/api/v1/targets")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["items"][0]["name"], "local");
    let (status, v) = call(
        &app,
        Request::get("/nope").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}
