//! The lease under load, on SQLite and PostgreSQL: heartbeats are never
//! starved by output or by step count (a healthy worker never "rescues" its
//! own runs), and a panic inside a run's execution never leaves it `running`.
//! Real stores, the real local executor, real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use opsconductor::executor::{
    Capabilities, Command, ExecError, Executor, ExitStatus, FileSpec, OutputSink, Probe, Session,
    StepContext,
};
use opsconductor::{
    Actor, Conductor, Config, RunStatus, StepStatus, Stream, SubmitRequest, Target,
};

/// The lease of these tests: short, so that three leases pass quickly.
const LEASE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Env {
    oc: Conductor,
    _dir: tempfile::TempDir,
}

async fn engine(backend: Backend, extra: Option<Arc<dyn Executor>>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("t.db").display()),
        Backend::Postgres => opsconductor_store::testing::pg::fresh_database().await,
    };
    let store = opsconductor::open_store(&url).await.unwrap();
    let ring = opsconductor::secrets::Keyring::create_file(&dir.path().join("master.key")).unwrap();
    let config = Config {
        cancel_poll: Duration::from_millis(100),
        follow_poll: Duration::from_millis(50),
        poll: Duration::from_millis(100),
        ..Config::default()
    };
    let mut b = Conductor::builder()
        .store_arc(store)
        .keyring(ring)
        .config(config)
        .lease(LEASE)
        .executor(opsconductor::LocalExecutor::default());
    if let Some(e) = extra {
        b = b.executor_arc(e);
    }
    Env {
        oc: b.build().await.unwrap(),
        _dir: dir,
    }
}

fn me() -> Actor {
    Actor::new("tester")
}

async fn apply(oc: &Conductor, yaml: &str) {
    let batch = opsconductor::spec::parse_str(yaml, "lease.yaml", None).unwrap();
    oc.apply(&batch, &me()).await.unwrap();
}

async fn stdout(oc: &Conductor, id: opsconductor::RunId) -> String {
    let mut s = oc.follow(id, 0, &me()).await.unwrap();
    let mut out = Vec::new();
    let mut last = 0;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        assert_eq!(c.seq, last + 1, "log chunks are numbered without gaps");
        last = c.seq;
        if c.stream == Stream::Stdout {
            out.extend_from_slice(&c.data);
        }
    }
    String::from_utf8(out).unwrap()
}

/// (a) Five runs print at least 1,000 lines/s each for three leases: each
/// ends `succeeded` on attempt 1 (its own worker never lost it) with every
/// line stored, in order.
async fn chatty_runs_keep_their_lease(backend: Backend) {
    let env = engine(backend, None).await;
    // Bursts of 150 numbered lines every 50 ms until 3 leases have passed.
    let secs = LEASE.as_secs() * 3;
    apply(
        &env.oc,
        &format!(
            r#"
kind: Job
name: chatty
steps:
  - exec: |
      end=$(( $(date +%s%N) + {secs}000000000 )); i=0
      while [ "$(date +%s%N)" -lt "$end" ]; do seq $((i * 150 + 1)) $((i * 150 + 150)); i=$((i + 1)); sleep 0.05; done
"#
        ),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            env.oc
                .submit(SubmitRequest::new("chatty"), &me())
                .await
                .unwrap()
                .id,
        );
    }
    env.oc.start_workers(5);
    let mut rates = Vec::new();
    for id in &ids {
        let run = tokio::time::timeout(
            Duration::from_secs(60),
            env.oc.wait(*id, &opsconductor::Actor::new("test")),
        )
        .await
        .expect("the run ends")
        .unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
        assert_eq!(run.attempt, 1, "the run was rescued from a live worker");
        let out = stdout(&env.oc, *id).await;
        let lines: Vec<&str> = out.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                *l,
                (i + 1).to_string(),
                "line {} out of order or lost",
                i + 1
            );
        }
        let took = (run.finished_at.unwrap() - run.started_at.unwrap())
            .to_std()
            .unwrap();
        assert!(took >= LEASE * 3, "the run lasted only {took:?}");
        let rate = lines.len() as f64 / took.as_secs_f64();
        rates.push(rate as u64);
        assert!(rate >= 1000.0, "only {rate:.0} lines/s were printed");
    }
    eprintln!("lines/s held per run: {rates:?}");
    env.oc.shutdown().await;
}

/// (b) A long job of many short steps (many leases of step results and
/// wake-ups) ends `succeeded` on attempt 1 with every result: the issue's
/// 10,000 steps. The cost of a step must not grow with the job's length
/// (`benches/steps.rs` measures it at 1,000, 3,000 and 10,000 steps); this
/// prints the time per step it saw.
async fn many_steps_keep_their_lease(backend: Backend) {
    // 3,000 in the test command, to keep CI short (about 10 ms a step in a
    // debug build on 2 cores, flat in the job's length);
    // `OPSC_TEST_STEPS=10000` runs the issue's 10,000.
    let steps: usize = std::env::var("OPSC_TEST_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    #[allow(
        non_snake_case,
        reason = "kept the constant's name for the messages below"
    )]
    let STEPS = steps;
    let env = engine(backend, None).await;
    let mut yaml = String::from("kind: Job\nname: many\nsteps:\n");
    for _ in 0..STEPS {
        yaml.push_str("  - exec: \"true\"\n");
    }
    apply(&env.oc, &yaml).await;
    let run = env
        .oc
        .submit(SubmitRequest::new("many"), &me())
        .await
        .unwrap();
    let started = Instant::now();
    env.oc.start_workers(1);
    // Generous: a debug build on a shared machine; the bench measures.
    let done = tokio::time::timeout(
        Duration::from_secs(1800),
        env.oc.wait(run.id, &opsconductor::Actor::new("test")),
    )
    .await
    .expect("the run ends")
    .unwrap();
    let took = started.elapsed();
    eprintln!(
        "{STEPS} steps took {took:?}: {:.2} ms/step",
        took.as_secs_f64() * 1000.0 / STEPS as f64
    );
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert_eq!(done.attempt, 1, "the run was rescued from a live worker");
    let d = env.oc.run(run.id, &me()).await.unwrap();
    assert_eq!(d.results.len(), STEPS);
    assert!(
        d.results
            .iter()
            .all(|r| r.status == StepStatus::Succeeded && r.attempt == 1)
    );
    env.oc.shutdown().await;
}

/// An executor for `local` targets whose steps panic (a bug in an executor).
struct Panicking;

struct PanickingSession;

#[async_trait::async_trait]
impl Session for PanickingSession {
    async fn exec(
        &self,
        _ctx: &StepContext,
        _cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        out.write(Stream::Stdout, "about to panic\n").await;
        panic!("injected executor panic");
    }
    async fn copy(&self, _ctx: &StepContext, _file: &FileSpec) -> Result<(), ExecError> {
        panic!("injected executor panic");
    }
}

#[async_trait::async_trait]
impl Executor for Panicking {
    fn kind(&self) -> &'static str {
        "local"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn connect(
        &self,
        _target: &Target,
        _cred: Option<&opsconductor::executor::Credential>,
    ) -> Result<Box<dyn Session>, ExecError> {
        Ok(Box::new(PanickingSession))
    }
    async fn check(
        &self,
        _target: &Target,
        _cred: Option<&opsconductor::executor::Credential>,
    ) -> Result<Probe, ExecError> {
        Err(ExecError::Connect("test executor".into()))
    }
}

/// A panic inside a run's execution (here: its executor) ends the run
/// `failed` with the panic message, its step `failed`, and a follower returns.
async fn a_panicking_executor_fails_the_run_and_followers_return(backend: Backend) {
    let env = engine(backend, Some(Arc::new(Panicking))).await;
    apply(
        &env.oc,
        "kind: Job\nname: boom\nsteps:\n  - exec: echo hi\n  - exec: echo never\n",
    )
    .await;
    let run = env
        .oc
        .submit(SubmitRequest::new("boom"), &me())
        .await
        .unwrap();
    let follower = {
        let oc = env.oc.clone();
        tokio::spawn(async move { stdout(&oc, run.id).await })
    };
    env.oc.start_workers(1);
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        env.oc.wait(run.id, &opsconductor::Actor::new("test")),
    )
    .await
    .expect("a waiter returns")
    .unwrap();
    assert_eq!(done.status, RunStatus::Failed);
    let error = done.error.unwrap_or_default();
    assert!(error.contains("injected executor panic"), "{error}");
    let out = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower returns")
        .unwrap();
    assert!(out.contains("about to panic"), "{out}");
    let d = env.oc.run(run.id, &me()).await.unwrap();
    assert_eq!(d.results.len(), 1, "{:?}", d.results);
    assert_eq!(d.results[0].status, StepStatus::Failed);
    // The heartbeat stopped with the run: its lease is gone, and the
    // worker pool is still alive for other runs.
    assert!(d.run.lease_until.is_none());
    assert_eq!(env.oc.worker_pools_running(), 1);
    env.oc.shutdown().await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

on_both!(
    chatty_runs_keep_their_lease,
    many_steps_keep_their_lease,
    a_panicking_executor_fails_the_run_and_followers_return,
);
