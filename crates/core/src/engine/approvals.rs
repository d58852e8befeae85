//! Approvals and the command policy through the engine.
//!
//! At submit, every rendered command and script body is screened by the
//! command policy (a `deny` refuses the run) and fed into the **plan**: the
//! job, version, parameters, targets and each step's rendered text per
//! target, hashed into a digest. A run whose job asks for approval, or
//! whose plan hit a `require_approval` rule, is inserted
//! `waiting_approval` with its request (the plan, its digest, the policy
//! hits); the spec and parameters stored on the run are what will run, so
//! nothing can change after approval.
//!
//! The four-eyes rule lives here: approving needs the `Approve` permission,
//! a fresh password login (API tokens count as their user), eligibility by
//! the job's approver list, and a person other than the submitter; the
//! store records each decision once per person and moves the run in the
//! same transaction (`ApprovalStore::decide`).

use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use sha2::Digest;

use super::{Conductor, Inner, worker};
use crate::approval::{
    ApprovalDecision, ApprovalRequest, ApprovalSpec, ApprovalView, DecideOutcome, Decision,
    FRESH_LOGIN, MAX_REASON,
};
use crate::auth::{Permission, Role};
use crate::bus::Event;
use crate::error::{Error, Result};
use crate::executor::Command;
use crate::model::{Actor, JobSpec, Run, RunId, RunStatus, Target};
use crate::policy::{Hit, Policy, PolicyAction, Subject};

/// Largest plan text kept for approvers, in bytes; the digest covers
/// all of it.
const MAX_PLAN_BYTES: usize = 256 * 1024;
/// Most policy hits kept on a request (the rest are counted).
const MAX_HITS: usize = 100;
/// Most runs one expiry sweep ends.
const SWEEP_LIMIT: usize = 500;
/// Largest page of [`Conductor::approvals`].
pub const MAX_APPROVALS_PAGE: usize = 1000;

/// Something that happened to an approval, for notifications (the
/// `approval.requested` / `approval.decided` events). Today it is logged;
/// the notifications outbox hooks in at [`Inner::approval_event`].
#[derive(Debug, Clone)]
pub(crate) enum ApprovalEvent<'a> {
    /// A run waits for approval.
    Requested(&'a ApprovalRequest),
    /// A decision was recorded, or the request expired.
    Decided {
        run: RunId,
        approver: &'a str,
        decision: &'a str,
        outcome: DecideOutcome,
    },
}

/// What screening the rendered plan found, built while rendering.
pub(crate) struct PlanBuilder {
    hasher: sha2::Sha256,
    steps: Vec<Value>,
    bytes: usize,
    truncated: bool,
    hits: Vec<Hit>,
    more_hits: usize,
    needs_approval: bool,
    policy: Arc<Policy>,
}

/// The finished plan.
pub(crate) struct Plan {
    pub digest: String,
    pub plan: Value,
    pub hits: Vec<Hit>,
    pub needs_approval: bool,
}

impl PlanBuilder {
    pub(crate) fn new(
        policy: Arc<Policy>,
        spec: &JobSpec,
        version: Option<u32>,
        params: &Value,
    ) -> Self {
        let mut hasher = sha2::Sha256::new();
        let head = json!({"job": spec.name, "version": version, "params": params});
        feed(&mut hasher, &head.to_string());
        Self {
            hasher,
            steps: Vec::new(),
            bytes: 0,
            truncated: false,
            hits: Vec::new(),
            more_hits: 0,
            needs_approval: false,
            policy,
        }
    }

    /// Screens and records one rendered step on one target; a `deny` hit
    /// is the submitter's error.
    pub(crate) fn add(
        &mut self,
        spec: &JobSpec,
        step: usize,
        target: &Target,
        rendered: &worker::Rendered,
    ) -> Result<()> {
        let (kind, interpreter, text, env) = match rendered {
            worker::Rendered::Run { cmd, env, .. } => match cmd {
                Command::Shell(c) => ("exec", None, c.as_str(), env.as_slice()),
                Command::Script { interpreter, body } => (
                    "script",
                    Some(interpreter.as_str()),
                    body.as_str(),
                    env.as_slice(),
                ),
            },
            worker::Rendered::Copy { content, .. } => {
                ("copy", None, content.as_deref().unwrap_or(""), &[][..])
            }
            // A child run is screened when it is submitted, as its own run.
            worker::Rendered::Job { .. } => ("job", None, "", &[][..]),
        };
        let subject = Subject {
            job: &spec.name,
            step,
            kind,
            interpreter,
            target: Some(target),
            env,
        };
        for hit in self.policy.screen(&subject, text) {
            match hit.action {
                PolicyAction::Deny => return Err(hit.refusal(spec)),
                PolicyAction::RequireApproval => self.needs_approval = true,
                PolicyAction::Warn => {}
            }
            if self.hits.len() < MAX_HITS {
                self.hits.push(hit);
            } else {
                self.more_hits += 1;
            }
        }
        let name = spec.step_at(step).map(|s| s.name.as_str()).unwrap_or("");
        let entry = match rendered {
            worker::Rendered::Copy {
                dest, src, mode, ..
            } => json!({
                "step": step, "name": name, "target": target.name, "kind": kind,
                "dest": dest, "src": src, "mode": format!("{mode:o}"), "content": text,
            }),
            worker::Rendered::Run { workdir, .. } => json!({
                "step": step, "name": name, "target": target.name, "kind": kind,
                "interpreter": interpreter, "text": text, "workdir": workdir,
            }),
            worker::Rendered::Job {
                job,
                params,
                targets,
            } => json!({
                "step": step, "name": name, "target": target.name, "kind": kind,
                "job": job, "params": params, "targets": targets,
            }),
        };
        let line = entry.to_string();
        feed(&mut self.hasher, &line);
        if !self.truncated && self.bytes + line.len() <= MAX_PLAN_BYTES {
            self.bytes += line.len();
            self.steps.push(entry);
        } else {
            self.truncated = true;
        }
        Ok(())
    }

    pub(crate) fn finish(self, targets: &[String]) -> Plan {
        let mut hasher = self.hasher;
        feed(&mut hasher, &json!(targets).to_string());
        let mut plan = json!({"targets": targets, "steps": self.steps});
        if self.truncated
            && let Some(m) = plan.as_object_mut()
        {
            m.insert("truncated".into(), Value::Bool(true));
        }
        if self.more_hits > 0
            && let Some(m) = plan.as_object_mut()
        {
            m.insert("more_policy_hits".into(), json!(self.more_hits));
        }
        Plan {
            digest: hex::encode(hasher.finalize()),
            plan,
            hits: self.hits,
            needs_approval: self.needs_approval,
        }
    }
}

/// Length-prefixed, so entries cannot run into each other.
fn feed(h: &mut sha2::Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

impl Inner {
    /// The hook for notifications: called after each request, decision
    /// and expiry is stored and audited.
    pub(crate) fn approval_event(&self, ev: ApprovalEvent<'_>) {
        match ev {
            ApprovalEvent::Requested(r) => {
                tracing::info!(run = %r.run_id, job = %r.job, "approval requested");
            }
            ApprovalEvent::Decided {
                run,
                approver,
                decision,
                outcome,
            } => {
                tracing::info!(run = %run, approver, decision, outcome = ?outcome, "approval decided");
            }
        }
    }

    /// Ends every waiting run whose request expired (whoever notices
    /// first: workers every heartbeat, readers of approvals, a decision).
    pub(crate) async fn sweep_expired_approvals(&self) -> Result<Vec<RunId>> {
        let ids = self
            .store
            .approval_store()
            .expire_approvals(Utc::now(), SWEEP_LIMIT)
            .await?;
        for id in &ids {
            self.audit_as(
                &Actor::new("opsconductor"),
                "approval.expire",
                format!("run:{id}"),
                json!({"outcome": "expired"}),
            )
            .await;
            self.approval_event(ApprovalEvent::Decided {
                run: *id,
                approver: "opsconductor",
                decision: "expire",
                outcome: DecideOutcome::Expired,
            });
            self.publish(Event::Updated(*id));
        }
        Ok(ids)
    }

    /// Stores a waiting run: its request first, then the run (the commit
    /// point), then the audit event and the notification hook.
    pub(crate) async fn insert_waiting(
        &self,
        run: &Run,
        gate: ApprovalSpec,
        reasons: Vec<String>,
        plan: Plan,
        actor: &Actor,
    ) -> Result<()> {
        let now = Utc::now();
        let req = ApprovalRequest {
            run_id: run.id,
            job: run.job.clone(),
            requested_by: run.requested_by.clone(),
            required: gate.required,
            approvers: gate.approvers.clone(),
            reason_required: gate.reason_required,
            expires_at: gate.expires_at(now),
            plan_digest: plan.digest,
            plan: plan.plan,
            reasons,
            policy_hits: plan.hits,
            created_at: now,
        };
        self.store
            .approval_store()
            .put_approval_request(&req)
            .await?;
        self.store.insert_run(run).await?;
        self.audit_as(
            actor,
            "approval.request",
            format!("run:{}", run.id),
            json!({
                "job": run.job,
                "plan_digest": req.plan_digest,
                "required": req.required,
                "approvers": req.approvers,
                "reasons": req.reasons,
                "expires_at": req.expires_at,
                "policy_hits": req.policy_hits.iter().map(|h| &h.rule).collect::<Vec<_>>(),
            }),
        )
        .await;
        self.approval_event(ApprovalEvent::Requested(&req));
        Ok(())
    }
}

/// Why a run must wait, and on what terms: the job's own `approval:`, or
/// the defaults when only the policy asks.
pub(crate) fn gate(spec: &JobSpec, plan: &Plan) -> Option<(ApprovalSpec, Vec<String>)> {
    let mut reasons = Vec::new();
    if spec.approval.is_some() {
        reasons.push("job".to_string());
    }
    if plan.needs_approval {
        reasons.push("policy".to_string());
    }
    if reasons.is_empty() {
        return None;
    }
    Some((spec.approval.clone().unwrap_or_default(), reasons))
}

impl Conductor {
    /// The command policy in force.
    pub fn command_policy(&self) -> Arc<Policy> {
        match self.inner.command_policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the command policy (servers set it from their config).
    pub fn set_command_policy(&self, policy: Policy) {
        let policy = Arc::new(policy);
        match self.inner.command_policy.write() {
            Ok(mut p) => *p = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    /// Approval requests, newest first: only waiting ones if
    /// `waiting_only`; at most `limit` (1 to [`MAX_APPROVALS_PAGE`]).
    pub async fn approvals(
        &self,
        waiting_only: bool,
        limit: usize,
        actor: &Actor,
    ) -> Result<Vec<ApprovalView>> {
        actor.require(Permission::Read)?;
        if !(1..=MAX_APPROVALS_PAGE).contains(&limit) {
            return Err(Error::validation(
                "limit",
                format!("{limit} is out of range (1-{MAX_APPROVALS_PAGE})"),
            ));
        }
        self.inner.sweep_expired_approvals().await?;
        let store = self.inner.store.approval_store();
        let mut out = Vec::new();
        for (request, status) in store.list_approval_requests(waiting_only, limit).await? {
            let decisions = store.approval_decisions(request.run_id).await?;
            out.push(ApprovalView {
                request,
                status,
                decisions,
            });
        }
        Ok(out)
    }

    /// One run's approval request with its decisions.
    pub async fn approval(&self, id: RunId, actor: &Actor) -> Result<ApprovalView> {
        actor.require(Permission::Read)?;
        self.inner.sweep_expired_approvals().await?;
        self.view(id).await
    }

    async fn view(&self, id: RunId) -> Result<ApprovalView> {
        let store = self.inner.store.approval_store();
        let request = store
            .approval_request(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "approval request",
                name: id.to_string(),
                hint: Some("the run did not need approval".into()),
            })?;
        let status = self
            .inner
            .store
            .run_status(id)
            .await?
            .unwrap_or(RunStatus::WaitingApproval);
        let decisions = store.approval_decisions(id).await?;
        Ok(ApprovalView {
            request,
            status,
            decisions,
        })
    }

    /// Approves a waiting run (see the module docs for who may). When it
    /// was the last approval needed, the run is queued.
    pub async fn approve(
        &self,
        id: RunId,
        comment: Option<String>,
        actor: &Actor,
    ) -> Result<ApprovalView> {
        self.decide(id, Decision::Approve, comment, actor).await
    }

    /// Rejects a waiting run with a reason; it ends `rejected`.
    pub async fn reject(&self, id: RunId, reason: String, actor: &Actor) -> Result<ApprovalView> {
        self.decide(id, Decision::Reject, Some(reason), actor).await
    }

    async fn decide(
        &self,
        id: RunId,
        decision: Decision,
        reason: Option<String>,
        actor: &Actor,
    ) -> Result<ApprovalView> {
        actor.require(Permission::Approve)?;
        check_fresh_login(actor)?;
        let reason = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if let Some(r) = &reason
            && (r.chars().count() > MAX_REASON
                || r.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
        {
            return Err(Error::validation(
                if decision == Decision::Reject {
                    "reason"
                } else {
                    "comment"
                },
                format!("at most {MAX_REASON} characters, no control characters"),
            ));
        }
        let view = self.view(id).await?;
        let req = &view.request;
        if actor.name.eq_ignore_ascii_case(&req.requested_by) {
            return Err(Error::Forbidden(format!(
                "'{}' submitted run {id}; someone else must approve or reject it (four-eyes rule)",
                actor.name
            )));
        }
        let eligible = if !req.approvers.users.is_empty() {
            req.approvers
                .users
                .iter()
                .any(|u| u.eq_ignore_ascii_case(&actor.name))
        } else {
            let roles: &[Role] = if req.approvers.roles.is_empty() {
                &[Role::Admin]
            } else {
                &req.approvers.roles
            };
            actor.role.is_none_or(|r| roles.contains(&r))
        };
        if !eligible {
            return Err(Error::Forbidden(format!(
                "run {id} may be approved by {}, not by '{}'",
                req.approvers.describe(),
                actor.name
            )));
        }
        match (decision, &reason) {
            (Decision::Reject, None) => {
                return Err(Error::validation("reason", "a rejection needs a reason"));
            }
            (Decision::Approve, None) if req.reason_required => {
                return Err(Error::validation(
                    "comment",
                    "this job's approvals need a reason (give a comment)",
                ));
            }
            _ => {}
        }
        let d = ApprovalDecision {
            run_id: id,
            approver: actor.name.clone(),
            decision,
            reason: reason.clone(),
            plan_digest: req.plan_digest.clone(),
            time: Utc::now(),
        };
        let outcome = self.inner.store.approval_store().decide(&d, d.time).await?;
        let outcome_name = match outcome {
            DecideOutcome::Recorded { .. } => "recorded",
            DecideOutcome::Approved => "approved",
            DecideOutcome::Rejected => "rejected",
            DecideOutcome::Expired => "expired",
            DecideOutcome::AlreadyDecided => "already_decided",
            DecideOutcome::NotWaiting(_) => "not_waiting",
        };
        let recorded = matches!(
            outcome,
            DecideOutcome::Recorded { .. } | DecideOutcome::Approved | DecideOutcome::Rejected
        );
        self.inner
            .audit_as(
                actor,
                if recorded {
                    match decision {
                        Decision::Approve => "approval.approve",
                        Decision::Reject => "approval.reject",
                    }
                } else {
                    "approval.refused"
                },
                format!("run:{id}"),
                json!({
                    "decision": decision.as_str(),
                    "reason": reason,
                    "plan_digest": req.plan_digest,
                    "outcome": outcome_name,
                }),
            )
            .await;
        if outcome == DecideOutcome::Expired {
            self.inner
                .audit_as(
                    &Actor::new("opsconductor"),
                    "approval.expire",
                    format!("run:{id}"),
                    json!({"outcome": "expired"}),
                )
                .await;
        }
        self.inner.approval_event(ApprovalEvent::Decided {
            run: id,
            approver: &actor.name,
            decision: decision.as_str(),
            outcome,
        });
        if outcome == DecideOutcome::Approved {
            self.inner.publish(Event::Queued(id));
        }
        self.inner.publish(Event::Updated(id));
        match outcome {
            DecideOutcome::Expired => Err(Error::Conflict(format!(
                "the approval request of run {id} expired at {}; the run has ended 'expired'",
                req.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            ))),
            DecideOutcome::AlreadyDecided => Err(Error::Conflict(format!(
                "'{}' has already decided on run {id}; a second decision by the same person does not count",
                actor.name
            ))),
            DecideOutcome::NotWaiting(s) => Err(Error::Conflict(format!(
                "run {id} is {s}, not waiting for approval"
            ))),
            _ => self.view(id).await,
        }
    }
}

/// Password users approve only within [`FRESH_LOGIN`] of entering their
/// password; API tokens (which count as their user) and trusted actors
/// are not held to it.
fn check_fresh_login(actor: &Actor) -> Result<()> {
    if actor.role.is_none() || actor.via.as_deref() != Some("password") {
        return Ok(());
    }
    let fresh = chrono::Duration::from_std(FRESH_LOGIN).unwrap_or(chrono::Duration::minutes(5));
    match actor.login_at {
        Some(t) if Utc::now() - t <= fresh => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "approving needs a fresh login: log in again with your password (logins older than {} minutes do not count)",
            FRESH_LOGIN.as_secs() / 60
        ))),
    }
}
