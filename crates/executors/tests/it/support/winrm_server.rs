//! A **WS-Management protocol test server** — not Windows.
//!
//! No Windows host can run here, so the WinRM executor is tested against
//! this server. It speaks the real WinRM shell protocol (MS-WSMV) closely
//! enough for the real winrm-rs 1.1.2 client: SOAP 1.2 envelopes over
//! HTTP/1.1 (keep-alive) on loopback, or HTTPS with a given certificate;
//! HTTP Basic authentication, or NTLM ([`ServerOptions::ntlm`]: the
//! negotiate → challenge → authenticate handshake over `Authorization:
//! Negotiate`, the NTLMv2 response checked against the password; 401
//! otherwise); the actions
//! - `Create` (a shell, with `rsp:WorkingDirectory` and `rsp:Environment`),
//! - `Command` (`rsp:Command` and `rsp:Arguments`),
//! - `Send` (base64 `rsp:Stream Name="stdin"`, `End="true"` closes stdin),
//! - `Receive` (base64 `rsp:Stream Name="stdout"/"stderr"` chunks of at most
//!   64 KiB per response, `CommandState/Done` with `ExitCode`; a `w:TimedOut`
//!   SOAP fault when no output arrives within the request's
//!   `OperationTimeout`),
//! - `Signal` (`terminate` kills the command's process group with SIGKILL,
//!   `ctrl_c` sends it SIGINT),
//! - `Delete` (kills the process groups of the shell's commands, also
//!   background processes they left, as Windows ends a shell's job object,
//!   and forgets the shell).
//!
//! What differs from Windows: command lines (`Command` plus its `Arguments`
//! joined by spaces) run with `/bin/sh -c` in a process group of their own,
//! not cmd.exe; an exit by signal N is reported as exit code 128+N. Tests
//! that use it say so in their names (`wsman_protocol_server_*`).
//!
//! NTLM here authenticates each request (as winrm-rs 1.1.2 does without
//! sealing: a handshake per request) and never seals messages, so it is
//! plain HTTP with the executor's explicit `allow_unencrypted` opt-out.
//!
//! The server runs on a thread of its own with its own tokio runtime, so one
//! instance can serve many `#[tokio::test]`s (each has its own runtime). It
//! counts what it saw ([`Stats`]) so tests can check that every shell was
//! deleted.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::ChildStdin;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
const ACTION_CREATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
const ACTION_DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
const STATE_DONE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
const STATE_RUNNING: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running";

/// Output bytes returned by one Receive at most.
const MAX_RECEIVE_BYTES: usize = 64 * 1024;

/// How the server is started.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The one user name accepted.
    pub user: String,
    /// Its password.
    pub password: String,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept NTLM (and only NTLM) instead of Basic, for a user of this
    /// domain (compared case-insensitively; `""` for a local account).
    pub ntlm_domain: Option<String>,
}

impl ServerOptions {
    /// Plain HTTP with these credentials.
    pub fn http(user: &str, password: &str) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
            tls: None,
            ntlm_domain: None,
        }
    }

    /// Plain HTTP with NTLM for `domain\user` (`domain` may be empty).
    pub fn ntlm(domain: &str, user: &str, password: &str) -> Self {
        Self {
            ntlm_domain: Some(domain.into()),
            ..Self::http(user, password)
        }
    }

    /// HTTPS with the PEM files at these paths.
    pub fn https(user: &str, password: &str, cert: &Path, key: &Path) -> Self {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        Self {
            user: user.into(),
            password: password.into(),
            tls: Some((read(cert), read(key))),
            ntlm_domain: None,
        }
    }
}

/// What the server saw, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// HTTP requests (authenticated or not).
    pub requests: u64,
    /// Requests refused with 401.
    pub auth_failures: u64,
    /// Shells created.
    pub created: u64,
    /// Shells deleted.
    pub deleted: u64,
    /// Shells that exist now.
    pub open_shells: u64,
    /// Commands started.
    pub commands: u64,
    /// Receives answered with a `w:TimedOut` fault.
    pub timed_out: u64,
    /// Signal requests.
    pub signals: u64,
    /// Signal requests with the `terminate` code.
    pub terminate_signals: u64,
    /// Requests authenticated by a complete NTLM handshake.
    pub ntlm_logins: u64,
    /// `Send` requests with `End="true"`.
    pub stdin_closed: u64,
}

/// A running server; stops (and kills what its shells run) when dropped.
pub struct WsmanServer {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WsmanServer {
    /// Starts a server on 127.0.0.1 on a free port, on a thread of its own.
    pub fn start(options: ServerOptions) -> Self {
        let state = Arc::new(State::new(options.clone()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("wsman-test-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    addr_tx
                        .send(listener.local_addr().expect("local addr"))
                        .expect("report address");
                    let acceptor = options
                        .tls
                        .as_ref()
                        .map(|(cert, key)| tls_acceptor(cert, key));
                    tokio::select! {
                        _ = accept_loop(listener, acceptor, st) => {}
                        _ = shutdown_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn server thread");
        let addr = addr_rx.recv().expect("server address");
        Self {
            addr,
            state,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let c = &self.state.counters;
        Stats {
            requests: c.requests.load(Ordering::SeqCst),
            auth_failures: c.auth_failures.load(Ordering::SeqCst),
            created: c.created.load(Ordering::SeqCst),
            deleted: c.deleted.load(Ordering::SeqCst),
            open_shells: lock(&self.state.shells).len() as u64,
            commands: c.commands.load(Ordering::SeqCst),
            timed_out: c.timed_out.load(Ordering::SeqCst),
            signals: c.signals.load(Ordering::SeqCst),
            terminate_signals: c.terminate_signals.load(Ordering::SeqCst),
            ntlm_logins: c.ntlm_logins.load(Ordering::SeqCst),
            stdin_closed: c.stdin_closed.load(Ordering::SeqCst),
        }
    }

    /// Shells that exist now.
    pub fn open_shells(&self) -> u64 {
        lock(&self.state.shells).len() as u64
    }

    /// Waits (up to `within`) until no shell is open; returns the count left.
    pub async fn wait_for_no_open_shells(&self, within: Duration) -> u64 {
        let give_up = std::time::Instant::now() + within;
        loop {
            let open = self.open_shells();
            if open == 0 || std::time::Instant::now() >= give_up {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every command line received, in order.
    pub fn command_lines(&self) -> Vec<String> {
        lock(&self.state.lines).clone()
    }

    /// Every `rsp:Environment` received, in order, as (name, value) lists.
    pub fn environments(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.state.environments).clone()
    }

    /// When on, commands are recorded but not run: each ends at once with
    /// exit code 0 and no output (for inspecting Windows command lines).
    pub fn record_only(&self, on: bool) {
        self.state.record_only.store(on, Ordering::SeqCst);
    }
}

impl Drop for WsmanServer {
    fn drop(&mut self) {
        for shell in lock(&self.state.shells).values() {
            shell.kill_all(Signal::SIGKILL);
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_acceptor(cert: &[u8], key: &[u8]) -> TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key).expect("key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    TlsAcceptor::from(Arc::new(config))
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    auth_failures: AtomicU64,
    created: AtomicU64,
    deleted: AtomicU64,
    commands: AtomicU64,
    timed_out: AtomicU64,
    signals: AtomicU64,
    terminate_signals: AtomicU64,
    ntlm_logins: AtomicU64,
    stdin_closed: AtomicU64,
}

struct State {
    options: ServerOptions,
    shells: Mutex<HashMap<String, Arc<Shell>>>,
    counters: Counters,
    lines: Mutex<Vec<String>>,
    environments: Mutex<Vec<Vec<(String, String)>>>,
    record_only: AtomicBool,
    next_id: AtomicU64,
    /// NTLM server challenges sent and not yet answered (each is good for
    /// one authenticate message, on whatever connection it comes).
    challenges: Mutex<VecDeque<[u8; 8]>>,
}

struct Shell {
    env: Vec<(String, String)>,
    workdir: Option<String>,
    commands: Mutex<HashMap<String, Arc<Cmd>>>,
}

impl Shell {
    fn kill_all(&self, signal: Signal) {
        for cmd in lock(&self.commands).values() {
            cmd.kill(signal);
        }
    }
}

#[derive(Default)]
struct CmdOut {
    /// (is stderr, bytes), in arrival order.
    chunks: VecDeque<(bool, Vec<u8>)>,
    exit_code: Option<i32>,
    done: bool,
}

struct Cmd {
    pgid: Option<i32>,
    out: Mutex<CmdOut>,
    changed: watch::Sender<u64>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
}

impl Cmd {
    /// Signals the command's whole process group — also after the command
    /// itself ended, like Windows ending a shell's job object.
    fn kill(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(Pid::from_raw(pgid), signal);
        }
    }

    fn push(&self, stderr: bool, data: Vec<u8>) {
        lock(&self.out).chunks.push_back((stderr, data));
        self.changed.send_modify(|v| *v += 1);
    }

    fn finish(&self, code: i32) {
        {
            let mut out = lock(&self.out);
            out.exit_code = Some(code);
            out.done = true;
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve_connection(tls, state).await;
                    }
                }
                None => serve_connection(tcp, state).await,
            }
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// HTTP/1.1 with keep-alive and Content-Length bodies (what reqwest sends).
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, state: Arc<State>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            match io.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            match io.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[body_start..body_start + len]).into_owned();
        buf.drain(..body_start + len);

        let (status, extra, payload) = state.handle(&request_line, &headers, &body).await;
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\nServer: wsman-protocol-test-server\r\n\
             Content-Length: {}\r\n",
            payload.len()
        );
        if !payload.is_empty() {
            response.push_str("Content-Type: application/soap+xml;charset=UTF-8\r\n");
        }
        for (k, v) in extra {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&payload);
        if io.write_all(response.as_bytes()).await.is_err() || io.flush().await.is_err() {
            return;
        }
        if headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

type Response = (u16, Vec<(&'static str, String)>, String);

impl State {
    fn new(options: ServerOptions) -> Self {
        Self {
            options,
            shells: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            lines: Mutex::new(Vec::new()),
            environments: Mutex::new(Vec::new()),
            record_only: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            challenges: Mutex::new(VecDeque::new()),
        }
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        format!("0C0FFEE0-0000-4000-8000-{n:012X}")
    }

    async fn handle(
        &self,
        request_line: &str,
        headers: &HashMap<String, String>,
        body: &str,
    ) -> Response {
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        let mut parts = request_line.split_whitespace();
        if parts.next() != Some("POST") || parts.next() != Some("/wsman") {
            return (404, vec![], String::new());
        }
        if let Some(domain) = &self.options.ntlm_domain {
            if let Err(refusal) = self.ntlm(headers.get("authorization"), domain) {
                return refusal;
            }
        } else {
            let expected = format!(
                "Basic {}",
                B64.encode(format!("{}:{}", self.options.user, self.options.password))
            );
            if headers.get("authorization") != Some(&expected) {
                self.counters.auth_failures.fetch_add(1, Ordering::SeqCst);
                return (
                    401,
                    vec![("WWW-Authenticate", "Basic realm=\"WSMAN\"".into())],
                    String::new(),
                );
            }
        }
        let action = text(body, "Action").unwrap_or_default();
        let message_id = text(body, "MessageID").unwrap_or_default();
        let shell_id = elements(body, "Selector")
            .into_iter()
            .find(|(attrs, _)| attr(attrs, "Name").as_deref() == Some("ShellId"))
            .map(|(_, v)| unescape(v.trim()));
        let timeout = text(body, "OperationTimeout")
            .and_then(|t| {
                t.trim()
                    .strip_prefix("PT")?
                    .strip_suffix('S')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(60.0);
        let result = match action.trim() {
            ACTION_CREATE => self.create(body),
            ACTION_DELETE => self.delete(shell_id),
            a if a == format!("{NS_SHELL}/Command") => self.command(shell_id, body),
            a if a == format!("{NS_SHELL}/Receive") => {
                self.receive(shell_id, body, Duration::from_secs_f64(timeout.max(0.01)))
                    .await
            }
            a if a == format!("{NS_SHELL}/Send") => self.send(shell_id, body).await,
            a if a == format!("{NS_SHELL}/Signal") => self.signal(shell_id, body),
            other => Err(fault(
                "w:ActionNotSupported",
                &format!("The action {other} is not supported by this test server."),
            )),
        };
        match result {
            Ok((action, body)) => (200, vec![], envelope(&action, &message_id, &body)),
            Err((subcode, reason)) => (500, vec![], fault_envelope(&message_id, &subcode, &reason)),
        }
    }

    /// NTLM over `Authorization: Negotiate`: a negotiate message gets a 401
    /// with a fresh challenge; an authenticate message whose NTLMv2 response
    /// proves the password for an outstanding challenge lets the request
    /// through (`Ok`); anything else is a 401 offering `Negotiate`.
    fn ntlm(&self, authorization: Option<&String>, domain: &str) -> Result<(), Response> {
        let refuse = |counters: &Counters| {
            counters.auth_failures.fetch_add(1, Ordering::SeqCst);
            (
                401,
                vec![("WWW-Authenticate", "Negotiate".into())],
                String::new(),
            )
        };
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Negotiate ")) else {
            return Err(refuse(&self.counters));
        };
        let Ok(msg) = B64.decode(token.trim()) else {
            return Err(refuse(&self.counters));
        };
        match ntlm::message_type(&msg) {
            Some(1) => {
                let challenge = self.new_challenge();
                let mut pending = lock(&self.challenges);
                pending.push_back(challenge);
                while pending.len() > 64 {
                    pending.pop_front();
                }
                let type2 = ntlm::challenge_message(&challenge, "WSMANTEST");
                Err((
                    401,
                    vec![(
                        "WWW-Authenticate",
                        format!("Negotiate {}", B64.encode(type2)),
                    )],
                    String::new(),
                ))
            }
            Some(3) => {
                let Some(auth) = ntlm::parse_authenticate(&msg) else {
                    return Err(refuse(&self.counters));
                };
                let who_ok = auth.user.eq_ignore_ascii_case(&self.options.user)
                    && auth.domain.eq_ignore_ascii_case(domain);
                let mut pending = lock(&self.challenges);
                let matched = pending
                    .iter()
                    .position(|c| ntlm::verify_ntlmv2(c, &auth, &self.options.password));
                match matched {
                    Some(i) if who_ok => {
                        pending.remove(i);
                        self.counters.ntlm_logins.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                    _ => Err(refuse(&self.counters)),
                }
            }
            _ => Err(refuse(&self.counters)),
        }
    }

    /// A challenge no other request got (a counter and the clock; it need
    /// not be unpredictable on loopback).
    fn new_challenge(&self) -> [u8; 8] {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (nanos ^ n.rotate_left(40)).to_le_bytes()
    }

    fn shell(&self, shell_id: Option<String>) -> Result<(String, Arc<Shell>), (String, String)> {
        let id = shell_id.ok_or_else(|| fault("w:InvalidSelectors", "No ShellId selector."))?;
        let shell = lock(&self.shells).get(&id).cloned().ok_or_else(|| {
            fault(
                "w:InvalidSelectors",
                &format!(
                    "The request for the Windows Remote Shell with ShellId {id} failed \
                     because the shell was not found on the server."
                ),
            )
        })?;
        Ok((id, shell))
    }

    fn create(&self, body: &str) -> Result<(String, String), (String, String)> {
        let workdir = text(body, "WorkingDirectory").map(|w| unescape(w.trim()));
        if let Some(dir) = &workdir
            && !Path::new(dir).is_dir()
        {
            return Err(fault("w:InternalError", "The directory name is invalid."));
        }
        let env: Vec<(String, String)> = elements(body, "Variable")
            .into_iter()
            .filter_map(|(attrs, value)| Some((attr(attrs, "Name")?, unescape(value))))
            .collect();
        lock(&self.environments).push(env.clone());
        let id = self.new_id();
        lock(&self.shells).insert(
            id.clone(),
            Arc::new(Shell {
                env,
                workdir,
                commands: Mutex::new(HashMap::new()),
            }),
        );
        self.counters.created.fetch_add(1, Ordering::SeqCst);
        Ok((
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse".into(),
            format!(
                "<x:ResourceCreated xmlns:x=\"http://schemas.xmlsoap.org/ws/2004/09/transfer\">\
                 <a:Address>http://127.0.0.1/wsman</a:Address><a:ReferenceParameters>\
                 <w:ResourceURI>{NS_SHELL}/cmd</w:ResourceURI><w:SelectorSet>\
                 <w:Selector Name=\"ShellId\">{id}</w:Selector></w:SelectorSet>\
                 </a:ReferenceParameters></x:ResourceCreated>\
                 <rsp:Shell><rsp:ShellId>{id}</rsp:ShellId>\
                 <rsp:ResourceUri>{NS_SHELL}/cmd</rsp:ResourceUri>\
                 <rsp:InputStreams>stdin</rsp:InputStreams>\
                 <rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
            ),
        ))
    }

    fn delete(&self, shell_id: Option<String>) -> Result<(String, String), (String, String)> {
        let (id, shell) = self.shell(shell_id)?;
        shell.kill_all(Signal::SIGKILL);
        lock(&self.shells).remove(&id);
        self.counters.deleted.fetch_add(1, Ordering::SeqCst);
        Ok((
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse".into(),
            String::new(),
        ))
    }

    fn command(
        &self,
        shell_id: Option<String>,
        body: &str,
    ) -> Result<(String, String), (String, String)> {
        let (_, shell) = self.shell(shell_id)?;
        let mut line = unescape(text(body, "Command").unwrap_or_default().trim());
        for (_, a) in elements(body, "Arguments") {
            line.push(' ');
            line.push_str(&unescape(a));
        }
        lock(&self.lines).push(line.clone());
        self.counters.commands.fetch_add(1, Ordering::SeqCst);
        let id = self.new_id();
        let (changed, _) = watch::channel(0u64);
        let cmd = if self.record_only.load(Ordering::SeqCst) {
            let cmd = Arc::new(Cmd {
                pgid: None,
                out: Mutex::new(CmdOut::default()),
                changed,
                stdin: tokio::sync::Mutex::new(None),
            });
            cmd.finish(0);
            cmd
        } else {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c")
                .arg(&line)
                .envs(shell.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0);
            if let Some(dir) = &shell.workdir {
                c.current_dir(dir);
            }
            let mut child = c
                .spawn()
                .map_err(|e| fault("w:InternalError", &format!("cannot start /bin/sh: {e}")))?;
            let cmd = Arc::new(Cmd {
                pgid: child.id().map(|p| p as i32),
                out: Mutex::new(CmdOut::default()),
                changed,
                stdin: tokio::sync::Mutex::new(child.stdin.take()),
            });
            let readers: Vec<_> = [
                child
                    .stdout
                    .take()
                    .map(|r| (false, Box::new(r) as Box<dyn AsyncRead + Send + Unpin>)),
                child
                    .stderr
                    .take()
                    .map(|r| (true, Box::new(r) as Box<dyn AsyncRead + Send + Unpin>)),
            ]
            .into_iter()
            .flatten()
            .map(|(is_err, mut r)| {
                let cmd = cmd.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => cmd.push(is_err, buf[..n].to_vec()),
                        }
                    }
                })
            })
            .collect();
            let waiter = cmd.clone();
            tokio::spawn(async move {
                use std::os::unix::process::ExitStatusExt;
                let status = child.wait().await;
                // Output still in the pipes is read; a daemon that keeps
                // them open does not hold the command up for long.
                for r in readers {
                    let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
                }
                let code = match status {
                    Ok(s) => s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1),
                    Err(_) => -1,
                };
                waiter.finish(code);
            });
            cmd
        };
        lock(&shell.commands).insert(id.clone(), cmd);
        Ok((
            format!("{NS_SHELL}/CommandResponse"),
            format!(
                "<rsp:CommandResponse><rsp:CommandId>{id}</rsp:CommandId></rsp:CommandResponse>"
            ),
        ))
    }

    fn find_command(
        &self,
        shell_id: Option<String>,
        command_id: Option<String>,
    ) -> Result<Arc<Cmd>, (String, String)> {
        let (_, shell) = self.shell(shell_id)?;
        let id = command_id.ok_or_else(|| fault("w:InvalidParameter", "No CommandId."))?;
        lock(&shell.commands).get(&id).cloned().ok_or_else(|| {
            fault(
                "w:InvalidParameter",
                &format!("No command {id} in the shell."),
            )
        })
    }

    async fn receive(
        &self,
        shell_id: Option<String>,
        body: &str,
        timeout: Duration,
    ) -> Result<(String, String), (String, String)> {
        let command_id = elements(body, "DesiredStream")
            .first()
            .and_then(|(attrs, _)| attr(attrs, "CommandId"));
        let cmd = self.find_command(shell_id, command_id.clone())?;
        let cid = command_id.unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = cmd.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let mut out = lock(&cmd.out);
                if !out.chunks.is_empty() || out.done {
                    let mut xml = String::new();
                    let mut taken = 0;
                    while taken < MAX_RECEIVE_BYTES {
                        let Some((is_err, mut data)) = out.chunks.pop_front() else {
                            break;
                        };
                        if taken + data.len() > MAX_RECEIVE_BYTES {
                            let rest = data.split_off(MAX_RECEIVE_BYTES - taken);
                            out.chunks.push_front((is_err, rest));
                        }
                        taken += data.len();
                        let name = if is_err { "stderr" } else { "stdout" };
                        xml.push_str(&format!(
                            "<rsp:Stream Name=\"{name}\" CommandId=\"{cid}\">{}</rsp:Stream>",
                            B64.encode(&data)
                        ));
                    }
                    if out.done && out.chunks.is_empty() {
                        let code = out.exit_code.unwrap_or(-1);
                        xml.push_str(&format!(
                            "<rsp:Stream Name=\"stdout\" CommandId=\"{cid}\" End=\"true\"></rsp:Stream>\
                             <rsp:Stream Name=\"stderr\" CommandId=\"{cid}\" End=\"true\"></rsp:Stream>\
                             <rsp:CommandState CommandId=\"{cid}\" State=\"{STATE_DONE}\">\
                             <rsp:ExitCode>{code}</rsp:ExitCode></rsp:CommandState>"
                        ));
                    } else {
                        xml.push_str(&format!(
                            "<rsp:CommandState CommandId=\"{cid}\" State=\"{STATE_RUNNING}\"/>"
                        ));
                    }
                    return Ok((
                        format!("{NS_SHELL}/ReceiveResponse"),
                        format!(
                            "<rsp:ReceiveResponse SequenceID=\"0\">{xml}</rsp:ReceiveResponse>"
                        ),
                    ));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    self.counters.timed_out.fetch_add(1, Ordering::SeqCst);
                    return Err(fault(
                        "w:TimedOut",
                        "The WS-Management service cannot complete the operation within the \
                         time specified in OperationTimeout.",
                    ));
                }
            }
        }
    }

    async fn send(
        &self,
        shell_id: Option<String>,
        body: &str,
    ) -> Result<(String, String), (String, String)> {
        let streams = elements(body, "Stream");
        let Some((attrs, data)) = streams.first() else {
            return Err(fault("w:InvalidParameter", "No stream to send."));
        };
        let cmd = self.find_command(shell_id, attr(attrs, "CommandId"))?;
        let bytes = B64
            .decode(data.trim())
            .map_err(|e| fault("w:InvalidParameter", &format!("bad base64: {e}")))?;
        let end = attr(attrs, "End").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let mut stdin = cmd.stdin.lock().await;
        if let Some(w) = stdin.as_mut()
            && !bytes.is_empty()
        {
            let _ = w.write_all(&bytes).await;
        }
        if end {
            *stdin = None;
            self.counters.stdin_closed.fetch_add(1, Ordering::SeqCst);
        }
        Ok((
            format!("{NS_SHELL}/SendResponse"),
            "<rsp:SendResponse/>".into(),
        ))
    }

    fn signal(
        &self,
        shell_id: Option<String>,
        body: &str,
    ) -> Result<(String, String), (String, String)> {
        self.counters.signals.fetch_add(1, Ordering::SeqCst);
        let command_id = elements(body, "Signal")
            .first()
            .and_then(|(attrs, _)| attr(attrs, "CommandId"));
        let cmd = self.find_command(shell_id, command_id)?;
        let code = text(body, "Code").unwrap_or_default();
        if code.trim().ends_with("/terminate") {
            self.counters
                .terminate_signals
                .fetch_add(1, Ordering::SeqCst);
            cmd.kill(Signal::SIGKILL);
        } else if code.trim().ends_with("/ctrl_c") {
            cmd.kill(Signal::SIGINT);
        }
        Ok((
            format!("{NS_SHELL}/SignalResponse"),
            "<rsp:SignalResponse/>".into(),
        ))
    }
}

fn fault(subcode: &str, reason: &str) -> (String, String) {
    (subcode.to_owned(), reason.to_owned())
}

fn envelope(action: &str, relates_to: &str, body: &str) -> String {
    format!(
        "<s:Envelope xml:lang=\"en-US\" xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
         xmlns:rsp=\"{NS_SHELL}\"><s:Header><a:Action>{action}</a:Action>\
         <a:MessageID>uuid:{}</a:MessageID>\
         <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>\
         <a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>",
        uuid_like()
    )
}

fn fault_envelope(relates_to: &str, subcode: &str, reason: &str) -> String {
    envelope(
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault",
        relates_to,
        &format!(
            "<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>{subcode}</s:Value>\
             </s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en-US\">{r}</s:Text></s:Reason>\
             <s:Detail><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" \
             Code=\"2150858793\" Machine=\"127.0.0.1\"><f:Message>{r}</f:Message></f:WSManFault>\
             </s:Detail></s:Fault>",
            r = escape(reason)
        ),
    )
}

fn uuid_like() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "00000000-0000-4000-8000-{:012X}",
        N.fetch_add(1, Ordering::SeqCst)
    )
}

// --- a tolerant little XML reader (namespace prefixes ignored) -------------

/// (attributes, raw content) of every element with this local name.
fn elements<'a>(xml: &'a str, local: &str) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = xml[pos..].find('<') {
        let start = pos + i + 1;
        pos = start;
        let rest = &xml[start..];
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() || name.starts_with(['/', '?', '!']) {
            continue;
        }
        if name.rsplit(':').next() != Some(local) {
            continue;
        }
        let Some(gt) = rest.find('>') else { break };
        let tag = &rest[name_end..gt];
        if let Some(attrs) = tag.strip_suffix('/') {
            out.push((attrs, ""));
            pos = start + gt + 1;
            continue;
        }
        let content_start = start + gt + 1;
        let close = format!("</{name}>");
        let Some(ci) = xml[content_start..].find(&close) else {
            break;
        };
        out.push((tag, &xml[content_start..content_start + ci]));
        pos = content_start + ci + close.len();
    }
    out
}

/// The text of the first element with this local name.
fn text(xml: &str, local: &str) -> Option<String> {
    elements(xml, local).first().map(|(_, v)| v.to_string())
}

/// An attribute value by local name, unescaped.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        let key = key.rsplit(':').next().unwrap_or(key);
        let after = rest[eq + 1..].trim_start();
        let quote = after.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let end = after[1..].find(quote)?;
        let value = &after[1..1 + end];
        if key == name {
            return Some(unescape(value));
        }
        rest = &after[end + 2..];
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=semi]),
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Just enough NTLM (MS-NLMP) for a server: the challenge message, the
/// fields of an authenticate message, and the NTLMv2 response check (with
/// MD4 and MD5 written out here, as the test tree has no digest crates).
pub mod ntlm {
    const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

    /// The message type of an NTLM message (1, 2 or 3), if it is one.
    pub fn message_type(msg: &[u8]) -> Option<u32> {
        if msg.len() < 12 || &msg[..8] != SIGNATURE {
            return None;
        }
        Some(u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]))
    }

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn av_pair(out: &mut Vec<u8>, id: u16, value: &[u8]) {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }

    /// A type 2 (challenge) message for `domain`, with target info
    /// (NetBIOS domain and computer names, a timestamp).
    pub fn challenge_message(challenge: &[u8; 8], domain: &str) -> Vec<u8> {
        // UNICODE | REQUEST_TARGET | NTLM | ALWAYS_SIGN | TARGET_TYPE_DOMAIN
        // | EXTENDED_SESSIONSECURITY | TARGET_INFO | VERSION | 128 | 56.
        let flags: u32 = 0x1
            | 0x4
            | 0x200
            | 0x8000
            | 0x1_0000
            | 0x8_0000
            | 0x80_0000
            | 0x200_0000
            | 0x2000_0000
            | 0x8000_0000;
        let name = utf16le(domain);
        let mut info = Vec::new();
        av_pair(&mut info, 2, &name);
        av_pair(&mut info, 1, &utf16le("WSMAN"));
        let filetime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_nanos() / 100) as u64 + 116_444_736_000_000_000)
            .unwrap_or(0);
        av_pair(&mut info, 7, &filetime.to_le_bytes());
        av_pair(&mut info, 0, &[]);
        let header = 56u32;
        let mut msg = Vec::new();
        msg.extend_from_slice(SIGNATURE);
        msg.extend_from_slice(&2u32.to_le_bytes());
        msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
        msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
        msg.extend_from_slice(&header.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(challenge);
        msg.extend_from_slice(&[0; 8]);
        msg.extend_from_slice(&(info.len() as u16).to_le_bytes());
        msg.extend_from_slice(&(info.len() as u16).to_le_bytes());
        msg.extend_from_slice(&(header + name.len() as u32).to_le_bytes());
        msg.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
        msg.extend_from_slice(&name);
        msg.extend_from_slice(&info);
        msg
    }

    /// What a type 3 (authenticate) message says.
    #[derive(Debug)]
    pub struct Authenticate {
        /// The user name.
        pub user: String,
        /// The domain (empty for a local account).
        pub domain: String,
        /// NTProofStr followed by the client's blob.
        pub nt_response: Vec<u8>,
    }

    /// The fields of a type 3 message; `None` if it is malformed.
    pub fn parse_authenticate(msg: &[u8]) -> Option<Authenticate> {
        if message_type(msg)? != 3 {
            return None;
        }
        let field = |at: usize| -> Option<&[u8]> {
            let len = u16::from_le_bytes([*msg.get(at)?, *msg.get(at + 1)?]) as usize;
            let off = u32::from_le_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?) as usize;
            msg.get(off..off.checked_add(len)?)
        };
        let text = |b: &[u8]| {
            let units: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        };
        let nt_response = field(20)?.to_vec();
        if nt_response.len() < 16 + 28 {
            return None;
        }
        Some(Authenticate {
            user: text(field(36)?),
            domain: text(field(28)?),
            nt_response,
        })
    }

    /// Whether the NTLMv2 response answers `challenge` with `password`:
    /// NTProofStr = HMAC-MD5(NTOWFv2, challenge ‖ blob), where NTOWFv2 =
    /// HMAC-MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) ‖ domain)).
    pub fn verify_ntlmv2(challenge: &[u8; 8], auth: &Authenticate, password: &str) -> bool {
        let nt_hash = md4(&utf16le(password));
        let identity = format!("{}{}", auth.user.to_uppercase(), auth.domain);
        let ntowf = hmac_md5(&nt_hash, &utf16le(&identity));
        let (proof, blob) = auth.nt_response.split_at(16);
        let mut input = challenge.to_vec();
        input.extend_from_slice(blob);
        hmac_md5(&ntowf, &input) == proof
    }

    /// HMAC (RFC 2104) over MD5.
    pub fn hmac_md5(key: &[u8], data: &[u8]) -> [u8; 16] {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..16].copy_from_slice(&md5(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        inner.extend_from_slice(data);
        let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        outer.extend_from_slice(&md5(&inner));
        md5(&outer)
    }

    /// The message padded to whole 64-byte blocks, as little-endian words
    /// (the padding MD4 and MD5 share).
    fn blocks(data: &[u8]) -> Vec<[u32; 16]> {
        let mut m = data.to_vec();
        m.push(0x80);
        while m.len() % 64 != 56 {
            m.push(0);
        }
        m.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
        m.chunks_exact(64)
            .map(|c| {
                let mut w = [0u32; 16];
                for (i, word) in w.iter_mut().enumerate() {
                    *word =
                        u32::from_le_bytes([c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]]);
                }
                w
            })
            .collect()
    }

    fn digest(h: [u32; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, v) in h.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

    /// MD4 (RFC 1320).
    pub fn md4(data: &[u8]) -> [u8; 16] {
        const ORDER: [[usize; 16]; 3] = [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15],
            [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15],
        ];
        const SHIFT: [[u32; 4]; 3] = [[3, 7, 11, 19], [3, 5, 9, 13], [3, 9, 11, 15]];
        const ADD: [u32; 3] = [0, 0x5a82_7999, 0x6ed9_eba1];
        let mut h = INIT;
        for x in blocks(data) {
            let mut v = h;
            for round in 0..3 {
                for (j, &k) in ORDER[round].iter().enumerate() {
                    // The roles a, b, c, d rotate: abcd, dabc, cdab, bcda.
                    let (a, b, c, d) = match j % 4 {
                        0 => (0, 1, 2, 3),
                        1 => (3, 0, 1, 2),
                        2 => (2, 3, 0, 1),
                        _ => (1, 2, 3, 0),
                    };
                    let (vb, vc, vd) = (v[b], v[c], v[d]);
                    let f = match round {
                        0 => (vb & vc) | (!vb & vd),
                        1 => (vb & vc) | (vb & vd) | (vc & vd),
                        _ => vb ^ vc ^ vd,
                    };
                    v[a] = v[a]
                        .wrapping_add(f)
                        .wrapping_add(x[k])
                        .wrapping_add(ADD[round])
                        .rotate_left(SHIFT[round][j % 4]);
                }
            }
            for i in 0..4 {
                h[i] = h[i].wrapping_add(v[i]);
            }
        }
        digest(h)
    }

    /// MD5 (RFC 1321).
    pub fn md5(data: &[u8]) -> [u8; 16] {
        const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
        let k: Vec<u32> = (0..64)
            .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
            .collect();
        let mut h = INIT;
        for m in blocks(data) {
            let [mut a, mut b, mut c, mut d] = h;
            for i in 0..64 {
                let (f, g) = match i / 16 {
                    0 => ((b & c) | (!b & d), i),
                    1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                    2 => (b ^ c ^ d, (3 * i + 5) % 16),
                    _ => (c ^ (b | !d), (7 * i) % 16),
                };
                let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
                a = d;
                d = c;
                c = b;
                b = b.wrapping_add(f.rotate_left(S[(i / 16) * 4 + i % 4]));
            }
            for (x, v) in h.iter_mut().zip([a, b, c, d]) {
                *x = x.wrapping_add(v);
            }
        }
        digest(h)
    }
}
