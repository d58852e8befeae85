//! Real receivers for notification tests: an HTTP receiver that records
//! every request byte for byte and answers as told (a status, a
//! `Retry-After`, or no answer for a while), and a real SMTP server
//! (Python's `aiosmtpd`) that stores each message parsed by Python's
//! `email` package as JSON.
//!
//! The SMTP server needs a Python with `aiosmtpd`: `OPSC_TEST_PYTHON`
//! names it (scripts/test.sh installs one), else `python3`. Missing, it is a
//! failure with a message saying so, never a skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a panic is the failure report"
)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When its body was read.
    pub at: SystemTime,
    /// `POST`, …
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
}

impl Received {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// How to answer the next request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status.
    Status(u16),
    /// This status with `Retry-After: value`.
    RetryAfter(u16, String),
    /// Wait this long, then 200 (longer than the sender's timeout: a timeout).
    Hang(Duration),
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    plan: VecDeque<Reply>,
}

/// A local HTTP receiver on 127.0.0.1.
pub struct HttpReceiver {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpReceiver {
    /// Starts listening on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { url, shared, task }
    }

    /// Queues answers for the next requests (then 200 again).
    pub fn plan(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().unwrap().plan.extend(replies);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` requests arrived (panics after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "the receiver got {} requests, expected {n} within {limit:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(mut conn: TcpStream, shared: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = {
        let mut s = shared.lock().unwrap();
        s.received.push(Received {
            at: SystemTime::now(),
            method,
            path,
            headers,
            body,
        });
        s.plan.pop_front().unwrap_or(Reply::Status(200))
    };
    let (code, extra) = match reply {
        Reply::Status(c) => (c, String::new()),
        Reply::RetryAfter(c, v) => (c, format!("Retry-After: {v}\r\n")),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            (200, String::new())
        }
    };
    let text = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n{extra}\r\nok"
    );
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// The SMTP sink: each message is parsed by Python's `email` package and
/// written as `N.json` (envelope, headers, every part decoded, raw text).
const SMTP_SINK: &str = r#"
import sys, os, json, time, email, email.policy
from aiosmtpd.controller import Controller
port, out = int(sys.argv[1]), sys.argv[2]
class Sink:
    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = [{"type": p.get_content_type(), "text": p.get_content()}
                 for p in msg.walk() if not p.is_multipart()]
        doc = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
               "headers": {k.lower(): str(v) for k, v in msg.items()},
               "content_type": msg.get_content_type(), "parts": parts,
               "raw": raw.decode("utf-8", "replace")}
        name = os.path.join(out, "%d.json" % time.time_ns())
        with open(name + ".tmp", "w") as f:
            json.dump(doc, f)
        os.rename(name + ".tmp", name)
        return "250 2.0.0 Message accepted for delivery"
c = Controller(Sink(), hostname="127.0.0.1", port=port)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

/// A real SMTP server (aiosmtpd) on 127.0.0.1; stopped when dropped.
pub struct SmtpSink {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python that has `aiosmtpd`.
pub fn python() -> String {
    std::env::var("OPSC_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl SmtpSink {
    /// Starts the server on a free port.
    pub fn start() -> Self {
        use std::io::BufRead;
        let py = python();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(&py)
            .arg("-c")
            .arg(SMTP_SINK)
            .arg(port.to_string())
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {py}: {e}"));
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP sink did not start: {py} needs aiosmtpd (scripts/test.sh installs it; \
             or set OPSC_TEST_PYTHON to a Python that has it)"
        );
        Self { port, dir, child }
    }

    /// The messages received so far, oldest first.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// Waits for at least `n` messages (panics after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "the SMTP sink got {} messages, expected {n} within {limit:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
