//! The domain model: targets, jobs and their steps, runs, per step × target
//! results and log chunks. Plain data with serde; no I/O lives here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
pub use crate::rollout::{
    Amount, Backoff, BatchSize, Batches, RetryOn, RetryPolicy, Strategy, Threshold, TryRecord,
};

/// The identifier of a run: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s).map(RunId).map_err(|_| {
            Error::validation("run id", format!("'{s}' is not a run id (expected a UUID)"))
        })
    }
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

/// Where work runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Unique name, used in selectors and output prefixes.
    pub name: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tags, selected with `tag:NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Variables available to templates as `target.vars`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// How to reach the target.
    #[serde(default)]
    pub connection: Connection,
    /// Name of the secret holding the credential, if the connection needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl Target {
    /// The implicit `local` target: the host the worker runs on.
    pub fn local() -> Self {
        Self {
            name: "local".into(),
            description: "The host the worker runs on".into(),
            tags: vec![],
            vars: BTreeMap::new(),
            connection: Connection::Local,
            credential: None,
        }
    }
}

/// The protocol and address of a target.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Connection {
    /// The host the worker runs on.
    #[default]
    Local,
    /// An SSH host.
    Ssh {
        /// Host name or address.
        host: String,
        /// TCP port.
        #[serde(default = "default_ssh_port")]
        port: u16,
        /// Remote user.
        user: String,
        /// Pinned host key fingerprint (`SHA256:…`). Takes precedence over
        /// `known_hosts`: a pin is the most specific statement of trust.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_key: Option<String>,
        /// An OpenSSH `known_hosts` file, by absolute path on the host the
        /// worker runs on, consulted when no `host_key` is pinned. It
        /// replaces the executor's process-wide default file for this
        /// target, so a fleet managed elsewhere (e.g. by configuration
        /// management) can be trusted without pinning every host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        known_hosts: Option<String>,
    },
    /// A Windows host over WinRM.
    Winrm {
        /// Host name or address.
        host: String,
        /// TCP port.
        #[serde(default = "default_winrm_port")]
        port: u16,
        /// Use HTTPS.
        #[serde(default = "default_true")]
        tls: bool,
        /// `basic` or `ntlm`.
        #[serde(default = "default_winrm_auth")]
        auth: String,
    },
    /// A fresh container per step on the local Docker engine.
    Docker {
        /// Image reference.
        image: String,
        /// Resource limits (memory, cpus, pids, network).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        limits: BTreeMap<String, serde_json::Value>,
    },
}

fn default_ssh_port() -> u16 {
    22
}
fn default_winrm_port() -> u16 {
    5986
}
fn default_true() -> bool {
    true
}
fn default_winrm_auth() -> String {
    "ntlm".into()
}

impl Connection {
    /// The executor kind that serves this connection (`local`, `ssh`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Connection::Local => "local",
            Connection::Ssh { .. } => "ssh",
            Connection::Winrm { .. } => "winrm",
            Connection::Docker { .. } => "docker",
        }
    }
}

// ---------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------

/// Lifecycle of a job version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Being written; can be run by operators for testing.
    Draft,
    /// In use.
    #[default]
    Active,
    /// Kept for history; new runs are refused.
    Deprecated,
}

impl JobStatus {
    /// The lower-case name used in files, the store and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Draft => "draft",
            JobStatus::Active => "active",
            JobStatus::Deprecated => "deprecated",
        }
    }
}

impl FromStr for JobStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "draft" => Ok(Self::Draft),
            "active" => Ok(Self::Active),
            "deprecated" => Ok(Self::Deprecated),
            _ => Err(Error::validation(
                "status",
                format!("unknown job status '{s}' (expected draft, active or deprecated)"),
            )),
        }
    }
}

/// What a job does: the part a user writes. Stored as one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tags for searching jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Lifecycle status.
    #[serde(default)]
    pub status: JobStatus,
    /// JSON Schema of the parameters (an object schema), or `null` for none.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    /// Default target selector (see [`crate::selector`]).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// How many targets run a step at the same time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Time limit of the whole run.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Names of the secrets the job may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
    /// Runs wait for approval before anything runs (see `docs/approvals.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::ApprovalSpec>,
    /// Notification rules of this job (see `docs/notifications.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<crate::engine::notify::NotifyRule>,
    /// `parallel` (step by step over all targets, the default) or
    /// `rolling` (all steps on a batch of targets, then the next batch).
    #[serde(default, skip_serializing_if = "Strategy::is_parallel")]
    pub strategy: Strategy,
    /// Rolling batch sizes (default: one target at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batches>,
    /// Wait between rolling batches.
    #[serde(
        default,
        with = "crate::rollout::opt_pause",
        skip_serializing_if = "Option::is_none"
    )]
    pub pause: Option<Duration>,
    /// Failed targets tolerated before no new target starts (rolling
    /// default: 0; parallel default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Threshold>,
    /// The retry policy of steps without their own (idempotent steps only;
    /// other steps retry only a failure to connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Steps run on each target where the run failed (e.g. a rollback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<Step>,
    /// Steps run on every target that started, whatever happened (also
    /// after cancel and timeout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Step>,
}

/// Which list of a job a step belongs to. Step indices run through the
/// three lists in order: `steps`, then `on_failure`, then `finally`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// The job's steps.
    Main,
    /// A step of `on_failure`.
    OnFailure,
    /// A step of `finally`.
    Finally,
}

impl StepPhase {
    /// The name used in files and output.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepPhase::Main => "steps",
            StepPhase::OnFailure => "on_failure",
            StepPhase::Finally => "finally",
        }
    }
}

impl JobSpec {
    /// The step with index `i` across `steps`, `on_failure` and `finally`.
    pub fn step_at(&self, i: usize) -> Option<&Step> {
        let n = self.steps.len();
        let f = self.on_failure.len();
        if i < n {
            self.steps.get(i)
        } else if i < n + f {
            self.on_failure.get(i - n)
        } else {
            self.finally.get(i - n - f)
        }
    }

    /// Which list step index `i` belongs to.
    pub fn phase_of(&self, i: usize) -> StepPhase {
        let n = self.steps.len();
        if i < n {
            StepPhase::Main
        } else if i < n + self.on_failure.len() {
            StepPhase::OnFailure
        } else {
            StepPhase::Finally
        }
    }

    /// Where step index `i` is in a job file: `steps[2]`, `on_failure[0]`.
    pub fn field_of(&self, i: usize) -> String {
        let (n, f) = (self.steps.len(), self.on_failure.len());
        match self.phase_of(i) {
            StepPhase::Main => format!("steps[{i}]"),
            StepPhase::OnFailure => format!("on_failure[{}]", i - n),
            StepPhase::Finally => format!("finally[{}]", i - n - f),
        }
    }

    /// Every step with its index and list, in index order.
    pub fn all_steps(&self) -> impl Iterator<Item = (usize, StepPhase, &Step)> {
        self.steps
            .iter()
            .map(|s| (StepPhase::Main, s))
            .chain(self.on_failure.iter().map(|s| (StepPhase::OnFailure, s)))
            .chain(self.finally.iter().map(|s| (StepPhase::Finally, s)))
            .enumerate()
            .map(|(i, (p, s))| (i, p, s))
    }
}

fn default_targets() -> Vec<String> {
    vec!["local".into()]
}
/// The default number of targets a step runs on at once.
pub const DEFAULT_CONCURRENCY: usize = 50;
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

/// One action performed on each selected target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Name shown in output; defaults to `step-N`.
    pub name: String,
    /// What to do.
    pub action: Action,
    /// Time limit of the step on one target.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Keep going with the next step when this one fails.
    #[serde(default)]
    pub continue_on_error: bool,
    /// Safe to run twice: a rescued run may repeat it when it was interrupted.
    #[serde(default)]
    pub idempotent: bool,
    /// Extra environment variables (values are templates, not quoted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (a template, not quoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Do not treat the command or body as a template (for text full of `{{`,
    /// like `docker ps --format '{{.Names}}'`). Ad-hoc commands are raw.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
    /// Per-step overrides of the target's limits (Docker: `memory`, `cpus`,
    /// `pids`, `network`, …), for the one step that needs more or less than
    /// the target's default. Checked at submit against each selected target's
    /// executor: one that takes no limits refuses them rather than ignore them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, serde_json::Value>,
    /// Retries of this step (overrides the job's `retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// A condition (`{{ expression }}`) evaluated per target just before the
    /// step runs there; false records the step `skipped` with the condition
    /// as the reason. See [`crate::flow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// How the step publishes outputs besides `::output name=value` lines:
    /// `json` parses its last stdout line as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<OutputsMode>,
    /// Where the step's fields were written (`file:line:col`), for errors
    /// found after parsing (e.g. a `job:` cycle at apply). Never stored.
    #[serde(skip)]
    pub origin: Origin,
}

/// How a step publishes outputs (see [`Step::outputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputsMode {
    /// The last non-empty stdout line is a JSON object of outputs.
    Json,
}

/// Source positions of a step's fields (`field` → `file:line:col`), known
/// only for a step just parsed from a file. Compares equal to any other:
/// where a definition was written never makes two definitions differ.
#[derive(Debug, Clone, Default)]
pub struct Origin(pub BTreeMap<String, String>);

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Origin {
    /// `file:line:col` of `field`, if known.
    pub fn of(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }
}

/// The kinds of step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// A command line run by the target's shell.
    Exec {
        /// The command template; substituted values are shell-quoted.
        command: String,
    },
    /// A script body run by an interpreter.
    Script {
        /// Interpreter command (`sh`, `bash`, `python3`, …).
        interpreter: String,
        /// The body template; substituted values are quoted for the interpreter.
        body: String,
    },
    /// A file written on the target.
    Copy {
        /// Destination path (a template).
        dest: String,
        /// Inline content (a template, inserted verbatim), or …
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        /// … a file on the worker's host to read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        src: Option<String>,
        /// Unix permission bits.
        #[serde(default = "default_mode")]
        mode: u32,
    },
    /// Another job, run as a child run per target of this step (see
    /// [`crate::flow`]); its final status is the step's result.
    Job {
        /// The job's name.
        job: String,
        /// Parameters of the child run; string values are templates
        /// (rendered for the parent's target, not quoted).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        params: BTreeMap<String, serde_json::Value>,
        /// The child's target selector (templates); default: the child job's own.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        targets: Vec<String>,
    },
}

fn default_mode() -> u32 {
    0o644
}

impl Action {
    /// The step kind's name as written in job files.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Exec { .. } => "exec",
            Action::Script { .. } => "script",
            Action::Copy { .. } => "copy",
            Action::Job { .. } => "job",
        }
    }
}

/// A stored version of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Version number, from 1; each change of the spec adds one.
    pub version: u32,
    /// What the job does.
    pub spec: JobSpec,
    /// When this version was stored.
    pub created_at: DateTime<Utc>,
    /// Who stored it.
    pub created_by: String,
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

/// The state machine of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker.
    Running,
    /// Every step succeeded on every target.
    Succeeded,
    /// A step failed on some target.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// A time limit was reached.
    TimedOut,
    /// Waiting for approvers; no worker takes it until approved.
    WaitingApproval,
    /// An approver rejected it; nothing ran.
    Rejected,
    /// Nobody approved it in time; nothing ran.
    Expired,
}

impl RunStatus {
    /// All statuses, for validation and help texts.
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::TimedOut,
        RunStatus::WaitingApproval,
        RunStatus::Rejected,
        RunStatus::Expired,
    ];

    /// The lower-case name used everywhere.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::WaitingApproval => "waiting_approval",
            RunStatus::Rejected => "rejected",
            RunStatus::Expired => "expired",
        }
    }

    /// True once the run can no longer change.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            RunStatus::Queued | RunStatus::Running | RunStatus::WaitingApproval
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::validation(
                    "status",
                    format!(
                        "unknown run status '{s}' (expected one of: {})",
                        RunStatus::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })
    }
}

/// One execution of a job version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Identifier.
    pub id: RunId,
    /// Job name (`exec` for ad-hoc commands).
    pub job: String,
    /// Job version run, `None` for ad-hoc commands.
    pub job_version: Option<u32>,
    /// The job spec as it was when submitted: a run never changes under edits.
    pub spec: JobSpec,
    /// Validated parameters.
    pub params: serde_json::Value,
    /// The target names resolved at submission, in order.
    pub targets: Vec<String>,
    /// Current state.
    pub status: RunStatus,
    /// Who asked for it.
    pub requested_by: String,
    /// How many times a worker claimed it (1 normally; more after rescue).
    pub attempt: u32,
    /// Worker that holds (or last held) it.
    pub worker: Option<String>,
    /// Until when the worker's claim is valid.
    pub lease_until: Option<DateTime<Utc>>,
    /// Set when someone asked to stop it.
    pub cancel_requested: bool,
    /// Why it ended badly, for people.
    pub error: Option<String>,
    /// When submitted.
    pub created_at: DateTime<Utc>,
    /// When first claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The id of the request that submitted it (the server's `X-Request-Id`),
    /// so a run's logs and the API request that made it can be matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The schedule that queued it and the nominal fire time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduledFire>,
    /// For a child run (a `job:` step of another run): the parent run, step
    /// and target that started it. At most one child exists per parent
    /// step × target (a unique index), so a rescued parent never starts a
    /// second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunParent>,
}

/// Which step of which run started a child run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParent {
    /// The parent run.
    pub run: RunId,
    /// Index of the `job:` step in the parent's spec.
    pub step: u32,
    /// The parent's target the step ran for.
    pub target: String,
}

/// The state of one step on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Started, not finished (or its worker died: see rescue).
    Running,
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit or an error.
    Failed,
    /// Time limit reached; the process was killed.
    TimedOut,
    /// Stopped on request.
    Cancelled,
    /// Not run, because an earlier step failed on this target or its
    /// `when` condition was false (the result's `error` says which).
    Skipped,
    /// Its worker died while it ran and it is not idempotent: not repeated.
    Interrupted,
}

impl StepStatus {
    /// The lower-case name used everywhere.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::TimedOut => "timed_out",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Skipped => "skipped",
            StepStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        [
            StepStatus::Running,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::TimedOut,
            StepStatus::Cancelled,
            StepStatus::Skipped,
            StepStatus::Interrupted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| Error::validation("status", format!("unknown step status '{s}'")))
    }
}

/// The outcome of one step on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The run.
    pub run_id: RunId,
    /// Index of the step in the run's spec.
    pub step: u32,
    /// Target name.
    pub target: String,
    /// State.
    pub status: StepStatus,
    /// Exit code when the process exited.
    pub exit_code: Option<i32>,
    /// Signal number when the process was killed by one.
    pub signal: Option<i32>,
    /// Why it failed (or, for a step skipped by its `when`, the condition), for people.
    pub error: Option<String>,
    /// Run attempt that produced this result.
    pub attempt: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Values the step published (`::output name=value` lines, or its last
    /// stdout line with `outputs: json`), masked like the output and
    /// bounded (see [`crate::flow`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Child runs a `job:` step started on this target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<RunId>,
    /// Which try of the step this is, from 1 (more with `retry`).
    #[serde(default = "first_try")]
    pub try_no: u32,
    /// The earlier tries, oldest first (empty without retries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tries: Vec<TryRecord>,
}

fn first_try() -> u32 {
    1
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Messages from OpsConductor itself (step started, errors).
    System,
}

impl Stream {
    /// The lower-case name used everywhere.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

impl FromStr for Stream {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            "system" => Ok(Stream::System),
            _ => Err(Error::validation("stream", format!("unknown stream '{s}'"))),
        }
    }
}

/// A piece of output, in order within its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The run.
    pub run_id: RunId,
    /// Position in the run's log, from 1, without gaps.
    pub seq: u64,
    /// Step index, `None` for run-level messages.
    pub step: Option<u32>,
    /// Target name, `None` for run-level messages.
    pub target: Option<String>,
    /// Stream.
    pub stream: Stream,
    /// The bytes (secrets already masked).
    pub data: Vec<u8>,
    /// When it was produced.
    pub time: DateTime<Utc>,
    /// Which try of its step produced it (1 unless the step was retried).
    #[serde(default = "first_try")]
    pub try_no: u32,
}

/// Who does something: recorded on runs and in the audit log.
///
/// An actor with a `role` is held to the permission matrix
/// ([`crate::auth::MATRIX`]) by every engine call; an actor without one is
/// trusted (the local CLI, a Rust or Python program on the database itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// User or service name.
    pub name: String,
    /// The role checked against the permission matrix; `None`: trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::auth::Role>,
    /// How it authenticated (`password`, `api_token`, `local`), for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Where the request came from (an IP address), for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The request id, propagated to runs and audit events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When this user last entered their password (the start of the login
    /// the request belongs to; `None` for API tokens and trusted actors).
    /// Approving needs a recent one (`approval::FRESH_LOGIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_at: Option<DateTime<Utc>>,
}

impl Actor {
    /// A trusted actor with a name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            role: None,
            via: None,
            source: None,
            request_id: None,
            login_at: None,
        }
    }

    /// An authenticated user held to the permission matrix.
    pub fn user(name: impl Into<String>, role: crate::auth::Role, via: &str) -> Self {
        Self {
            name: name.into(),
            role: Some(role),
            via: Some(via.into()),
            source: None,
            request_id: None,
            login_at: None,
        }
    }

    /// The local user running the process (`$USER`), for the CLI and embedders.
    pub fn local_user() -> Self {
        let name = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "local".into());
        Self {
            via: Some("local".into()),
            ..Self::new(name)
        }
    }

    /// Fails unless this actor may do `perm` (trusted actors may do anything).
    pub fn require(&self, perm: crate::auth::Permission) -> crate::error::Result<()> {
        match self.role {
            Some(role) => crate::auth::require(role, perm),
            None => Ok(()),
        }
    }

    /// Who and how, for audit event details.
    pub fn audit_detail(&self) -> serde_json::Value {
        serde_json::json!({
            "role": self.role.map(|r| r.as_str()).unwrap_or("trusted"),
            "via": self.via,
            "source": self.source,
            "request_id": self.request_id,
        })
    }
}

/// Serde for `Option<Duration>` as human strings (`"90s"`, `"5m"`, `"1h30m"`) or seconds.
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Serializes as a human string.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::duration::format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Accepts a human string or a number of seconds. Errors are raised
    /// while the value is read, so parsers report the value's own position.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptVisitor)
    }

    struct OptVisitor;

    impl<'de> serde::de::Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as 30s, 5m or 1h30m, or a number of seconds")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DurVisitor).map(Some)
        }
    }

    struct DurVisitor;

    impl serde::de::Visitor<'_> for DurVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as 30s, 5m or 1h30m, or a number of seconds")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            crate::duration::parse(v).map_err(E::custom)
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (UTC).
    pub time: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What, as `object.verb`: `secret.create`, `secret.use`, `key.rotate`, …
    pub action: String,
    /// Which object (`secret:db-password`, `run:ID`).
    pub object: String,
    /// Details (run, step, target, role, auth method, source IP, request id,
    /// outcome …). Never a secret value.
    #[serde(default)]
    pub detail: serde_json::Value,
    /// Position in the log (set by the store).
    #[serde(default)]
    pub seq: u64,
    /// Hash of the previous event (set by the store; empty for the first).
    #[serde(default)]
    pub prev_hash: String,
    /// `SHA-256(prev_hash | canonical event)` (set by the store).
    #[serde(default)]
    pub hash: String,
}

impl AuditEvent {
    /// An event happening now.
    pub fn now(
        actor: &str,
        action: &str,
        object: impl Into<String>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            time: Utc::now(),
            actor: actor.to_string(),
            action: action.to_string(),
            object: object.into(),
            detail,
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The chain hash of this event after `prev_hash`: SHA-256 over the
    /// previous hash and the event's content (time to the microsecond,
    /// actor, action, object, detail as JSON), each length-prefixed; hex.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            prev_hash,
            &self.time.timestamp_micros().to_string(),
            &self.actor,
            &self.action,
            &self.object,
            &self.detail.to_string(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}
