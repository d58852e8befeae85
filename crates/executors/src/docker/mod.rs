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
//! arrives (separately, with back-pressure from the [`OutputSink`]), waits,
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

mod archive;
mod container;
pub mod limits;
pub mod sweep;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    VolumeCreateRequest,
};
use bollard::query_parameters::RemoveVolumeOptionsBuilder;
use bollard::{API_DEFAULT_VERSION, Docker};
use opsconductor_core::executor::{
    Capabilities, Command, Credential, ExecError, Executor, ExitStatus, FileSpec, OutputSink,
    Probe, Session, StepContext,
};
use opsconductor_core::model::{Connection, RunId, Stream, Target};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use container::{Container, Exit, Upload, cleanup_now, status};
pub use limits::{InvalidLimit, LIMIT_KEYS, Limits, TmpMode};
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

/// The default shell for [`Command::Shell`] (`SHELL -c COMMAND`).
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// The default age after which the sweeper removes exited containers of
/// other hosts (see [`sweep`]).
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Where a script is mounted in its step's container.
pub const SCRIPT_DIR: &str = "/.opsconductor";

/// Moves an uploaded temporary file (`$1`) over the destination (`$2`)
/// with a rename; refuses a directory, and removes the temporary file when
/// it fails.
const RENAME_INTO_PLACE: &str = r#"if [ -d "$2" ] && [ ! -L "$2" ]; then
  echo "$2 is a directory" >&2; rm -f -- "$1"; exit 1
fi
mv -f -- "$1" "$2" || { rc=$?; rm -f -- "$1"; exit $rc; }"#;

/// Where `/tmp` is mounted: the tmpfs (default) or the session's workspace
/// (`tmp: session`).
const WORKSPACE: &str = "/tmp";

/// How long engine requests that return at once may take.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// How much of a helper container's stderr goes into an error message.
const HELPER_OUTPUT_LIMIT: usize = 4096;

/// The message for an image the engine does not have.
pub(crate) fn missing_image(image: &str) -> String {
    format!(
        "image '{image}' is not present on the engine; no registry can be assumed here — \
         build or load it first (docker build, docker load or docker import)"
    )
}

/// The engine's own message for an error, without bollard's wrapping.
pub(crate) fn engine_error(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        other => other.to_string(),
    }
}

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
    /// The shell that runs [`Command::Shell`] as `SHELL -c COMMAND`.
    pub shell: String,
    /// The sweeper removes exited containers of other hosts older than this.
    pub orphan_grace: Duration,
    /// Run [`DockerExecutor::sweep_orphans`] once, on first use.
    pub sweep_on_first_use: bool,
    engine: Arc<Engine>,
}

/// The connection, shared by clones of one executor.
#[derive(Debug)]
struct Engine {
    preset: Option<Docker>,
    client: OnceCell<Docker>,
    swept: OnceCell<()>,
    worker: WorkerId,
}

impl Engine {
    fn new(preset: Option<Docker>) -> Arc<Self> {
        Arc::new(Self {
            preset,
            client: OnceCell::new(),
            swept: OnceCell::new(),
            worker: WorkerId::current(),
        })
    }
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

    /// Sets the shell used for [`Command::Shell`].
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

    /// The engine client, connected and version-negotiated on first use
    /// (which also runs the sweeper once, if enabled).
    pub async fn client(&self) -> Result<Docker, ExecError> {
        let docker = self
            .engine
            .client
            .get_or_try_init(|| async {
                let (docker, addr) = match &self.engine.preset {
                    Some(d) => (d.clone(), "the configured address".to_owned()),
                    None => (connect_to(&self.socket)?, self.socket.clone()),
                };
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable_engine(&addr, &e))
            })
            .await?
            .clone();
        if self.sweep_on_first_use {
            self.engine
                .swept
                .get_or_init(|| async {
                    match sweep::sweep(&docker, &self.engine.worker, self.orphan_grace).await {
                        Ok(r) if r.containers.is_empty() && r.volumes.is_empty() => {}
                        Ok(r) => tracing::info!(
                            containers = r.containers.len(),
                            volumes = r.volumes.len(),
                            "removed orphaned Docker objects"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "sweeping orphaned Docker objects failed")
                        }
                    }
                })
                .await;
        }
        Ok(docker)
    }

    /// Removes containers and volumes left behind by workers that are gone
    /// (the rule is in [`sweep`]).
    pub async fn sweep_orphans(&self) -> Result<SweepReport, ExecError> {
        let docker = self.client().await?;
        sweep::sweep(&docker, &self.engine.worker, self.orphan_grace).await
    }

    /// Opens a session on a `docker` target: checks the limits and that the
    /// image is present. Nothing is created until the first step.
    pub async fn session(&self, target: &Target) -> Result<DockerSession, ExecError> {
        let (image, limits) = self.settings_for(target)?;
        let docker = self.client().await?;
        if let Err(e) = docker.inspect_image(&image).await {
            return Err(image_error(&image, &e));
        }
        let id = RunId::new().0.simple().to_string();
        Ok(DockerSession {
            inner: SessionInner {
                docker,
                worker: self.engine.worker.clone(),
                shell: self.shell.clone(),
                target: target.name.clone(),
                image,
                limits,
                workspace: OnceCell::new(),
                replay: Mutex::new(Vec::new()),
                id,
            },
        })
    }
}

/// A client for an engine address (see [`DockerExecutor::socket`]).
fn connect_to(addr: &str) -> Result<Docker, ExecError> {
    let addr = addr.trim();
    if addr.starts_with("https://") {
        return Err(ExecError::Connect(format!(
            "cannot reach the Docker engine at {addr}: TLS to the engine (DOCKER_TLS_VERIFY) is not \
             built into this program; use a Unix socket or an SSH tunnel to it, or embed the \
             executor with a TLS client (DockerExecutor::with_client, bollard's ssl feature)"
        )));
    }
    let docker = if addr.starts_with("tcp://") || addr.starts_with("http://") {
        Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else if addr.contains("://") && !addr.starts_with("unix://") {
        return Err(ExecError::Connect(format!(
            "cannot reach the Docker engine at {addr}: give a socket path, unix:///path or \
             tcp://host:port"
        )));
    } else {
        Docker::connect_with_socket(addr, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    };
    docker.map_err(|e| unreachable_engine(addr, &e))
}

fn unreachable_engine(addr: &str, e: &EngineError) -> ExecError {
    ExecError::Connect(format!(
        "cannot reach the Docker engine at {addr}: {}",
        engine_error(e)
    ))
}

fn image_error(image: &str, e: &EngineError) -> ExecError {
    if status(e) == Some(404) {
        ExecError::Spawn(missing_image(image))
    } else {
        ExecError::Connect(format!(
            "cannot inspect image '{image}': {}",
            engine_error(e)
        ))
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

/// A file recorded for re-upload into every later container of a session
/// (a copy outside the workspace on a writable root).
#[derive(Debug, Clone)]
struct Recorded {
    /// Absolute destination.
    dest: String,
    content: Vec<u8>,
    mode: u32,
}

/// One target in one run: a fresh container per step, sharing the recorded
/// copies and, with `tmp: session`, a workspace volume at `/tmp`. Close it
/// (or drop it) to remove the workspace.
#[derive(Debug)]
pub struct DockerSession {
    inner: SessionInner,
}

#[derive(Debug)]
struct SessionInner {
    docker: Docker,
    worker: WorkerId,
    shell: String,
    target: String,
    image: String,
    limits: Limits,
    /// The workspace volume's name, once created.
    workspace: OnceCell<String>,
    replay: Mutex<Vec<Recorded>>,
    id: String,
}

/// What to run in a container.
struct Spec {
    role: &'static str,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    script: bool,
}

impl DockerSession {
    /// The session id, as in the `opsconductor.session` label.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The image the session's containers run.
    pub fn image(&self) -> &str {
        &self.inner.image
    }

    /// The isolation of the session's containers.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The name of the workspace volume, once the first step created it.
    pub fn workspace_volume(&self) -> Option<&str> {
        self.inner.workspace.get().map(String::as_str)
    }
}

impl SessionInner {
    /// The session's isolation with the step's own overrides applied.
    fn step_limits(&self, ctx: &StepContext) -> Result<Limits, ExecError> {
        check_step_overrides(&self.limits, &ctx.limits)
            .map_err(|e| ExecError::Spawn(format!("step limits on target '{}': {e}", self.target)))
    }

    fn labels(&self, ctx: &StepContext, role: &str) -> HashMap<String, String> {
        let mut labels = self.worker.labels();
        labels.insert(sweep::LABEL_RUN.into(), ctx.run_id.to_string());
        labels.insert(sweep::LABEL_SESSION.into(), self.id.clone());
        labels.insert(sweep::LABEL_TARGET.into(), self.target.clone());
        labels.insert(sweep::LABEL_ROLE.into(), role.into());
        labels
    }

    /// Who owns uploaded files: a numeric owner in the archive, or the
    /// engine resolving the container's user (`copy_uidgid`).
    fn owner(&self) -> (Option<(u64, u64)>, bool) {
        match self.limits.numeric_owner() {
            Some(owner) => (Some(owner), false),
            None => (None, true),
        }
    }

    /// The workspace volume, created on first use (`tmp: session` only).
    /// Its root is made world-writable with the sticky bit (mode 1777, as
    /// `/tmp` should be), whatever the image has at `/tmp`: the volume is
    /// mounted with `nocopy`, and a container that never starts (with a
    /// writable root, since the engine extracts the mode from `/`) applies
    /// the mode.
    async fn workspace(&self, ctx: &StepContext) -> Result<Option<String>, ExecError> {
        if self.limits.tmp != TmpMode::Session {
            return Ok(None);
        }
        let name = self
            .workspace
            .get_or_try_init(|| async {
                let name = format!("opsc-ws-{}", self.id);
                let request = VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(self.labels(ctx, "workspace")),
                    ..Default::default()
                };
                self.docker.create_volume(request).await.map_err(|e| {
                    ExecError::Io(format!(
                        "cannot create the workspace volume: {}",
                        engine_error(&e)
                    ))
                })?;
                if let Err(e) = self.prepare_workspace(ctx, &name).await {
                    remove_volume(&self.docker, &name).await;
                    return Err(e);
                }
                Ok::<_, ExecError>(name)
            })
            .await?;
        Ok(Some(name.clone()))
    }

    async fn prepare_workspace(&self, ctx: &StepContext, volume: &str) -> Result<(), ExecError> {
        let spec = Spec {
            role: "workspace",
            entrypoint: vec!["true".into()],
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
            script: false,
        };
        let mut config = self.config(ctx, &spec, Some(volume), &self.limits);
        if let Some(host) = config.host_config.as_mut() {
            host.readonly_rootfs = Some(false);
        }
        let name = format!("opsc-workspace-{}", RunId::new().0.simple());
        let container = Container::create(&self.docker, &name, &self.image, config).await?;
        let mode = Upload {
            path: "/".into(),
            tar: archive::directory(WORKSPACE.trim_start_matches('/'), 0o1777)?,
            copy_uidgid: false,
            what: "prepare the workspace".into(),
        };
        let done = container.upload(&mode).await;
        container.remove().await;
        done
    }

    /// The uploads every container of the session gets before it starts:
    /// the recorded copies.
    fn common_uploads(&self) -> Result<Vec<Upload>, ExecError> {
        let mut uploads = Vec::new();
        let recorded = match self.replay.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if !recorded.is_empty() {
            let (owner, copy_uidgid) = self.owner();
            let paths: Vec<String> = recorded
                .iter()
                .map(|r| r.dest.trim_start_matches('/').to_owned())
                .collect();
            let entries: Vec<archive::Entry<'_>> = recorded
                .iter()
                .zip(&paths)
                .map(|(r, path)| archive::Entry {
                    path,
                    content: &r.content,
                    mode: r.mode,
                    owner,
                })
                .collect();
            uploads.push(Upload {
                path: "/".into(),
                tar: archive::files(&entries)?,
                copy_uidgid,
                what: "restore the session's copied files".into(),
            });
        }
        Ok(uploads)
    }

    fn config(
        &self,
        ctx: &StepContext,
        spec: &Spec,
        workspace: Option<&str>,
        l: &Limits,
    ) -> ContainerCreateBody {
        let mut labels = self.labels(ctx, spec.role);
        labels.insert(sweep::LABEL_STEP.into(), ctx.step.to_string());
        let memory = i64::try_from(l.memory).unwrap_or(i64::MAX);
        let mut host = HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((l.cpus * 1e9).round() as i64),
            pids_limit: Some(l.pids),
            network_mode: Some(l.network.clone()),
            readonly_rootfs: Some(l.read_only),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(l.init),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            auto_remove: Some(false),
            ..Default::default()
        };
        match workspace {
            Some(volume) => {
                host.mounts = Some(vec![Mount {
                    target: Some(WORKSPACE.into()),
                    source: Some(volume.to_owned()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(false),
                    // Never copy the image's /tmp (content, owner, mode) in.
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]);
            }
            None => {
                host.tmpfs = Some(HashMap::from([(
                    WORKSPACE.to_owned(),
                    format!("rw,exec,nosuid,nodev,size={},mode=1777", l.tmpfs_size),
                )]));
            }
        }
        ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            working_dir: spec.workdir.clone(),
            user: (!l.user.is_empty()).then(|| l.user.clone()),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            volumes: spec.script.then(|| vec![SCRIPT_DIR.to_owned()]),
            host_config: Some(host),
            ..Default::default()
        }
    }

    /// Runs one container to its end under the context's deadline and
    /// cancellation; the container is removed on every path.
    async fn run(
        &self,
        ctx: &StepContext,
        spec: Spec,
        extra: Vec<Upload>,
        out: &OutputSink,
        limits: &Limits,
    ) -> Result<Exit, ExecError> {
        stopped(ctx)?;
        let workspace = self.workspace(ctx).await?;
        let mut uploads = self.common_uploads()?;
        uploads.extend(extra);
        let program = spec.entrypoint.first().cloned().unwrap_or_default();
        let name = format!("opsc-{}-{}", spec.role, RunId::new().0.simple());
        let config = self.config(ctx, &spec, workspace.as_deref(), limits);
        let container = Container::create(&self.docker, &name, &self.image, config).await?;
        let work = async {
            for up in &uploads {
                container.upload(up).await?;
            }
            container.run(&program, &self.image, out).await
        };
        let result = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ExecError::Cancelled),
            _ = until(ctx.deadline) => Err(ExecError::TimedOut),
            r = work => r,
        };
        container.remove().await;
        result
    }

    /// Runs a helper container (no output forwarded) and returns its exit
    /// and the start of its stderr.
    async fn run_helper(
        &self,
        ctx: &StepContext,
        spec: Spec,
        extra: Vec<Upload>,
    ) -> Result<(Exit, String), ExecError> {
        let (sink, mut rx) = OutputSink::channel(16);
        let collect = async {
            let mut err = Vec::new();
            while let Some(ev) = rx.recv().await {
                if ev.stream == Stream::Stderr && err.len() < HELPER_OUTPUT_LIMIT {
                    err.extend_from_slice(&ev.data);
                }
            }
            err
        };
        let run = async {
            let r = self.run(ctx, spec, extra, &sink, &self.limits).await;
            drop(sink);
            r
        };
        let (result, err) = tokio::join!(run, collect);
        let err = String::from_utf8_lossy(&err[..err.len().min(HELPER_OUTPUT_LIMIT)])
            .trim()
            .to_owned();
        result.map(|exit| (exit, err))
    }

    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        stopped(ctx)?;
        if let Some(dir) = ctx.workdir.as_deref().filter(|d| !d.starts_with('/')) {
            return Err(ExecError::Spawn(format!(
                "the working directory '{dir}' must be an absolute path in the container"
            )));
        }
        let mut env = Vec::with_capacity(ctx.env.len());
        for (k, v) in &ctx.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(ExecError::Spawn(format!(
                    "environment variable {k:?} cannot be passed to a container"
                )));
            }
            env.push(format!("{k}={v}"));
        }
        let mut extra = Vec::new();
        let (entrypoint, args, script) = match cmd {
            Command::Shell(line) => (
                vec![self.shell.clone()],
                vec!["-c".to_owned(), line.clone()],
                false,
            ),
            Command::Script { interpreter, body } => {
                let mut words = interpreter.split_whitespace().map(str::to_owned);
                let program = words.next().ok_or_else(|| {
                    ExecError::Spawn(
                        "the script interpreter is empty; name a program such as 'sh'".into(),
                    )
                })?;
                let mut args: Vec<String> = words.collect();
                args.push(format!("{SCRIPT_DIR}/script"));
                let (owner, copy_uidgid) = self.owner();
                extra.push(Upload {
                    path: SCRIPT_DIR.into(),
                    tar: archive::files(&[archive::Entry {
                        path: "script",
                        content: body.as_bytes(),
                        mode: 0o644,
                        owner,
                    }])?,
                    copy_uidgid,
                    what: "upload the script".into(),
                });
                (vec![program], args, true)
            }
        };
        let spec = Spec {
            role: "step",
            entrypoint,
            cmd: args,
            env,
            workdir: ctx.workdir.clone(),
            script,
        };
        let program = spec.entrypoint.first().cloned().unwrap_or_default();
        let limits = self.step_limits(ctx)?;
        let exit = self.run(ctx, spec, extra, out, &limits).await?;
        if let Some(msg) = init_exec_failure(&exit) {
            return Err(ExecError::Spawn(format!(
                "'{program}' in image '{}': {msg}",
                self.image
            )));
        }
        let code = i32::try_from(exit.code).unwrap_or(-1);
        if exit.oom_killed {
            let why = format!(
                "killed: out of memory (limit {})",
                limits::human_bytes(limits.memory)
            );
            if code != 0 {
                return Err(ExecError::Io(why));
            }
            out.write(
                Stream::System,
                format!("note: a process of the step was {why}; the command still exited 0\n"),
            )
            .await;
        }
        Ok(ExitStatus::code(code))
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        stopped(ctx)?;
        let dest = normalize(&file.dest).ok_or_else(|| {
            ExecError::Io(format!(
                "cannot copy to {}: give an absolute path to a file, without '..'",
                file.dest
            ))
        })?;
        let (parent, name) = match dest.rsplit_once('/') {
            Some(("", name)) => ("/".to_owned(), name.to_owned()),
            Some((parent, name)) => (parent.to_owned(), name.to_owned()),
            None => ("/".to_owned(), dest.clone()),
        };
        let what = format!("copy to {dest}");
        let in_tmp = dest.starts_with("/tmp/");
        let (owner, copy_uidgid) = self.owner();
        if in_tmp && self.limits.tmp == TmpMode::Tmpfs {
            return Err(ExecError::Io(format!(
                "cannot {what}: /tmp is a fresh tmpfs in every step container (limits.tmp: \"tmpfs\", \
                 the default), which the engine cannot write into; set limits.tmp: \"session\" on the \
                 target to keep copied files under /tmp for later steps"
            )));
        }
        if in_tmp {
            // Upload under a temporary name, then rename into place.
            let temp_name = format!(
                ".{name}.opsc-{}",
                &RunId::new().0.simple().to_string()[..12]
            );
            let temp = format!("{}/{temp_name}", parent.trim_end_matches('/'));
            let upload = Upload {
                path: parent.clone(),
                tar: archive::files(&[archive::Entry {
                    path: &temp_name,
                    content: &file.content,
                    mode: file.mode,
                    owner,
                }])?,
                copy_uidgid,
                what: what.clone(),
            };
            let spec = Spec {
                role: "copy",
                entrypoint: vec![self.shell.clone()],
                cmd: vec![
                    "-c".into(),
                    RENAME_INTO_PLACE.into(),
                    "opsc-copy".into(),
                    temp,
                    dest.clone(),
                ],
                env: Vec::new(),
                workdir: None,
                script: false,
            };
            let (exit, stderr) = self.run_helper(ctx, spec, vec![upload]).await?;
            if exit.code != 0 {
                return Err(ExecError::Io(format!(
                    "cannot {what}: renaming the uploaded file into place failed (exit code {}): {stderr}",
                    exit.code
                )));
            }
            return Ok(());
        }
        if self.limits.read_only {
            return Err(ExecError::Io(format!(
                "cannot {what}: the container's root file system is read-only (limits.read_only); \
                 copy under /tmp with limits.tmp: \"session\" (the session's workspace), or set \
                 read_only: false on the target"
            )));
        }
        // A writable root: check now, on a container that never starts, that
        // the directory exists (an empty archive extracted there) and that the
        // file can be written (extracting at `/` alone would create missing
        // directories); then record it for every later container.
        let rel = dest.trim_start_matches('/').to_owned();
        let checks = [
            Upload {
                path: parent.clone(),
                tar: archive::files(&[])?,
                copy_uidgid: false,
                what: what.clone(),
            },
            Upload {
                path: "/".into(),
                tar: archive::files(&[archive::Entry {
                    path: &rel,
                    content: &file.content,
                    mode: file.mode,
                    owner,
                }])?,
                copy_uidgid,
                what: what.clone(),
            },
        ];
        let spec = Spec {
            role: "copy",
            entrypoint: vec!["true".into()],
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
            script: false,
        };
        let name = format!("opsc-copy-{}", RunId::new().0.simple());
        let config = self.config(ctx, &spec, None, &self.limits);
        let container = Container::create(&self.docker, &name, &self.image, config).await?;
        let mut checked = Ok(());
        for up in &checks {
            checked = container.upload(up).await;
            if checked.is_err() {
                break;
            }
        }
        container.remove().await;
        checked?;
        let mut replay = match self.replay.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        replay.retain(|r| r.dest != dest);
        replay.push(Recorded {
            dest,
            content: file.content.clone(),
            mode: file.mode,
        });
        Ok(())
    }

    /// Removes the workspace volume now; `Drop` then has nothing to do.
    async fn remove_workspace(&mut self) {
        if let Some(volume) = self.workspace.take() {
            remove_volume(&self.docker, &volume).await;
        }
    }
}

async fn remove_volume(docker: &Docker, volume: &str) {
    let opts = RemoveVolumeOptionsBuilder::default().force(true).build();
    // A container being removed may still hold the volume for a moment.
    for attempt in 0..25 {
        match docker.remove_volume(volume, Some(opts.clone())).await {
            Ok(()) => return,
            Err(e) if status(&e) == Some(404) => return,
            Err(e) if status(&e) == Some(409) && attempt < 24 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(volume, error = %engine_error(&e), "cannot remove the workspace volume; the sweeper will");
                return;
            }
        }
    }
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        if let Some(volume) = self.workspace.take() {
            let docker = self.docker.clone();
            cleanup_now(async move { remove_volume(&docker, &volume).await });
        }
    }
}

/// The init's (tini's) own message when it could not start the command
/// (`[FATAL tini (7)] exec NAME failed: No such file or directory`, exit
/// code 127): without an init the engine reports that at start instead.
fn init_exec_failure(exit: &Exit) -> Option<String> {
    if exit.code != 127 {
        return None;
    }
    let text = String::from_utf8_lossy(&exit.stderr_head);
    let line = text.lines().find(|l| l.contains("[FATAL tini"))?;
    if !line.contains("exec ") || !line.contains(" failed") {
        return None;
    }
    let msg = line.split_once("] ").map_or(line, |(_, m)| m);
    Some(msg.trim().to_owned())
}

/// `/a/./b//c` → `/a/b/c`; `None` for relative paths, `..`, or a directory.
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.ends_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// The context's stop reason if it already has one.
/// A step's overrides of its target's limits. `tmp` is the session's (the
/// workspace volume is shared by every step of the run), so a step cannot
/// change it.
fn check_step_overrides(
    base: &Limits,
    overrides: &BTreeMap<String, serde_json::Value>,
) -> Result<Limits, String> {
    if overrides.is_empty() {
        return Ok(base.clone());
    }
    if overrides.contains_key("tmp") {
        return Err(
            "'tmp' is chosen per target (every step of a run shares the session's /tmp); \
             set it in the target's limits"
                .into(),
        );
    }
    base.with_overrides(overrides)
        .map_err(|e| format!("invalid {e}"))
}

fn stopped(ctx: &StepContext) -> Result<(), ExecError> {
    if ctx.cancel.is_cancelled() {
        return Err(ExecError::Cancelled);
    }
    if ctx.deadline.is_some_and(|d| d <= Instant::now()) {
        return Err(ExecError::TimedOut);
    }
    Ok(())
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Session for DockerSession {
    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        self.inner.exec(ctx, cmd, out).await
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        self.inner.copy(ctx, file).await
    }

    async fn close(self: Box<Self>) {
        let mut me = *self;
        me.inner.remove_workspace().await;
    }
}

#[cfg(test)]
mod tests {
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
