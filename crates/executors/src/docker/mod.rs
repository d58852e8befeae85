//! The Docker executor (connection kind `docker`): every step runs in a
//! **fresh container** from the target's image on a Docker engine, isolated by
//! default, streamed live, and removed afterwards.
//!
//! # The engine
//!
//! By default the executor talks to the local engine over its Unix socket
//! (`/var/run/docker.sock`) and negotiates the API version on first use, so
//! older engines (Debian's 20.10 speaks API 1.41) work. The address is
//! [`DockerExecutor::socket`]: a socket path, `unix:///path`, or
//! `tcp://host:port` (also `http://`) for an engine's plain-TCP API.
//! [`DockerExecutor::from_env`] — what the `opsconductor` facade registers,
//! so the CLI and server follow it — takes it from `OPSC_DOCKER_SOCKET`,
//! else `DOCKER_HOST`, else the default, so the engine is chosen without
//! touching Rust.
//!
//! A **remote engine over TCP + TLS** (`DOCKER_TLS_VERIFY`, port 2376) needs
//! a TLS client this crate does not build in (bollard's `ssl` feature):
//! with `DOCKER_TLS_VERIFY` set, `from_env` refuses plain TCP with a clear
//! connect error rather than talk to the engine unencrypted. Embedders hand
//! a [`bollard::Docker`] client to [`DockerExecutor::with_client`] instead:
//! enable bollard's `ssl` feature in their own `Cargo.toml` and build it
//! with `Docker::connect_with_ssl(addr, key, cert, ca, timeout,
//! API_DEFAULT_VERSION)` (client key and certificate, and the CA that signed
//! the engine's certificate). Nothing
//! here needs a file system shared with the engine — files travel through the
//! engine's archive API — so a remote engine behaves like the local one.
//! Anyone who can reach an engine's API controls its host: protect the socket
//! and require client certificates on TCP.
//!
//! Images are never pulled: no registry can be assumed. A target whose image
//! is missing fails with a clear error at `connect`/`check`; build or load the
//! image first.
//!
//! # Isolation (the defaults, and the target's `limits`)
//!
//! Each step container gets, unless the target's `limits` say otherwise (see
//! [`Limits`] for the keys, their syntax and defaults; unknown keys and bad
//! values are errors naming the key):
//!
//! | key | default | what |
//! |---|---|---|
//! | `memory` | `512m` | memory limit, no swap on top |
//! | `cpus` | `1` | CPU quota (`nano_cpus`) |
//! | `pids` | `256` | process/thread limit |
//! | `network` | `none` | no network at all; `bridge`, `host` or a network name to give one |
//! | `read_only` | `true` | read-only root file system |
//! | `tmp` | `tmpfs` | `/tmp` is a fresh, size-limited tmpfs per step; `session` for the session's workspace volume (shared by the session's steps, not size-limited) |
//! | `tmpfs_size` | `64m` | size of that tmpfs (only with `tmp: tmpfs`, the default) |
//! | `user` | `65534:65534` | the user (nobody); `""` for the image's own `USER` |
//! | `init` | `true` | `docker-init` as PID 1 (reaps zombies, the command is not PID 1) |
//!
//! Always: `no-new-privileges`, every capability dropped (`cap_drop: ALL`),
//! the engine's logging driver off (output goes only to the attached
//! executor, never to the engine's disk), stdin empty. A step's own `limits`
//! (the same keys but `tmp`) override its target's for that step's
//! containers; they are checked when the run is submitted.
//!
//! # One container per step, one workspace per session
//!
//! A session is one target in one run. Every `exec` creates a container,
//! attaches to its stdout and stderr, starts it, forwards output as it
//! arrives (separately, with back-pressure from the [`OutputSink`](opsconductor_core::executor::OutputSink)), waits,
//! reads the exit code, and removes the container and its anonymous volumes.
//! Processes never outlive their step.
//!
//! By default (`tmp: tmpfs`) `/tmp` is a fresh tmpfs of `tmpfs_size` in
//! every container, so a step can neither fill the engine's disk through
//! `/tmp` nor leave anything there for the next step; the root stays
//! read-only, so nothing a step writes survives it.
//!
//! With `tmp: session` (opt-in) the session owns a Docker **volume**
//! (`opsc-ws-<session>`), created on first use, mounted at `/tmp` in every
//! container of the session and removed at [`Session::close`] (or when the
//! session is dropped, or by the sweeper). So files a step writes under
//! `/tmp` are there for the next step, as on an SSH host; the rest of the
//! file system is the image's, read-only. The workspace starts empty (the
//! image's `/tmp` is not copied in) with mode 1777, whatever the image has
//! at `/tmp`. It is not size-limited (the local volume driver has no quota),
//! which is why it is not the default. Ask for it when steps hand files to
//! each other under `/tmp`, or `copy` a file there for a later step: the
//! engine cannot put a copied file into a tmpfs.
//!
//! A working directory (`workdir`) that does not exist is created, empty,
//! by the engine (unlike on a host, where it is an error).
//!
//! # `copy`
//!
//! Files travel as tar archives through the engine's archive API, which can
//! write into a container that has not started, but not into a tmpfs nor onto
//! a read-only root (checked on engine 20.10). Hence:
//!
//! - **Under `/tmp` with `tmp: session`**: the file is uploaded into the
//!   workspace under a temporary name (`.NAME.opsc-<id>`) by a short-lived
//!   container of the session's image, which then renames it into place with
//!   the shell and `mv -f` (so the image needs `mv`, as any image with a
//!   shell has). The rename is atomic; a failed upload leaves the old file
//!   untouched; a directory in the way is an error. The
//!   file keeps the mode asked and belongs to the step user (numeric users
//!   are written into the archive; named users are resolved by the engine
//!   through the image's `/etc/passwd`).
//! - **Elsewhere with `read_only: false`**: the upload is checked at once
//!   (the directory must exist in the image) and recorded; the session
//!   keeps the list and uploads every recorded file into each later
//!   container of the session before it starts (a later copy to the same
//!   path replaces the earlier one). So `copy` then `exec` sees the file,
//!   and every step starts from the same files.
//! - **Elsewhere on a read-only root, or under `/tmp` with `tmp: tmpfs`
//!   (the default)**: an error that says so and how to change it
//!   (`tmp: session`, or `read_only: false` and a destination outside
//!   `/tmp`).
//!
//! A destination whose directory does not exist is an error naming it.
//!
//! # Scripts
//!
//! A `script` body is uploaded as a file into an anonymous volume mounted at
//! `/.opsconductor` in the step's container (it works on a read-only root)
//! and run as `INTERPRETER [ARGS] /.opsconductor/script`; the interpreter
//! is looked up in the image's `PATH`. The volume goes with the container.
//!
//! # Environment and secrets
//!
//! The step's environment (secrets included) goes into the container's
//! `Env`, never onto a command line. Note that `docker inspect` shows a
//! container's `Env` to anyone with access to the engine, for as long as the
//! container exists (the duration of the step).
//!
//! # Ending: exit codes, signals, OOM, timeout and cancel
//!
//! The exit code is the one the engine reports for the container. The
//! engine does not tell a signal from an exit code: a command killed by
//! signal N reports `128 + N` (137 for SIGKILL), so the executor's
//! [`Capabilities::signals`] is `false`. When the kernel's OOM killer struck
//! (the engine's `State.OOMKilled`) and the command failed, `exec` returns
//! [`ExecError::Io`] with the message `killed: out of memory (limit 256 MiB)`
//! instead of an exit status, so the step's error says why; a command that
//! survived an OOM kill of one of its children and exited 0 still succeeds,
//! with a `System` note. On deadline or cancel the container is killed and
//! removed at once, and `exec` returns [`ExecError::TimedOut`] or
//! [`ExecError::Cancelled`]; output that arrived before is kept.
//!
//! # Labels and the sweeper
//!
//! Every container and volume carries `opsconductor.managed=true`,
//! `opsconductor.run`, `opsconductor.session`, `opsconductor.target`, the
//! worker (`opsconductor.worker=HOST:PID`, its boot id and process start
//! time) and, on containers, `opsconductor.step` and `opsconductor.role`.
//! Everything is removed on every path out (success, failure, error, timeout,
//! cancel, a dropped future). If the worker itself is killed, the **sweeper**
//! ([`DockerExecutor::sweep_orphans`], run once on the executor's first use)
//! removes what it left; the rule is in [`sweep`].
//!
//! What this does **not** cover: after `kill -9` of a worker its step's
//! container keeps running (the engine owns it, and nothing watches the
//! worker) until a later worker process on the same host first uses the
//! Docker executor — its sweep finds the container's worker gone and removes
//! it. A worker that is *frozen* (SIGSTOP) past its lease is still alive, so
//! no sweep touches its container, and
//! [`StepContext::lease_margin`](opsconductor_core::executor::StepContext::lease_margin) is not
//! enforced here: the container runs on until the step's deadline, or until
//! the worker resumes, finds its lease lost and stops it. Idempotent Docker
//! steps may therefore overlap with a rescuer's re-run while a worker is
//! frozen (the local and SSH executors kill their steps in time).

mod archive;
mod container;
mod engine;
pub mod limits;
mod session;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use opsconductor_core::executor::{Capabilities, Credential, ExecError, Executor, Probe, Session};
use opsconductor_core::model::{Connection, Target};

use engine::{Engine, image_error, unreachable_engine};
pub(crate) use engine::{engine_error, missing_image};
pub use limits::{InvalidLimit, LIMIT_KEYS, Limits, TmpMode};
pub use session::DockerSession;
use session::check_step_overrides;
pub use sweep::{SweepReport, WorkerId};

/// The engine's default Unix socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The environment variable [`DockerExecutor::from_env`] reads first: the
/// engine's address (a socket path, `unix://…` or `tcp://host:port`).
pub const ENV_SOCKET: &str = "OPSC_DOCKER_SOCKET";

/// Where an engine address from the environment points, for
/// [`DockerExecutor::from_env`]: `opsc` (`OPSC_DOCKER_SOCKET`) wins over
/// `docker_host` (`DOCKER_HOST`); empty values count as unset. With
/// `tls_verify` (`DOCKER_TLS_VERIFY` set, not `0`) a `tcp://` address
/// becomes `https://`, which [`DockerExecutor::client`] refuses with an
/// explanation: this crate has no TLS client for the engine, and silently
/// downgrading to plain TCP would send the engine's credentials-equivalent
/// API in clear.
pub fn engine_address(
    opsc: Option<&str>,
    docker_host: Option<&str>,
    tls_verify: Option<&str>,
) -> String {
    let set = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let addr = set(opsc)
        .or_else(|| set(docker_host))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
    let tls = set(tls_verify).is_some_and(|v| v != "0");
    match addr.strip_prefix("tcp://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => addr,
    }
}

/// The default shell for [`Command::Shell`](opsconductor_core::executor::Command::Shell) (`SHELL -c COMMAND`).
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// The default age after which the sweeper removes exited containers of
/// other hosts (see [`sweep`]).
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Where a script is mounted in its step's container.
pub const SCRIPT_DIR: &str = "/.opsconductor";

/// Runs steps in fresh containers on a Docker engine (connection kind
/// `docker`). See the [module docs](self) for the isolation, the workspace,
/// copy, OOM and cleanup semantics.
///
/// ```
/// use std::time::Duration;
/// use opsconductor_executors::docker::{DockerExecutor, Limits};
///
/// let exec = DockerExecutor::new()
///     .with_socket("/run/docker.sock")
///     .with_limits(Limits { memory: 1 << 30, ..Limits::default() })
///     .with_orphan_grace(Duration::from_secs(600));
/// assert_eq!(exec.socket, "/run/docker.sock");
/// ```
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    /// The engine's address (used unless a client was given with
    /// [`DockerExecutor::with_client`]): a Unix socket path, `unix:///path`,
    /// or `tcp://host:port` / `http://host:port` for plain TCP. The
    /// connection is made on first use: change it before, or with
    /// [`DockerExecutor::with_socket`].
    pub socket: String,
    /// The isolation every target starts from, before its own `limits`.
    pub defaults: Limits,
    /// The shell that runs [`Command::Shell`](opsconductor_core::executor::Command::Shell) as `SHELL -c COMMAND`.
    pub shell: String,
    /// The sweeper removes exited containers of other hosts older than this.
    pub orphan_grace: Duration,
    /// Run [`DockerExecutor::sweep_orphans`] once, on first use.
    pub sweep_on_first_use: bool,
    engine: Arc<Engine>,
}

impl Default for DockerExecutor {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            defaults: Limits::default(),
            shell: DEFAULT_SHELL.into(),
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            sweep_on_first_use: true,
            engine: Engine::new(None),
        }
    }
}

impl DockerExecutor {
    /// An executor for the local engine with the default isolation.
    pub fn new() -> Self {
        Self::default()
    }

    /// An executor for the engine the environment names (so deployments
    /// choose it without code): `OPSC_DOCKER_SOCKET`, else `DOCKER_HOST`
    /// (`unix://…`, `tcp://…`), else [`DEFAULT_SOCKET`]; see
    /// [`engine_address`] for `DOCKER_TLS_VERIFY`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        let addr = engine_address(
            var(ENV_SOCKET).as_deref(),
            var("DOCKER_HOST").as_deref(),
            var("DOCKER_TLS_VERIFY").as_deref(),
        );
        Self::new().with_socket(addr)
    }

    /// Talks to the engine at this address: a Unix socket (`unix://`
    /// prefix optional) or `tcp://host:port` (plain TCP, no TLS).
    pub fn with_socket(mut self, path: impl Into<String>) -> Self {
        self.socket = path.into();
        self.engine = Engine::new(None);
        self
    }

    /// Talks to the engine through this client (a remote engine over TCP +
    /// TLS, `DOCKER_HOST`, …). The API version is still negotiated.
    pub fn with_client(mut self, docker: Docker) -> Self {
        self.engine = Engine::new(Some(docker));
        self
    }

    /// Sets the isolation every target starts from.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.defaults = limits;
        self
    }

    /// Sets the shell used for [`Command::Shell`](opsconductor_core::executor::Command::Shell).
    pub fn with_shell(mut self, shell: impl Into<String>) -> Self {
        self.shell = shell.into();
        self
    }

    /// Sets the sweeper's age limit for other hosts' exited containers.
    pub fn with_orphan_grace(mut self, grace: Duration) -> Self {
        self.orphan_grace = grace;
        self
    }

    /// Whether to sweep orphans once on first use (default: yes).
    pub fn with_sweep_on_first_use(mut self, sweep: bool) -> Self {
        self.sweep_on_first_use = sweep;
        self
    }

    /// This worker process, as written into the labels.
    pub fn worker(&self) -> &WorkerId {
        &self.engine.worker
    }

    /// The target's image and its isolation (the defaults with the target's
    /// `limits` applied); an error for other connection kinds and bad limits.
    pub fn settings_for(&self, target: &Target) -> Result<(String, Limits), ExecError> {
        match &target.connection {
            Connection::Docker { image, limits } => {
                if image.trim().is_empty() {
                    return Err(ExecError::Spawn(format!(
                        "target '{}' names no image",
                        target.name
                    )));
                }
                let limits = self.defaults.with_overrides(limits).map_err(|e| {
                    ExecError::Spawn(format!("target '{}': invalid {e}", target.name))
                })?;
                Ok((image.clone(), limits))
            }
            other => Err(ExecError::Unsupported(format!(
                "the docker executor cannot serve target '{}' (connection kind '{}'); \
                 register the '{}' executor",
                target.name,
                other.kind(),
                other.kind()
            ))),
        }
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn check_step_limits(
        &self,
        target: &Target,
        limits: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), String> {
        let (_, base) = self.settings_for(target).map_err(|e| e.to_string())?;
        check_step_overrides(&base, limits).map(|_| ())
    }

    fn capabilities(&self) -> Capabilities {
        // The engine reports 128 + N for a signal; it cannot be told from
        // an exit code.
        Capabilities::full().without_signals()
    }

    async fn connect(
        &self,
        target: &Target,
        _cred: Option<&Credential>,
    ) -> Result<Box<dyn Session>, ExecError> {
        Ok(Box::new(self.session(target).await?))
    }

    async fn check(&self, target: &Target, _cred: Option<&Credential>) -> Result<Probe, ExecError> {
        let (image, limits) = self.settings_for(target)?;
        let docker = self.client().await?;
        let version = docker
            .version()
            .await
            .map_err(|e| unreachable_engine(&self.socket, &e))?;
        let engine = version.version.clone().unwrap_or_else(|| "unknown".into());
        let img = match docker.inspect_image(&image).await {
            Ok(img) => img,
            Err(e) => {
                return Err(match image_error(&image, &e) {
                    ExecError::Spawn(msg) => {
                        ExecError::Spawn(format!("{msg} (engine: Docker {engine})"))
                    }
                    other => other,
                });
            }
        };
        let kernel = version.kernel_version.clone().unwrap_or_default();
        let platform = format!(
            "{}/{}",
            img.os.clone().unwrap_or_else(|| "unknown".into()),
            img.architecture.clone().unwrap_or_else(|| "unknown".into())
        );
        let mut details = BTreeMap::new();
        details.insert("engine".into(), format!("Docker {engine}"));
        if let Some(api) = version.api_version {
            details.insert("engine_api".into(), api);
        }
        details.insert("client_api".into(), docker.client_version().to_string());
        details.insert("image".into(), image.clone());
        details.insert("image_present".into(), "true".into());
        if let Some(id) = img.id {
            details.insert("image_id".into(), id);
        }
        details.insert("platform".into(), platform.clone());
        details.insert("kernel".into(), kernel.clone());
        details.insert("memory".into(), limits::human_bytes(limits.memory));
        details.insert("cpus".into(), limits.cpus.to_string());
        details.insert("pids".into(), limits.pids.to_string());
        details.insert("network".into(), limits.network.clone());
        details.insert("read_only".into(), limits.read_only.to_string());
        details.insert("tmp".into(), limits.tmp.as_str().into());
        if limits.tmp == TmpMode::Tmpfs {
            details.insert("tmpfs_size".into(), limits::human_bytes(limits.tmpfs_size));
        }
        details.insert(
            "user".into(),
            if limits.user.is_empty() {
                "(image default)".into()
            } else {
                limits.user.clone()
            },
        );
        let os_name = version.os.unwrap_or_else(|| "linux".into());
        Ok(Probe {
            os: format!("{os_name} {kernel} ({platform} image on Docker {engine})"),
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::engine::connect_to;
    use super::session::normalize;
    use super::*;

    #[test]
    fn the_engine_address_comes_from_the_environment() {
        assert_eq!(engine_address(None, None, None), DEFAULT_SOCKET);
        assert_eq!(engine_address(Some(" "), Some(""), None), DEFAULT_SOCKET);
        assert_eq!(
            engine_address(Some("/run/docker.sock"), Some("tcp://h:2375"), None),
            "/run/docker.sock",
            "OPSC_DOCKER_SOCKET wins"
        );
        assert_eq!(
            engine_address(None, Some("unix:///run/user/1000/docker.sock"), None),
            "unix:///run/user/1000/docker.sock"
        );
        assert_eq!(
            engine_address(None, Some("tcp://h:2375"), Some("0")),
            "tcp://h:2375"
        );
        assert_eq!(
            engine_address(None, Some("tcp://h:2376"), Some("1")),
            "https://h:2376",
            "TLS asked for is never downgraded to plain TCP"
        );
        match connect_to("https://h:2376") {
            Err(ExecError::Connect(msg)) => assert!(msg.contains("DOCKER_TLS_VERIFY"), "{msg}"),
            other => panic!("{other:?}"),
        }
        match connect_to("ssh://h") {
            Err(ExecError::Connect(msg)) => assert!(msg.contains("tcp://host:port"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(connect_to("tcp://127.0.0.1:2375").is_ok());
        assert!(connect_to("unix:///var/run/docker.sock").is_ok());
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("/tmp/a/./b//c").as_deref(), Some("/tmp/a/b/c"));
        assert_eq!(normalize("/etc/app.conf").as_deref(), Some("/etc/app.conf"));
        assert_eq!(normalize("relative/file"), None);
        assert_eq!(normalize("/tmp/../etc/passwd"), None);
        assert_eq!(normalize("/tmp/dir/"), None);
        assert_eq!(normalize("/"), None);
    }

    #[test]
    fn other_targets_are_refused_and_limits_checked() {
        let exec = DockerExecutor::new();
        match exec.settings_for(&Target::local()) {
            Err(ExecError::Unsupported(msg)) => assert!(msg.contains("local"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let mut target = Target::local();
        target.name = "box".into();
        target.connection = Connection::Docker {
            image: "busybox".into(),
            limits: BTreeMap::from([("memroy".to_owned(), serde_json::json!("1g"))]),
        };
        match exec.settings_for(&target) {
            Err(ExecError::Spawn(msg)) => {
                assert!(
                    msg.contains("box") && msg.contains("limits.memroy"),
                    "{msg}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
