//! Notifications: which events go to which channels (rules), the channels
//! themselves (webhook, Slack-compatible, e-mail), and the durable outbox.
//!
//! Why an outbox: a notification must survive every crash. The deliveries
//! an event causes are written in the same transaction as the state change
//! that caused it (a run's end: [`NotifyStore::finish_run_notifying`], the
//! guarded finish plus the outbox rows), so either both happen or neither.
//! Deliverers on any node then claim due deliveries under a lease, like
//! runs, send them, and record every attempt; a deliverer killed mid-send
//! loses its lease and another node sends again with the same event id
//! (at least once; receivers de-duplicate on the id).
//!
//! Nothing leaks: payloads are masked string by string with every stored
//! secret (the same masker as run output), log excerpts are the last few
//! lines only, and channel credentials are secret names resolved at send
//! time.

mod deliver;
mod render;
mod send;
mod types;

pub use send::{
    DELIVERY_HEADER, EVENT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    is_internal, sign,
};
pub use types::*;

pub(crate) use deliver::deliver_loop;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Conductor, Inner};
use crate::auth::Permission;
use crate::error::{Error, Result};
use crate::mask::Masker;
use crate::model::{Actor, Run, RunId, RunStatus, StepStatus};
use crate::store::{FinishRun, RunFilter};

/// Most log lines a payload may carry.
pub const MAX_LOG_LINES: usize = 200;

/// How the engine notifies: global rules, the server's public URL, the SSRF
/// guard and the retry policy. The defaults suit an embedded engine.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Rules for every job (besides each job's own `notify:` rules).
    pub rules: Vec<NotifyRule>,
    /// The server's public URL; payloads then link to the run
    /// (`{public_url}/runs/{id}`).
    pub public_url: Option<String>,
    /// Refuse destinations that resolve to loopback, private, link-local or
    /// other internal addresses (SSRF guard). Off by default for the
    /// embedded engine and the CLI; servers turn it on in their config.
    pub block_private_addresses: bool,
    /// How long a delivery is retried before it is given up (default 24 h).
    pub retry_for: Duration,
    /// The first retry delay; each further one doubles (with jitter).
    pub backoff_base: Duration,
    /// The longest delay between two attempts.
    pub backoff_max: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// How long a deliverer holds a claimed delivery (longer than `timeout`);
    /// a deliverer that dies is replaced after this. `ConductorBuilder::lease`
    /// sets it to the run lease (at least `timeout` + 1 s).
    pub lease: Duration,
    /// How often deliverers look for due deliveries without a wake-up.
    pub poll: Duration,
    /// Lines of output in run payloads (the last ones; 0 to 200).
    pub log_lines: usize,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            public_url: None,
            block_private_addresses: false,
            retry_for: Duration::from_secs(24 * 3600),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            log_lines: 20,
        }
    }
}

impl NotifySettings {
    /// Checks ranges and rules.
    pub fn check(&self) -> Result<()> {
        if self.rules.len() > MAX_RULES {
            return Err(Error::validation(
                "notifications.rules",
                format!("at most {MAX_RULES} rules, got {}", self.rules.len()),
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.check()
                .map_err(|e| e.within(&format!("notifications.rules[{i}]")))?;
        }
        if let Some(u) = &self.public_url {
            types::check_url("notifications.public_url", u)?;
        }
        if self.log_lines > MAX_LOG_LINES {
            return Err(Error::validation(
                "notifications.log_lines",
                format!("0 to {MAX_LOG_LINES}, got {}", self.log_lines),
            ));
        }
        if self.timeout.is_zero() || self.lease <= self.timeout {
            return Err(Error::validation(
                "notifications.lease",
                "must be longer than notifications.timeout (and the timeout longer than zero)",
            ));
        }
        if self.poll.is_zero()
            || self.backoff_base.is_zero()
            || self.backoff_max < self.backoff_base
        {
            return Err(Error::validation(
                "notifications.backoff",
                "poll and backoff_base must be longer than zero, backoff_max at least backoff_base",
            ));
        }
        Ok(())
    }
}

/// The engine's notification state: settings, the deliverers' wake-up and
/// this process's deliverer.
#[derive(Debug, Default)]
pub(crate) struct NotifyState {
    pub settings: NotifySettings,
    pub wake: tokio::sync::Notify,
    deliverer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The HTTP client, built once (loading TLS roots costs ~100 ms).
    client: std::sync::OnceLock<reqwest::Client>,
}

impl NotifyState {
    pub(crate) fn new(settings: NotifySettings) -> Self {
        Self {
            settings,
            wake: tokio::sync::Notify::new(),
            deliverer: std::sync::Mutex::new(None),
            client: std::sync::OnceLock::new(),
        }
    }

    /// The shared HTTP client (see [`send::http_client`]).
    pub(crate) fn client(&self) -> std::result::Result<reqwest::Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let c = send::http_client(self.settings.timeout, self.settings.block_private_addresses)?;
        Ok(self.client.get_or_init(|| c).clone())
    }
}

/// Starts this process's deliverer unless it runs already (one per
/// process; it stops at shutdown).
pub(crate) fn start_deliverer(inner: &std::sync::Arc<Inner>) {
    let mut d = inner
        .notify
        .deliverer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if d.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
        *d = Some(tokio::spawn(deliver_loop(inner.clone())));
    }
}

/// What the end of a run needs for its notifications, taken when the run
/// starts: the rules that may apply to its job and what payloads show.
#[derive(Debug, Clone)]
pub(crate) struct RunNotice {
    rules: Vec<NotifyRule>,
    job: String,
    job_version: Option<u32>,
    tags: Vec<String>,
    targets: Vec<String>,
    requested_by: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
}

/// An event raised outside a run's end (schedules, approvals), for
/// [`Conductor::enqueue_event`].
#[derive(Debug, Clone)]
pub struct EventInput {
    /// What happened.
    pub kind: EventKind,
    /// The job it is about (its `notify:` rules apply too).
    pub job: Option<String>,
    /// The run it is about.
    pub run: Option<RunId>,
    /// Kind-specific data (schedule name, approver, decision, …); masked.
    pub detail: Value,
}

/// One delivery with its attempts, for history views.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its attempts, in order.
    pub attempts: Vec<Attempt>,
}

/// How a test delivery went.
#[derive(Debug, Clone, Serialize)]
pub struct TestDelivery {
    /// The channel.
    pub channel: String,
    /// The test event's id.
    pub event_id: uuid::Uuid,
    /// Whether the receiver accepted it.
    pub delivered: bool,
    /// HTTP status or SMTP reply code.
    pub code: Option<u16>,
    /// Reply text (bounded).
    pub reply: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub latency_ms: u64,
}

fn status_kind(status: RunStatus) -> Option<EventKind> {
    match status {
        RunStatus::Failed => Some(EventKind::RunFailed),
        RunStatus::TimedOut => Some(EventKind::RunTimedOut),
        RunStatus::Succeeded => Some(EventKind::RunSucceeded),
        RunStatus::Cancelled => Some(EventKind::RunCancelled),
        _ => None,
    }
}

impl Inner {
    /// The rules that may apply to `run` (its job's own and the matching
    /// global ones); `None` when there are none, so a run without
    /// notifications finishes exactly as before.
    pub(crate) fn run_notice(&self, run: &Run) -> Option<RunNotice> {
        let tags = &run.spec.tags;
        let mut rules: Vec<NotifyRule> = run.spec.notify.clone();
        rules.extend(
            self.notify
                .settings
                .rules
                .iter()
                .filter(|r| {
                    EventKind::ALL
                        .iter()
                        .any(|k| r.matches(*k, Some(&run.job), tags))
                })
                .cloned(),
        );
        if rules.is_empty() {
            return None;
        }
        Some(RunNotice {
            rules,
            job: run.job.clone(),
            job_version: run.job_version,
            tags: tags.clone(),
            targets: run.targets.clone(),
            requested_by: run.requested_by.clone(),
            created_at: run.created_at,
            started_at: run.started_at,
        })
    }

    /// Ends a run this worker holds, with the deliveries its end causes in
    /// the same transaction (plain `finish_run` when no rule applies).
    pub(crate) async fn finish_run_notifying(
        &self,
        notice: Option<&RunNotice>,
        f: FinishRun<'_>,
    ) -> Result<bool> {
        let Some(notice) = notice else {
            return self
                .store
                .finish_run(f.id, f.worker, f.attempt, f.status, f.error)
                .await;
        };
        let deliveries = self.plan_run_end(notice, &f).await?;
        let done = self
            .store
            .notify_store()
            .finish_run_notifying(&f, &deliveries)
            .await?;
        if done && !deliveries.is_empty() {
            self.notify.wake.notify_waiters();
        }
        Ok(done)
    }

    /// The status of the run of `job` before `id`, if any.
    async fn previous_status(&self, job: &str, id: RunId) -> Result<Option<RunStatus>> {
        let prev = self
            .store
            .list_runs(&RunFilter {
                job: Some(job.to_string()),
                statuses: vec![
                    RunStatus::Succeeded,
                    RunStatus::Failed,
                    RunStatus::TimedOut,
                    RunStatus::Cancelled,
                ],
                before: Some(id),
                limit: 1,
                ..RunFilter::default()
            })
            .await?;
        Ok(prev.first().map(|r| r.status))
    }

    /// The deliveries the end of a run causes.
    async fn plan_run_end(&self, n: &RunNotice, f: &FinishRun<'_>) -> Result<Vec<NewDelivery>> {
        let Some(kind) = status_kind(f.status) else {
            return Ok(vec![]);
        };
        let previous = self.previous_status(&n.job, f.id).await?;
        let mut kinds = vec![kind];
        if f.status == RunStatus::Succeeded
            && matches!(previous, Some(RunStatus::Failed | RunStatus::TimedOut))
        {
            kinds.push(EventKind::RunRecovered);
        }
        let changed = previous != Some(f.status);
        let mut plan: Vec<(EventKind, BTreeSet<String>)> = Vec::new();
        for k in kinds {
            let channels: BTreeSet<String> = n
                .rules
                .iter()
                .filter(|r| r.matches(k, Some(&n.job), &n.tags) && (!r.only_on_change || changed))
                .flat_map(|r| r.channels.iter().cloned())
                .collect();
            if !channels.is_empty() {
                plan.push((k, channels));
            }
        }
        if plan.is_empty() {
            return Ok(vec![]);
        }
        let run = self.run_payload(n, f, previous).await?;
        let masker = self.notify_masker().await;
        let now = Utc::now();
        let mut out = Vec::new();
        for (kind, channels) in plan {
            let event_id = uuid::Uuid::now_v7();
            let mut payload = json!({
                "id": event_id,
                "type": kind,
                "version": 1,
                "at": now,
                "job": n.job,
                "tags": n.tags,
                "run": run,
            });
            render::mask_json(&mut payload, &masker);
            out.extend(self.deliveries_for(
                event_id,
                kind,
                Some(f.id),
                Some(&n.job),
                &payload,
                channels,
            ));
        }
        Ok(out)
    }

    /// One delivery per channel of an event.
    fn deliveries_for(
        &self,
        event_id: uuid::Uuid,
        kind: EventKind,
        run: Option<RunId>,
        job: Option<&str>,
        payload: &Value,
        channels: BTreeSet<String>,
    ) -> Vec<NewDelivery> {
        let now = Utc::now();
        let give_up = chrono::Duration::from_std(self.notify.settings.retry_for)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let text = payload.to_string();
        channels
            .into_iter()
            .map(|channel| NewDelivery {
                id: uuid::Uuid::now_v7(),
                event_id,
                kind,
                run_id: run,
                job: job.map(str::to_string),
                channel,
                payload: text.clone(),
                next_at: now,
                give_up_at: give_up,
            })
            .collect()
    }

    /// The `run` object of a payload: status, times, targets with their
    /// outcome, the error and the last lines of output.
    async fn run_payload(
        &self,
        n: &RunNotice,
        f: &FinishRun<'_>,
        previous: Option<RunStatus>,
    ) -> Result<Value> {
        let now = Utc::now();
        let results = self.store.step_results(f.id).await?;
        let targets: Vec<Value> = n
            .targets
            .iter()
            .map(|t| {
                let mine: Vec<_> = results.iter().filter(|r| &r.target == t).collect();
                let failing = mine.iter().find(|r| {
                    !matches!(
                        r.status,
                        StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Running
                    )
                });
                let status = match failing {
                    Some(r) => r.status.as_str(),
                    None if !mine.is_empty()
                        && mine.iter().all(|r| r.status == StepStatus::Succeeded) =>
                    {
                        "succeeded"
                    }
                    None => f.status.as_str(),
                };
                json!({
                    "name": t,
                    "status": status,
                    "failed_step": failing.map(|r| r.step),
                    "exit_code": failing.and_then(|r| r.exit_code)
                        .or_else(|| mine.iter().rev().find_map(|r| r.exit_code)),
                    "error": failing.and_then(|r| r.error.clone()),
                })
            })
            .collect();
        let started = n.started_at.unwrap_or(n.created_at);
        let duration_ms = (now - started).num_milliseconds().max(0);
        let log_tail = self.log_tail(f.id).await?;
        let url = self
            .notify
            .settings
            .public_url
            .as_ref()
            .map(|u| format!("{}/runs/{}", u.trim_end_matches('/'), f.id));
        Ok(json!({
            "id": f.id,
            "job": n.job,
            "job_version": n.job_version,
            "status": f.status.as_str(),
            "previous_status": previous.map(|p| p.as_str()),
            "error": f.error,
            "requested_by": n.requested_by,
            "attempt": f.attempt,
            "created_at": n.created_at,
            "started_at": n.started_at,
            "finished_at": now,
            "duration_ms": duration_ms,
            "targets": targets,
            "url": url,
            "log_tail": log_tail,
        }))
    }

    /// The last lines of a run's output (stored masked; masked again by the caller).
    async fn log_tail(&self, id: RunId) -> Result<Vec<String>> {
        let n = self.notify.settings.log_lines;
        if n == 0 {
            return Ok(vec![]);
        }
        let last = self.store.last_log_seq(id).await?;
        // Enough chunks for the wanted lines in the usual case; bounded either way.
        let want = (n as u64 * 4).clamp(16, 800);
        let chunks = self
            .store
            .read_logs(id, last.saturating_sub(want), want as usize)
            .await?;
        let mut text = String::new();
        for c in &chunks {
            let data = String::from_utf8_lossy(&c.data);
            let prefix = c
                .target
                .as_deref()
                .map(|t| format!("[{t}] "))
                .unwrap_or_default();
            for line in data.lines() {
                text.push_str(&prefix);
                text.push_str(line);
                text.push('\n');
            }
        }
        Ok(render::last_lines(&text, n))
    }

    /// A masker for every stored secret (as run output is masked); empty
    /// without a master key.
    pub(crate) async fn notify_masker(&self) -> Masker {
        let records = match self.store.secret_store().list_secrets().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read secrets to mask a notification");
                return Masker::none();
            }
        };
        let ring_guard = self.keyring.read().await;
        let Some(ring) = ring_guard.as_ref() else {
            return Masker::none();
        };
        let mut cache = self
            .secret_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = cache.sync(&records, |rec| {
            ring.decrypt(&rec.id, "value", &rec.ciphertext)
        }) {
            tracing::warn!(error = %e, "cannot decrypt secrets to mask a notification");
        }
        cache.masker()
    }

    /// The value of a secret a channel names.
    pub(crate) async fn channel_secret(&self, name: &str) -> Result<Vec<u8>> {
        let rec = self
            .store
            .secret_store()
            .get_secret(name)
            .await?
            .ok_or_else(|| Error::not_found("secret", name))?;
        let guard = self.keyring.read().await;
        let ring = guard.as_ref().ok_or_else(|| {
            Error::invalid("no master key is configured: a channel's secret cannot be read")
        })?;
        ring.decrypt(&rec.id, "value", &rec.ciphertext)
    }

    /// The deliveries of an event not tied to a run's end (schedules,
    /// approvals): global rules, plus the job's own when it names one. For
    /// callers that write them in their own transaction.
    pub(crate) async fn plan_event(&self, input: &EventInput) -> Result<Vec<NewDelivery>> {
        let (tags, mut rules) = match &input.job {
            Some(j) => match self.store.get_job(j, None).await? {
                Some(job) => (job.spec.tags.clone(), job.spec.notify.clone()),
                None => (vec![], vec![]),
            },
            None => (vec![], vec![]),
        };
        rules.extend(self.notify.settings.rules.iter().cloned());
        let channels: BTreeSet<String> = rules
            .iter()
            .filter(|r| r.matches(input.kind, input.job.as_deref(), &tags))
            .flat_map(|r| r.channels.iter().cloned())
            .collect();
        if channels.is_empty() {
            return Ok(vec![]);
        }
        let event_id = uuid::Uuid::now_v7();
        let mut payload = json!({
            "id": event_id,
            "type": input.kind,
            "version": 1,
            "at": Utc::now(),
            "job": input.job,
            "tags": tags,
            "run": input.run.map(|r| json!({"id": r})),
            "detail": input.detail,
        });
        render::mask_json(&mut payload, &self.notify_masker().await);
        Ok(self.deliveries_for(
            event_id,
            input.kind,
            input.run,
            input.job.as_deref(),
            &payload,
            channels,
        ))
    }

    /// Plans and stores the deliveries of an event (see [`Inner::plan_event`]).
    pub(crate) async fn enqueue_event(&self, input: &EventInput) -> Result<usize> {
        let d = self.plan_event(input).await?;
        if !d.is_empty() {
            self.store.notify_store().enqueue_deliveries(&d).await?;
            self.notify.wake.notify_waiters();
        }
        Ok(d.len())
    }
}

impl Conductor {
    /// Creates or replaces a notification channel (admins: `ManageSettings`).
    /// The secrets it names must exist; their values are read only when sending.
    pub async fn set_channel(
        &self,
        name: &str,
        description: &str,
        spec: ChannelSpec,
        actor: &Actor,
    ) -> Result<Channel> {
        actor.require(Permission::ManageSettings)?;
        crate::spec::check_name("channel", name)?;
        if description.len() > 1024 {
            return Err(Error::validation("description", "at most 1024 bytes"));
        }
        spec.check()?;
        for s in spec.secret_names() {
            if self
                .inner
                .store
                .secret_store()
                .get_secret(s)
                .await?
                .is_none()
            {
                return Err(Error::NotFound {
                    what: "secret",
                    name: s.to_string(),
                    hint: Some("create it first with `opsconductor secrets set`".into()),
                });
            }
        }
        let ch = Channel {
            name: name.to_string(),
            description: description.to_string(),
            spec,
            updated_at: Utc::now(),
            updated_by: actor.name.clone(),
        };
        self.inner.store.notify_store().put_channel(&ch).await?;
        self.inner
            .audit_as(
                actor,
                "notify.channel.set",
                format!("channel:{name}"),
                json!({"kind": ch.spec.kind()}),
            )
            .await;
        Ok(ch)
    }

    /// Every channel (`Read`); secrets appear by name only.
    pub async fn channels(&self, actor: &Actor) -> Result<Vec<Channel>> {
        actor.require(Permission::Read)?;
        self.inner.store.notify_store().list_channels().await
    }

    /// One channel (`Read`).
    pub async fn channel(&self, name: &str, actor: &Actor) -> Result<Channel> {
        actor.require(Permission::Read)?;
        self.inner
            .store
            .notify_store()
            .get_channel(name)
            .await?
            .ok_or_else(|| Error::not_found("channel", name))
    }

    /// Deletes a channel (`ManageSettings`); deliveries to it then fail.
    pub async fn delete_channel(&self, name: &str, actor: &Actor) -> Result<()> {
        actor.require(Permission::ManageSettings)?;
        if !self.inner.store.notify_store().delete_channel(name).await? {
            return Err(Error::not_found("channel", name));
        }
        self.inner
            .audit_as(
                actor,
                "notify.channel.delete",
                format!("channel:{name}"),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// Sends a test event to a channel now, outside the outbox
    /// (`ManageSettings`), and says how it went.
    pub async fn test_channel(&self, name: &str, actor: &Actor) -> Result<TestDelivery> {
        actor.require(Permission::ManageSettings)?;
        let ch = self.channel(name, actor).await?;
        let event_id = uuid::Uuid::now_v7();
        let payload = json!({
            "id": event_id,
            "type": "notification.test",
            "version": 1,
            "at": Utc::now(),
            "job": null,
            "detail": {"message": format!("a test of channel '{name}' by {}", actor.name)},
        });
        let sent = deliver::send_to(&self.inner, &ch, &payload, event_id, event_id).await;
        self.inner
            .audit_as(
                actor,
                "notify.channel.test",
                format!("channel:{name}"),
                json!({"delivered": sent.outcome == AttemptOutcome::Delivered, "code": sent.code}),
            )
            .await;
        Ok(TestDelivery {
            channel: name.to_string(),
            event_id,
            delivered: sent.outcome == AttemptOutcome::Delivered,
            code: sent.code,
            reply: sent.reply,
            error: sent.error,
            latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Delivery history (`Read`), newest first: per run, per channel or all,
    /// each delivery with its attempts.
    pub async fn notification_history(
        &self,
        filter: &DeliveryFilter,
        actor: &Actor,
    ) -> Result<Vec<DeliveryInfo>> {
        actor.require(Permission::Read)?;
        if filter.limit > 1000 {
            return Err(Error::validation(
                "limit",
                format!("{} is out of range (1-1000)", filter.limit),
            ));
        }
        let ns = self.inner.store.notify_store();
        let mut out = Vec::new();
        for d in ns.list_deliveries(filter).await? {
            let attempts = ns.attempts(d.id).await?;
            out.push(DeliveryInfo {
                delivery: d,
                attempts,
            });
        }
        Ok(out)
    }

    /// Raises an event that is not a run's end (`schedule.missed`,
    /// `approval.requested`, `approval.decided`): the matching rules' channels
    /// get a delivery each. Returns how many. Trusted callers only (the
    /// engine's own schedulers and approval flows).
    pub async fn enqueue_event(&self, input: EventInput, actor: &Actor) -> Result<usize> {
        if actor.role.is_some() {
            return Err(Error::Forbidden(
                "events are raised by the engine itself".into(),
            ));
        }
        self.inner.enqueue_event(&input).await
    }

    /// The notification settings.
    pub fn notify_settings(&self) -> &NotifySettings {
        &self.inner.notify.settings
    }
}
