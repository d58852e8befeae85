//! The store behaviour suite: one `pub async fn` per rule, run against every
//! backend by [`store_behaviour_suite!`](crate::store_behaviour_suite). A new
//! backend is done when it passes all of them.
//!
//! The rules come from the module docs of `opsconductor_core::store`, plus
//! what those docs leave open and every backend must still agree on:
//!
//! - timestamps round-trip with at least millisecond precision (the fixtures
//!   use whole milliseconds);
//! - `apply` rejects, as a validation error, an object without a name and a
//!   name given twice in one batch — and, being atomic, stores nothing of it;
//! - inserting a run whose id exists is a conflict;
//! - listing runs `before` an unknown run is `NotFound`;
//! - `finish_run` needs a final state;
//! - a step result or log chunk for a run that does not exist is an error;
//! - `request_cancel` marks a queued run `cancelled` *and* `cancel_requested`.
//!
//! Each function takes a fresh, empty store and returns `Err` or panics
//! (with a message saying which rule broke) when the backend misbehaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use opsconductor_core::model::{
    Action, Connection, DEFAULT_CONCURRENCY, JobSpec, JobStatus, LogChunk, Run, RunId, RunStatus,
    Step, StepResult, StepStatus, Stream, Target,
};
use opsconductor_core::store::{ApplyAction, ApplyBatch, ApplyItem, Claim, RunFilter};
use opsconductor_core::{ErrorKind, Result};
use serde_json::json;
use uuid::Uuid;

#[doc(hidden)]
pub use opsconductor_core::Error;
#[doc(hidden)]
pub use opsconductor_core::store::Store;

/// Expands to one `#[tokio::test]` per rule of the [`behaviour`](crate::behaviour)
/// suite, each given a fresh store by `$factory`: an async closure or the
/// path of an async fn returning `Arc<dyn Store>`.
///
/// The calling crate needs `tokio` (with the `macros` and multi-threaded
/// runtime features) among its dev-dependencies, and this crate with the
/// `testing` feature:
///
/// ```ignore
/// // tests/postgres.rs
/// use std::sync::Arc;
/// use opsconductor_core::store::Store;
///
/// async fn fresh_store() -> Arc<dyn Store> {
///     Arc::new(PgStore::open_fresh_schema().await.expect("PostgreSQL for the tests"))
/// }
///
/// opsconductor_store::store_behaviour_suite!(fresh_store);
/// // or: store_behaviour_suite!(async || -> Arc<dyn Store> { … });
/// ```
#[macro_export]
macro_rules! store_behaviour_suite {
    ($factory:expr $(,)?) => {
        $crate::__store_behaviour_tests! {
            $factory;
            apply_creates_updates_and_reports_unchanged,
            apply_is_atomic,
            apply_rejects_unnamed_and_repeated_objects,
            job_versions_are_immutable_and_listed_oldest_first,
            list_jobs_returns_the_latest_version_of_each,
            targets_crud,
            target_round_trips_every_field,
            job_spec_round_trips_every_field,
            run_round_trips_every_field,
            insert_run_refuses_an_existing_id,
            find_runs_by_prefix,
            list_runs_newest_first_with_filters,
            list_runs_pages_with_before,
            claim_takes_the_oldest_first,
            claim_honours_limit_and_only,
            concurrent_claims_hand_each_run_to_one_caller,
            claim_expired_takes_only_expired_running_runs,
            claim_expired_never_touches_a_run_finished_meanwhile,
            heartbeat_only_for_the_owner,
            finish_run_only_for_the_owner,
            request_cancel_in_each_state,
            step_results_upsert_and_order,
            step_results_page_after_a_cursor,
            logs_read_back_in_seq_order,
            log_append_of_an_existing_seq_is_a_no_op,
            last_log_seq,
            logs_and_step_results_need_an_existing_run,
            users_crud,
            refresh_token_reuse_revokes_the_family,
            concurrent_refresh_uses_give_exactly_one_fresh,
            invalid_refresh_tokens_and_revocations,
            api_tokens_crud,
            secrets_create_update_rewrap_delete_with_history,
            key_records_register_once_and_retire,
            audit_chain_stays_linear_under_concurrent_appends,
            prune_keeps_unfinished_and_recent_runs,
            prune_works_in_bounded_batches,
            prune_logs_before_runs,
            audit_prune_keeps_a_checkpoint,
        }
    };
}

/// The expansion of [`store_behaviour_suite!`]; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_behaviour_tests {
    ($factory:expr; $($rule:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $rule() -> ::std::result::Result<(), $crate::behaviour::Error> {
                let store: ::std::sync::Arc<dyn $crate::behaviour::Store> = ($factory)().await;
                $crate::behaviour::$rule(store).await
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A fixed instant plus `ms` milliseconds (whole milliseconds, see the module docs).
pub fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_735_689_600_000 + ms).unwrap_or_default()
}

/// The current time, truncated to whole milliseconds.
pub fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
}

/// A one-step job.
pub fn job_spec(name: &str) -> JobSpec {
    JobSpec {
        name: name.into(),
        description: String::new(),
        tags: vec![],
        status: JobStatus::Active,
        params: serde_json::Value::Null,
        targets: vec!["local".into()],
        concurrency: DEFAULT_CONCURRENCY,
        timeout: None,
        secrets: vec![],
        steps: vec![step(
            "hello",
            Action::Exec {
                command: "echo hello".into(),
            },
        )],
    }
}

/// A step with defaults (built through serde, so fields added to the model
/// with a default need no change here).
pub fn step(name: &str, action: Action) -> Step {
    serde_json::from_value(json!({ "name": name, "action": action }))
        .unwrap_or_else(|e| panic!("behaviour suite: building step '{name}': {e}"))
}

/// An SSH target.
pub fn ssh_target(name: &str) -> Target {
    Target {
        name: name.into(),
        description: format!("{name} over SSH"),
        tags: vec!["web".into()],
        vars: BTreeMap::new(),
        connection: Connection::Ssh {
            host: format!("{name}.example.internal"),
            port: 22,
            user: "deploy".into(),
            host_key: None,
            known_hosts: None,
        },
        credential: None,
    }
}

/// A queued run of `job`, created at `created_at`.
pub fn queued_run(job: &str, created_at: DateTime<Utc>) -> Run {
    Run {
        id: RunId::new(),
        job: job.into(),
        job_version: Some(1),
        spec: job_spec(job),
        params: json!({ "version": "1.2.3" }),
        targets: vec!["local".into()],
        status: RunStatus::Queued,
        requested_by: "alice".into(),
        attempt: 0,
        worker: None,
        lease_until: None,
        cancel_requested: false,
        error: None,
        created_at,
        started_at: None,
        finished_at: None,
        request_id: None,
    }
}

/// A run some worker holds, with its lease ending at `lease_until`.
pub fn running_run(job: &str, worker: &str, lease_until: DateTime<Utc>) -> Run {
    let mut run = queued_run(job, lease_until - TimeDelta::minutes(10));
    run.status = RunStatus::Running;
    run.worker = Some(worker.into());
    run.attempt = 1;
    run.lease_until = Some(lease_until);
    run.started_at = Some(run.created_at);
    run
}

/// A claim by `worker` for at most `limit` runs, with a one-minute lease.
pub fn claim(worker: &str, limit: usize) -> Claim {
    Claim {
        worker: worker.into(),
        lease: Duration::from_secs(60),
        limit,
        only: None,
    }
}

/// A log chunk of `run`.
pub fn chunk(run: RunId, seq: u64, data: &str) -> LogChunk {
    LogChunk {
        run_id: run,
        seq,
        step: Some(0),
        target: Some("local".into()),
        stream: Stream::Stdout,
        data: data.as_bytes().to_vec(),
        time: at(i64::try_from(seq).unwrap_or(0)),
    }
}

/// A run id with a chosen text (to test prefixes).
fn fixed_id(text: &str) -> Result<RunId> {
    Uuid::parse_str(text)
        .map(RunId)
        .map_err(|e| Error::Internal(format!("suite fixture id '{text}': {e}")))
}

/// The value of an `Option` the rule says must be there.
fn found<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| Error::Internal(format!("behaviour suite: {what} is missing")))
}

/// Inserts runs, returning them.
async fn insert_all(store: &dyn Store, runs: Vec<Run>) -> Result<Vec<Run>> {
    for run in &runs {
        store.insert_run(run).await?;
    }
    Ok(runs)
}

fn item(kind: &'static str, name: &str, action: ApplyAction, version: Option<u32>) -> ApplyItem {
    ApplyItem {
        kind,
        name: name.into(),
        action,
        version,
    }
}

fn ids(runs: &[Run]) -> Vec<RunId> {
    runs.iter().map(|r| r.id).collect()
}

// ---------------------------------------------------------------------------
// apply, targets, jobs
// ---------------------------------------------------------------------------

/// `apply` reports Created, then Updated (a new job version) on a change,
/// then Unchanged (no new version) for an equal spec; items come back in
/// batch order, targets first.
pub async fn apply_creates_updates_and_reports_unchanged(store: Arc<dyn Store>) -> Result<()> {
    let batch = ApplyBatch {
        targets: vec![ssh_target("web-2"), ssh_target("web-1")],
        jobs: vec![job_spec("deploy"), job_spec("backup")],
    };
    let items = store.apply(&batch, "alice").await?;
    assert_eq!(
        items,
        vec![
            item("target", "web-2", ApplyAction::Created, None),
            item("target", "web-1", ApplyAction::Created, None),
            item("job", "deploy", ApplyAction::Created, Some(1)),
            item("job", "backup", ApplyAction::Created, Some(1)),
        ],
        "first apply creates everything, in batch order"
    );

    let items = store.apply(&batch, "bob").await?;
    assert_eq!(
        items,
        vec![
            item("target", "web-2", ApplyAction::Unchanged, None),
            item("target", "web-1", ApplyAction::Unchanged, None),
            item("job", "deploy", ApplyAction::Unchanged, Some(1)),
            item("job", "backup", ApplyAction::Unchanged, Some(1)),
        ],
        "applying the same batch again changes nothing"
    );
    assert_eq!(
        store.job_versions("deploy").await?.len(),
        1,
        "no new version"
    );

    let mut web1 = ssh_target("web-1");
    web1.tags.push("canary".into());
    let mut deploy = job_spec("deploy");
    deploy.description = "Ships the app".into();
    let items = store
        .apply(
            &ApplyBatch {
                targets: vec![web1.clone(), ssh_target("web-2")],
                jobs: vec![job_spec("backup"), deploy.clone()],
            },
            "carol",
        )
        .await?;
    assert_eq!(
        items,
        vec![
            item("target", "web-1", ApplyAction::Updated, None),
            item("target", "web-2", ApplyAction::Unchanged, None),
            item("job", "backup", ApplyAction::Unchanged, Some(1)),
            item("job", "deploy", ApplyAction::Updated, Some(2)),
        ],
        "a changed target is updated, a changed job gets version 2"
    );
    assert_eq!(store.get_target("web-1").await?, Some(web1));
    let latest = found(store.get_job("deploy", None).await?, "job deploy")?;
    assert_eq!((latest.version, &latest.spec), (2, &deploy));
    assert_eq!(
        latest.created_by, "carol",
        "`by` is recorded on the new version"
    );
    Ok(())
}

/// `apply` is atomic: when an item fails, nothing of the batch is stored,
/// including the items before it, and existing objects keep their state.
pub async fn apply_is_atomic(store: Arc<dyn Store>) -> Result<()> {
    store
        .apply(
            &ApplyBatch {
                targets: vec![ssh_target("existing")],
                jobs: vec![job_spec("existing-job")],
            },
            "alice",
        )
        .await?;

    let mut changed = ssh_target("existing");
    changed.description = "changed by the failing batch".into();
    let mut changed_job = job_spec("existing-job");
    changed_job.description = "changed by the failing batch".into();
    // The last item is invalid (a repeated name), so it fails after every
    // other item of the batch was already written.
    let failing = ApplyBatch {
        targets: vec![changed, ssh_target("new-target")],
        jobs: vec![changed_job, job_spec("new-job"), job_spec("new-job")],
    };
    let err = store.apply(&failing, "mallory").await;
    assert!(err.is_err(), "a batch with a repeated job name must fail");

    assert_eq!(store.get_target("new-target").await?, None, "no new target");
    assert_eq!(store.get_job("new-job", None).await?, None, "no new job");
    assert_eq!(
        store.get_target("existing").await?,
        Some(ssh_target("existing")),
        "an existing target keeps its state"
    );
    let versions = store.job_versions("existing-job").await?;
    assert_eq!(versions.len(), 1, "an existing job gets no version");
    assert_eq!(versions[0].spec, job_spec("existing-job"));

    // And a good batch is visible as a whole.
    let items = store
        .apply(
            &ApplyBatch {
                targets: (0..20).map(|i| ssh_target(&format!("t{i:02}"))).collect(),
                jobs: (0..20).map(|i| job_spec(&format!("j{i:02}"))).collect(),
            },
            "alice",
        )
        .await?;
    assert_eq!(items.len(), 40);
    assert_eq!(store.list_targets().await?.len(), 21);
    assert_eq!(store.list_jobs().await?.len(), 21);
    Ok(())
}

/// `apply` refuses, as validation errors, a target or job without a name
/// and a name given twice in one batch.
pub async fn apply_rejects_unnamed_and_repeated_objects(store: Arc<dyn Store>) -> Result<()> {
    let batches = [
        ApplyBatch {
            targets: vec![ssh_target("")],
            jobs: vec![],
        },
        ApplyBatch {
            targets: vec![],
            jobs: vec![job_spec("ok"), job_spec("")],
        },
        ApplyBatch {
            targets: vec![ssh_target("twice"), ssh_target("twice")],
            jobs: vec![],
        },
        ApplyBatch {
            targets: vec![],
            jobs: vec![job_spec("twice"), job_spec("twice")],
        },
    ];
    for (i, batch) in batches.iter().enumerate() {
        match store.apply(batch, "alice").await {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Validation, "batch {i}: {e}"),
            Ok(items) => panic!("batch {i} should be rejected, got {items:?}"),
        }
    }
    assert!(store.list_targets().await?.is_empty());
    assert!(store.list_jobs().await?.is_empty());
    Ok(())
}

/// Each change adds a version; old versions stay as they were; going back
/// to an older spec is a change too (a new version with the old content).
pub async fn job_versions_are_immutable_and_listed_oldest_first(
    store: Arc<dyn Store>,
) -> Result<()> {
    let v1 = job_spec("deploy");
    let mut v2 = v1.clone();
    v2.steps.push(step(
        "restart",
        Action::Exec {
            command: "systemctl restart app".into(),
        },
    ));
    for (spec, by) in [(&v1, "alice"), (&v2, "bob"), (&v1, "carol")] {
        store
            .apply(
                &ApplyBatch {
                    targets: vec![],
                    jobs: vec![spec.clone()],
                },
                by,
            )
            .await?;
    }
    let versions = store.job_versions("deploy").await?;
    let summary: Vec<_> = versions
        .iter()
        .map(|j| (j.version, &j.spec, j.created_by.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![(1, &v1, "alice"), (2, &v2, "bob"), (3, &v1, "carol")],
        "versions oldest first, each as stored"
    );
    assert!(versions[0].created_at <= versions[2].created_at);
    assert_eq!(
        store.get_job("deploy", Some(2)).await?.map(|j| j.spec),
        Some(v2),
        "a version is read back by number"
    );
    assert_eq!(
        store.get_job("deploy", None).await?.map(|j| j.version),
        Some(3),
        "no version given: the latest"
    );
    assert_eq!(store.get_job("deploy", Some(4)).await?, None);
    assert_eq!(store.get_job("missing", None).await?, None);
    assert!(store.job_versions("missing").await?.is_empty());
    Ok(())
}

/// `list_jobs` gives the latest version of every job, by name.
pub async fn list_jobs_returns_the_latest_version_of_each(store: Arc<dyn Store>) -> Result<()> {
    let mut b2 = job_spec("b");
    b2.description = "second".into();
    for jobs in [
        vec![job_spec("c"), job_spec("b")],
        vec![b2.clone(), job_spec("a")],
    ] {
        store
            .apply(
                &ApplyBatch {
                    targets: vec![],
                    jobs,
                },
                "alice",
            )
            .await?;
    }
    let listed: Vec<_> = store
        .list_jobs()
        .await?
        .into_iter()
        .map(|j| (j.spec.name.clone(), j.version, j.spec))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".into(), 1, job_spec("a")),
            ("b".into(), 2, b2),
            ("c".into(), 1, job_spec("c")),
        ]
    );
    Ok(())
}

/// Targets are created, read, listed by name and deleted.
pub async fn targets_crud(store: Arc<dyn Store>) -> Result<()> {
    assert!(store.list_targets().await?.is_empty());
    assert_eq!(store.get_target("db").await?, None);
    store
        .apply(
            &ApplyBatch {
                targets: vec![ssh_target("web"), ssh_target("db"), Target::local()],
                jobs: vec![],
            },
            "alice",
        )
        .await?;
    let names: Vec<_> = store
        .list_targets()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["db", "local", "web"], "listed by name");
    assert_eq!(store.get_target("db").await?, Some(ssh_target("db")));

    assert!(
        store.delete_target("db").await?,
        "deleting an existing target"
    );
    assert!(!store.delete_target("db").await?, "deleting it again");
    assert!(!store.delete_target("never").await?);
    assert_eq!(store.get_target("db").await?, None);
    assert_eq!(store.list_targets().await?.len(), 2);
    Ok(())
}

/// Every field of a target survives the store, for each kind of connection.
pub async fn target_round_trips_every_field(store: Arc<dyn Store>) -> Result<()> {
    let ssh = Target {
        name: "web-1".into(),
        description: "Front end — «prod»".into(),
        tags: vec!["web".into(), "prod".into()],
        vars: BTreeMap::from([
            ("role".into(), json!("frontend")),
            ("weights".into(), json!({ "a": [1, 2.5, null, true] })),
        ]),
        connection: Connection::Ssh {
            host: "10.0.0.5".into(),
            port: 2222,
            user: "deploy".into(),
            host_key: Some("SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
            known_hosts: Some("/etc/opsconductor/known_hosts".into()),
        },
        credential: Some("deploy-key".into()),
    };
    let winrm = Target {
        name: "win-1".into(),
        connection: Connection::Winrm {
            host: "win.example.internal".into(),
            port: 5985,
            tls: false,
            auth: "basic".into(),
        },
        credential: Some("win-admin".into()),
        ..ssh_target("win-1")
    };
    let docker = Target {
        name: "box".into(),
        connection: Connection::Docker {
            image: "alpine:3.20".into(),
            limits: BTreeMap::from([
                ("memory".into(), json!("256m")),
                ("cpus".into(), json!(1.5)),
            ]),
        },
        ..ssh_target("box")
    };
    let all = vec![ssh, winrm, docker, Target::local()];
    store
        .apply(
            &ApplyBatch {
                targets: all.clone(),
                jobs: vec![],
            },
            "alice",
        )
        .await?;
    for target in &all {
        assert_eq!(
            store.get_target(&target.name).await?.as_ref(),
            Some(target),
            "target {} round-trips",
            target.name
        );
    }
    Ok(())
}

/// Every field of a job spec survives the store, with a step of each kind.
pub async fn job_spec_round_trips_every_field(store: Arc<dyn Store>) -> Result<()> {
    let mut exec = step(
        "build",
        Action::Exec {
            command: "make release VERSION={{ params.version }}".into(),
        },
    );
    exec.timeout = Some(Duration::from_secs(30));
    exec.continue_on_error = true;
    exec.idempotent = true;
    exec.env = BTreeMap::from([("RUST_LOG".into(), "debug".into())]);
    exec.workdir = Some("/srv/app".into());
    exec.raw = true;
    let script = step(
        "migrate",
        Action::Script {
            interpreter: "python3".into(),
            body: "import sys\nprint('héllo', sys.argv)\n".into(),
        },
    );
    let inline = step(
        "config",
        Action::Copy {
            dest: "/etc/app.conf".into(),
            content: Some("port = {{ params.port }}\n".into()),
            src: None,
            mode: 0o600,
        },
    );
    let from_file = step(
        "binary",
        Action::Copy {
            dest: "/usr/local/bin/app".into(),
            content: None,
            src: Some("target/release/app".into()),
            mode: 0o755,
        },
    );
    let spec = JobSpec {
        name: "deploy".into(),
        description: "Builds and ships".into(),
        tags: vec!["prod".into(), "app".into()],
        status: JobStatus::Draft,
        params: json!({
            "type": "object",
            "properties": { "version": { "type": "string" }, "port": { "type": "integer" } },
            "required": ["version"]
        }),
        targets: vec!["tag:web".into(), "db-1".into()],
        concurrency: 3,
        timeout: Some(Duration::from_secs(5400)),
        secrets: vec!["deploy-key".into(), "api-token".into()],
        steps: vec![exec, script, inline, from_file],
    };
    store
        .apply(
            &ApplyBatch {
                targets: vec![],
                jobs: vec![spec.clone()],
            },
            "alice",
        )
        .await?;
    let stored = found(store.get_job("deploy", None).await?, "job deploy")?;
    assert_eq!(stored.spec, spec, "the job spec round-trips");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.created_by, "alice");
    Ok(())
}

// ---------------------------------------------------------------------------
// runs
// ---------------------------------------------------------------------------

/// Every field of a run survives the store, with every option set and with
/// none set.
pub async fn run_round_trips_every_field(store: Arc<dyn Store>) -> Result<()> {
    let mut spec = job_spec("deploy");
    spec.timeout = Some(Duration::from_secs(600));
    spec.steps.push(step(
        "script",
        Action::Script {
            interpreter: "bash".into(),
            body: "echo ok".into(),
        },
    ));
    let full = Run {
        id: RunId::new(),
        job: "deploy".into(),
        job_version: Some(7),
        spec,
        params: json!({ "version": "2.0", "flags": ["a", "ü"], "n": 3, "deep": { "x": null } }),
        targets: vec!["web-2".into(), "web-1".into(), "db".into()],
        status: RunStatus::Failed,
        requested_by: "alice@example.com".into(),
        attempt: 3,
        worker: Some("host-a:1234".into()),
        lease_until: Some(at(90_000)),
        cancel_requested: true,
        error: Some("step 'build' failed on web-1: exit code 2".into()),
        created_at: at(1),
        started_at: Some(at(2_500)),
        finished_at: Some(at(80_123)),
        request_id: Some("req-7f3a".into()),
    };
    let mut bare = queued_run("exec", at(5));
    bare.job_version = None;
    bare.params = serde_json::Value::Null;
    bare.targets = vec![];
    for run in [&full, &bare] {
        store.insert_run(run).await?;
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "run {} round-trips",
            run.job
        );
    }
    assert_eq!(store.get_run(RunId::new()).await?, None, "an unknown run");
    Ok(())
}

/// Inserting a run whose id already exists is a conflict and changes nothing.
pub async fn insert_run_refuses_an_existing_id(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    store.insert_run(&run).await?;
    let mut again = run.clone();
    again.job = "other".into();
    match store.insert_run(&again).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        Ok(()) => panic!("a second run with the same id was accepted"),
    }
    assert_eq!(store.get_run(run.id).await?, Some(run));
    Ok(())
}

/// Runs are found by an id prefix (any case), at most 2, and wildcard
/// characters in the prefix match nothing but themselves.
pub async fn find_runs_by_prefix(store: Arc<dyn Store>) -> Result<()> {
    let a = fixed_id("0190aaaa-0000-7000-8000-000000000001")?;
    let b = fixed_id("0190aaaa-0000-7000-8000-000000000002")?;
    let c = fixed_id("0190aaab-0000-7000-8000-000000000003")?;
    let d = fixed_id("0190aaaa-1111-7000-8000-000000000004")?;
    for (i, id) in [a, b, c, d].into_iter().enumerate() {
        let mut run = queued_run("deploy", at(i64::try_from(i).unwrap_or(0)));
        run.id = id;
        store.insert_run(&run).await?;
    }
    let find = |prefix: String| {
        let store = store.clone();
        async move {
            let mut ids = store.find_runs_by_prefix(&prefix).await?;
            ids.sort();
            Ok::<_, Error>(ids)
        }
    };
    assert_eq!(find("0190aaab".into()).await?, vec![c], "a unique prefix");
    assert_eq!(find("0190AAAB".into()).await?, vec![c], "upper case");
    assert_eq!(find(a.to_string()).await?, vec![a], "a whole id");
    assert_eq!(find("0190aaaa-1".into()).await?, vec![d]);
    assert_eq!(
        find("0190aaaa".into()).await?.len(),
        2,
        "an ambiguous prefix gives at most 2"
    );
    assert_eq!(
        find("0190aaaa-0000-7000-8000-00000000000".into()).await?,
        vec![a, b]
    );
    assert!(find("0191".into()).await?.is_empty(), "no match");
    assert!(find("%".into()).await?.is_empty(), "`%` is not a wildcard");
    assert!(
        find("0190aaa_".into()).await?.is_empty(),
        "`_` is not a wildcard"
    );
    Ok(())
}

/// `list_runs` is newest first (ties by id, descending) and filters by job,
/// by statuses and with a limit (0: 50).
pub async fn list_runs_newest_first_with_filters(store: Arc<dyn Store>) -> Result<()> {
    let statuses = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::TimedOut,
    ];
    let mut runs = Vec::new();
    for i in 0..60_i64 {
        let job = if i % 3 == 0 { "backup" } else { "deploy" };
        // Pairs share a creation time, so ties are broken by id.
        let mut run = queued_run(job, at(i / 2));
        run.status = statuses[usize::try_from(i).unwrap_or(0) % statuses.len()];
        runs.push(run);
    }
    let runs = insert_all(&*store, runs).await?;
    let mut newest_first = runs.clone();
    newest_first.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));

    let list = |filter: RunFilter| {
        let store = store.clone();
        async move { store.list_runs(&filter).await }
    };
    let expect = |keep: &dyn Fn(&Run) -> bool, limit: usize| -> Vec<RunId> {
        newest_first
            .iter()
            .filter(|r| keep(r))
            .take(limit)
            .map(|r| r.id)
            .collect()
    };

    let all = list(RunFilter::default()).await?;
    assert_eq!(ids(&all), expect(&|_| true, 50), "no limit: the newest 50");
    assert_eq!(all[0], newest_first[0], "listed runs are complete");

    let got = list(RunFilter {
        limit: 7,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(ids(&got), expect(&|_| true, 7), "limit");

    let got = list(RunFilter {
        job: Some("backup".into()),
        limit: 100,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(ids(&got), expect(&|r| r.job == "backup", 100), "by job");
    assert_eq!(got.len(), 20);

    let wanted = [RunStatus::Failed, RunStatus::Queued];
    let got = list(RunFilter {
        statuses: wanted.to_vec(),
        limit: 100,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(
        ids(&got),
        expect(&|r| wanted.contains(&r.status), 100),
        "by statuses"
    );

    let got = list(RunFilter {
        job: Some("deploy".into()),
        statuses: vec![RunStatus::Running],
        limit: 3,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(
        ids(&got),
        expect(&|r| r.job == "deploy" && r.status == RunStatus::Running, 3),
        "job, status and limit together"
    );

    assert!(
        list(RunFilter {
            job: Some("nothing".into()),
            ..RunFilter::default()
        })
        .await?
        .is_empty()
    );
    Ok(())
}

/// `before` pages through every run exactly once, newest first, also
/// across runs created at the same instant, and combines with filters;
/// `before` an unknown run is `NotFound`.
pub async fn list_runs_pages_with_before(store: Arc<dyn Store>) -> Result<()> {
    let runs: Vec<Run> = (0..25_i64)
        .map(|i| queued_run(if i % 2 == 0 { "even" } else { "odd" }, at(i / 3)))
        .collect();
    let runs = insert_all(&*store, runs).await?;
    let mut expected = runs.clone();
    expected.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));

    for job in [None, Some("even")] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .list_runs(&RunFilter {
                    job: job.map(str::to_string),
                    before,
                    limit: 4,
                    ..RunFilter::default()
                })
                .await?;
            assert!(page.len() <= 4);
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            seen.extend(ids(&page));
        }
        let want: Vec<RunId> = expected
            .iter()
            .filter(|r| job.is_none_or(|j| r.job == j))
            .map(|r| r.id)
            .collect();
        assert_eq!(seen, want, "paging with before (job {job:?})");
    }
    let unknown = store
        .list_runs(&RunFilter {
            before: Some(RunId::new()),
            ..RunFilter::default()
        })
        .await;
    match unknown {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
        Ok(runs) => panic!("`before` an unknown run listed {} runs", runs.len()),
    }
    Ok(())
}

/// `claim_queued` takes the oldest queued runs first and makes them
/// `running` for the caller: worker, attempt + 1, lease, start time.
pub async fn claim_takes_the_oldest_first(store: Arc<dyn Store>) -> Result<()> {
    let base = now_ms() - TimeDelta::hours(1);
    let offsets = [5, 1, 4, 2, 3];
    let mut runs = Vec::new();
    for o in offsets {
        runs.push(queued_run("deploy", base + TimeDelta::seconds(o)));
    }
    let mut not_queued = running_run("deploy", "other", now_ms() + TimeDelta::hours(1));
    not_queued.created_at = base - TimeDelta::hours(1);
    runs.push(not_queued.clone());
    let runs = insert_all(&*store, runs).await?;
    let by_offset = |o: i64| {
        runs.iter()
            .find(|r| r.created_at == base + TimeDelta::seconds(o))
            .map(|r| r.id)
    };

    let before = Utc::now();
    let lease = Duration::from_secs(90);
    let got = store
        .claim_queued(&Claim {
            worker: "w1".into(),
            lease,
            limit: 2,
            only: None,
        })
        .await?;
    let after = Utc::now();
    assert_eq!(
        got.iter().map(|r| Some(r.id)).collect::<Vec<_>>(),
        vec![by_offset(1), by_offset(2)],
        "the two oldest queued runs, oldest first"
    );
    for run in &got {
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.worker.as_deref(), Some("w1"));
        assert_eq!(run.attempt, 1);
        let until = found(run.lease_until, "lease_until")?;
        let lease = TimeDelta::from_std(lease).unwrap_or_default();
        let slack = TimeDelta::seconds(1);
        assert!(
            until >= before + lease - slack && until <= after + lease + slack,
            "lease ends `lease` from now"
        );
        let started = found(run.started_at, "started_at")?;
        assert!(started >= before - slack && started <= after + slack);
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "stored as returned"
        );
    }

    let next = store.claim_queued(&claim("w2", 10)).await?;
    assert_eq!(
        next.iter().map(|r| Some(r.id)).collect::<Vec<_>>(),
        vec![by_offset(3), by_offset(4), by_offset(5)],
        "the rest, oldest first; never a run that is not queued"
    );
    assert!(store.claim_queued(&claim("w3", 10)).await?.is_empty());
    assert_eq!(store.get_run(not_queued.id).await?, Some(not_queued));
    Ok(())
}

/// `claim_queued` never returns more than `limit` runs, and with `only`
/// takes just that run, if it is queued.
pub async fn claim_honours_limit_and_only(store: Arc<dyn Store>) -> Result<()> {
    let base = now_ms() - TimeDelta::minutes(5);
    let runs: Vec<Run> = (0..6)
        .map(|i| queued_run("deploy", base + TimeDelta::seconds(i)))
        .collect();
    let runs = insert_all(&*store, runs).await?;

    assert!(
        store.claim_queued(&claim("w", 0)).await?.is_empty(),
        "limit 0 claims nothing"
    );
    let got = store.claim_queued(&claim("w", 2)).await?;
    assert_eq!(ids(&got), ids(&runs[..2]), "at most `limit`");

    let newest = runs[5].id;
    let got = store
        .claim_queued(&Claim {
            only: Some(newest),
            ..claim("w", 10)
        })
        .await?;
    assert_eq!(ids(&got), vec![newest], "`only` takes just that run");
    let again = store
        .claim_queued(&Claim {
            only: Some(newest),
            ..claim("w", 10)
        })
        .await?;
    assert!(again.is_empty(), "`only` on a run no longer queued");
    let missing = store
        .claim_queued(&Claim {
            only: Some(RunId::new()),
            ..claim("w", 10)
        })
        .await?;
    assert!(missing.is_empty(), "`only` on an unknown run");

    let rest = store.claim_queued(&claim("w", 10)).await?;
    assert_eq!(ids(&rest), ids(&runs[2..5]));
    for run in &runs[2..5] {
        assert_eq!(
            store.get_run(run.id).await?.map(|r| r.status),
            Some(RunStatus::Running)
        );
    }
    Ok(())
}

/// 16 callers claiming 3 at a time from 200 queued runs: every run is
/// claimed exactly once, by the caller the store says holds it.
pub async fn concurrent_claims_hand_each_run_to_one_caller(store: Arc<dyn Store>) -> Result<()> {
    let base = now_ms() - TimeDelta::hours(1);
    let mut all = HashSet::new();
    for i in 0..200 {
        let run = queued_run("load", base + TimeDelta::milliseconds(i));
        all.insert(run.id);
        store.insert_run(&run).await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            let worker = format!("worker-{w}");
            let mut mine = Vec::new();
            loop {
                let got = store.claim_queued(&claim(&worker, 3)).await?;
                assert!(
                    got.len() <= 3,
                    "{worker} got {} runs with limit 3",
                    got.len()
                );
                if got.is_empty() {
                    break;
                }
                for run in got {
                    assert_eq!(run.worker.as_deref(), Some(worker.as_str()));
                    mine.push(run.id);
                }
            }
            Ok::<_, Error>((worker, mine))
        });
    }
    let mut owner: HashMap<RunId, String> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker, mine) =
            joined.map_err(|e| Error::Internal(format!("a claiming task failed: {e}")))??;
        for id in mine {
            if let Some(first) = owner.insert(id, worker.clone()) {
                panic!("run {id} was claimed twice: by {first} and by {worker}");
            }
        }
    }
    assert_eq!(owner.len(), 200, "every run was claimed");
    assert_eq!(owner.keys().copied().collect::<HashSet<_>>(), all);
    for (id, worker) in &owner {
        let run = found(store.get_run(*id).await?, "claimed run")?;
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(
            run.worker.as_ref(),
            Some(worker),
            "the store agrees on the owner"
        );
        assert_eq!(run.attempt, 1, "claimed once");
    }
    Ok(())
}

/// `claim_expired` takes over only `running` runs whose lease ended before
/// `now`: not live leases, not queued runs, not finished runs.
pub async fn claim_expired_takes_only_expired_running_runs(store: Arc<dyn Store>) -> Result<()> {
    let now = now_ms();
    let expired = running_run("deploy", "dead", now - TimeDelta::seconds(30));
    let older_expired = running_run("deploy", "dead", now - TimeDelta::minutes(5));
    let live = running_run("deploy", "alive", now + TimeDelta::minutes(5));
    let queued = queued_run("deploy", now - TimeDelta::hours(1));
    let mut finished = running_run("deploy", "dead", now - TimeDelta::minutes(1));
    finished.status = RunStatus::Succeeded;
    finished.finished_at = Some(now - TimeDelta::minutes(2));
    let untouched = [live.clone(), queued.clone(), finished.clone()];
    insert_all(
        &*store,
        vec![
            expired.clone(),
            older_expired.clone(),
            live,
            queued,
            finished,
        ],
    )
    .await?;

    let lease = Duration::from_secs(120);
    let got = store
        .claim_expired(
            &Claim {
                worker: "rescuer".into(),
                lease,
                limit: 10,
                only: None,
            },
            now,
        )
        .await?;
    let mut got_ids = ids(&got);
    got_ids.sort();
    let mut want = vec![expired.id, older_expired.id];
    want.sort();
    assert_eq!(got_ids, want, "exactly the expired running runs");
    for run in &got {
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.worker.as_deref(), Some("rescuer"));
        assert_eq!(run.attempt, 2, "a takeover is a new attempt");
        assert_eq!(
            run.lease_until,
            Some(now + TimeDelta::from_std(lease).unwrap_or_default()),
            "the new lease runs from `now`"
        );
        assert!(run.started_at.is_some(), "start time kept");
        assert_eq!(store.get_run(run.id).await?.as_ref(), Some(run));
    }
    for run in &untouched {
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "{:?} untouched",
            run.status
        );
    }
    assert!(
        store
            .claim_expired(&claim("again", 10), now)
            .await?
            .is_empty(),
        "the new leases have not ended"
    );

    // The limit holds here too.
    let more: Vec<Run> = (0..3)
        .map(|i| running_run("deploy", "dead", now - TimeDelta::seconds(10 + i)))
        .collect();
    insert_all(&*store, more).await?;
    assert_eq!(store.claim_expired(&claim("r", 2), now).await?.len(), 2);
    assert_eq!(store.claim_expired(&claim("r", 0), now).await?.len(), 0);
    assert_eq!(store.claim_expired(&claim("r", 5), now).await?.len(), 1);
    Ok(())
}

/// A run whose owner finished it after its lease ended is never taken over,
/// and after a takeover the old owner can no longer finish it.
pub async fn claim_expired_never_touches_a_run_finished_meanwhile(
    store: Arc<dyn Store>,
) -> Result<()> {
    let slow = queued_run("deploy", now_ms() - TimeDelta::minutes(1));
    let late = queued_run("deploy", now_ms() - TimeDelta::seconds(30));
    insert_all(&*store, vec![slow.clone(), late.clone()]).await?;
    let claimed = store.claim_queued(&claim("w1", 2)).await?;
    assert_eq!(claimed.len(), 2);
    let later = Utc::now() + TimeDelta::hours(1);

    // Both leases have ended by `later`; `slow`'s worker finishes anyway.
    assert!(
        store
            .finish_run(slow.id, "w1", 1, RunStatus::Succeeded, None)
            .await?
    );
    let finished = found(store.get_run(slow.id).await?, "run")?;

    let taken = store.claim_expired(&claim("w2", 10), later).await?;
    assert_eq!(ids(&taken), vec![late.id], "only the run still running");
    assert_eq!(
        store.get_run(slow.id).await?,
        Some(finished),
        "the finished run is untouched"
    );
    assert!(
        !store
            .finish_run(late.id, "w1", 1, RunStatus::Failed, Some("too late"))
            .await?,
        "the old owner cannot finish a run taken over"
    );
    let run = found(store.get_run(late.id).await?, "run")?;
    assert_eq!(
        (run.status, run.worker.as_deref(), run.attempt),
        (RunStatus::Running, Some("w2"), 2)
    );
    Ok(())
}

/// `heartbeat` extends the lease only for the current owner (worker and
/// attempt) of a running run; anyone else gets `false` and changes nothing.
pub async fn heartbeat_only_for_the_owner(store: Arc<dyn Store>) -> Result<()> {
    let queued = queued_run("deploy", now_ms() - TimeDelta::minutes(1));
    store.insert_run(&queued).await?;
    let later = now_ms() + TimeDelta::hours(2);
    assert!(
        !store.heartbeat(queued.id, "w1", 0, later).await?,
        "a queued run has no owner"
    );

    let run = store
        .claim_queued(&claim("w1", 1))
        .await?
        .pop()
        .ok_or_else(|| Error::Internal("nothing claimed".into()))?;
    for (worker, attempt, why) in [
        ("w2", 1, "another worker"),
        ("w1", 2, "another attempt"),
        ("w1", 0, "a stale attempt"),
    ] {
        assert!(
            !store.heartbeat(run.id, worker, attempt, later).await?,
            "heartbeat by {why}"
        );
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(&run),
            "unchanged after {why}"
        );
    }
    assert!(
        !store.heartbeat(RunId::new(), "w1", 1, later).await?,
        "an unknown run"
    );

    assert!(store.heartbeat(run.id, "w1", 1, later).await?, "the owner");
    let after = found(store.get_run(run.id).await?, "run")?;
    assert_eq!(after.lease_until, Some(later), "lease extended");
    assert_eq!(after.status, RunStatus::Running);

    // A takeover by the same worker name is a new attempt: the old one is stale.
    let taken = store
        .claim_expired(&claim("w1", 1), later + TimeDelta::seconds(1))
        .await?;
    assert_eq!(taken.len(), 1);
    assert!(
        !store.heartbeat(run.id, "w1", 1, later).await?,
        "attempt 1 lost the run"
    );
    assert!(
        store
            .heartbeat(run.id, "w1", 2, later + TimeDelta::hours(1))
            .await?
    );
    Ok(())
}

/// `finish_run` ends a run only for its current owner: final state, error,
/// finish time, no lease. Anyone else, or a second finish, gets `false`.
pub async fn finish_run_only_for_the_owner(store: Arc<dyn Store>) -> Result<()> {
    let runs: Vec<Run> = (0..2)
        .map(|i| queued_run("deploy", now_ms() - TimeDelta::minutes(5 - i)))
        .collect();
    insert_all(&*store, runs.clone()).await?;
    assert!(
        !store
            .finish_run(runs[0].id, "w1", 0, RunStatus::Succeeded, None)
            .await?,
        "a queued run has no owner"
    );
    let claimed = store.claim_queued(&claim("w1", 2)).await?;
    let (run, other) = (&claimed[0], &claimed[1]);

    for (worker, attempt, why) in [("w2", 1, "another worker"), ("w1", 2, "another attempt")] {
        assert!(
            !store
                .finish_run(run.id, worker, attempt, RunStatus::Failed, Some("x"))
                .await?,
            "finish by {why}"
        );
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "unchanged after {why}"
        );
    }
    assert!(
        store
            .finish_run(run.id, "w1", 1, RunStatus::Running, None)
            .await
            .is_err(),
        "finishing needs a final state"
    );
    assert!(
        !store
            .finish_run(RunId::new(), "w1", 1, RunStatus::Failed, None)
            .await?,
        "an unknown run"
    );

    let before = Utc::now() - TimeDelta::seconds(1);
    assert!(
        store
            .finish_run(run.id, "w1", 1, RunStatus::Failed, Some("exit code 3"))
            .await?
    );
    let done = found(store.get_run(run.id).await?, "run")?;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("exit code 3"));
    assert_eq!(done.lease_until, None, "lease cleared");
    assert!(
        done.finished_at.is_some_and(|t| t >= before),
        "finish time set"
    );
    assert_eq!((done.worker.as_deref(), done.attempt), (Some("w1"), 1));
    assert!(
        !store
            .finish_run(run.id, "w1", 1, RunStatus::Succeeded, None)
            .await?,
        "a finished run cannot be finished again"
    );
    assert_eq!(store.get_run(run.id).await?, Some(done));

    assert!(
        store
            .finish_run(other.id, "w1", 1, RunStatus::TimedOut, None)
            .await?
    );
    let timed_out = found(store.get_run(other.id).await?, "run")?;
    assert_eq!(
        (timed_out.status, timed_out.error),
        (RunStatus::TimedOut, None)
    );
    Ok(())
}

/// `request_cancel`: queued → `cancelled` at once; running → flagged
/// `cancel_requested`; finished → unchanged; unknown → `None`.
pub async fn request_cancel_in_each_state(store: Arc<dyn Store>) -> Result<()> {
    let now = now_ms();
    let running_src = queued_run("deploy", now - TimeDelta::minutes(10));
    let queued = queued_run("deploy", now - TimeDelta::minutes(1));
    insert_all(&*store, vec![running_src.clone(), queued.clone()]).await?;
    let running = store
        .claim_queued(&Claim {
            only: Some(running_src.id),
            ..claim("w1", 1)
        })
        .await?
        .pop()
        .ok_or_else(|| Error::Internal("nothing claimed".into()))?;
    let mut finished = queued_run("deploy", now - TimeDelta::minutes(20));
    finished.status = RunStatus::Succeeded;
    finished.finished_at = Some(now - TimeDelta::minutes(15));
    store.insert_run(&finished).await?;

    let before = Utc::now() - TimeDelta::seconds(1);
    let c = found(store.request_cancel(queued.id).await?, "cancelled run")?;
    assert_eq!(
        c.status,
        RunStatus::Cancelled,
        "a queued run is cancelled at once"
    );
    assert!(c.cancel_requested);
    assert!(c.finished_at.is_some_and(|t| t >= before), "and finished");
    assert_eq!(
        store.get_run(queued.id).await?.as_ref(),
        Some(&c),
        "returned as stored"
    );
    assert!(
        store
            .claim_queued(&Claim {
                only: Some(queued.id),
                ..claim("w2", 1)
            })
            .await?
            .is_empty(),
        "a cancelled run is not claimed"
    );

    let r = found(store.request_cancel(running.id).await?, "running run")?;
    let mut want = running.clone();
    want.cancel_requested = true;
    assert_eq!(r, want, "a running run is only flagged");
    assert!(
        store
            .heartbeat(running.id, "w1", 1, now + TimeDelta::minutes(5))
            .await?,
        "its owner still owns it"
    );

    let f = found(store.request_cancel(finished.id).await?, "finished run")?;
    assert_eq!(f, finished, "a finished run is unchanged");

    let again = found(store.request_cancel(queued.id).await?, "cancelled run")?;
    assert_eq!(again, c, "cancelling twice changes nothing");

    assert_eq!(
        store.request_cancel(RunId::new()).await?,
        None,
        "unknown run"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// step results and logs
// ---------------------------------------------------------------------------

/// Step results are upserted by (run, step, target) and read back by step,
/// then target, with every field intact.
pub async fn step_results_upsert_and_order(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    let result = |step: u32, target: &str| StepResult {
        run_id: run.id,
        step,
        target: target.into(),
        status: StepStatus::Running,
        exit_code: None,
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(1_000 + i64::from(step)),
        finished_at: None,
    };
    for (step, target) in [
        (1, "web-2"),
        (0, "web-2"),
        (1, "db"),
        (0, "web-1"),
        (10, "a"),
        (2, "a"),
    ] {
        store.put_step_result(&result(step, target)).await?;
    }
    store
        .put_step_result(&StepResult {
            run_id: other.id,
            ..result(0, "web-1")
        })
        .await?;
    let order: Vec<_> = store
        .step_results(run.id)
        .await?
        .into_iter()
        .map(|r| (r.step, r.target))
        .collect();
    assert_eq!(
        order,
        vec![
            (0, "web-1".to_string()),
            (0, "web-2".into()),
            (1, "db".into()),
            (1, "web-2".into()),
            (2, "a".into()),
            (10, "a".into()),
        ],
        "by step (numerically), then target; only this run's"
    );

    let done = StepResult {
        status: StepStatus::Failed,
        exit_code: Some(-1),
        signal: Some(9),
        error: Some("killed by signal 9 — out of memory?".into()),
        attempt: 2,
        started_at: at(5_000),
        finished_at: Some(at(6_789)),
        ..result(1, "db")
    };
    store.put_step_result(&done).await?;
    let results = store.step_results(run.id).await?;
    assert_eq!(results.len(), 6, "an upsert adds no row");
    assert_eq!(results[2], done, "replaced, every field intact");
    assert_eq!(results[0], result(0, "web-1"));
    assert!(store.step_results(RunId::new()).await?.is_empty());
    Ok(())
}

/// A page of results: by step (numerically), then target in byte order,
/// strictly after the cursor, at most `limit`, only the run's own; paging
/// with the last result of each page as the next cursor visits every
/// result once.
pub async fn step_results_page_after_a_cursor(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    let result = |run_id: RunId, step: u32, target: &str| StepResult {
        run_id,
        step,
        target: target.into(),
        status: StepStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(1_000),
        finished_at: Some(at(2_000)),
    };
    // Byte order: upper case before lower case, "web-10" before "web-2".
    let targets = ["Web", "web-1", "web-10", "web-2", "\u{e9}t\u{e9}"];
    for step in [10u32, 2, 0, 1] {
        for t in targets {
            store.put_step_result(&result(run.id, step, t)).await?;
        }
    }
    store.put_step_result(&result(other.id, 1, "web-1")).await?;
    let mut expected: Vec<(u32, String)> = [0u32, 1, 2, 10]
        .iter()
        .flat_map(|s| targets.iter().map(move |t| (*s, t.to_string())))
        .collect();
    expected.sort_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
    let key = |r: StepResult| (r.step, r.target);

    let first: Vec<_> = store
        .step_results_page(run.id, None, 3)
        .await?
        .into_iter()
        .map(key)
        .collect();
    assert_eq!(first, expected[..3].to_vec(), "the first page");
    let mut seen = Vec::new();
    let mut after: Option<(u32, String)> = None;
    loop {
        let page = store
            .step_results_page(run.id, after.as_ref().map(|(s, t)| (*s, t.as_str())), 3)
            .await?;
        assert!(page.len() <= 3, "at most `limit`");
        let Some(last) = page.last() else { break };
        after = Some((last.step, last.target.clone()));
        seen.extend(page.into_iter().map(key));
    }
    assert_eq!(seen, expected, "every result once, in order");
    let tail = store
        .step_results_page(run.id, Some((2, "web-10")), 100)
        .await?;
    assert_eq!(
        tail.into_iter().map(key).collect::<Vec<_>>(),
        expected[expected
            .iter()
            .position(|e| *e == (2, "web-10".into()))
            .unwrap_or(0)
            + 1..]
            .to_vec(),
        "strictly after the cursor"
    );
    assert!(
        store
            .step_results_page(RunId::new(), None, 10)
            .await?
            .is_empty()
    );
    Ok(())
}

/// Log chunks come back in `seq` order whatever the order of appends,
/// after `after`, at most `limit`, every field intact (any bytes).
pub async fn logs_read_back_in_seq_order(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    let all: Vec<LogChunk> = (1..=10)
        .map(|s| chunk(run.id, s, &format!("line {s}\n")))
        .collect();
    store.append_logs(&[all[4].clone(), all[2].clone()]).await?;
    store.append_logs(&all[5..]).await?;
    store
        .append_logs(&[all[1].clone(), all[0].clone(), all[3].clone()])
        .await?;
    store
        .append_logs(&[chunk(other.id, 1, "other run\n")])
        .await?;
    store.append_logs(&[]).await?;

    assert_eq!(store.read_logs(run.id, 0, 100).await?, all, "in seq order");
    assert_eq!(store.read_logs(run.id, 4, 100).await?, all[4..], "after 4");
    assert_eq!(
        store.read_logs(run.id, 4, 3).await?,
        all[4..7],
        "after 4, at most 3"
    );
    assert!(
        store.read_logs(run.id, 10, 100).await?.is_empty(),
        "after the last"
    );
    assert!(store.read_logs(RunId::new(), 0, 100).await?.is_empty());
    assert_eq!(store.read_logs(other.id, 0, 100).await?.len(), 1);

    let odd = LogChunk {
        run_id: run.id,
        seq: 11,
        step: None,
        target: None,
        stream: Stream::System,
        data: vec![0, 159, 146, 150, 255, b'\n', 0],
        time: at(123_456),
    };
    let err = LogChunk {
        seq: 12,
        step: Some(7),
        target: Some("db".into()),
        stream: Stream::Stderr,
        data: vec![],
        ..odd.clone()
    };
    store.append_logs(&[odd.clone(), err.clone()]).await?;
    assert_eq!(
        store.read_logs(run.id, 10, 100).await?,
        vec![odd, err],
        "every field intact, bytes as given"
    );
    Ok(())
}

/// Appending an existing `(run, seq)` is an error-free no-op: a retried
/// batch never duplicates and never overwrites.
pub async fn log_append_of_an_existing_seq_is_a_no_op(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    store.insert_run(&run).await?;
    let first: Vec<LogChunk> = (1..=3).map(|s| chunk(run.id, s, "original\n")).collect();
    store.append_logs(&first).await?;
    store.append_logs(&first).await?;
    assert_eq!(
        store.read_logs(run.id, 0, 100).await?,
        first,
        "a retried batch"
    );

    let overlapping: Vec<LogChunk> = (2..=5).map(|s| chunk(run.id, s, "retry\n")).collect();
    store.append_logs(&overlapping).await?;
    let got = store.read_logs(run.id, 0, 100).await?;
    let mut want = first.clone();
    want.extend_from_slice(&overlapping[2..]);
    assert_eq!(got, want, "existing chunks kept, new ones added");

    // Many chunks in one call, half of them already there.
    let big: Vec<LogChunk> = (1..=1500).map(|s| chunk(run.id, s, "bulk\n")).collect();
    store.append_logs(&big).await?;
    let got = store.read_logs(run.id, 0, 5000).await?;
    assert_eq!(got.len(), 1500);
    assert_eq!(got[..5], want[..], "the first chunks are the originals");
    assert!(got.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(store.last_log_seq(run.id).await?, 1500);
    Ok(())
}

/// `last_log_seq` is the highest stored `seq` of the run, 0 without logs.
pub async fn last_log_seq(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    assert_eq!(store.last_log_seq(run.id).await?, 0);
    assert_eq!(store.last_log_seq(RunId::new()).await?, 0, "unknown run");
    store
        .append_logs(&[
            chunk(run.id, 2, "b"),
            chunk(run.id, 7, "c"),
            chunk(run.id, 1, "a"),
        ])
        .await?;
    store.append_logs(&[chunk(other.id, 40, "x")]).await?;
    assert_eq!(store.last_log_seq(run.id).await?, 7);
    assert_eq!(store.last_log_seq(other.id).await?, 40);
    Ok(())
}

/// Step results and log chunks of a run that does not exist are refused
/// (and nothing of such a log batch is stored).
pub async fn logs_and_step_results_need_an_existing_run(store: Arc<dyn Store>) -> Result<()> {
    let ghost = RunId::new();
    let result = StepResult {
        run_id: ghost,
        step: 0,
        target: "local".into(),
        status: StepStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(0),
        finished_at: Some(at(1)),
    };
    assert!(
        store.put_step_result(&result).await.is_err(),
        "a step result"
    );
    assert!(store.step_results(ghost).await?.is_empty());

    let run = queued_run("deploy", at(0));
    store.insert_run(&run).await?;
    let mixed = [chunk(run.id, 1, "ok"), chunk(ghost, 1, "ghost")];
    assert!(store.append_logs(&mixed).await.is_err(), "a log chunk");
    assert!(
        store.read_logs(run.id, 0, 10).await?.is_empty(),
        "nothing of the refused batch is stored"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// users, logins (refresh-token families), API tokens
// ---------------------------------------------------------------------------

/// The backend's user store, which these rules need.
fn users_of(store: &dyn Store) -> Result<&dyn opsconductor_core::store::UserStore> {
    store.user_store().ok_or_else(|| {
        Error::Internal(format!(
            "behaviour suite: the {} store has no user store (Store::user_store)",
            store.backend()
        ))
    })
}

/// A user fixture (the hash is opaque to the store).
pub fn user(name: &str, role: opsconductor_core::auth::Role) -> opsconductor_core::auth::User {
    opsconductor_core::auth::User {
        username: name.into(),
        role,
        disabled: false,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$fixture${name}"),
        created_at: at(0),
        password_changed_at: at(1),
    }
}

/// A refresh token of `family` for `username`, expiring at `expires_at`.
pub fn refresh_token(
    hash: &str,
    family: &str,
    username: &str,
    expires_at: DateTime<Utc>,
) -> opsconductor_core::auth::RefreshToken {
    opsconductor_core::auth::RefreshToken {
        token_hash: hash.into(),
        family: family.into(),
        username: username.into(),
        expires_at,
        used_at: None,
    }
}

/// Users: create (a taken name is a `Conflict`), read back every field,
/// list by name, update role / disabled / password hash and its time
/// (false for an unknown user).
pub async fn users_crud(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::Role;
    let us = users_of(store.as_ref())?;
    assert!(
        us.list_users().await?.is_empty(),
        "a fresh store has no users"
    );
    let bob = user("bob", Role::Viewer);
    us.create_user(&bob).await?;
    us.create_user(&user("alice", Role::Admin)).await?;
    let again = us.create_user(&user("bob", Role::Admin)).await;
    assert_eq!(
        again.err().map(|e| e.kind()),
        Some(ErrorKind::Conflict),
        "creating a user whose name exists"
    );
    let got = found(us.get_user("bob").await?, "user bob")?;
    assert_eq!(got, bob, "every field round-trips");
    assert_eq!(got.password_hash, bob.password_hash);
    assert!(us.get_user("nobody").await?.is_none());
    let names: Vec<String> = us
        .list_users()
        .await?
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob"], "users are listed by name");

    let mut changed = bob.clone();
    changed.role = Role::Operator;
    changed.disabled = true;
    changed.password_hash = "$argon2id$new".into();
    changed.password_changed_at = at(5_000);
    assert!(us.update_user(&changed).await?, "updating an existing user");
    assert_eq!(found(us.get_user("bob").await?, "user bob")?, changed);
    assert!(
        !us.update_user(&user("ghost", Role::Viewer)).await?,
        "updating an unknown user reports false"
    );
    Ok(())
}

/// A refresh token is `Fresh` once; presenting it again answers `Reused`
/// and revokes the whole family: its other tokens become `Invalid` and
/// `is_family_revoked` says so. Other families are untouched.
pub async fn refresh_token_reuse_revokes_the_family(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::RefreshUse;
    let us = users_of(store.as_ref())?;
    let now = now_ms();
    let later = now + TimeDelta::days(7);
    us.put_refresh_token(&refresh_token("h1", "fam-a", "bob", later))
        .await?;
    us.put_refresh_token(&refresh_token("other", "fam-b", "bob", later))
        .await?;
    assert!(!us.is_family_revoked("fam-a").await?, "a new login stands");
    match us.use_refresh_token("h1", now).await? {
        RefreshUse::Fresh(t) => {
            assert_eq!(t.family, "fam-a");
            assert_eq!(t.username, "bob");
            assert_eq!(t.token_hash, "h1");
            assert_eq!(t.expires_at, later);
            assert!(t.used_at.is_some(), "Fresh returns the token marked used");
        }
        other => panic!("first use of a token: expected Fresh, got {other:?}"),
    }
    // The rotation's next token, then a replay of the spent one.
    us.put_refresh_token(&refresh_token("h2", "fam-a", "bob", later))
        .await?;
    assert_eq!(
        us.use_refresh_token("h1", now + TimeDelta::seconds(1))
            .await?,
        RefreshUse::Reused {
            family: "fam-a".into()
        },
        "second use of a spent token"
    );
    assert!(
        us.is_family_revoked("fam-a").await?,
        "reuse revokes the family"
    );
    assert_eq!(
        us.use_refresh_token("h2", now + TimeDelta::seconds(2))
            .await?,
        RefreshUse::Invalid,
        "the family's unspent token is void after reuse"
    );
    assert!(!us.is_family_revoked("fam-b").await?, "other logins stand");
    assert!(matches!(
        us.use_refresh_token("other", now).await?,
        RefreshUse::Fresh(_)
    ));
    Ok(())
}

/// Of 8 concurrent uses of one refresh token exactly one gets `Fresh`; the
/// others see a spent token (`Reused`), so the family ends up revoked.
pub async fn concurrent_refresh_uses_give_exactly_one_fresh(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::RefreshUse;
    let us = users_of(store.as_ref())?;
    let now = now_ms();
    us.put_refresh_token(&refresh_token(
        "race",
        "fam",
        "bob",
        now + TimeDelta::days(1),
    ))
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let us = users_of(store.as_ref())?;
            us.use_refresh_token("race", now).await
        });
    }
    let (mut fresh, mut reused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| Error::Internal(format!("a refresh task failed: {e}")))?? {
            RefreshUse::Fresh(_) => fresh += 1,
            RefreshUse::Reused { family } => {
                assert_eq!(family, "fam");
                reused += 1;
            }
            RefreshUse::Invalid => {}
        }
    }
    assert_eq!(fresh, 1, "exactly one concurrent use wins");
    assert!(reused >= 1, "a losing use is a reuse");
    assert!(us.is_family_revoked("fam").await?);
    Ok(())
}

/// Unknown tokens, expired tokens and tokens of a revoked family are
/// `Invalid`; an unknown family counts as revoked; `revoke_user_families`
/// ends every login of that user and no one else's.
pub async fn invalid_refresh_tokens_and_revocations(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::RefreshUse;
    let us = users_of(store.as_ref())?;
    let now = now_ms();
    assert_eq!(
        us.use_refresh_token("nope", now).await?,
        RefreshUse::Invalid
    );
    us.put_refresh_token(&refresh_token(
        "old",
        "f-old",
        "bob",
        now - TimeDelta::seconds(1),
    ))
    .await?;
    assert_eq!(
        us.use_refresh_token("old", now).await?,
        RefreshUse::Invalid,
        "an expired token"
    );
    us.put_refresh_token(&refresh_token(
        "lo",
        "f-out",
        "bob",
        now + TimeDelta::days(1),
    ))
    .await?;
    us.revoke_family("f-out").await?;
    us.revoke_family("f-out").await?; // idempotent
    assert_eq!(
        us.use_refresh_token("lo", now).await?,
        RefreshUse::Invalid,
        "a token of a logged-out family"
    );
    assert!(us.is_family_revoked("never-issued").await?);

    for (hash, fam, who) in [
        ("b1", "bob-1", "bob"),
        ("b2", "bob-2", "bob"),
        ("c1", "carol-1", "carol"),
    ] {
        us.put_refresh_token(&refresh_token(hash, fam, who, now + TimeDelta::days(1)))
            .await?;
    }
    us.revoke_user_families("bob").await?;
    assert!(us.is_family_revoked("bob-1").await?);
    assert!(us.is_family_revoked("bob-2").await?);
    assert!(!us.is_family_revoked("carol-1").await?, "only bob's logins");
    assert_eq!(us.use_refresh_token("b2", now).await?, RefreshUse::Invalid);
    assert!(matches!(
        us.use_refresh_token("c1", now).await?,
        RefreshUse::Fresh(_)
    ));
    Ok(())
}

/// API tokens: create (a taken id is a `Conflict`), read back every field,
/// list one user's or everyone's (oldest first), revoke once (false the
/// second time and for unknown ids).
pub async fn api_tokens_crud(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::auth::{ApiToken, Role};
    let us = users_of(store.as_ref())?;
    let token = |id: &str, who: &str, created: i64| ApiToken {
        id: id.into(),
        name: format!("{id} for ci"),
        role: Role::Operator,
        username: who.into(),
        token_hash: format!("hash-{id}"),
        created_at: at(created),
        expires_at: Some(at(86_400_000)),
        revoked_at: None,
        last_used_at: None,
    };
    let first = token("tok1", "bob", 0);
    us.create_api_token(&first).await?;
    us.create_api_token(&token("tok2", "carol", 10)).await?;
    us.create_api_token(&token("tok3", "bob", 20)).await?;
    assert_eq!(
        us.create_api_token(&token("tok1", "carol", 30))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Conflict),
        "a token id is unique"
    );
    assert_eq!(found(us.get_api_token("tok1").await?, "token tok1")?, first);
    assert!(us.get_api_token("none").await?.is_none());
    let ids = |v: Vec<ApiToken>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(us.list_api_tokens(Some("bob")).await?),
        ["tok1", "tok3"]
    );
    assert_eq!(
        ids(us.list_api_tokens(None).await?),
        ["tok1", "tok2", "tok3"]
    );
    assert!(us.revoke_api_token("tok1", at(500)).await?);
    assert!(
        !us.revoke_api_token("tok1", at(600)).await?,
        "revoking twice reports false"
    );
    assert!(!us.revoke_api_token("none", at(600)).await?);
    let revoked = found(us.get_api_token("tok1").await?, "token tok1")?;
    assert_eq!(
        revoked.revoked_at,
        Some(at(500)),
        "the first revocation time stays"
    );
    Ok(())
}

fn secrets_of(store: &dyn Store) -> Result<&dyn opsconductor_core::store::SecretStore> {
    store
        .secret_store()
        .ok_or_else(|| opsconductor_core::Error::Store("this backend has no secret store".into()))
}

fn secret_record(
    name: &str,
    version: u32,
    key_version: u32,
    ct: &[u8],
) -> opsconductor_core::secrets::SecretRecord {
    let now = at(1_000);
    opsconductor_core::secrets::SecretRecord {
        id: format!("id-{name}"),
        ciphertext: ct.to_vec(),
        meta: opsconductor_core::secrets::SecretMeta {
            name: name.into(),
            kind: "password".into(),
            description: "d".into(),
            version,
            key_version,
            created_at: now,
            created_by: "alice".into(),
            updated_at: now,
            updated_by: "bob".into(),
        },
    }
}

/// Secrets: create (a taken name is a `Conflict`), every field round-trips,
/// updates are guarded by the value version, rewraps by the key version,
/// and every change (also a delete) leaves a history entry.
pub async fn secrets_create_update_rewrap_delete_with_history(store: Arc<dyn Store>) -> Result<()> {
    let ss = secrets_of(store.as_ref())?;
    let a = secret_record("a", 1, 1, b"ct-1");
    ss.create_secret(&a).await?;
    let dup = ss.create_secret(&a).await;
    assert_eq!(dup.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    assert_eq!(
        found(ss.get_secret("a").await?, "secret a")?,
        a,
        "every field round-trips"
    );
    ss.create_secret(&secret_record("b", 1, 1, b"ct-b")).await?;
    let names: Vec<String> = ss
        .list_secrets()
        .await?
        .into_iter()
        .map(|s| s.meta.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Update from version 1 to 2 works once; a stale update (1 → 2 again) is refused.
    let a2 = secret_record("a", 2, 1, b"ct-2");
    assert!(ss.update_secret(&a2).await?);
    assert!(
        !ss.update_secret(&a2).await?,
        "a stale update must not overwrite"
    );
    assert_eq!(found(ss.get_secret("a").await?, "a")?.ciphertext, b"ct-2");
    // Rewrap only from the expected key version.
    assert!(ss.rewrap_secret("a", 1, 2, b"ct-k2").await?);
    assert!(
        !ss.rewrap_secret("a", 1, 2, b"ct-other").await?,
        "already at key 2"
    );
    let now = found(ss.get_secret("a").await?, "a")?;
    assert_eq!(
        (
            now.meta.key_version,
            now.meta.version,
            now.ciphertext.as_slice()
        ),
        (2, 2, &b"ct-k2"[..])
    );
    assert!(ss.delete_secret("a", "carol").await?);
    assert!(!ss.delete_secret("a", "carol").await?);
    assert!(ss.get_secret("a").await?.is_none());
    let h: Vec<(String, String)> = ss
        .secret_history("a")
        .await?
        .into_iter()
        .map(|c| (c.action, c.by))
        .collect();
    assert_eq!(h.len(), 4, "{h:?}");
    assert_eq!(h[0], ("created".to_string(), "alice".to_string()));
    assert_eq!(h[1].0, "updated");
    assert!(h[2].0.starts_with("rewrapped"));
    assert_eq!(h[3], ("deleted".to_string(), "carol".to_string()));
    Ok(())
}

/// Key records: registering a version twice keeps the first; retiring works once.
pub async fn key_records_register_once_and_retire(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::secrets::KeyRecord;
    let ss = secrets_of(store.as_ref())?;
    let rec = |v: u32, check: &[u8]| KeyRecord {
        version: v,
        salt: Some(vec![1, 2, 3]),
        check: check.to_vec(),
        created_at: at(5),
        retired_at: None,
    };
    ss.put_key_record(&rec(1, b"first")).await?;
    ss.put_key_record(&rec(1, b"second")).await?;
    ss.put_key_record(&rec(2, b"two")).await?;
    let got = ss.key_records().await?;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], rec(1, b"first"), "the first registration stands");
    assert!(ss.retire_key(1).await?);
    assert!(!ss.retire_key(1).await?);
    assert!(ss.key_records().await?[0].retired_at.is_some());
    Ok(())
}

/// The audit chain: concurrent appends from many tasks still form one
/// linear chain (each event's `prev_hash` is its predecessor's `hash`, and
/// each `hash` is the event's chain hash).
pub async fn audit_chain_stays_linear_under_concurrent_appends(
    store: Arc<dyn Store>,
) -> Result<()> {
    use opsconductor_core::model::AuditEvent;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let a = store
                .audit_store()
                .ok_or_else(|| opsconductor_core::Error::Store("no audit store".into()))?;
            for i in 0..10 {
                a.append_audit(&AuditEvent::now(
                    &format!("task{t}"),
                    "test.append",
                    format!("obj:{i}"),
                    json!({"i": i}),
                ))
                .await?;
            }
            Ok::<(), opsconductor_core::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| opsconductor_core::Error::Internal(e.to_string()))??;
    }
    let a = store
        .audit_store()
        .ok_or_else(|| opsconductor_core::Error::Store("no audit store".into()))?;
    let all = a.audit_after(0, 1000).await?;
    assert_eq!(all.len(), 80);
    let mut prev = String::new();
    for (n, e) in all.iter().enumerate() {
        assert_eq!(
            e.prev_hash, prev,
            "event {n} is not chained to its predecessor"
        );
        assert_eq!(e.hash, e.chain_hash(&e.prev_hash), "event {n}'s hash");
        prev = e.hash.clone();
    }
    let newest = a.list_audit(Some("obj:3"), 100).await?;
    assert_eq!(newest.len(), 8);
    assert!(
        newest.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// retention
// ---------------------------------------------------------------------------

/// A run in `status` that finished at `finished` (None: not finished).
fn aged_run(status: RunStatus, finished: Option<DateTime<Utc>>) -> Run {
    let mut run = queued_run("deploy", at(0));
    run.status = status;
    run.attempt = 1;
    run.started_at = Some(at(1));
    run.finished_at = finished;
    if status == RunStatus::Running {
        run.worker = Some("w1".into());
        run.lease_until = Some(Utc::now() + TimeDelta::minutes(5));
    }
    run
}

/// Stores a run with `logs` log chunks and one step result.
async fn run_with_data(store: &dyn Store, run: &Run, logs: u64) -> Result<()> {
    store.insert_run(run).await?;
    let chunks: Vec<LogChunk> = (1..=logs).map(|s| chunk(run.id, s, "x\n")).collect();
    store.append_logs(&chunks).await?;
    store
        .put_step_result(&StepResult {
            run_id: run.id,
            step: 0,
            target: "local".into(),
            status: StepStatus::Succeeded,
            exit_code: Some(0),
            signal: None,
            error: None,
            attempt: 1,
            started_at: at(1),
            finished_at: Some(at(2)),
        })
        .await
}

fn retention_of(store: &dyn Store) -> Result<&dyn opsconductor_core::store::RetentionStore> {
    store
        .retention_store()
        .ok_or_else(|| Error::Internal("behaviour suite: the store has no retention".into()))
}

/// Pruning touches only runs in a final state finished before the cut-off:
/// queued and running runs (even with an old `finished_at`) and recent
/// finished runs keep their results and logs.
pub async fn prune_keeps_unfinished_and_recent_runs(store: Arc<dyn Store>) -> Result<()> {
    let r = retention_of(&*store)?;
    let cut = at(10_000);
    let old = [
        aged_run(RunStatus::Succeeded, Some(at(5_000))),
        aged_run(RunStatus::Failed, Some(at(5_000))),
        aged_run(RunStatus::Cancelled, Some(at(5_000))),
        aged_run(RunStatus::TimedOut, Some(at(5_000))),
    ];
    let keep = [
        aged_run(RunStatus::Queued, None),
        aged_run(RunStatus::Running, None),
        // Not finished although something wrote an old finish time.
        aged_run(RunStatus::Running, Some(at(5_000))),
        aged_run(RunStatus::Succeeded, Some(at(20_000))),
    ];
    for run in old.iter().chain(&keep) {
        run_with_data(&*store, run, 3).await?;
    }
    let counts = r.count_prunable(Some(cut), None).await?;
    assert_eq!(
        (counts.runs, counts.results, counts.logs),
        (4, 4, 12),
        "dry counts"
    );
    assert_eq!(r.prune_logs(cut, 1000).await?, 12, "logs of the old runs");
    assert_eq!(
        r.prune_results(cut, 1000).await?,
        4,
        "results of the old runs"
    );
    assert_eq!(r.prune_runs(cut, 1000).await?, 4, "the old runs");
    assert_eq!(r.prune_runs(cut, 1000).await?, 0, "nothing left");
    for run in &old {
        assert!(
            store.get_run(run.id).await?.is_none(),
            "{} pruned",
            run.status
        );
        assert!(store.read_logs(run.id, 0, 100).await?.is_empty());
    }
    for run in &keep {
        assert!(
            store.get_run(run.id).await?.is_some(),
            "{} kept",
            run.status
        );
        assert_eq!(
            store.read_logs(run.id, 0, 100).await?.len(),
            3,
            "{} logs kept",
            run.status
        );
        assert_eq!(
            store.step_results(run.id).await?.len(),
            1,
            "{} results kept",
            run.status
        );
    }
    // Queued work is still claimable.
    assert_eq!(store.claim_queued(&claim("w2", 10)).await?.len(), 1);
    Ok(())
}

/// Each prune call removes at most `limit` rows and reports how many.
pub async fn prune_works_in_bounded_batches(store: Arc<dyn Store>) -> Result<()> {
    let r = retention_of(&*store)?;
    let cut = at(10_000);
    let runs: Vec<Run> = (0..3)
        .map(|_| aged_run(RunStatus::Succeeded, Some(at(5_000))))
        .collect();
    for run in &runs {
        run_with_data(&*store, run, 9).await?;
    }
    let mut got = Vec::new();
    loop {
        let n = r.prune_logs(cut, 10).await?;
        got.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(got, vec![10, 10, 7, 0], "27 log chunks in batches of 10");
    assert_eq!(r.prune_results(cut, 2).await?, 2);
    assert_eq!(r.prune_runs(cut, 2).await?, 2, "runs in batches too");
    assert_eq!(r.prune_runs(cut, 2).await?, 1);
    assert_eq!(r.prune_runs(cut, 2).await?, 0);
    Ok(())
}

/// Logs may go sooner than run records: pruning logs with a later cut-off
/// keeps the runs and their results.
pub async fn prune_logs_before_runs(store: Arc<dyn Store>) -> Result<()> {
    let r = retention_of(&*store)?;
    let older = aged_run(RunStatus::Succeeded, Some(at(5_000)));
    let newer = aged_run(RunStatus::Failed, Some(at(15_000)));
    let recent = aged_run(RunStatus::Succeeded, Some(at(30_000)));
    for run in [&older, &newer, &recent] {
        run_with_data(&*store, run, 4).await?;
    }
    let (runs_cut, logs_cut) = (at(10_000), at(20_000));
    let counts = r.count_prunable(Some(runs_cut), Some(logs_cut)).await?;
    assert_eq!(
        (counts.runs, counts.logs),
        (1, 8),
        "one run; the logs of two"
    );
    assert_eq!(r.prune_logs(logs_cut, 1000).await?, 8);
    assert!(
        store.read_logs(newer.id, 0, 100).await?.is_empty(),
        "logs gone"
    );
    assert!(
        store.get_run(newer.id).await?.is_some(),
        "the run record stays"
    );
    assert_eq!(
        store.step_results(newer.id).await?.len(),
        1,
        "its results stay"
    );
    assert_eq!(store.read_logs(recent.id, 0, 100).await?.len(), 4);
    assert_eq!(r.prune_results(runs_cut, 1000).await?, 1);
    assert_eq!(r.prune_runs(runs_cut, 1000).await?, 1);
    assert!(store.get_run(older.id).await?.is_none());
    assert!(store.get_run(newer.id).await?.is_some());
    Ok(())
}

/// Audit pruning stores a checkpoint (the newest pruned event's seq and
/// hash) the first kept event chains to, deletes in batches, never deletes
/// the newest event (appends chain to it), and the export mark only rises.
pub async fn audit_prune_keeps_a_checkpoint(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::model::AuditEvent;
    let r = retention_of(&*store)?;
    let a = found(store.audit_store(), "the audit store")?;
    assert!(r.audit_checkpoint().await?.is_none());
    for i in 0..10 {
        a.append_audit(&AuditEvent::now(
            "alice",
            "test.append",
            format!("obj:{i}"),
            json!({}),
        ))
        .await?;
    }
    let all = a.audit_after(0, 100).await?;
    let fourth = &all[3];
    assert_eq!(r.prune_audit(fourth.seq, 3).await?, 3, "a batch");
    let cp = found(r.audit_checkpoint().await?, "the checkpoint")?;
    assert_eq!(
        (cp.seq, cp.hash.as_str()),
        (fourth.seq, fourth.hash.as_str())
    );
    assert_eq!(r.prune_audit(fourth.seq, 3).await?, 1, "the rest up to it");
    assert_eq!(r.prune_audit(fourth.seq, 3).await?, 0);
    let kept = a.audit_after(0, 100).await?;
    assert_eq!(kept.len(), 6);
    assert_eq!(
        kept[0].prev_hash, cp.hash,
        "the first kept event chains to the checkpoint"
    );

    assert_eq!(r.prune_audit(u64::MAX, 100).await?, 5, "all but the newest");
    assert_eq!(a.audit_after(0, 100).await?.len(), 1);
    a.append_audit(&AuditEvent::now("alice", "test.append", "obj:x", json!({})))
        .await?;
    let after = a.audit_after(0, 100).await?;
    assert_eq!(after.len(), 2);
    assert_eq!(after[1].prev_hash, after[0].hash, "appends chain on");
    assert!(after[1].seq > after[0].seq);

    assert_eq!(r.audit_exported_through().await?, 0);
    r.set_audit_exported_through(7).await?;
    r.set_audit_exported_through(3).await?;
    assert_eq!(r.audit_exported_through().await?, 7, "never lowered");
    Ok(())
}
