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

// One file per aggregate; every rule is re-exported here, so
// `behaviour::<rule>` names it whatever file it lives in.
mod apply;
mod approvals;
mod audit;
mod claims;
mod flow;
mod jobs;
mod logs;
mod notify;
mod results;
mod retention;
mod runs;
mod schedules;
mod secrets;
mod targets;
mod users;

pub use self::apply::*;
pub use self::approvals::*;
pub use self::audit::*;
pub use self::claims::*;
pub use self::flow::*;
pub use self::jobs::*;
pub use self::logs::*;
pub use self::notify::*;
pub use self::results::*;
pub use self::retention::*;
pub use self::runs::*;
pub use self::schedules::*;
pub use self::secrets::*;
pub use self::targets::*;
pub use self::users::*;

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
/// // tests/it/postgres.rs
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
            step_results_page_walks_every_result_once,
            step_results_page_after_a_cursor,
            guarded_result_batches_are_all_or_nothing,
            step_outputs_and_children_round_trip,
            one_child_run_per_parent_step_and_target,
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
            schedules_apply_with_jobs_and_keep_a_pause,
            due_schedules_are_active_and_oldest_first,
            fire_commits_are_exactly_once_under_races,
            stale_generations_and_pending_promotions_are_refused,
            scheduled_runs_record_schedule_and_fire_time,
            notify_channels_crud,
            finish_run_notifying_is_guarded_and_atomic,
            deliveries_are_claimed_once_retried_and_rescued,
            delivery_history_by_run_and_channel,
            approval_requests_round_trip_and_orphans_stay_hidden,
            decisions_count_distinct_approvers_and_move_the_run,
            expired_requests_end_the_run_and_the_sweep_is_guarded,
            approval_races_with_expiry_and_cancel_have_one_outcome,
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
        notify: vec![],
        steps: vec![step(
            "hello",
            Action::Exec {
                command: "echo hello".into(),
            },
        )],
        strategy: Default::default(),
        batch: None,
        pause: None,
        max_failures: None,
        retry: None,
        on_failure: vec![],
        finally: vec![],
        approval: None,
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
        schedule: None,
        parent: None,
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
        try_no: 1,
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
