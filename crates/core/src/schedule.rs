//! Schedules: a job run on a cron expression in an IANA time zone, with a
//! start/end window and the misfire and overlap policies. Plain data and
//! pure time arithmetic; the scheduler loop lives in `engine::scheduler`.
//!
//! # Time rules
//!
//! Cron expressions are parsed and evaluated by the `croner` crate (5 fields,
//! or 6 with seconds first; `@hourly`, `@daily`, `@weekly`, `@monthly`,
//! `@yearly`/`@annually`), in the schedule's zone (chrono-tz). Daylight saving
//! follows croner's documented rule:
//! - a *fixed-time* expression (`30 2 * * *`) whose local time falls in a
//!   skipped hour (spring forward) fires once, at the first instant after
//!   the gap; in a repeated hour (fall back) it fires once, at the first of
//!   the two instants;
//! - an *interval* expression (`*/15 * * * *`, `0 * * * *` with a wildcard
//!   hour) follows real time: it fires in both passes of a repeated hour
//!   and not at all in a skipped one.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most missed fire times a `run_all` misfire policy catches up (the newest).
pub const MAX_CATCH_UP: usize = 10;

/// Most fire times an `overlap: queue` schedule keeps waiting; later ones are
/// skipped (and audited).
pub const MAX_PENDING: usize = 10;

/// A fire time later than this when the scheduler handles it counts as
/// missed (the misfire policy decides), like Quartz's misfire threshold.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// Longest cron expression accepted.
pub const MAX_CRON_LEN: usize = 256;

/// What happens to fire times missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Drop them (audited); continue with the next fire time.
    #[default]
    Skip,
    /// One catch-up run, for the newest missed fire time.
    RunOnce,
    /// A run for each missed fire time, the newest [`MAX_CATCH_UP`] at most.
    RunAll,
}

impl MisfirePolicy {
    /// The name used in files and output.
    pub fn as_str(&self) -> &'static str {
        match self {
            MisfirePolicy::Skip => "skip",
            MisfirePolicy::RunOnce => "run_once",
            MisfirePolicy::RunAll => "run_all",
        }
    }
}

/// What happens when a fire time comes while the schedule's previous run is
/// still queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Start another run anyway.
    Allow,
    /// Do not run this fire time (audited).
    #[default]
    Skip,
    /// Keep the fire time waiting; it runs when the previous run has ended
    /// (at most [`MAX_PENDING`] wait).
    Queue,
    /// Cancel the previous run and start the new one.
    CancelPrevious,
}

impl OverlapPolicy {
    /// The name used in files and output.
    pub fn as_str(&self) -> &'static str {
        match self {
            OverlapPolicy::Allow => "allow",
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::Queue => "queue",
            OverlapPolicy::CancelPrevious => "cancel_previous",
        }
    }
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// A schedule as written (`kind: Schedule` documents, the REST API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name.
    pub name: String,
    /// The job to run.
    pub job: String,
    /// A job version to pin (default: the latest at each fire time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Cron expression: 5 fields, 6 with seconds first, or `@daily` etc.
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Parameters, validated against the job's schema.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    /// Overrides the job's target selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// A disabled schedule never fires (set in the file; `pause` is separate).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// No fire time before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// No fire time after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Missed fire times.
    #[serde(default)]
    pub misfire: MisfirePolicy,
    /// A fire time while the previous run goes on.
    #[serde(default)]
    pub overlap: OverlapPolicy,
}

impl ScheduleSpec {
    /// A schedule of `job` on `cron`, UTC, with the default policies.
    pub fn new(name: impl Into<String>, job: impl Into<String>, cron: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            job: job.into(),
            version: None,
            cron: cron.into(),
            timezone: utc(),
            params: serde_json::Value::Null,
            targets: None,
            enabled: true,
            start: None,
            end: None,
            misfire: MisfirePolicy::Skip,
            overlap: OverlapPolicy::Skip,
        }
    }

    /// The parsed expression and zone.
    pub fn timing(&self) -> Result<Timing> {
        Timing::parse(&self.cron, &self.timezone)
    }

    /// Checks what can be checked without the store: name, expression,
    /// zone, window, selector syntax. Errors name the field.
    pub fn check(&self) -> Result<Timing> {
        crate::spec::check_name("schedule", &self.name)?;
        crate::spec::check_name("job", &self.job).map_err(|e| match e {
            Error::Validation { message, .. } => Error::validation("job", message),
            other => other,
        })?;
        let timing = self.timing()?;
        if let (Some(s), Some(e)) = (self.start, self.end)
            && e <= s
        {
            return Err(Error::validation(
                "end",
                format!("{e} is not after start {s}"),
            ));
        }
        if let Some(t) = &self.targets {
            crate::selector::check_syntax(t).map_err(|e| e.within("targets"))?;
        }
        if !(self.params.is_null() || self.params.is_object()) {
            return Err(Error::validation(
                "params",
                "must be a mapping of parameter names to values",
            ));
        }
        Ok(timing)
    }
}

/// Where a schedule was written: the file and the position of each field's
/// value, so errors found later (at apply, against the store) still point
/// at `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    /// The file (or `<stdin>`, `<request>`).
    pub file: String,
    /// Where the document starts (line, column; from 1).
    pub document: (usize, usize),
    /// Where each field's value starts, by dotted path (`params.version`).
    pub fields: std::collections::BTreeMap<String, (usize, usize)>,
}

impl Source {
    /// `file:line:col` of a field (its nearest written parent, else the document).
    pub fn at(&self, field: &str) -> String {
        let mut path = field;
        loop {
            if let Some((l, c)) = self.fields.get(path) {
                return format!("{}:{l}:{c}", self.file);
            }
            match path.rfind('.') {
                Some(i) => path = &path[..i],
                None => break,
            }
        }
        format!("{}:{}:{}", self.file, self.document.0, self.document.1)
    }

    /// An error at `field`: `file:line:col: schedule 'NAME'.field: message`.
    pub fn error(&self, schedule: &str, field: &str, message: impl std::fmt::Display) -> Error {
        Error::validation(
            format!("{}: schedule '{schedule}'.{field}", self.at(field)),
            message.to_string(),
        )
    }
}

/// A schedule in an apply batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDef {
    /// What was written.
    pub spec: ScheduleSpec,
    /// Where (for errors), when it came from a file.
    pub source: Option<Source>,
    /// Set by the engine before storing: the first fire time from now.
    pub next_fire: Option<DateTime<Utc>>,
    /// Set by the engine: the role of who applies it (scheduled runs run as them).
    pub owner_role: Option<crate::auth::Role>,
}

impl ScheduleDef {
    /// A definition not read from a file.
    pub fn new(spec: ScheduleSpec) -> Self {
        Self {
            spec,
            source: None,
            next_fire: None,
            owner_role: None,
        }
    }

    /// An error about `field`, placed in the file when there is one.
    pub fn error(&self, field: &str, message: impl std::fmt::Display) -> Error {
        match &self.source {
            Some(s) => s.error(&self.spec.name, field, message),
            None => Error::validation(
                format!("schedule '{}'.{field}", self.spec.name),
                message.to_string(),
            ),
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// What was written.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// Paused by someone (`schedules pause`); kept across re-applies of the file.
    pub paused: bool,
    /// The next fire time not yet handled; `None` once the window has ended.
    pub next_fire: Option<DateTime<Utc>>,
    /// Bumped on every change; the scheduler's compare-and-set token.
    pub generation: u64,
    /// Who created or last changed it: scheduled runs run as them.
    pub owner: String,
    /// The owner's role then (`None`: a trusted actor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_role: Option<crate::auth::Role>,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
}

impl Schedule {
    /// True when the scheduler fires it (enabled, not paused, not ended).
    pub fn is_active(&self) -> bool {
        self.spec.enabled && !self.paused && self.next_fire.is_some()
    }
}

/// The run of a schedule: which one and for which nominal fire time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFire {
    /// Schedule name.
    pub name: String,
    /// The nominal fire time; `None` for `run-now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_time: Option<DateTime<Utc>>,
}

/// What became of one fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// A run was queued.
    Queued,
    /// Waiting for the previous run to end (`overlap: queue`).
    Pending,
    /// Not run: the previous run was still going (`overlap: skip`, or the
    /// queue was full).
    Skipped,
    /// The run could not be made (job gone or deprecated, bad parameters, …).
    Failed,
}

impl FireOutcome {
    /// The name stored and shown.
    pub fn as_str(&self) -> &'static str {
        match self {
            FireOutcome::Queued => "queued",
            FireOutcome::Pending => "pending",
            FireOutcome::Skipped => "skipped",
            FireOutcome::Failed => "failed",
        }
    }
}

impl FromStr for FireOutcome {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [
            FireOutcome::Queued,
            FireOutcome::Pending,
            FireOutcome::Skipped,
            FireOutcome::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| Error::validation("outcome", format!("unknown fire outcome '{s}'")))
    }
}

/// The record of one fire time: unique per (schedule, fire time), written in
/// the same transaction as the run it queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FireRecord {
    /// Schedule name.
    pub schedule: String,
    /// The nominal fire time.
    pub fire_time: DateTime<Utc>,
    /// What became of it.
    pub outcome: FireOutcome,
    /// The run it queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<crate::model::RunId>,
    /// Why it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it was decided (scheduler clock).
    pub decided_at: DateTime<Utc>,
    /// The process that decided it.
    pub decided_by: String,
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

/// The cron fields by position, for error messages.
const FIELDS_5: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
const FIELDS_6: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day of month",
    "month",
    "day of week",
];

fn parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
}

/// A cron error: which field (index and name, when one field is to blame)
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    /// The field at fault: (index from 0, name, byte offset in the text).
    pub field: Option<(usize, &'static str, usize)>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CronError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field {
            Some((i, name, _)) => write!(f, "field {} ({name}): {}", i + 1, self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses a cron expression (5 or 6 fields, or an `@` nickname). On error,
/// the field to blame is found by letting croner parse each field alone
/// (every other field `*`), so the message points at it.
pub fn parse_cron(text: &str) -> std::result::Result<croner::Cron, CronError> {
    if text.len() > MAX_CRON_LEN {
        return Err(CronError {
            field: None,
            message: format!("longer than {MAX_CRON_LEN} characters"),
        });
    }
    let err = match parser().parse(text) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let fields: Vec<(usize, &str)> = text
        .split_ascii_whitespace()
        .map(|f| (f.as_ptr() as usize - text.as_ptr() as usize, f))
        .collect();
    let names: &[&'static str] = match fields.len() {
        5 => &FIELDS_5,
        6 => &FIELDS_6,
        n if !text.trim_start().starts_with('@') => {
            return Err(CronError {
                field: None,
                message: format!(
                    "{n} fields; expected 5 (minute hour day-of-month month day-of-week), \
                     6 (seconds first) or a nickname such as @daily"
                ),
            });
        }
        _ => &[],
    };
    for (i, (offset, f)) in fields.iter().enumerate() {
        let Some(name) = names.get(i) else { break };
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *f } else { "*" })
            .collect();
        if let Err(e) = parser().parse(&alone.join(" ")) {
            return Err(CronError {
                field: Some((i, name, *offset)),
                message: format!("'{f}': {e}"),
            });
        }
    }
    Err(CronError {
        field: None,
        message: err.to_string(),
    })
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_timezone(name: &str) -> std::result::Result<chrono_tz::Tz, String> {
    if name.len() > 64 {
        return Err("a time zone name is at most 64 characters".into());
    }
    chrono_tz::Tz::from_str(name).map_err(|_| {
        format!("unknown time zone '{name}' (expected an IANA name such as UTC, Europe/Berlin or America/New_York)")
    })
}

impl Timing {
    /// Parses an expression and a zone; errors name `cron` or `timezone`.
    pub fn parse(cron: &str, timezone: &str) -> Result<Self> {
        let cron = parse_cron(cron).map_err(|e| Error::validation("cron", e.to_string()))?;
        let tz = parse_timezone(timezone).map_err(|m| Error::validation("timezone", m))?;
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `t` (`None`: there is none).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next(t, false)
    }

    /// The first fire time at or after `t`.
    pub fn next_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next(t, true)
    }

    fn next(&self, t: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, inclusive)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The zone.
    pub fn zone(&self) -> chrono_tz::Tz {
        self.tz
    }

    /// A fire time shown in the schedule's zone (RFC 3339 with offset).
    pub fn local(&self, t: DateTime<Utc>) -> String {
        self.tz
            .from_utc_datetime(&t.naive_utc())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    }
}

/// The fire times of `spec` strictly after `after`, within its window, at
/// most `count`.
pub fn upcoming(
    spec: &ScheduleSpec,
    timing: &Timing,
    after: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(count.min(1000));
    let mut t = first_fire(spec, timing, after);
    while let Some(f) = t {
        if out.len() >= count {
            break;
        }
        out.push(f);
        t = next_in_window(spec, timing, f);
    }
    out
}

/// The first fire time strictly after `after` and not before `start`.
pub fn first_fire(
    spec: &ScheduleSpec,
    timing: &Timing,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let f = match spec.start {
        Some(s) if s > after => timing.next_from(s),
        _ => timing.next_after(after),
    }?;
    within_end(spec, f)
}

/// The fire time after `f`, or `None` past the window's end.
pub fn next_in_window(
    spec: &ScheduleSpec,
    timing: &Timing,
    f: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    within_end(spec, timing.next_after(f)?)
}

fn within_end(spec: &ScheduleSpec, f: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match spec.end {
        Some(e) if f > e => None,
        _ => Some(f),
    }
}

/// The fire times due at `now` from the cursor `from`, split by the grace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DueTimes {
    /// Due within the grace: fired normally.
    pub on_time: Vec<DateTime<Utc>>,
    /// Missed (older than the grace), oldest first; at most the newest
    /// [`MAX_CATCH_UP`] are kept here.
    pub missed: Vec<DateTime<Utc>>,
    /// How many were missed in all (counted up to [`MAX_MISSED_COUNT`]).
    pub missed_count: u64,
    /// The first missed fire time.
    pub first_missed: Option<DateTime<Utc>>,
    /// The new cursor: the first fire time after `now` (`None`: ended).
    pub next: Option<DateTime<Utc>>,
}

/// Counting missed fire times stops here (a per-second schedule down for a
/// month is "more than 100,000"); the cursor still jumps past `now`.
pub const MAX_MISSED_COUNT: u64 = 100_000;

/// Splits the fire times in `[from, now]` into on-time and missed ones.
pub fn due_times(
    spec: &ScheduleSpec,
    timing: &Timing,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> DueTimes {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let late_before = now
        .checked_sub_signed(grace)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut out = DueTimes::default();
    let mut t = Some(from);
    while let Some(f) = t {
        if f > now {
            break;
        }
        if f < late_before {
            if out.missed_count >= MAX_MISSED_COUNT {
                // Jump: count no further.
                t = match first_fire(spec, timing, late_before) {
                    Some(n) if n < late_before => next_in_window(spec, timing, n),
                    other => other,
                };
                continue;
            }
            out.missed_count += 1;
            out.first_missed.get_or_insert(f);
            out.missed.push(f);
            if out.missed.len() > MAX_CATCH_UP {
                out.missed.remove(0);
            }
        } else {
            out.on_time.push(f);
        }
        t = next_in_window(spec, timing, f);
    }
    out.next = t;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_six_fields_and_nicknames() {
        for ok in [
            "0 3 * * *",
            "*/5 * * * * *",
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
        ] {
            parse_cron(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert_eq!(e.field.map(|f| (f.0, f.1)), Some((1, "hour")), "{e}");
        let e = parse_cron("0 0 3 * * * 2030").unwrap_err();
        assert!(e.to_string().contains("7 fields"), "{e}");
        let e = parse_cron("* * * 13 *").unwrap_err();
        assert_eq!(e.field.map(|f| f.1), Some("month"), "{e}");
        assert!(parse_timezone("Mars/Olympus").is_err());
    }

    #[test]
    fn windows_bound_fire_times() {
        let mut s = ScheduleSpec::new("s", "j", "0 * * * *");
        s.start = Some(at("2026-01-01T10:30:00Z"));
        s.end = Some(at("2026-01-01T12:00:00Z"));
        let t = s.timing().unwrap();
        let got = upcoming(&s, &t, at("2025-12-01T00:00:00Z"), 10);
        assert_eq!(
            got,
            vec![at("2026-01-01T11:00:00Z"), at("2026-01-01T12:00:00Z")]
        );
    }
}
