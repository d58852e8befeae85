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

/// The reaper program (see the module docs). Removing a group removes one
/// registration, so a reused id registered again is kept.
const SCRIPT: &str = r#"trap '' INT TERM HUP QUIT PIPE
g=' '
while IFS= read -r l; do
  case $l in
    +*) g="$g${l#+} " ;;
    -*) k=' '; d=
        for p in $g; do
          if [ -z "$d" ] && [ "$p" = "${l#-}" ]; then d=1; else k="$k$p "; fi
        done
        g=$k ;;
  esac
done
for p in $g; do kill -KILL -$p 2>/dev/null; done
"#;

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

/// A step's process group, registered with the reaper; released on drop.
#[derive(Debug)]
pub(super) struct Registration {
    pgid: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slot = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = slot.as_mut() {
            // A failure means the reaper is gone; the next spawn replaces it.
            let _ = r.sock.write_all(format!("-{}\n", self.pgid).as_bytes());
        }
    }
}

/// Spawns `command` (which must start a new process group, leader = child)
/// with its group registered with the reaper before it `exec`s.
pub(super) fn spawn(
    command: &mut tokio::process::Command,
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
    drop(slot);
    let pgid = child.id().unwrap_or_default();
    Ok((child, Registration { pgid }))
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
