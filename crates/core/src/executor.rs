//! The executor seam: how a step reaches a target. One implementation per
//! connection kind (local, SSH, WinRM, Docker) in `opsconductor-executors`,
//! all held to one behaviour suite.
//!
//! Rules every executor MUST follow (the suite checks each):
//! - stream output as it arrives, stdout and stderr separately; never buffer a
//!   whole command's output;
//! - report the exit code, or the signal that killed the process;
//! - on `deadline` return [`ExecError::TimedOut`], on `cancel` return
//!   [`ExecError::Cancelled`], and in both cases stop the remote work (the whole
//!   process group, channel or container), not just the local wait;
//! - pass `env` without putting values on a command line;
//! - `copy` writes atomically (temporary name, then rename) with the mode asked.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{RunId, Stream, Target};
use crate::template::Quoting;

/// The decrypted credential of a target. Its `Debug` never prints the value.
#[derive(Clone)]
pub struct Credential {
    /// Secret kind (`password`, `ssh_key`, …).
    pub kind: String,
    /// The plaintext.
    pub value: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("value", &"***")
            .finish()
    }
}

/// `d` from now, without overflow: a limit too large for the clock means no
/// practical deadline (30 years), never a panic. Every deadline an executor
/// computes from a configured or requested duration goes through this.
pub fn deadline_after(d: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(now)
}

/// Everything an executor needs to run one step on one target.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The run.
    pub run_id: RunId,
    /// Step index.
    pub step: u32,
    /// Where to run.
    pub target: Target,
    /// Environment variables for the process (secrets included).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// When to give up and kill.
    pub deadline: Option<Instant>,
    /// Fired when the run is cancelled.
    pub cancel: CancellationToken,
    /// The step's overrides of the target's limits (see [`crate::model::Step::limits`]);
    /// already accepted by [`Executor::check_step_limits`].
    pub limits: BTreeMap<String, serde_json::Value>,
    /// The step's processes must not outlive a worker that has been frozen
    /// (e.g. SIGSTOP) this long: past it another node may rescue the run and
    /// run the step again. A stopped worker runs no code, so the session
    /// feeds a keepalive to something next to the step that is not frozen
    /// with it (the local reaper, the SSH wrapper), which kills the step when
    /// the keepalive stops for this long. `None`: no such bound (ad hoc use).
    pub lease_margin: Option<std::time::Duration>,
}

impl StepContext {
    /// A context for running something ad hoc on a target (tests, checks).
    pub fn new(target: Target) -> Self {
        Self {
            run_id: RunId::new(),
            step: 0,
            target,
            env: BTreeMap::new(),
            workdir: None,
            deadline: None,
            cancel: CancellationToken::new(),
            limits: BTreeMap::new(),
            lease_margin: None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A command line for the target's shell (`sh -c` on Unix).
    Shell(String),
    /// A script body for an interpreter (`bash`, `python3`, …).
    Script {
        /// Interpreter command, may include arguments (`python3 -u`).
        interpreter: String,
        /// The script.
        body: String,
    },
}

/// A file to write on a target.
#[derive(Clone, PartialEq)]
pub struct FileSpec {
    /// Absolute destination path.
    pub dest: String,
    /// Content.
    pub content: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
}

impl fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSpec")
            .field("dest", &self.dest)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Exited with `code`.
    pub fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
        }
    }
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

/// Why an executor could not give an exit status.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The deadline passed; the work was killed.
    #[error("timed out; the process was killed")]
    TimedOut,
    /// The run was cancelled; the work was killed.
    #[error("cancelled; the process was killed")]
    Cancelled,
    /// The target could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The target refused the credential.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The command could not be started (missing interpreter, bad workdir, …).
    #[error("cannot start: {0}")]
    Spawn(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
    /// The executor cannot do this (e.g. no such connection kind).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// A remote OS probe, for `targets check`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Probe {
    /// Operating system / kernel, as reported by the target.
    pub os: String,
    /// Extra details (engine version, shell, …).
    pub details: BTreeMap<String, String>,
}

/// What an executor supports, for the engine and the tests to ask.
///
/// The engine refuses, at submit, a `script` or `copy` step on a target whose
/// executor lacks it (the submitter's error, not a failed run); the behaviour
/// suite reads `signals` to know whether a killed process must report its
/// signal. Stopping the whole process tree on deadline or cancel is not a
/// capability but a rule every executor MUST follow (module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Can write files.
    pub copy: bool,
    /// Can run scripts through an interpreter.
    pub script: bool,
    /// Reports the killing signal.
    pub signals: bool,
}

impl Capabilities {
    /// Everything: copies, scripts and signals. The one constructor executors
    /// use (the struct is `#[non_exhaustive]`), narrowed with the `without_*`
    /// methods where a connection kind cannot do something.
    pub const fn full() -> Self {
        Self {
            copy: true,
            script: true,
            signals: true,
        }
    }

    /// The same, except that killing signals are not reported (the process
    /// ends with an exit code that cannot be told from a normal exit).
    pub const fn without_signals(self) -> Self {
        Self {
            signals: false,
            ..self
        }
    }
}

/// A piece of output from an executor.
#[derive(Debug, Clone)]
pub struct OutputEvent {
    /// Step index.
    pub step: u32,
    /// Target name.
    pub target: Arc<str>,
    /// Stream.
    pub stream: Stream,
    /// Bytes as they came.
    pub data: Bytes,
    /// The step on this target is over (no data): consumers flush what they
    /// held back, e.g. a possible start of a secret value.
    pub eof: bool,
    /// Which try of the step (1 unless it is retried).
    pub try_no: u32,
}

/// Where executors write output. Bounded: a slow consumer slows the reader
/// instead of growing memory.
#[derive(Debug, Clone)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputEvent>,
    step: u32,
    target: Arc<str>,
    try_no: u32,
    /// Also shown stdout as it passes, for step outputs (see [`crate::flow`]).
    capture: Option<Arc<std::sync::Mutex<crate::flow::OutputCapture>>>,
}

impl OutputSink {
    /// A sink and the receiving end, with room for `capacity` chunks.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<OutputEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                step: 0,
                target: Arc::from(""),
                try_no: 1,
                capture: None,
            },
            rx,
        )
    }

    /// The same channel, labelled for one step on one target.
    pub fn for_step(&self, step: u32, target: &str) -> Self {
        Self {
            tx: self.tx.clone(),
            step,
            target: Arc::from(target),
            capture: None,
            try_no: 1,
        }
    }

    /// The same channel and labels, for try `try_no` of the step (each try
    /// of a retried step has its own output).
    pub fn for_try(&self, try_no: u32) -> Self {
        Self {
            try_no,
            ..self.clone()
        }
    }

    /// The same sink, also showing stdout to `capture` as it passes (the
    /// engine reads step outputs this way; executors need not know).
    pub fn with_capture(
        mut self,
        capture: Arc<std::sync::Mutex<crate::flow::OutputCapture>>,
    ) -> Self {
        self.capture = Some(capture);
        self
    }

    /// Sends a chunk; waits when the consumer is behind. Empty chunks are dropped.
    pub async fn write(&self, stream: Stream, data: impl Into<Bytes>) {
        let data = data.into();
        if data.is_empty() {
            return;
        }
        if stream == Stream::Stdout
            && let Some(c) = &self.capture
        {
            match c.lock() {
                Ok(mut c) => c.push(&data),
                Err(p) => p.into_inner().push(&data),
            }
        }
        // A closed receiver means nobody listens any more; output is dropped.
        let _ = self
            .tx
            .send(OutputEvent {
                step: self.step,
                target: self.target.clone(),
                stream,
                data,
                eof: false,
                try_no: self.try_no,
            })
            .await;
    }

    /// Marks the end of this step's output on this target. The engine calls
    /// it after the executor returns; executors need not.
    pub async fn finish(&self) {
        for stream in [Stream::Stdout, Stream::Stderr, Stream::System] {
            let _ = self
                .tx
                .send(OutputEvent {
                    step: self.step,
                    target: self.target.clone(),
                    stream,
                    data: Bytes::new(),
                    eof: true,
                    try_no: self.try_no,
                })
                .await;
        }
    }
}

/// An open connection to one target, reused across the steps of a run.
#[async_trait]
pub trait Session: Send + Sync {
    /// Runs a command or script, streaming output into `out`.
    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError>;
    /// Writes a file atomically.
    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError>;
    /// Closes the connection.
    async fn close(self: Box<Self>) {}
}

/// A kind of target connection.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The connection kind served (`local`, `ssh`, …), as in [`crate::model::Connection::kind`].
    fn kind(&self) -> &'static str;
    /// What it supports.
    fn capabilities(&self) -> Capabilities;
    /// Opens a session to a target.
    async fn connect(
        &self,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<Box<dyn Session>, ExecError>;
    /// Connects, authenticates and runs a trivial probe.
    async fn check(&self, target: &Target, cred: Option<&Credential>) -> Result<Probe, ExecError>;

    /// The host key the target offers now (`SHA256:…`), for `targets trust`;
    /// `None` for connection kinds without host keys.
    async fn fetch_host_key(&self, _target: &Target) -> Result<Option<String>, ExecError> {
        Ok(None)
    }

    /// How values substituted into `exec` command lines on `target` are
    /// quoted: the executor knows which shell will read the line. The default
    /// is POSIX shell quoting (`sh -c`); an executor whose shell has no safe
    /// quoting (Windows `cmd.exe`) answers [`Quoting::Refuse`], so templates
    /// that substitute values are refused at submit instead of becoming code.
    fn quoting(&self, _target: &Target) -> Quoting {
        Quoting::Shell
    }

    /// Whether a step may run on `target` with these per-step `limits`
    /// (called at submit, so a bad limit is the submitter's error). The
    /// default refuses any: an executor without limits must not silently
    /// ignore them.
    fn check_step_limits(
        &self,
        _target: &Target,
        limits: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), String> {
        if limits.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} targets take no per-step limits (only docker targets do)",
                self.kind()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn deadlines_from_impossible_durations_do_not_panic() {
        let now = Instant::now();
        for d in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(1u64 << 62),
        ] {
            let at = deadline_after(d);
            assert!(
                at > now + Duration::from_secs(86_400 * 365),
                "{d:?}: {at:?}"
            );
        }
        let near = deadline_after(Duration::from_secs(5));
        assert!(near >= now + Duration::from_secs(5) && near < now + Duration::from_secs(60));
    }
}
