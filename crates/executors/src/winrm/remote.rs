//! Driving one WinRM shell by hand: Create, Command, Send (stdin EOF),
//! Receive in a loop (a `w:TimedOut` fault is an empty poll), Signal
//! terminate on deadline or cancel, and Delete — always, also after errors
//! and when the caller goes away.
//!
//! Every job runs in its own task that owns the client and the shell; the
//! caller waits for its result. Dropping the caller's future cancels the
//! task, which then stops the command and deletes the shell like a cancel.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_core::executor::{ExecError, ExitStatus, OutputSink, StepContext};
use opsconductor_core::model::Stream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use winrm_rs::{SoapError, WinrmClient, WinrmError};

use super::plan::{CopyPlan, EXIT_NO_DIRECTORY, ExecPlan, RemoteCommand, Upload};
use super::settings::{Settings, VAR_INSECURE};

/// How much of a helper command's output is kept for error messages.
const CAPTURE_LIMIT: usize = 64 * 1024;

/// What to do in a shell.
pub(crate) enum Job {
    /// Nothing: open and delete a shell (checks reachability and credentials).
    Nothing,
    /// Run a step, streaming its output.
    Exec { plan: ExecPlan, out: OutputSink },
    /// Write a file.
    Copy { plan: CopyPlan, dest: String },
    /// Run a command and return its standard output.
    Probe(RemoteCommand),
}

/// What a job produced.
pub(crate) enum Done {
    Nothing,
    Status(ExitStatus),
    Output(Vec<u8>),
}

/// Why a job stopped early.
#[derive(Debug, Clone, Copy)]
enum Stop {
    TimedOut,
    Cancelled,
}

impl From<Stop> for ExecError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::TimedOut => ExecError::TimedOut,
            Stop::Cancelled => ExecError::Cancelled,
        }
    }
}

/// Deadline and cancellation of one job.
#[derive(Clone)]
struct Limits {
    deadline: Option<Instant>,
    cancel: CancellationToken,
}

impl Limits {
    fn stopped_now(&self) -> Option<Stop> {
        if self.cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Stop::TimedOut)
        } else {
            None
        }
    }

    async fn stopped(&self) -> Stop {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Stop::Cancelled,
            _ = deadline => Stop::TimedOut,
        }
    }

    /// Limits for clean-up work after the job's own limits fired.
    fn cleanup(timeout: Duration) -> Self {
        Self {
            deadline: Some(opsconductor_core::executor::deadline_after(timeout)),
            cancel: CancellationToken::new(),
        }
    }
}

/// Runs `job` in a fresh shell whose processes get `env` and start in
/// `workdir`, honouring the context's deadline and cancellation. The shell
/// is deleted before this returns (or in the background, if the caller's
/// future is dropped).
pub(crate) async fn run_job(
    settings: Arc<Settings>,
    ctx: &StepContext,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    job: Job,
) -> Result<Done, ExecError> {
    let abort = ctx.cancel.child_token();
    let limits = Limits {
        deadline: ctx.deadline,
        cancel: abort.clone(),
    };
    if let Some(stop) = limits.stopped_now() {
        return Err(stop.into());
    }
    // Cancels the task if this future is dropped before it answers.
    let guard = abort.drop_guard();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(job_task(settings, limits, env, workdir, job, tx));
    let result = rx.await;
    guard.disarm();
    match result {
        Ok(r) => r,
        Err(_) => Err(ExecError::Io(
            "the WinRM job task ended without a result".into(),
        )),
    }
}

async fn job_task(
    settings: Arc<Settings>,
    limits: Limits,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    job: Job,
    tx: oneshot::Sender<Result<Done, ExecError>>,
) {
    let client = match settings.client(env, workdir.clone()) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    // Shell creation is not abandoned half-way (the shell would leak): on a
    // stop the caller gets its answer at once and the shell, once created,
    // is deleted here.
    let create = client.open_shell(&settings.host);
    tokio::pin!(create);
    let shell = tokio::select! {
        r = &mut create => match r {
            Ok(shell) => shell,
            Err(e) => {
                let _ = tx.send(Err(create_error(&settings, workdir.as_deref(), e)));
                return;
            }
        },
        stop = limits.stopped() => {
            let _ = tx.send(Err(stop.into()));
            if let Ok(Ok(shell)) = tokio::time::timeout(settings.cleanup_timeout, create).await {
                let remote = Remote { client: &client, shell, settings: &settings };
                remote.delete().await;
            }
            return;
        }
    };
    tracing::debug!(target = %settings.target, shell = %shell.shell_id(), "WinRM shell created");
    let remote = Remote {
        client: &client,
        shell,
        settings: &settings,
    };
    let result = remote.perform(job, &limits).await;
    remote.delete().await;
    let _ = tx.send(result);
}

/// Maps an error from creating a shell.
fn create_error(settings: &Settings, workdir: Option<&str>, e: WinrmError) -> ExecError {
    match e {
        WinrmError::Soap(SoapError::Fault { code, reason }) if workdir.is_some() => {
            ExecError::Spawn(format!(
                "target '{}': cannot start a shell in working directory {}: {reason} ({code})",
                settings.target,
                workdir.unwrap_or_default()
            ))
        }
        other => map_error(settings, "create a shell", other, true),
    }
}

/// Maps a winrm-rs error; `connecting` makes transport errors `Connect`.
fn map_error(settings: &Settings, what: &str, e: WinrmError, connecting: bool) -> ExecError {
    let t = &settings.target;
    let endpoint = settings.endpoint();
    match e {
        WinrmError::Http(err) => {
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            if msg.contains("certificate") {
                msg.push_str(&format!(
                    " (the host's TLS certificate is not trusted: winrm-rs checks it against \
                     the public web PKI roots; the target variable {VAR_INSECURE}: true skips \
                     the check, at the risk of talking to an impostor)"
                ));
            }
            if connecting || err.is_connect() {
                ExecError::Connect(format!(
                    "target '{t}': cannot reach {endpoint} to {what}: {msg}"
                ))
            } else {
                ExecError::Io(format!(
                    "target '{t}': WinRM request to {endpoint} failed ({what}): {msg}"
                ))
            }
        }
        WinrmError::AuthFailed(m) | WinrmError::Ntlm(winrm_rs::NtlmError::InvalidMessage(m)) => {
            let m = shorten(&m);
            let m = m.trim_end_matches([':', ' ']);
            let http_status = m
                .split("HTTP ")
                .nth(1)
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok());
            match http_status {
                Some(401 | 403) | None => ExecError::Auth(format!(
                    "target '{t}': {endpoint} refused the credentials of user '{}' \
                     ({} authentication): {m}",
                    settings.credentials.username, settings.auth
                )),
                Some(_) => ExecError::Connect(format!(
                    "target '{t}': {endpoint} answered an error to {what}: {m}"
                )),
            }
        }
        WinrmError::Soap(SoapError::Fault { code, reason }) => ExecError::Io(format!(
            "target '{t}': WinRM fault from {endpoint} ({what}): {reason} ({code})"
        )),
        other => {
            let m = shorten(&other.to_string());
            if connecting {
                ExecError::Connect(format!("target '{t}': cannot {what} on {endpoint}: {m}"))
            } else {
                ExecError::Io(format!("target '{t}': WinRM error ({what}): {m}"))
            }
        }
    }
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn is_timed_out(e: &WinrmError) -> bool {
    matches!(e, WinrmError::Soap(SoapError::Fault { code, .. }) if code.ends_with("TimedOut"))
}

/// Where a command's output goes.
struct Out<'a> {
    sink: Option<&'a OutputSink>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl<'a> Out<'a> {
    fn stream(sink: &'a OutputSink) -> Self {
        Self {
            sink: Some(sink),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    fn capture() -> Self {
        Self {
            sink: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    async fn push(&mut self, stdout: Vec<u8>, stderr: Vec<u8>) {
        match self.sink {
            Some(sink) => {
                sink.write(Stream::Stdout, stdout).await;
                sink.write(Stream::Stderr, stderr).await;
            }
            None => {
                for (buf, data) in [(&mut self.stdout, stdout), (&mut self.stderr, stderr)] {
                    let room = CAPTURE_LIMIT.saturating_sub(buf.len());
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }

    fn stderr_text(&self) -> String {
        shorten(&String::from_utf8_lossy(&self.stderr))
    }
}

/// An open shell.
struct Remote<'a> {
    client: &'a WinrmClient,
    shell: winrm_rs::Shell<'a>,
    settings: &'a Settings,
}

impl Remote<'_> {
    /// Deletes the shell (bounded; failures are logged).
    async fn delete(self) {
        let id = self.shell.shell_id().to_owned();
        let t = &self.settings.target;
        match tokio::time::timeout(self.settings.cleanup_timeout, self.shell.close()).await {
            Ok(Ok(())) => tracing::debug!(target = %t, shell = %id, "WinRM shell deleted"),
            Ok(Err(e)) => {
                tracing::warn!(target = %t, shell = %id, "cannot delete WinRM shell: {e}")
            }
            Err(_) => tracing::warn!(target = %t, shell = %id, "deleting WinRM shell timed out"),
        }
    }

    /// Signals terminate to a command (bounded; failures are logged).
    async fn terminate(&self, command_id: &str) {
        let s = self.settings;
        let signal = self
            .client
            .signal_terminate(&s.host, self.shell.shell_id(), command_id);
        match tokio::time::timeout(s.cleanup_timeout, signal).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(target = %s.target, "cannot terminate WinRM command: {e}"),
            Err(_) => tracing::warn!(target = %s.target, "terminating WinRM command timed out"),
        }
    }

    async fn perform(&self, job: Job, limits: &Limits) -> Result<Done, ExecError> {
        match job {
            Job::Nothing => Ok(Done::Nothing),
            Job::Probe(cmd) => {
                let mut out = Out::capture();
                let status = self.run(&cmd, limits, &mut out).await?;
                if !status.success() {
                    return Err(ExecError::Io(format!(
                        "target '{}': the probe command failed ({status}): {}",
                        self.settings.target,
                        out.stderr_text()
                    )));
                }
                Ok(Done::Output(out.stdout))
            }
            Job::Exec { plan, out } => self.exec(plan, &out, limits).await.map(Done::Status),
            Job::Copy { plan, dest } => {
                self.copy(plan, &dest, limits).await.map(|()| Done::Nothing)
            }
        }
    }

    async fn exec(
        &self,
        plan: ExecPlan,
        sink: &OutputSink,
        limits: &Limits,
    ) -> Result<ExitStatus, ExecError> {
        match plan {
            ExecPlan::Direct(cmd) => self.run(&cmd, limits, &mut Out::stream(sink)).await,
            ExecPlan::Script {
                upload,
                run,
                cleanup,
            } => {
                if let Err(e) = self.upload(&upload, limits).await {
                    self.cleanup(&upload.cleanup).await;
                    return Err(match e {
                        UploadError::Stopped(s) => s.into(),
                        UploadError::Failed(e) => e,
                        UploadError::Exit { status, stderr, .. } => ExecError::Spawn(format!(
                            "target '{}': cannot write the script file ({status}): {stderr}",
                            self.settings.target
                        )),
                    });
                }
                let result = self.run(&run, limits, &mut Out::stream(sink)).await;
                self.cleanup(&cleanup).await;
                result
            }
        }
    }

    async fn copy(&self, plan: CopyPlan, dest: &str, limits: &Limits) -> Result<(), ExecError> {
        let t = &self.settings.target;
        let mut result = self.upload(&plan.upload, limits).await;
        if result.is_ok() {
            let mut out = Out::capture();
            result = match self.run(&plan.finish, limits, &mut out).await {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(UploadError::Exit {
                    step: plan.upload.steps.len(),
                    status,
                    stderr: out.stderr_text(),
                }),
                Err(ExecError::TimedOut) => Err(UploadError::Stopped(Stop::TimedOut)),
                Err(ExecError::Cancelled) => Err(UploadError::Stopped(Stop::Cancelled)),
                Err(e) => Err(UploadError::Failed(e)),
            };
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.cleanup(&plan.upload.cleanup).await;
                Err(match e {
                    UploadError::Stopped(s) => s.into(),
                    UploadError::Failed(e) => e,
                    UploadError::Exit { status, .. } if status.code == Some(EXIT_NO_DIRECTORY) => {
                        ExecError::Io(format!(
                            "target '{t}': cannot copy to {dest}: directory {} does not exist",
                            plan.dir
                        ))
                    }
                    UploadError::Exit {
                        step,
                        status,
                        stderr,
                    } => ExecError::Io(format!(
                        "target '{t}': cannot copy to {dest} (step {} failed, {status}): {stderr}",
                        step + 1
                    )),
                })
            }
        }
    }

    /// Runs the upload steps in order; stops at the first failure.
    async fn upload(&self, upload: &Upload, limits: &Limits) -> Result<(), UploadError> {
        for (step, cmd) in upload.steps.iter().enumerate() {
            let mut out = Out::capture();
            match self.run(cmd, limits, &mut out).await {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    return Err(UploadError::Exit {
                        step,
                        status,
                        stderr: out.stderr_text(),
                    });
                }
                Err(ExecError::TimedOut) => return Err(UploadError::Stopped(Stop::TimedOut)),
                Err(ExecError::Cancelled) => return Err(UploadError::Stopped(Stop::Cancelled)),
                Err(e) => return Err(UploadError::Failed(e)),
            }
        }
        Ok(())
    }

    /// Runs a clean-up command with limits of its own; failures are logged.
    async fn cleanup(&self, cmd: &RemoteCommand) {
        let limits = Limits::cleanup(self.settings.cleanup_timeout);
        let mut out = Out::capture();
        match self.run(cmd, &limits, &mut out).await {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!(
                target = %self.settings.target,
                "WinRM clean-up command failed ({s}): {}",
                out.stderr_text()
            ),
            Err(e) => tracing::warn!(target = %self.settings.target, "WinRM clean-up failed: {e}"),
        }
    }

    /// Runs one command to its end, or until the limits stop it (then it is
    /// terminated).
    async fn run(
        &self,
        cmd: &RemoteCommand,
        limits: &Limits,
        out: &mut Out<'_>,
    ) -> Result<ExitStatus, ExecError> {
        if let Some(stop) = limits.stopped_now() {
            return Err(stop.into());
        }
        let s = self.settings;
        let shell_id = self.shell.shell_id();
        let args: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        // If a stop interrupts the start, the command may run without our
        // knowing its id: deleting the shell (which always follows) ends it.
        let command_id = tokio::select! {
            r = self.client.execute_command(&s.host, shell_id, &cmd.command, &args) => {
                r.map_err(|e| map_error(s, "start a command", e, false))?
            }
            stop = limits.stopped() => return Err(stop.into()),
        };
        // Stdin is empty, as for every executor: send its end at once.
        tokio::select! {
            r = self.shell.send_input(&command_id, &[], true) => {
                if let Err(e) = r {
                    tracing::debug!(target = %s.target, "cannot close the command's stdin: {e}");
                }
            }
            stop = limits.stopped() => {
                self.terminate(&command_id).await;
                return Err(stop.into());
            }
        }
        loop {
            let poll = async {
                match self
                    .client
                    .receive_output(&s.host, shell_id, &command_id)
                    .await
                {
                    Ok(o) => {
                        out.push(o.stdout, o.stderr).await;
                        Ok(o.done.then_some(o.exit_code))
                    }
                    // The command was silent for a whole OperationTimeout.
                    Err(e) if is_timed_out(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            tokio::select! {
                biased;
                stop = limits.stopped() => {
                    self.terminate(&command_id).await;
                    return Err(stop.into());
                }
                r = poll => match r {
                    Ok(None) => {}
                    Ok(Some(code)) => {
                        return Ok(ExitStatus { code, signal: None });
                    }
                    Err(e) => {
                        self.terminate(&command_id).await;
                        return Err(map_error(s, "receive output", e, false));
                    }
                },
            }
        }
    }
}

/// Why an upload failed.
enum UploadError {
    Stopped(Stop),
    Failed(ExecError),
    Exit {
        step: usize,
        status: ExitStatus,
        stderr: String,
    },
}
