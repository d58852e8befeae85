//! Steps die with their worker: a per-process *reaper* kills the process
//! group of every step still running when the worker process dies, however
//! it dies (`kill -9` included).
//!
//! The reaper is a small `/bin/sh` program started once per worker process,
//! in a process group of its own and deaf to INT/TERM/HUP/QUIT. Its stdin is
//! one end of a socket pair whose other end only the worker holds
//! (close-on-exec, so no step inherits it). It reads `+PGID` / `-PGID` lines;
//! when the socket reaches end-of-file — which the kernel makes happen the
//! moment the worker process is gone — it sends SIGKILL to every group still
//! registered and exits.
//!
//! A step registers *itself*, in the forked child before `exec`, so no window
//! exists in which the step runs but is unknown to the reaper: if the worker
//! dies right after `fork`, the child still holds the socket until it has
//! written its line and exec'd, so the reaper sees the registration before the
//! end-of-file. The group is released (`-PGID`) when the step is done with
//! it; descendants a step leaves behind after its main process exited
//! normally are daemons by intent and are not killed (as before).
//!
//! A worker that is *frozen* (SIGSTOP, a VM paused) keeps its socket open, so
//! end-of-file never comes, yet past its lease another node rescues the run
//! and may run the step again. A frozen process runs no code, so fencing in
//! the engine cannot stop the step; the reaper, a separate process, can. A
//! step spawned with a lease margin is *watched*: while it runs, the worker
//! sends a keepalive line every quarter margin, and the reaper kills every
//! watched group once no keepalive came for the margin. After SIGCONT the
//! worker sees its step killed and finds its lease lost; the rescuer's run of
//! the step starts only after the lease ended, so the two never overlap.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that spawned the
//! child exits (tokio's threads come and go), and it reaches only the direct
//! child, not the grandchildren in its group.
//!
//! `unsafe` is allowed in this module only, for [`CommandExt::pre_exec`]:
//! the registration must run between `fork` and `exec`. The closure calls
//! only `getpid` and `send(2)` on a stack buffer — async-signal-safe, no
//! allocation, no lock.
#![allow(unsafe_code)]

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The reaper program (see the module docs). Removing a group removes one
/// registration, so a reused id registered again is kept.
///
/// A ticker process adds a `t` line every [`TICK`] to what the worker sends
/// (dash, Debian's `/bin/sh`, has no `read -t`); `e` marks the worker's
/// end-of-file. `=PGID:N` puts a registered group under the keepalive: it is
/// killed once more than `N` ticks pass without a `k` line from the worker (a
/// registration counts as one).
const SCRIPT: &str = r#"trap '' INT TERM HUP QUIT PIPE
{ while :; do sleep 0.25 2>/dev/null || sleep 1; echo t || exit 0; done &
  cat; echo e; kill $! 2>/dev/null; } | {
g=' '; w=' '; n=0
drop() {
  k=' '; d=
  for p in $g; do
    if [ -z "$d" ] && [ "$p" = "$1" ]; then d=1; else k="$k$p "; fi
  done
  g=$k; k=' '; d=
  for p in $w; do
    if [ -z "$d" ] && [ "${p%:*}" = "$1" ]; then d=1; else k="$k$p "; fi
  done
  w=$k
}
while IFS= read -r l; do
  case $l in
    t) n=$((n + 1))
       for p in $w; do
         if [ "$n" -gt "${p#*:}" ]; then kill -KILL -${p%:*} 2>/dev/null; drop "${p%:*}"; fi
       done ;;
    k) n=0 ;;
    e) break ;;
    +*) g="$g${l#+} " ;;
    =*) w="$w${l#=} "; n=0 ;;
    -*) drop "${l#-}" ;;
  esac
done
for p in $g; do kill -KILL -$p 2>/dev/null; done
}
"#;

/// The ticker's period in [`SCRIPT`].
const TICK: Duration = Duration::from_millis(250);

/// The shell that runs the reaper.
const SHELL: &str = "/bin/sh";

struct Reaper {
    child: Child,
    sock: UnixStream,
}

/// The worker process's reaper, started on first use and again if it died.
static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

/// The live reaper in `slot`, started (again) if needed.
fn live(slot: &mut Option<Reaper>) -> io::Result<&Reaper> {
    let dead = match slot.as_mut() {
        Some(r) => !matches!(r.child.try_wait(), Ok(None)),
        None => true,
    };
    if dead {
        if slot.is_some() {
            tracing::warn!("the process reaper exited; starting a new one");
        }
        *slot = Some(start()?);
    }
    slot.as_ref()
        .ok_or_else(|| io::Error::other("no process reaper"))
}

fn start() -> io::Result<Reaper> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = Command::new(SHELL)
        .args(["-c", SCRIPT, "opsconductor-reaper"])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()?;
    tracing::debug!(pid = child.id(), "started the process reaper");
    Ok(Reaper { child, sock: ours })
}

/// A step's process group, registered with the reaper; released on drop
/// (which also stops its keepalive).
#[derive(Debug)]
pub(super) struct Registration {
    pgid: u32,
    keepalive: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        let mut slot = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = slot.as_mut() {
            // A failure means the reaper is gone; the next spawn replaces it.
            let _ = r.sock.write_all(format!("-{}\n", self.pgid).as_bytes());
        }
    }
}

/// Spawns `command` (which must start a new process group, leader = child)
/// with its group registered with the reaper before it `exec`s. With a
/// `lease_margin`, the group is also put under the keepalive: the reaper
/// kills it when this process sends no keepalive for that long (it was
/// frozen, e.g. by SIGSTOP, and another node may take the run over).
pub(super) fn spawn(
    command: &mut tokio::process::Command,
    lease_margin: Option<Duration>,
) -> Result<(tokio::process::Child, Registration), SpawnError> {
    let mut slot = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
    let fd = live(&mut slot)
        .map_err(SpawnError::Reaper)?
        .sock
        .as_raw_fd();
    // SAFETY: the closure runs in the forked child before `exec`; it only
    // calls `getpid` and `send(2)` with a stack buffer, which are
    // async-signal-safe. `fd` stays open until `spawn` returns: the lock is
    // held, and the reaper is only replaced under it.
    unsafe {
        command.pre_exec(move || {
            register(fd);
            Ok(())
        });
    }
    let child = command.spawn().map_err(SpawnError::Spawn)?;
    let pgid = child.id().unwrap_or_default();
    let keepalive = match (lease_margin, slot.as_mut()) {
        (Some(margin), Some(r)) => {
            // A failure means the reaper is gone; the group is unwatched, as
            // after any reaper death.
            let _ = r
                .sock
                .write_all(format!("={pgid}:{}\n", ticks(margin)).as_bytes());
            tokio::runtime::Handle::try_current()
                .ok()
                .map(|rt| rt.spawn(keepalive((margin / 4).max(Duration::from_millis(50)))))
        }
        _ => None,
    };
    drop(slot);
    Ok((child, Registration { pgid, keepalive }))
}

/// The ticks after which a watched group dies: the reaper kills after more
/// than this many ticks without a keepalive, so within `margin` of it.
fn ticks(margin: Duration) -> u128 {
    (margin.as_millis() / TICK.as_millis())
        .saturating_sub(1)
        .max(1)
}

/// Tells the reaper every `period` that this process still runs.
async fn keepalive(period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut slot = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = slot.as_mut() {
            let _ = r.sock.write_all(b"k\n");
        }
    }
}

/// In the forked child: writes `+PID\n`. Errors are ignored (the reaper
/// died; the step still runs). `MSG_NOSIGNAL`: no SIGPIPE.
fn register(fd: RawFd) {
    let mut buf = [0u8; 16];
    let mut digits = [0u8; 12];
    let mut n = std::process::id();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    buf[0] = b'+';
    for i in 0..len {
        buf[1 + i] = digits[len - 1 - i];
    }
    buf[1 + len] = b'\n';
    let msg = &buf[..len + 2];
    // SAFETY: `msg` is a valid buffer of `msg.len()` bytes for the call.
    let _ = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
}

/// Why [`spawn`] failed.
#[derive(Debug)]
pub(super) enum SpawnError {
    /// The reaper could not be started.
    Reaper(io::Error),
    /// The command could not be started.
    Spawn(io::Error),
}
