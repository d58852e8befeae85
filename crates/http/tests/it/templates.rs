//! Templates over HTTP: bombs are a 422 naming the step and target and do
//! not stall the server; values stay literal inside every quoting context of
//! a real run (local target, real `sh`); contexts without a safe escape and
//! `| safe` are refused at apply with the line and column.

use crate::common;

use std::time::{Duration, Instant};

use common::{Backend, Srv, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

async fn apply(srv: &Srv, yaml: &str) -> reqwest::Response {
    srv.req(Method::POST, "/api/v1/apply", Some(&srv.admin))
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .expect("apply")
}

/// Three template bombs in flight at once: each is refused with 422 naming
/// the step and target, and `/health` keeps answering within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn template_bombs_are_422_and_do_not_stall_health() {
    let srv = Srv::start(Backend::Sqlite).await;
    srv.job(
        "kind: Job\nname: bomb\ntargets: [local]\nsteps:\n  - name: loops\n    exec: \"{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}echo hi\"\n",
    )
    .await;
    srv.job("kind: Job\nname: big\ntargets: [local]\nsteps:\n  - name: huge\n    exec: \"echo {{ 'x' * 50000000 }}\"\n").await;
    // Baseline /health latency.
    let health = |srv: &Srv| {
        let r = srv.req(Method::GET, "/health", None);
        async move {
            let t = Instant::now();
            let s = r.send().await.expect("health").status();
            assert!(s.is_success());
            t.elapsed()
        }
    };
    let mut base = Duration::ZERO;
    for _ in 0..5 {
        base = base.max(health(&srv).await);
    }
    let submit = |job: &'static str| {
        let r = srv
            .req(Method::POST, "/api/v1/runs", Some(&srv.admin))
            .json(&json!({"job": job}));
        async move {
            let t = Instant::now();
            let r = r.send().await.expect("submit");
            (t.elapsed(), r)
        }
    };
    let bombs =
        async { futures::future::join3(submit("bomb"), submit("bomb"), submit("big")).await };
    let probe = async {
        let mut worst = Duration::ZERO;
        let mut n = 0;
        // Probe while the bombs are in flight (they take a while in debug builds).
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..10 {
            worst = worst.max(health(&srv).await);
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (worst, n)
    };
    let (((t1, r1), (t2, r2), (t3, r3)), (worst, n)) = tokio::join!(bombs, probe);
    println!(
        "bombs answered in {t1:?}, {t2:?}, {t3:?}; /health baseline {base:?}, worst of {n} during the bombs {worst:?}"
    );
    for (r, step, what) in [
        (r1, "loops", "steps of work"),
        (r2, "loops", "steps of work"),
        (r3, "huge", "larger than"),
    ] {
        let body = expect_error(r, 422, "validation").await;
        let text = body.to_string();
        assert!(
            text.contains(&format!("({step}) on target 'local'")) && text.contains(what),
            "{text}"
        );
    }
    // A blocked reactor would hold /health for about as long as a bomb; a
    // busy machine slows both, so the bound scales with the bombs.
    let bound = Duration::from_millis(100).max(t1.min(t2).min(t3) / 2);
    assert!(
        worst < base + bound,
        "/health took {worst:?} during the bombs (baseline {base:?}, bound {bound:?})"
    );
    srv.stop().await;
}

/// The reproducers, run for real: a value inside double quotes, in
/// an unquoted heredoc of a bash script, and in a Python string prints
/// itself and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_stay_literal_in_real_runs() {
    let srv = Srv::start(Backend::Sqlite).await;
    let canary = srv.dir.path().join("pwned");
    let x = format!(
        "$(touch {c}) `touch {c}` \"; touch {c}; \"\nEOF\ntouch {c}\n'''",
        c = canary.display()
    );
    srv.job(
        "kind: Job\nname: quoting\ntargets: [local]\nparams:\n  type: object\n  properties:\n    x: {type: string}\nsteps:\n  - name: dq\n    exec: 'printf \"%s|\" \"value: {{ params.x }}\"'\n  - name: heredoc\n    script: |\n      cat <<EOF\n      v={{ params.x }}\n      EOF\n    interpreter: bash\n  - name: py\n    interpreter: python3\n    script: |\n      print(f'p={{ params.x }}', end='|')\n",
    )
    .await;
    let id = srv.submit("quoting", json!({"x": x})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let logs: Value = srv
        .get(&format!("/api/v1/runs/{id}/logs"), &srv.admin)
        .await
        .json()
        .await
        .expect("logs");
    let text: String = logs
        .as_array()
        .or_else(|| logs["chunks"].as_array())
        .or_else(|| logs["items"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|c| c["data"].as_str().or_else(|| c["text"].as_str()))
                .collect()
        })
        .unwrap_or_else(|| logs.to_string());
    assert!(text.contains(&format!("value: {x}|")), "{text}");
    assert!(text.contains(&format!("v={x}\n")), "{text}");
    assert!(text.contains(&format!("p={x}|")), "{text}");
    assert!(!canary.exists(), "the canary was created");
    srv.stop().await;
}

/// Unescapable contexts and `| safe` are refused at apply: 422 with the
/// step, the line and the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_contexts_are_refused_at_apply() {
    let srv = Srv::start(Backend::Sqlite).await;
    for (yaml, expect) in [
        (
            "kind: Job\nname: t1\nsteps:\n  - name: s\n    script: |\n      echo ok\n      echo `echo {{ params.x }}`\n",
            "line 2, column 12",
        ),
        (
            "kind: Job\nname: t2\nsteps:\n  - name: s\n    exec: 'echo {{ params.x | safe }}'\n",
            "| safe",
        ),
        (
            "kind: Job\nname: t3\nsteps:\n  - name: s\n    interpreter: python3\n    script: \"x = r'{{ params.x }}'\"\n",
            "raw string",
        ),
    ] {
        let body = expect_error(apply(&srv, yaml).await, 422, "validation").await;
        let text = body.to_string();
        assert!(text.contains(expect) && text.contains("steps[0]"), "{text}");
    }
    srv.stop().await;
}
