//! Job-level approvals: what a job asks for (`approval:` in its file), the
//! request stored with a run that waits, and the decisions approvers make.
//! Plain data; the four-eyes rule itself lives in the engine
//! (`engine/approvals.rs`), next to the permission matrix.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::model::RunId;
use crate::policy::Hit;

/// How long a request waits when the job does not say.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(4 * 3600);
/// The longest a request may wait.
pub const MAX_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest a request may wait.
pub const MIN_EXPIRY: Duration = Duration::from_secs(60);
/// Most approvals a job may require.
pub const MAX_REQUIRED: u32 = 10;
/// Most users or roles an approver list may name.
pub const MAX_APPROVERS: usize = 100;
/// Longest reason or comment, in characters.
pub const MAX_REASON: usize = 2000;
/// How recent a password login must be to approve or reject (see
/// `docs/approvals.md`): the login, not the access token, so refreshing a
/// token does not make an old login fresh.
pub const FRESH_LOGIN: Duration = Duration::from_secs(5 * 60);

/// `approval:` on a job: the run waits until `required` distinct eligible
/// people other than the submitter approve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// How many distinct approvals (1 to 10).
    #[serde(default = "one")]
    pub required: u32,
    /// Who may approve (default: the admin role).
    #[serde(default)]
    pub approvers: Approvers,
    /// How long the request waits before the run ends `expired` (default 4h).
    #[serde(
        default,
        with = "crate::model::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<Duration>,
    /// An approval must say why (a rejection always must).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reason_required: bool,
}

fn one() -> u32 {
    1
}

impl Default for ApprovalSpec {
    fn default() -> Self {
        Self {
            required: 1,
            approvers: Approvers::default(),
            expires: None,
            reason_required: false,
        }
    }
}

impl ApprovalSpec {
    /// Checks the ranges; `field` is where the spec was written.
    pub fn check(&self, field: &str) -> Result<()> {
        if !(1..=MAX_REQUIRED).contains(&self.required) {
            return Err(Error::validation(
                format!("{field}.required"),
                format!("{} is out of range (1-{MAX_REQUIRED})", self.required),
            ));
        }
        if let Some(e) = self.expires
            && !(MIN_EXPIRY..=MAX_EXPIRY).contains(&e)
        {
            return Err(Error::validation(
                format!("{field}.expires"),
                "must be between 1m and 30d",
            ));
        }
        let a = &self.approvers;
        if !a.roles.is_empty() && !a.users.is_empty() {
            return Err(Error::validation(
                format!("{field}.approvers"),
                "give roles or users, not both",
            ));
        }
        if a.roles.len() + a.users.len() > MAX_APPROVERS {
            return Err(Error::validation(
                format!("{field}.approvers"),
                format!("at most {MAX_APPROVERS} entries"),
            ));
        }
        for u in &a.users {
            crate::spec::check_name("user", u)
                .map_err(|e| e.within(&format!("{field}.approvers.users")))?;
        }
        if !a.users.is_empty() && (a.users.len() as u64) < u64::from(self.required) {
            return Err(Error::validation(
                format!("{field}.approvers.users"),
                format!(
                    "{} user(s) can never give {} approvals",
                    a.users.len(),
                    self.required
                ),
            ));
        }
        Ok(())
    }

    /// When a request made at `now` expires.
    pub fn expires_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let d = self.expires.unwrap_or(DEFAULT_EXPIRY);
        now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(4))
    }
}

/// Who may approve: by role or by user name (not both). Empty: admins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    /// Any user holding one of these roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// These users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

impl Approvers {
    /// For people: "role admin", "users alice, bob".
    pub fn describe(&self) -> String {
        if !self.users.is_empty() {
            format!("users {}", self.users.join(", "))
        } else if self.roles.is_empty() {
            "role admin".into()
        } else {
            format!(
                "role {}",
                self.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        }
    }
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Counts towards `required`.
    Approve,
    /// Ends the run `rejected`.
    Reject,
}

impl Decision {
    /// The lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "approve" => Ok(Decision::Approve),
            "reject" => Ok(Decision::Reject),
            _ => Err(Error::validation(
                "decision",
                format!("unknown decision '{s}'"),
            )),
        }
    }
}

/// What a waiting run asks approvers, frozen at submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The run.
    pub run_id: RunId,
    /// The job's name.
    pub job: String,
    /// Who submitted (never an approver).
    pub requested_by: String,
    /// How many distinct approvals.
    pub required: u32,
    /// Who may approve.
    pub approvers: Approvers,
    /// An approval must carry a reason.
    pub reason_required: bool,
    /// When the run ends `expired` if not decided.
    pub expires_at: DateTime<Utc>,
    /// SHA-256 (hex) of the plan: what approvers approve.
    pub plan_digest: String,
    /// The rendered plan shown to approvers (see `engine::approvals`).
    pub plan: serde_json::Value,
    /// Why approval is needed: `job` (the job asks) and/or `policy`.
    pub reasons: Vec<String>,
    /// Policy hits (`warn` and `require_approval`) on the plan.
    pub policy_hits: Vec<Hit>,
    /// When requested.
    pub created_at: DateTime<Utc>,
}

/// One approver's decision on one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// The run.
    pub run_id: RunId,
    /// Who decided (a user; API tokens count as their user).
    pub approver: String,
    /// What.
    pub decision: Decision,
    /// Why (required for rejections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plan digest the approver saw.
    pub plan_digest: String,
    /// When.
    pub time: DateTime<Utc>,
}

/// What a recorded decision did to the run (the store decides this in
/// the same transaction as the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecideOutcome {
    /// Recorded; still waiting for `approvals` of the required number.
    Recorded {
        /// Approvals so far.
        approvals: u32,
    },
    /// The last approval needed: the run is queued.
    Approved,
    /// Rejected: the run ended.
    Rejected,
    /// Nothing recorded: the request had expired, and the run now has.
    Expired,
    /// Nothing recorded: this approver had decided already.
    AlreadyDecided,
    /// Nothing recorded: the run is not waiting (decided, cancelled, …).
    NotWaiting(crate::model::RunStatus),
}

/// A waiting or decided request with its decisions and the run's status.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalView {
    /// The request.
    #[serde(flatten)]
    pub request: ApprovalRequest,
    /// The run's current status.
    pub status: crate::model::RunStatus,
    /// Decisions so far, oldest first.
    pub decisions: Vec<ApprovalDecision>,
}

impl ApprovalView {
    /// Approvals so far.
    pub fn approvals(&self) -> u32 {
        self.decisions
            .iter()
            .filter(|d| d.decision == Decision::Approve)
            .count() as u32
    }

    /// "waiting for approval by role admin (0 of 1)".
    pub fn waiting_line(&self) -> String {
        format!(
            "waiting for approval by {} ({} of {}, expires {})",
            self.request.approvers.describe(),
            self.approvals(),
            self.request.required,
            self.request.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}
