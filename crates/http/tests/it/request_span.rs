//! The request id reaches the run: the request's tracing span names the run
//! it created, the run record keeps the request id, and the worker's log
//! lines for the run carry it. The subscriber is the process's (the other
//! tests' lines land in it too, and are filtered out by request id); a
//! callsite another test registers while it is being installed could keep
//! the "no subscriber" interest, so the interest cache is rebuilt once the
//! engine is up, before anything this test looks for is logged.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use opsconductor_http::{AppState, ServerConfig, router};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn app() -> (axum::Router, opsconductor::Conductor) {
    let oc = opsconductor::open("sqlite::memory:").await.expect("engine");
    oc.ensure_admin(Some("correct horse battery staple"))
        .await
        .expect("admin");
    let state = AppState::new(oc.clone(), &ServerConfig::default(), &[42u8; 32]).expect("state");
    (router(state), oc)
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The request's span gets the run id, the run keeps the request id, and
/// the worker's span for the run names both.
#[tokio::test]
async fn the_request_span_names_the_run_it_created() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let (app, oc) = app().await;
    tracing::callsite::rebuild_interest_cache();
    let login = Request::post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"username": "admin", "password": "correct horse battery staple"}).to_string(),
        ))
        .expect("req");
    let (_, v) = call(&app, login).await;
    let token = v["access_token"].as_str().expect("token").to_string();
    let job = Request::post("/api/v1/jobs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": "hello", "steps": [{"name": "s", "exec": "echo hi"}]}).to_string(),
        ))
        .expect("req");
    let (status, v) = call(&app, job).await;
    assert!(status.is_success(), "{v}");
    let submit = Request::post("/api/v1/runs")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("x-request-id", "trace-me-42")
        .body(Body::from(json!({"job": "hello"}).to_string()))
        .expect("req");
    let (status, v) = call(&app, submit).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let run = v["id"].as_str().expect("id").to_string();
    assert_eq!(
        v["request_id"], "trace-me-42",
        "the run keeps the request id: {v}"
    );
    // The worker's lines for the run carry the request id too.
    let id = opsconductor::RunId(run.parse().expect("uuid"));
    let done = oc.execute(id).await.expect("execute");
    assert_eq!(done.request_id.as_deref(), Some("trace-me-42"));
    let text =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|e| e.into_inner())).to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request_id=trace-me-42"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("run queued") && l.contains(&format!("run_id={run}"))),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("run started") && l.contains(&format!("run_id={run}"))),
        "{text}"
    );
    // The request's closing line too.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" request") && l.contains("status=201") && l.contains(&run)),
        "{text}"
    );
}
