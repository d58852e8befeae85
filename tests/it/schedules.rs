//! Schedules through the engine with a manual clock (no real waiting):
//! misfire policies after a 3-hour downtime, each overlap policy,
//! pause/resume, run-now, a version pin, bad input refused at apply with
//! `file:line:col` and nothing stored, and many engines on one database
//! committing each fire time once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use opsconductor::clock::ManualClock;
use opsconductor::store::{RunFilter, Store};
use opsconductor::{Actor, Conductor, Run, RunStatus, SchedulerConfig};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn me() -> Actor {
    Actor::new("tester")
}

const JOB: &str = r#"
kind: Job
name: tick
params:
  type: object
  properties:
    n: {type: integer, default: 1}
steps:
  - exec: "true"
"#;

struct Env {
    oc: Conductor,
    clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn env_at(start: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    env_on(&url, start, dir).await
}

async fn env_on(url: &str, start: &str, dir: tempfile::TempDir) -> Env {
    let clock = Arc::new(ManualClock::new(t(start)));
    let oc = opsconductor::builder(url)
        .await
        .unwrap()
        .scheduler(SchedulerConfig {
            clock: clock.clone(),
            ..SchedulerConfig::default()
        })
        .build()
        .await
        .unwrap();
    let store = opsconductor::open_store(url).await.unwrap();
    Env {
        oc,
        clock,
        store,
        _dir: dir,
    }
}

impl Env {
    async fn apply(&self, yaml: &str) -> opsconductor::Result<()> {
        let batch = opsconductor::spec::parse_str(yaml, "s.yaml", None)?;
        self.oc.apply(&batch, &me()).await.map(|_| ())
    }

    async fn runs(&self, schedule: &str) -> Vec<Run> {
        let mut r = self
            .oc
            .runs(
                &RunFilter {
                    schedule: Some(schedule.into()),
                    limit: 1000,
                    ..Default::default()
                },
                &me(),
            )
            .await
            .unwrap();
        r.reverse();
        r
    }

    async fn fire_times(&self, schedule: &str) -> Vec<DateTime<Utc>> {
        self.runs(schedule)
            .await
            .iter()
            .filter_map(|r| r.schedule.as_ref().and_then(|s| s.fire_time))
            .collect()
    }

    async fn tick_at(&self, now: &str) -> opsconductor::engine::TickReport {
        self.clock.set(t(now));
        self.oc.scheduler_tick().await.unwrap()
    }

    /// Ends a run as a worker would (claims and finishes it).
    async fn finish(&self, run: &Run) {
        let claim = opsconductor::store::Claim {
            worker: "w".into(),
            lease: Duration::from_secs(60),
            limit: 1,
            only: Some(run.id),
        };
        let got = self.store.claim_queued(&claim).await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            self.store
                .finish_run(run.id, "w", got[0].attempt, RunStatus::Succeeded, None)
                .await
                .unwrap()
        );
    }
}

fn schedule(name: &str, cron: &str, extra: &str) -> String {
    let overlap = if extra.contains("overlap:") {
        ""
    } else {
        "overlap: allow\n"
    };
    format!(
        "{JOB}---\nkind: Schedule\nname: {name}\njob: tick\ncron: \"{cron}\"\n{overlap}{extra}\n"
    )
}

#[tokio::test]
async fn fires_each_due_time_once_with_the_manual_clock() {
    let e = env_at("2026-03-01T09:59:30Z").await;
    e.apply(&schedule("every-minute", "* * * * *", ""))
        .await
        .unwrap();
    assert_eq!(e.tick_at("2026-03-01T09:59:59Z").await.queued, 0);
    assert_eq!(e.tick_at("2026-03-01T10:00:00Z").await.queued, 1);
    assert_eq!(
        e.tick_at("2026-03-01T10:00:30Z").await.queued,
        0,
        "not twice"
    );
    // 10:01 is exactly the grace (60 s) late: still on time.
    assert_eq!(e.tick_at("2026-03-01T10:02:00Z").await.queued, 2);
    assert_eq!(
        e.fire_times("every-minute").await,
        vec![
            t("2026-03-01T10:00:00Z"),
            t("2026-03-01T10:01:00Z"),
            t("2026-03-01T10:02:00Z")
        ]
    );
    let d = e.oc.schedule("every-minute", &me()).await.unwrap();
    assert_eq!(d.schedule.next_fire, Some(t("2026-03-01T10:03:00Z")));
    assert_eq!(d.recent.len(), 3);
}

#[tokio::test]
async fn misfire_policies_after_a_three_hour_downtime() {
    for (policy, want) in [("skip", 0), ("run_once", 1), ("run_all", 10)] {
        let e = env_at("2026-03-01T08:59:00Z").await;
        e.apply(&schedule("s", "*/5 * * * *", &format!("misfire: {policy}")))
            .await
            .unwrap();
        assert_eq!(e.tick_at("2026-03-01T09:00:00Z").await.queued, 1);
        // Down from 09:00:01 to 12:00:30: 36 fire times (09:05 … 12:00);
        // 12:00 is within the grace and runs normally.
        let r = e.tick_at("2026-03-01T12:00:30Z").await;
        assert_eq!(r.queued, want + 1, "{policy}: {r:?}");
        assert_eq!(r.missed, 35 - want as u64, "{policy}");
        let times = e.fire_times("s").await;
        let expected_catch_up: Vec<DateTime<Utc>> = match policy {
            "skip" => vec![],
            "run_once" => vec![t("2026-03-01T11:55:00Z")],
            _ => (0..10)
                .map(|i| t("2026-03-01T11:10:00Z") + chrono::Duration::minutes(5 * i))
                .collect(),
        };
        let mut expected = vec![t("2026-03-01T09:00:00Z")];
        expected.extend(expected_catch_up);
        expected.push(t("2026-03-01T12:00:00Z"));
        assert_eq!(times, expected, "{policy}");
        // The misfire is audited with the policy applied.
        let audit =
            e.oc.audit_log(Some("schedule:s"), 100, &me())
                .await
                .unwrap();
        let mis = audit
            .iter()
            .find(|a| a.action == "schedule.misfire")
            .unwrap_or_else(|| panic!("{policy}: no misfire audit in {audit:?}"));
        assert_eq!(mis.detail["missed"], 35, "{policy}");
        assert_eq!(mis.detail["policy"], policy);
        assert_eq!(mis.detail["dropped"], 35 - want, "{policy}");
    }
}

#[tokio::test]
async fn overlap_policies() {
    // allow: a second run while the first is queued.
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(&schedule("a", "* * * * *", "")).await.unwrap();
    e.tick_at("2026-03-01T10:00:00Z").await;
    e.tick_at("2026-03-01T10:01:00Z").await;
    assert_eq!(e.runs("a").await.len(), 2, "allow");

    // skip: the fire time is dropped and recorded.
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(&schedule("s", "* * * * *", "overlap: skip"))
        .await
        .unwrap();
    e.tick_at("2026-03-01T10:00:00Z").await;
    let r = e.tick_at("2026-03-01T10:01:00Z").await;
    assert_eq!((r.queued, r.skipped), (0, 1), "skip");
    let recent = e.oc.schedule("s", &me()).await.unwrap().recent;
    assert_eq!(
        recent[0].outcome,
        opsconductor::schedule::FireOutcome::Skipped
    );
    let first = e.runs("s").await.remove(0);
    e.finish(&first).await;
    assert_eq!(
        e.tick_at("2026-03-01T10:02:00Z").await.queued,
        1,
        "skip: free again"
    );

    // queue: waits for the previous run, then runs with its own fire time.
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(&schedule("q", "* * * * *", "overlap: queue"))
        .await
        .unwrap();
    e.tick_at("2026-03-01T10:00:00Z").await;
    let r = e.tick_at("2026-03-01T10:01:00Z").await;
    assert_eq!((r.queued, r.pending), (0, 1), "queue");
    assert_eq!(
        e.tick_at("2026-03-01T10:01:10Z").await.queued,
        0,
        "still busy"
    );
    let first = e.runs("q").await.remove(0);
    e.finish(&first).await;
    assert_eq!(e.tick_at("2026-03-01T10:01:20Z").await.queued, 1);
    assert_eq!(
        e.fire_times("q").await,
        vec![t("2026-03-01T10:00:00Z"), t("2026-03-01T10:01:00Z")]
    );

    // cancel_previous: the queued previous run is cancelled, the new one queued.
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(&schedule("c", "* * * * *", "overlap: cancel_previous"))
        .await
        .unwrap();
    e.tick_at("2026-03-01T10:00:00Z").await;
    assert_eq!(e.tick_at("2026-03-01T10:01:00Z").await.queued, 1);
    let runs = e.runs("c").await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, RunStatus::Cancelled, "previous cancelled");
    assert_eq!(runs[1].status, RunStatus::Queued);
}

#[tokio::test]
async fn pause_resume_run_now_and_next() {
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(&schedule("p", "0 * * * *", "")).await.unwrap();
    e.oc.pause_schedule("p", &me()).await.unwrap();
    assert_eq!(e.tick_at("2026-03-01T12:00:00Z").await.queued, 0, "paused");
    // A re-apply of the same file does not resume it.
    e.apply(&schedule("p", "0 * * * *", "")).await.unwrap();
    assert!(e.oc.schedule("p", &me()).await.unwrap().schedule.paused);
    let s = e.oc.resume_schedule("p", &me()).await.unwrap();
    assert_eq!(
        s.next_fire,
        Some(t("2026-03-01T13:00:00Z")),
        "no catch-up of the pause"
    );
    assert_eq!(e.tick_at("2026-03-01T12:30:00Z").await.queued, 0);
    assert_eq!(e.tick_at("2026-03-01T13:00:00Z").await.queued, 1);
    let now = e.oc.run_schedule_now("p", &me()).await.unwrap();
    assert_eq!(now.schedule.as_ref().unwrap().fire_time, None);
    assert_eq!(e.runs("p").await.len(), 2);
    let next = e.oc.next_fire_times("p", 3, &me()).await.unwrap();
    assert_eq!(
        next,
        vec![
            t("2026-03-01T14:00:00Z"),
            t("2026-03-01T15:00:00Z"),
            t("2026-03-01T16:00:00Z")
        ]
    );
    assert!(e.oc.next_fire_times("p", 0, &me()).await.is_err());
    assert!(e.oc.next_fire_times("p", 1001, &me()).await.is_err());
    let audit =
        e.oc.audit_log(Some("schedule:p"), 100, &me())
            .await
            .unwrap();
    for action in [
        "schedule.create",
        "schedule.pause",
        "schedule.resume",
        "schedule.run_now",
    ] {
        assert!(
            audit.iter().any(|a| a.action == action),
            "{action}: {audit:?}"
        );
    }
    e.oc.delete_schedule("p", &me()).await.unwrap();
    assert!(e.oc.schedule("p", &me()).await.is_err());
    let audit =
        e.oc.audit_log(Some("schedule:p"), 100, &me())
            .await
            .unwrap();
    assert!(audit.iter().any(|a| a.action == "schedule.delete"));
    // Viewers read, operators manage.
    let viewer = Actor::user("v", opsconductor::auth::Role::Viewer, "password");
    assert!(e.oc.schedules(&viewer).await.is_ok());
    e.apply(&schedule("p", "0 * * * *", "")).await.unwrap();
    assert!(e.oc.pause_schedule("p", &viewer).await.is_err());
}

#[tokio::test]
async fn a_version_pin_runs_that_version() {
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(JOB).await.unwrap();
    e.apply(&JOB.replace("\"true\"", "\"echo v2\""))
        .await
        .unwrap();
    e.apply(
        "kind: Schedule\nname: pinned\njob: tick\nversion: 1\ncron: \"0 * * * *\"\n---\n\
         kind: Schedule\nname: latest\njob: tick\ncron: \"0 * * * *\"\n",
    )
    .await
    .unwrap();
    e.tick_at("2026-03-01T10:00:00Z").await;
    assert_eq!(e.runs("pinned").await[0].job_version, Some(1));
    assert_eq!(e.runs("latest").await[0].job_version, Some(2));
}

#[tokio::test]
async fn bad_schedules_are_refused_at_apply_with_file_line_col_and_nothing_stored() {
    let e = env_at("2026-03-01T09:59:00Z").await;
    e.apply(JOB).await.unwrap();
    e.apply("kind: Job\nname: old\nstatus: deprecated\nsteps: [{exec: \"true\"}]\n")
        .await
        .unwrap();
    let base = "kind: Schedule\nname: bad\njob: tick\ncron: \"0 3 * * *\"\n";
    for (yaml, want) in [
        (
            "kind: Schedule\nname: bad\njob: tick\ncron: \"0 25 * * *\"\n".to_string(),
            "s.yaml:4:10: schedule 'bad'.cron: field 2 (hour)",
        ),
        (format!("{base}timezone: Mars/Olympus\n"), "s.yaml:5:11:"),
        (
            format!("{base}start: 2027-01-02T00:00:00Z\nend: 2027-01-01T00:00:00Z\n"),
            "s.yaml:6:6: schedule 'bad'.end",
        ),
        (format!("{base}misfire: sometimes\n"), "s.yaml:5:"),
        (
            "kind: Schedule\nname: bad\njob: nope\ncron: \"0 3 * * *\"\n".into(),
            "s.yaml:3:6: schedule 'bad'.job: no job 'nope'",
        ),
        (
            "kind: Schedule\nname: bad\njob: old\ncron: \"0 3 * * *\"\n".into(),
            "s.yaml:3:6: schedule 'bad'.job: job 'old' is deprecated",
        ),
        (
            format!("{base}params:\n  n: seven\n"),
            "s.yaml:6:6: schedule 'bad'.params.n",
        ),
        (
            format!("{base}version: 9\n"),
            "s.yaml:5:10: schedule 'bad'.version",
        ),
        (format!("{base}cron2: x\n"), "s.yaml:5:"),
    ] {
        let err = e.apply(&yaml).await.unwrap_err().to_string();
        assert!(
            err.starts_with(want),
            "{yaml}\n  got: {err}\n  want: {want}"
        );
    }
    // A job and a schedule in one file: the failing schedule stores neither.
    let both = format!(
        "{}---\nkind: Schedule\nname: bad\njob: fresh\ncron: \"0 3 * * *\"\nparams: {{n: x}}\n",
        JOB.replace("name: tick", "name: fresh")
    );
    assert!(e.apply(&both).await.is_err());
    assert!(
        e.oc.schedules(&me()).await.unwrap().is_empty(),
        "nothing stored"
    );
    assert!(
        e.oc.job("fresh", None, &me()).await.is_err(),
        "nothing stored"
    );
}

/// Four engines on one SQLite file tick over the same 600 fire times in
/// random interleavings: every fire time gets exactly one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_engines_in_one_process_fire_each_time_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let start = "2026-03-01T09:59:59Z";
    let first = env_on(&url, start, tempfile::tempdir().unwrap()).await;
    let mut docs = JOB.to_string();
    for i in 0..6 {
        docs.push_str(&format!(
            "---\nkind: Schedule\nname: s{i}\njob: tick\ncron: \"* * * * * *\"\noverlap: allow\n"
        ));
    }
    first.apply(&docs).await.unwrap();
    let mut envs = vec![first];
    for _ in 0..3 {
        envs.push(env_on(&url, start, tempfile::tempdir().unwrap()).await);
    }
    let envs = Arc::new(envs);
    let mut tasks = vec![];
    for i in 0..4 {
        let envs = envs.clone();
        tasks.push(tokio::spawn(async move {
            for step in 1..=100i64 {
                let now = t(start) + chrono::Duration::seconds(step);
                envs[i].clock.set(now);
                envs[i].oc.scheduler_tick().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..6 {
        let times = envs[0].fire_times(&format!("s{i}")).await;
        let expected: Vec<DateTime<Utc>> = (1..=100)
            .map(|s| t(start) + chrono::Duration::seconds(s))
            .collect();
        assert_eq!(
            times, expected,
            "schedule s{i}: each fire time exactly once"
        );
    }
}
