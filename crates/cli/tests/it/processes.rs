//! The CLI and real processes: killing whole process groups on timeout,
//! cancel and Ctrl-C, and streaming output while the command still runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::docker_support;

use std::io::{BufRead, BufReader, Read};

use common::{Env, PATIENCE, assert_no_process_with, children_with, finish, marker, wait_until};
use predicates::prelude::*;

#[test]
fn timeout_kills_the_whole_process_group() {
    let env = Env::new();
    let m = marker();
    let a = env
        .cmd(["exec", "--timeout", "1s", "--"])
        .arg(format!("sleep 30.{m} & sleep 30.{m}"))
        .assert()
        .code(124);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("timed_out"), "{err}");
    // Neither the background sleep nor the foreground one survives.
    assert_no_process_with(&m);
}

#[test]
fn output_is_streamed_while_the_command_runs() {
    let env = Env::new();
    let mut child = env
        .std_cmd(["exec", "--", "echo first; sleep 3; echo second"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "local | first\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line only arrived after the command had finished"
    );
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "local | second\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn runs_cancel_from_another_process() {
    let env = Env::new();
    let m = marker();
    let child = env.spawn(["exec", "--", &format!("sleep 30.{m}")]);
    let id = env.wait_for_running_run();
    assert!(
        wait_until(PATIENCE, || !children_with(&m).is_empty()),
        "the sleep never started"
    );

    env.cmd(["runs", "cancel", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("run {id}")));

    let (code, _out, err) = finish(child);
    assert_eq!(code, Some(130), "stderr: {err}");
    assert!(err.contains("cancelled"), "{err}");
    assert_no_process_with(&m);
    assert_eq!(env.runs()[0]["status"], "cancelled");

    // Cancelling it again says it had already ended.
    env.cmd(["runs", "cancel", &id])
        .assert()
        .success()
        .stdout(format!("run {id} had already ended (cancelled)\n"));
    // Its log says what happened.
    env.cmd(["runs", "logs", &id])
        .assert()
        .success()
        .stderr(predicate::str::contains("cancelled"));
}

/// Sends `signal` to a running `opsconductor exec -- sleep …` and expects
/// exit 130 with the sleep gone.
fn signal_cancels(signal: &str) {
    let env = Env::new();
    let m = marker();
    let child = env.spawn(["exec", "--", &format!("sleep 30.{m}")]);
    env.wait_for_running_run();
    assert!(
        wait_until(PATIENCE, || !children_with(&m).is_empty()),
        "the sleep never started"
    );
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, _out, err) = finish(child);
    assert_eq!(code, Some(130), "stderr: {err}");
    assert!(err.contains("cancelling the run"), "{err}");
    assert_no_process_with(&m);
    assert_eq!(env.runs()[0]["status"], "cancelled");
}

#[test]
fn ctrl_c_cancels_the_run() {
    signal_cancels("-INT");
}

#[test]
fn sigterm_cancels_the_run_too() {
    signal_cancels("-TERM");
}

#[test]
fn ctrl_c_during_a_job_run_without_follow() {
    let env = Env::new();
    let m = marker();
    env.apply_yaml(
        "slow.yaml",
        &format!("kind: Job\nname: slow\nsteps:\n  - exec: sleep 30.{m}\n  - exec: echo never\n"),
    );
    let child = env.spawn(["run", "slow"]);
    env.wait_for_running_run();
    assert!(wait_until(PATIENCE, || !children_with(&m).is_empty()));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let (code, _out, err) = finish(child);
    assert_eq!(code, Some(130), "stderr: {err}");
    assert_no_process_with(&m);
    let id = env.runs()[0]["id"].as_str().unwrap().to_string();
    let v = env.json(["runs", "show", &id]);
    assert_eq!(v["status"], "cancelled");
    // The second step never ran.
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["step"] == 0 || r["status"] != "succeeded"),
        "{v}"
    );
}

#[test]
fn many_processes_on_one_sqlite_file_never_see_it_busy() {
    // SQLite has one writer at a time: several worker processes and
    // submitters writing the same file at once must wait for each other
    // (busy timeout, BEGIN IMMEDIATE), never fail with "database is locked".
    let env = Env::new();
    env.apply_yaml(
        "chatty.yaml",
        "kind: Job\nname: chatty\nsteps:\n  - exec: for i in 1 2 3 4 5; do echo line-$i; done\n  - exec: echo done >&2\n",
    );
    let workers: Vec<_> = (0..3)
        .map(|_| env.spawn(["worker", "--concurrency", "4"]))
        .collect();
    let per = 15;
    let mut handles = Vec::new();
    for _ in 0..4 {
        let url = env.url.clone();
        let dir = env.path().to_path_buf();
        handles.push(std::thread::spawn(move || {
            for _ in 0..per {
                let out = std::process::Command::new(common::bin())
                    .current_dir(&dir)
                    .env_remove("OPSC_MASTER_KEY")
                    .args(["--database-url", &url, "--color", "never"])
                    .args(["run", "chatty", "--detach"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "submit failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let total = 4 * per;
    assert!(
        wait_until(std::time::Duration::from_secs(120), || {
            let runs = env.runs();
            runs.len() == total
                && runs
                    .iter()
                    .all(|r| r["status"] != "queued" && r["status"] != "running")
        }),
        "runs still open: {:?}",
        env.runs()
            .iter()
            .map(|r| r["status"].clone())
            .collect::<Vec<_>>()
    );
    let runs = env.runs();
    assert!(
        runs.iter().all(|r| r["status"] == "succeeded"),
        "{:?}",
        runs.iter()
            .map(|r| (r["status"].clone(), r["error"].clone()))
            .collect::<Vec<_>>()
    );
    for w in workers {
        terminate(&w);
        let (_, _, err) = finish(w);
        let lower = err.to_lowercase();
        assert!(
            !lower.contains("locked") && !lower.contains("busy"),
            "a worker saw the database busy:\n{err}"
        );
    }
}

/// Asks a child to stop as SIGTERM would (the worker drains and exits).
fn terminate(child: &std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Kills `opsconductor` with SIGKILL while its step runs a command with a
/// child and a grandchild (each writing its pid to a file), and asserts every
/// one of them is gone within 1 s of the worker's death.
fn steps_die_with_a_killed_worker(args: &[&str]) {
    let env = Env::new();
    let m = marker();
    let pids = env.path().join("pids");
    let step = format!(
        "sh -c 'sleep 30.{m} & echo $! >> {p}; sleep 30.{m}' & echo $! >> {p}; echo $$ >> {p}; sleep 30.{m}",
        p = pids.display()
    );
    let mut full: Vec<&str> = args.to_vec();
    full.push(&step);
    let mut child = env.spawn(full);
    assert!(
        wait_until(PATIENCE, || children_with(&m).len() >= 3),
        "the step's processes never started: {:?}",
        children_with(&m)
    );
    // The processes may be up before their pids are all written: wait for
    // three whole lines.
    let read_pids = || -> Vec<i32> {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n')?.trim().parse().ok())
            .collect()
    };
    assert!(
        wait_until(PATIENCE, || read_pids().len() >= 3),
        "the step never wrote its three pids: {:?}",
        std::fs::read_to_string(&pids)
    );
    let started = read_pids();
    assert_eq!(started.len(), 3, "{started:?}");

    child.kill().unwrap(); // SIGKILL
    let killed_at = std::time::Instant::now();
    child.wait().unwrap();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z ") && !s.contains(") X "))
            .unwrap_or(false)
    };
    let gone = wait_until(std::time::Duration::from_secs(1), || {
        children_with(&m).is_empty() && !started.iter().any(|p| alive(*p))
    });
    assert!(
        gone,
        "step processes outlived their worker by more than 1 s: {:?}",
        children_with(&m)
    );
    eprintln!(
        "step processes gone {:?} after SIGKILL",
        killed_at.elapsed()
    );
}

#[test]
fn steps_die_when_exec_is_killed_with_sigkill() {
    steps_die_with_a_killed_worker(&["exec", "--"]);
}

/// Containers (any state) labelled with `target`, by id.
fn containers_of(target: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=opsconductor.target={target}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes a test's containers whatever happened.
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        for id in containers_of(&self.0) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &id])
                .output();
        }
    }
}

/// Issue 12 §2, Docker: `kill -9` of a worker mid-step leaves its container
/// running (nothing on the host watches it; the engine does not know the
/// worker died). The orphan sweeper removes it the first time any later
/// worker process on the host uses the Docker executor: its labels name a
/// worker (host, pid, start time) that is gone.
#[test]
fn a_killed_workers_container_is_removed_by_the_next_workers_sweeper() {
    let image = docker_support::ensure_test_image().unwrap();
    let env = Env::new();
    let box_name = format!("box-{}", marker());
    let _cleanup = RemoveContainers(box_name.clone());
    env.apply_yaml(
        "box.yaml",
        &format!(
            "kind: Target\nname: {box_name}\nconnection:\n  type: docker\n  image: {image}\n---\n\
             kind: Job\nname: long\ntargets: {box_name}\nsteps:\n  - exec: sleep 300\n---\n\
             kind: Job\nname: short\ntargets: {box_name}\nsteps:\n  - exec: echo hi\n"
        ),
    );
    env.cmd(["run", "long", "--detach"]).assert().success();
    let mut first = env.spawn(["worker"]);
    assert!(
        wait_until(PATIENCE, || containers_of(&box_name).len() == 1),
        "the step's container never started"
    );
    let orphan = containers_of(&box_name).remove(0);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        containers_of(&box_name),
        vec![orphan.clone()],
        "the container outlives a killed worker until a sweep"
    );
    // Any later worker: its first Docker step sweeps first.
    let mut second = env.spawn(["worker"]);
    let swept_from = std::time::Instant::now();
    env.cmd(["run", "short", "--detach"]).assert().success();
    let gone = wait_until(PATIENCE, || !containers_of(&box_name).contains(&orphan));
    terminate(&second);
    let _ = second.wait();
    assert!(gone, "the orphan sweeper left {orphan}");
    eprintln!(
        "orphan removed {:?} after the next worker started",
        swept_from.elapsed()
    );
}
