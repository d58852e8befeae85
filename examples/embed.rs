//! Run with: `cargo run --example embed`
//!
//! Embeds OpsConductor in a Rust program: defines a two-step job with a typed
//! parameter, runs it on the local host, streams its output live and reads
//! the per-step results — the public API end to end, nothing else running.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

use futures::StreamExt;
use opsconductor::{Actor, ApplyBatch, RunStatus, SubmitRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A throwaway SQLite database; a real program would keep one.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("embed.db").display());
    let oc = opsconductor::open(&url).await?;

    // Definitions come from YAML (the CLI's format) or straight from Rust types.
    let batch: ApplyBatch = opsconductor::spec::parse_str(
        r#"
kind: Job
name: greet
params:
  type: object
  properties: { who: { type: string } }
  required: [who]
steps:
  - name: hello
    exec: echo "hello, "{{ params.who }}
  - name: details
    script: |
      echo "running as $(id -un) in $OPSC_JOB"
      echo "a warning" >&2
"#,
        "embedded",
        None,
    )?;
    let me = Actor::new("embed-example");
    oc.apply(&batch, &me).await?;

    // Submit, then execute in this process while following the output.
    let params = serde_json::json!({"who": "world; rm -rf / (just a string)"});
    let run = oc
        .submit(SubmitRequest::new("greet").params(params), &me)
        .await?;
    let worker = tokio::spawn({
        let oc = oc.clone();
        async move { oc.execute(run.id).await }
    });
    let mut logs = oc.follow(run.id, 0, &me).await?;
    while let Some(chunk) = logs.next().await {
        let chunk = chunk?;
        print!(
            "[{} {}] {}",
            chunk.target.unwrap_or_default(),
            chunk.stream.as_str(),
            String::from_utf8_lossy(&chunk.data)
        );
    }
    let done = worker.await??;

    let detail = oc.run(done.id, &me).await?;
    for r in &detail.results {
        println!(
            "step {} on {}: {} (exit {:?})",
            r.step, r.target, r.status, r.exit_code
        );
    }
    println!("run {} {}", done.id, done.status);
    if done.status != RunStatus::Succeeded {
        return Err(format!("run ended {}", done.status).into());
    }
    Ok(())
}
