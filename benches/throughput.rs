//! Run with: `cargo bench --bench throughput` (set `OPSC_BENCH_RUNS`, default 500).
//!
//! Throughput of a trivial local job (`true`) through the whole engine —
//! submit, claim under a lease, render, spawn, record results, finish — on
//! the embedded SQLite store with 1 and 2 workers, side by side with the peer
//! a user would otherwise write: a bare `sh -c true` spawn loop with the same
//! parallelism. Prints runs/s for both, the ratio, and the engine's per-run
//! overhead in milliseconds (engine time per run minus bare time per run).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::time::{Duration, Instant};

use opsconductor::{Actor, RunStatus, SubmitRequest};

fn bare_spawns(n: usize, threads: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let share = n / threads + usize::from(t < n % threads);
            s.spawn(move || {
                for _ in 0..share {
                    let st = std::process::Command::new("sh")
                        .args(["-c", "true"])
                        .status();
                    assert!(st.is_ok_and(|s| s.success()), "sh -c true failed");
                }
            });
        }
    });
    start.elapsed()
}

async fn engine(
    n: usize,
    workers: usize,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let oc = opsconductor::open(&url).await?;
    let batch = opsconductor::spec::parse_str(
        "kind: Job\nname: noop\nsteps:\n  - exec: \"true\"\n",
        "bench",
        None,
    )?;
    let me = Actor::new("bench");
    oc.apply(&batch, &me).await?;

    let start = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(oc.submit(SubmitRequest::new("noop"), &me).await?.id);
    }
    let submitted = start.elapsed();
    oc.start_workers(workers);
    for id in ids {
        let r = oc.wait(id, &opsconductor::Actor::new("test")).await?;
        if r.status != RunStatus::Succeeded {
            return Err(format!("run {id} ended {}", r.status).into());
        }
    }
    let total = start.elapsed();
    oc.shutdown().await;
    Ok((submitted, total))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("OPSC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    println!("OpsConductor throughput: {n} runs of `true` (SQLite store, local executor)\n");
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>12}",
        "", "runs/s", "ms/run", "ratio", "overhead"
    );
    // Warm up the page cache and the process spawner.
    bare_spawns(20, 1);
    for workers in [1, 2] {
        let bare = bare_spawns(n, workers);
        let (submit, total) = engine(n, workers).await?;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        println!(
            "{:<34} {:>9.0} {:>9.3}",
            format!("bare `sh -c true`, {workers} thread(s)"),
            rate(bare),
            per(bare)
        );
        println!(
            "{:<34} {:>9.0} {:>9.3} {:>7.2}x {:>9.3} ms",
            format!("engine, {workers} worker(s), submit+run"),
            rate(total),
            per(total),
            rate(total) / rate(bare),
            per(total) - per(bare)
        );
        println!(
            "{:<34} {:>9.0} {:>9.3}",
            "  of which submit (validate+insert)",
            rate(submit),
            per(submit)
        );
        println!();
    }
    println!(
        "ratio = engine runs/s ÷ bare runs/s; overhead = engine ms/run − bare ms/run (same parallelism)."
    );
    Ok(())
}
