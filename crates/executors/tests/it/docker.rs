//! The Docker executor against the real engine on this machine: the
//! executor behaviour suite, plus what only containers can show — the
//! isolation defaults and limits, OOM kills, no network, the read-only root,
//! the session workspace, copy semantics, containers gone after timeouts,
//! cancels and dropped futures, the sweeper, and clear errors. The last test
//! checks that nothing this test binary created is left on the engine.
//!
//! Needs a running Docker engine; the test image is built from Debian's
//! `busybox-static` when missing (see `support/docker.rs`). Nothing skips:
//! no engine is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support::docker as docker_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use opsconductor_core::executor::{
    Capabilities, Command, Credential, ExecError, Executor, FileSpec, Probe, Session, StepContext,
};
use opsconductor_core::model::{Connection, Target};
use opsconductor_executors::behaviour::{Outcome, run, run_with, unique};
use opsconductor_executors::docker::sweep::{
    LABEL_MANAGED, LABEL_RUN, LABEL_SESSION, LABEL_WORKER, LABEL_WORKER_BOOT, LABEL_WORKER_START,
};
use opsconductor_executors::docker::{
    DEFAULT_SOCKET, DockerExecutor, DockerSession, TmpMode, WorkerId,
};
use serde_json::{Value, json};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Tests that have started and not yet finished, and tests finished.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

/// The number of tests in this file other than `zz_nothing_is_left_behind`:
/// the 14 behaviour-suite rules plus the Docker tests below. If it is
/// wrong, the last test only waits longer (it also stops waiting once no
/// test has run for a while).
const OTHER_TESTS: usize = 14 + 27;

/// Counts a test as live until dropped.
struct TestGuard;

impl TestGuard {
    fn new() -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        TestGuard
    }
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
        DONE.fetch_add(1, Ordering::SeqCst);
    }
}

/// The Docker executor, counted as a live test for as long as the fixture
/// holding it lives (the behaviour suite drops it at the end of each test).
struct Tracked {
    inner: DockerExecutor,
    _guard: TestGuard,
}

#[async_trait]
impl Executor for Tracked {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn connect(
        &self,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<Box<dyn Session>, ExecError> {
        self.inner.connect(target, cred).await
    }
    async fn check(&self, target: &Target, cred: Option<&Credential>) -> Result<Probe, ExecError> {
        self.inner.check(target, cred).await
    }
}

static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The test image, built on first use; panics (fails the test) without an
/// engine.
async fn image() -> String {
    IMAGE
        .get_or_init(|| async {
            match tokio::task::spawn_blocking(docker_support::ensure_test_image).await {
                Ok(Ok(image)) => image,
                Ok(Err(e)) => panic!("{e}"),
                Err(e) => panic!("building the test image panicked: {e}"),
            }
        })
        .await
        .clone()
}

fn target_with(image: &str, limits: &[(&str, Value)]) -> Target {
    let mut t = Target::local();
    t.name = unique("box-");
    t.description = String::new();
    t.connection = Connection::Docker {
        image: image.to_owned(),
        limits: limits
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    };
    t
}

async fn target(limits: &[(&str, Value)]) -> Target {
    target_with(&image().await, limits)
}

/// The behaviour suite's target asks for the session workspace at `/tmp`:
/// its rules make a directory under `/tmp` in one step and copy into it in
/// the next, which the default per-step tmpfs cannot keep.
async fn docker_fixture() -> (Arc<dyn Executor>, Target) {
    let target = target(&[("tmp", json!("session"))]).await;
    let exec = Tracked {
        inner: DockerExecutor::new(),
        _guard: TestGuard::new(),
    };
    (Arc::new(exec), target)
}

opsconductor_executors::executor_behaviour_suite!(docker_fixture);

/// A client of our own, to look at the engine behind the executor's back.
async fn engine() -> Docker {
    Docker::connect_with_socket_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("the Docker engine must be reachable")
}

/// Containers (all states) with this label, as the engine lists them.
async fn containers_with(label: &str, value: &str) -> Vec<bollard::models::ContainerSummary> {
    let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
    engine()
        .await
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers")
}

/// Volumes with this label, as the engine lists them.
async fn volumes_with(label: &str, value: &str) -> Vec<bollard::models::Volume> {
    let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
    engine()
        .await
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default()
}

/// Ids of containers (all states) with this label.
async fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    containers_with(label, value)
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Names of volumes with this label.
async fn volumes_labelled(label: &str, value: &str) -> Vec<String> {
    volumes_with(label, value)
        .await
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// Asserts that no container of this run is left (they are removed before
/// `exec` returns).
async fn assert_run_clean(ctx: &StepContext) {
    let left = containers_labelled(LABEL_RUN, &ctx.run_id.to_string()).await;
    assert!(
        left.is_empty(),
        "containers of run {} left: {left:?}",
        ctx.run_id
    );
}

async fn session(exec: &DockerExecutor, target: &Target) -> DockerSession {
    exec.session(target)
        .await
        .unwrap_or_else(|e| panic!("cannot open a session on {}: {e}", target.name))
}

fn shell(line: &str) -> Command {
    Command::Shell(line.to_owned())
}

async fn sh(session: &DockerSession, line: &str) -> (StepContext, Outcome) {
    let ctx = StepContext::new(Target::local());
    let out = run(session, &ctx, &shell(line)).await;
    (ctx, out)
}

fn ctx_for(target: &Target) -> StepContext {
    StepContext::new(target.clone())
}

// ---------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------

/// Prints, one per line: uid:gid, CapEff, NoNewPrivs, memory limit, pids
/// limit, CPU quota/period — for cgroup v1 and v2.
const PROBE_ISOLATION: &str = r#"
echo "user=$(id -u):$(id -g)"
grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr ':' '='
if test -r /sys/fs/cgroup/memory.max; then
  echo "memory=$(cat /sys/fs/cgroup/memory.max)"
  echo "pids=$(cat /sys/fs/cgroup/pids.max)"
  set -- $(cat /sys/fs/cgroup/cpu.max); echo "cpu=$1/$2"
else
  echo "memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
  echo "pids=$(cat /sys/fs/cgroup/pids/pids.max)"
  d=/sys/fs/cgroup/cpu; test -r $d/cpu.cfs_quota_us || d=/sys/fs/cgroup/cpu,cpuacct
  echo "cpu=$(cat $d/cpu.cfs_quota_us)/$(cat $d/cpu.cfs_period_us)"
fi
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ',')"
echo "pid1=$(tr '\000' ' ' < /proc/1/cmdline | cut -d' ' -f1)"
"#;

fn facts(out: &Outcome) -> HashMap<String, String> {
    out.assert_success();
    out.stdout()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_isolation_is_applied() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[]).await).await;
    let (ctx, out) = sh(&s, PROBE_ISOLATION).await;
    let f = facts(&out);
    assert_eq!(f["user"], "65534:65534", "{f:?}");
    assert_eq!(
        f["CapEff"], "0000000000000000",
        "all capabilities dropped: {f:?}"
    );
    assert_eq!(f["NoNewPrivs"], "1", "{f:?}");
    assert_eq!(f["memory"], (512u64 << 20).to_string(), "{f:?}");
    assert_eq!(f["pids"], "256", "{f:?}");
    assert_eq!(f["cpu"], "100000/100000", "one CPU: {f:?}");
    assert_eq!(f["ifaces"], "lo,", "no network but loopback: {f:?}");
    assert!(f["pid1"].contains("init"), "an init is PID 1: {f:?}");
    assert_run_clean(&ctx).await;
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_overrides_its_targets_limits_for_that_step_only() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("memory", json!("256m"))]).await;
    // Accepted at submit: the same keys as the target's, but not `tmp`.
    let step: BTreeMap<String, serde_json::Value> = [
        ("memory".to_owned(), json!("64m")),
        ("pids".to_owned(), json!(50)),
        ("network".to_owned(), json!("bridge")),
    ]
    .into();
    exec.check_step_limits(&t, &step).unwrap();
    let bad: BTreeMap<String, serde_json::Value> = [("memory".to_owned(), json!("lots"))].into();
    let err = exec.check_step_limits(&t, &bad).unwrap_err();
    assert!(err.contains("memory"), "{err}");
    let tmp: BTreeMap<String, serde_json::Value> = [("tmp".to_owned(), json!("session"))].into();
    let err = exec.check_step_limits(&t, &tmp).unwrap_err();
    assert!(err.contains("tmp"), "{err}");

    let s = session(&exec, &t).await;
    let mut ctx = StepContext::new(t.clone());
    ctx.limits = step;
    let out = run(&s, &ctx, &shell(PROBE_ISOLATION)).await;
    let f = facts(&out);
    assert_eq!(f["memory"], (64u64 << 20).to_string(), "{f:?}");
    assert_eq!(f["pids"], "50", "{f:?}");
    assert!(f["ifaces"].contains("eth0"), "the step's network: {f:?}");
    // The next step without overrides is back to the target's limits.
    let (_, out) = sh(&s, PROBE_ISOLATION).await;
    let f = facts(&out);
    assert_eq!(f["memory"], (256u64 << 20).to_string(), "{f:?}");
    assert_eq!(f["pids"], "256", "{f:?}");
    assert_eq!(f["ifaces"], "lo,", "{f:?}");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_configurable() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[
        ("memory", json!("256m")),
        ("cpus", json!(0.5)),
        ("pids", json!(100)),
        ("network", json!("bridge")),
        ("user", json!("1000:1001")),
        ("read_only", json!(false)),
        ("init", json!(false)),
    ])
    .await;
    let s = session(&exec, &t).await;
    let (_, out) = sh(&s, PROBE_ISOLATION).await;
    let f = facts(&out);
    assert_eq!(f["user"], "1000:1001", "{f:?}");
    assert_eq!(f["memory"], (256u64 << 20).to_string(), "{f:?}");
    assert_eq!(f["pids"], "100", "{f:?}");
    assert_eq!(f["cpu"], "50000/100000", "half a CPU: {f:?}");
    assert!(f["ifaces"].contains("eth0"), "bridge network: {f:?}");
    assert!(!f["pid1"].contains("init"), "no init: {f:?}");
    Box::new(s).close().await;
    // A writable root (as root: the image's /etc belongs to root).
    let t = target(&[("read_only", json!(false)), ("user", json!("0:0"))]).await;
    let s = session(&exec, &t).await;
    let (_, out) = sh(&s, "touch /etc/x && id -u").await;
    out.assert_success();
    assert_eq!(out.stdout(), "0\n");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_by_default() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[]).await).await;
    // The engine's bridge gateway and a public address: both unreachable.
    for addr in ["172.17.0.1 2375", "1.1.1.1 53"] {
        let (_, out) = sh(&s, &format!("nc -w 2 {addr} </dev/null && echo connected")).await;
        assert!(!out.status().success(), "{addr}: {}", out.stdout());
        assert!(!out.stdout().contains("connected"), "{addr}");
        assert!(
            out.stderr().to_lowercase().contains("unreachable"),
            "{addr}: {}",
            out.stderr()
        );
    }
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_read_only_and_tmp_is_writable() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[]).await).await;
    let (_, out) = sh(&s, "echo x > /etc/x").await;
    assert_ne!(out.status().code, Some(0));
    assert!(
        out.stderr().contains("Read-only file system"),
        "{}",
        out.stderr()
    );
    let (_, out) = sh(&s, "echo x > /tmp/x && cat /tmp/x").await;
    out.assert_success();
    assert_eq!(out.stdout(), "x\n");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_and_is_reported_as_out_of_memory() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[("memory", json!("16m"))]).await).await;
    // The shell holds a command substitution in memory: 48 MB does not fit.
    let (ctx, out) = sh(
        &s,
        "echo before; x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo ${#x}",
    )
    .await;
    match &out.result {
        Err(ExecError::Io(msg)) => assert_eq!(msg, "killed: out of memory (limit 16 MiB)"),
        other => panic!("expected an out-of-memory error, got {other:?}"),
    }
    assert_eq!(out.stdout(), "before\n", "output before the kill is kept");
    assert_run_clean(&ctx).await;
    // The same session still runs steps within the limit.
    let (_, out) = sh(
        &s,
        "x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ${#x}",
    )
    .await;
    out.assert_success();
    assert_eq!(out.stdout(), "1000000\n");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_a_size_limited_tmpfs_by_default() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[]).await).await;
    assert_eq!(s.limits().tmp, TmpMode::Tmpfs);
    // busybox df: Filesystem 1K-blocks Used Available Use% Mounted on.
    let (_, out) = sh(&s, "df -k /tmp | tail -n 1").await;
    out.assert_success();
    let fields: Vec<String> = out.stdout().split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        fields.first().map(String::as_str),
        Some("tmpfs"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get(1).map(String::as_str),
        Some("65536"),
        "64 MiB: {fields:?}"
    );
    assert_eq!(
        fields.last().map(String::as_str),
        Some("/tmp"),
        "{fields:?}"
    );
    let (_, out) = sh(&s, "grep ' /tmp ' /proc/mounts").await;
    out.assert_success();
    assert!(
        out.stdout().starts_with("tmpfs /tmp tmpfs rw,"),
        "{}",
        out.stdout()
    );
    // Writing past the limit fails; nothing survives the step.
    let (_, out) = sh(&s, "dd if=/dev/zero of=/tmp/big bs=1048576 count=80").await;
    assert_ne!(out.status().code, Some(0));
    assert!(out.stderr().contains("No space left"), "{}", out.stderr());
    let (_, out) = sh(&s, "ls -A /tmp | wc -l").await;
    assert_eq!(out.stdout().trim(), "0", "a fresh /tmp per step");
    assert!(
        s.workspace_volume().is_none(),
        "no workspace volume by default"
    );
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_size_is_configurable() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("tmpfs_size", json!("2m"))]).await;
    let s = session(&exec, &t).await;
    let (_, out) = sh(&s, "head -c 1000000 /dev/zero > /tmp/small && echo ok").await;
    out.assert_success();
    let (_, out) = sh(&s, "dd if=/dev/zero of=/tmp/big bs=1048576 count=4").await;
    assert_ne!(out.status().code, Some(0));
    assert!(out.stderr().contains("No space left"), "{}", out.stderr());
    Box::new(s).close().await;
}

// ---------------------------------------------------------------------------
// Ending: timeout, cancel, dropped futures
// ---------------------------------------------------------------------------

/// Waits until a running container of `run` exists; returns its id.
async fn wait_for_running(run: &str) -> String {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let filters = HashMap::from([
            ("label", vec![format!("{LABEL_RUN}={run}")]),
            ("status", vec!["running".to_owned()]),
        ]);
        let found = engine()
            .await
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .expect("list");
        if let Some(id) = found.into_iter().find_map(|c| c.id) {
            return id;
        }
        assert!(
            Instant::now() < give_up,
            "no running container for run {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_container_gone(id: &str) {
    match engine().await.inspect_container(id, None).await {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Ok(c) => panic!("container {id} still exists: {:?}", c.state),
        Err(e) => panic!("inspecting {id}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_container_and_removes_it() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = Arc::new(session(&exec, &target(&[]).await).await);
    let mut ctx = StepContext::new(Target::local());
    ctx.deadline = Some(Instant::now() + Duration::from_secs(2));
    let run_id = ctx.run_id.to_string();
    let task = {
        let s = s.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move { run(&*s, &ctx, &shell("echo started; sleep 60")).await })
    };
    let id = wait_for_running(&run_id).await;
    let out = task.await.unwrap();
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let took = out.returned - out.started;
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(out.stdout(), "started\n");
    assert_container_gone(&id).await;
    assert_run_clean(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_container_and_removes_it() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[]).await).await;
    let ctx = StepContext::new(Target::local());
    let run_id = ctx.run_id.to_string();
    let cancel = ctx.cancel.clone();
    let watcher = tokio::spawn(async move {
        let id = wait_for_running(&run_id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
        id
    });
    let out = run_with(&s, &ctx, &shell("echo started; exec sleep 60"), |_| {}).await;
    assert!(
        matches!(out.result, Err(ExecError::Cancelled)),
        "{:?}",
        out.result
    );
    assert_container_gone(&watcher.await.unwrap()).await;
    assert_run_clean(&ctx).await;
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_exec_removes_its_container() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = Arc::new(session(&exec, &target(&[]).await).await);
    let ctx = StepContext::new(Target::local());
    let run_id = ctx.run_id.to_string();
    let task = {
        let s = s.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move { run(&*s, &ctx, &shell("sleep 60")).await })
    };
    let id = wait_for_running(&run_id).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // The abort drops the future, whose guard removes the container before
    // the drop returns.
    let give_up = Instant::now() + Duration::from_secs(10);
    while !containers_labelled(LABEL_RUN, &run_id).await.is_empty() {
        assert!(
            Instant::now() < give_up,
            "the container of an aborted exec was left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_container_gone(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_come_from_the_container_and_signals_are_128_plus() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[]).await).await;
    let (_, out) = sh(&s, "exit 7").await;
    assert_eq!(out.status().code, Some(7));
    let (_, out) = sh(&s, "kill -9 $$").await;
    assert_eq!(out.status().code, Some(137), "SIGKILL reports 128 + 9");
    Box::new(s).close().await;
}

// ---------------------------------------------------------------------------
// Workspace and copy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_lives_for_the_session_only() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("tmp", json!("session"))]).await;
    let s = session(&exec, &t).await;
    sh(&s, "mkdir /tmp/state && echo kept > /tmp/state/file")
        .await
        .1
        .assert_success();
    let (_, out) = sh(&s, "cat /tmp/state/file; stat -c '%a' /tmp").await;
    out.assert_success();
    assert_eq!(out.stdout(), "kept\n1777\n");
    let volume = s.workspace_volume().expect("a workspace volume").to_owned();
    // Another session of the same target has its own workspace.
    let other = session(&exec, &t).await;
    let (_, out) = sh(&other, "test -e /tmp/state && echo leaked || echo isolated").await;
    assert_eq!(out.stdout(), "isolated\n");
    Box::new(other).close().await;
    let sid = s.id().to_owned();
    assert_eq!(volumes_labelled(LABEL_SESSION, &sid).await, [volume]);
    Box::new(s).close().await;
    assert!(
        volumes_labelled(LABEL_SESSION, &sid).await.is_empty(),
        "close removes the workspace volume"
    );
}

/// The test image without `/tmp` (committed from a container that removed
/// it), built once.
fn image_without_tmp(base: &str) -> String {
    const NAME: &str = "opsc-test/busybox-notmp:1";
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("run docker")
    };
    if docker(&["image", "inspect", NAME]).status.success() {
        return NAME.to_owned();
    }
    let name = unique("opsc-notmp-");
    let made = docker(&["run", "--name", &name, base, "rm", "-r", "/tmp"]);
    assert!(made.status.success(), "{made:?}");
    let committed = docker(&["commit", &name, NAME]);
    docker(&["rm", "-f", &name]);
    assert!(committed.status.success(), "{committed:?}");
    NAME.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_is_writable_even_without_tmp_in_the_image() {
    let _g = TestGuard::new();
    let base = image().await;
    let image = tokio::task::spawn_blocking(move || image_without_tmp(&base))
        .await
        .unwrap();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target_with(&image, &[("tmp", json!("session"))])).await;
    let (_, out) = sh(&s, "echo ok > /tmp/x && cat /tmp/x && stat -c '%a %u' /tmp").await;
    out.assert_success();
    assert_eq!(out.stdout(), "ok\n1777 0\n");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_removes_its_workspace() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = session(&exec, &target(&[("tmp", json!("session"))]).await).await;
    sh(&s, "true").await.1.assert_success();
    let id = s.id().to_owned();
    assert_eq!(volumes_labelled(LABEL_SESSION, &id).await.len(), 1);
    drop(s);
    assert!(volumes_labelled(LABEL_SESSION, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_then_exec_sees_the_file_with_mode_and_owner() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("tmp", json!("session"))]).await;
    let s = session(&exec, &t).await;
    let file = FileSpec {
        dest: "/tmp/app.conf".into(),
        content: b"secret=1\n".to_vec(),
        mode: 0o600,
    };
    s.copy(&ctx_for(&t), &file).await.unwrap();
    let (_, out) = sh(
        &s,
        "stat -c '%a %u:%g' /tmp/app.conf; cat /tmp/app.conf; ls -A /tmp",
    )
    .await;
    out.assert_success();
    assert_eq!(out.stdout(), "600 65534:65534\nsecret=1\napp.conf\n");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_user_owns_copied_files_and_scripts() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    // The test image has /etc/passwd with `nobody`; the engine resolves it.
    let t = target(&[("user", json!("nobody")), ("tmp", json!("session"))]).await;
    let s = session(&exec, &t).await;
    let file = FileSpec {
        dest: "/tmp/owned".into(),
        content: b"x".to_vec(),
        mode: 0o640,
    };
    s.copy(&ctx_for(&t), &file).await.unwrap();
    let (_, out) = sh(&s, "id -u; stat -c '%a %u' /tmp/owned").await;
    out.assert_success();
    assert_eq!(out.stdout(), "65534\n640 65534\n");
    let cmd = Command::Script {
        interpreter: "sh -e".into(),
        body: "stat -c '%u' \"$0\"\n".into(),
    };
    let out = run(&s, &ctx_for(&t), &cmd).await;
    out.assert_success();
    assert_eq!(out.stdout(), "65534\n");
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_on_a_writable_root_are_restored_into_every_later_container() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("read_only", json!(false))]).await;
    let s = session(&exec, &t).await;
    let ctx = ctx_for(&t);
    let mut file = FileSpec {
        dest: "/etc/app.conf".into(),
        content: b"v1\n".to_vec(),
        mode: 0o640,
    };
    s.copy(&ctx, &file).await.unwrap();
    for _ in 0..2 {
        let (_, out) = sh(&s, "stat -c '%a %u' /etc/app.conf; cat /etc/app.conf").await;
        out.assert_success();
        assert_eq!(out.stdout(), "640 65534\nv1\n");
    }
    // A step's own changes outside /tmp do not survive; the copy does.
    sh(&s, "echo changed > /etc/app.conf")
        .await
        .1
        .assert_success();
    file.content = b"v2\n".to_vec();
    file.mode = 0o644;
    s.copy(&ctx, &file).await.unwrap();
    let (_, out) = sh(&s, "stat -c '%a' /etc/app.conf; cat /etc/app.conf").await;
    assert_eq!(
        out.stdout(),
        "644\nv2\n",
        "a later copy replaces the earlier one"
    );
    // A missing directory is refused at copy time, naming it.
    let missing = FileSpec {
        dest: "/opt/nowhere/app.conf".into(),
        content: b"x".to_vec(),
        mode: 0o644,
    };
    match s.copy(&ctx, &missing).await {
        Err(ExecError::Io(msg)) => assert!(msg.contains("/opt/nowhere"), "{msg}"),
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert_run_clean(&ctx).await;
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_that_cannot_work_say_why() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("tmp", json!("session"))]).await;
    let s = session(&exec, &t).await;
    let ctx = ctx_for(&t);
    let file = |dest: &str| FileSpec {
        dest: dest.into(),
        content: b"x".to_vec(),
        mode: 0o644,
    };
    match s.copy(&ctx, &file("/etc/x.conf")).await {
        Err(ExecError::Io(msg)) => {
            assert!(
                msg.contains("/etc/x.conf") && msg.contains("read-only"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    sh(&s, "mkdir /tmp/adir").await.1.assert_success();
    match s.copy(&ctx, &file("/tmp/adir")).await {
        Err(ExecError::Io(msg)) => assert!(msg.contains("/tmp/adir is a directory"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let (_, out) = sh(&s, "ls -A /tmp /tmp/adir").await;
    assert_eq!(
        out.stdout(),
        "/tmp:\nadir\n\n/tmp/adir:\n",
        "no temporary file is left"
    );
    for bad in ["relative/x", "/tmp/../etc/x", "/tmp/dir/"] {
        match s.copy(&ctx, &file(bad)).await {
            Err(ExecError::Io(msg)) => assert!(msg.contains(bad), "{msg}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    Box::new(s).close().await;
    // The default /tmp is a tmpfs per step: a copy there cannot work.
    let t = target(&[]).await;
    let s = session(&exec, &t).await;
    match s.copy(&ctx, &file("/tmp/x")).await {
        Err(ExecError::Io(msg)) => {
            assert!(
                msg.contains("tmpfs") && msg.contains("tmp: \"session\""),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    Box::new(s).close().await;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_error() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target_with("opsc-test/no-such-image:1", &[]);
    let expected = "image 'opsc-test/no-such-image:1' is not present on the engine; \
                    no registry can be assumed here — build or load it first";
    match exec.connect(&t, None).await {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(expected), "{msg}"),
        Err(other) => panic!("expected a Spawn error, got {other:?}"),
        Ok(_) => panic!("connected to a missing image"),
    }
    match exec.check(&t, None).await {
        Err(ExecError::Spawn(msg)) => {
            assert!(msg.contains(expected) && msg.contains("Docker "), "{msg}")
        }
        other => panic!("expected a Spawn error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_clear_errors() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    for (limits, needle) in [
        (vec![("memroy", json!("1g"))], "limits.memroy: unknown key"),
        (
            vec![("memory", json!("lots"))],
            "limits.memory: expected a size",
        ),
        (vec![("cpus", json!(-1))], "limits.cpus"),
        (vec![("network", json!("container:x"))], "limits.network"),
    ] {
        let t = target(&limits).await;
        match exec.connect(&t, None).await {
            Err(ExecError::Spawn(msg)) => {
                assert!(msg.contains(needle) && msg.contains(&t.name), "{msg}")
            }
            Err(other) => panic!("expected Spawn, got {other:?}"),
            Ok(_) => panic!("{limits:?} accepted"),
        }
        assert!(exec.check(&t, None).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_connect_error() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new().with_socket("/nonexistent/docker.sock");
    match exec.connect(&target(&[]).await, None).await {
        Err(ExecError::Connect(msg)) => assert!(msg.contains("/nonexistent/docker.sock"), "{msg}"),
        Err(other) => panic!("expected Connect, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// A loopback TCP port that forwards each connection to the local engine's
/// Unix socket: a stand-in for an engine that listens on TCP.
async fn tcp_to_engine_socket() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(DEFAULT_SOCKET).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_reached_at_unix_and_tcp_addresses() {
    let _g = TestGuard::new();
    let t = target(&[]).await;
    let (port, proxy) = tcp_to_engine_socket().await;
    let exec = DockerExecutor::new()
        .with_socket(format!("tcp://127.0.0.1:{port}"))
        .with_sweep_on_first_use(false);
    let probe = exec.check(&t, None).await.unwrap();
    assert!(probe.details["engine"].starts_with("Docker "), "{probe:?}");
    let s = session(&exec, &t).await;
    let (ctx, out) = sh(&s, "echo over tcp; echo err >&2").await;
    out.assert_success();
    assert_eq!(
        (out.stdout(), out.stderr()),
        ("over tcp\n".into(), "err\n".into())
    );
    assert_run_clean(&ctx).await;
    Box::new(s).close().await;
    proxy.abort();
    let unix = DockerExecutor::new()
        .with_socket(format!("unix://{DEFAULT_SOCKET}"))
        .with_sweep_on_first_use(false);
    unix.check(&t, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_programs_are_spawn_errors_naming_them() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[]).await;
    let s = session(&exec, &t).await;
    let name = unique("opsc-no-interpreter-");
    let cmd = Command::Script {
        interpreter: format!("{name} -u"),
        body: "print('hi')\n".into(),
    };
    let ctx = ctx_for(&t);
    match run(&s, &ctx, &cmd).await.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(&name), "{msg}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
    assert_run_clean(&ctx).await;
    let shell_path = format!("/nonexistent/{}", unique("sh-"));
    let other = DockerExecutor::new().with_shell(&shell_path);
    let s2 = session(&other, &t).await;
    match run(&s2, &ctx, &shell("true")).await.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(&shell_path), "{msg}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
    Box::new(s2).close().await;
    Box::new(s).close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_engine_image_and_limits() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let t = target(&[("memory", json!("128m"))]).await;
    let probe = exec.check(&t, None).await.unwrap();
    assert!(
        probe.os.contains("linux/amd64") || probe.os.contains("image on Docker"),
        "{probe:?}"
    );
    let d = &probe.details;
    assert!(d["engine"].starts_with("Docker "), "{d:?}");
    assert_eq!(d["image_present"], "true");
    assert_eq!(d["memory"], "128 MiB");
    assert_eq!(d["network"], "none");
    assert_eq!(d["user"], "65534:65534");
    assert_eq!(d["tmp"], "tmpfs");
    assert_eq!(d["tmpfs_size"], "64 MiB");
}

// ---------------------------------------------------------------------------
// Labels and the sweeper
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_carry_the_labels() {
    let _g = TestGuard::new();
    let exec = DockerExecutor::new();
    let s = Arc::new(session(&exec, &target(&[]).await).await);
    let ctx = StepContext::new(Target::local());
    let run_id = ctx.run_id.to_string();
    let task = {
        let s = s.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move { run(&*s, &ctx, &shell("sleep 3")).await })
    };
    let id = wait_for_running(&run_id).await;
    let c = engine().await.inspect_container(&id, None).await.unwrap();
    let labels = c.config.unwrap().labels.unwrap();
    let me = WorkerId::current();
    assert_eq!(labels[LABEL_MANAGED], "true");
    assert_eq!(labels[LABEL_RUN], run_id);
    assert_eq!(labels[LABEL_SESSION], s.id());
    assert_eq!(labels[LABEL_WORKER], format!("{}:{}", me.host, me.pid));
    assert_eq!(labels[LABEL_WORKER_START], me.start);
    let host = c.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
    task.await.unwrap().assert_success();
    assert_container_gone(&id).await;
}

/// Marks what a test creates behind the executor's back (planted
/// orphans, whose worker labels name other processes), so the last test
/// can tell this binary's objects from those of other processes.
const LABEL_TEST_BINARY: &str = "opsconductor-test.binary";

/// Plants a stopped container with these labels (and
/// [`LABEL_TEST_BINARY`]); returns its id.
async fn plant(mut labels: HashMap<String, String>) -> String {
    labels.insert(LABEL_TEST_BINARY.to_owned(), our_worker());
    let docker = engine().await;
    let name = unique("opsc-planted-");
    let config = ContainerCreateBody {
        image: Some(image().await),
        cmd: Some(vec!["true".into()]),
        labels: Some(labels),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    docker
        .create_container(Some(opts), config)
        .await
        .unwrap()
        .id
}

async fn exists(id: &str) -> bool {
    engine().await.inspect_container(id, None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_orphans_and_only_orphans() {
    let _g = TestGuard::new();
    let me = WorkerId::current();
    let labels = |worker: String, boot: &str, start: &str| {
        HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_WORKER.to_owned(), worker),
            (LABEL_WORKER_BOOT.to_owned(), boot.to_owned()),
            (LABEL_WORKER_START.to_owned(), start.to_owned()),
        ])
    };
    // A worker on this host that is gone: a pid above the kernel's maximum.
    let dead_labels = labels(format!("{}:4194305", me.host), &me.boot, "12345");
    let dead = plant(dead_labels.clone()).await;
    let dead_volume = unique("opsc-ws-planted-");
    engine()
        .await
        .create_volume(VolumeCreateRequest {
            name: Some(dead_volume.clone()),
            labels: Some(
                dead_labels
                    .into_iter()
                    .chain([(LABEL_TEST_BINARY.to_owned(), our_worker())])
                    .collect(),
            ),
            ..Default::default()
        })
        .await
        .unwrap();
    // This very process: alive, kept.
    let ours = plant(labels(
        format!("{}:{}", me.host, me.pid),
        &me.boot,
        &me.start,
    ))
    .await;
    // Another host, exited: removed only once older than the grace.
    let elsewhere = plant(labels("another-host:1".into(), "b", "1")).await;

    let exec = DockerExecutor::new().with_sweep_on_first_use(false);
    exec.sweep_orphans().await.unwrap();
    // (Another test's executor may sweep them first: check they are gone.)
    assert!(!exists(&dead).await, "a dead worker's container was kept");
    assert!(
        volumes_labelled(LABEL_WORKER, &format!("{}:4194305", me.host))
            .await
            .iter()
            .all(|v| *v != dead_volume),
        "a dead worker's volume was kept"
    );
    assert!(exists(&ours).await, "a live worker's container was swept");
    assert!(
        exists(&elsewhere).await,
        "another host's young container was swept"
    );

    let impatient = DockerExecutor::new()
        .with_sweep_on_first_use(false)
        .with_orphan_grace(Duration::ZERO);
    let report = impatient.sweep_orphans().await.unwrap();
    assert!(report.containers.contains(&elsewhere), "{report:?}");
    assert!(exists(&ours).await);

    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    engine()
        .await
        .remove_container(&ours, Some(rm))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_runs_on_first_use() {
    let _g = TestGuard::new();
    let me = WorkerId::current();
    let dead = plant(HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_WORKER.to_owned(), format!("{}:4194305", me.host)),
        (LABEL_WORKER_BOOT.to_owned(), me.boot.clone()),
    ]))
    .await;
    let exec = DockerExecutor::new();
    exec.check(&target(&[]).await, None).await.unwrap();
    assert!(!exists(&dead).await, "the first use sweeps");
}

// ---------------------------------------------------------------------------
// Last: nothing left behind
// ---------------------------------------------------------------------------

/// Runs after every other test of this binary (it waits for them) and
/// checks that no container or volume this process created is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_nothing_is_left_behind() {
    let give_up = Instant::now() + Duration::from_secs(900);
    let mut last_done = usize::MAX;
    let mut idle_since = Instant::now();
    loop {
        let done = DONE.load(Ordering::SeqCst);
        let live = LIVE.load(Ordering::SeqCst);
        if done >= OTHER_TESTS && live == 0 {
            break;
        }
        if done != last_done || live > 0 {
            last_done = done;
            idle_since = Instant::now();
        }
        // A filtered run (`cargo test -- some_test`): nothing ran for a while.
        if live == 0 && idle_since.elapsed() > Duration::from_secs(20) {
            break;
        }
        assert!(Instant::now() < give_up, "the other tests did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Removals still in flight (a dropped session's volume, a container
    // being killed) get a moment; whatever is still there then fails.
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let containers = ours(managed_containers().await);
        let volumes = ours(managed_volumes().await);
        if containers.is_empty() && volumes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "left behind by this test binary (worker {}): containers {containers:?}, volumes {volumes:?}",
            our_worker()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// This process as the executor writes it into `opsconductor.worker`.
fn our_worker() -> String {
    let me = WorkerId::current();
    format!("{}:{}", me.host, me.pid)
}

/// The names of the objects (from their labels) this test binary made:
/// by its executors (our worker label) or planted by a test (our
/// [`LABEL_TEST_BINARY`]), whatever worker the planted labels name.
fn ours(objects: Vec<(String, HashMap<String, String>)>) -> Vec<String> {
    let me = our_worker();
    objects
        .into_iter()
        .filter(|(_, labels)| {
            labels.get(LABEL_WORKER) == Some(&me) || labels.get(LABEL_TEST_BINARY) == Some(&me)
        })
        .map(|(name, _)| name)
        .collect()
}

/// Every container (all states) with `opsconductor.managed=true`, with its
/// labels.
async fn managed_containers() -> Vec<(String, HashMap<String, String>)> {
    containers_with(LABEL_MANAGED, "true")
        .await
        .into_iter()
        .map(|c| {
            let name = c
                .names
                .and_then(|n| n.first().cloned())
                .or(c.id)
                .unwrap_or_default();
            (name, c.labels.unwrap_or_default())
        })
        .collect()
}

/// Every volume with `opsconductor.managed=true`, with its labels.
async fn managed_volumes() -> Vec<(String, HashMap<String, String>)> {
    volumes_with(LABEL_MANAGED, "true")
        .await
        .into_iter()
        .map(|v| (v.name, v.labels))
        .collect()
}
