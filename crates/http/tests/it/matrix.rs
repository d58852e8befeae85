//! Every endpoint × every role, over real HTTP, on SQLite and PostgreSQL.
//! The expected answer comes from the core's permission table
//! (`opsconductor::auth::MATRIX` via `allows`): 2xx when the role holds the
//! permission, 403 (in the error shape, and audited) when not, 401 without
//! or with a bad token. The table below must name every operation of the
//! OpenAPI document and use every permission of the matrix;
//! WebSocket endpoints are checked by a real handshake.

use crate::common;

use std::collections::BTreeSet;

use common::{Backend, HELLO_JOB, Srv, expect_error};
use opsconductor::auth::{MATRIX, Permission, Role, allows};
use reqwest::Method;
use serde_json::{Value, json};

/// What an endpoint needs.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// A permission of the matrix.
    Perm(Permission),
    /// Only to be authenticated (own account, own tokens).
    Any,
}

/// One row: method, path (with `{role}` and `{run}` filled in), body, need,
/// and the status an allowed caller gets when it is not a plain 2xx.
struct Case {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    need: Need,
    allowed_status: Option<u16>,
}

fn case(method: Method, path: &'static str, body: Option<Value>, need: Need) -> Case {
    Case {
        method,
        path,
        body,
        need,
        allowed_status: None,
    }
}

fn cases() -> Vec<Case> {
    use Method as M;
    use Need::*;
    use Permission as P;
    let job = |name: &str| json!({"name": name, "steps": [{"name": "s", "exec": "echo hi"}]});
    vec![
        case(M::GET, "/api/v1/auth/me", None, Any),
        case(M::GET, "/api/v1/auth/tokens", None, Any),
        case(
            M::POST,
            "/api/v1/auth/tokens",
            Some(json!({"name": "mine", "role": "viewer"})),
            Any,
        ),
        case(M::DELETE, "/api/v1/auth/tokens/{token}", None, Any),
        case(M::GET, "/api/v1/users/{role}-user", None, Any),
        case(M::GET, "/api/v1/targets", None, Perm(P::Read)),
        case(M::GET, "/api/v1/targets/local", None, Perm(P::Read)),
        case(M::GET, "/api/v1/jobs", None, Perm(P::Read)),
        case(M::GET, "/api/v1/jobs/hello", None, Perm(P::Read)),
        case(M::GET, "/api/v1/jobs/hello/versions", None, Perm(P::Read)),
        case(M::GET, "/api/v1/runs", None, Perm(P::Read)),
        case(M::GET, "/api/v1/runs/{run}", None, Perm(P::Read)),
        case(M::GET, "/api/v1/runs/{run}/logs", None, Perm(P::Read)),
        case(M::GET, "/api/v1/secrets", None, Perm(P::Read)),
        case(M::GET, "/api/v1/secrets/s1", None, Perm(P::Read)),
        case(M::GET, "/api/v1/secrets/s1/history", None, Perm(P::Read)),
        case(
            M::GET,
            "/api/v1/notifications/channels",
            None,
            Perm(P::Read),
        ),
        case(
            M::GET,
            "/api/v1/notifications/channels/s1",
            None,
            Perm(P::Read),
        ),
        case(
            M::GET,
            "/api/v1/notifications/deliveries",
            None,
            Perm(P::Read),
        ),
        case(
            M::PUT,
            "/api/v1/notifications/channels/c-{role}",
            Some(json!({"kind": "webhook", "url": "https://hooks.example.com/x"})),
            Perm(P::ManageSettings),
        ),
        case(
            M::DELETE,
            "/api/v1/notifications/channels/dc-{role}",
            None,
            Perm(P::ManageSettings),
        ),
        // Nothing listens on port 9: allowed, the answer says "not delivered".
        case(
            M::POST,
            "/api/v1/notifications/channels/s1/test",
            None,
            Perm(P::ManageSettings),
        ),
        case(M::GET, "/api/v1/audit", None, Perm(P::ReadAudit)),
        case(M::GET, "/api/v1/schedules", None, Perm(P::Read)),
        case(M::GET, "/api/v1/schedules/hello", None, Perm(P::Read)),
        case(M::GET, "/api/v1/schedules/hello/next", None, Perm(P::Read)),
        case(
            M::POST,
            "/api/v1/schedules/hello/pause",
            None,
            Perm(P::ManageSchedules),
        ),
        case(
            M::POST,
            "/api/v1/schedules/hello/resume",
            None,
            Perm(P::ManageSchedules),
        ),
        Case {
            allowed_status: Some(201),
            ..case(
                M::POST,
                "/api/v1/schedules/hello/run-now",
                None,
                Perm(P::Run),
            )
        },
        case(
            M::DELETE,
            "/api/v1/schedules/ds-{role}",
            None,
            Perm(P::ManageSchedules),
        ),
        case(M::GET, "/api/v1/audit/verify", None, Perm(P::ReadAudit)),
        case(
            M::POST,
            "/api/v1/runs",
            Some(json!({"job": "hello"})),
            Perm(P::Run),
        ),
        case(
            M::POST,
            "/api/v1/exec",
            Some(json!({"command": "true"})),
            Perm(P::Run),
        ),
        case(M::POST, "/api/v1/runs/{run}/cancel", None, Perm(P::Cancel)),
        case(
            M::POST,
            "/api/v1/jobs/hello/plan",
            Some(json!({})),
            Perm(P::Run),
        ),
        case(
            M::PUT,
            "/api/v1/jobs/j-{role}",
            Some(job("j-{role}")),
            Perm(P::ManageJobs),
        ),
        case(
            M::POST,
            "/api/v1/jobs",
            Some(job("p-{role}")),
            Perm(P::ManageJobs),
        ),
        case(
            M::POST,
            "/api/v1/apply",
            Some(json!([{"kind": "Job", "name": "a-{role}", "steps": [{"exec": "true"}]}])),
            Perm(P::ManageJobs),
        ),
        case(
            M::PUT,
            "/api/v1/targets/t-{role}",
            Some(json!({"connection": {"type": "local"}, "tags": ["x"]})),
            Perm(P::ManageTargets),
        ),
        case(
            M::DELETE,
            "/api/v1/targets/d-{role}",
            None,
            Perm(P::ManageTargets),
        ),
        case(
            M::POST,
            "/api/v1/targets/local/check",
            None,
            Perm(P::ManageTargets),
        ),
        Case {
            // `local` has no host key: allowed, but not applicable.
            allowed_status: Some(422),
            ..case(
                M::GET,
                "/api/v1/targets/local/host-key",
                None,
                Perm(P::ManageTargets),
            )
        },
        Case {
            allowed_status: Some(422),
            ..case(
                M::POST,
                "/api/v1/targets/local/trust",
                Some(json!({"fingerprint": "SHA256:abc"})),
                Perm(P::ManageTargets),
            )
        },
        case(
            M::PUT,
            "/api/v1/secrets/s-{role}",
            Some(json!({"value": "a-long-enough-secret-value", "kind": "token"})),
            Perm(P::ManageSecrets),
        ),
        case(
            M::DELETE,
            "/api/v1/secrets/ds-{role}",
            None,
            Perm(P::ManageSecrets),
        ),
        case(M::GET, "/api/v1/keys", None, Perm(P::ManageKeys)),
        case(M::POST, "/api/v1/keys/rotate", None, Perm(P::ManageKeys)),
        // After the rotation above, version 1 is no longer used.
        case(M::POST, "/api/v1/keys/1/retire", None, Perm(P::ManageKeys)),
        case(M::GET, "/api/v1/users", None, Perm(P::ManageUsers)),
        case(
            M::POST,
            "/api/v1/users",
            Some(json!({"username": "u-{role}", "password": common::PASSWORD, "role": "viewer"})),
            Perm(P::ManageUsers),
        ),
        case(
            M::GET,
            "/api/v1/users/victim-{role}",
            None,
            Perm(P::ManageUsers),
        ),
        case(
            M::PATCH,
            "/api/v1/users/victim-{role}",
            Some(json!({"disabled": true})),
            Perm(P::ManageUsers),
        ),
        case(
            M::POST,
            "/api/v1/users/victim-{role}/password",
            Some(json!({"new_password": "another long password"})),
            Perm(P::ManageUsers),
        ),
        case(M::GET, "/api/v1/approvals", None, Perm(P::Read)),
        Case {
            // `{run}` needed no approval: allowed callers learn that (404)
            // only after the permission check.
            allowed_status: Some(404),
            ..case(M::GET, "/api/v1/approvals/{run}", None, Perm(P::Read))
        },
        Case {
            allowed_status: Some(404),
            ..case(
                M::POST,
                "/api/v1/approvals/{run}/approve",
                Some(json!({"comment": "ok"})),
                Perm(P::Approve),
            )
        },
        Case {
            allowed_status: Some(404),
            ..case(
                M::POST,
                "/api/v1/approvals/{run}/reject",
                Some(json!({"reason": "no"})),
                Perm(P::Approve),
            )
        },
        // Last: logging out ends this login.
        case(M::POST, "/api/v1/auth/logout", None, Any),
    ]
}

/// WebSocket endpoints: path and permission. They are not plain requests
/// (a GET without the upgrade is a 400), so they get a real handshake.
const WS_CASES: &[(&str, Permission)] = &[("/api/v1/runs/{run}/ws", Permission::Read)];

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket handshake with an optional bearer token: the socket, or the
/// status the server refused it with.
async fn ws_handshake(srv: &Srv, path: &str, token: Option<&str>) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", srv.base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().expect("ws request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101, "{path}");
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket {path}: {e}"),
    }
}

/// Reads a log stream to its `end` message; returns that message.
async fn ws_until_end(ws: &mut Ws) -> Value {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON message");
                if v["type"] == "end" {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("WebSocket error: {e}"),
            None => panic!("the stream closed without an `end` message"),
        }
    }
}

fn fill(text: &str, role: Role, run: &str, token: &str) -> String {
    text.replace("{role}", role.as_str())
        .replace("{run}", run)
        .replace("{token}", token)
}

fn fill_value(v: &Value, role: Role, run: &str) -> Value {
    match v {
        Value::String(s) => Value::String(fill(s, role, run, "")),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill_value(x, role, run)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), fill_value(x, role, run)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Objects the cases act on, per role (so one role's deletion does not
/// change another's answer).
async fn fixtures(srv: &Srv) -> String {
    srv.job(HELLO_JOB).await;
    let mut docs =
        vec![json!({"kind": "Schedule", "name": "hello", "job": "hello", "cron": "@daily"})];
    for role in Role::ALL {
        docs.push(json!({"kind": "Schedule", "name": format!("ds-{role}"), "job": "hello", "cron": "@daily"}));
    }
    let r = srv
        .post("/api/v1/apply", &srv.admin, serde_json::Value::Array(docs))
        .await;
    assert_eq!(r.status(), 200, "schedules");
    let r = srv
        .put(
            "/api/v1/secrets/s1",
            &srv.admin,
            json!({"value": "first-secret-value-123"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let hook = json!({"kind": "webhook", "url": "http://127.0.0.1:9/"});
    let r = srv
        .put(
            "/api/v1/notifications/channels/s1",
            &srv.admin,
            hook.clone(),
        )
        .await;
    assert_eq!(r.status(), 200, "channel s1");
    for role in Role::ALL {
        let r = srv
            .put(
                &format!("/api/v1/notifications/channels/dc-{role}"),
                &srv.admin,
                hook.clone(),
            )
            .await;
        assert_eq!(r.status(), 200, "channel dc-{role}");
        let r = srv
            .put(
                &format!("/api/v1/targets/d-{role}"),
                &srv.admin,
                json!({"connection": {"type": "local"}}),
            )
            .await;
        assert_eq!(r.status(), 201, "target d-{role}");
        let r = srv
            .put(
                &format!("/api/v1/secrets/ds-{role}"),
                &srv.admin,
                json!({"value": "to-be-deleted-value"}),
            )
            .await;
        assert_eq!(r.status(), 201, "secret ds-{role}");
        let r = srv
            .post(
                "/api/v1/users",
                &srv.admin,
                json!({"username": format!("victim-{role}"), "password": common::PASSWORD, "role": "viewer"}),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    srv.submit("hello", json!({})).await
}

/// A fresh API token of the caller's own, for the revocation case.
async fn own_token(srv: &Srv, token: &str) -> String {
    let r = srv
        .post("/api/v1/auth/tokens", token, json!({"name": "to revoke"}))
        .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("token");
    v["id"].as_str().expect("id").to_string()
}

async fn every_endpoint_for_every_role(backend: Backend) {
    // The cases run jobs and create targets on `local`; the local policy
    // (admin only by default) is tested by `tests/it/local.rs`, so this table
    // tests the permission matrix alone with operators allowed there too.
    let srv = Srv::start_with(backend, |c| {
        c.local_allow_roles = vec![Role::Admin, Role::Operator];
    })
    .await;
    let run = fixtures(&srv).await;
    let table = cases();
    for role in Role::ALL {
        let token = srv.user(role).await.access;
        let revoke_id = own_token(&srv, &token).await;
        for c in &table {
            let path = fill(c.path, role, &run, &revoke_id);
            let mut rb = srv.req(c.method.clone(), &path, Some(&token));
            if let Some(b) = &c.body {
                rb = rb.json(&fill_value(b, role, &run));
            }
            let r = rb.send().await.expect("request");
            let allowed = match c.need {
                Need::Any => true,
                Need::Perm(p) => allows(role, p),
            };
            let status = r.status().as_u16();
            let what = format!("{role}: {} {path} (needs {:?})", c.method, c.need);
            if allowed {
                let text = r.text().await.unwrap_or_default();
                match c.allowed_status {
                    Some(s) => assert_eq!(status, s, "{what}: {text}"),
                    None => assert!((200..300).contains(&status), "{what}: got {status}: {text}"),
                }
            } else {
                let body = expect_error(r, 403, "forbidden").await;
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains(role.as_str()),
                    "{what}: the message names the role: {body}"
                );
            }
        }
    }
    // The WebSocket endpoints, by handshake: the stream for a role holding
    // the permission, 403 for one without, 401 without or with a bad token.
    for (path, perm) in WS_CASES {
        let path = fill(path, Role::Admin, &run, "");
        for role in Role::ALL {
            let token = srv.user(role).await.access;
            let what = format!("{role}: WebSocket {path} (needs {perm:?})");
            match (
                allows(role, *perm),
                ws_handshake(&srv, &path, Some(&token)).await,
            ) {
                (true, Ok(mut ws)) => {
                    let end = ws_until_end(&mut ws).await;
                    assert_eq!(end["status"], "succeeded", "{what}: {end}");
                }
                (false, Err(status)) => assert_eq!(status, 403, "{what}"),
                (true, Err(status)) => panic!("{what}: refused with {status}"),
                (false, Ok(_)) => panic!("{what}: accepted"),
            }
        }
        assert_eq!(
            ws_handshake(&srv, &path, None).await.err(),
            Some(401),
            "{path}"
        );
        assert_eq!(
            ws_handshake(&srv, &path, Some("not-a-token")).await.err(),
            Some(401),
            "{path}"
        );
    }
    // Without a token, and with a bad one: 401 everywhere (the public routes aside).
    for c in &table {
        let path = fill(c.path, Role::Admin, &run, "x");
        let r = srv
            .req(c.method.clone(), &path, None)
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"opsconductor\""),
            "{path}"
        );
        expect_error(r, 401, "unauthenticated").await;
        let r = srv
            .req(c.method.clone(), &path, Some("not-a-token"))
            .send()
            .await
            .expect("request");
        expect_error(r, 401, "unauthenticated").await;
    }
    // Every refusal was audited.
    let audit: Value = srv
        .get(
            "/api/v1/audit?object=route:GET%20/api/v1/users&limit=50",
            &srv.admin,
        )
        .await
        .json()
        .await
        .expect("audit");
    let denied: Vec<&Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "request.denied")
        .collect();
    assert_eq!(
        denied.len(),
        2,
        "viewer and operator were refused GET /api/v1/users: {audit}"
    );
    assert!(denied.iter().all(|e| e["detail"]["request_id"].is_string()
        && e["detail"]["source"] == "127.0.0.1"
        && e["detail"]["outcome"] == "denied"));
    srv.stop().await;
}

on_both!(every_endpoint_for_every_role);

/// The table covers every operation of the OpenAPI document (apart from the
/// public ones) and every permission of the matrix.
#[test]
fn the_table_covers_the_api_and_the_matrix() {
    let doc: Value =
        serde_json::to_value(opsconductor_http::api::openapi()).expect("openapi as JSON");
    let public = [
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
    ];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if public.contains(&path.as_str()) {
            continue;
        }
        for m in item.as_object().expect("item").keys() {
            documented.insert(format!("{} {path}", m.to_uppercase()));
        }
    }
    let normalise = |p: &str| {
        let mut out = Vec::new();
        for seg in p.split('/') {
            out.push(match seg {
                "{run}" => "{id}".to_string(),
                "{token}" => "{id}".to_string(),
                "1" => "{version}".to_string(),
                s if s.contains("{role}") || s == "s1" || s == "local" || s == "hello" => {
                    "{name}".to_string()
                }
                s => s.to_string(),
            });
        }
        out.join("/")
    };
    let tested: BTreeSet<String> = cases()
        .iter()
        .map(|c| format!("{} {}", c.method, normalise(c.path)))
        .chain(
            WS_CASES
                .iter()
                .map(|(p, _)| format!("GET {}", normalise(p))),
        )
        .collect();
    let missing: Vec<&String> = documented.difference(&tested).collect();
    assert!(
        missing.is_empty(),
        "operations without a matrix row: {missing:?}"
    );
    for (perm, _) in MATRIX {
        assert!(
            cases()
                .iter()
                .any(|c| matches!(c.need, Need::Perm(p) if p == *perm)),
            "no endpoint exercises {perm:?}"
        );
    }
}
