//! Run with: `cargo bench --bench steps --features postgres` (set
//! `OPSC_BENCH_STEPS` to one length or several, comma-separated; default
//! `1000,3000,10000`: 10,000 is the long job).
//!
//! The engine's cost per step: one run of N `exec: "true"` steps on the
//! local target, through the whole engine (claim, render, spawn, record each
//! result, heartbeats, finish), on the embedded SQLite store and on a
//! throwaway PostgreSQL server, side by side with a bare `sh -c true` spawn
//! loop of the same length. Prints ms per step for each, the ratio and the
//! engine's overhead per step (engine ms/step − bare ms/step). The cost per
//! step must not grow with the job's length: compare the lengths.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::time::{Duration, Instant};

use opsconductor::{Actor, Config, RunStatus, SubmitRequest};

fn bare_spawns(n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let st = std::process::Command::new("sh")
            .args(["-c", "true"])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "sh -c true failed");
    }
    start.elapsed()
}

/// Runs one job of `n` steps to its end on the store at `url`; returns how
/// long it took from start of the worker to the end of the run.
async fn engine(url: &str, n: usize) -> Result<Duration, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = opsconductor::open_store(url).await?;
    let ring = opsconductor::secrets::Keyring::create_file(&dir.path().join("master.key"))?;
    let oc = opsconductor::Conductor::builder()
        .store_arc(store)
        .keyring(ring)
        .config(Config {
            poll: Duration::from_millis(100),
            ..Config::default()
        })
        .executor(opsconductor::LocalExecutor::default())
        .build()
        .await?;
    let mut yaml = String::from("kind: Job\nname: many\nsteps:\n");
    for _ in 0..n {
        yaml.push_str("  - exec: \"true\"\n");
    }
    let me = Actor::new("bench");
    oc.apply(&opsconductor::spec::parse_str(&yaml, "bench", None)?, &me)
        .await?;
    let run = oc.submit(SubmitRequest::new("many"), &me).await?;
    let start = Instant::now();
    oc.start_workers(1);
    let done = oc.wait(run.id, &opsconductor::Actor::new("test")).await?;
    let took = start.elapsed();
    if done.status != RunStatus::Succeeded || done.attempt != 1 {
        return Err(format!("the run ended {} on attempt {}", done.status, done.attempt).into());
    }
    let results = oc.run(run.id, &me).await?.results.len();
    if results != n {
        return Err(format!("{results} results for {n} steps").into());
    }
    oc.shutdown().await;
    Ok(took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lengths: Vec<usize> = std::env::var("OPSC_BENCH_STEPS")
        .unwrap_or_else(|_| "1000,3000,10000".into())
        .split(',')
        .map(|n| n.trim().parse())
        .collect::<Result<_, _>>()?;
    bare_spawns(20);
    for n in lengths {
        println!("\nOpsConductor per-step cost: one run of {n} steps of `true` (local executor)\n");
        println!(
            "{:<26} {:>10} {:>10} {:>8} {:>12}",
            "", "total s", "ms/step", "ratio", "overhead"
        );
        let bare = bare_spawns(n);
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        println!(
            "{:<26} {:>10.2} {:>10.3}",
            "bare `sh -c true` loop",
            bare.as_secs_f64(),
            per(bare)
        );
        let sqlite_dir = tempfile::tempdir()?;
        let sqlite = format!("sqlite://{}", sqlite_dir.path().join("b.db").display());
        let postgres = opsconductor_store::testing::pg::fresh_database().await;
        for (name, url) in [("SQLite", sqlite), ("PostgreSQL", postgres)] {
            let took = engine(&url, n).await?;
            println!(
                "{:<26} {:>10.2} {:>10.3} {:>7.2}x {:>9.3} ms",
                format!("engine, {name}"),
                took.as_secs_f64(),
                per(took),
                per(took) / per(bare),
                per(took) - per(bare)
            );
        }
    }
    println!("\nratio = engine ms/step ÷ bare ms/step; overhead = the difference per step.");
    Ok(())
}
