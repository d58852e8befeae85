//! Every error shape over real HTTP — bodies too large (413), malformed
//! JSON, JSON nested too deep, wrong types, unknown fields, wrong content
//! types, unknown routes and methods, bad query strings and cursors — plus
//! what every response carries: `X-Request-Id` and the security headers;
//! and HTTPS with HSTS, CORS off by default, health, readiness, metrics and
//! the API description.

use crate::common;

use common::{Backend, HELLO_JOB, Srv, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_always_4xx_in_one_shape() {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.body_limit = 4096;
        c.json_depth = 16;
    })
    .await;
    srv.job(HELLO_JOB).await;
    let post_raw = |path: &'static str, ct: &'static str, body: Vec<u8>| {
        let srv = &srv;
        async move {
            srv.req(Method::POST, path, Some(&srv.admin))
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .expect("request")
        }
    };
    let json_ct = "application/json";
    // 413: a body over the limit (with and without a Content-Length that says so).
    let big = format!(
        "{{\"job\": \"hello\", \"params\": {{\"name\": \"{}\"}}}}",
        "x".repeat(10_000)
    );
    expect_error(
        post_raw("/api/v1/runs", json_ct, big.clone().into_bytes()).await,
        413,
        "payload_too_large",
    )
    .await;
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = srv
        .req(Method::POST, "/api/v1/runs", Some(&srv.admin))
        .header("content-type", json_ct)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("chunked");
    expect_error(r, 413, "payload_too_large").await;
    // 400: malformed JSON, empty body, not UTF-8.
    expect_error(
        post_raw("/api/v1/runs", json_ct, b"{\"job\": ".to_vec()).await,
        400,
        "malformed_json",
    )
    .await;
    expect_error(
        post_raw("/api/v1/runs", json_ct, b"{'job': 'hello'}".to_vec()).await,
        400,
        "malformed_json",
    )
    .await;
    expect_error(
        post_raw("/api/v1/runs", json_ct, vec![]).await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        post_raw("/api/v1/runs", json_ct, vec![0xff, 0xfe, b'{']).await,
        400,
        "malformed_json",
    )
    .await;
    // 400: too deep (checked before parsing), also inside free-form parameters.
    let deep = format!(
        "{{\"job\": \"hello\", \"params\": {{\"a\": {}1{}}}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    expect_error(
        post_raw("/api/v1/runs", json_ct, deep.into_bytes()).await,
        400,
        "too_deep",
    )
    .await;
    let deeper = "[".repeat(100_000);
    expect_error(
        post_raw("/api/v1/apply", json_ct, deeper.into_bytes()).await,
        413,
        "payload_too_large",
    )
    .await;
    expect_error(
        post_raw("/api/v1/apply", json_ct, "[".repeat(3000).into_bytes()).await,
        400,
        "too_deep",
    )
    .await;
    // 422: wrong types and unknown fields, naming the field.
    let body = expect_error(
        post_raw("/api/v1/runs", json_ct, br#"{"job": 42}"#.to_vec()).await,
        422,
        "validation",
    )
    .await;
    assert_eq!(body["error"]["field"], "job");
    let body = expect_error(
        post_raw(
            "/api/v1/runs",
            json_ct,
            br#"{"job": "hello", "version": "one"}"#.to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert_eq!(body["error"]["field"], "version");
    let body = expect_error(
        post_raw(
            "/api/v1/runs",
            json_ct,
            br#"{"job": "hello", "priority": 1}"#.to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("priority"),
        "{body}"
    );
    let body = expect_error(
        post_raw(
            "/api/v1/runs",
            json_ct,
            br#"{"job": "hello", "version": -1}"#.to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert_eq!(body["error"]["field"], "version");
    expect_error(
        post_raw("/api/v1/runs", json_ct, br#"[1,2]"#.to_vec()).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        post_raw(
            "/api/v1/runs",
            json_ct,
            br#"{"job": "hello", "params": [1]}"#.to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    // 422 from the engine: parameters against the job's schema, with the field.
    let body = expect_error(
        post_raw(
            "/api/v1/runs",
            json_ct,
            br#"{"job": "hello", "params": {"name": 5}}"#.to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert!(
        body["error"]["field"]
            .as_str()
            .unwrap_or("")
            .contains("name"),
        "{body}"
    );
    // 404 with a hint; 409 for a deprecated job.
    let body = expect_error(
        post_raw("/api/v1/runs", json_ct, br#"{"job": "nope"}"#.to_vec()).await,
        404,
        "not_found",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("hello"),
        "names the known jobs: {body}"
    );
    srv.job("kind: Job\nname: old\nstatus: deprecated\nsteps:\n  - exec: 'true'\n")
        .await;
    expect_error(
        post_raw("/api/v1/runs", json_ct, br#"{"job": "old"}"#.to_vec()).await,
        409,
        "conflict",
    )
    .await;
    // 415: a content type the endpoint does not take.
    expect_error(
        post_raw("/api/v1/runs", "text/plain", b"hello".to_vec()).await,
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        post_raw("/api/v1/apply", "application/xml", b"<a/>".to_vec()).await,
        415,
        "unsupported_media_type",
    )
    .await;
    // YAML errors say where.
    let body = expect_error(
        post_raw(
            "/api/v1/apply",
            "application/yaml",
            b"kind: Job\nname: x\nsteps: [\n".to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert!(
        body["error"]["field"]
            .as_str()
            .unwrap_or("")
            .contains("body"),
        "{body}"
    );
    let body = expect_error(
        post_raw(
            "/api/v1/apply",
            "application/yaml",
            b"kind: Job\nname: bad name!\nsteps:\n  - exec: 'true'\n".to_vec(),
        )
        .await,
        422,
        "validation",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("bad name!"),
        "{body}"
    );
    // The URL and the body must agree on the name.
    let r = srv
        .put(
            "/api/v1/jobs/one",
            &srv.admin,
            json!({"name": "two", "steps": [{"exec": "true"}]}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    // 404 and 405 from the router, in the same shape.
    expect_error(
        srv.get("/api/v1/nothing-here", &srv.admin).await,
        404,
        "not_found",
    )
    .await;
    expect_error(srv.get("/nothing", &srv.admin).await, 404, "not_found").await;
    let r = srv
        .req(Method::DELETE, "/api/v1/runs", Some(&srv.admin))
        .send()
        .await
        .expect("delete");
    assert!(r.headers().get("allow").is_some());
    expect_error(r, 405, "method_not_allowed").await;
    // Query strings: wrong types, unknown parameters, out-of-range limits, foreign cursors.
    expect_error(
        srv.get("/api/v1/runs?limit=abc", &srv.admin).await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs?colour=red", &srv.admin).await,
        400,
        "bad_request",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs?limit=0", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs?limit=100000", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs?status=sleeping", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs?cursor=!!!", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get(
            "/api/v1/runs?before=0190a0a0-0000-7000-8000-000000000000",
            &srv.admin,
        )
        .await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get("/api/v1/targets?sort=size", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs/not-a-run", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    expect_error(
        srv.get(
            "/api/v1/runs/0190a0a0-0000-7000-8000-000000000000",
            &srv.admin,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        srv.req(Method::POST, "/api/v1/keys/x/retire", Some(&srv.admin))
            .send()
            .await
            .expect("retire"),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        srv.get("/api/v1/runs/abcd/logs?after=-1", &srv.admin).await,
        400,
        "bad_request",
    )
    .await;
    let r = srv
        .req(Method::GET, "/api/v1/runs/abcd/logs", Some(&srv.admin))
        .header("accept", "text/event-stream")
        .header("last-event-id", "x")
        .send()
        .await
        .expect("sse");
    assert!(r.status().is_client_error());
    // Secrets: exactly one of value / value_base64, valid base64.
    let r = srv.put("/api/v1/secrets/s", &srv.admin, json!({})).await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .put(
            "/api/v1/secrets/s",
            &srv.admin,
            json!({"value_base64": "%%%"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .put(
            "/api/v1/secrets/bad%20name",
            &srv.admin,
            json!({"value": "x-long-enough-value"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_ids_and_security_headers() {
    let srv = Srv::start(Backend::Sqlite).await;
    let r = srv
        .req(Method::GET, "/api/v1/auth/me", Some(&srv.admin))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .expect("me");
    let h = r.headers();
    assert_eq!(h["x-request-id"], "trace-abc.123", "a sane id is kept");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap_or("")
            .contains("default-src 'none'")
    );
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    assert!(h.get("access-control-allow-origin").is_none());
    for bad in ["has spaces in it", &"x".repeat(300), "<script>"] {
        let r = srv
            .req(Method::GET, "/health", None)
            .header("x-request-id", bad)
            .send()
            .await
            .expect("health");
        let id = r.headers()["x-request-id"]
            .to_str()
            .unwrap_or("")
            .to_string();
        assert!(
            !id.is_empty() && id != bad,
            "an unsafe id is replaced: {id}"
        );
    }
    // Errors carry them too, and the id reaches the audit log (a denied request).
    let viewer = srv.user(opsconductor::auth::Role::Viewer).await;
    let r = srv
        .req(Method::GET, "/api/v1/users", Some(&viewer.access))
        .header("x-request-id", "denied-req-1")
        .send()
        .await
        .expect("users");
    assert_eq!(r.headers()["x-request-id"], "denied-req-1");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    expect_error(r, 403, "forbidden").await;
    let audit: Value = srv
        .get("/api/v1/audit?limit=5", &srv.admin)
        .await
        .json()
        .await
        .expect("audit");
    assert!(
        audit["items"].as_array().expect("items").iter().any(|e| e["action"] == "request.denied" && e["detail"]["request_id"] == "denied-req-1"),
        "{audit}"
    );
    // CORS is off: a preflight gets no CORS headers.
    let r = srv
        .req(Method::OPTIONS, "/api/v1/runs", None)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_when_configured() {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.cors_origins = vec!["https://ui.example".into()]
    })
    .await;
    let r = srv
        .req(Method::OPTIONS, "/api/v1/runs", None)
        .header("origin", "https://ui.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ui.example"
    );
    let r = srv
        .req(Method::GET, "/health", None)
        .header("origin", "https://other.example")
        .send()
        .await
        .expect("get");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_hsts() {
    let dir = tempfile::tempdir().expect("dir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    assert!(srv.base.starts_with("https://"));
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("pem")])
        .build()
        .expect("client");
    let r = client.get(srv.url("/health")).send().await.expect("https");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()
            .unwrap_or("")
            .contains("max-age="),
        "HSTS over HTTPS"
    );
    // Plain HTTP to the TLS port fails rather than answering in clear.
    let plain = srv.base.replace("https://", "http://");
    assert!(
        common::client()
            .get(format!("{plain}/health"))
            .send()
            .await
            .is_err()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_configuration_is_refused_at_start() {
    let mut c = common::test_config("sqlite::memory:".into());
    c.tls_cert = Some("/nonexistent/cert.pem".into());
    c.tls_key = Some("/nonexistent/key.pem".into());
    let e = opsconductor_http::start(c)
        .await
        .expect_err("missing files");
    assert!(e.to_string().contains("tls_cert"), "{e}");
    let mut c = common::test_config("sqlite::memory:".into());
    c.jwt_secret = Some("short".into());
    let e = opsconductor_http::start(c).await.expect_err("short secret");
    assert!(e.to_string().contains("32 bytes"), "{e}");
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = common::test_config("sqlite::memory:".into());
    c.listen = taken.local_addr().expect("addr");
    let e = opsconductor_http::start(c).await.expect_err("port in use");
    assert!(e.to_string().contains("cannot listen"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_ready_metrics_and_the_api_description() {
    let srv = Srv::start(Backend::Sqlite).await;
    let h: Value = srv
        .client
        .get(srv.url("/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(h["status"], "ok");
    let r = srv
        .client
        .get(srv.url("/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (
            v["status"].as_str(),
            v["database"].as_str(),
            v["workers"].as_u64()
        ),
        (Some("ready"), Some("ok"), Some(2))
    );
    // A run, then the metrics show it with the HTTP requests by route.
    srv.job(HELLO_JOB).await;
    let id = srv.submit("hello", json!({})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "succeeded");
    let mut text = String::new();
    for _ in 0..50 {
        text = srv.metrics().await;
        if text.contains("opsc_runs_finished_total{status=\"succeeded\"}") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for needle in [
        "opsc_http_requests_total{method=\"POST\",route=\"/api/v1/runs\",status=\"201\"}",
        "opsc_http_request_duration_seconds_bucket",
        "opsc_runs_finished_total{status=\"succeeded\"} 1",
        "opsc_run_duration_seconds",
        "opsc_step_duration_seconds",
        "opsc_queue_depth",
        "opsc_runs_running",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // The OpenAPI document and the offline docs page.
    let doc: Value = srv
        .client
        .get(srv.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/runs/{id}/logs"]["get"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let r = srv
        .client
        .get(srv.url("/api/v1/docs"))
        .send()
        .await
        .expect("docs");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html")
    );
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(!csp.contains("script-src"), "{csp}");
    let html = r.text().await.expect("html");
    assert!(
        html.contains("/api/v1/auth/login")
            && !html.contains("<script")
            && !html.contains("http://")
            && !html.contains("https://")
    );
    // Shutting down: /ready says so while draining (checked through the state), and the server stops.
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_can_require_authentication() {
    let srv = Srv::start_with(Backend::Sqlite, |c| c.metrics_public = false).await;
    expect_error(
        srv.client
            .get(srv.url("/metrics"))
            .send()
            .await
            .expect("metrics"),
        401,
        "unauthenticated",
    )
    .await;
    let r = srv.get("/metrics", &srv.admin).await;
    assert_eq!(r.status(), 200);
    srv.stop().await;
}

async fn ready(srv_url: &str, client: &reqwest::Client) -> (u16, Value) {
    let r = client
        .get(format!("{srv_url}/ready"))
        .send()
        .await
        .expect("ready");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_is_503_once_the_workers_stopped() {
    let srv = Srv::start(Backend::Sqlite).await;
    let (status, v) = ready(&srv.base, &srv.client).await;
    assert_eq!(
        (status, v["workers_running"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    // Stop the engine's workers behind the server's back: the configured
    // count is unchanged, but nothing would execute a run any more.
    srv.running
        .as_ref()
        .expect("running")
        .conductor()
        .shutdown()
        .await;
    let (status, v) = ready(&srv.base, &srv.client).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(
        (
            v["status"].as_str(),
            v["database"].as_str(),
            v["workers"].as_u64(),
            v["workers_running"].as_bool()
        ),
        (Some("not_ready"), Some("ok"), Some(2), Some(false)),
        "{v}"
    );
    srv.stop().await;

    // An API-only server (no workers) is ready without any.
    let srv = Srv::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let (status, v) = ready(&srv.base, &srv.client).await;
    assert_eq!(
        (status, v["workers_running"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_is_503_while_postgres_is_down() {
    // A private PostgreSQL server: stopping the shared one would disturb other tests.
    let pg = tokio::task::spawn_blocking(opsconductor_store::testing::pg::TestPg::start)
        .await
        .expect("PostgreSQL test server");
    let url = pg.create_database().await;
    let dir = tempfile::tempdir().expect("dir");
    let oc = common::postgres_engine(&url, dir.path()).await;
    let running = opsconductor_http::start_with(oc, common::test_config(url))
        .await
        .expect("server");
    let base = running.url();
    let client = common::client();
    let (status, v) = ready(&base, &client).await;
    assert_eq!((status, v["database"].as_str()), (200, Some("ok")), "{v}");

    let pg = std::sync::Arc::new(pg);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop_immediate())
        .await
        .expect("stop");
    let (status, v) = ready(&base, &client).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "not_ready", "{v}");
    assert_ne!(v["database"], "ok", "{v}");

    // Back up: ready again once the pool reconnects.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again())
        .await
        .expect("start");
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, v) = ready(&base, &client).await;
        if status == 200 {
            last = Value::Null;
            break;
        }
        last = v;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        last,
        Value::Null,
        "still not ready after PostgreSQL came back"
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executor_errors_are_counted() {
    let srv = Srv::start(Backend::Sqlite).await;
    let errors = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("opsc_executor_errors_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .map(|n| n as u64)
            .unwrap_or(0)
    };
    assert_eq!(errors(&srv.metrics().await), 0);
    // An SSH target at a closed port: the executor cannot even connect (or,
    // in a build without SSH, there is no executor for it) — either way the
    // step fails without an exit code.
    let r = srv
        .put(
            "/api/v1/targets/dead",
            &srv.admin,
            json!({"connection": {"type": "ssh", "host": "127.0.0.1", "port": 1, "user": "ops"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = srv
        .post(
            "/api/v1/exec",
            &srv.admin,
            json!({"command": "true", "targets": ["dead"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("run")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let mut text = String::new();
    for _ in 0..50 {
        text = srv.metrics().await;
        if errors(&text) >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(errors(&text), 1, "{text}");
    // A step that ran and exited non-zero is not an executor error.
    let r = srv
        .post("/api/v1/exec", &srv.admin, json!({"command": "exit 3"}))
        .await;
    let id = r.json::<Value>().await.expect("run")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(srv.wait_run(&id).await["status"], "failed");
    for _ in 0..20 {
        text = srv.metrics().await;
        if text.contains("opsc_runs_finished_total{status=\"failed\"} 2") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("opsc_runs_finished_total{status=\"failed\"} 2"),
        "{text}"
    );
    assert_eq!(errors(&text), 1, "{text}");
    srv.stop().await;
}
