//! Run with: `cargo bench --bench prune --features postgres` (needs the
//! PostgreSQL 15 server binaries; `OPSC_BENCH_LOG_ROWS` sets the log rows,
//! default 1,000,000).
//!
//! Claim latency while pruning: 1,000 finished runs with N/1000 log chunks
//! each are pruned by the engine (`Conductor::prune`, bounded batches) while
//! a claimer loop inserts a queued run and claims it, measuring each
//! `claim_queued` call. Prints the prune time, rows/s and the claim latency
//! p50/p99/max during the prune next to the same loop without a prune.
//! Goal: p99 under 50 ms on PostgreSQL.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opsconductor::store::{Claim, Store};
use opsconductor::{Actor, Conductor, PruneRequest, Run, RunId, RunStatus};
use opsconductor_store::testing::pg::TestPg;

fn spec() -> opsconductor::JobSpec {
    let b = opsconductor::spec::parse_str(
        "kind: Job\nname: noop\nsteps:\n  - exec: \"true\"\n",
        "bench",
        None,
    )
    .expect("spec");
    b.jobs.into_iter().next().expect("one job")
}

fn run(spec: &opsconductor::JobSpec, status: RunStatus, age: chrono::Duration) -> Run {
    let t = chrono::Utc::now() - age;
    Run {
        id: RunId::new(),
        job: spec.name.clone(),
        job_version: Some(1),
        spec: spec.clone(),
        params: serde_json::json!({}),
        targets: vec!["local".into()],
        status,
        requested_by: "bench".into(),
        attempt: u32::from(status != RunStatus::Queued),
        worker: None,
        lease_until: None,
        cancel_requested: false,
        error: None,
        created_at: t,
        started_at: (status != RunStatus::Queued).then_some(t),
        finished_at: (status != RunStatus::Queued).then_some(t),
        request_id: None,
        schedule: None,
        parent: None,
    }
}

fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Inserts and claims one run at a time until `stop`; returns the claim latencies.
async fn claim_loop(store: Arc<dyn Store>, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let spec = spec();
    let claim = Claim {
        worker: "bench".into(),
        lease: Duration::from_secs(60),
        limit: 1,
        only: None,
    };
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let r = run(&spec, RunStatus::Queued, chrono::Duration::zero());
        store.insert_run(&r).await.expect("insert");
        let t = Instant::now();
        let got = store.claim_queued(&claim).await.expect("claim");
        lat.push(t.elapsed());
        for c in got {
            store
                .finish_run(c.id, "bench", c.attempt, RunStatus::Succeeded, None)
                .await
                .expect("finish");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    lat
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("OPSC_BENCH_LOG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs = 1000usize;
    let per_run = rows.div_ceil(runs);
    let pg = TestPg::start();
    let url = pg.create_database().await;
    let store = opsconductor_store::open(&url).await.expect("pg");
    let spec = spec();
    for _ in 0..runs {
        store
            .insert_run(&run(
                &spec,
                RunStatus::Succeeded,
                chrono::Duration::days(100),
            ))
            .await
            .expect("insert");
    }
    psql(
        &url,
        &format!(
            "INSERT INTO logs (run_id, seq, step, target, stream, data, time) \
             SELECT r.id, g, 0, 'local', 'stdout', convert_to(repeat('x', 80), 'UTF8'), 0 \
             FROM runs r, generate_series(1, {per_run}) g WHERE r.status = 'succeeded'; ANALYZE"
        ),
    );
    println!(
        "OpsConductor prune: {runs} finished runs, {} log rows",
        runs * per_run
    );

    // Baseline: the claim loop alone for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let base = tokio::spawn(claim_loop(store.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut base = base.await.expect("claims");

    let oc = Conductor::builder()
        .store_arc(store.clone())
        .build()
        .await
        .expect("engine");
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(claim_loop(store.clone(), stop.clone()));
    let t = Instant::now();
    let report = oc
        .prune(
            &PruneRequest {
                runs_older_than: Some(Duration::from_secs(30 * 86400)),
                ..PruneRequest::default()
            },
            &Actor::new("bench"),
        )
        .await
        .expect("prune");
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut during = during.await.expect("claims");
    println!(
        "pruned {} runs, {} results, {} log rows in {} statements, {:.1} s ({:.0} rows/s)",
        report.counts.runs,
        report.counts.results,
        report.counts.logs,
        report.batches,
        took.as_secs_f64(),
        report.counts.logs as f64 / took.as_secs_f64()
    );
    println!(
        "{:<16} {:>7} {:>9} {:>9} {:>9}",
        "claim latency", "claims", "p50 ms", "p99 ms", "max ms"
    );
    for (name, v) in [("idle", &mut base), ("during prune", &mut during)] {
        let n = v.len();
        let (p50, p99, max) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
        println!("{name:<16} {n:>7} {p50:>9.2} {p99:>9.2} {max:>9.2}");
    }
    let p99 = pct(&mut during, 0.99);
    println!(
        "goal: p99 during the prune < 50 ms: {}",
        if p99 < 50.0 { "met" } else { "NOT met" }
    );
}
