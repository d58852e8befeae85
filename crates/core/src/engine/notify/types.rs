//! The data of notifications: event kinds, rules, channels, deliveries and
//! attempts. Plain serde data shared by the engine, the store and front ends.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::RunId;

/// What happened. The wire names (`run.failed`, …) are the ones rules,
/// payloads and receivers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    /// A run failed.
    #[serde(rename = "run.failed")]
    RunFailed,
    /// A run hit its time limit.
    #[serde(rename = "run.timed_out")]
    RunTimedOut,
    /// A run succeeded.
    #[serde(rename = "run.succeeded")]
    RunSucceeded,
    /// A run was cancelled.
    #[serde(rename = "run.cancelled")]
    RunCancelled,
    /// A run succeeded after the previous run of the same job did not.
    #[serde(rename = "run.recovered")]
    RunRecovered,
    /// A schedule's due time passed without a run (raised by the scheduler).
    #[serde(rename = "schedule.missed")]
    ScheduleMissed,
    /// A run waits for an approval (raised by approvals).
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// An approval was granted or refused (raised by approvals).
    #[serde(rename = "approval.decided")]
    ApprovalDecided,
}

impl EventKind {
    /// Every kind, in wire-name order of the docs.
    pub const ALL: [EventKind; 8] = [
        EventKind::RunFailed,
        EventKind::RunTimedOut,
        EventKind::RunSucceeded,
        EventKind::RunCancelled,
        EventKind::RunRecovered,
        EventKind::ScheduleMissed,
        EventKind::ApprovalRequested,
        EventKind::ApprovalDecided,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunFailed => "run.failed",
            EventKind::RunTimedOut => "run.timed_out",
            EventKind::RunSucceeded => "run.succeeded",
            EventKind::RunCancelled => "run.cancelled",
            EventKind::RunRecovered => "run.recovered",
            EventKind::ScheduleMissed => "schedule.missed",
            EventKind::ApprovalRequested => "approval.requested",
            EventKind::ApprovalDecided => "approval.decided",
        }
    }

    /// Parses a wire name; the error lists the known ones.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::validation(
                    "on",
                    format!(
                        "unknown event '{s}' (expected one of: {})",
                        Self::ALL.map(EventKind::as_str).join(", ")
                    ),
                )
            })
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which events go to which channels. In a job file (`notify:` list) the
/// rule applies to that job only; global rules (server config) may filter
/// by job name and tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRule {
    /// The events that match.
    pub on: Vec<EventKind>,
    /// Channel names the events go to.
    pub channels: Vec<String>,
    /// Only jobs with one of these names (globs with `*`; empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Only jobs with one of these tags (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Only when the run's outcome differs from the previous run of the job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_on_change: bool,
}

/// Most rules per job or config.
pub const MAX_RULES: usize = 64;
/// Most channels, events, job or tag filters in one rule.
pub const MAX_RULE_ITEMS: usize = 64;

impl NotifyRule {
    /// Checks the bounds and names of a rule.
    pub fn check(&self) -> Result<()> {
        if self.on.is_empty() {
            return Err(Error::validation("on", "name at least one event"));
        }
        if self.channels.is_empty() {
            return Err(Error::validation("channels", "name at least one channel"));
        }
        for (field, n) in [
            ("on", self.on.len()),
            ("channels", self.channels.len()),
            ("jobs", self.jobs.len()),
            ("tags", self.tags.len()),
        ] {
            if n > MAX_RULE_ITEMS {
                return Err(Error::validation(
                    field,
                    format!("at most {MAX_RULE_ITEMS} entries, got {n}"),
                ));
            }
        }
        for (i, c) in self.channels.iter().enumerate() {
            crate::spec::check_name("channel", c)
                .map_err(|e| e.within(&format!("channels[{i}]")))?;
        }
        Ok(())
    }

    /// True if the rule takes an event of `kind` about job `job` with `tags`.
    pub fn matches(&self, kind: EventKind, job: Option<&str>, tags: &[String]) -> bool {
        if !self.on.contains(&kind) {
            return false;
        }
        if !self.jobs.is_empty() {
            let Some(job) = job else { return false };
            if !self.jobs.iter().any(|p| glob(p, job)) {
                return false;
            }
        }
        if !self.tags.is_empty() && !self.tags.iter().any(|t| tags.contains(t)) {
            return false;
        }
        true
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// How an e-mail channel secures its SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or a test server.
    None,
}

/// What a channel is and where it sends. Credentials are secret *names*.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelSpec {
    /// An HTTP(S) POST of the JSON event, signed with HMAC-SHA256.
    Webhook {
        /// Where to POST (http or https).
        url: String,
        /// The secret holding the signing key (no signature without one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_secret: Option<String>,
        /// Extra request headers.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// A MiniJinja template for the body (default: the event as JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<String>,
    },
    /// A Slack-compatible incoming webhook (Slack, Mattermost, …).
    Slack {
        /// The webhook URL, if not secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// The secret holding the webhook URL (Slack's URLs are credentials).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url_secret: Option<String>,
    },
    /// E-mail through an SMTP server.
    Email {
        /// SMTP host.
        host: String,
        /// SMTP port (default: 587 for STARTTLS, 465 for TLS, 25 without).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// How the connection is secured.
        #[serde(default)]
        tls: SmtpTls,
        /// A PEM certificate to trust besides the public roots (a private CA).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
        /// SMTP user name (with `password_secret`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// The secret holding the SMTP password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_secret: Option<String>,
        /// Sender address.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// Subject template (MiniJinja).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// Plain-text body template (MiniJinja); the HTML part shows the same text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
}

/// Most recipients of an e-mail channel.
pub const MAX_RECIPIENTS: usize = 50;
/// Most custom headers of a webhook channel.
pub const MAX_HEADERS: usize = 32;
/// Longest template of a channel.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// Longest URL.
pub const MAX_URL_BYTES: usize = 2048;

impl ChannelSpec {
    /// `webhook`, `slack` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelSpec::Webhook { .. } => "webhook",
            ChannelSpec::Slack { .. } => "slack",
            ChannelSpec::Email { .. } => "email",
        }
    }

    /// The secret names the channel uses.
    pub fn secret_names(&self) -> Vec<&str> {
        match self {
            ChannelSpec::Webhook { signing_secret, .. } => {
                signing_secret.as_deref().into_iter().collect()
            }
            ChannelSpec::Slack { url_secret, .. } => url_secret.as_deref().into_iter().collect(),
            ChannelSpec::Email {
                password_secret, ..
            } => password_secret.as_deref().into_iter().collect(),
        }
    }

    /// Checks bounds, URL schemes and templates.
    pub fn check(&self) -> Result<()> {
        let check_template = |field: &str, t: &Option<String>| -> Result<()> {
            if let Some(t) = t {
                if t.len() > MAX_TEMPLATE_BYTES {
                    return Err(Error::validation(
                        field,
                        format!("at most {MAX_TEMPLATE_BYTES} bytes, got {}", t.len()),
                    ));
                }
                super::render::check_template(t).map_err(|m| Error::validation(field, m))?;
            }
            Ok(())
        };
        for s in self.secret_names() {
            crate::spec::check_name("secret", s)?;
        }
        match self {
            ChannelSpec::Webhook {
                url,
                headers,
                template,
                ..
            } => {
                check_url("url", url)?;
                if headers.len() > MAX_HEADERS {
                    return Err(Error::validation(
                        "headers",
                        format!("at most {MAX_HEADERS} headers, got {}", headers.len()),
                    ));
                }
                for (k, v) in headers {
                    let name_ok = !k.is_empty()
                        && k.len() <= 128
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !name_ok {
                        return Err(Error::validation(
                            format!("headers.{k}"),
                            "a header name is 1-128 letters, digits, '-' or '_'",
                        ));
                    }
                    if k.to_ascii_lowercase().starts_with("x-opsconductor-")
                        || ["content-type", "content-length", "host"]
                            .contains(&k.to_ascii_lowercase().as_str())
                    {
                        return Err(Error::validation(
                            format!("headers.{k}"),
                            "this header is set by OpsConductor",
                        ));
                    }
                    if v.len() > 4096 || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return Err(Error::validation(
                            format!("headers.{k}"),
                            "a header value is at most 4096 bytes without line breaks",
                        ));
                    }
                }
                check_template("template", template)
            }
            ChannelSpec::Slack { url, url_secret } => match (url, url_secret) {
                (Some(u), None) => check_url("url", u),
                (None, Some(_)) => Ok(()),
                _ => Err(Error::validation(
                    "url",
                    "give exactly one of url or url_secret",
                )),
            },
            ChannelSpec::Email {
                host,
                to,
                from,
                subject,
                body,
                username,
                password_secret,
                ca_pem,
                ..
            } => {
                if host.is_empty() || host.len() > 253 || host.contains(['/', ' ', '@']) {
                    return Err(Error::validation("host", "a host name or IP address"));
                }
                if to.is_empty() || to.len() > MAX_RECIPIENTS {
                    return Err(Error::validation(
                        "to",
                        format!("1 to {MAX_RECIPIENTS} recipients, got {}", to.len()),
                    ));
                }
                for (i, a) in to.iter().chain(std::iter::once(from)).enumerate() {
                    if a.len() > 254 || a.parse::<lettre::message::Mailbox>().is_err() {
                        let field = if i == to.len() {
                            "from".to_string()
                        } else {
                            format!("to[{i}]")
                        };
                        return Err(Error::validation(
                            field,
                            format!("'{a}' is not an e-mail address"),
                        ));
                    }
                }
                if username.is_some() != password_secret.is_some() {
                    return Err(Error::validation(
                        "username",
                        "give both username and password_secret, or neither",
                    ));
                }
                if ca_pem.as_ref().is_some_and(|p| p.len() > 64 * 1024) {
                    return Err(Error::validation("ca_pem", "at most 64 KiB"));
                }
                check_template("subject", subject)?;
                check_template("body", body)
            }
        }
    }
}

/// An outgoing URL must be http(s) with a host, and not too long.
pub(crate) fn check_url(field: &str, url: &str) -> Result<()> {
    if url.len() > MAX_URL_BYTES {
        return Err(Error::validation(
            field,
            format!("at most {MAX_URL_BYTES} bytes"),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::validation(field, format!("'{url}' is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::validation(
            field,
            format!(
                "only http and https URLs are allowed, got '{}'",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::validation(field, "the URL needs a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::validation(
            field,
            "no credentials in the URL: use a signing secret or headers",
        ));
    }
    Ok(())
}

/// A stored channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Kind and settings.
    #[serde(flatten)]
    pub spec: ChannelSpec,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Who made it.
    pub updated_by: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A deliverer holds it (under a lease).
    Delivering,
    /// The receiver accepted it.
    Delivered,
    /// Given up: a permanent refusal or the retry time ran out.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivering => "delivering",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Delivering,
            Self::Delivered,
            Self::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A delivery to be written to the outbox: one event for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The delivery's own id.
    pub id: uuid::Uuid,
    /// The event's id (the same for every channel and every retry).
    pub event_id: uuid::Uuid,
    /// The event.
    pub kind: EventKind,
    /// The run it is about, if any.
    pub run_id: Option<RunId>,
    /// The job it is about, if any.
    pub job: Option<String>,
    /// Channel name.
    pub channel: String,
    /// The event as JSON (masked).
    pub payload: String,
    /// When to try first.
    pub next_at: DateTime<Utc>,
    /// When to stop retrying.
    pub give_up_at: DateTime<Utc>,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Its id.
    pub id: uuid::Uuid,
    /// The event's id (receivers de-duplicate on it).
    pub event_id: uuid::Uuid,
    /// The event.
    pub kind: EventKind,
    /// The run it is about.
    pub run_id: Option<RunId>,
    /// The job it is about.
    pub job: Option<String>,
    /// Channel name.
    pub channel: String,
    /// The event as JSON.
    #[serde(skip)]
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts started (claims).
    pub attempts: u32,
    /// Next attempt not before.
    pub next_at: DateTime<Utc>,
    /// Retries end at.
    pub give_up_at: DateTime<Utc>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Accepted.
    Delivered,
    /// Failed; tried again later.
    Retry,
    /// Failed for good.
    Failed,
}

impl AttemptOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Delivered, Self::Retry, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One recorded attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The delivery.
    pub delivery_id: uuid::Uuid,
    /// 1, 2, … (the claim count when it started).
    pub n: u32,
    /// When it started.
    pub at: DateTime<Utc>,
    /// How long it took.
    pub latency_ms: u64,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// HTTP status or SMTP reply code.
    pub code: Option<u16>,
    /// SMTP reply text or the start of the HTTP response body (masked, bounded).
    pub reply: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The deliverer that made it.
    pub worker: String,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    /// Done.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Give up.
    GiveUp,
}

/// Which deliveries to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only about this run.
    pub run: Option<RunId>,
    /// Only to this channel.
    pub channel: Option<String>,
    /// At most this many (0: 50; at most 1000).
    pub limit: usize,
}
