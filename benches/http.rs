//! Run with: `cargo bench --bench http` (needs `wrk`: `apt-get install wrk`).
//!
//! The REST API under load on loopback: requests per second and latency
//! percentiles of `GET /api/v1/runs/{id}` and `POST /api/v1/runs`, each with
//! an authenticated client (an access JWT: every request verifies the token
//! and asks the store whether the login still stands), measured by `wrk`;
//! and the server's resident memory at idle and under load.
//!
//! The server runs in this process (SQLite file in a temporary directory,
//! no workers, so submitted runs queue up and only the API is measured);
//! `wrk` is a separate process on the same machine — on a small machine the
//! two compete for the CPUs, which the numbers include.
//! `BENCH_SECS` (default 10) sets each measurement's length,
//! `BENCH_CONNECTIONS` (default 32) the concurrent connections.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One wrk measurement.
struct Measure {
    rps: f64,
    p50: String,
    p99: String,
    requests: u64,
    non_2xx: u64,
    peak_rss_kib: u64,
}

async fn wrk(
    url: &str,
    token: &str,
    script: Option<&std::path::Path>,
    secs: u64,
    conns: u32,
) -> Result<Measure> {
    let peak = Arc::new(AtomicU64::new(rss_kib()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
    ])
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    let rps: f64 = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let non_2xx = text
        .lines()
        .find(|l| l.trim_start().starts_with("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Measure {
        rps,
        p50: find("50%").unwrap_or_default(),
        p99: find("99%").unwrap_or_default(),
        requests,
        non_2xx,
        peak_rss_kib: peak.load(Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("this benchmark needs wrk: apt-get install wrk");
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let conns: u32 = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let dir = tempfile::tempdir()?;
    let config = opsconductor_http::ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        workers: 0,
        admin_password: Some("benchmark password".into()),
        api_per_user_per_minute: 0,
        login_per_account_per_minute: 0,
        login_per_ip_per_minute: 0,
        ..Default::default()
    };
    let server = opsconductor_http::start(config).await?;
    let base = server.url();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "benchmark password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("access token")?
        .to_string();
    let r = client
        .post(format!("{base}/api/v1/apply"))
        .bearer_auth(&token)
        .header("content-type", "application/yaml")
        .body("kind: Job\nname: bench\nparams:\n  type: object\n  properties:\n    v: {type: string, default: x}\nsteps:\n  - name: one\n    exec: echo {{ params.v }}\n")
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("apply: {}", r.text().await?);
    }
    let run: Value = client
        .post(format!("{base}/api/v1/runs"))
        .bearer_auth(&token)
        .json(&json!({"job": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let id = run["id"].as_str().context("run id")?.to_string();
    // Warm up, then idle memory.
    for _ in 0..200 {
        client
            .get(format!("{base}/api/v1/runs/{id}"))
            .bearer_auth(&token)
            .send()
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib();

    let get = wrk(
        &format!("{base}/api/v1/runs/{id}"),
        &token,
        None,
        secs,
        conns,
    )
    .await?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"job\": \"bench\", \"params\": {\"v\": \"load\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    let post = wrk(
        &format!("{base}/api/v1/runs"),
        &token,
        Some(&script),
        secs,
        conns,
    )
    .await?;
    let after = rss_kib();

    println!(
        "\nREST API on loopback: {conns} connections, {secs}s each, wrk -t2; server in-process (SQLite, no workers)"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>8} {:>14}",
        "endpoint", "req/s", "p50", "p99", "requests", "non-2xx", "peak RSS MiB"
    );
    for (name, m) in [
        ("GET  /api/v1/runs/{id}", &get),
        ("POST /api/v1/runs", &post),
    ] {
        println!(
            "{:<28} {:>10.0} {:>10} {:>10} {:>10} {:>8} {:>14.1}",
            name,
            m.rps,
            m.p50,
            m.p99,
            m.requests,
            m.non_2xx,
            m.peak_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "server RSS: idle {:.1} MiB, after load {:.1} MiB",
        idle as f64 / 1024.0,
        after as f64 / 1024.0
    );
    if get.non_2xx > 0 || post.non_2xx > 0 {
        bail!("some requests failed (non-2xx): the numbers above are not valid");
    }
    server.shutdown().await?;
    Ok(())
}
