//! The WinRM executor, tested end to end with the real winrm-rs 1.1.2 client
//! against a **WS-Management protocol test server** (`support/winrm_server.rs`)
//! — not against Windows, which cannot run here. The server speaks the real
//! shell protocol (Create, Command, Send, Receive with `w:TimedOut` faults,
//! Signal, Delete, Basic auth, HTTP and HTTPS) and runs command lines with
//! `/bin/sh`, so the behaviour suite runs through targets whose shell is `sh`.
//! The Windows command lines (cmd.exe, PowerShell `-EncodedCommand`) are
//! checked by what reaches the server, in its record-only mode.
//!
//! Run with `cargo test -p opsconductor-executors --features winrm,testing
//! --test it winrm::` (needs `/bin/sh`, `base64`, `uname` and the `openssl`
//! command, which makes the HTTPS test's certificate).

#![cfg(feature = "winrm")]

use crate::support::winrm_server;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use opsconductor_core::executor::{
    Command, Credential, ExecError, Executor, FileSpec, OutputSink, Session, StepContext,
};
use opsconductor_core::model::{Connection, Target};
use opsconductor_core::template::{Quoting, Templates};
use opsconductor_executors::WinRmExecutor;
use opsconductor_executors::behaviour::{self, Fixture, run, unique};
use opsconductor_executors::winrm::WinShell;
use serde_json::json;
use tokio::time::Instant;
use winrm_server::{ServerOptions, WsmanServer};

const USER: &str = "opsc-winrm";
const PASSWORD: &str = "Pa:ss w0rd'\"<&>";

/// One server for the behaviour suite (each test has its own runtime; the
/// server has its own thread).
static SUITE_SERVER: LazyLock<WsmanServer> =
    LazyLock::new(|| WsmanServer::start(ServerOptions::http(USER, PASSWORD)));

fn credential(user: &str, password: &str) -> Credential {
    Credential {
        kind: "password".into(),
        value: format!("{user}:{password}").into_bytes(),
    }
}

/// A target on `server` (plain HTTP, explicitly allowed) with `shell`.
fn target(server: &WsmanServer, shell: &str) -> Target {
    let mut t = Target::local();
    t.name = "wsman-test".into();
    t.description = "the WS-Management protocol test server (not Windows)".into();
    t.connection = Connection::Winrm {
        host: "127.0.0.1".into(),
        port: server.port(),
        tls: false,
        auth: "basic".into(),
    };
    t.vars.insert("shell".into(), shell.into());
    t.vars.insert("allow_unencrypted".into(), true.into());
    t
}

/// A short operation timeout, so silent commands exercise `w:TimedOut`.
fn executor() -> WinRmExecutor {
    WinRmExecutor::default()
        .with_operation_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(5))
}

async fn wsman_protocol_server() -> Fixture {
    let exec: Arc<dyn Executor> = Arc::new(executor());
    Fixture {
        executor: exec,
        target: target(&SUITE_SERVER, "sh"),
        credential: Some(credential(USER, PASSWORD)),
    }
}

opsconductor_executors::executor_behaviour_suite!(
    wsman_protocol_server_behaviour,
    wsman_protocol_server
);

/// A session on a server of the test's own (counters are per server).
async fn session_on(server: &WsmanServer, shell: &str) -> Box<dyn Session> {
    executor()
        .connect(&target(server, shell), Some(&credential(USER, PASSWORD)))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn ctx(server: &WsmanServer) -> StepContext {
    StepContext::new(target(server, "sh"))
}

fn shell(line: &str) -> Command {
    Command::Shell(line.to_owned())
}

/// Decodes a recorded `powershell … -EncodedCommand B64` line.
fn decode_powershell(line: &str) -> String {
    let b64 = line
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("no argument in {line}"));
    let bytes = B64.decode(b64).expect("base64");
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).expect("UTF-16")
}

#[tokio::test]
async fn wsman_protocol_server_silent_command_polls_through_timed_out_faults() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let session = session_on(&server, "sh").await;
    let out = run(&*session, &ctx(&server), &shell("sleep 3; echo done")).await;
    out.assert_success();
    assert_eq!(out.stdout(), "done\n");
    let stats = server.stats();
    assert!(
        stats.timed_out >= 2,
        "a 3 s silence with a 1 s OperationTimeout should be ≥ 2 TimedOut faults: {stats:?}"
    );
    assert_eq!(stats.open_shells, 0, "{stats:?}");
    assert!(stats.stdin_closed >= 1, "stdin is closed for each command");
}

#[tokio::test]
async fn wsman_protocol_server_wrong_password_is_an_auth_error() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let err = executor()
        .connect(
            &target(&server, "sh"),
            Some(&credential(USER, "wrong-password")),
        )
        .await
        .err()
        .expect("a wrong password must fail");
    match &err {
        ExecError::Auth(msg) => {
            assert!(msg.contains("wsman-test"), "names the target: {msg}");
            assert!(msg.contains(USER), "names the user: {msg}");
            assert!(msg.contains("401"), "says what the server said: {msg}");
            assert!(!msg.contains("wrong-password"), "never the password: {msg}");
        }
        other => panic!("expected an Auth error, got {other:?}"),
    }
    let stats = server.stats();
    assert!(stats.auth_failures >= 1);
    assert_eq!((stats.created, stats.open_shells), (0, 0), "{stats:?}");

    // NTLM against a server that offers only Basic is an Auth error too.
    let mut t = target(&server, "sh");
    t.connection = Connection::Winrm {
        host: "127.0.0.1".into(),
        port: server.port(),
        tls: false,
        auth: "ntlm".into(),
    };
    match executor()
        .connect(&t, Some(&credential(USER, PASSWORD)))
        .await
    {
        Err(ExecError::Auth(msg)) => {
            assert!(msg.contains("ntlm"), "{msg}")
        }
        Err(other) => panic!("expected an Auth error, got {other:?}"),
        Ok(_) => panic!("NTLM cannot succeed against a Basic-only server"),
    }
}

#[tokio::test]
async fn wsman_protocol_server_missing_or_malformed_credential_is_an_auth_error() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let t = target(&server, "sh");
    for cred in [
        None,
        Some(Credential {
            kind: "password".into(),
            value: b"no-colon-here".to_vec(),
        }),
    ] {
        match executor().connect(&t, cred.as_ref()).await {
            Err(ExecError::Auth(msg)) => assert!(msg.contains("user:password"), "{msg}"),
            Err(other) => panic!("expected Auth, got {other:?}"),
            Ok(_) => panic!("expected Auth, got a session"),
        }
    }
    // The user from the target variable, the password alone in the secret.
    let mut t = target(&server, "sh");
    t.vars.insert("user".into(), USER.into());
    let cred = Credential {
        kind: "password".into(),
        value: format!("{PASSWORD}\n").into_bytes(),
    };
    let session = executor().connect(&t, Some(&cred)).await.expect("connect");
    let out = run(&*session, &ctx(&server), &shell("echo ok")).await;
    assert_eq!(out.stdout(), "ok\n");
    assert_eq!(server.open_shells(), 0);
}

#[tokio::test]
async fn wsman_protocol_server_plain_http_without_opt_out_is_refused() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    for auth in ["basic", "ntlm"] {
        let mut t = target(&server, "sh");
        t.vars.remove("allow_unencrypted");
        t.connection = Connection::Winrm {
            host: "127.0.0.1".into(),
            port: server.port(),
            tls: false,
            auth: auth.into(),
        };
        let cred = credential(USER, PASSWORD);
        match executor().connect(&t, Some(&cred)).await {
            Err(ExecError::Connect(msg)) => {
                assert!(msg.contains("plain HTTP"), "{msg}");
                assert!(
                    msg.contains("allow_unencrypted: true"),
                    "names the opt-out: {msg}"
                );
                assert!(msg.contains("tls: true"), "names the fix: {msg}");
            }
            Err(other) => panic!("expected a refusal, got {other:?}"),
            Ok(_) => panic!("plain HTTP must be refused without the opt-out"),
        }
        match executor().check(&t, Some(&cred)).await {
            Err(ExecError::Connect(msg)) => assert!(msg.contains("plain HTTP"), "{msg}"),
            other => panic!("check must refuse too, got {other:?}"),
        }
    }
    assert_eq!(server.stats().requests, 0, "nothing may be sent");
}

#[tokio::test]
async fn wsman_protocol_server_shells_are_deleted_after_errors() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let session = session_on(&server, "sh").await;
    assert_eq!(server.open_shells(), 0, "connect deletes its probe shell");

    // A failing command.
    let out = run(&*session, &ctx(&server), &shell("echo oops >&2; exit 3")).await;
    assert_eq!(out.status().code, Some(3));
    assert_eq!(out.stderr(), "oops\n");
    assert_eq!(server.open_shells(), 0, "after a failing command");

    // A missing working directory.
    let missing = format!("/tmp/{}", unique("opsc-no-dir-"));
    let mut c = ctx(&server);
    c.workdir = Some(missing.clone());
    match run(&*session, &c, &shell("true")).await.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(&missing), "{msg}"),
        other => panic!("expected Spawn naming {missing}, got {other:?}"),
    }
    assert_eq!(server.open_shells(), 0, "after a failed create");

    // A copy into a missing directory.
    let file = FileSpec {
        dest: format!("{missing}/f"),
        content: b"x".to_vec(),
        mode: 0o644,
    };
    match session.copy(&ctx(&server), &file).await {
        Err(ExecError::Io(msg)) => assert!(msg.contains(&missing), "{msg}"),
        other => panic!("expected Io naming {missing}, got {other:?}"),
    }
    assert_eq!(server.open_shells(), 0, "after a failed copy");

    // A timeout and a cancel.
    let mut c = ctx(&server);
    c.deadline = Some(Instant::now() + Duration::from_millis(500));
    let out = run(&*session, &c, &shell("sleep 30")).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    assert_eq!(server.open_shells(), 0, "after a timeout");
    let c = ctx(&server);
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    let out = run(&*session, &c, &shell("sleep 30")).await;
    assert!(
        matches!(out.result, Err(ExecError::Cancelled)),
        "{:?}",
        out.result
    );
    assert_eq!(server.open_shells(), 0, "after a cancel");

    // A script whose upload works but whose interpreter does not exist.
    let script = Command::Script {
        interpreter: unique("opsc-no-interpreter-"),
        body: "echo hi\n".into(),
    };
    let out = run(&*session, &ctx(&server), &script).await;
    assert_eq!(out.status().code, Some(127));
    assert_eq!(server.open_shells(), 0, "after a failed script");

    // A caller that goes away mid-command: the shell is still deleted, and
    // what the command started is killed.
    let marker = unique("opsc-dropped-");
    let line = format!("sh -c 'sleep 30; echo {marker}' & echo started; sleep 30");
    let (sink, mut rx) = OutputSink::channel(16);
    {
        let c = ctx(&server);
        let cmd = shell(&line);
        let exec = session.exec(&c, &cmd, &sink);
        tokio::pin!(exec);
        tokio::select! {
            _ = &mut exec => panic!("the command cannot end by itself"),
            _ = rx.recv() => {}
        }
        // `exec` is dropped here.
    }
    assert_eq!(
        server
            .wait_for_no_open_shells(Duration::from_secs(10))
            .await,
        0,
        "the shell of a dropped exec must be deleted"
    );
    let fx = Fixture {
        executor: Arc::new(executor()),
        target: target(&server, "sh"),
        credential: Some(credential(USER, PASSWORD)),
    };
    behaviour::assert_no_survivors(&fx, &*session, &marker).await;

    let stats = server.stats();
    assert_eq!(stats.created, stats.deleted, "{stats:?}");
    assert_eq!(
        server.wait_for_no_open_shells(Duration::from_secs(5)).await,
        0
    );
}

#[tokio::test]
async fn wsman_protocol_server_env_travels_in_the_shell_not_on_command_lines() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let session = session_on(&server, "sh").await;
    let secret = format!("{} <&>\"' x", unique("secret-"));
    let mut c = ctx(&server);
    c.env.insert("OPSC_TEST_SECRET".into(), secret.clone());
    let out = run(&*session, &c, &shell("printf '%s' \"$OPSC_TEST_SECRET\"")).await;
    out.assert_success();
    assert_eq!(out.stdout(), secret);
    assert!(
        server.command_lines().iter().all(|l| !l.contains(&secret)),
        "the value must not be on a command line"
    );
    assert!(
        server.environments().iter().any(|e| e
            .iter()
            .any(|(k, v)| k == "OPSC_TEST_SECRET" && *v == secret)),
        "the value travels as rsp:Environment"
    );

    // A carriage return cannot travel in XML: refused, naming the variable.
    let mut c = ctx(&server);
    c.env.insert("OPSC_TEST_CR".into(), "a\rb".into());
    match run(&*session, &c, &shell("true")).await.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains("OPSC_TEST_CR"), "{msg}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
}

#[tokio::test]
async fn wsman_protocol_server_script_is_removed_after_a_timeout() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let session = session_on(&server, "sh").await;
    let mut c = ctx(&server);
    c.deadline = Some(Instant::now() + Duration::from_secs(1));
    let cmd = Command::Script {
        interpreter: "sh".into(),
        body: "echo \"$0\"\nsleep 30\n".into(),
    };
    let out = run(&*session, &c, &cmd).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let path = out.stdout();
    let path = std::path::Path::new(path.trim_end());
    assert!(path.starts_with("/tmp"), "{path:?}");
    assert!(!path.exists(), "the script {path:?} must be removed");
    assert_eq!(server.open_shells(), 0);
}

#[tokio::test]
async fn wsman_protocol_server_parallel_steps_on_one_session() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let session: Arc<dyn Session> = Arc::from(session_on(&server, "sh").await);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let session = session.clone();
        let c = ctx(&server);
        tasks.push(tokio::spawn(async move {
            let out = run(&*session, &c, &shell(&format!("sleep 0.2; echo {i}"))).await;
            out.assert_success();
            assert_eq!(out.stdout(), format!("{i}\n"));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let stats = server.stats();
    assert_eq!(stats.open_shells, 0, "{stats:?}");
    assert_eq!(stats.created, stats.deleted, "{stats:?}");
}

#[tokio::test]
async fn wsman_protocol_server_check_reports_details() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let probe = executor()
        .check(&target(&server, "sh"), Some(&credential(USER, PASSWORD)))
        .await
        .expect("check");
    assert!(probe.os.starts_with("Linux"), "{probe:?}");
    let d = &probe.details;
    assert!(
        d.get("hostname").is_some_and(|h| !h.is_empty()),
        "{probe:?}"
    );
    assert_eq!(
        d.get("endpoint").map(String::as_str),
        Some(format!("http://127.0.0.1:{}/wsman", server.port()).as_str())
    );
    assert_eq!(d.get("shell").map(String::as_str), Some("sh"));
    assert_eq!(d.get("auth").map(String::as_str), Some("basic"));
    assert_eq!(d.get("user").map(String::as_str), Some(USER));
    assert_eq!(server.open_shells(), 0);
}

#[tokio::test]
async fn unreachable_host_is_a_connect_error() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut t = Target::local();
    t.name = "nowhere".into();
    t.connection = Connection::Winrm {
        host: "127.0.0.1".into(),
        port,
        tls: true,
        auth: "ntlm".into(),
    };
    match executor()
        .connect(&t, Some(&credential(USER, PASSWORD)))
        .await
    {
        Err(ExecError::Connect(msg)) => {
            assert!(
                msg.contains(&format!("https://127.0.0.1:{port}/wsman")),
                "{msg}"
            )
        }
        Err(other) => panic!("expected Connect, got {other:?}"),
        Ok(_) => panic!("nothing listens there"),
    }
}

/// A self-signed certificate for localhost / 127.0.0.1, made with openssl.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command is needed to make a test certificate");
    assert!(status.success(), "openssl failed");
    (cert, key)
}

#[tokio::test]
async fn wsman_protocol_server_https_verifies_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let server = WsmanServer::start(ServerOptions::https(USER, PASSWORD, &cert, &key));
    let mut t = target(&server, "sh");
    t.vars.remove("allow_unencrypted");
    t.connection = Connection::Winrm {
        host: "127.0.0.1".into(),
        port: server.port(),
        tls: true,
        auth: "basic".into(),
    };
    let cred = credential(USER, PASSWORD);
    match executor().connect(&t, Some(&cred)).await {
        Err(ExecError::Connect(msg)) => {
            assert!(msg.contains("https://127.0.0.1"), "{msg}");
            assert!(
                msg.to_lowercase().contains("certificate"),
                "says why: {msg}"
            );
        }
        Err(other) => panic!("expected a certificate error, got {other:?}"),
        Ok(_) => panic!("a self-signed certificate must not be accepted"),
    }
    assert_eq!(server.stats().created, 0, "no request got through");

    t.vars.insert("insecure_skip_verify".into(), true.into());
    let session = executor().connect(&t, Some(&cred)).await.expect("connect");
    let out = run(
        &*session,
        &StepContext::new(t.clone()),
        &shell("echo over-tls"),
    )
    .await;
    out.assert_success();
    assert_eq!(out.stdout(), "over-tls\n");
    assert_eq!(server.open_shells(), 0);
}

#[tokio::test]
async fn wsman_protocol_server_windows_command_lines() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    server.record_only(true);
    let cred = credential(USER, PASSWORD);

    // cmd (the default): the line goes unchanged.
    let mut t = target(&server, "cmd");
    let session = executor().connect(&t, Some(&cred)).await.expect("connect");
    let c = StepContext::new(t.clone());
    run(&*session, &c, &shell("dir C:\\ & ver"))
        .await
        .assert_success();
    assert_eq!(
        server.command_lines().last().map(String::as_str),
        Some("dir C:\\ & ver")
    );

    // PowerShell: -EncodedCommand with the line inside.
    t.vars.insert("shell".into(), "powershell".into());
    let session = executor().connect(&t, Some(&cred)).await.expect("connect");
    let mut c = StepContext::new(t.clone());
    c.env.insert("OPSC_SECRET".into(), "hunter2-secret".into());
    run(&*session, &c, &shell("Write-Output $env:OPSC_SECRET"))
        .await
        .assert_success();
    let line = server.command_lines().last().cloned().unwrap_or_default();
    assert!(
        line.starts_with(
            "powershell -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "
        ),
        "{line}"
    );
    let script = decode_powershell(&line);
    assert!(
        script.contains("\nWrite-Output $env:OPSC_SECRET\n"),
        "{script}"
    );
    assert!(
        !script.contains("hunter2-secret"),
        "env values are not in the script"
    );

    // A PowerShell script: uploaded in encoded chunks, run with -File, deleted.
    let body = "param()\n$x = 'héllo'\nWrite-Output $x\n";
    let before = server.command_lines().len();
    let cmd = Command::Script {
        interpreter: "powershell".into(),
        body: body.into(),
    };
    run(&*session, &c, &cmd).await.assert_success();
    let lines = server.command_lines()[before..].to_vec();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let upload = decode_powershell(&lines[0]);
    assert!(upload.contains("[IO.FileMode]::CreateNew"), "{upload}");
    assert!(
        upload.contains("[IO.Path]::Combine($env:TEMP, 'opsc-script-"),
        "{upload}"
    );
    let start = upload.find("FromBase64String('").expect("chunk") + 18;
    let end = start + upload[start..].find('\'').expect("end");
    let mut expected = b"\xEF\xBB\xBF".to_vec();
    expected.extend_from_slice(body.as_bytes());
    assert_eq!(B64.decode(&upload[start..end]).expect("b64"), expected);
    assert!(lines[1].starts_with("powershell -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File \"%TEMP%\\opsc-script-"), "{}", lines[1]);
    assert!(lines[1].ends_with(".ps1\""), "{}", lines[1]);
    assert!(
        lines[2].starts_with("del /f /q \"%TEMP%\\opsc-script-"),
        "{}",
        lines[2]
    );

    // A copy: chunks under cmd.exe's limit, then Replace/Move into place.
    let content: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let before = server.command_lines().len();
    let file = FileSpec {
        dest: "C:\\ProgramData\\opsc\\app.conf".into(),
        content: content.clone(),
        mode: 0o640,
    };
    session.copy(&c, &file).await.expect("copy");
    let lines = server.command_lines()[before..].to_vec();
    assert!(lines.len() >= 5, "{} commands", lines.len());
    let mut got = Vec::new();
    for l in &lines[..lines.len() - 1] {
        assert!(l.len() <= 8191, "a command line of {} characters", l.len());
        let s = decode_powershell(l);
        let start = s.find("FromBase64String('").expect("chunk") + 18;
        let end = start + s[start..].find('\'').expect("end");
        got.extend(B64.decode(&s[start..end]).expect("b64"));
    }
    assert_eq!(got, content, "the chunks carry the content");
    let finish = decode_powershell(lines.last().expect("finish"));
    assert!(
        finish.contains("$p = 'C:\\ProgramData\\opsc\\app.conf'"),
        "{finish}"
    );
    assert!(finish.contains("[IO.File]::Replace"), "{finish}");

    // Check: a PowerShell probe.
    let before = server.command_lines().len();
    let res = executor().check(&t, Some(&cred)).await;
    assert!(res.is_err(), "record-only prints no OS");
    let probe = decode_powershell(&server.command_lines()[before]);
    assert!(probe.contains("$PSVersionTable.PSVersion"), "{probe}");
    assert_eq!(server.open_shells(), 0);
}

/// Reads a PowerShell verbatim (single-quoted) string starting at `s[0]`,
/// the way PowerShell's tokenizer does: any of ' ‘ ’ ‚ ‛ opens and closes
/// it, and two of them in a row stand for the second. Returns the value and
/// the rest after the closing quote.
fn read_verbatim(s: &str) -> Option<(String, &str)> {
    let is_quote = |c: char| matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}');
    let mut chars = s.char_indices().peekable();
    let (_, first) = chars.next()?;
    if !is_quote(first) {
        return None;
    }
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        if is_quote(c) {
            match chars.peek() {
                Some(&(_, n)) if is_quote(n) => {
                    value.push(n);
                    chars.next();
                }
                _ => return Some((value, &s[i + c.len_utf8()..])),
            }
        } else {
            value.push(c);
        }
    }
    None
}

#[test]
fn powershell_quoting_of_hostile_parameters() {
    let corpus = [
        "plain",
        "",
        " ",
        "it's",
        "''",
        "'",
        "‘curly’ quotes",
        "‚low‛ quotes",
        "’; Remove-Item -Recurse C:\\ ; ‘",
        "'; Stop-Computer -Force; '",
        "$(Invoke-Expression 'calc')",
        "${env:PATH}",
        "$env:USERNAME",
        "`backtick` `n `$ `'",
        "a; b | c & d && e || f",
        "line1\nline2\r\nline3",
        "\"double\" “smart” „low“",
        "@(1,2) @{a=1} [int]::MaxValue",
        "# not a comment",
        "<# block #>",
        "--% stop parsing",
        "tab\there",
        "null\u{0}byte",
        "unicode ✓ ünïcødé 日本",
        "trailing backslash \\",
        "'''''",
        "‘’‚‛'",
    ];
    let templates = Templates::new();
    for payload in corpus {
        let ctx = json!({ "params": { "p": payload } });
        let rendered = templates
            .render("Write-Output {{ params.p }}", Quoting::PowerShell, &ctx)
            .expect("render");
        let arg = rendered
            .strip_prefix("Write-Output ")
            .unwrap_or_else(|| panic!("prefix kept: {rendered:?}"));
        assert!(arg.starts_with('\'') && arg.ends_with('\''), "{arg:?}");
        let (value, rest) =
            read_verbatim(arg).unwrap_or_else(|| panic!("not one verbatim string: {arg:?}"));
        assert_eq!(value, payload, "read back differs for {payload:?}");
        assert!(
            rest.is_empty(),
            "{payload:?} leaves {rest:?} after the string"
        );
        // Every single-quote-class character inside is doubled.
        let inner = &arg[1..arg.len() - 1];
        let quotes_in_payload = payload
            .chars()
            .filter(|c| matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}'))
            .count();
        let quotes_inside = inner
            .chars()
            .filter(|c| matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}'))
            .count();
        assert_eq!(quotes_inside, 2 * quotes_in_payload, "{arg:?}");
    }
    // Null-ish and non-string values.
    for (value, expected) in [
        (json!(null), "Write-Output ''"),
        (json!(true), "Write-Output $true"),
        (json!(false), "Write-Output $false"),
        (json!(42), "Write-Output 42"),
        (json!(-1.5), "Write-Output -1.5"),
    ] {
        let ctx = json!({ "params": { "p": value } });
        let rendered = templates
            .render("Write-Output {{ params.p }}", Quoting::PowerShell, &ctx)
            .expect("render");
        assert_eq!(rendered, expected);
    }
}

#[tokio::test]
async fn wsman_protocol_server_hostile_parameters_reach_powershell_intact() {
    // The rendered line travels through the executor's -EncodedCommand
    // unchanged (checked on what the server received).
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    server.record_only(true);
    let mut t = target(&server, "powershell");
    t.vars.insert("shell".into(), WinShell::Pwsh.name().into());
    let session = executor()
        .connect(&t, Some(&credential(USER, PASSWORD)))
        .await
        .expect("connect");
    let payload = "’; Remove-Item C:\\ -Recurse; ‘ $(calc) `n \"x\" ünï ✓\nline2";
    let ctx = json!({ "params": { "p": payload } });
    let line = Templates::new()
        .render("Write-Output {{ params.p }}", Quoting::PowerShell, &ctx)
        .expect("render");
    run(
        &*session,
        &StepContext::new(t),
        &Command::Shell(line.clone()),
    )
    .await
    .assert_success();
    let recorded = server.command_lines().last().cloned().unwrap_or_default();
    assert!(recorded.starts_with("pwsh "), "{recorded}");
    let script = decode_powershell(&recorded);
    assert!(script.contains(&format!("\n{line}\n")), "{script}");
}

// ---------------------------------------------------------------------------
// NTLM, signals on timeout and cancel, the logged TLS opt-out
// ---------------------------------------------------------------------------

/// The test server's own digests (it has no digest crate) against the
/// RFC 1320/1321/2104 test vectors, so an NTLM failure is never theirs.
#[test]
fn wsman_protocol_server_ntlm_digests_match_the_rfc_vectors() {
    use winrm_server::ntlm::{hmac_md5, md4, md5};
    let hex = |b: [u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(md4(b"")), "31d6cfe0d16ae931b73c59d7e0c089c0");
    assert_eq!(hex(md4(b"abc")), "a448017aaf21d8525fc10ae87aa6729d");
    let long = b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
    assert_eq!(hex(md4(long)), "e33b4ddc9c38f2199c3e7b164fcc0536");
    assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(hex(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(hex(md5(long)), "57edf4a22be3c955ac49da2e2107b67a");
    assert_eq!(
        hex(hmac_md5(&[0x0b; 16], b"Hi There")),
        "9294727a3638bb1c13f48ef8158bfc9d"
    );
}

/// A plain-HTTP NTLM target on `server` (with the explicit opt-out the
/// executor requires: winrm-rs 1.1.2 does not seal NTLM messages).
fn ntlm_target(server: &WsmanServer) -> Target {
    let mut t = target(server, "sh");
    t.connection = Connection::Winrm {
        host: "127.0.0.1".into(),
        port: server.port(),
        tls: false,
        auth: "ntlm".into(),
    };
    t
}

#[tokio::test]
async fn wsman_protocol_server_ntlm_handshake_authenticates() {
    let server = WsmanServer::start(ServerOptions::ntlm("", USER, PASSWORD));
    let t = ntlm_target(&server);
    let session = executor()
        .connect(&t, Some(&credential(USER, PASSWORD)))
        .await
        .unwrap_or_else(|e| panic!("NTLM connect: {e}"));
    let out = run(
        &*session,
        &StepContext::new(t.clone()),
        &shell("echo ntlm-ok; exit 3"),
    )
    .await;
    assert_eq!(out.stdout(), "ntlm-ok\n");
    assert_eq!(out.status().code, Some(3));
    session.close().await;
    let stats = server.stats();
    assert!(
        stats.ntlm_logins >= stats.created + stats.commands,
        "every request went through an NTLM handshake: {stats:?}"
    );
    assert_eq!(stats.auth_failures, 0, "{stats:?}");
    assert_eq!(stats.open_shells, 0, "{stats:?}");
    let probe = executor()
        .check(&t, Some(&credential(USER, PASSWORD)))
        .await
        .expect("check over NTLM");
    assert_eq!(probe.details.get("auth").map(String::as_str), Some("ntlm"));

    // A wrong password fails the handshake: an Auth error, no shell.
    let before = server.stats();
    match executor()
        .connect(&t, Some(&credential(USER, "wrong-password")))
        .await
    {
        Err(ExecError::Auth(msg)) => {
            assert!(msg.contains("ntlm"), "{msg}");
            assert!(!msg.contains("wrong-password"), "never the password: {msg}");
        }
        Err(other) => panic!("expected an Auth error, got {other:?}"),
        Ok(_) => panic!("a wrong NTLM password must fail"),
    }
    let after = server.stats();
    assert!(after.auth_failures > before.auth_failures, "{after:?}");
    assert_eq!(after.created, before.created, "{after:?}");
}

#[tokio::test]
async fn wsman_protocol_server_ntlm_domain_user_authenticates_in_its_domain() {
    let server = WsmanServer::start(ServerOptions::ntlm("CORP", USER, PASSWORD));
    let t = ntlm_target(&server);
    let session = executor()
        .connect(&t, Some(&credential(&format!("CORP\\{USER}"), PASSWORD)))
        .await
        .unwrap_or_else(|e| panic!("NTLM connect as CORP\\user: {e}"));
    let out = run(
        &*session,
        &StepContext::new(t.clone()),
        &shell("echo in-domain"),
    )
    .await;
    out.assert_success();
    assert_eq!(out.stdout(), "in-domain\n");
    session.close().await;
    // The same user without the domain is another account: refused.
    match executor()
        .connect(&t, Some(&credential(USER, PASSWORD)))
        .await
    {
        Err(ExecError::Auth(_)) => {}
        Err(other) => panic!("expected an Auth error, got {other:?}"),
        Ok(_) => panic!("the domain is part of the NTLMv2 proof"),
    }
}

/// Waits (up to 10 s) until the server has seen `n` terminate signals.
async fn wait_for_terminates(server: &WsmanServer, n: u64) -> u64 {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = server.stats().terminate_signals;
        if seen >= n || Instant::now() >= give_up {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn wsman_protocol_server_timeout_and_cancel_signal_terminate() {
    let server = WsmanServer::start(ServerOptions::http(USER, PASSWORD));
    let session = session_on(&server, "sh").await;
    assert_eq!(server.stats().terminate_signals, 0);

    let mut c = ctx(&server);
    c.deadline = Some(Instant::now() + Duration::from_secs(1));
    let out = run(&*session, &c, &shell("echo started; sleep 30")).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    assert_eq!(out.stdout(), "started\n");
    assert_eq!(
        wait_for_terminates(&server, 1).await,
        1,
        "a timeout sends Signal terminate: {:?}",
        server.stats()
    );

    let c = ctx(&server);
    let cancel = c.cancel.clone();
    let out = behaviour::run_with(&*session, &c, &shell("echo started; sleep 30"), |_| {
        cancel.cancel()
    })
    .await;
    assert!(
        matches!(out.result, Err(ExecError::Cancelled)),
        "{:?}",
        out.result
    );
    assert_eq!(
        wait_for_terminates(&server, 2).await,
        2,
        "a cancel sends Signal terminate: {:?}",
        server.stats()
    );
    session.close().await;
    assert_eq!(
        server.wait_for_no_open_shells(Duration::from_secs(5)).await,
        0
    );
}

/// Collects the text of every tracing event (level, fields) emitted on this
/// thread while it is the default subscriber.
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<String>>>);

impl LogCapture {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = FieldText(event.metadata().level().to_string());
        event.record(&mut text);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn wsman_protocol_server_tls_verification_opt_out_is_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let server = WsmanServer::start(ServerOptions::https(USER, PASSWORD, &cert, &key));
    let mut t = target(&server, "sh");
    t.name = "tls-opt-out".into();
    t.vars.remove("allow_unencrypted");
    t.vars.insert("insecure_skip_verify".into(), true.into());
    t.connection = Connection::Winrm {
        host: "127.0.0.1".into(),
        port: server.port(),
        tls: true,
        auth: "basic".into(),
    };
    let logs = LogCapture::default();
    let session = {
        let _default = tracing::subscriber::set_default(logs.clone());
        executor()
            .connect(&t, Some(&credential(USER, PASSWORD)))
            .await
            .expect("connect with verification off")
    };
    session.close().await;
    let lines = logs.lines();
    let warned = lines.iter().find(|l| {
        l.starts_with("WARN")
            && l.contains("certificate verification is OFF")
            && l.contains(&format!("127.0.0.1:{}", server.port()))
            && l.contains("insecure_skip_verify")
            && l.contains("tls-opt-out")
    });
    assert!(
        warned.is_some(),
        "the opt-out must be logged as a warning: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(PASSWORD)),
        "never the password: {lines:?}"
    );

    // With verification on, no such warning.
    t.vars.remove("insecure_skip_verify");
    let logs = LogCapture::default();
    {
        let _default = tracing::subscriber::set_default(logs.clone());
        let _ = executor()
            .connect(&t, Some(&credential(USER, PASSWORD)))
            .await;
    }
    assert!(
        logs.lines()
            .iter()
            .all(|l| !l.contains("verification is OFF")),
        "{:?}",
        logs.lines()
    );
}
