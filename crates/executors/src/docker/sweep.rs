//! Labels on everything the Docker executor creates, who created it (the
//! worker identity), and the sweeper that removes what a killed worker left
//! behind.
//!
//! The rule, applied to every container and volume labelled
//! `opsconductor.managed=true`:
//!
//! 1. Created by a worker on **this host** (same host name): removed when
//!    that worker is gone — the host has rebooted since (a different
//!    `opsconductor.worker.boot`), or no process with that pid and start time
//!    exists. A live worker's objects are never touched.
//! 2. Created **elsewhere** (another host name, or labels that name no
//!    worker): removed only when not running and older than the executor's
//!    `orphan_grace` (1 hour by default). A live worker removes its own
//!    containers as soon as a step ends, so an exited container that old is
//!    garbage; a running one from another host is left alone, since its
//!    worker may still be alive.
//!
//! Volumes still in use by a container are skipped (the engine refuses), and
//! a later sweep gets them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};
use opsconductor_core::executor::ExecError;

use super::engine_error;

/// `true` on everything the executor creates.
pub const LABEL_MANAGED: &str = "opsconductor.managed";
/// The run the container or volume belongs to.
pub const LABEL_RUN: &str = "opsconductor.run";
/// The session (one target in one run) it belongs to.
pub const LABEL_SESSION: &str = "opsconductor.session";
/// The target name.
pub const LABEL_TARGET: &str = "opsconductor.target";
/// The step index (containers only).
pub const LABEL_STEP: &str = "opsconductor.step";
/// What the object is for: `step`, `copy`, `probe` or `workspace`.
pub const LABEL_ROLE: &str = "opsconductor.role";
/// The worker that created it, `HOST:PID`.
pub const LABEL_WORKER: &str = "opsconductor.worker";
/// The boot id of the worker's host when it created it.
pub const LABEL_WORKER_BOOT: &str = "opsconductor.worker.boot";
/// The worker process's start time (clock ticks after boot), which tells a
/// live worker from a later process that got the same pid.
pub const LABEL_WORKER_START: &str = "opsconductor.worker.start";

/// Who this process is, as written into [`LABEL_WORKER`] and friends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerId {
    /// Host name.
    pub host: String,
    /// Kernel boot id (empty when unknown).
    pub boot: String,
    /// Process id.
    pub pid: u32,
    /// Process start time in clock ticks after boot (empty when unknown).
    pub start: String,
}

impl WorkerId {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            host: read_trimmed("/proc/sys/kernel/hostname")
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "unknown-host".into()),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            pid,
            start: process_start(pid).unwrap_or_default(),
        }
    }

    /// The worker labels, to merge into an object's labels.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (
                LABEL_WORKER.to_owned(),
                format!("{}:{}", self.host, self.pid),
            ),
            (LABEL_WORKER_BOOT.to_owned(), self.boot.clone()),
            (LABEL_WORKER_START.to_owned(), self.start.clone()),
        ])
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Field 22 of `/proc/PID/stat` (the start time), read after the command
/// name, which may itself hold spaces and parentheses.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': field 3 (state) is the first; the start time is field 22.
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the process `pid` that started at `start` still runs here.
fn alive(pid: u32, start: &str) -> bool {
    match process_start(pid) {
        None => false,
        Some(now) => start.is_empty() || now == start,
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Ids of the removed containers.
    pub containers: Vec<String>,
    /// Names of the removed volumes.
    pub volumes: Vec<String>,
}

/// Whether an object with these labels, this age and this state is an
/// orphan under the rule in the module docs.
fn is_orphan(
    labels: &HashMap<String, String>,
    age: Option<Duration>,
    running: bool,
    me: &WorkerId,
    grace: Duration,
) -> bool {
    let worker = labels
        .get(LABEL_WORKER)
        .and_then(|w| w.rsplit_once(':'))
        .and_then(|(host, pid)| Some((host, pid.parse::<u32>().ok()?)));
    match worker {
        Some((host, pid)) if host == me.host => {
            let boot = labels.get(LABEL_WORKER_BOOT).map(String::as_str);
            if boot.is_some_and(|b| !b.is_empty() && !me.boot.is_empty() && b != me.boot) {
                return true;
            }
            let start = labels
                .get(LABEL_WORKER_START)
                .map(String::as_str)
                .unwrap_or("");
            if pid == me.pid && (start.is_empty() || start == me.start) {
                return false;
            }
            !alive(pid, start)
        }
        _ => !running && age.is_some_and(|a| a >= grace),
    }
}

fn age_from_unix(secs: i64) -> Option<Duration> {
    let created = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?);
    SystemTime::now().duration_since(created).ok()
}

/// Removes orphaned containers and volumes (see the module docs).
pub async fn sweep(
    docker: &Docker,
    me: &WorkerId,
    grace: Duration,
) -> Result<SweepReport, ExecError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_MANAGED}=true")])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| ExecError::Connect(format!("cannot list containers: {}", engine_error(&e))))?;
    let mut report = SweepReport::default();
    for c in containers {
        let Some(id) = c.id else { continue };
        let labels = c.labels.unwrap_or_default();
        let running = c.state.is_some_and(|s| {
            matches!(
                s,
                bollard::models::ContainerSummaryStateEnum::RUNNING
                    | bollard::models::ContainerSummaryStateEnum::PAUSED
                    | bollard::models::ContainerSummaryStateEnum::RESTARTING
            )
        });
        let age = c.created.and_then(age_from_unix);
        if !is_orphan(&labels, age, running, me, grace) {
            continue;
        }
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => {
                tracing::info!(container = %id, worker = ?labels.get(LABEL_WORKER), "removed an orphaned container");
                report.containers.push(id);
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %engine_error(&e), "cannot remove an orphaned container")
            }
        }
    }
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| ExecError::Connect(format!("cannot list volumes: {}", engine_error(&e))))?;
    for v in volumes.volumes.unwrap_or_default() {
        let age = v.created_at.and_then(|at| age_from_unix(at.timestamp()));
        if !is_orphan(&v.labels, age, false, me, grace) {
            continue;
        }
        let opts = RemoveVolumeOptionsBuilder::default().force(false).build();
        match docker.remove_volume(&v.name, Some(opts)).await {
            Ok(()) => {
                tracing::info!(volume = %v.name, "removed an orphaned workspace volume");
                report.volumes.push(v.name);
            }
            // In use (by a container a later sweep removes) or already gone.
            Err(e) => {
                tracing::debug!(volume = %v.name, error = %engine_error(&e), "orphaned volume not removed")
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> WorkerId {
        WorkerId::current()
    }

    fn labels(worker: &str, boot: &str, start: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.into(), "true".into()),
            (LABEL_WORKER.into(), worker.into()),
            (LABEL_WORKER_BOOT.into(), boot.into()),
            (LABEL_WORKER_START.into(), start.into()),
        ])
    }

    #[test]
    fn this_process_is_alive_and_known() {
        let me = me();
        assert!(!me.start.is_empty(), "{me:?}");
        assert!(alive(me.pid, &me.start));
        assert!(!alive(me.pid, "1"), "another start time is another process");
    }

    #[test]
    fn the_rule() {
        let me = me();
        let grace = Duration::from_secs(3600);
        let old = Some(Duration::from_secs(7200));
        let young = Some(Duration::from_secs(5));
        let host = &me.host;
        // Ours: never.
        let ours = labels(&format!("{host}:{}", me.pid), &me.boot, &me.start);
        assert!(!is_orphan(&ours, old, false, &me, grace));
        // Same host, a pid that cannot exist (above the kernel's maximum).
        let dead = labels(&format!("{host}:4194305"), &me.boot, "123");
        assert!(is_orphan(&dead, young, true, &me, grace));
        // Same host, before a reboot.
        let rebooted = labels(&format!("{host}:{}", me.pid), "another-boot", &me.start);
        assert!(is_orphan(&rebooted, young, true, &me, grace));
        // Another host: only exited and old.
        let other = labels("elsewhere:1", "b", "1");
        assert!(!is_orphan(&other, old, true, &me, grace));
        assert!(!is_orphan(&other, young, false, &me, grace));
        assert!(is_orphan(&other, old, false, &me, grace));
        // No worker label at all: like another host.
        let bare = HashMap::from([(LABEL_MANAGED.to_owned(), "true".to_owned())]);
        assert!(is_orphan(&bare, old, false, &me, grace));
        assert!(!is_orphan(&bare, old, true, &me, grace));
    }

    #[test]
    fn ages() {
        assert!(age_from_unix(1_577_836_800).is_some_and(|a| a > Duration::from_secs(86400)));
        assert!(age_from_unix(-1).is_none());
    }
}
