//! End-to-end tests of the engine through the public API: the real SQLite
//! store, the real local executor, real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::time::Duration;

use futures::StreamExt;
use opsconductor::store::{Claim, RunFilter};
use opsconductor::{
    Actor, Conductor, Config, Error, ExecRequest, Run, RunDetail, RunId, RunStatus, StepResult,
    StepStatus, Stream, SubmitRequest,
};
use serde_json::json;
use tempfile::TempDir;

struct Env {
    oc: Conductor,
    /// The database under the engine, opened on its own: tests play dead
    /// workers and rescuers on it, which the engine never lets front ends do.
    store: std::sync::Arc<dyn opsconductor::store::Store>,
    dir: TempDir,
}

async fn engine() -> Env {
    engine_with(|_| {}).await
}

async fn engine_with(tune: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let mut config = Config {
        cancel_poll: Duration::from_millis(100),
        follow_poll: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        ..Config::default()
    };
    tune(&mut config);
    let oc = opsconductor::builder(&url)
        .await
        .unwrap()
        .config(config)
        .build()
        .await
        .unwrap();
    let store = opsconductor::open_store(&url).await.unwrap();
    Env { oc, store, dir }
}

fn me() -> Actor {
    Actor::new("tester")
}

impl Env {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn apply(&self, yaml: &str) {
        let batch = opsconductor::spec::parse_str(yaml, "test.yaml", None).unwrap();
        self.oc.apply(&batch, &me()).await.unwrap();
    }

    async fn run(&self, job: &str, params: serde_json::Value) -> RunDetail {
        let run = self
            .oc
            .submit(SubmitRequest::new(job).params(params), &me())
            .await
            .unwrap();
        let done = self.oc.execute(run.id).await.unwrap();
        self.oc.run(done.id, &me()).await.unwrap()
    }

    async fn logs(&self, id: RunId) -> Vec<opsconductor::LogChunk> {
        let mut s = self.oc.follow(id, 0, &me()).await.unwrap();
        let mut out = vec![];
        while let Some(c) = s.next().await {
            out.push(c.unwrap());
        }
        out
    }

    async fn stdout(&self, id: RunId) -> String {
        self.logs(id)
            .await
            .into_iter()
            .filter(|c| c.stream == Stream::Stdout)
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }
}

fn result(d: &RunDetail, step: u32, target: &str) -> StepResult {
    d.results
        .iter()
        .find(|r| r.step == step && r.target == target)
        .cloned()
        .unwrap_or_else(|| panic!("no result for step {step} on {target}: {:?}", d.results))
}

/// True if some process has `marker` in its command line.
fn process_alive(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).contains(marker))
            .unwrap_or(false)
    })
}

fn marker() -> String {
    // A fractional sleep length unique to this test: `sleep 30.4821`.
    let n = RunId::new().0.as_u128() % 10_000;
    format!("30.{n:04}")
}

async fn wait_until<F: Fn(&RunDetail) -> bool>(
    oc: &Conductor,
    id: RunId,
    what: &str,
    f: F,
) -> RunDetail {
    for _ in 0..200 {
        let d = oc.run(id, &me()).await.unwrap();
        if f(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_step_job_records_results_and_ordered_output() {
    let env = engine().await;
    env.apply(
        r#"
kind: Job
name: two
steps:
  - exec: echo one; echo err >&2
  - script: |
      echo two
      echo three
"#,
    )
    .await;
    let d = env.run("two", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(d.run.job_version, Some(1));
    assert_eq!(d.run.attempt, 1);
    assert_eq!(result(&d, 0, "local").status, StepStatus::Succeeded);
    assert_eq!(result(&d, 1, "local").exit_code, Some(0));
    let logs = env.logs(d.run.id).await;
    let seqs: Vec<u64> = logs.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        (1..=logs.len() as u64).collect::<Vec<_>>(),
        "gapless, ordered"
    );
    assert_eq!(env.stdout(d.run.id).await, "one\ntwo\nthree\n");
    assert!(
        logs.iter()
            .any(|c| c.stream == Stream::Stderr && c.data == b"err\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_streams_while_the_run_is_going_and_late_followers_get_everything() {
    let env = engine().await;
    let run = env
        .oc
        .submit_exec(ExecRequest::new("echo first; sleep 2; echo second"), &me())
        .await
        .unwrap();
    let exec = tokio::spawn({
        let oc = env.oc.clone();
        async move { oc.execute(run.id).await }
    });
    let mut s = env.oc.follow(run.id, 0, &me()).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"first\n");
    // The first chunk arrived while the command was still sleeping.
    assert_eq!(
        env.oc.run(run.id, &me()).await.unwrap().run.status,
        RunStatus::Running
    );
    let rest: Vec<_> = s.collect().await;
    assert_eq!(rest.len(), 1);
    assert!(exec.await.unwrap().unwrap().status == RunStatus::Succeeded);

    // A follower that joins after the end gets the whole log; one that resumes gets the rest.
    assert_eq!(env.stdout(run.id).await, "first\nsecond\n");
    let mut resumed = env.oc.follow(run.id, 1, &me()).await.unwrap();
    assert_eq!(resumed.next().await.unwrap().unwrap().data, b"second\n");
    assert!(resumed.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_kills_the_whole_process_group() {
    let env = engine().await;
    let m = marker();
    let run = env
        .oc
        .submit_exec(
            ExecRequest::new(format!("sleep {m} & echo started; sleep {m}")),
            &me(),
        )
        .await
        .unwrap();
    let exec = tokio::spawn({
        let oc = env.oc.clone();
        async move { oc.execute(run.id).await }
    });
    let mut s = env.oc.follow(run.id, 0, &me()).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().data, b"started\n");
    assert!(process_alive(&format!("sleep {m}")));
    env.oc.cancel(run.id, &me()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), exec)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Cancelled);
    let d = env.oc.run(run.id, &me()).await.unwrap();
    assert_eq!(result(&d, 0, "local").status, StepStatus::Cancelled);
    assert!(
        !process_alive(&format!("sleep {m}")),
        "the background sleep survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_from_another_engine_on_the_same_database() {
    // Two engines on one file stand in for two processes: the canceller has
    // no in-process handle and the worker must notice through the store.
    let env = engine().await;
    let url = format!("sqlite://{}", env.path("t.db"));
    let other = opsconductor::open(&url).await.unwrap();
    let m = marker();
    let run = env
        .oc
        .submit_exec(ExecRequest::new(format!("sleep {m}")), &me())
        .await
        .unwrap();
    let exec = tokio::spawn({
        let oc = env.oc.clone();
        async move { oc.execute(run.id).await }
    });
    wait_until(&env.oc, run.id, "step running", |d| !d.results.is_empty()).await;
    other.cancel(run.id, &me()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), exec)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Cancelled);
    assert!(!process_alive(&format!("sleep {m}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_queued_run_never_runs_it() {
    let env = engine().await;
    let f = env.path("ran");
    let run = env
        .oc
        .submit_exec(ExecRequest::new(format!("touch {f}")), &me())
        .await
        .unwrap();
    let r = env.oc.cancel(run.id, &me()).await.unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    let done = env.oc.execute(run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Cancelled);
    assert!(!std::path::Path::new(&f).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_timeout_kills_the_process_and_times_out_the_run() {
    let env = engine().await;
    let m = marker();
    env.apply(&format!(
        r#"
kind: Job
name: slow
steps:
  - exec: sleep {m} & sleep {m}
    timeout: 1s
  - exec: echo never
"#
    ))
    .await;
    let d = env.run("slow", json!({})).await;
    assert_eq!(d.run.status, RunStatus::TimedOut);
    let r = result(&d, 0, "local");
    assert_eq!(r.status, StepStatus::TimedOut);
    assert!(r.error.unwrap().contains("step's time limit (1s)"));
    assert_eq!(result(&d, 1, "local").status, StepStatus::Skipped);
    assert!(!process_alive(&format!("sleep {m}")));
    let system: String = env
        .logs(d.run.id)
        .await
        .into_iter()
        .filter(|c| c.stream == Stream::System)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    assert!(system.contains("timed out"), "{system}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_timeout_stops_the_run() {
    let env = engine().await;
    env.apply(
        r#"
kind: Job
name: long
timeout: 1s
steps:
  - exec: sleep 0.2
  - exec: sleep 20
  - exec: echo never
"#,
    )
    .await;
    let d = env.run("long", json!({})).await;
    assert_eq!(d.run.status, RunStatus::TimedOut);
    assert_eq!(result(&d, 1, "local").status, StepStatus::TimedOut);
    assert!(d.run.error.unwrap().contains("time limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_on_error_keeps_going_and_failures_stop_the_target() {
    let env = engine().await;
    env.apply(
        r#"
kind: Job
name: tolerant
steps:
  - exec: exit 3
    continue_on_error: true
  - exec: echo after
---
kind: Job
name: strict
steps:
  - name: breaks
    exec: exit 4
  - exec: echo never
"#,
    )
    .await;
    let d = env.run("tolerant", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(result(&d, 0, "local").exit_code, Some(3));
    assert_eq!(result(&d, 0, "local").status, StepStatus::Failed);
    assert_eq!(result(&d, 1, "local").status, StepStatus::Succeeded);

    let d = env.run("strict", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(result(&d, 0, "local").exit_code, Some(4));
    assert_eq!(result(&d, 1, "local").status, StepStatus::Skipped);
    let err = d.run.error.unwrap();
    assert!(
        err.contains("breaks") && err.contains("local") && err.contains("exit code 4"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_across_targets_is_bounded() {
    let env = engine().await;
    let d = env.path("conc");
    std::fs::create_dir(&d).unwrap();
    let mut yaml = String::new();
    for i in 1..=6 {
        yaml.push_str(&format!("kind: Target\nname: t{i}\ntags: [many]\n---\n"));
    }
    yaml.push_str(&format!(
        r#"
kind: Job
name: fan
targets: tag:many
concurrency: 2
steps:
  - exec: touch {d}/run.$OPSC_TARGET; ls {d} | grep -c '^run\.' >> {d}/counts.$OPSC_TARGET; sleep 0.3; rm {d}/run.$OPSC_TARGET
"#
    ));
    env.apply(&yaml).await;
    let r = env.run("fan", json!({})).await;
    assert_eq!(r.run.status, RunStatus::Succeeded);
    assert_eq!(r.results.len(), 6);
    let mut max = 0;
    for i in 1..=6 {
        let c: u32 = std::fs::read_to_string(format!("{d}/counts.t{i}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        max = max.max(c);
    }
    assert!(
        (1..=2).contains(&max),
        "saw {max} targets at once with concurrency 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parameters_are_quoted_and_never_become_code() {
    let env = engine().await;
    let f = env.path("pwned");
    env.apply(
        r#"
kind: Job
name: q
params:
  type: object
  properties: { v: { type: string } }
steps:
  - exec: echo {{ params.v }}
  - script: |
      print({{ params.v }})
    interpreter: python3
  - exec: echo "$GREETING"
    env: { GREETING: "hi {{ params.v }}" }
"#,
    )
    .await;
    let hostile = format!("a'b\"c; touch {f}; $(touch {f}) `touch {f}`");
    let d = env.run("q", json!({ "v": hostile })).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert!(
        !std::path::Path::new(&f).exists(),
        "a parameter was executed"
    );
    assert_eq!(
        env.stdout(d.run.id).await,
        format!("{hostile}\n{hostile}\nhi {hostile}\n")
    );
}

/// `exec` lines are quoted as the target's executor says, because only it
/// knows which shell reads them: a WinRM target whose shell is
/// `powershell.exe` runs PowerShell, so a substitution is accepted (and
/// PowerShell-quoted); cmd.exe, the default, has no safe quoting, so the
/// same substitution is refused at submit. Nothing runs (no workers).
#[cfg(feature = "winrm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_quoting_comes_from_the_targets_executor() {
    let env = engine().await;
    env.apply(
        r#"
kind: Target
name: win-ps
connection: { type: winrm, host: 127.0.0.1, port: 9, auth: basic }
vars: { shell: powershell.exe }
---
kind: Target
name: win-cmd
connection: { type: winrm, host: 127.0.0.1, port: 9, auth: basic }
---
kind: Job
name: greet
params:
  type: object
  properties: { who: { type: string } }
steps:
  - exec: Write-Output {{ params.who }}
"#,
    )
    .await;
    let req = |target: &str| {
        SubmitRequest::new("greet")
            .params(json!({ "who": "it's me" }))
            .targets(target)
    };
    let queued = env.oc.submit(req("win-ps"), &me()).await.unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    let err = env.oc.submit(req("win-cmd"), &me()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Validation { field: Some(f), .. } if f.contains("win-cmd")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_limits_on_a_target_that_takes_none_are_refused_at_submit() {
    let env = engine().await;
    env.apply(
        r#"
kind: Job
name: roomy
steps:
  - exec: "true"
    limits: { memory: 1g }
"#,
    )
    .await;
    let err = env
        .oc
        .submit(SubmitRequest::new("roomy"), &me())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { field: Some(f), .. } if f.contains("steps[0]") && f.contains("limits") && f.contains("local")),
        "{err}"
    );
    assert!(err.to_string().contains("only docker targets"), "{err}");
    assert!(
        env.oc
            .runs(&RunFilter::default(), &me())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_submissions_queue_nothing() {
    let env = engine().await;
    env.apply(
        r#"
kind: Job
name: typed
params:
  type: object
  properties: { n: { type: integer, maximum: 5 } }
  required: [n]
steps:
  - exec: echo {{ params.n }} {{ params.missing }}
---
kind: Job
name: old
status: deprecated
steps:
  - exec: "true"
"#,
    )
    .await;
    let err = env
        .oc
        .submit(SubmitRequest::new("typed").params(json!({"n": 9})), &me())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { field: Some(f), .. } if f == "params.n"),
        "{err}"
    );
    let err = env
        .oc
        .submit(SubmitRequest::new("typed").params(json!({})), &me())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { field: Some(f), .. } if f == "params.n"),
        "{err}"
    );
    // The schema passes but a template names an undefined value: refused at submit.
    let err = env
        .oc
        .submit(SubmitRequest::new("typed").params(json!({"n": 1})), &me())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("steps[0]") && err.to_string().contains("undefined"),
        "{err}"
    );
    let err = env
        .oc
        .submit(SubmitRequest::new("nope"), &me())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }) && err.to_string().contains("typed"),
        "{err}"
    );
    let err = env
        .oc
        .submit(SubmitRequest::new("old"), &me())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let err = env
        .oc
        .submit(
            SubmitRequest::new("typed")
                .params(json!({"n": 1}))
                .targets("ghost"),
            &me(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    let err = env
        .oc
        .submit_exec(
            ExecRequest {
                targets: vec!["tag:none".into()],
                ..ExecRequest::new("true")
            },
            &me(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tag:none"), "{err}");
    assert!(
        env.oc
            .runs(&RunFilter::default(), &me())
            .await
            .unwrap()
            .is_empty(),
        "something was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_is_all_or_nothing_and_versions_jobs() {
    let env = engine().await;
    let good = "kind: Job\nname: a\nsteps:\n  - exec: echo 1\n";
    let bad = "kind: Target\nname: t1\n---\nkind: Job\nname: b\nsteps:\n  - exec: echo {{ oops\n";
    let mut batch = opsconductor::spec::parse_str(good, "good.yaml", None).unwrap();
    let b = opsconductor::spec::parse_str(bad, "bad.yaml", None).unwrap();
    batch.targets.extend(b.targets);
    batch.jobs.extend(b.jobs);
    let err = env.oc.apply(&batch, &me()).await.unwrap_err();
    assert!(
        err.to_string().contains("job 'b'") && err.to_string().contains("template"),
        "{err}"
    );
    assert!(
        env.oc
            .jobs(&opsconductor::Actor::new("test"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.oc
            .targets(&opsconductor::Actor::new("test"))
            .await
            .unwrap()
            .len(),
        1,
        "only the implicit local"
    );

    env.apply(good).await;
    let items = env
        .oc
        .apply(
            &opsconductor::spec::parse_str(good, "g", None).unwrap(),
            &me(),
        )
        .await
        .unwrap();
    assert_eq!(items[0].action, opsconductor::store::ApplyAction::Unchanged);
    env.apply(&good.replace("echo 1", "echo 2")).await;
    assert_eq!(
        env.oc
            .job("a", None, &opsconductor::Actor::new("test"))
            .await
            .unwrap()
            .version,
        2
    );
    let d = env.run("a", json!({})).await;
    assert_eq!(d.run.job_version, Some(2));
    assert_eq!(env.stdout(d.run.id).await, "2\n");
    // An older version can still be run on purpose.
    let run = env
        .oc
        .submit(
            SubmitRequest {
                version: Some(1),
                ..SubmitRequest::new("a")
            },
            &me(),
        )
        .await
        .unwrap();
    env.oc.execute(run.id).await.unwrap();
    assert_eq!(env.stdout(run.id).await, "1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_env_workdir_and_raw_commands() {
    let env = engine().await;
    let dest = env.path("out/file.txt");
    std::fs::create_dir(env.path("out")).unwrap();
    env.apply(&format!(
        r#"
kind: Job
name: files
params:
  type: object
  properties: {{ v: {{ type: string }} }}
steps:
  - copy:
      dest: {dest}
      content: "v={{{{ params.v }}}}\n"
      mode: "0640"
  - exec: pwd; echo "$OPSC_JOB $OPSC_TARGET"
    workdir: {dir}
"#,
        dir = env.path("out")
    ))
    .await;
    let d = env.run("files", json!({"v": "it's raw"})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "v=it's raw\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(
        env.stdout(d.run.id).await,
        format!("{}\nfiles local\n", env.path("out"))
    );

    // Ad-hoc commands are not templates: Go-template braces pass through.
    let run = env
        .oc
        .submit_exec(ExecRequest::new("echo '{{.Names}}'"), &me())
        .await
        .unwrap();
    env.oc.execute(run.id).await.unwrap();
    assert_eq!(env.stdout(run.id).await, "{{.Names}}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_pool_runs_each_run_exactly_once() {
    let env = engine().await;
    let log = env.path("ran.log");
    env.apply(&format!(
        "kind: Job\nname: once\nsteps:\n  - exec: echo $OPSC_RUN_ID >> {log}\n"
    ))
    .await;
    let mut ids = vec![];
    for _ in 0..20 {
        ids.push(
            env.oc
                .submit(SubmitRequest::new("once"), &me())
                .await
                .unwrap()
                .id,
        );
    }
    env.oc.start_workers(3);
    for id in &ids {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            env.oc.wait(*id, &opsconductor::Actor::new("test")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.status, RunStatus::Succeeded);
    }
    env.oc.shutdown().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20);
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 20, "a run executed twice");
}

/// Claims a run as a worker that then "dies" (never heartbeats), with a tiny lease.
async fn claim_as_dead_worker(env: &Env, id: RunId) -> Run {
    let claim = Claim {
        worker: "dead-host:1".into(),
        lease: Duration::from_millis(1),
        limit: 1,
        only: Some(id),
    };
    let runs = env.store.claim_queued(&claim).await.unwrap();
    assert_eq!(runs.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    runs.into_iter().next().unwrap()
}

/// Submits `job`, lets a worker that then "dies" finish step 0 and start
/// step 1, and waits for a live worker to rescue and end the run.
async fn rescue_after_a_crash_in_step_1(env: &Env, job: &str) -> (Run, Run) {
    let run = env.oc.submit(SubmitRequest::new(job), &me()).await.unwrap();
    let claimed = claim_as_dead_worker(env, run.id).await;
    put(env, &claimed, 0, StepStatus::Succeeded).await;
    put(env, &claimed, 1, StepStatus::Running).await;
    env.oc.start_workers(1);
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        env.oc.wait(run.id, &opsconductor::Actor::new("test")),
    )
    .await
    .unwrap()
    .unwrap();
    env.oc.shutdown().await;
    (run, done)
}

async fn put(env: &Env, run: &Run, step: u32, status: StepStatus) {
    let now = chrono::Utc::now();
    env.store
        .put_step_result(&StepResult {
            run_id: run.id,
            step,
            target: "local".into(),
            status,
            exit_code: (status == StepStatus::Succeeded).then_some(0),
            signal: None,
            error: None,
            attempt: run.attempt,
            started_at: now,
            finished_at: (status != StepStatus::Running).then_some(now),
            try_no: 1,
            tries: vec![],
            outputs: Default::default(),
            children: Vec::new(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescue_never_repeats_completed_or_non_idempotent_steps() {
    let env = engine().await;
    let log = env.path("steps.log");
    env.apply(&format!(
        r#"
kind: Job
name: careful
steps:
  - exec: echo one >> {log}
  - name: charge the card
    exec: echo two >> {log}
  - exec: echo three >> {log}
"#
    ))
    .await;
    let (run, done) = rescue_after_a_crash_in_step_1(&env, "careful").await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.attempt, 2);
    assert!(done.worker.as_deref().is_some_and(|w| w != "dead-host:1"));
    let d = env.oc.run(run.id, &me()).await.unwrap();
    assert_eq!(result(&d, 0, "local").status, StepStatus::Succeeded);
    assert_eq!(result(&d, 1, "local").status, StepStatus::Interrupted);
    assert_eq!(result(&d, 2, "local").status, StepStatus::Skipped);
    assert!(
        !std::path::Path::new(&log).exists(),
        "a step was executed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescue_reruns_an_interrupted_idempotent_step() {
    let env = engine().await;
    let log = env.path("steps.log");
    env.apply(&format!(
        r#"
kind: Job
name: safe
steps:
  - exec: echo one >> {log}
  - exec: echo two >> {log}
    idempotent: true
  - exec: echo three >> {log}
"#
    ))
    .await;
    let (_, done) = rescue_after_a_crash_in_step_1(&env, "safe").await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "two\nthree\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescue_continues_past_an_interrupted_step_that_may_fail() {
    let env = engine().await;
    let log = env.path("steps.log");
    env.apply(&format!(
        r#"
kind: Job
name: tolerant
steps:
  - exec: echo one >> {log}
  - name: send the report
    exec: echo two >> {log}
    continue_on_error: true
  - exec: echo three >> {log}
"#
    ))
    .await;
    let (run, done) = rescue_after_a_crash_in_step_1(&env, "tolerant").await;
    let d = env.oc.run(run.id, &me()).await.unwrap();
    // The interrupted step is not repeated (it is not idempotent) but the run
    // goes on, because that step was allowed to fail.
    assert_eq!(result(&d, 0, "local").status, StepStatus::Succeeded);
    assert_eq!(result(&d, 1, "local").status, StepStatus::Interrupted);
    assert_eq!(result(&d, 2, "local").status, StepStatus::Succeeded);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "three\n");
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_workers_run_is_rescued_while_the_queue_stays_busy() {
    // Short leases so the rescue happens within the test; the queue holds
    // far more work than the rescue interval, so a rescue that waited for
    // an idle queue would come only at the very end.
    let env = engine_with(|c| {
        c.lease = Duration::from_millis(900);
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    env.apply(
        r#"
kind: Job
name: slow
steps:
  - exec: sleep 0.2
"#,
    )
    .await;
    let stuck = env
        .oc
        .submit_exec(ExecRequest::new("true"), &me())
        .await
        .unwrap();
    claim_as_dead_worker(&env, stuck.id).await;
    let mut queued = Vec::new();
    for _ in 0..40 {
        queued.push(
            env.oc
                .submit(SubmitRequest::new("slow"), &me())
                .await
                .unwrap()
                .id,
        );
    }
    env.oc.start_workers(1);
    tokio::time::timeout(
        Duration::from_secs(60),
        env.oc.wait(stuck.id, &opsconductor::Actor::new("test")),
    )
    .await
    .unwrap()
    .unwrap();
    // When the stuck run was done, most of the queue was still waiting.
    let mut still_queued = 0;
    for id in &queued {
        if env.oc.run(*id, &me()).await.unwrap().run.status == RunStatus::Queued {
            still_queued += 1;
        }
    }
    env.oc.shutdown().await;
    assert!(
        still_queued >= 10,
        "the dead worker's run was only rescued after the queue drained ({still_queued} of 40 left)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_lost_its_lease_does_not_overwrite_the_run() {
    let env = engine().await;
    let run = env
        .oc
        .submit_exec(ExecRequest::new("true"), &me())
        .await
        .unwrap();
    let claimed = claim_as_dead_worker(&env, run.id).await;
    // Someone else rescues it and finishes it...
    let rescuer = Claim {
        worker: "rescuer".into(),
        lease: Duration::from_secs(30),
        limit: 1,
        only: None,
    };
    let taken = env
        .store
        .claim_expired(&rescuer, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert!(
        env.store
            .finish_run(run.id, "rescuer", 2, RunStatus::Succeeded, None)
            .await
            .unwrap()
    );
    // ...so the original owner's late writes are refused.
    assert!(
        !env.store
            .heartbeat(run.id, "dead-host:1", claimed.attempt, chrono::Utc::now())
            .await
            .unwrap()
    );
    assert!(
        !env.store
            .finish_run(
                run.id,
                "dead-host:1",
                claimed.attempt,
                RunStatus::Failed,
                None
            )
            .await
            .unwrap()
    );
    assert_eq!(
        env.oc.run(run.id, &me()).await.unwrap().run.status,
        RunStatus::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_ids_resolve_from_unique_prefixes() {
    let env = engine().await;
    let run = env
        .oc
        .submit_exec(ExecRequest::new("true"), &me())
        .await
        .unwrap();
    let full = run.id.to_string();
    assert_eq!(
        env.oc
            .resolve_run_id(&full, &opsconductor::Actor::new("test"))
            .await
            .unwrap(),
        run.id
    );
    assert_eq!(
        env.oc
            .resolve_run_id(&full[..20], &opsconductor::Actor::new("test"))
            .await
            .unwrap(),
        run.id
    );
    assert!(
        env.oc
            .resolve_run_id("zz", &opsconductor::Actor::new("test"))
            .await
            .is_err()
    );
    assert!(matches!(
        env.oc
            .resolve_run_id("ffffffff", &opsconductor::Actor::new("test"))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
}

// -- the engine is the only door ---------------------------------------------

fn viewer() -> Actor {
    Actor::user("vera", opsconductor::auth::Role::Viewer, "password")
}

fn operator() -> Actor {
    Actor::user("otto", opsconductor::auth::Role::Operator, "password")
}

fn forbidden<T: std::fmt::Debug>(r: opsconductor::Result<T>) -> bool {
    matches!(r, Err(Error::Forbidden(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_take_an_actor_checked_against_the_matrix() {
    let env = engine().await;
    env.apply("kind: Job\nname: talk\nsteps:\n  - exec: printf 'a\\nb\\nc\\n'\n")
        .await;
    env.apply("kind: Job\nname: talk\ndescription: v2\nsteps:\n  - exec: printf 'a\\nb\\nc\\n'\n")
        .await;
    let d = env.run("talk", json!({})).await;
    let id = d.run.id;
    let v = viewer();
    // A viewer reads runs, output, job versions, exports and the audit log...
    assert_eq!(env.oc.run(id, &v).await.unwrap().run.id, id);
    assert_eq!(
        env.oc.runs(&RunFilter::default(), &v).await.unwrap().len(),
        1
    );
    assert_eq!(env.oc.job_versions("talk", &v).await.unwrap().len(), 2);
    let yaml = env.oc.export_job("talk", Some(1), &v).await.unwrap();
    let back = opsconductor::spec::parse_str(&yaml, "export.yaml", None)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(
        back.jobs,
        vec![
            env.oc
                .job("talk", Some(1), &opsconductor::Actor::new("test"))
                .await
                .unwrap()
                .spec
        ]
    );
    let mut all = Vec::new();
    let mut logs = env.oc.logs(id, 0, &v).await.unwrap();
    while let Some(c) = logs.next().await {
        all.push(c.unwrap());
    }
    assert_eq!(all, env.logs(id).await);
    // ...in pages whose last one says it is complete.
    let first = env.oc.log_page(id, 0, 1, &v).await.unwrap();
    assert_eq!(first.chunks.len(), 1);
    assert!(!first.complete);
    let rest = env
        .oc
        .log_page(id, first.next_after, opsconductor::MAX_LOG_PAGE, &v)
        .await
        .unwrap();
    assert!(rest.complete);
    assert_eq!(rest.run_status, RunStatus::Succeeded);
    assert_eq!(first.chunks.len() + rest.chunks.len(), all.len());
    let too_big = env
        .oc
        .log_page(id, 0, opsconductor::MAX_LOG_PAGE + 1, &v)
        .await;
    assert!(matches!(too_big, Err(Error::Validation { field: Some(f), .. }) if f == "limit"));
    // Definitions, secret metadata, waiting and id prefixes are reads too...
    assert_eq!(env.oc.jobs(&v).await.unwrap().len(), 1);
    assert_eq!(env.oc.job("talk", None, &v).await.unwrap().version, 2);
    assert!(!env.oc.targets(&v).await.unwrap().is_empty());
    assert_eq!(env.oc.target("local", &v).await.unwrap().name, "local");
    assert!(env.oc.secrets(&v).await.unwrap().is_empty());
    assert_eq!(env.oc.wait(id, &v).await.unwrap().id, id);
    let prefix = id.to_string()[..8].to_string();
    assert_eq!(env.oc.resolve_run_id(&prefix, &v).await.unwrap(), id);
    // ...while host keys and master keys are not for viewers.
    assert!(forbidden(env.oc.offered_host_key("local", &v).await));
    assert!(forbidden(env.oc.key_versions(&v).await));
    // But a viewer may neither check nor remove a target; an operator may.
    env.apply("kind: Target\nname: spare\nconnection: {type: local}\n")
        .await;
    assert!(forbidden(env.oc.check_target("spare", &v).await));
    assert!(forbidden(env.oc.remove_target("spare", &v).await));
    let check = env.oc.check_target("spare", &operator()).await.unwrap();
    assert!(check.ok, "{check:?}");
    env.oc.remove_target("spare", &operator()).await.unwrap();
    let gone = env.oc.check_target("spare", &operator()).await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
    assert!(forbidden(
        env.oc
            .submit(SubmitRequest::new("talk"), &v)
            .await
            .map(|r| r.id)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_log_pages_backwards_through_the_engine() {
    let env = engine().await;
    for i in 0..7 {
        env.apply(&format!(
            "kind: Target\nname: t{i}\nconnection: {{type: local}}\n"
        ))
        .await;
        env.oc.remove_target(&format!("t{i}"), &me()).await.unwrap();
    }
    let v = viewer();
    // Every event, three at a time, newest first, no gaps or repeats.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let q = opsconductor::AuditQuery {
            object: None,
            before,
            limit: 3,
        };
        let page = env.oc.audit_page(&q, &v).await.unwrap();
        assert!(page.events.len() <= 3);
        seen.extend(page.events.iter().map(|e| e.seq));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let all = env.oc.audit_log(None, 1000, &v).await.unwrap();
    assert_eq!(seen, all.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(seen.len(), 14);
    // One object: its two events, one page at a time.
    let q = |before| opsconductor::AuditQuery {
        object: Some("target:t3".into()),
        before,
        limit: 1,
    };
    let p1 = env.oc.audit_page(&q(None), &v).await.unwrap();
    assert_eq!(p1.events[0].action, "target.delete");
    let p2 = env.oc.audit_page(&q(p1.next_before), &v).await.unwrap();
    assert_eq!(p2.events[0].action, "target.create");
    assert_eq!(p2.next_before, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rule_for_empty_batches_and_names_defined_twice() {
    let env = engine().await;
    let empty = opsconductor::ApplyBatch::default();
    for e in [
        env.oc.validate(&empty).unwrap_err(),
        env.oc.apply(&empty, &me()).await.unwrap_err(),
        env.oc.merge_sources(vec![]).unwrap_err(),
    ] {
        assert!(e.to_string().contains("nothing to apply"), "{e}");
    }
    let job = |name: &str| {
        opsconductor::spec::parse_str(
            &format!("kind: Job\nname: {name}\nsteps:\n  - exec: 'true'\n"),
            "x.yaml",
            None,
        )
        .unwrap()
    };
    let e = env
        .oc
        .merge_sources(vec![
            ("one.yaml".into(), job("a")),
            ("two.yaml".into(), job("a")),
        ])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("defined twice in this batch: in one.yaml and in two.yaml"),
        "{e}"
    );
    let mut twice = job("a");
    twice.jobs.extend(job("a").jobs);
    let e = env.oc.validate(&twice).unwrap_err();
    assert!(e.to_string().contains("defined twice in this batch"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_path_leaving_its_directory_names_its_field() {
    let env = engine().await;
    env.apply(
        "kind: Job\nname: put\nparams:\n  type: object\n  properties:\n    f: {type: string}\nsteps:\n  - name: write\n    copy:\n      dest: /srv/app/{{ params.f }}\n      content: x\n",
    )
    .await;
    let e = env
        .oc
        .submit(
            SubmitRequest::new("put").params(json!({"f": "../../etc/passwd"})),
            &me(),
        )
        .await
        .unwrap_err();
    match e {
        Error::Validation {
            field: Some(f),
            message,
        } => {
            assert_eq!(f, "steps[0].copy.dest");
            assert!(message.contains("step 'write'"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_outcomes_come_from_the_core() {
    let env = engine().await;
    env.apply(
        "kind: Job\nname: mixed\nsteps:\n  - name: soft\n    exec: exit 3\n    continue_on_error: true\n  - name: hard\n    exec: exit 7\n",
    )
    .await;
    let d = env.run("mixed", json!({})).await;
    let o = d.target_outcome("local", true);
    assert_eq!(o.status, Some(StepStatus::Failed));
    assert_eq!(o.exit_code, Some(7));
    assert_eq!(d.failing_result("local").map(|r| r.step), Some(1));
    assert!(o.duration.is_some());
}

/// `run_page` reads at most `MAX_RESULT_PAGE` results whatever a front end
/// asks: 0, one more than the cap and `usize::MAX` are refused naming
/// `limit`; pages within the cap walk every result.
#[tokio::test]
async fn run_pages_are_bounded_by_the_engine() {
    let env = engine().await;
    env.apply("kind: Job\nname: two\nsteps:\n  - exec: \"true\"\n  - exec: \"true\"\n")
        .await;
    let d = env.run("two", json!({})).await;
    let id = d.run.id;
    let v = viewer();
    let first = env.oc.run_page(id, None, 1, &v).await.unwrap();
    assert_eq!(first.results.len(), 1);
    let last = &first.results[0];
    let rest = env
        .oc
        .run_page(
            id,
            Some((last.step, last.target.as_str())),
            opsconductor::MAX_RESULT_PAGE,
            &v,
        )
        .await
        .unwrap();
    assert_eq!(rest.results.len(), 1);
    assert_eq!(rest.results[0].step, 1);
    for limit in [0, opsconductor::MAX_RESULT_PAGE + 1, usize::MAX] {
        let refused = env.oc.run_page(id, None, limit, &v).await;
        assert!(
            matches!(&refused, Err(Error::Validation { field: Some(f), .. }) if f == "limit"),
            "limit {limit}: {refused:?}"
        );
    }
}
