//! Jobs that call jobs through the real binary: the release workflow of
//! `examples/workflows/release.yaml` (what docs/job-format.md shows), and a
//! parent rescued after `kill -9` of its worker process finding the child
//! its dead worker started instead of starting a second one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use opsconductor::store::RunFilter;
use opsconductor::{Actor, RunStatus, SubmitRequest};
use opsconductor_store::testing::pg::fresh_database;
use serde_json::Value;

fn release_example() -> std::path::PathBuf {
    examples().join("../workflows/release.yaml")
}

fn show(env: &Env, id: &str) -> Value {
    env.json(["runs", "show", id])
}

fn results_of(v: &Value, step: u64) -> &Value {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["step"] == step)
        .unwrap_or_else(|| panic!("no result for step {step}: {v:#}"))
}

#[test]
fn release_workflow_example_runs_its_child_jobs() {
    let env = Env::new();
    env.cmd(["apply", "-f"])
        .arg(release_example())
        .assert()
        .success();
    env.cmd(["run", "release", "-p", "version=1.4.2"])
        .assert()
        .success();

    let runs = env.runs();
    let by_job = |job: &str| -> Vec<&Value> { runs.iter().filter(|r| r["job"] == job).collect() };
    assert_eq!(
        runs.len(),
        4,
        "the release and its three children: {runs:#?}"
    );
    for job in ["release", "backup", "deploy", "smoke-test"] {
        assert_eq!(by_job(job).len(), 1, "{job}");
        assert_eq!(by_job(job)[0]["status"], "succeeded", "{job}");
    }
    let release = by_job("release")[0]["id"].as_str().unwrap().to_string();
    let a = env.cmd(["runs", "logs", &release]).assert().success();
    let logs = stdout_of(&a);
    assert!(logs.contains("released 1.4.2"), "{logs}");
    let detail = show(&env, &release);
    // Each job step names its child; each child names its parent.
    for (step, job) in [(0, "backup"), (1, "deploy"), (2, "smoke-test")] {
        let r = results_of(&detail, step);
        let child = r["children"][0].as_str().unwrap();
        assert_eq!(child, by_job(job)[0]["id"].as_str().unwrap());
        let c = show(&env, child);
        assert_eq!(c["parent"]["run"], release.as_str());
        assert_eq!(c["parent"]["step"], step);
    }
    // The deploy child's outputs are its step's, used by the smoke test.
    assert_eq!(results_of(&detail, 1)["outputs"]["version"], "1.4.2");
    assert_eq!(results_of(&detail, 1)["outputs"]["healthy_after_s"], 3);
    let smoke = show(&env, by_job("smoke-test")[0]["id"].as_str().unwrap());
    assert_eq!(smoke["params"]["expect"], "1.4.2");

    // `runs show` for people lists the child runs and the outputs.
    let a = env.cmd(["runs", "show", &release]).assert().success();
    let text = stdout_of(&a);
    assert!(
        text.contains("Child runs:") && text.contains("Outputs:"),
        "{text}"
    );
    assert!(text.contains("version = 1.4.2"), "{text}");

    // A false condition leaves out the backup: the step is recorded `skipped`
    // with the condition as reason, and no backup child is started.
    env.cmd([
        "run",
        "release",
        "-p",
        "version=1.4.3",
        "-p",
        "skip_backup=true",
    ])
    .assert()
    .success();
    let runs = env.runs();
    assert_eq!(runs.iter().filter(|r| r["job"] == "backup").count(), 1);
    let second = runs
        .iter()
        .find(|r| r["job"] == "release" && r["id"] != release.as_str());
    let detail = show(&env, second.unwrap()["id"].as_str().unwrap());
    let skipped = results_of(&detail, 0);
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["error"]
            .as_str()
            .unwrap()
            .contains("not params.skip_backup"),
        "{skipped:#}"
    );
}

const KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A worker process on the PostgreSQL database `url`.
fn worker(env: &Env, url: &str) -> Child {
    std::process::Command::new(bin())
        .current_dir(env.path())
        .env("OPSC_MASTER_KEY", KEY)
        .args(["--database-url", url, "--color", "never", "worker"])
        .args(["--concurrency", "2", "--lease", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_parent_rescued_after_kill_9_finds_its_child_and_starts_no_second_one() {
    let env = Env::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(fresh_database());
    let marks = env.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let m = marks.display();
    let oc = rt.block_on(async {
        let store = opsconductor::open_store(&url).await.unwrap();
        let key = opsconductor::secrets::KeyBytes::from_base64(KEY, "k").unwrap();
        let ring = opsconductor::secrets::Keyring::from_keys(
            [(1, key)],
            opsconductor::secrets::KeySource::Env,
        )
        .unwrap();
        opsconductor::Conductor::builder()
            .store_arc(store)
            .keyring(ring)
            .build()
            .await
            .unwrap()
    });
    let me = Actor::new("t");
    let parent = rt.block_on(async {
        let batch = opsconductor::spec::parse_str(
            &format!(
                r#"
kind: Job
name: slow-child
steps:
  - name: work
    idempotent: true
    exec: echo x >> {m}/child-$OPSC_RUN_ID; sleep 3
---
kind: Job
name: workflow
steps:
  - name: call
    job: slow-child
  - name: after
    exec: echo after >> {m}/after
"#
            ),
            "flow.yaml",
            None,
        )
        .unwrap();
        oc.apply(&batch, &me).await.unwrap();
        oc.submit(SubmitRequest::new("workflow"), &me)
            .await
            .unwrap()
    });
    let children = |oc: &opsconductor::Conductor| {
        rt.block_on(oc.runs(
            &RunFilter {
                job: Some("slow-child".into()),
                limit: 100,
                ..Default::default()
            },
            &me,
        ))
        .unwrap()
    };
    let mut w = worker(&env, &url);
    // Kill the worker while the child's step runs.
    let start = Instant::now();
    loop {
        let started = std::fs::read_dir(&marks).unwrap().count() > 0;
        if started && children(&oc).iter().any(|r| r.status == RunStatus::Running) {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the child never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    w.kill().unwrap(); // SIGKILL
    w.wait().unwrap();
    let mut w2 = worker(&env, &url);
    let done = rt.block_on(async {
        tokio::time::timeout(PATIENCE, oc.wait(parent.id, &me))
            .await
            .expect("the rescued parent ends")
            .unwrap()
    });
    let _ = w2.kill();
    let _ = w2.wait();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert!(
        done.attempt >= 2,
        "the parent was rescued (attempt {})",
        done.attempt
    );
    let kids = children(&oc);
    assert_eq!(kids.len(), 1, "exactly one child run: {kids:#?}");
    assert_eq!(kids[0].status, RunStatus::Succeeded);
    assert!(kids[0].attempt >= 2, "the child was rescued too");
    let d = rt.block_on(oc.run(parent.id, &me)).unwrap();
    let call = d.results.iter().find(|r| r.step == 0).unwrap();
    assert_eq!(call.children, vec![kids[0].id]);
    // The idempotent child step ran again after the kill; `after` ran once.
    let lines = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap().lines().count();
    assert!(lines(marks.join(format!("child-{}", kids[0].id))) >= 2);
    assert_eq!(lines(marks.join("after")), 1);
}
