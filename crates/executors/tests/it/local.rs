//! The local executor: the executor behaviour suite, plus what only the local
//! host can show (worker variables, spawn errors, daemons holding the pipes).

use std::sync::Arc;
use std::time::Duration;

use opsconductor_core::executor::{Command, ExecError, Executor, FileSpec, StepContext};
use opsconductor_core::model::{Connection, Target};
use opsconductor_executors::LocalExecutor;
use opsconductor_executors::behaviour::{self, run, unique};
use tokio::time::Instant;

async fn local() -> (Arc<dyn Executor>, Target) {
    (
        Arc::new(LocalExecutor::default().with_kill_grace(Duration::from_millis(500))),
        Target::local(),
    )
}

opsconductor_executors::executor_behaviour_suite!(local);

// Again with the default settings, through the closure form of the macro.
opsconductor_executors::executor_behaviour_suite!(behaviour_suite_defaults, || async {
    let exec: Arc<dyn Executor> = Arc::new(LocalExecutor::default());
    (exec, Target::local())
});

fn ctx() -> StepContext {
    StepContext::new(Target::local())
}

fn shell(line: &str) -> Command {
    Command::Shell(line.to_owned())
}

/// Set by the parent of `worker_opsc_variables_are_not_inherited` in the
/// copy of this test binary it starts.
const CHILD_FLAG: &str = "OPSC_BEHAVIOUR_CHILD";

#[tokio::test]
async fn worker_opsc_variables_are_not_inherited() {
    if std::env::var_os(CHILD_FLAG).is_some() {
        // In the child: this process has OPSC_* variables, like a worker.
        let session = LocalExecutor::default().session();
        let mut ctx = ctx();
        ctx.env.insert("OPSC_FROM_STEP".into(), "step".into());
        let out = run(&session, &ctx, &shell("env")).await;
        out.assert_success();
        println!("CHILD-ENV-BEGIN\n{}CHILD-ENV-END", out.stdout());
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(exe)
        .args([
            "local::worker_opsc_variables_are_not_inherited",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FLAG, "1")
        .env("OPSC_MASTER_KEY", "do-not-leak")
        .env("BEHAVIOUR_PLAIN", "kept")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let env = stdout
        .split("CHILD-ENV-BEGIN\n")
        .nth(1)
        .and_then(|rest| rest.split("CHILD-ENV-END").next())
        .unwrap_or_else(|| panic!("no env in the child's output: {stdout}"));
    assert!(env.lines().any(|l| l == "BEHAVIOUR_PLAIN=kept"), "{env}");
    assert!(
        env.lines().any(|l| l == "OPSC_FROM_STEP=step"),
        "step env is passed: {env}"
    );
    assert!(
        !env.contains("do-not-leak"),
        "the worker's OPSC_MASTER_KEY leaked: {env}"
    );
    assert!(!env.contains(CHILD_FLAG), "{env}");
}

#[tokio::test]
async fn missing_workdir_is_a_spawn_error_naming_it() {
    let session = LocalExecutor::default().session();
    let dir = format!("/tmp/{}", unique("opsc-no-dir-"));
    let mut ctx = ctx();
    ctx.workdir = Some(dir.clone());
    let out = run(&session, &ctx, &shell("true")).await;
    match out.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(&dir), "{msg}"),
        other => panic!("expected a Spawn error, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_interpreter_is_a_spawn_error_naming_it() {
    let session = LocalExecutor::default().session();
    let name = unique("opsc-no-interpreter-");
    let cmd = Command::Script {
        interpreter: format!("{name} -u"),
        body: "print('hi')\n".into(),
    };
    let out = run(&session, &ctx(), &cmd).await;
    match out.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(&name), "{msg}"),
        other => panic!("expected a Spawn error, got {other:?}"),
    }
    let cmd = Command::Script {
        interpreter: "  ".into(),
        body: "true".into(),
    };
    let out = run(&session, &ctx(), &cmd).await;
    assert!(
        matches!(out.result, Err(ExecError::Spawn(_))),
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn missing_shell_is_a_spawn_error_naming_it() {
    let shell_path = format!("/nonexistent/{}", unique("sh-"));
    let session = LocalExecutor::default().with_shell(&shell_path).session();
    let out = run(&session, &ctx(), &shell("true")).await;
    match out.result {
        Err(ExecError::Spawn(msg)) => assert!(msg.contains(&shell_path), "{msg}"),
        other => panic!("expected a Spawn error, got {other:?}"),
    }
}

#[tokio::test]
async fn interpreter_arguments_are_split_and_script_dir_removed() {
    let session = LocalExecutor::default().session();
    let cmd = Command::Script {
        interpreter: "sh -e".into(),
        body: "echo \"$0\"\nfalse\necho unreachable\n".into(),
    };
    let out = run(&session, &ctx(), &cmd).await;
    assert_eq!(out.status().code, Some(1), "`sh -e` stops at `false`");
    let path = out.stdout();
    let path = std::path::Path::new(path.trim_end());
    assert!(path.is_absolute(), "{path:?}");
    let dir = path.parent().expect("script dir");
    assert!(
        !dir.exists(),
        "the script directory {dir:?} must be removed"
    );
}

#[tokio::test]
async fn script_file_is_removed_on_timeout() {
    let session = LocalExecutor::default()
        .with_kill_grace(Duration::from_millis(200))
        .session();
    let mut ctx = ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_millis(500));
    let cmd = Command::Script {
        interpreter: "sh".into(),
        body: "echo \"$0\"\nsleep 30\n".into(),
    };
    let out = run(&session, &ctx, &cmd).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let path = out.stdout();
    let path = std::path::Path::new(path.trim_end());
    assert!(path.is_absolute(), "{path:?}");
    assert!(
        !path.exists(),
        "the script {path:?} must be removed after a timeout"
    );
}

#[tokio::test]
async fn a_daemon_holding_stdout_does_not_hang_exec() {
    let session = LocalExecutor::default().session();
    let marker = unique("opsc-daemon-");
    // The daemon keeps stdout and stderr open for 3 s after the shell exits.
    let line = format!("sh -c 'sleep 3; echo {marker}' & echo done");
    let out = run(&session, &ctx(), &shell(&line)).await;
    out.assert_success();
    assert_eq!(out.stdout(), "done\n");
    let took = out.returned - out.started;
    assert!(
        took < Duration::from_secs(2),
        "exec waited {took:?} for a daemon"
    );
    // A normally exiting command's daemons are left alone.
    let fx = behaviour::Fixture::from(local().await);
    let alive = behaviour::processes_with(&fx, &session, &marker).await;
    assert!(!alive.is_empty(), "the daemon should still run");
}

#[tokio::test]
async fn timeout_returns_as_soon_as_the_group_is_gone() {
    // A long grace, but everything dies on SIGTERM: exec must not sit out the
    // grace (also not for members that are zombies waiting for init).
    let session = LocalExecutor::default()
        .with_kill_grace(Duration::from_secs(10))
        .session();
    let mut ctx = ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_millis(500));
    let out = run(&session, &ctx, &shell("sleep 30 & sh -c 'sleep 30; true'")).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let took = out.returned - out.started;
    assert!(took < Duration::from_secs(4), "stopping took {took:?}");
}

#[tokio::test]
async fn term_ignoring_descendants_are_killed_after_the_grace() {
    let session = LocalExecutor::default()
        .with_kill_grace(Duration::from_millis(300))
        .session();
    let marker = unique("opsc-stubborn-");
    let mut ctx = ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_millis(500));
    let line = format!("sh -c 'trap \"\" TERM; sleep 30; echo {marker}' & echo started; wait");
    let out = run(&session, &ctx, &shell(&line)).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    let fx = behaviour::Fixture::from(local().await);
    behaviour::assert_no_survivors(&fx, &session, &marker).await;
}

#[tokio::test]
async fn already_cancelled_or_expired_runs_nothing() {
    let session = LocalExecutor::default().session();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ran");
    let line = format!("touch '{}'", file.display());

    let cancelled = ctx();
    cancelled.cancel.cancel();
    let out = run(&session, &cancelled, &shell(&line)).await;
    assert!(
        matches!(out.result, Err(ExecError::Cancelled)),
        "{:?}",
        out.result
    );

    let mut expired = ctx();
    expired.deadline = Some(Instant::now());
    let out = run(&session, &expired, &shell(&line)).await;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "{:?}",
        out.result
    );
    assert!(!file.exists());
}

#[tokio::test]
async fn copy_rejects_relative_destinations() {
    let session = LocalExecutor::default().session();
    let file = FileSpec {
        dest: "relative/file".into(),
        content: b"x".to_vec(),
        mode: 0o644,
    };
    use opsconductor_core::executor::Session;
    match session.copy(&ctx(), &file).await {
        Err(ExecError::Io(msg)) => assert!(msg.contains("relative/file"), "{msg}"),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[tokio::test]
async fn non_local_targets_are_refused() {
    let exec = LocalExecutor::default();
    let mut target = Target::local();
    target.name = "web1".into();
    target.connection = Connection::Ssh {
        host: "web1".into(),
        port: 22,
        user: "ops".into(),
        host_key: None,
        known_hosts: None,
    };
    match exec.connect(&target, None).await {
        Err(ExecError::Unsupported(msg)) => {
            assert!(msg.contains("web1") && msg.contains("ssh"), "{msg}")
        }
        Err(other) => panic!("expected Unsupported, got {other:?}"),
        Ok(_) => panic!("expected Unsupported, got a session"),
    }
}

#[tokio::test]
async fn check_reports_host_details() {
    let probe = LocalExecutor::default()
        .check(&Target::local(), None)
        .await
        .expect("check");
    assert!(!probe.os.is_empty());
    assert_eq!(
        probe.details.get("shell").map(String::as_str),
        Some("/bin/sh")
    );
    assert!(probe.details.contains_key("hostname"), "{probe:?}");
}

/// A watched step (a lease margin, as the engine always sets) lives as long
/// as this process sends keepalives to the reaper: three times the margin
/// here; the reaper's ticker does not kill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_step_outlives_its_lease_margin_while_keepalives_come() {
    let session = LocalExecutor::default().session();
    let mut ctx = ctx();
    ctx.lease_margin = Some(Duration::from_millis(800));
    let out = run(&session, &ctx, &shell("sleep 2.5; echo survived")).await;
    out.assert_success();
    assert_eq!(out.stdout(), "survived\n");
}
