//! The API's JSON shapes (requests and responses) and their conversion from
//! the core's types. Only this crate knows them; the OpenAPI document is
//! generated from these definitions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use opsconductor::ApplyItem;
use opsconductor::auth::{ApiToken, Role, User};
use opsconductor::model::{AuditEvent, Job, LogChunk, Run, StepResult, Target};
use opsconductor::secrets::SecretChange;
use opsconductor::{RunDetail, SecretInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Reads everything except secret values; cannot run.
    Viewer,
    /// Runs jobs; manages jobs, targets and secrets.
    Operator,
    /// Everything, including users.
    Admin,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => Self::Viewer,
            Role::Operator => Self::Operator,
            Role::Admin => Self::Admin,
        }
    }
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Viewer => Role::Viewer,
            RoleName::Operator => Role::Operator,
            RoleName::Admin => Role::Admin,
        }
    }
}

macro_rules! page {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $name {
            /// The items of this page.
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; absent on the last page.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub next_cursor: Option<String>,
        }
    };
}

page!(TargetPage, TargetView, "A page of targets.");
page!(JobPage, JobView, "A page of jobs.");
page!(RunPage, RunView, "A page of runs.");
page!(SecretPage, SecretView, "A page of secrets.");
page!(UserPage, UserView, "A page of users.");
page!(TokenPage, TokenView, "A page of API tokens.");
page!(AuditPage, AuditEventView, "A page of audit events.");

/// A target.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Tags (select with `tag:NAME`).
    pub tags: Vec<String>,
    /// Variables for templates.
    #[schema(value_type = Object)]
    pub vars: BTreeMap<String, Value>,
    /// How to reach it: `{"type": "local" | "ssh" | "winrm" | "docker", …}`.
    #[schema(value_type = Object)]
    pub connection: Value,
    /// The secret holding its credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl From<Target> for TargetView {
    fn from(t: Target) -> Self {
        Self {
            connection: serde_json::to_value(&t.connection).unwrap_or(Value::Null),
            name: t.name,
            description: t.description,
            tags: t.tags,
            vars: t.vars,
            credential: t.credential,
        }
    }
}

/// The outcome of checking a target.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetCheckView {
    /// Target name.
    pub target: String,
    /// Connection kind.
    pub kind: String,
    /// True if it connected, authenticated and ran the probe.
    pub ok: bool,
    /// What the probe found (host name, OS, …).
    #[schema(value_type = Option<Object>)]
    pub probe: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long the check took.
    pub latency_ms: u64,
}

/// The host key an SSH target offers, and the one pinned.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostKeyView {
    /// The fingerprint offered now (`SHA256:…`).
    pub offered: String,
    /// The pinned fingerprint, if any.
    pub pinned: Option<String>,
    /// True if they are the same.
    pub matches: bool,
}

/// A host key to pin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustRequest {
    /// The fingerprint to pin (`SHA256:…`, as `ssh-keygen -lf` prints).
    pub fingerprint: String,
}

/// A job version.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Name.
    pub name: String,
    /// Version number (from 1).
    pub version: u32,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// `draft`, `active` or `deprecated`.
    pub status: String,
    /// When this version was stored.
    pub created_at: DateTime<Utc>,
    /// Who stored it.
    pub created_by: String,
    /// The full definition (steps, parameters schema, targets, …); omitted in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
}

impl JobView {
    /// A job with or without its spec.
    pub fn new(j: Job, with_spec: bool) -> Self {
        Self {
            spec: with_spec.then(|| serde_json::to_value(&j.spec).unwrap_or(Value::Null)),
            name: j.spec.name,
            version: j.version,
            description: j.spec.description,
            tags: j.spec.tags,
            status: j.spec.status.as_str().to_string(),
            created_at: j.created_at,
            created_by: j.created_by,
        }
    }
}

/// The versions of a job, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobVersions {
    /// Every version.
    pub items: Vec<JobView>,
}

/// A run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// Identifier (UUIDv7).
    pub id: String,
    /// Job name (`exec` for ad-hoc commands).
    pub job: String,
    /// Job version (absent for ad-hoc commands).
    pub job_version: Option<u32>,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `timed_out`.
    pub status: String,
    /// Validated parameters.
    #[schema(value_type = Object)]
    pub params: Value,
    /// Target names, in order.
    pub targets: Vec<String>,
    /// Who asked for it.
    pub requested_by: String,
    /// Claims so far (more than 1 after a rescue).
    pub attempt: u32,
    /// The worker holding (or last holding) it.
    pub worker: Option<String>,
    /// Until when the worker's claim holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// Someone asked it to stop.
    pub cancel_requested: bool,
    /// Why it ended badly.
    pub error: Option<String>,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// First claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The `X-Request-Id` of the request that submitted it.
    pub request_id: Option<String>,
    /// For a child run: the run, step and target (of the parent) that started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunParentView>,
}

/// Which step of which run started a child run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunParentView {
    /// The parent run's id.
    pub run: String,
    /// Index of the parent's `job:` step.
    pub step: u32,
    /// The parent's target the step ran for.
    pub target: String,
}

impl From<Run> for RunView {
    fn from(r: Run) -> Self {
        Self {
            id: r.id.to_string(),
            job: r.job,
            job_version: r.job_version,
            status: r.status.as_str().to_string(),
            params: r.params,
            targets: r.targets,
            requested_by: r.requested_by,
            attempt: r.attempt,
            worker: r.worker,
            lease_until: r.lease_until,
            cancel_requested: r.cancel_requested,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            request_id: r.request_id,
            parent: r.parent.map(|p| RunParentView {
                run: p.run.to_string(),
                step: p.step,
                target: p.target,
            }),
        }
    }
}

/// A run with its definition and its per step × target results.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetailView {
    /// The run.
    #[serde(flatten)]
    pub run: RunView,
    /// The job definition it runs (a snapshot taken at submission).
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Results by step, then target (a page of at most `results_limit`, 1000
    /// by default, for large runs).
    pub results: Vec<StepResultView>,
    /// Present only when more results follow: pass it as `results_after` for
    /// the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results_next: Option<String>,
    /// The run's outputs by target: each target's step outputs merged in
    /// step order (a later step's key wins), from the results in this page.
    #[schema(value_type = Object)]
    pub outputs: Value,
}

impl From<RunDetail> for RunDetailView {
    fn from(d: RunDetail) -> Self {
        let names: Vec<String> = d
            .run
            .spec
            .all_steps()
            .map(|(_, _, s)| s.name.clone())
            .collect();
        let outputs = serde_json::to_value(d.outputs()).unwrap_or(Value::Null);
        Self {
            outputs,
            spec: serde_json::to_value(&d.run.spec).unwrap_or(Value::Null),
            results: d
                .results
                .into_iter()
                .map(|r| StepResultView::new(r, &names, &d.run.spec))
                .collect(),
            results_next: None,
            run: d.run.into(),
        }
    }
}

/// One step on one target.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepResultView {
    /// Step index.
    pub step: u32,
    /// Step name.
    pub step_name: String,
    /// Target name.
    pub target: String,
    /// `running`, `succeeded`, `failed`, `timed_out`, `cancelled`, `skipped` or `interrupted`.
    pub status: String,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Signal that killed the process.
    pub signal: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
    /// The run attempt that produced it.
    pub attempt: u32,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Which list the step is in: `steps`, `on_failure` or `finally`.
    pub phase: String,
    /// Which try of the step this is (1 unless it was retried).
    pub try_no: u32,
    /// The earlier tries, oldest first (absent without retries).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub tries: Vec<opsconductor::TryRecord>,
    /// Values the step published (`::output name=value`, `outputs: json`), masked.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub outputs: serde_json::Map<String, Value>,
    /// Child runs a `job:` step started on this target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
}

impl StepResultView {
    fn new(r: StepResult, names: &[String], spec: &opsconductor::JobSpec) -> Self {
        Self {
            phase: spec.phase_of(r.step as usize).as_str().to_string(),
            try_no: r.try_no,
            tries: r.tries,
            step_name: names
                .get(r.step as usize)
                .cloned()
                .unwrap_or_else(|| format!("step-{}", r.step)),
            step: r.step,
            target: r.target,
            status: r.status.as_str().to_string(),
            exit_code: r.exit_code,
            signal: r.signal,
            error: r.error,
            attempt: r.attempt,
            started_at: r.started_at,
            finished_at: r.finished_at,
            outputs: r.outputs.into_iter().collect(),
            children: r.children.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A piece of a run's output.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogChunkView {
    /// Position in the run's log (from 1, no gaps): resume after it.
    pub seq: u64,
    /// Step index (absent for run-level messages).
    pub step: Option<u32>,
    /// Target name (absent for run-level messages).
    pub target: Option<String>,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// The output (UTF-8; invalid bytes replaced), secrets already masked.
    pub data: String,
    /// When it was produced.
    pub time: DateTime<Utc>,
    /// Which try of its step produced it (1 unless the step was retried).
    pub try_no: u32,
}

impl From<LogChunk> for LogChunkView {
    fn from(c: LogChunk) -> Self {
        Self {
            seq: c.seq,
            step: c.step,
            target: c.target,
            stream: c.stream.as_str().to_string(),
            data: String::from_utf8_lossy(&c.data).into_owned(),
            time: c.time,
            try_no: c.try_no,
        }
    }
}

/// Stored output of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Chunks after `after`, in order.
    pub items: Vec<LogChunkView>,
    /// The `seq` to pass as `after` for more (the last one returned, or `after`).
    pub next_after: u64,
    /// The run's status when read.
    pub run_status: String,
    /// True if the run has ended and every chunk up to `next_after` was returned.
    pub complete: bool,
}

/// A secret's metadata and usage — never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// Name.
    pub name: String,
    /// `generic`, `password`, `ssh_key`, `token` or `certificate`.
    pub kind: String,
    /// Description.
    pub description: String,
    /// Value version (from 1).
    pub version: u32,
    /// Master key version it is encrypted with.
    pub key_version: u32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// By.
    pub created_by: String,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// By.
    pub updated_by: String,
    /// Jobs that use it.
    pub used_by_jobs: Vec<String>,
    /// Targets that use it as their credential.
    pub used_by_targets: Vec<String>,
}

impl From<SecretInfo> for SecretView {
    fn from(s: SecretInfo) -> Self {
        let m = s.meta;
        Self {
            name: m.name,
            kind: m.kind,
            description: m.description,
            version: m.version,
            key_version: m.key_version,
            created_at: m.created_at,
            created_by: m.created_by,
            updated_at: m.updated_at,
            updated_by: m.updated_by,
            used_by_jobs: s.used_by_jobs,
            used_by_targets: s.used_by_targets,
        }
    }
}

/// A change of a secret (never the value).
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretChangeView {
    /// Value version after the change.
    pub version: u32,
    /// `created`, `updated`, `deleted`, `rewrapped to key N`.
    pub action: String,
    /// Who.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl From<SecretChange> for SecretChangeView {
    fn from(c: SecretChange) -> Self {
        Self {
            version: c.version,
            action: c.action,
            by: c.by,
            at: c.at,
        }
    }
}

/// The change history of a secret, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretHistory {
    /// Changes.
    pub items: Vec<SecretChangeView>,
}

/// Sets a secret's value (write-only: it is never returned).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    /// The value as text …
    #[serde(default)]
    pub value: Option<String>,
    /// … or as base64 (for binary values). Exactly one of the two.
    #[serde(default)]
    pub value_base64: Option<String>,
    /// `generic`, `password`, `ssh_key`, `token` or `certificate` (default: unchanged, or `generic`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Description (default: unchanged).
    #[serde(default)]
    pub description: Option<String>,
}

/// What setting a secret did.
#[derive(Debug, Serialize, ToSchema)]
pub struct PutSecretResponse {
    /// The secret now.
    pub secret: SecretView,
    /// True if it did not exist before.
    pub created: bool,
    /// Things to know (e.g. a value too short to be masked in logs).
    pub warnings: Vec<String>,
}

/// A master key version.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Version.
    pub version: u32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Retired (no longer used).
    pub retired_at: Option<DateTime<Utc>>,
    /// Derived from a passphrase.
    pub passphrase: bool,
}

/// The master key versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Versions, oldest first.
    pub items: Vec<KeyView>,
}

/// What a key rotation did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotationView {
    /// The key version every secret is encrypted with now.
    pub key_version: u32,
    /// Whether this call created that version (false: resumed a rotation).
    pub new_version: bool,
    /// Secrets re-encrypted by this call.
    pub rewrapped: usize,
    /// Secrets in total.
    pub total: usize,
}

/// A user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Login name.
    pub username: String,
    /// Role.
    pub role: RoleName,
    /// Disabled users cannot log in.
    pub disabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Password last changed.
    pub password_changed_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            username: u.username,
            role: u.role.into(),
            disabled: u.disabled,
            created_at: u.created_at,
            password_changed_at: u.password_changed_at,
        }
    }
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// 1-64 letters, digits, `_ . - @`.
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    /// Role.
    pub role: RoleName,
}

/// Changes to a user (admins).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// New role.
    #[serde(default)]
    pub role: Option<RoleName>,
    /// Disable (ends every login of the user) or enable.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// A password change. Users changing their own password give the current one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// The current password (required for one's own account).
    #[serde(default)]
    pub current_password: Option<String>,
    /// The new password (at least 12 characters).
    pub new_password: String,
}

/// Credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A refresh token to exchange.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh (usable once).
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest").finish_non_exhaustive()
    }
}

/// Tokens for a login.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// The access token (a JWT): `Authorization: Bearer …`.
    pub access_token: String,
    /// Exchange it at `POST /api/v1/auth/refresh` for new tokens (once).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    /// Username.
    pub username: String,
    /// The role requests are held to.
    pub role: RoleName,
    /// `password` (a login) or `api_token`.
    pub via: String,
    /// The API token's id, when authenticated by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

/// A new API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A label (1-100 characters).
    pub name: String,
    /// The role it acts with (default and maximum: yours).
    #[serde(default)]
    pub role: Option<RoleName>,
    /// Lifetime (`30d`, `12h`, …); default: no expiry.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// An API token (without its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// Identifier.
    pub id: String,
    /// Label.
    pub name: String,
    /// Role it acts with (never above its owner's current role).
    pub role: RoleName,
    /// Owner.
    pub username: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last used (approximate; may be absent).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role.into(),
            username: t.username,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            last_used_at: t.last_used_at,
        }
    }
}

/// A new API token, with its secret — shown this once only.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token: `Authorization: Bearer opsc_…`. Store it now.
    pub token: String,
    /// Its record.
    #[serde(flatten)]
    pub record: TokenView,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A run of a stored job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRunRequest {
    /// Job name.
    pub job: String,
    /// A version (default: the latest).
    #[serde(default)]
    pub version: Option<u32>,
    /// Parameters (an object), validated against the job's schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Target selectors overriding the job's (`web-1`, `tag:web`, `!db-*`).
    #[serde(default)]
    pub targets: Option<Vec<String>>,
}

/// An ad-hoc command.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequestBody {
    /// The command line (run by each target's shell; not a template).
    pub command: String,
    /// Target selectors (default: `local`).
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Time limit per target (`30s`, `5m`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Targets at once (default 50).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// What an apply did to one object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplyItemView {
    /// `job` or `target`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// `created`, `updated` or `unchanged`.
    pub action: String,
    /// The job version now current (jobs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl From<ApplyItem> for ApplyItemView {
    fn from(i: ApplyItem) -> Self {
        Self {
            kind: i.kind.to_string(),
            name: i.name,
            action: serde_json::to_value(i.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            version: i.version,
        }
    }
}

/// The report of an apply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplyReport {
    /// True if only checked (`dry_run`).
    pub dry_run: bool,
    /// One line per object (empty for a dry run).
    pub items: Vec<ApplyItemView>,
}

/// An audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    /// Position in the chain.
    pub seq: u64,
    /// When (UTC).
    pub time: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What (`run.submit`, `secret.update`, `auth.login`, `request.denied`, …).
    pub action: String,
    /// Which object (`run:ID`, `secret:NAME`, …).
    pub object: String,
    /// `success`, `denied` or `failed`. The engine records a change only
    /// once it is done, so its events are successes unless their detail
    /// says otherwise (a failed login); refusals are `request.denied` and
    /// failed mutations `request.failed`, recorded by the server.
    pub outcome: String,
    /// Role, auth method, source address, request id, outcome, ….
    #[schema(value_type = Object)]
    pub detail: Value,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// The outcome of an audit event, one of three words whatever the writer
/// put in `detail.outcome` (the engine says `failure` for a failed login
/// and `family revoked` for a reused refresh token).
fn audit_outcome(detail: &Value) -> &'static str {
    match detail.get("outcome").and_then(Value::as_str) {
        None | Some("success") => "success",
        Some("denied" | "family revoked") => "denied",
        Some(_) => "failed",
    }
}

impl From<AuditEvent> for AuditEventView {
    fn from(e: AuditEvent) -> Self {
        Self {
            seq: e.seq,
            time: e.time,
            actor: e.actor,
            action: e.action,
            object: e.object,
            outcome: audit_outcome(&e.detail).to_string(),
            detail: e.detail,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// The result of checking the audit chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyView {
    /// Events checked.
    pub events: u64,
    /// True if the chain is intact.
    pub ok: bool,
    /// The first event that was altered, or whose predecessor was deleted or reordered.
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
    /// The newest event checked (`null` for an empty log or a broken chain).
    /// Deleting the newest events leaves a chain that verifies: keep
    /// `head_seq` and `head_hash` outside the server and pass them back as
    /// `?head_seq=&head_hash=` to detect that.
    pub head_seq: Option<u64>,
    /// The hash of the newest event checked.
    pub head_hash: Option<String>,
    /// When older events were pruned: the stored checkpoint (the newest
    /// pruned event's seq) verification started after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_seq: Option<u64>,
    /// The checkpoint's hash: the first kept event must chain to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_hash: Option<String>,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`.
    pub status: String,
    /// Server version.
    pub version: String,
}

/// Readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyView {
    /// `ready` or `not_ready`.
    pub status: String,
    /// `ok`, or what is wrong with the database.
    pub database: String,
    /// Worker tasks configured in this process (0: API only).
    pub workers: usize,
    /// Whether this process's workers are running now (always true with 0
    /// configured). False after the engine stopped them or they died, so a
    /// load balancer stops sending runs to a server that cannot execute them.
    pub workers_running: bool,
    /// The store backend (`sqlite`, `postgres`).
    pub backend: String,
}
