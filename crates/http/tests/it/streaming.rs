//! Live logs over real HTTP: Server-Sent Events and WebSocket, from any
//! sequence number, resumed after a disconnect (`Last-Event-ID` / `?after=`)
//! without gaps or duplicates, ending when the run ends — also when the run
//! executes on another server sharing the database.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, COUNTER_JOB, Srv, expect_error};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Ev {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Reads SSE events from `base` + `path` until `stop` says so or the stream ends.
async fn sse(
    srv: &Srv,
    base: &str,
    path: &str,
    last_event_id: Option<u64>,
    mut stop: impl FnMut(&Ev) -> bool,
) -> Vec<Ev> {
    let mut rb = srv
        .client
        .request(Method::GET, format!("{base}{path}"))
        .bearer_auth(&srv.admin)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        rb = rb.header("last-event-id", id.to_string());
    }
    let r = rb.send().await.expect("sse");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let mut body = r.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("an event within 30 s");
        let Some(chunk) = chunk else { return out };
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("bytes")));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut ev = Ev {
                id: None,
                event: "message".into(),
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    ev.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            ev.data = serde_json::from_str(&data).expect("JSON data");
            let done = stop(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
    }
}

fn check_gapless(seqs: &[u64], last: u64) {
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(set.len(), seqs.len(), "no duplicates: {seqs:?}");
    assert_eq!(
        set,
        (1..=last).collect::<BTreeSet<u64>>(),
        "no gaps: {seqs:?}"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
}

async fn stdout_lines(srv: &Srv, id: &str) -> Vec<String> {
    let v: Value = srv
        .get(&format!("/api/v1/runs/{id}/logs"), &srv.admin)
        .await
        .json()
        .await
        .expect("logs");
    assert_eq!(v["complete"], true, "{v}");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["stream"] == "stdout")
        .map(|c| c["data"].as_str().unwrap_or("").to_string())
        .collect::<String>()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn sse_resumes_without_gaps(backend: Backend) {
    let srv = Srv::start(backend).await;
    srv.job(COUNTER_JOB).await;
    let id = srv.submit("counter", json!({"n": 40, "delay": 0.03})).await;
    let path = format!("/api/v1/runs/{id}/logs");
    // First connection: read a part, then disconnect.
    let first = sse(&srv, &srv.base, &path, None, |e| {
        e.id.is_some_and(|s| s >= 8)
    })
    .await;
    let last = first
        .iter()
        .filter_map(|e| e.id)
        .max()
        .expect("some events");
    assert!(first.iter().all(|e| e.event == "log"));
    // Resume with Last-Event-ID until the end.
    let second = sse(&srv, &srv.base, &path, Some(last), |e| e.event == "end").await;
    let end = second.last().expect("an end event");
    assert_eq!(end.event, "end");
    assert_eq!(end.data["status"], "succeeded");
    let max = end.data["last_seq"].as_u64().expect("last_seq");
    let seqs: Vec<u64> = first
        .iter()
        .chain(second.iter())
        .filter_map(|e| e.id)
        .collect();
    check_gapless(&seqs, max);
    // The chunks carry the data; stdout in order is the run's output.
    let lines: Vec<String> = first
        .iter()
        .chain(second.iter())
        .filter(|e| e.event == "log" && e.data["stream"] == "stdout")
        .map(|e| e.data["data"].as_str().unwrap_or("").to_string())
        .collect::<String>()
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, expected);
    assert_eq!(stdout_lines(&srv, &id).await, expected, "the stored output");
    // After the end: `?after=` replays the rest at once and ends.
    let tail = sse(
        &srv,
        &srv.base,
        &format!("{path}?after={}", max - 3),
        None,
        |e| e.event == "end",
    )
    .await;
    let ids: Vec<u64> = tail.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, vec![max - 2, max - 1, max]);
    // Stored output in pages with `after`.
    let v: Value = srv
        .get(&format!("{path}?after=2&limit=3"), &srv.admin)
        .await
        .json()
        .await
        .expect("page");
    let page: Vec<u64> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["seq"].as_u64())
        .collect();
    assert_eq!(page, vec![3, 4, 5]);
    assert_eq!(v["next_after"], 5);
    assert_eq!(v["complete"], false);
    srv.stop().await;
}

async fn ws_connect(
    base: &str,
    path: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}{path}", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().expect("ws request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Reads WebSocket messages until `stop` or the close frame; returns the messages and whether it closed.
async fn ws_read(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    mut stop: impl FnMut(&Value) -> bool,
) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON message");
                let done = stop(&v);
                out.push(v);
                if done {
                    return (out, false);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                if let Some(f) = frame {
                    assert_eq!(u16::from(f.code), 1000, "a normal close");
                }
                return (out, true);
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (out, true),
        }
    }
}

async fn websocket_resumes_without_gaps(backend: Backend) {
    let srv = Srv::start(backend).await;
    srv.job(COUNTER_JOB).await;
    let id = srv.submit("counter", json!({"n": 30, "delay": 0.03})).await;
    let path = format!("/api/v1/runs/{id}/ws");
    let mut ws = ws_connect(&srv.base, &path, &srv.admin).await;
    let (first, _) = ws_read(&mut ws, |m| m["seq"].as_u64().is_some_and(|s| s >= 6)).await;
    ws.send(Message::Close(None)).await.expect("close");
    let last = first
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .max()
        .expect("messages");
    let mut ws = ws_connect(&srv.base, &format!("{path}?after={last}"), &srv.admin).await;
    let (second, closed) = ws_read(&mut ws, |_| false).await;
    assert!(closed, "the server closes when the run ends");
    let end = second.last().expect("an end message");
    assert_eq!(end["type"], "end");
    assert_eq!(end["status"], "succeeded");
    let max = end["last_seq"].as_u64().expect("last_seq");
    let seqs: Vec<u64> = first
        .iter()
        .chain(second.iter())
        .filter(|m| m["type"] == "log")
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    check_gapless(&seqs, max);
    // Without a token, the handshake is refused with 401.
    let url = format!("{}{path}", srv.base.replacen("http", "ws", 1));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected a 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    // A plain GET on the WebSocket route is a 4xx in the error shape.
    let r = srv.get(&path, &srv.admin).await;
    assert!(r.status().is_client_error());
    let code = r.status().as_u16();
    expect_error(r, code, "bad_request").await;
    srv.stop().await;
}

/// An API-only server streams a run executed by another server's workers.
async fn streams_runs_executed_elsewhere(backend: Backend) {
    let api = Srv::start_with(backend, |c| c.workers = 0).await;
    api.job(COUNTER_JOB).await;
    let id = api.submit("counter", json!({"n": 15, "delay": 0.05})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r: Value = api
        .get(&format!("/api/v1/runs/{id}"), &api.admin)
        .await
        .json()
        .await
        .expect("run");
    assert_eq!(r["status"], "queued", "no workers here");
    let worker = api.second(|c| c.workers = 2).await;
    let events = sse(
        &api,
        &api.base,
        &format!("/api/v1/runs/{id}/logs"),
        None,
        |e| e.event == "end",
    )
    .await;
    let end = events.last().expect("end");
    assert_eq!(end.data["status"], "succeeded");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    check_gapless(&seqs, end.data["last_seq"].as_u64().expect("last_seq"));
    let detail: Value = api
        .get(&format!("/api/v1/runs/{id}"), &api.admin)
        .await
        .json()
        .await
        .expect("run");
    assert!(
        detail["worker"].as_str().unwrap_or("").contains('#'),
        "{detail}"
    );
    // The same tokens work on both servers (one JWT secret, one user store).
    let other = worker.url();
    let r = api
        .client
        .get(format!("{other}/api/v1/auth/me"))
        .bearer_auth(&api.admin)
        .send()
        .await
        .expect("me");
    assert_eq!(r.status(), 200);
    worker.shutdown().await.expect("shutdown");
    api.stop().await;
}

on_both!(
    sse_resumes_without_gaps,
    websocket_resumes_without_gaps,
    streams_runs_executed_elsewhere
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_live_streams() {
    let srv = Srv::start(Backend::Sqlite).await;
    srv.job(COUNTER_JOB).await;
    let id = srv
        .submit("counter", json!({"n": 1000, "delay": 0.1}))
        .await;
    let base = srv.base.clone();
    let client = srv.client.clone();
    let token = srv.admin.clone();
    let reader = tokio::spawn(async move {
        let r = client
            .get(format!("{base}/api/v1/runs/{id}/logs"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("sse");
        let mut s = r.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(b)) = s.next().await {
            text.push_str(&String::from_utf8_lossy(&b));
        }
        text
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = std::time::Instant::now();
    srv.stop().await;
    let text = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("the stream ends on shutdown")
        .expect("reader");
    assert!(text.contains("event: shutdown"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(12));
}

/// Reads an SSE stream to its end; returns the text.
fn sse_to_end(srv: &Srv, path: &str, token: &str) -> tokio::task::JoinHandle<String> {
    let client = srv.client.clone();
    let url = format!("{}{path}", srv.base);
    let token = token.to_string();
    tokio::spawn(async move {
        let r = client
            .get(url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("sse");
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(b)) = s.next().await {
            text.push_str(&String::from_utf8_lossy(&b));
        }
        text
    })
}

/// Reads a WebSocket to its close; returns the close code (0 if none) and the last text message.
fn ws_to_close(srv: &Srv, path: &str, token: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let base = srv.base.clone();
    let path = path.to_string();
    let token = token.to_string();
    tokio::spawn(async move {
        let mut ws = ws_connect(&base, &path, &token).await;
        let mut last = String::new();
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => last = t.to_string(),
                Ok(Message::Close(f)) => return (f.map_or(0, |f| u16::from(f.code)), last),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (0, last)
    })
}

/// A live stream outlives the request that opened it: logout, revoking the
/// API token, disabling the user and changing their role each end the
/// user's SSE and WebSocket streams within 5 s (the server re-checks every 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_end_when_the_login_no_longer_stands() {
    let srv = Srv::start(Backend::Sqlite).await;
    srv.job(COUNTER_JOB).await;
    let id = srv
        .submit("counter", json!({"n": 1000, "delay": 0.1}))
        .await;
    let logs = format!("/api/v1/runs/{id}/logs");
    let ws = format!("/api/v1/runs/{id}/ws");
    let mut tokens = Vec::new();
    for name in ["s-logout", "s-disable", "s-role"] {
        let r = srv
            .post(
                "/api/v1/users",
                &srv.admin,
                json!({"username": name, "password": common::PASSWORD, "role": "viewer"}),
            )
            .await;
        assert_eq!(r.status(), 201);
        tokens.push(srv.login(name, common::PASSWORD).await.access);
    }
    // One stream uses an API token (owned by the admin; no password hashing).
    let r = srv
        .post(
            "/api/v1/auth/tokens",
            &srv.admin,
            json!({"name": "stream", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("token");
    let api_token = created["token"].as_str().expect("token").to_string();
    let api_token_id = created["id"].as_str().expect("id").to_string();
    let creds = [
        tokens[0].clone(),
        api_token.clone(),
        tokens[1].clone(),
        tokens[2].clone(),
    ];
    let mut streams = Vec::new();
    for c in &creds {
        streams.push((sse_to_end(&srv, &logs, c), ws_to_close(&srv, &ws, c)));
    }
    // Every stream is live and still open after a few re-checks.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (s, w) in &streams {
        assert!(
            !s.is_finished() && !w.is_finished(),
            "streams stay open while the login stands"
        );
    }
    let started = std::time::Instant::now();
    let r = srv
        .req(Method::POST, "/api/v1/auth/logout", Some(&tokens[0]))
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 204);
    let r = srv
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/tokens/{api_token_id}"),
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    for (name, change) in [
        ("s-disable", json!({"disabled": true})),
        ("s-role", json!({"role": "operator"})),
    ] {
        let r = srv
            .req(
                Method::PATCH,
                &format!("/api/v1/users/{name}"),
                Some(&srv.admin),
            )
            .json(&change)
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), 200);
    }
    for (i, (s, w)) in streams.into_iter().enumerate() {
        let text = tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .unwrap_or_else(|_| panic!("SSE stream {i} did not end"))
            .expect("sse reader");
        assert!(
            text.contains("event: error") && text.contains("unauthenticated"),
            "stream {i}: {}",
            &text[text.len().saturating_sub(300)..]
        );
        let (code, last) = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .unwrap_or_else(|_| panic!("WebSocket {i} did not close"))
            .expect("ws reader");
        assert_eq!(code, 1008, "stream {i}: policy close; last message {last}");
        assert!(last.contains("\"type\":\"error\""), "stream {i}: {last}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "all streams ended in {took:?}"
    );
    let r = srv
        .req(
            Method::POST,
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("cancel");
    assert!(r.status().is_success());
    srv.stop().await;
}
