//! Rollouts end to end (issue 14, part A): strategies, batches, failure
//! thresholds, retries, `on_failure`/`finally`, dry runs and rescue — with
//! the real SQLite store and real processes (local and, for a rolling
//! restart, real OpenSSH servers). Step order is read from timestamps the
//! steps write themselves.

use std::time::Duration;

use opsconductor::store::Claim;
use opsconductor::{
    Actor, Conductor, Config, RunDetail, RunId, RunStatus, StepResult, StepStatus, Stream,
    SubmitRequest,
};
use serde_json::json;
use tempfile::TempDir;

#[path = "../../crates/executors/tests/it/support/sshd.rs"]
mod sshd;

struct Env {
    oc: Conductor,
    store: std::sync::Arc<dyn opsconductor::store::Store>,
    dir: TempDir,
}

fn me() -> Actor {
    Actor::new("tester")
}

async fn engine() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let config = Config {
        cancel_poll: Duration::from_millis(100),
        follow_poll: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        ..Config::default()
    };
    let oc = opsconductor::builder(&url)
        .await
        .unwrap()
        .config(config)
        .build()
        .await
        .unwrap();
    let store = opsconductor::open_store(&url).await.unwrap();
    Env { oc, store, dir }
}

/// `n` local targets named node-1 … node-N.
fn nodes(n: usize) -> String {
    (1..=n)
        .map(|i| format!("kind: Target\nname: node-{i}\nconnection: {{type: local}}\n---\n"))
        .collect()
}

impl Env {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn apply(&self, yaml: &str) {
        let batch = opsconductor::spec::parse_str(yaml, "test.yaml", None).unwrap();
        self.oc.apply(&batch, &me()).await.unwrap();
    }

    async fn run(&self, job: &str) -> RunDetail {
        let run = self
            .oc
            .submit(SubmitRequest::new(job), &me())
            .await
            .unwrap();
        let done = self.oc.execute(run.id).await.unwrap();
        self.oc.run(done.id, &me()).await.unwrap()
    }

    async fn system_output(&self, id: RunId) -> String {
        use futures::StreamExt;
        let mut s = self.oc.logs(id, 0, &me()).await.unwrap();
        let mut out = String::new();
        while let Some(c) = s.next().await {
            let c = c.unwrap();
            if c.stream == Stream::System && c.target.is_none() {
                out.push_str(&String::from_utf8_lossy(&c.data));
            }
        }
        out
    }

    /// The `(target, step)` lines the steps appended to `events`, in order.
    fn events(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.path("events")).unwrap_or_default();
        let mut rows: Vec<(u128, String, String)> = text
            .lines()
            .map(|l| {
                let mut p = l.split_whitespace();
                let t = p.next().unwrap().parse().unwrap();
                (t, p.next().unwrap().into(), p.next().unwrap().into())
            })
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, a, b)| (a, b)).collect()
    }
}

/// A step line that appends "TIME TARGET WHAT" to the events file, then sleeps a bit.
fn note(env: &Env, what: &str) -> String {
    format!(
        "echo \"$(date +%s%N) {{{{ target.name }}}} {what}\" >> {} && sleep 0.05",
        env.path("events")
    )
}

fn result(d: &RunDetail, step: u32, target: &str) -> StepResult {
    d.results
        .iter()
        .find(|r| r.step == step && r.target == target)
        .cloned()
        .unwrap_or_else(|| panic!("no result for step {step} on {target}: {:#?}", d.results))
}

fn rolling_restart(env: &Env, strategy: &str, restart: &str) -> String {
    format!(
        r#"
kind: Job
name: restart
targets: node-*
concurrency: 1
strategy: {strategy}
steps:
  - name: drain
    exec: {drain}
  - name: restart
    exec: {restart}
  - name: undrain
    exec: {undrain}
on_failure:
  - name: rollback
    exec: {rollback}
finally:
  - name: always-undrain
    exec: {finally}
"#,
        drain = serde_json::to_string(&note(env, "drain")).unwrap(),
        undrain = serde_json::to_string(&note(env, "undrain")).unwrap(),
        rollback = serde_json::to_string(&note(
            env,
            "rollback-after-{{ failure.step }}-{{ failure.exit_code }}"
        ))
        .unwrap(),
        finally = serde_json::to_string(&note(env, "finally")).unwrap(),
    )
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_finishes_each_node_before_draining_the_next() {
    let env = engine().await;
    let restart = serde_json::to_string(&note(&env, "restart")).unwrap();
    env.apply(&format!(
        "{}{}",
        nodes(3),
        rolling_restart(&env, "rolling", &restart)
    ))
    .await;
    let d = env.run("restart").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let mut want = Vec::new();
    for n in ["node-1", "node-2", "node-3"] {
        for s in ["drain", "restart", "undrain"] {
            want.push((n, s));
        }
    }
    // `finally` runs after the rollout, on every node that started.
    let ev = env.events();
    assert_eq!(ev[..9], pairs(&want)[..], "{ev:?}");
    let finals: Vec<_> = ev[9..]
        .iter()
        .map(|(t, s)| (t.as_str(), s.as_str()))
        .collect();
    assert_eq!(finals.len(), 3, "{ev:?}");
    assert!(finals.iter().all(|(_, s)| *s == "finally"), "{ev:?}");
    let sys = env.system_output(d.run.id).await;
    assert!(sys.contains("batch 1/3 · 1 ok · 0 failed"), "{sys}");
    assert!(sys.contains("batch 3/3 · 1 ok · 0 failed"), "{sys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_strategy_stays_step_major() {
    let env = engine().await;
    let restart = serde_json::to_string(&note(&env, "restart")).unwrap();
    env.apply(&format!(
        "{}{}",
        nodes(3),
        rolling_restart(&env, "parallel", &restart)
    ))
    .await;
    let d = env.run("restart").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let steps: Vec<String> = env.events().into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        steps[..9],
        [
            "drain", "drain", "drain", "restart", "restart", "restart", "undrain", "undrain",
            "undrain"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_restart_stops_the_rollout_rolls_back_and_undrains() {
    let env = engine().await;
    // The restart fails on node-1 with exit code 3.
    let restart = serde_json::to_string(&format!(
        "{} && test {{{{ target.name }}}} != node-1 || exit 3",
        note(&env, "restart")
    ))
    .unwrap();
    env.apply(&format!(
        "{}{}",
        nodes(3),
        rolling_restart(&env, "rolling", &restart)
    ))
    .await;
    let d = env.run("restart").await;
    assert_eq!(d.run.status, RunStatus::Failed);
    let error = d.run.error.clone().unwrap();
    assert!(
        error.starts_with("stopped after 1 failed target (max_failures 0)")
            && error.contains("step 'restart' on node-1"),
        "{error}"
    );
    assert_eq!(
        env.events(),
        pairs(&[
            ("node-1", "drain"),
            ("node-1", "restart"),
            ("node-1", "rollback-after-restart-3"),
            ("node-1", "finally"),
        ]),
        "node-2 and node-3 are never touched"
    );
    assert_eq!(result(&d, 1, "node-1").exit_code, Some(3));
    assert_eq!(result(&d, 2, "node-1").status, StepStatus::Skipped);
    for n in ["node-2", "node-3"] {
        for s in 0..3 {
            assert_eq!(result(&d, s, n).status, StepStatus::Skipped, "{n} step {s}");
        }
        assert!(
            d.results.iter().all(|r| r.target != n || r.step < 3),
            "no cleanup on {n}"
        );
    }
    assert_eq!(
        result(&d, 3, "node-1").status,
        StepStatus::Succeeded,
        "rollback"
    );
    assert_eq!(
        result(&d, 4, "node-1").status,
        StepStatus::Succeeded,
        "finally"
    );
    let sys = env.system_output(d.run.id).await;
    assert!(
        sys.contains("batch 1/3 · 0 ok · 1 failed · stopping: max_failures 0"),
        "{sys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_batches_widen_and_each_batch_ends_before_the_next() {
    let env = engine().await;
    env.apply(&format!(
        "{}kind: Job\nname: canary\ntargets: node-*\nstrategy: rolling\nbatch: [1, 2]\nconcurrency: 5\nsteps:\n  - exec: {}\n  - exec: {}\n",
        nodes(5),
        serde_json::to_string(&note(&env, "a")).unwrap(),
        serde_json::to_string(&note(&env, "b")).unwrap(),
    ))
    .await;
    let d = env.run("canary").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let ev = env.events();
    let pos = |t: &str, s: &str| ev.iter().position(|(a, b)| a == t && b == s).unwrap();
    // Batches {node-1}, {node-2, node-3}, {node-4, node-5} (the last size repeats).
    for (earlier, later) in [
        (&["node-1"][..], &["node-2", "node-3"][..]),
        (&["node-2", "node-3"][..], &["node-4", "node-5"][..]),
    ] {
        for e in earlier {
            for l in later {
                assert!(
                    pos(e, "b") < pos(l, "a"),
                    "{e} ends before {l} starts: {ev:?}"
                );
            }
        }
    }
    let sys = env.system_output(d.run.id).await;
    assert!(sys.contains("batch 2/3 · 2 ok · 0 failed"), "{sys}");
    let plan = env
        .oc
        .plan(SubmitRequest::new("canary"), &me())
        .await
        .unwrap();
    assert_eq!(
        plan.batches,
        vec![
            vec!["node-1"],
            vec!["node-2", "node-3"],
            vec!["node-4", "node-5"]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_failures_stops_exactly_past_the_count_or_percentage() {
    for limit in ["1", "20%"] {
        let env = engine().await;
        // node-2 and node-4 fail; one failure of five (20%) is tolerated.
        let step = format!(
            "{} && case {{{{ target.name }}}} in node-2|node-4) exit 1;; esac",
            note(&env, "step")
        );
        env.apply(&format!(
            "{}kind: Job\nname: j\ntargets: node-*\nstrategy: rolling\nmax_failures: {limit}\nsteps:\n  - exec: {}\n",
            nodes(5),
            serde_json::to_string(&step).unwrap()
        ))
        .await;
        let d = env.run("j").await;
        assert_eq!(d.run.status, RunStatus::Failed, "{limit}");
        let touched: Vec<String> = env.events().into_iter().map(|(t, _)| t).collect();
        assert_eq!(touched, ["node-1", "node-2", "node-3", "node-4"], "{limit}");
        assert_eq!(
            result(&d, 0, "node-5").status,
            StepStatus::Skipped,
            "{limit}"
        );
        let e = d.run.error.unwrap();
        assert!(
            e.starts_with(&format!(
                "stopped after 2 failed targets (max_failures {limit})"
            )),
            "{e}"
        );
    }
    // Parallel without max_failures keeps going on every target.
    let env = engine().await;
    env.apply(&format!(
        "{}kind: Job\nname: p\ntargets: node-*\nsteps:\n  - exec: test {{{{ target.name }}}} != node-1\n  - exec: {}\n",
        nodes(3),
        serde_json::to_string(&note(&env, "second")).unwrap()
    ))
    .await;
    let d = env.run("p").await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(env.events().len(), 2, "node-2 and node-3 went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_back_off_and_record_every_try() {
    let env = engine().await;
    let count = env.path("count");
    // Fails twice (exit 75), then succeeds.
    let flaky = format!(
        "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; echo try $n; test $n -ge 3 || exit 75"
    );
    env.apply(&format!(
        "kind: Job\nname: flaky\nsteps:\n  - exec: {}\n    retry: {{attempts: 4, delay: 300ms, backoff: exponential, on: [exit_code: [75]]}}\n",
        serde_json::to_string(&flaky).unwrap()
    ))
    .await;
    let d = env.run("flaky").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let r = result(&d, 0, "local");
    assert_eq!(r.try_no, 3);
    assert_eq!(r.tries.len(), 2);
    assert!(
        r.tries
            .iter()
            .all(|t| t.exit_code == Some(75) && t.status == StepStatus::Failed)
    );
    let gap1 = (r.tries[1].started_at - r.tries[0].finished_at)
        .to_std()
        .unwrap();
    let gap2 = (r.started_at - r.tries[1].finished_at).to_std().unwrap();
    println!("backoff observed: {gap1:?} then {gap2:?} (delays 300ms, 600ms)");
    assert!(
        gap1 >= Duration::from_millis(300) && gap1 < Duration::from_millis(1300),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(600) && gap2 < Duration::from_millis(1600),
        "{gap2:?}"
    );
    // Each try has its own output section.
    use futures::StreamExt;
    let mut s = env.oc.logs(d.run.id, 0, &me()).await.unwrap();
    let mut by_try = std::collections::BTreeMap::<u32, String>::new();
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        if c.stream == Stream::Stdout {
            by_try
                .entry(c.try_no)
                .or_default()
                .push_str(&String::from_utf8_lossy(&c.data));
        }
    }
    assert_eq!(by_try.get(&1).map(String::as_str), Some("try 1\n"));
    assert_eq!(by_try.get(&2).map(String::as_str), Some("try 2\n"));
    assert_eq!(by_try.get(&3).map(String::as_str), Some("try 3\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jittered_delays_stay_between_half_and_the_whole_delay() {
    let env = engine().await;
    env.apply(
        "kind: Job\nname: j\nsteps:\n  - exec: exit 1\n    retry: {attempts: 5, delay: 400ms, backoff: fixed, jitter: true}\n",
    )
    .await;
    let d = env.run("j").await;
    assert_eq!(d.run.status, RunStatus::Failed);
    let r = result(&d, 0, "local");
    assert_eq!(r.try_no, 5);
    let mut starts: Vec<_> = r
        .tries
        .iter()
        .map(|t| (t.started_at, t.finished_at))
        .collect();
    starts.push((r.started_at, r.finished_at.unwrap()));
    let gaps: Vec<Duration> = starts
        .windows(2)
        .map(|w| (w[1].0 - w[0].1).to_std().unwrap())
        .collect();
    println!("jittered gaps (400ms, jitter): {gaps:?}");
    for g in gaps {
        assert!(
            g >= Duration::from_millis(200) && g < Duration::from_millis(1400),
            "{g:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_listed_exit_codes_are_retried() {
    let env = engine().await;
    env.apply(
        "kind: Job\nname: j\nsteps:\n  - exec: exit 2\n    retry: {attempts: 3, delay: 10ms, on: [exit_code: [75], timeout]}\n  - exec: echo never\n",
    )
    .await;
    let d = env.run("j").await;
    assert_eq!(d.run.status, RunStatus::Failed);
    let r = result(&d, 0, "local");
    assert_eq!((r.try_no, r.tries.len(), r.exit_code), (1, 0, Some(2)));
    // The job's default retries idempotent steps only (plus connection failures).
    env.apply("kind: Job\nname: k\nretry: {attempts: 3, delay: 10ms}\nsteps:\n  - exec: exit 4\n")
        .await;
    let d = env.run("k").await;
    assert_eq!(
        result(&d, 0, "local").try_no,
        1,
        "not idempotent: not retried"
    );
    env.apply(
        "kind: Job\nname: k\nretry: {attempts: 3, delay: 10ms}\nsteps:\n  - exec: exit 4\n    idempotent: true\n",
    )
    .await;
    let d = env.run("k").await;
    assert_eq!(result(&d, 0, "local").try_no, 3, "idempotent: retried");
}

fn cleanup_job(env: &Env, extra: &str) -> String {
    format!(
        "kind: Job\nname: c\n{extra}steps:\n  - name: work\n    exec: sleep 30\non_failure:\n  - exec: {}\nfinally:\n  - exec: {}\n",
        serde_json::to_string(&note(env, "rollback-{{ failure.status }}")).unwrap(),
        serde_json::to_string(&note(env, "finally-{{ failure.step }}")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_steps_run_after_cancel_and_after_the_run_timeout() {
    let env = engine().await;
    env.apply(&cleanup_job(&env, "")).await;
    let run = env.oc.submit(SubmitRequest::new("c"), &me()).await.unwrap();
    let oc = env.oc.clone();
    let exec = tokio::spawn(async move { oc.execute(run.id).await });
    for _ in 0..100 {
        let d = env.oc.run(run.id, &me()).await.unwrap();
        if d.results.iter().any(|r| r.status == StepStatus::Running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.oc.cancel(run.id, &me()).await.unwrap();
    let done = exec.await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(
        env.events(),
        pairs(&[("local", "rollback-cancelled"), ("local", "finally-work")])
    );

    let env = engine().await;
    env.apply(&cleanup_job(&env, "timeout: 1s\n")).await;
    let d = env.run("c").await;
    assert_eq!(d.run.status, RunStatus::TimedOut, "{:?}", d.run.error);
    assert_eq!(
        env.events(),
        pairs(&[("local", "rollback-timed_out"), ("local", "finally-work")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dry_run_shows_the_plan_and_runs_nothing() {
    let env = engine().await;
    env.apply(&format!(
        "{}kind: Job\nname: deploy\ntargets: node-*\nstrategy: rolling\nbatch: [1, 50%]\npause: 2s\nsecrets: []\nparams:\n  type: object\n  properties: {{version: {{type: string}}}}\nsteps:\n  - name: install\n    exec: echo install {{{{ params.version }}}} > {}\n    retry: {{attempts: 2}}\nfinally:\n  - name: report\n    exec: echo done {{{{ failure.step }}}}\n",
        nodes(3),
        env.path("touched")
    ))
    .await;
    let plan = env
        .oc
        .plan(
            SubmitRequest::new("deploy").params(json!({"version": "1.2; rm -rf /"})),
            &me(),
        )
        .await
        .unwrap();
    assert_eq!(plan.batches, vec![vec!["node-1"], vec!["node-2", "node-3"]]);
    assert_eq!(plan.pause.as_deref(), Some("2s"));
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[0].retry.as_ref().unwrap().attempts, 2);
    let cmd = &plan.targets[1].commands[0].command;
    assert!(
        cmd.contains("install '1.2; rm -rf /'"),
        "quoted as it would run: {cmd}"
    );
    assert_eq!(plan.targets[2].batch, 2);
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(v["strategy"], "rolling");
    assert_eq!(v["max_failures"], 0);
    // Nothing ran, nothing was queued.
    assert!(!std::path::Path::new(&env.path("touched")).exists());
    let runs = env
        .oc
        .runs(&opsconductor::RunFilter::default(), &me())
        .await
        .unwrap();
    assert!(runs.is_empty());
    // A bad parameter is the same error as at submit.
    let e = env
        .oc
        .plan(
            SubmitRequest::new("deploy").params(json!({"version": 3})),
            &me(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), opsconductor::ErrorKind::Validation, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rescued_rolling_run_resumes_at_its_batch_without_rerunning_done_work() {
    let env = engine().await;
    env.apply(&format!(
        "{}kind: Job\nname: roll\ntargets: node-*\nstrategy: rolling\nsteps:\n  - name: a\n    exec: {}\n  - name: b\n    exec: {}\n",
        nodes(3),
        serde_json::to_string(&note(&env, "a")).unwrap(),
        serde_json::to_string(&note(&env, "b")).unwrap(),
    ))
    .await;
    let run = env
        .oc
        .submit(SubmitRequest::new("roll"), &me())
        .await
        .unwrap();
    // A worker claims it, finishes node-1, finishes step a on node-2, then dies.
    let claim = Claim {
        worker: "dead-host:1".into(),
        lease: Duration::from_millis(1),
        limit: 1,
        only: Some(run.id),
    };
    let claimed = env.store.claim_queued(&claim).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (step, target) in [(0, "node-1"), (1, "node-1"), (0, "node-2")] {
        let now = chrono::Utc::now();
        env.store
            .put_step_result(&StepResult {
                run_id: run.id,
                step,
                target: target.into(),
                status: StepStatus::Succeeded,
                exit_code: Some(0),
                signal: None,
                error: None,
                attempt: claimed.attempt,
                started_at: now,
                finished_at: Some(now),
                try_no: 1,
                tries: vec![],
                outputs: Default::default(),
                children: vec![],
            })
            .await
            .unwrap();
    }
    env.oc.start_workers(1);
    let done = tokio::time::timeout(Duration::from_secs(30), env.oc.wait(run.id, &me()))
        .await
        .unwrap()
        .unwrap();
    env.oc.shutdown().await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert_eq!(done.attempt, 2);
    assert_eq!(
        env.events(),
        pairs(&[("node-2", "b"), ("node-3", "a"), ("node-3", "b")]),
        "done work is not repeated; the rollout goes on at node-2's step b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_over_ssh_stops_at_the_first_failed_host() {
    let pool = sshd::pool();
    let env = engine().await;
    let key = std::fs::read_to_string(&sshd::lab().keys.ed25519).unwrap();
    env.oc
        .set_secret(
            opsconductor::SetSecret {
                name: "ssh-key".into(),
                kind: Some("ssh_key".into()),
                description: None,
                value: key.into_bytes(),
            },
            &me(),
        )
        .await
        .unwrap();
    // The SSH user writes its events where this test reads them.
    let shared = tempfile::Builder::new()
        .prefix("opsc-roll")
        .tempdir_in("/tmp")
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let events = shared.path().join("events").display().to_string();
    let mut yaml = String::new();
    for (i, s) in pool.iter().take(3).enumerate() {
        yaml.push_str(&format!(
            "kind: Target\nname: node-{}\ncredential: ssh-key\nconnection:\n  type: ssh\n  host: {}\n  port: {}\n  user: {}\n  host_key: \"{}\"\n---\n",
            i + 1,
            s.host,
            s.port,
            sshd::USER,
            s.fingerprint
        ));
    }
    let step_then = |what: &str, then: &str| {
        serde_json::to_string(&format!(
            "echo \"$(date +%s%N) {{{{ target.name }}}} {what}\" >> {events} && sleep 0.05{then}"
        ))
        .unwrap()
    };
    let step = |what: &str| step_then(what, "");
    yaml.push_str(&format!(
        "kind: Job\nname: restart\ntargets: node-*\nstrategy: rolling\nconcurrency: 1\nsteps:\n  - name: drain\n    exec: {}\n  - name: restart\n    exec: {}\n  - name: undrain\n    exec: {}\non_failure:\n  - exec: {}\nfinally:\n  - exec: {}\n",
        step("drain"),
        step_then(
            "restart",
            " && test {{ target.name }} != node-2 || exit 3"
        ),
        step("undrain"),
        step("rollback"),
        step("finally"),
    ));
    env.apply(&yaml).await;
    let d = env.run("restart").await;
    assert_eq!(d.run.status, RunStatus::Failed, "{:?}", d.run.error);
    let text = std::fs::read_to_string(&events).unwrap();
    let mut rows: Vec<(u128, String)> = text
        .lines()
        .map(|l| {
            let (t, rest) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), rest.to_string())
        })
        .collect();
    rows.sort();
    let got: Vec<String> = rows.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        got[..5],
        [
            "node-1 drain",
            "node-1 restart",
            "node-1 undrain",
            "node-2 drain",
            "node-2 restart",
        ],
        "{got:?}"
    );
    // Then the cleanup: node-2 rolls back before it is undrained; both are undrained.
    let pos = |s: &str| got.iter().position(|g| g == s).unwrap();
    assert!(pos("node-2 rollback") < pos("node-2 finally"), "{got:?}");
    let mut cleanup: Vec<&String> = got.iter().skip(5).collect();
    cleanup.sort();
    assert_eq!(
        cleanup,
        ["node-1 finally", "node-2 finally", "node-2 rollback"]
    );
    assert!(!text.contains("node-3"), "node-3 is never touched: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rolling_deploy_example_rolls_back_the_failed_host() {
    let env = engine().await;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/rollouts/rolling-deploy.yaml");
    let batch = opsconductor::spec::load_path(&file).unwrap();
    env.oc.apply(&batch, &me()).await.unwrap();
    let root = env.path("hosts");
    let deploy = |version: &str, fail_on: &str| {
        SubmitRequest::new("rolling-deploy")
            .params(json!({"version": version, "root": root, "fail_on": fail_on}))
    };
    let state =
        |host: &str, file: &str| std::fs::read_to_string(format!("{root}/{host}/{file}")).ok();
    let run = env.oc.submit(deploy("1.0.0", ""), &me()).await.unwrap();
    let done = env.oc.execute(run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    for h in ["web-1", "web-2", "web-3"] {
        assert_eq!(state(h, "current").as_deref(), Some("1.0.0\n"));
        assert_eq!(state(h, "drained"), None, "undrained");
    }
    let run = env
        .oc
        .submit(deploy("2.0.0", "web-2"), &me())
        .await
        .unwrap();
    let done = env.oc.execute(run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Failed);
    assert!(
        done.error
            .unwrap()
            .starts_with("stopped after 1 failed target")
    );
    assert_eq!(
        state("web-1", "current").as_deref(),
        Some("2.0.0\n"),
        "the canary stays"
    );
    assert_eq!(
        state("web-2", "current").as_deref(),
        Some("1.0.0\n"),
        "rolled back"
    );
    assert_eq!(
        state("web-2", "rollback").as_deref(),
        Some("rolled back after health-check (exit code 1)\n")
    );
    assert_eq!(
        state("web-3", "current").as_deref(),
        Some("1.0.0\n"),
        "never touched"
    );
    for h in ["web-1", "web-2", "web-3"] {
        assert_eq!(state(h, "drained"), None, "{h} undrained");
    }
    let d = env.oc.run(run.id, &me()).await.unwrap();
    let check = result(&d, 2, "web-2");
    assert_eq!(
        (check.try_no, check.tries.len()),
        (3, 2),
        "the health check had three tries"
    );
}
