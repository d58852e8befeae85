//! Bounded work for every request (docs/server.md "Bounded work per
//! request"): slow and silent clients, connection caps (also over TLS),
//! YAML bombs on `POST /api/v1/apply`, and impossible durations — each
//! against a real server on loopback.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Backend, Srv, expect_error};
use opsconductor::auth::Role;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `server` from the loopback address `127.0.0.<n>`
/// (all of 127/8 is loopback: distinct client addresses on one machine).
async fn connect_from(n: u8, server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0))?;
    s.connect(server).await
}

/// Reads until the server closes the connection (or `limit` passes);
/// returns how long it took, or None if it stayed open.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A slowloris: the request line, then one header line every `every`.
fn slowloris(mut s: TcpStream, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if s.write_all(b"GET /health HTTP/1.1\r\n").await.is_err() {
            return;
        }
        for i in 0.. {
            tokio::time::sleep(every).await;
            if s.write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

async fn health_time(client: &reqwest::Client, url: &str) -> Duration {
    let t = Instant::now();
    let r = client.get(url).send().await.expect("GET /health");
    assert_eq!(r.status(), 200);
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_answers_while_a_thousand_slow_clients_hold_connections() {
    let srv = Srv::start(Backend::Sqlite).await;
    let addr = srv.running.as_ref().expect("running").local_addr();
    // 1,000 slowlorises from 8 addresses (125 each, under the per-address
    // cap), each sending a header line every 3 s: they hold 1,000 sockets
    // until the header-read timeout (10 s by default) ends them.
    let mut slow = Vec::new();
    for i in 0..1000u32 {
        let s = connect_from(2 + (i % 8) as u8, addr)
            .await
            .expect("a slow connection (RLIMIT_NOFILE must allow ~2,100 files)");
        slow.push(slowloris(s, Duration::from_secs(3)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = srv.url("/health");
    for _ in 0..5 {
        let took = health_time(&common::client(), &url).await;
        println!("/health with 1,000 slow connections open: {took:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for h in &slow {
        assert!(!h.is_finished(), "the slow clients are still connected");
    }
    for h in slow {
        h.abort();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_silent_clients_are_dropped_after_the_header_timeout() {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = srv.running.as_ref().expect("running").local_addr();
    // Headers that never end: one line every 300 ms.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let (mut rd, mut wr) = s.into_split();
    let drip = tokio::spawn(async move {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr
                .write_all(format!("X-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut buf)).await;
    let took = start.elapsed();
    println!("a client that never finishes its headers was dropped after {took:?}");
    assert!(r.is_ok(), "still connected after 5 s");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    drip.abort();
    // A client that sends nothing at all.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    println!("a silent client was dropped after {took:?}");
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(800)),
        "{took:?}"
    );
    // Keep-alive: a finished request does not keep the connection forever.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took.is_some(), "an idle keep-alive connection is closed");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_caps_per_address_and_in_total_also_over_tls() {
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
        c.header_read_timeout = Duration::from_secs(2);
        c.max_connections_per_ip = 20;
        c.max_connections = 50;
    })
    .await;
    let addr = srv.running.as_ref().expect("running").local_addr();
    // 20 silent connections from 127.0.0.2 fill its share; the 21st is closed at once.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(2, addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect_from(2, addr).await.expect("connect");
    let took = closed_within(&mut extra, Duration::from_millis(1500)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(1000)),
        "over the per-address cap: closed at once ({took:?})"
    );
    // Others still get in, over TLS.
    let t = Instant::now();
    let r = srv
        .client
        .get(srv.url("/health"))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    // Fill the total (50) from other addresses: then new connections are closed.
    for i in 0..30 {
        held.push(
            connect_from(3 + (i % 3) as u8, addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect_from(9, addr).await.expect("connect");
    assert!(
        closed_within(&mut extra, Duration::from_millis(1500))
            .await
            .is_some_and(|t| t < Duration::from_millis(1000)),
        "over the total cap: closed at once"
    );
    // Silent TLS clients (no handshake) are dropped after the header-read
    // timeout, which frees the slots.
    let start = Instant::now();
    for s in &mut held {
        let took = closed_within(s, Duration::from_secs(6)).await;
        assert!(took.is_some(), "a silent TLS connection is dropped");
    }
    println!("silent TLS connections dropped after {:?}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = srv
        .client
        .get(srv.url("/health"))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);
    srv.stop().await;
}

/// 1 MB documents of the shapes that were slow, deep or explosive.
fn bombs() -> Vec<(&'static str, String)> {
    const MB: usize = 1024 * 1024;
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{p}"); 10].join(", ")
        ));
    }
    let mut wide = format!("big: &b [{}x]\nuse: [", "x, ".repeat(50_000));
    while wide.len() < MB {
        wide.push_str("*b, ");
    }
    wide.push_str("]\n");
    vec![
        (
            "nested flow [",
            format!("kind: Job\nname: {}", "[".repeat(MB)),
        ),
        (
            "nested flow {",
            format!("kind: Job\nname: {}", "{a: ".repeat(MB / 4)),
        ),
        (
            "nested block mappings",
            (0..1400)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect(),
        ),
        (
            "single-quoted string with quotes and brackets",
            format!(
                "kind: Job\nname: x\ndescription: '{}'\nsteps: {}",
                "\"[{''".repeat(MB / 6),
                "[".repeat(10_000)
            ),
        ),
        ("billion laughs", laughs),
        ("wide alias expansion", wide),
        ("huge plain key", format!("{}: 1\n", "k".repeat(MB))),
        ("huge quoted key", format!("\"{}\": 1\n", "k".repeat(MB))),
        ("many values", "- 1\n".repeat(MB / 4)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn yaml_bombs_are_refused_in_well_under_a_second() {
    // A body limit above the documents' size, so the parser sees them.
    let srv = Srv::start_with(Backend::Sqlite, |c| c.body_limit = 2 * 1024 * 1024).await;
    let viewer = srv.user(Role::Viewer).await.access;
    for (shape, text) in bombs() {
        let t = Instant::now();
        let r = srv
            .client
            .post(srv.url("/api/v1/apply?dry_run=true"))
            .bearer_auth(&viewer)
            .header("content-type", "application/yaml")
            .body(text.clone())
            .send()
            .await
            .expect("POST /api/v1/apply");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        let took = t.elapsed();
        println!("{shape}: {} bytes -> {status} in {took:?}", text.len());
        assert!(
            matches!(status, 400 | 413 | 422),
            "{shape}: {status} {body}"
        );
        assert!(took < Duration::from_secs(5), "{shape}: {took:?}");
    }
    // The old text scan was fooled by a `"` inside a single-quoted string.
    let sneaky = format!(
        "kind: Job\nname: x\ndescription: 'say \"hi'\nsteps: [{{exec: {}1{}}}]\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    let r = srv
        .client
        .post(srv.url("/api/v1/apply?dry_run=true"))
        .bearer_auth(&viewer)
        .header("content-type", "application/yaml")
        .body(sneaky)
        .send()
        .await
        .expect("apply");
    let e = expect_error(r, 422, "validation").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("deeper"),
        "{e}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impossible_durations_are_422_naming_the_field() {
    let srv = Srv::start(Backend::Sqlite).await;
    for t in [
        "18446744073709551615",
        "1000000000000000d",
        "213503982334602d",
        "8d",
        "0s",
    ] {
        let r = srv
            .post(
                "/api/v1/exec",
                &srv.admin,
                json!({"command": "true", "timeout": t}),
            )
            .await;
        let e = expect_error(r, 422, "validation").await;
        assert_eq!(e["error"]["field"], "timeout", "{t}: {e}");
    }
    for t in ["213503982334602d", "366d", "0s", "99999999999999999999"] {
        let r = srv
            .post(
                "/api/v1/auth/tokens",
                &srv.admin,
                json!({"name": "ci", "expires_in": t}),
            )
            .await;
        let e = expect_error(r, 422, "validation").await;
        assert_eq!(e["error"]["field"], "expires_in", "{t}: {e}");
    }
    let r = srv
        .post(
            "/api/v1/auth/tokens",
            &srv.admin,
            json!({"name": "ci", "expires_in": "365d"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    for (job, field) in [
        (
            json!({"kind": "Job", "name": "t1", "timeout": 18446744073709551615u64, "steps": [{"exec": "true"}]}),
            "timeout",
        ),
        (
            json!({"kind": "Job", "name": "t2", "steps": [{"exec": "true", "timeout": "1000000000000000d"}]}),
            "steps[0].timeout",
        ),
    ] {
        let r = srv.post("/api/v1/apply", &srv.admin, job).await;
        let e = expect_error(r, 422, "validation").await;
        // The field is named (as the body position while it is read, or as the field).
        assert!(e["error"].to_string().contains(field), "{e}");
    }
    srv.stop().await;
}
