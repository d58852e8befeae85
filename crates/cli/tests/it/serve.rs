//! `opsconductor serve` as a process: the first start creates `admin` with a
//! password shown once, the server answers on the address it prints, the
//! settings come from flags, `OPSC_…` variables and a TOML file (checked with
//! clear errors), and SIGTERM shuts it down gracefully.

#![allow(clippy::unwrap_used, reason = "test helpers panic on broken fixtures")]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Env, HANG_GUARD};
use serde_json::Value;

/// A started server process, its address, and everything it wrote to stderr so far.
struct Server {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

fn start(env: &Env, extra_env: &[(&str, &str)], args: &[&str]) -> Server {
    let mut cmd = env.std_cmd(
        ["serve", "--listen", "127.0.0.1:0"]
            .iter()
            .chain(args.iter()),
    );
    cmd.env_remove("OPSC_ADMIN_PASSWORD")
        .env_remove("OPSC_JWT_SECRET")
        .env_remove("OPSC_CONFIG")
        .env_remove("OPSC_LISTEN")
        .env_remove("OPSC_WORKERS");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, stderr) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (ltx, lrx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = ltx.send(line);
        // Keep draining so the server never blocks on a full pipe.
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
    });
    let line = lrx
        .recv_timeout(HANG_GUARD)
        .expect("the server prints its address");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Server {
        child,
        addr,
        stderr,
    }
}

impl Server {
    fn stderr_so_far(&self) -> String {
        let mut s = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(300)) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> i32 {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A minimal HTTP/1.1 request; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Chunked bodies: good enough to take the JSON between the first '{' and the last '}'.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    (status, body)
}

fn login(addr: &str, user: &str, password: &str) -> (u16, Value) {
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        &serde_json::json!({"username": user, "password": password}).to_string(),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn first_start_creates_admin_once_and_sigterm_stops_gracefully() {
    let env = Env::new();
    let srv = start(&env, &[], &["--workers", "1"]);
    let err = srv.stderr_so_far();
    let password = err
        .lines()
        .find_map(|l| l.split("generated password: ").nth(1))
        .unwrap_or_else(|| panic!("the generated password is shown: {err}"))
        .trim()
        .to_string();
    assert!(password.len() >= 32, "{password}");
    assert!(
        err.contains("access-token signing key"),
        "the JWT key file notice: {err}"
    );
    let (status, tokens) = login(&srv.addr, "admin", &password);
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_string();
    let (status, body) = http(&srv.addr, "GET", "/api/v1/auth/me", Some(&token), "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(&srv.addr, "GET", "/ready", None, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"workers\":1"), "{body}");
    assert_eq!(srv.stop(), 0, "a graceful stop exits 0");
    assert!(
        env.path().join("t.jwt").exists(),
        "the signing key file stays"
    );

    // A second start: no new password, the old one still works, old tokens too (same key file).
    let srv = start(&env, &[], &[]);
    let err = srv.stderr_so_far();
    assert!(!err.contains("password"), "shown once only: {err}");
    assert_eq!(login(&srv.addr, "admin", &password).0, 200);
    let (status, _) = http(&srv.addr, "GET", "/api/v1/auth/me", Some(&token), "");
    assert_eq!(status, 200, "tokens survive a restart");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn admin_password_from_the_environment_and_settings_from_a_file() {
    let env = Env::new();
    let cfg = env.write(
        "server.toml",
        "workers = 0\naccess_token_ttl = \"2m\"\nlogin_per_account_address_per_minute = 2\n",
    );
    let srv = start(
        &env,
        &[("OPSC_ADMIN_PASSWORD", "from the environment 1")],
        &["--config", cfg.to_str().unwrap()],
    );
    let err = srv.stderr_so_far();
    assert!(!err.contains("generated password"), "{err}");
    let (status, tokens) = login(&srv.addr, "admin", "from the environment 1");
    assert_eq!(status, 200);
    assert_eq!(tokens["expires_in"], 120, "from the file");
    let (_, body) = http(&srv.addr, "GET", "/ready", None, "");
    assert!(body.contains("\"workers\":0"), "from the file: {body}");
    // The file's login limit (2/min; the login above used one).
    assert_eq!(login(&srv.addr, "admin", "wrong password 12").0, 401);
    assert_eq!(login(&srv.addr, "admin", "wrong password 12").0, 429);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn bad_settings_are_clear_errors() {
    let env = Env::new();
    let run = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut c = env.cmd(["serve"].iter().chain(extra.iter()));
        c.env_remove("OPSC_JWT_SECRET").env_remove("OPSC_CONFIG");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--listen", "nowhere"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--listen") && err.contains("IP:PORT"), "{err}");
    let (code, err) = run(&["--tls-cert", "cert.pem"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("tls"), "{err}");
    let bad = env.write("bad.toml", "listen = \"127.0.0.1:0\"\nworkerz = 3\n");
    let (code, err) = run(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml") && err.contains("workerz"), "{err}");
    let (code, err) = run(&["--config", "/nonexistent.toml"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent.toml"), "{err}");
    let (code, err) = run(
        &["--listen", "127.0.0.1:0"],
        &[("OPSC_JWT_SECRET", "too-short")],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("32 bytes"), "{err}");
    let (code, err) = run(&["--access-token-ttl", "forever"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--access-token-ttl"), "{err}");
}

#[test]
fn audit_verify_finds_an_edited_row() {
    let env = Env::new();
    env.apply_examples();
    let out = env.cmd(["audit", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("intact"), "{text}");
    // Edit a row behind the server's back (Python's sqlite3 module).
    let db = env.path().join("t.db");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit_events SET object='job:forged' WHERE seq=1\"); c.commit()",
            db.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let out = env.cmd(["--json", "audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["first_bad_seq"].as_u64()),
        (Some(false), Some(1)),
        "{v}"
    );
}

#[test]
fn audit_verify_with_an_anchor_detects_deleted_newest_events() {
    let env = Env::new();
    env.apply_examples();
    let out = env.cmd(["--json", "audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let anchor = format!(
        "{}:{}",
        v["head_seq"].as_u64().unwrap(),
        v["head_hash"].as_str().unwrap()
    );
    // The human form prints the head to keep.
    let text =
        String::from_utf8_lossy(&env.cmd(["audit", "verify"]).output().unwrap().stdout).to_string();
    assert!(text.contains(&format!("head: {anchor}")), "{text}");
    env.cmd(["audit", "verify", "--anchor", &anchor])
        .assert()
        .code(0);
    // Delete the newest event: the chain that is left still verifies...
    let db = env.path().join("t.db");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('DELETE FROM audit_events WHERE seq=(SELECT MAX(seq) FROM audit_events)'); c.commit()",
            db.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    env.cmd(["audit", "verify"]).assert().code(0);
    // ...but not against the anchor kept elsewhere.
    let out = env
        .cmd(["audit", "verify", "--anchor", &anchor])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A malformed anchor is a usage error naming the flag.
    let out = env
        .cmd(["audit", "verify", "--anchor", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--anchor"));
}
