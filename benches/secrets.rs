//! Run with: `cargo bench --bench secrets` (`OPSC_BENCH_SECRETS` sets the
//! stored secrets, default 200; `OPSC_BENCH_RUNS` the runs, default 200).
//!
//! What stored secrets cost a run start. Every run masks the value of every
//! stored secret in its output, so its start loads them all into the run's
//! masker. Two measurements, each with no secrets and with N stored
//! secrets, side by side:
//! - secret loads/s: `submit_exec` of an ad-hoc command, which masks the
//!   command for the audit log with exactly what a run start loads (every
//!   stored secret) and inserts the run — no process is spawned;
//! - whole runs/s: those runs executed by one worker (`true`, local).
//!
//! Goal: with nothing changed between runs, a run start decrypts nothing and
//! N stored secrets cost about as much as none.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::time::{Duration, Instant};

use opsconductor::secrets::{KeyBytes, KeySource, Keyring};
use opsconductor::{Actor, Conductor, ExecRequest, RunStatus, SetSecret};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Measure {
    submits: Duration,
    runs: Duration,
}

async fn measure(secrets: usize, runs: usize) -> Result<Measure, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = opsconductor::open_store(&url).await?;
    let ring = Keyring::from_keys([(1, KeyBytes::generate()?)], KeySource::Env)?;
    let oc = Conductor::builder()
        .store_arc(store)
        .executor(opsconductor::LocalExecutor::default())
        .keyring(ring)
        .build()
        .await?;
    let me = Actor::new("bench");
    for i in 0..secrets {
        oc.set_secret(
            SetSecret {
                name: format!("secret-{i}"),
                kind: None,
                description: None,
                value: format!("value-{i}-{}", opsconductor::RunId::new().0.simple()).into_bytes(),
            },
            &me,
        )
        .await?;
    }
    // One untimed run start warms the database and any cache.
    oc.submit_exec(ExecRequest::new("true"), &me).await?;
    let start = Instant::now();
    let mut ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        ids.push(oc.submit_exec(ExecRequest::new("true"), &me).await?.id);
    }
    let submits = start.elapsed();
    let start = Instant::now();
    oc.start_workers(1);
    for id in ids {
        let r = oc.wait(id, &opsconductor::Actor::new("test")).await?;
        if r.status != RunStatus::Succeeded {
            return Err(format!("run {id} ended {}", r.status).into());
        }
    }
    let runs_took = start.elapsed();
    oc.shutdown().await;
    Ok(Measure {
        submits,
        runs: runs_took,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = env_usize("OPSC_BENCH_SECRETS", 200);
    let runs = env_usize("OPSC_BENCH_RUNS", 200);
    println!(
        "OpsConductor run starts with stored secrets: {runs} runs of `true` (SQLite, local)\n"
    );
    let none = measure(0, runs).await?;
    let many = measure(n, runs).await?;
    let rate = |d: Duration| runs as f64 / d.as_secs_f64();
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "",
        "0 secrets",
        format!("{n} secrets"),
        "ratio"
    );
    for (what, a, b) in [
        ("secret loads/s (submit_exec)", none.submits, many.submits),
        ("whole runs/s (1 worker)", none.runs, many.runs),
    ] {
        println!(
            "{:<40} {:>12.0} {:>12.0} {:>7.2}x",
            what,
            rate(a),
            rate(b),
            rate(b) / rate(a)
        );
    }
    println!("\nratio = runs/s with {n} stored secrets ÷ runs/s with none.");
    Ok(())
}
