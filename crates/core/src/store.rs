//! Persistence traits, grouped by aggregate. Every backend implements all of
//! them and passes the one behaviour suite (`opsconductor_store::behaviour`).
//!
//! Rules every backend MUST follow (the suite checks each):
//! - `apply` is atomic: either every target and job of the batch is stored or none.
//! - A job version is immutable; storing a spec equal to the latest version
//!   stores nothing and reports `Unchanged`.
//! - `claim_queued` hands each queued run to exactly one caller, oldest first,
//!   and never more than `limit` runs.
//! - `claim_expired` takes over only runs still `running` whose lease ended,
//!   in one guarded statement: a run that finished meanwhile is never touched.
//! - `heartbeat` and `finish_run` succeed only for the current owner
//!   (worker and attempt), so a worker that lost its lease cannot overwrite.
//!   So do `put_step_result_as` and `append_logs_as`, the writes a worker
//!   makes while it runs a run (fencing: a rescued run's old holder can
//!   write nothing); the check and the write are one atomic step.
//! - Log chunks of a run are read back in `seq` order; appending an existing
//!   `(run, seq)` is an error-free no-op (a retried batch never duplicates).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::auth::{ApiToken, RefreshToken, RefreshUse, User};
use crate::bus::Event;
use crate::engine::notify::{
    Attempt, Channel, Delivery, DeliveryFilter, DeliveryNext, NewDelivery,
};
use crate::error::Result;
use crate::model::{AuditEvent, Job, JobSpec, LogChunk, Run, RunId, RunStatus, StepResult, Target};
use crate::secrets::{KeyRecord, SecretChange, SecretRecord};

/// Targets and jobs stored together by one `apply`.
#[derive(Debug, Clone, Default)]
pub struct ApplyBatch {
    /// Targets to create or replace.
    pub targets: Vec<Target>,
    /// Jobs to create or add a version to.
    pub jobs: Vec<JobSpec>,
    /// Schedules to create or replace (stored after the jobs, in the same
    /// transaction).
    pub schedules: Vec<crate::schedule::ScheduleDef>,
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyAction {
    /// Did not exist before.
    Created,
    /// Existed and changed (jobs: a new version).
    Updated,
    /// Existed and was identical.
    Unchanged,
}

/// One line of an apply report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyItem {
    /// `job` or `target`.
    pub kind: &'static str,
    /// Object name.
    pub name: String,
    /// What happened.
    pub action: ApplyAction,
    /// The job version now current (jobs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Filters for listing runs; newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs of this job.
    pub job: Option<String>,
    /// Only runs of this schedule.
    pub schedule: Option<String>,
    /// Only runs in one of these states (empty: all).
    pub statuses: Vec<RunStatus>,
    /// Only runs created strictly before this id (keyset pagination).
    pub before: Option<RunId>,
    /// At most this many (0 means the backend default of 50).
    pub limit: usize,
}

/// A worker's request for work.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The worker's identity (recorded on the run).
    pub worker: String,
    /// Lease length from now.
    pub lease: Duration,
    /// At most this many runs.
    pub limit: usize,
    /// Only this run (the CLI runs just what it submitted).
    pub only: Option<RunId>,
}

/// Targets.
#[async_trait]
pub trait TargetStore: Send + Sync {
    /// One target by name.
    async fn get_target(&self, name: &str) -> Result<Option<Target>>;
    /// All targets, by name.
    async fn list_targets(&self) -> Result<Vec<Target>>;
    /// Removes a target; false if there was none.
    async fn delete_target(&self, name: &str) -> Result<bool>;
}

/// Jobs and their versions.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// A version of a job (`None`: the latest).
    async fn get_job(&self, name: &str, version: Option<u32>) -> Result<Option<Job>>;
    /// The latest version of every job, by name.
    async fn list_jobs(&self) -> Result<Vec<Job>>;
    /// Every version of a job, oldest first.
    async fn job_versions(&self, name: &str) -> Result<Vec<Job>>;
}

/// Runs, the queue, and per step × target results.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Records a new run (normally `queued`).
    async fn insert_run(&self, run: &Run) -> Result<()>;
    /// One run.
    async fn get_run(&self, id: RunId) -> Result<Option<Run>>;
    /// Runs whose id starts with `prefix` (for short ids typed by people), at most 2.
    async fn find_runs_by_prefix(&self, prefix: &str) -> Result<Vec<RunId>>;
    /// Runs matching a filter, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    /// Moves up to `limit` queued runs, oldest first, to `running` for `worker`.
    async fn claim_queued(&self, claim: &Claim) -> Result<Vec<Run>>;
    /// Takes over up to `limit` running runs whose lease ended before `now`.
    async fn claim_expired(&self, claim: &Claim, now: DateTime<Utc>) -> Result<Vec<Run>>;
    /// Extends the lease; `Ok(false)` if the caller no longer owns the run.
    async fn heartbeat(
        &self,
        id: RunId,
        worker: &str,
        attempt: u32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Ends a run owned by the caller; `Ok(false)` if it no longer owns it.
    async fn finish_run(
        &self,
        id: RunId,
        worker: &str,
        attempt: u32,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<bool>;
    /// Asks a run to stop: a queued run becomes `cancelled` at once, a running
    /// one gets `cancel_requested`. Returns the run after the change.
    async fn request_cancel(&self, id: RunId) -> Result<Option<Run>>;
    /// Inserts or replaces the result of one step on one target.
    async fn put_step_result(&self, result: &StepResult) -> Result<()>;
    /// [`put_step_result`](Self::put_step_result) for the run's current
    /// owner only: `worker` and `result.attempt` must hold the run and it
    /// must still be `running`; otherwise nothing is written and the answer
    /// is `Ok(false)`.
    async fn put_step_result_as(&self, worker: &str, result: &StepResult) -> Result<bool>;
    /// Several results of one run and attempt at once, for its current owner
    /// only (as [`put_step_result_as`](Self::put_step_result_as)): a
    /// finished step and the next one starting cost one write instead of two.
    /// All are written or, when `worker` no longer holds the run, none
    /// (`Ok(false)`): one transaction, never a part of the batch.
    async fn put_step_results_as(&self, worker: &str, results: &[StepResult]) -> Result<bool>;
    /// All results of a run, by step then target.
    async fn step_results(&self, id: RunId) -> Result<Vec<StepResult>>;
    /// The child run a `job:` step started for (parent run, step, target),
    /// if any. Backends MUST keep at most one run per such parent link
    /// (`insert_run` of a second one fails with `Error::Conflict`), so a
    /// rescued parent never starts a second child.
    async fn find_child_run(&self, parent: RunId, step: u32, target: &str) -> Result<Option<Run>>;
    /// One page of a run's results in the order of
    /// [`step_results`](Self::step_results): those strictly after the
    /// `(step, target)` cursor `after` (from the start when `None`), at most
    /// `limit` (0 means 1000). Read by the database, so a page of a run with
    /// many steps × targets costs only the page; ask for one more than you
    /// show to learn whether more follow.
    async fn step_results_page(
        &self,
        id: RunId,
        after: Option<(u32, &str)>,
        limit: usize,
    ) -> Result<Vec<StepResult>>;
    /// The status of a run (`None`: no such run), for waiters and followers
    /// that ask after every change: without decoding the run's job spec,
    /// which for a job of thousands of steps costs more than the step.
    async fn run_status(&self, id: RunId) -> Result<Option<RunStatus>> {
        Ok(self.get_run(id).await?.map(|r| r.status))
    }
    /// Whether someone asked a run to stop (`None`: no such run), for the
    /// worker's cancel watcher, which asks on a fixed interval while the run
    /// executes: like [`run_status`](Self::run_status), without decoding
    /// the run's job spec (its cost would grow with the job's length).
    async fn cancel_requested(&self, id: RunId) -> Result<Option<bool>> {
        Ok(self.get_run(id).await?.map(|r| r.cancel_requested))
    }
}

/// The ordered output of runs.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends chunks (already numbered by the run's owner).
    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()>;
    /// [`append_logs`](Self::append_logs) for the current owner only: every
    /// chunk belongs to one run, which `worker` must hold at `attempt` while
    /// it is `running`; otherwise nothing is written and the answer is `Ok(false)`.
    async fn append_logs_as(&self, worker: &str, attempt: u32, chunks: &[LogChunk])
    -> Result<bool>;
    /// Chunks with `seq > after`, in order, at most `limit`.
    async fn read_logs(&self, id: RunId, after: u64, limit: usize) -> Result<Vec<LogChunk>>;
    /// The highest `seq` stored for a run (0 if none).
    async fn last_log_seq(&self, id: RunId) -> Result<u64>;
}

/// What a backend can do, for the engine and the tests to ask.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// Several processes may share the store (PostgreSQL: yes; SQLite: one host).
    pub multi_host: bool,
    /// The store pushes wake-ups across processes (LISTEN/NOTIFY).
    pub notifications: bool,
}

/// A complete backend.
#[async_trait]
pub trait Store: TargetStore + JobStore + RunStore + LogStore {
    /// `sqlite`, `postgres`, …
    fn backend(&self) -> &'static str;
    /// What this backend supports.
    fn capabilities(&self) -> StoreCapabilities;
    /// Stores a batch of targets and jobs atomically. `by` is recorded on new job versions.
    async fn apply(&self, batch: &ApplyBatch, by: &str) -> Result<Vec<ApplyItem>>;

    /// Sends a wake-up to every process sharing this store (PostgreSQL:
    /// `NOTIFY`, payload [`Event::encode`]). Backends without cross-process
    /// notifications do nothing. A lost notification costs latency only.
    async fn notify(&self, _event: Event) -> Result<()> {
        Ok(())
    }

    /// Wake-ups sent by every process sharing this store (this one included),
    /// or `None` if the backend has no such channel. The stream MUST survive a
    /// database restart (reconnect by itself) and ends only when the store closes.
    async fn listen(&self) -> Result<Option<EventStream>> {
        Ok(None)
    }

    /// The backend's secret storage.
    fn secret_store(&self) -> &dyn SecretStore;

    /// The backend's audit log. Every backend has one, so
    /// nothing is silently skipped (an audit event is never dropped).
    fn audit_store(&self) -> &dyn AuditStore;

    /// The backend's users, logins and API tokens.
    fn user_store(&self) -> &dyn UserStore;

    /// The backend's retention operations (pruning old data).
    fn retention_store(&self) -> &dyn RetentionStore;

    /// The backend's approval requests and decisions.
    fn approval_store(&self) -> &dyn ApprovalStore;
    /// The backend's schedules and fire records.
    fn schedule_store(&self) -> &dyn ScheduleStore;
    /// The backend's notification channels and outbox.
    fn notify_store(&self) -> &dyn NotifyStore;
}

/// Notification channels and the durable outbox of deliveries.
///
/// Rules every backend MUST follow (the behaviour suite checks each):
/// - `finish_run_notifying` is `finish_run` (same guard: only the current
///   owner, only a `running` run) plus the deliveries, in ONE transaction:
///   either the run ends and every delivery is stored, or neither happens.
/// - `claim_deliveries` hands each due delivery (`pending` with `next_at`
///   passed, or `delivering` whose lease ended) to exactly one caller, oldest
///   due first, at most `limit`, and counts the attempt.
/// - `record_attempt` always stores the attempt; it moves the delivery on
///   (`delivered`, `pending` at the retry time, `failed`) only while `worker`
///   still holds it, and answers whether it did.
/// - a second delivery with the same `(event_id, channel)` is ignored.
#[async_trait]
pub trait NotifyStore: Send + Sync {
    /// Creates or replaces a channel.
    async fn put_channel(&self, channel: &Channel) -> Result<()>;
    /// One channel.
    async fn get_channel(&self, name: &str) -> Result<Option<Channel>>;
    /// All channels, by name.
    async fn list_channels(&self) -> Result<Vec<Channel>>;
    /// Deletes a channel; false if there was none.
    async fn delete_channel(&self, name: &str) -> Result<bool>;
    /// [`RunStore::finish_run`] and the deliveries it causes, atomically.
    async fn finish_run_notifying(
        &self,
        finish: &FinishRun<'_>,
        deliveries: &[NewDelivery],
    ) -> Result<bool>;
    /// Stores deliveries (events not tied to a run's end).
    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<()>;
    /// Claims due deliveries for `worker` until `now + lease`.
    async fn claim_deliveries(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<Delivery>>;
    /// Records an attempt and, if `worker` still holds the delivery, its next state.
    async fn record_attempt(&self, attempt: &Attempt, next: DeliveryNext) -> Result<bool>;
    /// One delivery.
    async fn get_delivery(&self, id: uuid::Uuid) -> Result<Option<Delivery>>;
    /// Deliveries, newest first.
    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>>;
    /// The attempts of a delivery, in order.
    async fn attempts(&self, delivery: uuid::Uuid) -> Result<Vec<Attempt>>;
}

/// The guarded end of a run (see [`RunStore::finish_run`]).
#[derive(Debug, Clone, Copy)]
pub struct FinishRun<'a> {
    /// The run.
    pub id: RunId,
    /// Its owner.
    pub worker: &'a str,
    /// The owner's attempt.
    pub attempt: u32,
    /// The final state.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<&'a str>,
}

/// Approval requests and decisions (see `crate::approval`).
///
/// Rules every backend MUST follow (the suite checks each):
/// - `put_approval_request` is written before its run is inserted
///   `waiting_approval`; a request whose run does not exist is never listed.
/// - `decide` reads the run, checks it is `waiting_approval` and its
///   request has not expired, records the decision (unique per run and
///   approver) and moves the run (`queued` once enough distinct approvals,
///   `rejected` on a rejection, `expired` past the expiry) in one
///   transaction that excludes every other decision, cancel or expiry of
///   that run: of racing decisions, cancels and expiries exactly one
///   outcome holds, from any number of processes.
/// - `expire_approvals` moves waiting runs past their expiry to `expired`
///   in one guarded statement (a run decided meanwhile is never touched)
///   and returns them.
/// - `request_cancel` of a waiting run ends it `cancelled` at once.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// Stores the request of a run about to be inserted.
    async fn put_approval_request(&self, req: &crate::approval::ApprovalRequest) -> Result<()>;
    /// A run's request, if its run exists.
    async fn approval_request(
        &self,
        run: RunId,
    ) -> Result<Option<crate::approval::ApprovalRequest>>;
    /// A run's decisions, oldest first.
    async fn approval_decisions(
        &self,
        run: RunId,
    ) -> Result<Vec<crate::approval::ApprovalDecision>>;
    /// Requests newest first with their run's status: only waiting ones
    /// if `waiting_only`; at most `limit` (1 to 1000).
    async fn list_approval_requests(
        &self,
        waiting_only: bool,
        limit: usize,
    ) -> Result<Vec<(crate::approval::ApprovalRequest, RunStatus)>>;
    /// Records a decision and moves the run, atomically (see the rules).
    async fn decide(
        &self,
        decision: &crate::approval::ApprovalDecision,
        now: DateTime<Utc>,
    ) -> Result<crate::approval::DecideOutcome>;
    /// Ends waiting runs whose request expired at `now` (at most `limit`).
    async fn expire_approvals(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RunId>>;
}

/// How much old data a prune would remove (or removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneCounts {
    /// Finished runs (with their step results).
    pub runs: u64,
    /// Step results of those runs.
    pub results: u64,
    /// Log chunks.
    pub logs: u64,
    /// Audit events.
    pub audit_events: u64,
}

/// The oldest kept point of the audit chain once older events were pruned:
/// verification starts after `seq`, expecting `hash` as the predecessor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditCheckpoint {
    /// The `seq` of the newest pruned event.
    pub seq: u64,
    /// Its hash (the `prev_hash` the first kept event must carry).
    pub hash: String,
    /// When the checkpoint was set.
    pub at: DateTime<Utc>,
}

/// Removing old data in bounded batches.
///
/// Rules: only runs in a final state (`succeeded`, `failed`, `cancelled`,
/// `timed_out`) whose `finished_at` is before the cut-off are touched — never
/// queued or running ones; each call removes at most `limit` rows in one short
/// statement/transaction and returns how many it removed (0: nothing left), so
/// callers loop and claims are never blocked for long. `prune_runs` removes
/// runs together with whatever results and logs they still have (callers
/// prune logs and results first to keep each statement bounded).
/// `prune_audit` first stores the checkpoint (the event at `through`), then
/// deletes events with `seq <= through`; the chain verifies from the
/// checkpoint at every moment in between.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// What pruning with these cut-offs would remove (runs/results: runs
    /// finished before `runs_before`; logs: of runs finished before
    /// `logs_before`, plus those of the runs that go).
    async fn count_prunable(
        &self,
        runs_before: Option<DateTime<Utc>>,
        logs_before: Option<DateTime<Utc>>,
    ) -> Result<PruneCounts>;
    /// Deletes up to `limit` log chunks of runs finished before `before`.
    async fn prune_logs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;
    /// Deletes up to `limit` step results of runs finished before `before`.
    async fn prune_results(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;
    /// Deletes up to `limit` runs finished before `before`.
    async fn prune_runs(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;
    /// The `seq` of the newest audit event older than `before` (0 if none).
    async fn audit_seq_before(&self, before: DateTime<Utc>) -> Result<u64>;
    /// The current audit checkpoint, if events were ever pruned.
    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>>;
    /// The highest `seq` recorded as exported (0 if none).
    async fn audit_exported_through(&self) -> Result<u64>;
    /// Records that events up to `seq` were exported (never lowers it).
    async fn set_audit_exported_through(&self, seq: u64) -> Result<()>;
    /// Sets the checkpoint to the event at `through` (if it exists and is
    /// newer than the current checkpoint) and deletes up to `limit` events
    /// with `seq <= through`. Returns how many it deleted.
    async fn prune_audit(&self, through: u64, limit: usize) -> Result<u64>;
}

/// Users, login (refresh-token) families and API tokens. Tokens are stored
/// as hashes only.
///
/// Rules: `create_user` fails with `Conflict` if the name exists;
/// `use_refresh_token` is atomic — of two concurrent uses of one token
/// exactly one gets `Fresh`, and a second use of a used token revokes the
/// whole family and answers `Reused`; tokens of a revoked family, expired
/// tokens and unknown tokens are `Invalid`.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores a new user; `Conflict` if the name is taken in any letter case.
    async fn create_user(&self, user: &User) -> Result<()>;
    /// One user, by name ignoring ASCII letter case.
    async fn get_user(&self, username: &str) -> Result<Option<User>>;
    /// All users, by name.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Replaces role, disabled flag, password hash and its change time; false if no such user.
    async fn update_user(&self, user: &User) -> Result<bool>;
    /// Stores a new refresh token of a family.
    async fn put_refresh_token(&self, token: &RefreshToken) -> Result<()>;
    /// Presents a refresh token (by hash) at `now`; see the trait rules.
    async fn use_refresh_token(&self, token_hash: &str, now: DateTime<Utc>) -> Result<RefreshUse>;
    /// Revokes a login family (logout; reuse detection).
    async fn revoke_family(&self, family: &str) -> Result<()>;
    /// True if the family was revoked (its access tokens are void too).
    async fn is_family_revoked(&self, family: &str) -> Result<bool>;
    /// The user a login family was issued to (`None` if unknown), so an
    /// access token naming one user's login for another is refused.
    async fn family_owner(&self, family: &str) -> Result<Option<String>>;
    /// Revokes every family of a user (password change, disabling).
    async fn revoke_user_families(&self, username: &str) -> Result<()>;
    /// Stores a new API token.
    async fn create_api_token(&self, token: &ApiToken) -> Result<()>;
    /// One API token by id.
    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>>;
    /// API tokens, of one user or all.
    async fn list_api_tokens(&self, username: Option<&str>) -> Result<Vec<ApiToken>>;
    /// Revokes an API token; false if unknown or already revoked.
    async fn revoke_api_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool>;
}

/// Encrypted secrets, their change history (never old values) and the master
/// key versions. The store only ever sees ciphertexts.
///
/// Rules: `create_secret` fails with `Conflict` if the name exists;
/// `update_secret` and `rewrap_secret` are guarded (value version / key
/// version) so concurrent writers and an interrupted rotation never lose a
/// write; every create, update, rewrap and delete adds a history entry.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// One secret.
    async fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>>;
    /// All secrets, by name.
    async fn list_secrets(&self) -> Result<Vec<SecretRecord>>;
    /// Stores a new secret (its `meta.version` is 1).
    async fn create_secret(&self, rec: &SecretRecord) -> Result<()>;
    /// Replaces the value of a secret still at `rec.meta.version - 1`; `Ok(false)` if it changed meanwhile.
    async fn update_secret(&self, rec: &SecretRecord) -> Result<bool>;
    /// Replaces the ciphertext if the secret is still at `from_key` (rotation).
    async fn rewrap_secret(
        &self,
        name: &str,
        from_key: u32,
        to_key: u32,
        ciphertext: &[u8],
    ) -> Result<bool>;
    /// Deletes a secret; false if there was none.
    async fn delete_secret(&self, name: &str, by: &str) -> Result<bool>;
    /// The change history of a secret, oldest first (also after deletion).
    async fn secret_history(&self, name: &str) -> Result<Vec<SecretChange>>;
    /// The master key versions known to the database.
    async fn key_records(&self) -> Result<Vec<KeyRecord>>;
    /// Registers a key version (no-op if it exists).
    async fn put_key_record(&self, rec: &KeyRecord) -> Result<()>;
    /// Marks a key version retired.
    async fn retire_key(&self, version: u32) -> Result<bool>;
}

/// The audit log: who did what to which object, when — a hash chain.
///
/// Rules: `append_audit` assigns the next `seq`, sets `prev_hash` to the
/// hash of the event before (empty for the first) and `hash` to
/// [`AuditEvent::chain_hash`], serialised across processes so the chain
/// stays linear; `all_audit` returns every event in `seq` order as stored
/// (so a verifier can detect edits, deletions and reordering).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an event, extending the chain.
    async fn append_audit(&self, event: &AuditEvent) -> Result<()>;
    /// Events with `seq > after`, in `seq` order, at most `limit` (for verification and export).
    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEvent>>;
    /// Events, newest first, optionally only for one object, at most `limit` (0: 100).
    async fn list_audit(&self, object: Option<&str>, limit: usize) -> Result<Vec<AuditEvent>>;
    /// Like `list_audit`, only events with `seq < before`: one page of the
    /// log read backwards, bounded by `limit` (0: 100) whatever the filter.
    async fn audit_before(
        &self,
        object: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>>;
}

/// A stream of wake-ups from other processes.
pub type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Event> + Send>>;

/// One schedule's fire decision, committed by
/// [`ScheduleStore::commit_fires`].
#[derive(Debug, Clone)]
pub struct FireCommit {
    /// The schedule.
    pub schedule: String,
    /// The generation the decision was made from.
    pub generation: u64,
    /// The cursor (`next_fire`) the decision was made from; `None` when only
    /// pending fire times are promoted and the cursor stays.
    pub from: Option<DateTime<Utc>>,
    /// The new cursor (ignored when `from` is `None`).
    pub next_fire: Option<DateTime<Utc>>,
    /// Fire records to insert (unique per schedule and fire time).
    pub fires: Vec<crate::schedule::FireRecord>,
    /// Pending fire records to turn into `queued` with their run (each
    /// must still be `pending`): (fire time, run id).
    pub promote: Vec<(DateTime<Utc>, RunId)>,
    /// The runs the fire records name, queued in the same transaction.
    pub runs: Vec<Run>,
}

/// Schedules and their fire records.
///
/// Rules every backend MUST follow (the behaviour suite checks each):
/// - `commit_fires` applies each commit in one transaction with the runs it
///   queues, and only if the schedule is still at `generation` and
///   `next_fire == from` (compare and set); a commit that lost the race
///   stores nothing and answers `false`. A fire record is unique per
///   (schedule, fire time): inserting one twice fails the whole commit.
///   So any number of schedulers in any number of processes queue each
///   fire time at most once.
/// - `due_schedules` returns only enabled, unpaused schedules whose
///   `next_fire` is at or before `now`, oldest first.
/// - Every write of a schedule (apply with a changed spec, pause, resume)
///   bumps its generation, so a decision made on an older state is refused.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// One schedule.
    async fn get_schedule(&self, name: &str) -> Result<Option<crate::schedule::Schedule>>;
    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<crate::schedule::Schedule>>;
    /// Active schedules due at `now`, oldest fire time first, at most `limit`.
    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<crate::schedule::Schedule>>;
    /// The earliest `next_fire` of any active schedule.
    async fn earliest_fire(&self) -> Result<Option<DateTime<Utc>>>;
    /// Pauses or resumes; resuming sets the cursor to `next_fire`. Bumps the
    /// generation. `false` if there is no such schedule.
    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire: Option<DateTime<Utc>>,
    ) -> Result<bool>;
    /// Deletes a schedule (its fire records and runs stay); `false` if none.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;
    /// Applies fire decisions; one answer per commit (see the trait rules).
    async fn commit_fires(&self, commits: &[FireCommit]) -> Result<Vec<bool>>;
    /// Fire records waiting for their schedule's previous run
    /// (`pending`), oldest first.
    async fn pending_fires(&self) -> Result<Vec<crate::schedule::FireRecord>>;
    /// Runs of schedules still queued or running: (schedule, run).
    async fn active_scheduled_runs(&self) -> Result<Vec<(String, RunId)>>;
    /// A schedule's newest fire records, at most `limit`.
    async fn fire_records(
        &self,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<crate::schedule::FireRecord>>;
}
