//! The local executor: runs steps as processes on the host the worker runs on.
//!
//! Every command runs in its own process group, so a deadline or a
//! cancellation stops the command *and* everything it started (SIGTERM to the
//! group, then SIGKILL after [`LocalExecutor::kill_grace`]). Each group is
//! registered with a per-process reaper that kills it if the worker process
//! dies while the step runs (see `reaper.rs`). The worker's own
//! configuration (`OPSC_*` variables) never reaches a job: see [`child_env`].

mod copy;
mod env;
mod process;
mod reaper;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsconductor_core::executor::{
    Capabilities, Command, Credential, ExecError, Executor, ExitStatus, FileSpec, OutputSink,
    Probe, Session, StepContext,
};
use opsconductor_core::model::{Connection, Target};

pub use env::{WORKER_ENV_PREFIX, child_env};

/// The default time between SIGTERM and SIGKILL when a command is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// The default shell for [`Command::Shell`].
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Runs steps on the local host (connection kind `local`).
///
/// ```
/// use std::time::Duration;
/// use opsconductor_executors::LocalExecutor;
///
/// let exec = LocalExecutor::default()
///     .with_kill_grace(Duration::from_millis(500))
///     .with_shell("/bin/bash");
/// assert_eq!(exec.shell, "/bin/bash");
/// ```
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    /// How long a stopped command gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The shell that runs [`Command::Shell`] as `SHELL -c COMMAND`.
    pub shell: String,
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self {
            kill_grace: DEFAULT_KILL_GRACE,
            shell: DEFAULT_SHELL.to_owned(),
        }
    }
}

impl LocalExecutor {
    /// An executor with the defaults (2 s kill grace, `/bin/sh`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the time between SIGTERM and SIGKILL.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets the shell used for [`Command::Shell`].
    pub fn with_shell(mut self, shell: impl Into<String>) -> Self {
        self.shell = shell.into();
        self
    }

    /// A session on the local host, without going through [`Executor::connect`].
    pub fn session(&self) -> LocalSession {
        LocalSession {
            config: Arc::new(self.clone()),
        }
    }
}

fn ensure_local(target: &Target) -> Result<(), ExecError> {
    match target.connection {
        Connection::Local => Ok(()),
        ref other => Err(ExecError::Unsupported(format!(
            "the local executor cannot serve target '{}' (connection kind '{}'); \
             register the '{}' executor",
            target.name,
            other.kind(),
            other.kind()
        ))),
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    async fn connect(
        &self,
        target: &Target,
        _cred: Option<&Credential>,
    ) -> Result<Box<dyn Session>, ExecError> {
        ensure_local(target)?;
        Ok(Box::new(self.session()))
    }

    async fn check(&self, target: &Target, _cred: Option<&Credential>) -> Result<Probe, ExecError> {
        ensure_local(target)?;
        Ok(probe(&self.shell).await)
    }
}

/// A session on the local host. Cheap: it holds only the executor's settings.
#[derive(Debug, Clone)]
pub struct LocalSession {
    config: Arc<LocalExecutor>,
}

#[async_trait]
impl Session for LocalSession {
    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        process::exec(&self.config, ctx, cmd, out).await
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        copy::copy(ctx, file).await
    }
}

/// How long the probe's helper commands may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Describes the local host: `uname -sr` (or `/proc/sys/kernel`), host name,
/// shell, user and architecture.
async fn probe(shell: &str) -> Probe {
    let os = match run_quietly("uname", &["-sr"]).await {
        Some(os) => os,
        None => {
            let ostype = read_trimmed("/proc/sys/kernel/ostype").await;
            let release = read_trimmed("/proc/sys/kernel/osrelease").await;
            match (ostype, release) {
                (Some(t), Some(r)) => format!("{t} {r}"),
                (Some(t), None) => t,
                _ => std::env::consts::OS.to_owned(),
            }
        }
    };
    let hostname = match read_trimmed("/proc/sys/kernel/hostname").await {
        Some(h) => Some(h),
        None => run_quietly("uname", &["-n"]).await,
    };
    let mut details = BTreeMap::new();
    if let Some(h) = hostname {
        details.insert("hostname".into(), h);
    }
    details.insert("shell".into(), shell.to_owned());
    details.insert("arch".into(), std::env::consts::ARCH.to_owned());
    let uid = nix::unistd::geteuid();
    let user = match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    };
    details.insert("user".into(), user);
    Probe { os, details }
}

/// Runs a helper program and returns its trimmed stdout, or `None` if it fails.
async fn run_quietly(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

async fn read_trimmed(path: &str) -> Option<String> {
    let text = tokio::fs::read_to_string(PathBuf::from(path)).await.ok()?;
    let text = text.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
