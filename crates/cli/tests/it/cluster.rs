//! Many worker processes on one PostgreSQL database: nothing lost, nothing
//! run twice — proven by doing it: several `opsconductor worker` processes,
//! `kill -9` mid-step, a PostgreSQL restart with runs in flight, and a
//! follower in another process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use opsconductor::{Actor, SubmitRequest};
use opsconductor_store::testing::pg::{TestPg, fresh_database};

const KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A worker process on the PostgreSQL database `url`.
fn worker(env: &Env, url: &str, concurrency: usize, lease: &str) -> Child {
    std::process::Command::new(bin())
        .current_dir(env.path())
        .env("OPSC_MASTER_KEY", KEY)
        .args(["--database-url", url, "--color", "never", "worker"])
        .args(["--concurrency", &concurrency.to_string(), "--lease", lease])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn engine(url: &str) -> opsconductor::Conductor {
    let store = opsconductor::open_store(url).await.unwrap();
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
}

async fn apply(oc: &opsconductor::Conductor, yaml: &str) {
    let batch = opsconductor::spec::parse_str(yaml, "cluster.yaml", None).unwrap();
    oc.apply(&batch, &Actor::new("t")).await.unwrap();
}

async fn statuses(oc: &opsconductor::Conductor) -> HashMap<String, usize> {
    let runs = oc
        .runs(
            &opsconductor::store::RunFilter {
                limit: 1000,
                ..Default::default()
            },
            &Actor::new("t"),
        )
        .await
        .unwrap();
    let mut m = HashMap::new();
    for r in runs {
        *m.entry(r.status.as_str().to_string()).or_insert(0) += 1;
    }
    m
}

async fn wait_all_terminal(
    oc: &opsconductor::Conductor,
    n: usize,
    limit: Duration,
) -> HashMap<String, usize> {
    let start = Instant::now();
    loop {
        let s = statuses(oc).await;
        let open = s.get("queued").copied().unwrap_or(0) + s.get("running").copied().unwrap_or(0);
        if open == 0 && s.values().sum::<usize>() == n {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "runs still open after {limit:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn worker_processes_never_claim_the_same_run() {
    let env = Env::new();
    let rt = rt();
    let url = rt.block_on(fresh_database());
    let marks = env.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let n = 150;
    rt.block_on(async {
        let oc = engine(&url).await;
        apply(
            &oc,
            &format!(
                "kind: Job\nname: once\nsteps:\n  - exec: echo $$ >> {}/$OPSC_RUN_ID\n",
                marks.display()
            ),
        )
        .await;
        for _ in 0..n {
            oc.submit(SubmitRequest::new("once"), &Actor::new("t"))
                .await
                .unwrap();
        }
    });
    let mut workers: Vec<Child> = (0..4).map(|_| worker(&env, &url, 4, "30s")).collect();
    let s = rt.block_on(async {
        wait_all_terminal(&engine(&url).await, n, Duration::from_secs(120)).await
    });
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert_eq!(s.get("succeeded"), Some(&n), "{s:?}");
    let files: Vec<_> = std::fs::read_dir(&marks).unwrap().flatten().collect();
    assert_eq!(files.len(), n);
    for f in files {
        assert_eq!(
            count_lines(&f.path()),
            1,
            "run {:?} executed more than once",
            f.file_name()
        );
    }
}

#[test]
fn kill_9_workers_mid_step_loses_nothing_and_repeats_no_unsafe_step() {
    let env = Env::new();
    let rt = rt();
    let url = rt.block_on(fresh_database());
    let marks = env.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let m = marks.display();
    let n: usize = std::env::var("OPSC_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(24);
    rt.block_on(async {
        let oc = engine(&url).await;
        apply(
            &oc,
            &format!(
                r#"
kind: Job
name: crashy
steps:
  - name: unsafe-1
    exec: echo x >> {m}/$OPSC_RUN_ID.0; sleep 0.4
  - name: safe
    exec: echo x >> {m}/$OPSC_RUN_ID.1; sleep 0.4
    idempotent: true
  - name: unsafe-2
    exec: echo x >> {m}/$OPSC_RUN_ID.2; sleep 0.2
"#
            ),
        )
        .await;
        for _ in 0..n {
            oc.submit(SubmitRequest::new("crashy"), &Actor::new("t"))
                .await
                .unwrap();
        }
    });
    // Kill -9 the worker again and again while it runs steps.
    // 20 in the test suite; `scripts/soak.sh` raises it.
    let kills: u64 = std::env::var("OPSC_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut w = worker(&env, &url, 3, "2s");
    for i in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + (i % 4) * 150));
        w.kill().unwrap(); // SIGKILL
        w.wait().unwrap();
        w = worker(&env, &url, 3, "2s");
    }
    let s = rt.block_on(async {
        wait_all_terminal(&engine(&url).await, n, Duration::from_secs(180)).await
    });
    let _ = w.kill();
    let _ = w.wait();
    // 0 lost, 0 left running: every run ended.
    assert_eq!(s.values().sum::<usize>(), n, "{s:?}");
    rt.block_on(async {
        let oc = engine(&url).await;
        let runs = oc.runs(&opsconductor::store::RunFilter { limit: 1000, ..Default::default() }, &Actor::new("t")).await.unwrap();
        let mut rescued = 0;
        let mut interrupted = 0;
        let mut reran_safe = 0;
        for r in runs {
            let d = oc.run(r.id, &Actor::new("t")).await.unwrap();
            if r.attempt > 1 {
                rescued += 1;
            }
            // Non-idempotent steps ran at most once, whatever happened.
            for step in [0, 2] {
                let c = count_lines(&marks.join(format!("{}.{step}", r.id)));
                assert!(c <= 1, "run {} step {step} (not idempotent) ran {c} times", r.id);
            }
            let safe = count_lines(&marks.join(format!("{}.1", r.id)));
            if safe > 1 {
                reran_safe += 1;
            }
            let was_interrupted = d.results.iter().any(|x| x.status == opsconductor::StepStatus::Interrupted);
            if was_interrupted {
                interrupted += 1;
                assert_eq!(r.status, opsconductor::RunStatus::Failed, "an interrupted run must fail");
                // The interrupted step is never repeated (at most once above:
                // the kill may land after the step was recorded as started
                // and before its process wrote anything).
            } else {
                assert_eq!(r.status, opsconductor::RunStatus::Succeeded, "run {} {:?}: {:?}", r.id, r.status, r.error);
                // A succeeded run ran every step: the unsafe ones exactly once.
                for step in [0, 2] {
                    let c = count_lines(&marks.join(format!("{}.{step}", r.id)));
                    assert_eq!(c, 1, "succeeded run {} ran step {step} {c} times", r.id);
                }
                assert!(safe >= 1, "succeeded run {} never ran its idempotent step", r.id);
            }
        }
        eprintln!("{kills} kills: {rescued} runs rescued, {interrupted} interrupted (unsafe step), {reran_safe} idempotent steps re-run");
        assert!(rescued > 0, "the kills never hit a run: the test proved nothing");
        assert!(
            reran_safe > 0,
            "no kill landed in the idempotent step, so its re-run was never exercised"
        );
    });
}

#[test]
fn postgres_restart_with_runs_in_flight_loses_no_run() {
    let env = Env::new();
    let rt = rt();
    // Its own server: this test restarts it.
    let pg = TestPg::start();
    let url = rt.block_on(pg.create_database());
    let n = 16;
    rt.block_on(async {
        let oc = engine(&url).await;
        apply(&oc, "kind: Job\nname: steady\nsteps:\n  - exec: sleep 0.3; echo one\n    idempotent: true\n  - exec: sleep 0.3; echo two\n    idempotent: true\n").await;
        for _ in 0..n {
            oc.submit(SubmitRequest::new("steady"), &Actor::new("t")).await.unwrap();
        }
    });
    let mut w = worker(&env, &url, 4, "10s");
    std::thread::sleep(Duration::from_millis(1200));
    pg.stop_immediate();
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again();
    let s = rt.block_on(async {
        wait_all_terminal(&engine(&url).await, n, Duration::from_secs(120)).await
    });
    let _ = w.kill();
    let stderr = w
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    assert_eq!(
        s.get("succeeded"),
        Some(&n),
        "{s:?}\nworker said:\n{stderr}"
    );
}

#[test]
fn follow_from_another_process_sees_exactly_the_bytes_in_order() {
    let env = Env::new();
    let rt = rt();
    let url = rt.block_on(fresh_database());
    let id = rt.block_on(async {
        let oc = engine(&url).await;
        apply(&oc, "kind: Job\nname: talk\nsteps:\n  - exec: i=1; while [ $i -le 60 ]; do echo line-$i; i=$((i+1)); sleep 0.03; done; printf 'no newline at the end'\n").await;
        oc.submit(SubmitRequest::new("talk"), &Actor::new("t")).await.unwrap().id
    });
    let mut w = worker(&env, &url, 1, "30s");
    // Join late, once the run has produced some output.
    rt.block_on(async {
        // The store itself (the engine hands out no store): its last seq.
        let store = opsconductor::open_store(&url).await.unwrap();
        for _ in 0..200 {
            if store.last_log_seq(id).await.unwrap() > 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let out = std::process::Command::new(bin())
        .env("OPSC_MASTER_KEY", KEY)
        .args([
            "--database-url",
            &url,
            "--json",
            "runs",
            "logs",
            &id.to_string(),
            "--follow",
        ])
        .output()
        .unwrap();
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::new();
    let mut last_seq = 0;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["stream"] == "stdout" {
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "out of order or duplicated");
            last_seq = seq;
            text.push_str(v["data"].as_str().unwrap());
        }
    }
    let expected: String =
        (1..=60).map(|i| format!("line-{i}\n")).collect::<String>() + "no newline at the end";
    assert_eq!(text, expected);
}

#[test]
fn a_submission_wakes_a_worker_in_another_process_without_polling() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    let rt = rt();
    let url = rt.block_on(fresh_database());
    rt.block_on(async {
        let oc = engine(&url).await;
        apply(&oc, "kind: Job\nname: prompt\nsteps:\n  - exec: echo hi\n").await;
    });
    // A worker whose safety-net poll is an hour: only LISTEN/NOTIFY can wake it.
    let mut w = std::process::Command::new(bin())
        .current_dir(env.path())
        .env("OPSC_MASTER_KEY", KEY)
        .args(["--database-url", &url, "--color", "never", "worker"])
        .args(["--concurrency", "2", "--poll", "1h"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(w.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("started") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the worker exited");
    }
    // Let its first (empty) claim pass so it is waiting for a wake-up.
    std::thread::sleep(Duration::from_millis(500));
    let status = rt.block_on(async {
        let oc = engine(&url).await;
        let mut last = None;
        for _ in 0..3 {
            let run = oc
                .submit(SubmitRequest::new("prompt"), &Actor::new("t"))
                .await
                .unwrap();
            // Far below the hour-long poll: only a wake-up can explain it.
            let done = tokio::time::timeout(
                Duration::from_secs(30),
                oc.wait(run.id, &opsconductor::Actor::new("test")),
            )
            .await
            .expect("the worker was not woken by the submission")
            .unwrap();
            last = Some(done.status);
        }
        last
    });
    let _ = w.kill();
    let _ = w.wait();
    assert_eq!(status, Some(opsconductor::RunStatus::Succeeded));
}

#[test]
fn sigterm_finishes_the_runs_it_stopped_before_the_worker_exits() {
    let env = Env::new();
    let rt = rt();
    let url = rt.block_on(fresh_database());
    let oc = rt.block_on(async {
        let oc = engine(&url).await;
        apply(
            &oc,
            "kind: Job\nname: long\nsteps:\n  - name: sleep\n    exec: sleep 60\n",
        )
        .await;
        oc.submit(SubmitRequest::new("long"), &Actor::new("t"))
            .await
            .unwrap();
        oc
    });
    // A long lease: nobody else could rescue the run before the test ends,
    // so only the stopping worker itself can finish it.
    let mut w = std::process::Command::new(bin())
        .current_dir(env.path())
        .env("OPSC_MASTER_KEY", KEY)
        .args(["--database-url", &url, "--color", "never", "worker"])
        .args(["--lease", "5m", "--drain-timeout", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while rt
        .block_on(statuses(&oc))
        .get("running")
        .copied()
        .unwrap_or(0)
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("worker exited {exit:?} {:?} after SIGTERM", start.elapsed());
    // The moment the process is gone, the run is already finished.
    let runs = rt
        .block_on(oc.runs(
            &opsconductor::store::RunFilter {
                limit: 10,
                ..Default::default()
            },
            &Actor::new("t"),
        ))
        .unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.status.as_str(), "failed", "{run:?}");
    assert_eq!(run.attempt, 1, "{run:?}");
}

/// Issue 12 §1(c): a worker frozen (SIGSTOP) past its lease while it runs an
/// idempotent step. Another worker rescues the run and runs the step again;
/// the frozen worker's step must be dead before that (the reaper, which is
/// not frozen with it, kills it when the keepalive stops), so the two
/// executions never overlap. The step records a timestamp every 0.1 s.
fn frozen_worker_never_overlaps_an_idempotent_step(env: &Env, url: &str) {
    let rt = rt();
    let ticks = env.path().join("ticks");
    let oc = rt.block_on(async {
        let oc = engine(url).await;
        apply(
            &oc,
            &format!(
                "kind: Job\nname: frozen\nsteps:\n  - name: tick\n    idempotent: true\n    \
                 exec: i=0; while [ $i -lt 40 ]; do echo \"$$ $(date +%s%N)\" >> {}; i=$((i+1)); sleep 0.1; done\n",
                ticks.display()
            ),
        )
        .await;
        oc.submit(SubmitRequest::new("frozen"), &Actor::new("t"))
            .await
            .unwrap();
        oc
    });
    // Lease 3 s: heartbeat 1 s, the step dies 1.5 s after the freeze.
    let mut a = worker(env, url, 2, "3s");
    let started = wait_until(PATIENCE, || count_lines(&ticks) > 0);
    assert!(started, "the step never started");
    let mut b = worker(env, url, 2, "3s");
    let pid = a.id().to_string();
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig}");
    };
    signal("-STOP");
    let frozen_at = Instant::now();
    // Until the rescuer runs the step (a second shell writes).
    let executions = |ticks: &Path| -> Vec<(String, u128, u128)> {
        let text = std::fs::read_to_string(ticks).unwrap_or_default();
        let mut spans: Vec<(String, u128, u128)> = Vec::new();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(p), Some(t)) = (w.next(), w.next()) else {
                continue;
            };
            let t: u128 = t.parse().unwrap();
            match spans.iter_mut().find(|s| s.0 == p) {
                Some(s) => {
                    s.1 = s.1.min(t);
                    s.2 = s.2.max(t);
                }
                None => spans.push((p.to_owned(), t, t)),
            }
        }
        spans.sort_by_key(|s| s.1);
        spans
    };
    let rescued = wait_until(PATIENCE, || executions(&ticks).len() >= 2);
    // Resume the frozen worker while the rescuer runs the step, a while
    // after it started it (so a surviving first execution would overlap).
    std::thread::sleep(Duration::from_secs(1));
    signal("-CONT");
    assert!(
        rescued,
        "no other worker rescued the run: {:?}",
        executions(&ticks)
    );
    eprintln!("rescued {:?} after the freeze", frozen_at.elapsed());
    let s = rt.block_on(wait_all_terminal(&oc, 1, Duration::from_secs(60)));
    // The resumed worker had time to act on what it saw: it changed nothing.
    std::thread::sleep(Duration::from_secs(2));
    for w in [&mut a, &mut b] {
        let _ = w.kill();
        let _ = w.wait();
    }
    let spans = executions(&ticks);
    for pair in spans.windows(2) {
        assert!(
            pair[0].2 < pair[1].1,
            "two executions of the step overlapped: {spans:?}"
        );
    }
    let gaps: Vec<f64> = spans
        .windows(2)
        .map(|p| (p[1].1 - p[0].2) as f64 / 1e9)
        .collect();
    eprintln!("executions {}: gaps between them {gaps:?} s", spans.len());
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(s.get("succeeded"), Some(&1), "{s:?}");
    let runs = rt
        .block_on(oc.runs(
            &opsconductor::store::RunFilter {
                limit: 10,
                ..Default::default()
            },
            &Actor::new("t"),
        ))
        .unwrap();
    assert_eq!(runs[0].attempt, 2, "{:?}", runs[0]);
    let detail = rt.block_on(oc.run(runs[0].id, &Actor::new("t"))).unwrap();
    assert!(
        detail
            .results
            .iter()
            .all(|r| r.status == opsconductor::StepStatus::Succeeded),
        "{:?}",
        detail.results
    );
}

#[test]
fn frozen_worker_never_overlaps_an_idempotent_step_postgres() {
    let env = Env::new();
    let url = rt().block_on(fresh_database());
    frozen_worker_never_overlaps_an_idempotent_step(&env, &url);
}

#[test]
fn frozen_worker_never_overlaps_an_idempotent_step_sqlite() {
    let env = Env::new();
    let url = env.url.clone();
    frozen_worker_never_overlaps_an_idempotent_step(&env, &url);
}
