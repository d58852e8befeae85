//! Run with: `cargo bench --bench schedules --features postgres` (needs the
//! PostgreSQL 15 server binaries; `OPSC_BENCH_SCHEDULES` sets the number of
//! schedules, default 1000, and `OPSC_BENCH_MINUTES` how many minutes to
//! measure, default 2).
//!
//! Start delay of scheduled runs: N schedules firing every minute on one
//! PostgreSQL database, two engines (as two nodes would be: each runs the
//! scheduler and 32 worker slots) racing for every fire time. Reports, over
//! every fire, the delay from the nominal fire time to the run being queued
//! (the scheduler's own latency) and to the run being started by a worker
//! (p50, p99, max), and checks that each fire time ran exactly once.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::collections::HashSet;
use std::time::Duration;

use opsconductor::store::RunFilter;
use opsconductor::{Actor, Conductor};
use opsconductor_store::testing::pg::TestPg;

async fn engine(url: &str) -> Conductor {
    let store = opsconductor_store::open(url).await.expect("pg");
    let oc = opsconductor::with_executors(Conductor::builder().store_arc(store))
        .workers(32)
        .build()
        .await
        .expect("engine");
    oc.start_scheduler();
    oc
}

fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("OPSC_BENCH_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let minutes: i64 = std::env::var("OPSC_BENCH_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let pg = TestPg::start();
    let url = pg.create_database().await;
    let a = engine(&url).await;
    let b = engine(&url).await;
    let mut yaml = String::from("kind: Job\nname: tick\nsteps: [{exec: \"true\"}]\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "---\nkind: Schedule\nname: s{i:04}\njob: tick\ncron: \"* * * * *\"\noverlap: allow\n"
        ));
    }
    let batch = opsconductor::spec::parse_str(&yaml, "bench.yaml", None).expect("parse");
    a.apply(&batch, &Actor::new("bench")).await.expect("apply");
    let now = chrono::Utc::now();
    let first = opsconductor::schedule::Timing::parse("* * * * *", "UTC")
        .expect("cron")
        .next_after(now)
        .expect("next");
    let last = first + chrono::Duration::minutes(minutes - 1);
    println!(
        "{n} schedules firing every minute on PostgreSQL, 2 engines (scheduler + 32 workers each); \
         measuring {minutes} minute(s) from {first}"
    );
    // Wait until the last measured minute has fired and its runs started.
    let wait = (last - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(40);
    tokio::time::sleep(wait).await;
    let mut queued = Vec::new();
    let mut started = Vec::new();
    let mut seen = HashSet::new();
    let mut dups = 0;
    let mut before = None;
    loop {
        let page = a
            .runs(
                &RunFilter {
                    limit: 1000,
                    before,
                    ..Default::default()
                },
                &Actor::new("bench"),
            )
            .await
            .expect("runs");
        let Some(l) = page.last() else { break };
        before = Some(l.id);
        for r in page {
            let Some(s) = r.schedule.as_ref() else {
                continue;
            };
            let Some(ft) = s.fire_time else { continue };
            if ft < first || ft > last {
                continue;
            }
            if !seen.insert((s.name.clone(), ft)) {
                dups += 1;
            }
            queued.push((r.created_at - ft).as_seconds_f64() * 1000.0);
            if let Some(st) = r.started_at {
                started.push((st - ft).as_seconds_f64() * 1000.0);
            }
        }
    }
    queued.sort_by(f64::total_cmp);
    started.sort_by(f64::total_cmp);
    let expected = n * minutes as usize;
    println!(
        "fires: {} of {expected} expected, {dups} doubled",
        seen.len()
    );
    println!(
        "fire time → queued:  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        pct(&queued, 0.5),
        pct(&queued, 0.99),
        queued.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "fire time → started: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} of {} started)",
        pct(&started, 0.5),
        pct(&started, 0.99),
        started.last().copied().unwrap_or(f64::NAN),
        started.len(),
        queued.len()
    );
    a.shutdown().await;
    b.shutdown().await;
}
