//! Run with: `cargo bench --bench queue --features postgres` (needs the
//! PostgreSQL 15 server binaries; `OPSC_BENCH_RUNS` sets the run count, default 2000).
//!
//! The queue itself, side by side with the database's own limit:
//! - claim-and-complete throughput of trivial runs (insert N queued runs,
//!   then W worker tasks loop `claim_queued` → `finish_run`) with W = 1, 2,
//!   4, 8 on PostgreSQL and on SQLite;
//! - enqueue → start latency (p50/p99) through the whole engine: a submitter
//!   and a separate worker engine (on PostgreSQL: another connection pool,
//!   woken by LISTEN/NOTIFY, as another node would be);
//! - `pgbench -b simple-update` TPS against the same PostgreSQL server.
//!
//! Prints runs/s, the ratio to pgbench TPS and the latencies.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsconductor::store::{Claim, Store};
use opsconductor::{Actor, Conductor, Run, RunId, RunStatus, SubmitRequest};
use opsconductor_store::testing::pg::TestPg;

fn queued_run(spec: &opsconductor::JobSpec) -> Run {
    Run {
        id: RunId::new(),
        job: spec.name.clone(),
        job_version: Some(1),
        spec: spec.clone(),
        params: serde_json::json!({}),
        targets: vec!["local".into()],
        status: RunStatus::Queued,
        requested_by: "bench".into(),
        attempt: 0,
        worker: None,
        lease_until: None,
        cancel_requested: false,
        error: None,
        created_at: chrono::Utc::now(),
        started_at: None,
        finished_at: None,
        request_id: None,
        schedule: None,
        parent: None,
    }
}

fn noop_spec() -> opsconductor::JobSpec {
    let b = opsconductor::spec::parse_str(
        "kind: Job\nname: noop\nsteps:\n  - exec: \"true\"\n",
        "bench",
        None,
    )
    .expect("spec");
    b.jobs.into_iter().next().expect("one job")
}

/// Claim-and-complete: returns runs/s.
async fn claim_complete(store: Arc<dyn Store>, n: usize, workers: usize, batch: usize) -> f64 {
    let spec = noop_spec();
    for _ in 0..n {
        store.insert_run(&queued_run(&spec)).await.expect("insert");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let claim = Claim {
                worker: format!("bench#{w}"),
                lease: Duration::from_secs(60),
                limit: batch,
                only: None,
            };
            loop {
                let runs = store.claim_queued(&claim).await.expect("claim");
                if runs.is_empty() {
                    return;
                }
                for r in runs {
                    store
                        .finish_run(r.id, &claim.worker, r.attempt, RunStatus::Succeeded, None)
                        .await
                        .expect("finish");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Enqueue → start latency in ms (p50, p99): submit on one engine, run on another.
async fn latency(url: &str, samples: usize) -> (f64, f64) {
    let submitter = opsconductor::open(url).await.expect("open");
    let batch = opsconductor::spec::parse_str(
        "kind: Job\nname: noop\nsteps:\n  - exec: \"true\"\n",
        "bench",
        None,
    )
    .expect("spec");
    submitter
        .apply(&batch, &Actor::new("bench"))
        .await
        .expect("apply");
    let workers: Conductor = opsconductor::builder(url)
        .await
        .expect("builder")
        .workers(4)
        .build()
        .await
        .expect("workers");
    let mut ids = Vec::new();
    for _ in 0..samples {
        ids.push(
            submitter
                .submit(SubmitRequest::new("noop"), &Actor::new("bench"))
                .await
                .expect("submit")
                .id,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = Vec::new();
    for id in ids {
        let r = submitter
            .wait(id, &opsconductor::Actor::new("test"))
            .await
            .expect("wait");
        let started = r.started_at.expect("started");
        lat.push((started - r.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    workers.shutdown().await;
    lat.sort_by(|a, b| a.total_cmp(b));
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn pgbench(pg: &TestPg) -> f64 {
    let bin = std::path::Path::new("/usr/lib/postgresql/15/bin/pgbench");
    let port = pg.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    let init = std::process::Command::new(bin)
        .args(base)
        .args(["-i", "-q", "-s", "1", "postgres"])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = std::process::Command::new(bin)
        .args(base)
        .args([
            "-b",
            "simple-update",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "10",
            "postgres",
        ])
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("OPSC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let pg = TestPg::start();
    let tps = pgbench(&pg);
    println!(
        "OpsConductor queue: claim-and-complete of {n} trivial runs; pgbench simple-update (8 clients): {tps:.0} TPS\n"
    );
    println!(
        "{:<10} {:>8} {:>7} {:>10} {:>17}",
        "backend", "workers", "batch", "runs/s", "ratio to pgbench"
    );
    // batch = runs one claim statement takes (the engine claims as many as
    // its pool has free slots, up to 32).
    for batch in [1, 8] {
        for workers in [1, 2, 4, 8] {
            let url = pg.create_database().await;
            let store = opsconductor_store::open(&url).await.expect("pg");
            let rate = claim_complete(store, n, workers, batch).await;
            println!(
                "{:<10} {:>8} {:>7} {:>10.0} {:>16.2}x",
                "postgres",
                workers,
                batch,
                rate,
                rate / tps
            );
        }
    }
    for batch in [1, 8] {
        for workers in [1, 2, 4, 8] {
            let dir = tempfile::tempdir().expect("tmp");
            let url = format!("sqlite://{}", dir.path().join("q.db").display());
            let store = opsconductor_store::open(&url).await.expect("sqlite");
            let rate = claim_complete(store, n, workers, batch).await;
            println!(
                "{:<10} {:>8} {:>7} {:>10.0} {:>16.2}x",
                "sqlite",
                workers,
                batch,
                rate,
                rate / tps
            );
        }
    }
    println!("\nenqueue → start latency (submitter and workers in separate engines), 200 runs:");
    let url = pg.create_database().await;
    let (p50, p99) = latency(&url, 200).await;
    println!("  postgres (LISTEN/NOTIFY): p50 {p50:.2} ms, p99 {p99:.2} ms");
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("l.db").display());
    let (p50, p99) = latency(&url, 200).await;
    println!(
        "  sqlite (separate engine: no cross-process wake-ups, polling every {} ms): p50 {p50:.2} ms, p99 {p99:.2} ms",
        opsconductor::Config::default()
            .poll
            .min(Duration::from_millis(250))
            .as_millis()
    );
}
