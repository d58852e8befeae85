//! The SSH executor against real OpenSSH servers on loopback (see
//! `support/sshd.rs`): the executor behaviour suite, twice (key + pinned host
//! key; password + known_hosts file), and what only SSH has — every key type,
//! with and without a passphrase, refused credentials, unknown and changed
//! host keys (pinned, in the executor's or the target's known_hosts), hosts
//! that are down, remote processes killed on the server, secrets kept off
//! the server's process list, SFTP copies, and a fan-out over many targets.
//!
//! Runs as root (the fixture creates a user and runs sshd); never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support::sshd;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opsconductor_core::executor::{
    Command, Credential, ExecError, Executor, FileSpec, Session, StepContext,
};
use opsconductor_core::model::{Connection, Target};
use opsconductor_executors::behaviour::{Fixture, run, unique};
use opsconductor_executors::ssh::{PASSPHRASE_PREFIX, fetch_host_key};
use opsconductor_executors::{SshExecutor, executor_behaviour_suite};
use sshd::{Sshd, USER, lab, pool};
use tokio::time::Instant;

fn executor() -> SshExecutor {
    SshExecutor::default().with_kill_grace(Duration::from_millis(500))
}

fn target_on(server: &Sshd, name: &str, pinned: bool) -> Target {
    let mut t = Target::local();
    t.name = name.to_owned();
    t.description = String::new();
    t.connection = Connection::Ssh {
        host: server.host.clone(),
        port: server.port,
        user: USER.to_owned(),
        host_key: pinned.then(|| server.fingerprint.clone()),
        known_hosts: None,
    };
    t.credential = Some("test-key".into());
    t
}

/// A pool server, round-robin, so tests spread over all of them.
fn next_server() -> &'static Sshd {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let servers = pool();
    &servers[NEXT.fetch_add(1, Ordering::Relaxed) % servers.len()]
}

fn key_cred(path: &std::path::Path) -> Credential {
    Credential {
        kind: "ssh_key".into(),
        value: std::fs::read(path).unwrap(),
    }
}

/// A protected key with the fixture's passphrase on the line after it.
fn with_passphrase(path: &std::path::Path) -> Credential {
    let mut cred = key_cred(path);
    cred.value
        .extend_from_slice(format!("{PASSPHRASE_PREFIX}{}\n", sshd::PASSPHRASE).as_bytes());
    cred
}

fn ed25519() -> Credential {
    key_cred(&lab().keys.ed25519)
}

fn password(pw: &str) -> Credential {
    Credential {
        kind: "password".into(),
        value: pw.as_bytes().to_vec(),
    }
}

fn known_hosts_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let mut text = String::from("# the pool's keys\n");
        for s in pool() {
            text.push_str(&format!("[{}]:{} {}\n", s.host, s.port, s.host_key_line));
        }
        let path = lab().dir.join("known_hosts");
        std::fs::write(&path, text).unwrap();
        path
    })
    .clone()
}

async fn key_pinned() -> Fixture {
    let server = next_server();
    let exec: Arc<dyn Executor> = Arc::new(executor());
    (exec, target_on(server, "ssh-key", true), Some(ed25519())).into()
}

async fn password_known_hosts() -> Fixture {
    let server = next_server();
    let exec: Arc<dyn Executor> = Arc::new(executor().with_known_hosts(known_hosts_file()));
    let cred = password(&lab().password);
    (exec, target_on(server, "ssh-password", false), Some(cred)).into()
}

executor_behaviour_suite!(key_pinned);
executor_behaviour_suite!(behaviour_suite_password_known_hosts, password_known_hosts);

fn sh(line: &str) -> Command {
    Command::Shell(line.to_owned())
}

async fn connect(
    exec: &SshExecutor,
    target: &Target,
    cred: Option<&Credential>,
) -> Result<Box<dyn Session>, ExecError> {
    tokio::time::timeout(Duration::from_secs(30), exec.connect(target, cred))
        .await
        .expect("connect must not hang")
}

fn connect_error(r: Result<Box<dyn Session>, ExecError>) -> ExecError {
    match r {
        Ok(_) => panic!("expected the connection to fail"),
        Err(e) => e,
    }
}

async fn whoami(session: &dyn Session, target: &Target) -> String {
    let out = run(session, &StepContext::new(target.clone()), &sh("id -un")).await;
    out.assert_success();
    out.stdout().trim().to_owned()
}

// --- authentication ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_and_a_password_log_in() {
    let server = next_server();
    let target = target_on(server, "auth", true);
    let keys = &lab().keys;
    let creds = [
        ("ed25519", key_cred(&keys.ed25519)),
        ("ecdsa", key_cred(&keys.ecdsa)),
        ("rsa", key_cred(&keys.rsa)),
        ("ed25519 with passphrase", with_passphrase(&keys.encrypted)),
        ("password", password(&lab().password)),
    ];
    let exec = executor();
    for (what, cred) in creds {
        let session = connect(&exec, &target, Some(&cred))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(whoami(&*session, &target).await, USER, "{what}");
        session.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_protected_ecdsa_and_rsa_keys_log_in() {
    let target = target_on(next_server(), "locked-types", true);
    let exec = executor();
    let keys = &lab().keys;
    for (what, path, public_type) in [
        ("ecdsa", &keys.encrypted_ecdsa, "ecdsa-sha2-nistp256 "),
        ("rsa", &keys.encrypted_rsa, "ssh-rsa "),
    ] {
        let public = std::fs::read_to_string(format!("{}.pub", path.display())).unwrap();
        assert!(public.starts_with(public_type), "{what}: {public}");
        // Really protected: without the passphrase it is refused, saying why.
        let err = connect_error(connect(&exec, &target, Some(&key_cred(path))).await);
        assert!(
            matches!(&err, ExecError::Auth(m) if m.contains("passphrase-protected")),
            "{what}: {err:?}"
        );
        let cred = with_passphrase(path);
        let session = connect(&exec, &target, Some(&cred))
            .await
            .unwrap_or_else(|e| panic!("{what} with passphrase: {e}"));
        assert_eq!(whoami(&*session, &target).await, USER, "{what}");
        session.close().await;
        // A second connection with the same credential (decoded once, cached).
        let session = connect(&exec, &target, Some(&cred))
            .await
            .unwrap_or_else(|e| panic!("{what} again: {e}"));
        assert_eq!(whoami(&*session, &target).await, USER, "{what}");
        session.close().await;
        // And a wrong passphrase is refused before any connection.
        let mut wrong = key_cred(path);
        wrong.value.extend_from_slice(b"Passphrase: not it\n");
        let err = connect_error(connect(&exec, &target, Some(&wrong)).await);
        assert!(
            matches!(&err, ExecError::Auth(m) if m.contains("wrong passphrase")),
            "{what}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_protected_key_without_its_passphrase_says_so() {
    let target = target_on(next_server(), "locked-key", true);
    let exec = executor();
    let err = connect_error(connect(&exec, &target, Some(&key_cred(&lab().keys.encrypted))).await);
    match &err {
        ExecError::Auth(msg) => {
            assert!(
                msg.contains("passphrase") && msg.contains(PASSPHRASE_PREFIX),
                "{msg}"
            );
            assert!(msg.contains("locked-key"), "{msg}");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    let mut wrong = key_cred(&lab().keys.encrypted);
    wrong.value.extend_from_slice(b"Passphrase: not it\n");
    let err = connect_error(connect(&exec, &target, Some(&wrong)).await);
    assert!(
        matches!(&err, ExecError::Auth(m) if m.contains("wrong passphrase")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_quickly_and_clearly() {
    let server = next_server();
    let target = target_on(server, "wrong-pw", true);
    let started = Instant::now();
    let err = connect_error(connect(&executor(), &target, Some(&password("nope"))).await);
    match &err {
        ExecError::Auth(msg) => {
            assert!(msg.contains("wrong-pw"), "{msg}");
            assert!(msg.contains(USER), "{msg}");
            assert!(
                msg.contains(&format!("{}:{}", server.host, server.port)),
                "{msg}"
            );
            assert!(msg.contains("password"), "{msg}");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    // OpenSSH delays a failed password by a few seconds at most.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_key_is_refused() {
    let target = target_on(next_server(), "stranger", true);
    let err =
        connect_error(connect(&executor(), &target, Some(&key_cred(&lab().keys.stranger))).await);
    match &err {
        ExecError::Auth(msg) => {
            assert!(msg.contains("stranger") && msg.contains("ssh_key"), "{msg}");
            assert!(
                msg.contains("publickey"),
                "it says what the server accepts: {msg}"
            );
        }
        other => panic!("expected Auth, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unusable_credential_is_an_auth_error() {
    let target = target_on(next_server(), "no-cred", true);
    let err = connect_error(connect(&executor(), &target, None).await);
    assert!(
        matches!(&err, ExecError::Auth(m) if m.contains("no credential")),
        "{err:?}"
    );
    let token = Credential {
        kind: "token".into(),
        value: b"abc".to_vec(),
    };
    let err = connect_error(connect(&executor(), &target, Some(&token)).await);
    assert!(
        matches!(&err, ExecError::Auth(m) if m.contains("'token'")),
        "{err:?}"
    );
}

// --- host keys --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_refused() {
    let server = next_server();
    let target = target_on(server, "unpinned", false);
    let err = connect_error(connect(&executor(), &target, Some(&ed25519())).await);
    match &err {
        ExecError::Connect(msg) => {
            assert!(msg.contains("unknown host key"), "{msg}");
            assert!(
                msg.contains(&server.fingerprint),
                "names the offered key: {msg}"
            );
            assert!(msg.contains("opsconductor targets trust unpinned"), "{msg}");
            assert!(
                msg.contains("neither the target nor the executor names a known_hosts file"),
                "{msg}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    // A known_hosts file without the host refuses it too, and says so.
    let other = std::env::temp_dir().join(unique("opsc-kh-"));
    std::fs::write(&other, "[10.9.9.9]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmaDLDa6bzGXLaYMrbp3GLWZ5WjbBpGq8TK1c6xwvWb\n").unwrap();
    let exec = executor().with_known_hosts(&other);
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    std::fs::remove_file(&other).unwrap();
    assert!(
        matches!(&err, ExecError::Connect(m) if m.contains("unknown host key") && m.contains(&other.display().to_string())),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_with_expected_and_offered() {
    let servers = pool();
    let (real, other) = (&servers[0], &servers[1]);
    let mut target = target_on(real, "changed", true);
    let Connection::Ssh { host_key, .. } = &mut target.connection else {
        unreachable!()
    };
    *host_key = Some(other.fingerprint.clone());
    let err = connect_error(connect(&executor(), &target, Some(&ed25519())).await);
    match &err {
        ExecError::Connect(msg) => {
            assert!(msg.contains("HOST KEY MISMATCH"), "{msg}");
            assert!(
                msg.contains(&format!("expected {}", other.fingerprint)),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("offered ssh-ed25519 key {}", real.fingerprint)),
                "{msg}"
            );
            assert!(msg.contains("opsconductor targets trust changed"), "{msg}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }

    // The same through a known_hosts file that records another key.
    let file = std::env::temp_dir().join(unique("opsc-kh-"));
    std::fs::write(
        &file,
        format!(
            "# comment\n[{}]:{} {}\n",
            real.host, real.port, other.host_key_line
        ),
    )
    .unwrap();
    let mut target = target_on(real, "changed-kh", false);
    target.name = "changed-kh".into();
    let exec = executor().with_known_hosts(&file);
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    std::fs::remove_file(&file).unwrap();
    match &err {
        ExecError::Connect(msg) => {
            assert!(msg.contains("HOST KEY MISMATCH"), "{msg}");
            assert!(
                msg.contains(&other.fingerprint) && msg.contains(&real.fingerprint),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{}:2", file.display())),
                "names the line: {msg}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_and_known_hosts_keys_are_accepted() {
    let server = next_server();
    // A pin may carry base64 padding.
    let mut target = target_on(server, "padded", true);
    if let Connection::Ssh { host_key, .. } = &mut target.connection {
        *host_key = Some(format!("{}=", server.fingerprint));
    }
    let session = connect(&executor(), &target, Some(&ed25519()))
        .await
        .unwrap();
    assert_eq!(whoami(&*session, &target).await, USER);
    let target = target_on(server, "known", false);
    let exec = executor().with_known_hosts(known_hosts_file());
    let session = connect(&exec, &target, Some(&ed25519())).await.unwrap();
    assert_eq!(whoami(&*session, &target).await, USER);
}

/// `target` with its own known_hosts file (and whatever pin it has).
fn with_known_hosts(mut target: Target, path: &std::path::Path) -> Target {
    if let Connection::Ssh { known_hosts, .. } = &mut target.connection {
        *known_hosts = Some(path.display().to_string());
    }
    target
}

/// A known_hosts file in the lab directory holding `text`.
fn known_hosts_with(text: &str) -> std::path::PathBuf {
    let path = lab().dir.join(unique("known_hosts-"));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_own_known_hosts_file_is_honoured() {
    let server = next_server();
    // The executor has no file of its own: the target's is what counts.
    let exec = executor();
    let target = with_known_hosts(target_on(server, "kh-own", false), &known_hosts_file());
    let session = connect(&exec, &target, Some(&ed25519())).await.unwrap();
    assert_eq!(whoami(&*session, &target).await, USER);
    session.close().await;

    // A file without the host: refused, naming host, file, offered key and
    // how to trust it.
    let lacking = known_hosts_with(
        "[10.9.9.9]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmaDLDa6bzGXLaYMrbp3GLWZ5WjbBpGq8TK1c6xwvWb\n",
    );
    let target = with_known_hosts(target_on(server, "kh-lacking", false), &lacking);
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    match &err {
        ExecError::Connect(msg) => {
            assert!(msg.contains("unknown host key"), "{msg}");
            assert!(
                msg.contains(&format!(
                    "kh-lacking' ({USER}@{}:{})",
                    server.host, server.port
                )),
                "names the host: {msg}"
            );
            assert!(
                msg.contains(&format!("{} has no entry for it", lacking.display())),
                "says what was expected: {msg}"
            );
            assert!(
                msg.contains(&format!("offered ssh-ed25519 key {}", server.fingerprint)),
                "names the offered key: {msg}"
            );
            assert!(
                msg.contains("opsconductor targets trust kh-lacking")
                    && msg.contains(&format!("add the host's key to {}", lacking.display())),
                "says how to trust it: {msg}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }

    // A file with another key for the host: a mismatch, expected and offered.
    let other = pool()
        .iter()
        .find(|s| s.fingerprint != server.fingerprint)
        .unwrap();
    let wrong = known_hosts_with(&format!(
        "[{}]:{} {}\n",
        server.host, server.port, other.host_key_line
    ));
    let target = with_known_hosts(target_on(server, "kh-wrong", false), &wrong);
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    match &err {
        ExecError::Connect(msg) => {
            assert!(msg.contains("HOST KEY MISMATCH"), "{msg}");
            assert!(
                msg.contains(&format!(
                    "expected ssh-ed25519 key {} ({}:1)",
                    other.fingerprint,
                    wrong.display()
                )),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("offered ssh-ed25519 key {}", server.fingerprint)),
                "{msg}"
            );
            assert!(msg.contains("opsconductor targets trust kh-wrong"), "{msg}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }

    // The target's file replaces the executor's default, it is not merged.
    let exec_default = executor().with_known_hosts(known_hosts_file());
    let target = with_known_hosts(target_on(server, "kh-override", false), &lacking);
    let err = connect_error(connect(&exec_default, &target, Some(&ed25519())).await);
    assert!(
        matches!(&err, ExecError::Connect(m) if m.contains(&lacking.display().to_string())),
        "{err:?}"
    );
    // A missing file records no keys (as with OpenSSH): refused, naming it.
    let missing = lab().dir.join(unique("no-such-known_hosts-"));
    let target = with_known_hosts(target_on(server, "kh-missing", false), &missing);
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    assert!(
        matches!(&err, ExecError::Connect(m) if m.contains("unknown host key") && m.contains(&missing.display().to_string())),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_host_key_takes_precedence_over_known_hosts() {
    let server = next_server();
    let exec = executor();
    let lacking = known_hosts_with("# nothing here\n");
    // Right pin, file without the host: the pin decides, it connects.
    let target = with_known_hosts(target_on(server, "pin-wins", true), &lacking);
    let session = connect(&exec, &target, Some(&ed25519())).await.unwrap();
    assert_eq!(whoami(&*session, &target).await, USER);
    session.close().await;
    // Wrong pin, file with the right key: still the pin decides, refused.
    let other = pool()
        .iter()
        .find(|s| s.fingerprint != server.fingerprint)
        .unwrap();
    let mut target = with_known_hosts(target_on(server, "pin-wrong", true), &known_hosts_file());
    if let Connection::Ssh { host_key, .. } = &mut target.connection {
        *host_key = Some(other.fingerprint.clone());
    }
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    assert!(
        matches!(&err, ExecError::Connect(m) if m.contains("HOST KEY MISMATCH") && m.contains("the target's host_key")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_host_key_matches_ssh_keygen() {
    for server in pool().iter().take(2) {
        let fp = fetch_host_key(&server.host, server.port, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(fp, server.fingerprint);
        assert_eq!(fp, sshd::fingerprint(&server.host_key_pub));
    }
    let port = sshd::free_port("127.0.0.1");
    let err = fetch_host_key("127.0.0.1", port, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Connect(_)), "{err:?}");
}

// --- unreachable hosts --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_fast_with_the_reason() {
    let port = sshd::free_port("127.0.0.1");
    let mut target = target_on(next_server(), "down", true);
    target.connection = Connection::Ssh {
        host: "127.0.0.1".into(),
        port,
        user: USER.into(),
        host_key: None,
        known_hosts: None,
    };
    let started = Instant::now();
    let err = connect_error(connect(&executor(), &target, Some(&ed25519())).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match &err {
        ExecError::Connect(msg) => {
            assert!(
                msg.contains("down") && msg.contains(&format!("127.0.0.1:{port}")),
                "{msg}"
            );
            assert!(msg.to_lowercase().contains("refused"), "{msg}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    let err = executor()
        .check(&target, Some(&ed25519()))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Connect(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_within_the_connect_timeout() {
    // Accepts TCP, never speaks SSH.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut target = target_on(next_server(), "silent", true);
    target.connection = Connection::Ssh {
        host: "127.0.0.1".into(),
        port,
        user: USER.into(),
        host_key: None,
        known_hosts: None,
    };
    let exec = executor().with_connect_timeout(Duration::from_millis(700));
    let started = Instant::now();
    let err = connect_error(connect(&exec, &target, Some(&ed25519())).await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        matches!(&err, ExecError::Connect(m) if m.contains("silent") && m.contains("did not finish")),
        "{err:?}"
    );
    drop(listener);
}

// --- commands -----------------------------------------------------------------

/// Local `/proc` scan: the servers run on this machine.
fn local_processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{pid}: {text}"));
        }
    }
    found
}

fn local_environs_with(needle: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && String::from_utf8_lossy(&env).contains(needle)
        {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_remote_processes_on_the_server() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let marker = unique("opsc-remote-sleep-");
    let mut ctx = fx.ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_millis(800));
    let line = format!("sh -c 'sleep 60; echo {marker}' & sleep 61 # {marker}");
    let out = run(&*session, &ctx, &sh(&line)).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let left = local_processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "survivors on the server:\n{}",
            left.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session is still usable afterwards.
    let out = run(&*session, &fx.ctx(), &sh("echo alive")).await;
    assert_eq!(out.stdout(), "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_ignoring_remote_processes_are_killed_after_the_grace() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let marker = unique("opsc-stubborn-");
    let mut ctx = fx.ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_millis(500));
    let line = format!("trap '' TERM; sh -c 'trap \"\" TERM; sleep 60; echo {marker}' & wait");
    let out = run(&*session, &ctx, &sh(&line)).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let took = out.returned - out.started;
    assert!(took < Duration::from_secs(6), "{took:?}");
    let give_up = Instant::now() + Duration::from_secs(5);
    while !local_processes_with(&marker).is_empty() {
        assert!(Instant::now() < give_up, "a TERM-ignoring process survived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_values_never_reach_the_servers_process_list() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let secret = unique("s3cr3t-");
    let mut ctx = fx.ctx();
    ctx.env.insert("OPSC_TEST_SECRET".into(), secret.clone());
    ctx.env.insert("OTHER".into(), "it's 'quoted' $(id)".into());
    let cmd = sh(r#"printf '%s|%s\n' "${#OPSC_TEST_SECRET}" "$OTHER"; sleep 2"#);
    let scan = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        (local_processes_with(&secret), local_environs_with(&secret))
    };
    let (out, (leaks, environs)) = tokio::join!(run(&*session, &ctx, &cmd), scan);
    out.assert_success();
    assert_eq!(
        out.stdout(),
        format!("{}|it's 'quoted' $(id)\n", secret.len())
    );
    assert!(
        leaks.is_empty(),
        "the secret is on a command line:\n{}",
        leaks.join("\n")
    );
    assert!(
        environs >= 1,
        "the secret should be in the command's environment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_every_step_of_a_session() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = run(&*session, &fx.ctx(), &sh("echo \"$SSH_CONNECTION\"")).await;
        out.assert_success();
        seen.push(out.stdout());
    }
    assert!(!seen[0].trim().is_empty());
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_workdir_and_interpreter_are_spawn_errors_naming_them() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let dir = format!("/tmp/{}", unique("opsc-no-dir-"));
    let mut ctx = fx.ctx();
    ctx.workdir = Some(dir.clone());
    let out = run(&*session, &ctx, &sh("true")).await;
    assert!(
        matches!(&out.result, Err(ExecError::Spawn(m)) if m.contains(&dir)),
        "{:?}",
        out.result
    );
    let name = unique("opsc-no-interpreter-");
    let cmd = Command::Script {
        interpreter: format!("{name} -u"),
        body: "print('hi')\n".into(),
    };
    let out = run(&*session, &fx.ctx(), &cmd).await;
    assert!(
        matches!(&out.result, Err(ExecError::Spawn(m)) if m.contains(&name)),
        "{:?}",
        out.result
    );
    // Interpreter arguments are passed: `sh -e` stops at `false`.
    let cmd = Command::Script {
        interpreter: "sh -e".into(),
        body: "echo \"$0\"\nfalse\necho unreachable\n".into(),
    };
    let out = run(&*session, &fx.ctx(), &cmd).await;
    assert_eq!(out.status().code, Some(1), "{}", out.stderr());
    assert!(out.stdout().starts_with('/') && !out.stdout().contains("unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_is_removed_after_a_timeout() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let mut ctx = fx.ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_millis(700));
    let cmd = Command::Script {
        interpreter: "sh".into(),
        body: "echo \"$0\"\nsleep 30\n".into(),
    };
    let out = run(&*session, &ctx, &cmd).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let path = out.stdout();
    let path = std::path::Path::new(path.trim_end());
    assert!(path.is_absolute(), "{path:?}");
    assert!(
        !path.exists(),
        "the script {path:?} must be removed after a timeout"
    );
    assert!(!path.parent().unwrap().exists(), "and its directory");
}

// --- copy ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_replaces_atomically_with_the_mode_and_leaves_no_temp_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fx = key_pinned().await;
    let session = fx.session().await;
    // The test user writes into a directory it owns; the server is local.
    let dir = format!("/tmp/{}", unique("opsc-sftp-"));
    std::fs::create_dir(&dir).unwrap();
    std::process::Command::new("chown")
        .args([USER, &dir])
        .status()
        .unwrap();
    let dest = format!("{dir}/app.conf");
    let first = FileSpec {
        dest: dest.clone(),
        content: b"v1\n".to_vec(),
        mode: 0o600,
    };
    session.copy(&fx.ctx(), &first).await.unwrap();
    let before = std::fs::metadata(&dest).unwrap();
    assert_eq!(before.permissions().mode() & 0o7777, 0o600);
    let content: Vec<u8> = (0..=255u8).cycle().take(1_000_003).collect();
    let second = FileSpec {
        dest: dest.clone(),
        content: content.clone(),
        mode: 0o754,
    };
    session.copy(&fx.ctx(), &second).await.unwrap();
    let after = std::fs::metadata(&dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert_eq!(after.permissions().mode() & 0o7777, 0o754);
    assert_ne!(
        before.ino(),
        after.ino(),
        "replaced by rename, not rewritten"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["app.conf"], "no temporary file left");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_refuses_traversal_relative_paths_and_reports_denials() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    for dest in [
        "/tmp/../etc/opsc-evil",
        "relative/file",
        "/tmp/dir/",
        "/tmp/a/../../etc/x",
    ] {
        let file = FileSpec {
            dest: dest.into(),
            content: b"x".to_vec(),
            mode: 0o644,
        };
        match session.copy(&fx.ctx(), &file).await {
            Err(ExecError::Io(msg)) => assert!(msg.contains(dest), "{msg}"),
            other => panic!("{dest}: expected an Io error, got {other:?}"),
        }
    }
    assert!(!std::path::Path::new("/etc/opsc-evil").exists());
    // Root's directory is not writable for the test user: the error says where.
    let file = FileSpec {
        dest: "/root/opsc-denied".into(),
        content: b"x".to_vec(),
        mode: 0o644,
    };
    match session.copy(&fx.ctx(), &file).await {
        Err(ExecError::Io(msg)) => assert!(msg.contains("/root/opsc-denied"), "{msg}"),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

// --- check and fan-out --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_os_latency_and_host_key() {
    let server = next_server();
    let target = target_on(server, "probe", true);
    let probe = executor().check(&target, Some(&ed25519())).await.unwrap();
    let uname = String::from_utf8_lossy(
        &std::process::Command::new("uname")
            .arg("-sr")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(probe.os, uname);
    assert_eq!(probe.details.get("host_key"), Some(&server.fingerprint));
    assert_eq!(probe.details.get("user").map(String::as_str), Some(USER));
    for key in ["connect_ms", "exec_ms", "hostname", "arch"] {
        assert!(probe.details.contains_key(key), "{key} missing: {probe:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_over_many_targets_all_succeed_and_a_dead_one_fails_alone() {
    const TARGETS: usize = 24;
    let servers = pool();
    assert!(servers.len() >= 5);
    let exec = Arc::new(executor());
    let cred = ed25519();
    let mut targets: Vec<Target> = (0..TARGETS)
        .map(|i| target_on(&servers[i % servers.len()], &format!("web{i:02}"), true))
        .collect();
    let mut dead = target_on(&servers[0], "dead", true);
    dead.connection = Connection::Ssh {
        host: "127.0.0.1".into(),
        port: sshd::free_port("127.0.0.1"),
        user: USER.into(),
        host_key: None,
        known_hosts: None,
    };
    targets.push(dead);
    let started = Instant::now();
    let jobs = targets.into_iter().map(|target| {
        let exec = exec.clone();
        let cred = cred.clone();
        tokio::spawn(async move {
            let session = exec.connect(&target, Some(&cred)).await?;
            let mut ctx = StepContext::new(target.clone());
            ctx.env = BTreeMap::from([("TARGET".to_owned(), target.name.clone())]);
            let dir = format!("/tmp/{}", unique("opsc-fan-"));
            let mut ctx2 = ctx.clone();
            ctx2.env.insert("D".into(), dir.clone());
            let out = run(
                &*session,
                &ctx2,
                &sh(r#"uname -a >/dev/null && mkdir "$D" && printf '%s' "$TARGET""#),
            )
            .await;
            out.assert_success();
            session
                .copy(
                    &ctx,
                    &FileSpec {
                        dest: format!("{dir}/marker"),
                        content: target.name.clone().into_bytes(),
                        mode: 0o644,
                    },
                )
                .await?;
            let cat = run(&*session, &ctx2, &sh(r#"cat "$D/marker"; rm -rf "$D""#)).await;
            cat.assert_success();
            session.close().await;
            Ok::<_, ExecError>((target.name, out.stdout(), cat.stdout()))
        })
    });
    let results = futures_join(jobs.collect()).await;
    let took = started.elapsed();
    let mut ok = 0;
    for r in results {
        match r.expect("task") {
            Ok((name, said, copied)) => {
                assert_eq!(said, name);
                assert_eq!(copied, name);
                ok += 1;
            }
            Err(ExecError::Connect(msg)) => assert!(msg.contains("dead"), "{msg}"),
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    assert_eq!(ok, TARGETS);
    assert!(took < Duration::from_secs(30), "the fan-out took {took:?}");
}

async fn futures_join<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ssh_targets_are_refused() {
    let err = connect_error(connect(&executor(), &Target::local(), None).await);
    assert!(
        matches!(&err, ExecError::Unsupported(m) if m.contains("local")),
        "{err:?}"
    );
}

/// A watched step (a lease margin, as the engine always sets) lives as long
/// as the worker's keepalives come: three times the margin here, with a
/// timeout and a cancel of other steps unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_step_outlives_its_lease_margin_while_keepalives_come() {
    let fx = key_pinned().await;
    let session = fx.session().await;
    let mut ctx = fx.ctx();
    ctx.lease_margin = Some(Duration::from_millis(800));
    let out = run(&*session, &ctx, &sh("sleep 2.5; echo survived")).await;
    out.assert_success();
    assert_eq!(out.stdout(), "survived\n");
    // Stopping still works on a watched step.
    ctx.deadline = Some(Instant::now() + Duration::from_millis(500));
    let out = run(&*session, &ctx, &sh("sleep 30")).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
}
