//! Running one command as a local process group: spawn it, stream its output
//! as it arrives, and stop the whole group on deadline or cancel.

use std::future::Future;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use opsconductor_core::executor::{Command, ExecError, ExitStatus, OutputSink, StepContext};
use opsconductor_core::model::Stream;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;

use super::LocalExecutor;
use super::env::child_env;
use super::reaper;

/// Size of one read from a pipe, and so the largest chunk sent to the sink.
const CHUNK: usize = 8 * 1024;

/// After the main process exited, a read that waits this long with no data
/// means a background descendant holds the pipe open: stop reading.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// After the main process exited, stop reading after this much time spent
/// reading (time blocked on a slow consumer does not count), so a chatty
/// daemon that inherited the pipe cannot keep `exec` from returning.
const DRAIN_MAX: Duration = Duration::from_secs(1);

/// After the main process exited, stop reading after this many bytes: more
/// than any pipe holds (the Linux maximum is 1 MiB by default), so only a
/// descendant still writing can reach it.
const DRAIN_MAX_BYTES: usize = 4 * 1024 * 1024;

/// How often to look whether a stopped group has emptied.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Runs `cmd` as described in the module docs of [`super`].
pub(super) async fn exec(
    config: &LocalExecutor,
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
    if let Some(dir) = &ctx.workdir {
        check_workdir(dir).await?;
    }

    // The script's directory lives until this function returns, and is
    // removed on every path out of it (including a dropped future).
    let mut script: Option<ScriptFile> = None;
    let (program, args) = match cmd {
        Command::Shell(line) => (config.shell.clone(), vec!["-c".to_owned(), line.clone()]),
        Command::Script { interpreter, body } => {
            let mut words = interpreter.split_whitespace().map(str::to_owned);
            let program = words.next().ok_or_else(|| {
                ExecError::Spawn(
                    "the script interpreter is empty; name a program such as 'sh'".into(),
                )
            })?;
            let mut args: Vec<String> = words.collect();
            let file = ScriptFile::write(&program, body).await?;
            args.push(file.path.to_string_lossy().into_owned());
            script = Some(file);
            (program, args)
        }
    };

    let mut command = tokio::process::Command::new(&program);
    command
        .args(&args)
        .env_clear()
        .envs(child_env(std::env::vars_os(), &ctx.env))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &ctx.workdir {
        command.current_dir(dir);
    }
    let (mut child, registration) =
        reaper::spawn(&mut command, ctx.lease_margin).map_err(|e| match e {
            reaper::SpawnError::Spawn(e) => spawn_error(&program, ctx.workdir.as_deref(), &e),
            reaper::SpawnError::Reaper(e) => ExecError::Spawn(format!(
                "cannot start the process reaper ('/bin/sh'), which kills a step's processes \
             if the worker dies: {e}"
            )),
        })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| {
            ExecError::Spawn(format!("'{program}' exited before it could be tracked"))
        })?;
    let mut group = GroupGuard {
        pgid,
        armed: true,
        _registration: registration,
    };
    tracing::debug!(%program, pid = pgid.as_raw(), "started local process group");

    let (exited_tx, exited_rx) = watch::channel(false);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut pumps = pin!(async {
        tokio::join!(
            pump(stdout, Stream::Stdout, out, exited_rx.clone()),
            pump(stderr, Stream::Stderr, out, exited_rx),
        );
    });
    let mut pumps_done = false;

    let ending = while_pumping(
        async {
            let deadline = async {
                match ctx.deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = child.wait() => Ending::Exited(status),
                () = deadline => Ending::TimedOut,
                () = ctx.cancel.cancelled() => Ending::Cancelled,
            }
        },
        &mut pumps,
        &mut pumps_done,
    )
    .await;

    let result = match ending {
        Ending::Exited(Ok(status)) => {
            // The group leader is reaped; descendants it left running are
            // daemons by intent and are not ours to kill.
            group.armed = false;
            Ok(ExitStatus {
                code: status.code(),
                signal: status.signal(),
            })
        }
        Ending::Exited(Err(e)) => {
            while_pumping(
                stop_group(&mut child, pgid, config.kill_grace),
                &mut pumps,
                &mut pumps_done,
            )
            .await;
            Err(ExecError::Io(format!("cannot wait for '{program}': {e}")))
        }
        Ending::TimedOut => {
            tracing::debug!(
                pid = pgid.as_raw(),
                "deadline passed; stopping the process group"
            );
            while_pumping(
                stop_group(&mut child, pgid, config.kill_grace),
                &mut pumps,
                &mut pumps_done,
            )
            .await;
            Err(ExecError::TimedOut)
        }
        Ending::Cancelled => {
            tracing::debug!(pid = pgid.as_raw(), "cancelled; stopping the process group");
            while_pumping(
                stop_group(&mut child, pgid, config.kill_grace),
                &mut pumps,
                &mut pumps_done,
            )
            .await;
            Err(ExecError::Cancelled)
        }
    };
    group.armed = false;

    // Read what is left in the pipes, without waiting on descendants.
    exited_tx.send_replace(true);
    if !pumps_done {
        pumps.await;
    }
    drop(script);
    result
}

/// How the wait for the main process ended.
enum Ending {
    Exited(io::Result<std::process::ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Awaits `work` while also driving the output pumps, so a full pipe never
/// stalls the process being waited for.
async fn while_pumping<F, P>(work: F, pumps: &mut Pin<&mut P>, pumps_done: &mut bool) -> F::Output
where
    F: Future,
    P: Future<Output = ()>,
{
    let mut work = pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = pumps.as_mut(), if !*pumps_done => *pumps_done = true,
        }
    }
}

/// Forwards one pipe to the sink, chunk by chunk, as data arrives. Once
/// `exited` turns true it only drains what is already there (see
/// [`DRAIN_IDLE`], [`DRAIN_MAX`] and [`DRAIN_MAX_BYTES`]).
async fn pump<R>(
    reader: Option<R>,
    stream: Stream,
    out: &OutputSink,
    mut exited: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
{
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; CHUNK];
    let mut draining = false;
    let mut drain_started = Instant::now();
    let mut drain_writing = Duration::ZERO;
    let mut drained = 0usize;
    loop {
        if !draining && *exited.borrow() {
            draining = true;
            drain_started = Instant::now();
        }
        let read = if draining {
            let spent = drain_started.elapsed().saturating_sub(drain_writing);
            let left = DRAIN_MAX
                .checked_sub(spent)
                .filter(|_| drained < DRAIN_MAX_BYTES);
            let Some(left) = left else {
                tracing::debug!(
                    stream = stream.as_str(),
                    "stopped draining: output keeps coming after exit"
                );
                break;
            };
            match tokio::time::timeout(DRAIN_IDLE.min(left), reader.read(&mut buf)).await {
                Ok(read) => read,
                // A descendant still holds the pipe; its output is not ours.
                Err(_) => break,
            }
        } else {
            // `read` and `changed` are both cancel-safe: no byte is lost.
            tokio::select! {
                read = reader.read(&mut buf) => read,
                changed = exited.changed() => {
                    if changed.is_err() {
                        draining = true;
                        drain_started = Instant::now();
                    }
                    continue;
                }
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                let started = Instant::now();
                out.write(stream, Bytes::copy_from_slice(&buf[..n])).await;
                if draining {
                    drain_writing += started.elapsed();
                    drained += n;
                }
            }
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "cannot read process output");
                break;
            }
        }
    }
}

/// Stops a process group: SIGTERM, then SIGKILL once `grace` has passed
/// without the whole group gone. Reaps the leader.
async fn stop_group(child: &mut Child, pgid: Pid, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    let give_up = Instant::now() + grace;
    if tokio::time::timeout_at(give_up, child.wait())
        .await
        .is_err()
    {
        signal_group(pgid, Signal::SIGKILL);
        if let Err(e) = child.wait().await {
            tracing::warn!(pid = pgid.as_raw(), error = %e, "cannot reap a killed process");
        }
        return;
    }
    // The leader is gone; give its descendants the rest of the grace.
    while group_alive(pgid).await {
        if Instant::now() >= give_up {
            signal_group(pgid, Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pid = pgid.as_raw(), %signal, error = %e, "cannot signal process group")
        }
    }
}

/// Whether a live process is left in the group. Members that are already
/// zombies do not count: once the leader is gone they wait for their new
/// parent (init, which may reap slowly or, in a container, not at all).
async fn group_alive(pgid: Pid) -> bool {
    if matches!(killpg(pgid, None), Err(Errno::ESRCH)) {
        return false;
    }
    let raw = pgid.as_raw();
    match tokio::task::spawn_blocking(move || live_member_in_proc(raw)).await {
        Ok(Some(alive)) => alive,
        // No /proc to look into: the group exists, so count it as alive.
        _ => true,
    }
}

/// Scans `/proc` for a non-zombie process in group `pgid`; `None` without `/proc`.
fn live_member_in_proc(pgid: i32) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // The process may be gone by now; that is fine.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat)
            && pgrp == pgid
            && state != 'Z'
            && state != 'X'
        {
            return Some(true);
        }
    }
    Some(false)
}

/// State and process group from a `/proc/PID/stat` line. The command name
/// (in parentheses) may contain anything, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Kills the group if `exec` is abandoned half-way (its future dropped),
/// then releases it from the reaper (see [`reaper`]).
struct GroupGuard {
    pgid: Pid,
    armed: bool,
    /// Dropped after [`Drop::drop`] below has run.
    _registration: reaper::Registration,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            // The leader is not reaped yet, so the id still names our group.
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

async fn check_workdir(dir: &str) -> Result<(), ExecError> {
    match tokio::fs::metadata(dir).await {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ExecError::Spawn(format!(
            "working directory '{dir}' is not a directory"
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ExecError::Spawn(format!(
            "working directory '{dir}' does not exist; create it first or fix the step's workdir"
        ))),
        Err(e) => Err(ExecError::Spawn(format!("working directory '{dir}': {e}"))),
    }
}

fn spawn_error(program: &str, workdir: Option<&str>, e: &io::Error) -> ExecError {
    let place = workdir.map(|d| format!(" in '{d}'")).unwrap_or_default();
    ExecError::Spawn(match e.kind() {
        io::ErrorKind::NotFound => {
            format!("program '{program}' not found{place}; is it installed and on PATH?")
        }
        io::ErrorKind::PermissionDenied => {
            format!("program '{program}' cannot be executed{place}: {e}")
        }
        _ => format!("cannot run '{program}'{place}: {e}"),
    })
}

/// A script body in a file of its own, in a fresh private directory that is
/// removed when this value is dropped.
struct ScriptFile {
    path: PathBuf,
    _dir: TempDir,
}

impl ScriptFile {
    async fn write(program: &str, body: &str) -> Result<Self, ExecError> {
        let name = script_name(program);
        let body = body.to_owned();
        tokio::task::spawn_blocking(move || Self::write_blocking(name, body.as_bytes()))
            .await
            .map_err(|e| ExecError::Io(format!("cannot write the script file: {e}")))?
    }

    fn write_blocking(name: &str, body: &[u8]) -> Result<Self, ExecError> {
        use std::io::Write;
        let tmp = std::env::temp_dir();
        let fail = |what: &str, e: io::Error| {
            ExecError::Io(format!(
                "cannot {what} the script file in '{}': {e}",
                tmp.display()
            ))
        };
        // `tempdir` creates the directory with mode 0700.
        let dir = tempfile::Builder::new()
            .prefix("opsc-script-")
            .tempdir()
            .map_err(|e| fail("create a directory for", e))?;
        let path = dir.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&path)
            .map_err(|e| fail("create", e))?;
        file.write_all(body).map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("write", e))?;
        Ok(Self { path, _dir: dir })
    }
}

/// Some interpreters insist on an extension (PowerShell runs only `.ps1`).
fn script_name(program: &str) -> &'static str {
    let base = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    match base {
        "pwsh" | "powershell" | "powershell.exe" | "pwsh.exe" => "script.ps1",
        _ => "script",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powershell_scripts_get_their_extension() {
        assert_eq!(script_name("pwsh"), "script.ps1");
        assert_eq!(script_name("/usr/bin/pwsh"), "script.ps1");
        assert_eq!(script_name("python3"), "script");
    }

    #[test]
    fn stat_lines_parse_after_the_command_name() {
        let line = "4242 (we(ird) name) Z 1 4200 4200 0 -1 4194564 0 0";
        assert_eq!(parse_stat(line), Some(('Z', 4200)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_group_is_seen_alive_in_proc() {
        let me = nix::unistd::getpgrp().as_raw();
        assert_eq!(live_member_in_proc(me), Some(true));
    }

    #[test]
    fn spawn_errors_name_the_program_and_place() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        let msg = spawn_error("nope", Some("/srv"), &e).to_string();
        assert!(msg.contains("'nope'") && msg.contains("'/srv'"), "{msg}");
    }
}
