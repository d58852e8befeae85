//! The SSH executor: runs steps on hosts reached over SSH (connection kind
//! `ssh`), with [russh] on the client side and any OpenSSH-compatible server
//! on the other.
//!
//! # Connections
//!
//! [`Executor::connect`] opens **one connection per target**, authenticates
//! it and returns an [`SshSession`] that the engine reuses for every step of
//! the run on that target; each `exec` is a fresh session channel on it and
//! each `copy` goes through one SFTP channel opened on first use. TCP
//! connect plus key exchange are bounded by [`SshExecutor::connect_timeout`],
//! authentication by [`SshExecutor::auth_timeout`], so a host that is down or
//! refuses the credential fails its target quickly, with the host, the port
//! and what happened in the message, and never holds up the other targets.
//! Sockets use `TCP_NODELAY`, the key exchange prefers `curve25519-sha256`,
//! channels get a 2 MiB window and 32 KiB packets (what OpenSSH uses), and
//! agent forwarding is never requested.
//!
//! # Host keys
//!
//! Every server key is verified; none is ever accepted silently. A target's
//! `host_key` pins a fingerprint exactly as `ssh-keygen -lf` prints it
//! (`SHA256:` and unpadded base64). Without a pin, the key must be listed for
//! `host` (or `[host]:port`) in a known_hosts file (OpenSSH format, hashed
//! names included): the target's own `known_hosts` if it names one, else the
//! executor's default [`SshExecutor::known_hosts`] (the facade sets it from
//! `OPSC_SSH_KNOWN_HOSTS`). The file is read on every connection, so edits
//! take effect without a restart. The key types listed there for the host
//! are asked of the server first, as OpenSSH does. A pin wins over a file:
//! it is the more specific statement. With neither, or when the key is
//! unknown or changed, the target fails with [`ExecError::Connect`], naming
//! the target, the key expected and the key offered, and how to accept it
//! (`opsconductor targets trust NAME`). [`fetch_host_key`] reads a server's
//! key fingerprint for that command.
//!
//! # Credentials
//!
//! The target's credential decides the authentication method:
//! - kind `password`: the value (UTF-8) is sent with the `password` method,
//!   falling back to `keyboard-interactive` (every prompt answered with the
//!   password) when the server offers only that;
//! - kind `ssh_key`: the value is an OpenSSH private key (`-----BEGIN OPENSSH
//!   PRIVATE KEY-----`, also PKCS#1/PKCS#8 PEM): Ed25519, ECDSA or RSA (RSA
//!   signs with `rsa-sha2-512`/`-256` as the server allows). A
//!   passphrase-protected key carries its passphrase, until credentials get
//!   a field of their own for it, on **one line after the key's `-----END`
//!   line**: `Passphrase: <the passphrase>` (everything after `Passphrase: `
//!   up to the end of the line; see [`PASSPHRASE_PREFIX`]). Decoded keys are
//!   cached per executor by the SHA-256 digest of the credential (never by
//!   the plaintext), so a fan-out pays for the passphrase's key derivation
//!   once; an entry lives until [`KEY_CACHE_IDLE`] after its last use (at
//!   most 32 are kept), and never appears in `Debug` output.
//! - no credential: only the `none` method is tried.
//!
//! # Running commands
//!
//! The `exec` request of every command is the same fixed string,
//! [`EXEC_REQUEST`], run by the user's login shell: `/bin/sh` reads a length
//! line and then that many bytes from stdin, and evaluates them. Everything
//! else — the step's environment, the working directory, the script body,
//! the command line — travels on the channel's **stdin**, as a small POSIX
//! shell program. Stdin is *not* closed after it (see step 5). The program:
//! 1. for a script, creates a private directory (`mkdir` under `umask 077`,
//!    so 0700) in `$TMPDIR` (or `/tmp`) and writes the body to `script`
//!    (0700) in it with the `printf` builtin;
//! 2. `export`s each variable with its value in single quotes — `export` is
//!    a shell builtin, so values never appear in any process's argv (`ps`,
//!    `/proc/PID/cmdline`), only in the environment of the command itself;
//! 3. changes to the working directory and checks that the shell or
//!    interpreter exists, reporting a failure on a status line;
//! 4. starts a watcher in the background (same process group, not a child
//!    of the command) that reads the channel's stdin until EOF: stdin
//!    reaches EOF when the channel closes, and if the command is still alive
//!    then, the worker's connection was lost, so the watcher SIGKILLs the
//!    whole group — steps die with their worker. The command's own stdin is
//!    `/dev/null`;
//! 5. prints one status line with a per-command random token and its PID,
//!    which the executor removes from stdout;
//! 6. `exec`s `SHELL -c COMMAND` (or `INTERPRETER ARGS SCRIPT`), so the
//!    command keeps that PID, which sshd made a session and process group
//!    leader: everything the command starts is in that process group.
//!
//! Stdin is therefore at EOF for the command, as with the local executor.
//! Stdout and stderr are streamed as they arrive (`ExtendedData` 1 is
//! stderr); the exit status or the signal that killed the command
//! (`exit-signal`) is reported. A script's directory is removed by a second,
//! short channel afterwards, whatever happened.
//!
//! # Stopping commands
//!
//! On the step's deadline or cancellation the executor sends `signal TERM`
//! on the channel (which many sshd versions ignore, and which reaches only
//! the leader anyway) **and** runs, on a second channel, a small program
//! that sends SIGTERM to the whole process group (by the PID from the status
//! line), waits up to [`SshExecutor::kill_grace`] for its live members to go
//! (zombies do not count), then sends SIGKILL. The channel is closed after
//! that. A connection that is lost half-way cannot deliver any of this;
//! the watcher (step 4) kills the group then.
//!
//! A worker that is frozen (SIGSTOP, a paused VM) keeps its connection, so
//! the watcher sees no EOF; yet past the lease another node may rescue the
//! run and start the step again. With [`StepContext::lease_margin`] set (the
//! engine always sets it) the executor writes a keepalive line on the
//! command's stdin every quarter margin, and the watcher kills the group
//! when none came for the margin — before the lease can end. dash has no
//! `read -t`, so a ticker process feeds the watcher's loop its clock.

mod auth;
mod copy;
mod exec;
mod hostkey;
mod known_hosts;
mod wrapper;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsconductor_core::executor::{
    Capabilities, Command, Credential, ExecError, Executor, ExitStatus, FileSpec, OutputSink,
    Probe, Session, StepContext,
};
use opsconductor_core::model::{Connection, Target};
use russh::client;
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use auth::{KEY_CACHE_IDLE, PASSPHRASE_PREFIX};
pub use hostkey::fetch_host_key;
pub use wrapper::EXEC_REQUEST;

/// The default bound on TCP connect plus key exchange.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default bound on authentication.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time between SIGTERM and SIGKILL when a command is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// The default shell for [`Command::Shell`] on the target.
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Runs steps on SSH hosts (connection kind `ssh`). See the [module
/// docs](self) for how it connects, verifies hosts, passes environments and
/// stops commands.
///
/// ```
/// use std::time::Duration;
/// use opsconductor_executors::SshExecutor;
///
/// let ssh = SshExecutor::default()
///     .with_connect_timeout(Duration::from_secs(5))
///     .with_known_hosts("/etc/opsconductor/known_hosts");
/// assert_eq!(ssh.connect_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone)]
pub struct SshExecutor {
    /// Bound on TCP connect plus key exchange (and host key verification).
    pub connect_timeout: Duration,
    /// Bound on authentication.
    pub auth_timeout: Duration,
    /// How long a stopped command's process group gets between SIGTERM and
    /// SIGKILL.
    pub kill_grace: Duration,
    /// The default OpenSSH `known_hosts` file, consulted for targets that
    /// pin no `host_key` and name no `known_hosts` file of their own.
    /// Without any of the three, such targets are refused.
    pub known_hosts: Option<PathBuf>,
    /// The shell that runs [`Command::Shell`] on the target, as `SHELL -c LINE`.
    pub shell: String,
    /// How often an idle connection is probed (SSH keepalive); three missed
    /// replies close it. `None` turns keepalives off.
    pub keepalive: Option<Duration>,
    /// Decoded private keys by the SHA-256 of their credential, so that many
    /// targets sharing one (passphrase-protected) key decode it once; shared
    /// by clones, bounded in size and idle time (see [`KEY_CACHE_IDLE`]).
    keys: auth::KeyCache,
}

impl fmt::Debug for SshExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshExecutor")
            .field("connect_timeout", &self.connect_timeout)
            .field("auth_timeout", &self.auth_timeout)
            .field("kill_grace", &self.kill_grace)
            .field("known_hosts", &self.known_hosts)
            .field("shell", &self.shell)
            .field("keepalive", &self.keepalive)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Default for SshExecutor {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            known_hosts: None,
            shell: DEFAULT_SHELL.to_owned(),
            keepalive: Some(Duration::from_secs(15)),
            keys: auth::KeyCache::default(),
        }
    }
}

impl SshExecutor {
    /// An executor with the defaults (10 s connect and auth timeouts, 2 s
    /// kill grace, `/bin/sh`, no known_hosts file: only pinned keys).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the bound on TCP connect plus key exchange.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the bound on authentication.
    pub fn with_auth_timeout(mut self, timeout: Duration) -> Self {
        self.auth_timeout = timeout;
        self
    }

    /// Sets the time between SIGTERM and SIGKILL.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets the default known_hosts file, for targets that neither pin a
    /// `host_key` nor name a `known_hosts` file.
    pub fn with_known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    /// Sets the shell used for [`Command::Shell`] on targets.
    pub fn with_shell(mut self, shell: impl Into<String>) -> Self {
        self.shell = shell.into();
        self
    }

    /// Sets the keepalive interval (`None`: off).
    pub fn with_keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// Connects to `target` and authenticates with `cred`: what
    /// [`Executor::connect`] does, with the concrete session type.
    pub async fn open_session(
        &self,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<SshSession, ExecError> {
        let dest = Destination::of(target)?;
        let started = Instant::now();
        let (handle, host_key) = auth::connect_and_authenticate(self, &dest, cred).await?;
        Ok(SshSession {
            inner: Arc::new(Inner {
                handle,
                host_key,
                dest,
                config: self.clone(),
                sftp: OnceCell::new(),
                connected_in: started.elapsed(),
            }),
        })
    }

    /// The russh client configuration for one connection; `host_key_algos`
    /// (from known_hosts) are asked of the server first.
    fn client_config(&self, host_key_algos: &[russh::keys::Algorithm]) -> client::Config {
        let mut preferred = russh::Preferred::default();
        let first = [russh::kex::CURVE25519, russh::kex::CURVE25519_PRE_RFC_8731];
        let mut kex = first.to_vec();
        kex.extend(preferred.kex.iter().filter(|k| !first.contains(k)).cloned());
        preferred.kex = kex.into();
        if !host_key_algos.is_empty() {
            let (known, other): (Vec<_>, Vec<_>) = preferred
                .key
                .iter()
                .cloned()
                .partition(|a| host_key_algos.contains(a));
            let mut keys = known;
            keys.extend(other);
            preferred.key = keys.into();
        }
        client::Config {
            preferred,
            nodelay: true,
            window_size: 2 * 1024 * 1024,
            maximum_packet_size: 32 * 1024,
            channel_buffer_size: 64,
            keepalive_interval: self.keepalive,
            keepalive_max: 3,
            ..Default::default()
        }
    }
}

/// Where a target is: its name and the SSH fields of its connection.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    /// Target name.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Pinned fingerprint.
    pub host_key: Option<String>,
    /// The target's own known_hosts file.
    pub known_hosts: Option<PathBuf>,
}

impl Destination {
    fn of(target: &Target) -> Result<Self, ExecError> {
        match &target.connection {
            Connection::Ssh {
                host,
                port,
                user,
                host_key,
                known_hosts,
            } => Ok(Self {
                name: target.name.clone(),
                host: host.clone(),
                port: *port,
                user: user.clone(),
                host_key: host_key.clone(),
                known_hosts: known_hosts.as_ref().map(PathBuf::from),
            }),
            other => Err(ExecError::Unsupported(format!(
                "the ssh executor cannot serve target '{}' (connection kind '{}'); \
                 register the '{}' executor",
                target.name,
                other.kind(),
                other.kind()
            ))),
        }
    }

    /// `target 'NAME' (USER@HOST:PORT)`, for messages.
    pub fn label(&self) -> String {
        format!("target '{}' ({}@{})", self.name, self.user, self.address())
    }

    /// `HOST:PORT` (`[HOST]:PORT` for IPv6 literals).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[async_trait]
impl Executor for SshExecutor {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn connect(
        &self,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<Box<dyn Session>, ExecError> {
        Ok(Box::new(self.open_session(target, cred).await?))
    }

    async fn check(&self, target: &Target, cred: Option<&Credential>) -> Result<Probe, ExecError> {
        let session = self.open_session(target, cred).await?;
        let probe = session.probe().await;
        session.disconnect().await;
        probe
    }

    async fn fetch_host_key(&self, target: &Target) -> Result<Option<String>, ExecError> {
        match &target.connection {
            opsconductor_core::model::Connection::Ssh { host, port, .. } => {
                hostkey::fetch_host_key(host, *port, self.connect_timeout)
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// An authenticated connection to one target, reused across the steps of a
/// run. Cheap to clone; the connection closes when the last clone is dropped
/// or [`Session::close`] is called.
#[derive(Clone)]
pub struct SshSession {
    inner: Arc<Inner>,
}

struct Inner {
    handle: client::Handle<hostkey::Client>,
    /// Fingerprint of the (verified) server key.
    host_key: String,
    dest: Destination,
    config: SshExecutor,
    sftp: OnceCell<copy::Sftp>,
    connected_in: Duration,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("target", &self.inner.dest.label())
            .finish_non_exhaustive()
    }
}

impl SshSession {
    /// The target's name.
    pub fn target_name(&self) -> &str {
        &self.inner.dest.name
    }

    /// Whether the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.inner.handle.is_closed()
    }

    /// Describes the target: `uname -sr` as the OS, plus host name,
    /// architecture, user and timings in the details.
    pub async fn probe(&self) -> Result<Probe, ExecError> {
        let started = Instant::now();
        let out = exec::run_helper(
            &self.inner,
            "uname -s -r; uname -n; uname -m",
            self.inner.config.auth_timeout,
        )
        .await?;
        let round_trip = started.elapsed();
        if !out.status.success() {
            return Err(ExecError::Spawn(format!(
                "`uname` failed on {} ({}): {}",
                self.inner.dest.label(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().map(str::trim);
        let os = lines.next().unwrap_or_default().to_owned();
        let mut details = BTreeMap::new();
        if let Some(h) = lines.next().filter(|l| !l.is_empty()) {
            details.insert("hostname".into(), h.to_owned());
        }
        if let Some(a) = lines.next().filter(|l| !l.is_empty()) {
            details.insert("arch".into(), a.to_owned());
        }
        details.insert("user".into(), self.inner.dest.user.clone());
        details.insert("address".into(), self.inner.dest.address());
        details.insert(
            "connect_ms".into(),
            self.inner.connected_in.as_millis().to_string(),
        );
        details.insert("exec_ms".into(), round_trip.as_millis().to_string());
        details.insert("host_key".into(), self.inner.host_key.clone());
        Ok(Probe { os, details })
    }

    async fn disconnect(&self) {
        if let Err(e) = self
            .inner
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await
        {
            tracing::debug!(target = %self.inner.dest.name, error = %e, "disconnect");
        }
    }
}

#[async_trait]
impl Session for SshSession {
    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        exec::exec(&self.inner, ctx, cmd, out).await
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        copy::copy(&self.inner, ctx, file).await
    }

    async fn close(self: Box<Self>) {
        if let Some(sftp) = self.inner.sftp.get() {
            sftp.close();
        }
        self.disconnect().await;
    }
}
