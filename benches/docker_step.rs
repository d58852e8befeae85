//! Run with: `cargo bench --features docker --bench docker_step` (set
//! `OPSC_BENCH_STEPS`, default 30). Needs a running Docker engine and its
//! CLI; the test image `opsc-test/busybox:1` is built when missing.
//!
//! Per-step overhead of the Docker executor — create, attach, start, wait,
//! inspect and remove a fresh container running `true`, with its default
//! isolation (memory/CPU/pids limits, no network, read-only root, workspace
//! volume, init) — side by side with the peer a user would otherwise run:
//! `docker run --rm opsc-test/busybox:1 true` through the Docker CLI, plain
//! and with the executor's isolation flags. The variants alternate step by
//! step so engine load affects them alike. Prints the mean and median
//! milliseconds per step of each and the ratios.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

#[path = "../crates/executors/tests/it/support/docker.rs"]
mod docker_support;

use std::collections::BTreeMap;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use opsconductor::DockerExecutor;
use opsconductor::executor::{Command, Executor, OutputSink, StepContext};
use opsconductor::model::{Connection, Target};

fn cli_step(args: &[&str]) -> Result<Duration, String> {
    let start = Instant::now();
    let out = Process::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(start.elapsed())
}

fn stats(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len().max(1) as f64;
    let median = samples.get(samples.len() / 2).map_or(0.0, |d| ms(*d));
    (mean, median)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize = std::env::var("OPSC_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(1);
    let image = tokio::task::spawn_blocking(docker_support::ensure_test_image).await??;
    let engine = docker_support::engine_version()?;

    let mut target = Target::local();
    target.name = "bench-box".into();
    target.connection = Connection::Docker {
        image: image.clone(),
        limits: BTreeMap::new(),
    };
    let exec = DockerExecutor::new();
    let session = exec.connect(&target, None).await?;
    let step = || async {
        let (sink, mut rx) = OutputSink::channel(16);
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let ctx = StepContext::new(target.clone());
        let start = Instant::now();
        let status = session
            .exec(&ctx, &Command::Shell("true".into()), &sink)
            .await;
        let took = start.elapsed();
        drop(sink);
        let _ = drain.await;
        match status {
            Ok(s) if s.success() => Ok(took),
            Ok(s) => Err(format!("`true` ended with {s}")),
            Err(e) => Err(format!("exec failed: {e}")),
        }
    };
    let plain = ["run", "--rm", &image, "true"];
    let isolated = [
        "run",
        "--rm",
        "--memory",
        "512m",
        "--memory-swap",
        "512m",
        "--cpus",
        "1",
        "--pids-limit",
        "256",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
        "--user",
        "65534:65534",
        "--init",
        "--log-driver",
        "none",
        &image,
        "true",
    ];

    // Warm-up: the workspace volume, the engine's caches, the CLI binary.
    step().await?;
    cli_step(&plain)?;
    cli_step(&isolated)?;

    let (mut ours, mut cli, mut cli_iso) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..steps {
        ours.push(step().await?);
        cli.push(tokio::task::block_in_place(|| cli_step(&plain))?);
        cli_iso.push(tokio::task::block_in_place(|| cli_step(&isolated))?);
    }
    session.close().await;

    let (ours_mean, ours_median) = stats(&mut ours);
    let (cli_mean, cli_median) = stats(&mut cli);
    let (iso_mean, iso_median) = stats(&mut cli_iso);
    println!(
        "Docker step overhead: `true` in a fresh container, {steps} steps each, engine {engine}"
    );
    println!("  {:<52} {:>9} {:>9}", "", "mean ms", "median ms");
    println!(
        "  {:<52} {ours_mean:>9.1} {ours_median:>9.1}",
        "OpsConductor DockerExecutor (create+start+wait+rm)"
    );
    println!(
        "  {:<52} {cli_mean:>9.1} {cli_median:>9.1}",
        "docker run --rm IMAGE true (CLI)"
    );
    println!(
        "  {:<52} {iso_mean:>9.1} {iso_median:>9.1}",
        "docker run --rm + the executor's isolation flags"
    );
    println!(
        "  ratio executor / CLI: {:.2} (mean), {:.2} (median); executor / isolated CLI: {:.2} (mean)",
        ours_mean / cli_mean,
        ours_median / cli_median,
        ours_mean / iso_mean
    );
    Ok(())
}
