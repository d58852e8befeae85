//! Running one step's command on a channel: send the wrapper, stream stdout
//! and stderr as they arrive, report the exit status or signal, and stop the
//! remote process group on deadline, cancellation or an abandoned future.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opsconductor_core::executor::{Command, ExecError, ExitStatus, OutputSink, StepContext};
use opsconductor_core::model::{RunId, Stream};
use russh::{ChannelMsg, Sig};
use tokio::time::Instant;

use super::Inner;
use super::wrapper::{self, EXEC_REQUEST, Plan, Scanner, Status};

/// After the exit status, a wait this long with no output means a
/// background process holds the pipes: stop reading.
const DRAIN_IDLE: Duration = Duration::from_millis(300);

/// After the exit status, stop reading after this long in any case.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// After the exit status, stop reading after this many bytes: more than the
/// channel window and the server's buffers hold, so only a background process
/// still writing can reach it.
const DRAIN_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Once a stop has begun, how long past the kill grace to wait for the
/// channel to close before giving up on it.
const STOP_SLACK: Duration = Duration::from_secs(3);

/// Bound on the helper programs (kill, cleanup).
const HELPER_LIMIT: Duration = Duration::from_secs(15);

/// Bound on what a helper program may print.
const HELPER_OUTPUT_LIMIT: usize = 1024 * 1024;

/// Why a command is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    TimedOut,
    Cancelled,
}

impl Reason {
    fn error(self) -> ExecError {
        match self {
            Reason::TimedOut => ExecError::TimedOut,
            Reason::Cancelled => ExecError::Cancelled,
        }
    }
}

/// Runs `cmd` as described in the [module docs](super).
pub(super) async fn exec(
    inner: &Arc<Inner>,
    ctx: &StepContext,
    cmd: &Command,
    out: &OutputSink,
) -> Result<ExitStatus, ExecError> {
    if ctx.cancel.is_cancelled() {
        return Err(ExecError::Cancelled);
    }
    if ctx.deadline.is_some_and(|d| d <= Instant::now()) {
        return Err(ExecError::TimedOut);
    }
    let token = format!("opsc-{}", RunId::new().0.simple());
    let plan = wrapper::build(&inner.config.shell, ctx, cmd, &token)?;
    let mut guard = Abandoned {
        inner: inner.clone(),
        pid: None,
        script_dir: plan.script_dir.clone(),
        armed: true,
    };
    let result = run(inner, ctx, &plan, out, &mut guard).await;
    guard.armed = false;
    if let Some(dir) = &plan.script_dir {
        cleanup(inner, dir).await;
    }
    result
}

/// Stops the remote command and removes its script if `exec`'s future is
/// dropped half-way.
struct Abandoned {
    inner: Arc<Inner>,
    pid: Option<u32>,
    script_dir: Option<String>,
    armed: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let pid = self.pid;
        let dir = self.script_dir.take();
        rt.spawn(async move {
            if let Some(pid) = pid {
                kill_group(&inner, pid).await;
            }
            if let Some(dir) = dir {
                cleanup(&inner, &dir).await;
            }
        });
    }
}

async fn open_channel(inner: &Inner) -> Result<russh::Channel<russh::client::Msg>, ExecError> {
    let channel = inner.handle.channel_open_session().await.map_err(|e| {
        let why = if inner.handle.is_closed() {
            "the connection is closed".to_owned()
        } else {
            e.to_string()
        };
        ExecError::Io(format!(
            "{}: cannot open an SSH channel: {why}",
            inner.dest.label()
        ))
    })?;
    channel.exec(true, EXEC_REQUEST).await.map_err(|e| {
        ExecError::Io(format!(
            "{}: cannot send the exec request: {e}",
            inner.dest.label()
        ))
    })?;
    Ok(channel)
}

/// State of a stop in progress.
struct Stopping {
    reason: Reason,
    /// Channel SIGKILL due (for servers that honour channel signals).
    kill_at: Instant,
    killed: bool,
    give_up: Instant,
    killer: Option<tokio::task::JoinHandle<()>>,
}

impl Stopping {
    /// Waits (bounded) for the group killer to be done.
    async fn finish(&mut self, label: &str) {
        if let Some(killer) = self.killer.take()
            && tokio::time::timeout(HELPER_LIMIT, killer).await.is_err()
        {
            tracing::warn!(%label, "stopping the remote process group took too long");
        }
    }

    /// When the stop timer fires next: the channel SIGKILL, then giving up.
    fn next_at(&self) -> Instant {
        if self.killed {
            self.give_up
        } else {
            self.kill_at.min(self.give_up)
        }
    }
}

/// State after the exit status arrived.
struct Draining {
    idle_until: Instant,
    until: Instant,
    bytes: usize,
}

impl Draining {
    /// Counts `n` more bytes read; true once the byte limit is reached.
    fn read(&mut self, n: usize) -> bool {
        self.bytes += n;
        self.idle_until = Instant::now() + DRAIN_IDLE;
        self.bytes >= DRAIN_MAX_BYTES
    }

    fn ends_at(&self) -> Instant {
        self.idle_until.min(self.until)
    }
}

/// Where a command's channel is. Every phase reads output; the transitions
/// are: `Running` → `Draining` on the exit status; `Running` → `Stopping`
/// on the deadline or cancellation; `Stopping` keeps its stop going and
/// drains once the exit status came.
enum Phase {
    /// Waiting for the command to end.
    Running,
    /// Stopping it (deadline or cancel); `drain` once it exited.
    Stopping {
        stop: Stopping,
        drain: Option<Draining>,
    },
    /// It exited; reading what is left, bounded in time and bytes.
    Draining(Draining),
}

impl Phase {
    fn drain(&mut self) -> Option<&mut Draining> {
        match self {
            Phase::Running => None,
            Phase::Stopping { drain, .. } => drain.as_mut(),
            Phase::Draining(d) => Some(d),
        }
    }

    fn stopping(&mut self) -> Option<&mut Stopping> {
        match self {
            Phase::Stopping { stop, .. } => Some(stop),
            _ => None,
        }
    }

    /// The exit status arrived: start draining (once).
    fn exited(&mut self) {
        match self {
            Phase::Running => *self = Phase::Draining(start_draining()),
            Phase::Stopping { drain, .. } => {
                drain.get_or_insert_with(start_draining);
            }
            Phase::Draining(_) => {}
        }
    }
}

/// Why reading the channel ended.
enum End {
    /// The channel closed (or the connection did).
    Closed,
    /// The server refused the exec request.
    Refused,
    /// Draining is over (idle, time or byte limit).
    Drained,
    /// A stopped command's channel never closed.
    GaveUp,
}

/// What the channel told about the command so far.
#[derive(Default)]
struct Seen {
    /// The PID from the status line: the command started.
    pid: Option<u32>,
    /// The wrapper's failure from the status line.
    failure: Option<String>,
    /// The exit status or signal.
    exit: Option<ExitStatus>,
}

/// One command's exchange on its channel: the phase, what was seen, and the
/// status-line scanner.
struct Exchange<'a> {
    inner: &'a Arc<Inner>,
    out: &'a OutputSink,
    guard: &'a mut Abandoned,
    scanner: Scanner,
    seen: Seen,
    phase: Phase,
}

impl Exchange<'_> {
    /// Handles one channel message; `Some` ends the reading.
    async fn on_message(&mut self, msg: ChannelMsg) -> Option<End> {
        match msg {
            ChannelMsg::Data { data } => {
                let (output, status) = self.scanner.feed(&data);
                let full = self.phase.drain().is_some_and(|d| d.read(data.len()));
                if full {
                    self.out.write(Stream::Stdout, output).await;
                    return Some(End::Drained);
                }
                match status {
                    Some(Status::Started(p)) => self.started(p),
                    Some(Status::Failed(what)) => self.seen.failure = Some(what),
                    None => {}
                }
                self.out.write(Stream::Stdout, output).await;
            }
            ChannelMsg::ExtendedData { data, ext } => {
                if let Some(d) = self.phase.drain() {
                    d.read(data.len());
                }
                if ext == 1 {
                    self.out.write(Stream::Stderr, data).await;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => {
                self.seen.exit = Some(ExitStatus::code(
                    i32::try_from(exit_status).unwrap_or(i32::MAX),
                ));
                self.phase.exited();
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                self.seen.exit = Some(ExitStatus {
                    code: None,
                    signal: signal_number(&signal_name),
                });
                self.phase.exited();
            }
            ChannelMsg::Failure => return Some(End::Refused),
            ChannelMsg::Close => return Some(End::Closed),
            _ => {}
        }
        None
    }

    /// The status line named the command's PID; a stop already under way
    /// can now kill its group.
    fn started(&mut self, pid: u32) {
        self.seen.pid = Some(pid);
        self.guard.pid = Some(pid);
        if let Some(s) = self.phase.stopping()
            && s.killer.is_none()
        {
            s.killer = Some(spawn_killer(self.inner, pid));
        }
    }

    /// The deadline passed or the run was cancelled.
    async fn stop(&mut self, tx: &russh::ChannelWriteHalf<russh::client::Msg>, reason: Reason) {
        let stop = begin_stop(
            self.inner,
            tx,
            reason,
            self.seen.pid,
            self.inner.config.kill_grace,
        )
        .await;
        self.phase = Phase::Stopping { stop, drain: None };
    }

    /// The stop timer fired: send the channel SIGKILL, or give up.
    async fn on_stop_timer(
        &mut self,
        tx: &russh::ChannelWriteHalf<russh::client::Msg>,
    ) -> Option<End> {
        let label = self.inner.dest.label();
        let s = self.phase.stopping()?;
        if !s.killed && Instant::now() >= s.kill_at {
            s.killed = true;
            let _ = tx.signal(Sig::KILL).await;
            None
        } else {
            tracing::warn!(%label, "the stopped command's channel did not close; giving up on it");
            Some(End::GaveUp)
        }
    }
}

async fn run(
    inner: &Arc<Inner>,
    ctx: &StepContext,
    plan: &Plan,
    out: &OutputSink,
    guard: &mut Abandoned,
) -> Result<ExitStatus, ExecError> {
    let label = inner.dest.label();
    let channel = open_channel(inner).await?;
    let (mut rx, tx) = channel.split();
    let program = Bytes::from(wrapper::framed(&plan.program).into_bytes());
    // No EOF after the program: the open stdin is how the remote wrapper
    // knows this side is still there (see `wrapper::build`). `tx` lives
    // until the command has ended.
    let mut send = pin!(async { tx.data_bytes(program).await });
    let mut sent = false;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    // Proof of life for the remote watcher (see `wrapper::watcher`).
    let mut keepalive = ctx
        .lease_margin
        .map(|m| tokio::time::interval((m / 4).max(Duration::from_millis(50))));
    let mut x = Exchange {
        inner,
        out,
        guard,
        scanner: Scanner::new(&plan.token),
        seen: Seen::default(),
        phase: Phase::Running,
    };

    let end = loop {
        let running = matches!(x.phase, Phase::Running);
        let drain_at = x.phase.drain().map(|d| d.ends_at());
        let stop_at = x.phase.stopping().map(|s| s.next_at());
        tokio::select! {
            msg = rx.wait() => {
                let Some(msg) = msg else { break End::Closed };
                if let Some(end) = x.on_message(msg).await {
                    break end;
                }
            }
            () = tick(keepalive.as_mut()), if sent && x.seen.exit.is_none() => {
                if let Err(e) = tx.data_bytes(Bytes::from_static(wrapper::KEEPALIVE)).await {
                    tracing::debug!(%label, error = %e, "cannot send a keepalive");
                }
            }
            sent_result = &mut send, if !sent => {
                sent = true;
                if let Err(e) = sent_result {
                    // The command may have ended already; the channel says.
                    tracing::debug!(%label, error = %e, "cannot send the wrapper");
                }
            }
            () = tokio::time::sleep_until(ctx.deadline.unwrap_or(far)), if running && ctx.deadline.is_some() => {
                x.stop(&tx, Reason::TimedOut).await;
            }
            () = ctx.cancel.cancelled(), if running => {
                x.stop(&tx, Reason::Cancelled).await;
            }
            () = tokio::time::sleep_until(drain_at.unwrap_or(far)), if drain_at.is_some() => {
                tracing::debug!(%label, "stopped reading: a background process holds the output open");
                break End::Drained;
            }
            () = tokio::time::sleep_until(stop_at.unwrap_or(far)), if stop_at.is_some() => {
                if let Some(end) = x.on_stop_timer(&tx).await {
                    break end;
                }
            }
        }
    };
    let Exchange {
        mut scanner,
        seen,
        phase,
        guard,
        ..
    } = x;
    if !scanner.found() {
        out.write(Stream::Stdout, scanner.take()).await;
    }
    if let Err(e) = tx.close().await {
        tracing::debug!(%label, error = %e, "cannot close the channel");
    }
    if let Phase::Stopping { mut stop, .. } = phase {
        stop.finish(&label).await;
        guard.pid = None;
        return Err(stop.reason.error());
    }
    guard.pid = None;
    outcome(inner, ctx, plan, &end, seen)
}

/// What a command that was not stopped came to.
fn outcome(
    inner: &Inner,
    ctx: &StepContext,
    plan: &Plan,
    end: &End,
    seen: Seen,
) -> Result<ExitStatus, ExecError> {
    let label = inner.dest.label();
    if matches!(end, End::Refused) {
        return Err(ExecError::Spawn(format!(
            "{label}: the server refused to run a command (exec request denied)"
        )));
    }
    if let Some(what) = seen.failure {
        return Err(wrapper_failure(inner, ctx, plan, &what));
    }
    match (seen.pid, seen.exit) {
        (Some(_), Some(status)) => Ok(status),
        (None, Some(status)) => Err(ExecError::Spawn(format!(
            "{label}: the login shell of user '{}' did not start the command ({status}); \
             does the account have a working shell, and /bin/sh?",
            inner.dest.user
        ))),
        (_, None) if inner.handle.is_closed() => Err(ExecError::Io(format!(
            "{label}: the connection was lost while the command ran"
        ))),
        (_, None) => Err(ExecError::Io(format!(
            "{label}: the channel closed without an exit status"
        ))),
    }
}

/// The next tick of `every`, or never.
async fn tick(every: Option<&mut tokio::time::Interval>) {
    match every {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn start_draining() -> Draining {
    let now = Instant::now();
    Draining {
        idle_until: now + DRAIN_IDLE,
        until: now + DRAIN_MAX,
        bytes: 0,
    }
}

async fn begin_stop(
    inner: &Arc<Inner>,
    tx: &russh::ChannelWriteHalf<russh::client::Msg>,
    reason: Reason,
    pid: Option<u32>,
    grace: Duration,
) -> Stopping {
    tracing::debug!(target = %inner.dest.name, ?reason, ?pid, "stopping the remote command");
    // Many servers ignore channel signals; the killer below does not rely on them.
    let _ = tx.signal(Sig::TERM).await;
    let now = Instant::now();
    Stopping {
        reason,
        kill_at: now + grace,
        killed: false,
        give_up: now + grace + STOP_SLACK,
        killer: pid.map(|p| spawn_killer(inner, p)),
    }
}

fn spawn_killer(inner: &Arc<Inner>, pid: u32) -> tokio::task::JoinHandle<()> {
    let inner = inner.clone();
    tokio::spawn(async move { kill_group(&inner, pid).await })
}

/// Stops the process group `pid` leads, on a channel of its own.
async fn kill_group(inner: &Inner, pid: u32) {
    let program = wrapper::kill_program(pid, inner.config.kill_grace);
    let limit = inner.config.kill_grace + HELPER_LIMIT;
    if let Err(e) = run_helper(inner, &program, limit).await {
        tracing::warn!(target = %inner.dest.name, pid, error = %e, "cannot stop the remote process group");
    }
}

/// Removes a script's directory.
async fn cleanup(inner: &Inner, dir: &str) {
    match run_helper(inner, &wrapper::cleanup_program(dir), HELPER_LIMIT).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            target = %inner.dest.name,
            %dir,
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr),
            "cannot remove the script directory"
        ),
        Err(e) => {
            tracing::warn!(target = %inner.dest.name, %dir, error = %e, "cannot remove the script directory")
        }
    }
}

fn wrapper_failure(inner: &Inner, ctx: &StepContext, plan: &Plan, what: &str) -> ExecError {
    let label = inner.dest.label();
    match what {
        "workdir" => ExecError::Spawn(format!(
            "{label}: working directory '{}' does not exist or cannot be entered; create it \
             first or fix the step's workdir",
            ctx.workdir.as_deref().unwrap_or_default()
        )),
        "program" => ExecError::Spawn(format!(
            "{label}: program '{}' not found; is it installed and on PATH?",
            plan.program_name
        )),
        "script" => ExecError::Io(format!(
            "{label}: cannot write the script file in $TMPDIR (or /tmp)"
        )),
        other => ExecError::Spawn(format!("{label}: the command wrapper failed: {other}")),
    }
}

/// What a helper program produced.
#[derive(Debug)]
pub(super) struct HelperOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout (bounded).
    pub stdout: Vec<u8>,
    /// Its stderr (bounded).
    pub stderr: Vec<u8>,
}

/// Runs a short program of our own on a channel (probe, kill, cleanup) and
/// collects its output, within `limit`.
pub(super) async fn run_helper(
    inner: &Inner,
    program: &str,
    limit: Duration,
) -> Result<HelperOutput, ExecError> {
    let label = inner.dest.label();
    let work = async {
        let channel = open_channel(inner).await?;
        let (mut rx, tx) = channel.split();
        let program = Bytes::from(wrapper::framed(program).into_bytes());
        let send = async {
            tx.data_bytes(program).await?;
            tx.eof().await
        };
        let collect = async {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let mut status = None;
            while let Some(msg) = rx.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        let room = HELPER_OUTPUT_LIMIT.saturating_sub(stdout.len());
                        stdout.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        let room = HELPER_OUTPUT_LIMIT.saturating_sub(stderr.len());
                        stderr.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(ExitStatus::code(
                            i32::try_from(exit_status).unwrap_or(i32::MAX),
                        ));
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        status = Some(ExitStatus {
                            code: None,
                            signal: signal_number(&signal_name),
                        });
                    }
                    ChannelMsg::Failure => break,
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            (stdout, stderr, status)
        };
        let (sent, (stdout, stderr, status)) = tokio::join!(send, collect);
        if let Err(e) = sent {
            tracing::debug!(%label, error = %e, "cannot send a helper program");
        }
        let _ = tx.close().await;
        match status {
            Some(status) => Ok(HelperOutput {
                status,
                stdout,
                stderr,
            }),
            None => Err(ExecError::Io(format!(
                "{label}: a helper command ended without an exit status"
            ))),
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(ExecError::Io(format!(
            "{label}: a helper command did not finish within {limit:?}"
        ))),
    }
}

/// The Linux number of a signal named in an `exit-signal` message.
fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => 6,
        Sig::ALRM => 14,
        Sig::FPE => 8,
        Sig::HUP => 1,
        Sig::ILL => 4,
        Sig::INT => 2,
        Sig::KILL => 9,
        Sig::PIPE => 13,
        Sig::QUIT => 3,
        Sig::SEGV => 11,
        Sig::TERM => 15,
        Sig::USR1 => 10,
        Sig::Custom(name) => match name.as_str() {
            "TRAP" => 5,
            "BUS" => 7,
            "USR2" => 12,
            "STKFLT" => 16,
            "CHLD" => 17,
            "CONT" => 18,
            "STOP" => 19,
            "TSTP" => 20,
            "TTIN" => 21,
            "TTOU" => 22,
            "URG" => 23,
            "XCPU" => 24,
            "XFSZ" => 25,
            "VTALRM" => 26,
            "PROF" => 27,
            "WINCH" => 28,
            "IO" => 29,
            "PWR" => 30,
            "SYS" => 31,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_map_to_linux_numbers() {
        assert_eq!(signal_number(&Sig::KILL), Some(9));
        assert_eq!(signal_number(&Sig::TERM), Some(15));
        assert_eq!(signal_number(&Sig::Custom("USR2".into())), Some(12));
        assert_eq!(signal_number(&Sig::Custom("NOPE".into())), None);
    }
}
