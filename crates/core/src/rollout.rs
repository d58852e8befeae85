//! Rollout settings of a job: the strategy (`parallel` or `rolling` in
//! batches), the failure threshold that stops a rollout, and step retries.
//! Plain data with serde, shared by job files and stored specs; every value
//! checks its own range while it is read, so a job file's error names the
//! value's own `file:line:col`. The engine turns them into a plan
//! (`engine/worker/plan.rs`) and into retry delays (`engine/worker/retry.rs`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// Largest batch size given as a count (more targets than any run holds).
pub const MAX_BATCH_COUNT: u64 = 100_000;

/// Most entries of a `batch:` list.
pub const MAX_BATCH_LIST: usize = 100;

/// Largest `max_failures` given as a count.
pub const MAX_FAILURES_COUNT: u64 = 100_000;

/// Most tries of one step on one target (`retry.attempts`).
pub const MAX_ATTEMPTS: u32 = 100;

/// Longest retry delay, `max_delay` or pause between batches (1 hour).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Most exit codes listed in one `retry.on` entry.
pub const MAX_RETRY_CODES: usize = 256;

/// How a job's steps are spread over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each step runs on every target (bounded by `concurrency`) before the
    /// next step starts (step-major). The default.
    #[default]
    Parallel,
    /// All steps run on one batch of targets before the next batch starts
    /// (target-major); a failure stops the rollout (see `max_failures`).
    Rolling,
}

impl Strategy {
    /// The name used in files and output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Parallel => "parallel",
            Strategy::Rolling => "rolling",
        }
    }

    /// True for the default, so stored specs and exports leave it out.
    pub fn is_parallel(&self) -> bool {
        *self == Strategy::Parallel
    }
}

/// A number of targets: a count or a percentage of the run's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many targets.
    Count(u64),
    /// This percentage (0–100) of the run's targets.
    Percent(u8),
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u64(*n),
            Amount::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

/// Reads an amount (`3`, `"3"`, `"25%"`) between `min` and `max_count`
/// (percentages between `min` and 100). Errors are raised while the value
/// is read, so a job file's error points at it.
struct AmountVisitor {
    what: &'static str,
    min: u64,
    max_count: u64,
}

impl AmountVisitor {
    fn count<E: de::Error>(&self, n: u64) -> Result<Amount, E> {
        if n < self.min || n > self.max_count {
            return Err(E::custom(format!(
                "{} {n} is out of range ({}-{} targets, or a percentage like 25%)",
                self.what, self.min, self.max_count
            )));
        }
        Ok(Amount::Count(n))
    }
}

impl Visitor<'_> for AmountVisitor {
    type Value = Amount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} as a number of targets ({}-{}) or a percentage like 25%",
            self.what, self.min, self.max_count
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
        self.count(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
        match u64::try_from(v) {
            Ok(v) => self.count(v),
            Err(_) => Err(E::custom(format!("{} cannot be negative ({v})", self.what))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
        Err(E::custom(format!(
            "{} must be a whole number of targets or a percentage like 25% (got {v})",
            self.what
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
        let t = v.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p = p.trim();
            let n: u64 = if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().unwrap_or(u64::MAX)
            } else {
                return Err(E::custom(format!(
                    "{} '{v}' is not a percentage like 25%",
                    self.what
                )));
            };
            if n < self.min || n > 100 {
                return Err(E::custom(format!(
                    "{} {v} is out of range ({}%-100%)",
                    self.what, self.min
                )));
            }
            return Ok(Amount::Percent(n as u8));
        }
        if t.starts_with('-') {
            return Err(E::custom(format!("{} cannot be negative ({v})", self.what)));
        }
        match t.parse::<u64>() {
            Ok(n) => self.count(n),
            Err(_) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                self.count(u64::MAX)
            }
            Err(_) => Err(E::custom(format!(
                "{} '{v}' is not a number of targets or a percentage like 25%",
                self.what
            ))),
        }
    }
}

/// The size of one rolling batch (at least one target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BatchSize(pub Amount);

impl BatchSize {
    /// How many of `total` targets this batch takes (at least 1; a
    /// percentage rounds up, so `25%` of 3 targets is 1).
    pub fn of(&self, total: usize) -> usize {
        let n = match self.0 {
            Amount::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Amount::Percent(p) => (total.saturating_mul(p as usize)).div_ceil(100),
        };
        n.max(1)
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AmountVisitor {
            what: "batch size",
            min: 1,
            max_count: MAX_BATCH_COUNT,
        })
        .map(BatchSize)
    }
}

/// Batch sizes of a rolling run: one size, or a list whose last size
/// repeats (`[1, 5, 25%]`: a canary, then five, then a quarter at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches(pub Vec<BatchSize>);

impl Serialize for Batches {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => {
                let mut seq = s.serialize_seq(Some(many.len()))?;
                for b in many {
                    seq.serialize_element(b)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Batches {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Batches;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a batch size (3 or 25%) or a list of them ([1, 5, 25%])")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batches, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<BatchSize>()? {
                    if out.len() == MAX_BATCH_LIST {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_BATCH_LIST} batch sizes (the last size repeats; list only the first ones)"
                        )));
                    }
                    out.push(b);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("an empty list of batch sizes"));
                }
                Ok(Batches(out))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Batches, E> {
                BatchSize::deserialize(de::value::U64Deserializer::new(v)).map(|b| Batches(vec![b]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Batches, E> {
                BatchSize::deserialize(de::value::I64Deserializer::new(v)).map(|b| Batches(vec![b]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Batches, E> {
                BatchSize::deserialize(de::value::F64Deserializer::new(v)).map(|b| Batches(vec![b]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Batches, E> {
                BatchSize::deserialize(de::value::StrDeserializer::new(v)).map(|b| Batches(vec![b]))
            }
        }
        d.deserialize_any(V)
    }
}

/// How many failed targets a run tolerates before it stops starting new
/// ones: `0` stops at the first failure, `10%` tolerates a tenth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Threshold(pub Amount);

impl Threshold {
    /// Stops at the first failure (the rolling default).
    pub const FIRST: Threshold = Threshold(Amount::Count(0));

    /// True when `failed` of `total` targets is more than tolerated.
    pub fn exceeded(&self, failed: usize, total: usize) -> bool {
        match self.0 {
            Amount::Count(n) => failed as u64 > n,
            Amount::Percent(p) => (failed as u128) * 100 > (p as u128) * (total as u128),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AmountVisitor {
            what: "max_failures",
            min: 0,
            max_count: MAX_FAILURES_COUNT,
        })
        .map(Threshold)
    }
}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The delay doubles after each try, up to `max_delay`.
    #[default]
    Exponential,
    /// Every delay is `delay`.
    Fixed,
}

/// Which failures a retry policy retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOn {
    /// A non-zero exit code: any (`exit_code`), or only those listed
    /// (`exit_code: [1, 75]`).
    ExitCode(Option<Vec<i32>>),
    /// The step's time limit was reached.
    Timeout,
    /// The target could not be reached.
    Connection,
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            RetryOn::ExitCode(None) => s.serialize_str("exit_code"),
            RetryOn::ExitCode(Some(codes)) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("exit_code", codes)?;
                m.end()
            }
            RetryOn::Timeout => s.serialize_str("timeout"),
            RetryOn::Connection => s.serialize_str("connection"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "exit_code, {exit_code: [1, 75]}, timeout or connection";
        impl<'de> Visitor<'de> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "exit_code" => Ok(RetryOn::ExitCode(None)),
                    "timeout" => Ok(RetryOn::Timeout),
                    "connection" => Ok(RetryOn::Connection),
                    _ => Err(E::custom(format!(
                        "unknown retry condition '{v}' (expected {EXPECTED})"
                    ))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<RetryOn, A::Error> {
                let Some(key) = m.next_key::<String>()? else {
                    return Err(de::Error::custom(format!(
                        "an empty condition (expected {EXPECTED})"
                    )));
                };
                if key != "exit_code" {
                    return Err(de::Error::custom(format!(
                        "unknown retry condition '{key}' (expected {EXPECTED})"
                    )));
                }
                let codes: Vec<i32> = m.next_value()?;
                if codes.is_empty() || codes.len() > MAX_RETRY_CODES {
                    return Err(de::Error::custom(format!(
                        "list 1 to {MAX_RETRY_CODES} exit codes"
                    )));
                }
                if codes.contains(&0) {
                    return Err(de::Error::custom(
                        "exit code 0 is success; it is never retried",
                    ));
                }
                if m.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("one condition per list entry"));
                }
                Ok(RetryOn::ExitCode(Some(codes)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Retries of one step on one target: each try is recorded with its own
/// output; delays honour cancellation and the run's time limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most tries in all, the first included (2 to [`MAX_ATTEMPTS`]; 1 means
    /// no retry).
    #[serde(deserialize_with = "de_attempts")]
    pub attempts: u32,
    /// Wait before the second try.
    #[serde(
        default = "default_delay",
        deserialize_with = "de_delay",
        serialize_with = "ser_delay"
    )]
    pub delay: Duration,
    /// How the delay grows.
    #[serde(default)]
    pub backoff: Backoff,
    /// Longest delay (exponential backoff stops growing there).
    #[serde(
        default,
        deserialize_with = "de_opt_delay",
        serialize_with = "ser_opt_delay",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delay: Option<Duration>,
    /// Wait a random time between half the delay and the whole delay, so
    /// many targets retrying together do not hit a service at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jitter: bool,
    /// What is retried; empty means every failure (a non-zero exit code,
    /// a time limit, an unreachable target).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
}

fn default_delay() -> Duration {
    Duration::from_secs(1)
}

fn de_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a number of tries from 1 to {MAX_ATTEMPTS}")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            if !(1..=i64::from(MAX_ATTEMPTS)).contains(&v) {
                return Err(E::custom(format!(
                    "attempts {v} is out of range (1-{MAX_ATTEMPTS}, the first try included)"
                )));
            }
            Ok(v as u32)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
    }
    d.deserialize_any(V)
}

/// Reads a delay (`2s`, `500ms`, a number of seconds) of at most
/// [`MAX_DELAY`], raising errors while the value is read (so they carry
/// its position).
struct DelayVisitor;

impl Visitor<'_> for DelayVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 500ms, 2s or 1m (at most 1h)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        check_delay(Duration::from_secs(v)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom("a duration cannot be negative")),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        crate::duration::parse(v)
            .and_then(check_delay)
            .map_err(E::custom)
    }
}

/// An optional delay through [`DelayVisitor`].
struct OptDelayVisitor;

impl<'de> Visitor<'de> for OptDelayVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 500ms, 2s or 1m (at most 1h)")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(DelayVisitor).map(Some)
    }
}

fn de_delay<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DelayVisitor)
}

fn de_opt_delay<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_option(OptDelayVisitor)
}

fn ser_delay<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

fn ser_opt_delay<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    crate::model::opt_duration::serialize(d, s)
}

/// A delay or pause: at most [`MAX_DELAY`].
pub fn check_delay(d: Duration) -> Result<Duration, String> {
    if d > MAX_DELAY {
        return Err(format!(
            "{} is longer than the maximum of {}",
            crate::duration::format(d),
            crate::duration::format(MAX_DELAY)
        ));
    }
    Ok(d)
}

/// Serde for `pause:`: a delay of at most [`MAX_DELAY`].
pub mod opt_pause {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// As a human string.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        crate::model::opt_duration::serialize(d, s)
    }

    /// A duration of at most an hour.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::de_opt_delay(d)
    }
}

impl RetryPolicy {
    /// Whether a failure of this kind is retried under this policy.
    pub fn retries(&self, failure: &FailureKind) -> bool {
        if self.on.is_empty() {
            return !matches!(failure, FailureKind::Other);
        }
        self.on.iter().any(|on| match (on, failure) {
            (RetryOn::ExitCode(None), FailureKind::Exit(_)) => true,
            (RetryOn::ExitCode(Some(codes)), FailureKind::Exit(c)) => codes.contains(c),
            (RetryOn::Timeout, FailureKind::Timeout) => true,
            (RetryOn::Connection, FailureKind::Connection) => true,
            _ => false,
        })
    }

    /// The wait before try `next` (2 for the first retry), before jitter.
    pub fn delay_before(&self, next: u32) -> Duration {
        let cap = self.max_delay.unwrap_or(MAX_DELAY);
        let d = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let exp = next.saturating_sub(2).min(30);
                self.delay.saturating_mul(1u32 << exp)
            }
        };
        d.min(cap)
    }

    /// Checks what single values cannot: `max_delay` not below `delay`.
    pub fn check(&self) -> Result<(), String> {
        if let Some(m) = self.max_delay
            && m < self.delay
        {
            return Err(format!(
                "max_delay ({}) is shorter than delay ({})",
                crate::duration::format(m),
                crate::duration::format(self.delay)
            ));
        }
        Ok(())
    }
}

/// How a try failed, for deciding whether to retry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The command ran and exited with this non-zero code.
    Exit(i32),
    /// The step's time limit was reached.
    Timeout,
    /// The target could not be reached before the command started.
    Connection,
    /// Anything else (killed by a signal, could not start, …): not retried.
    Other,
}

/// One earlier try of a step on a target, kept with its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TryRecord {
    /// The try's number, from 1.
    pub try_no: u32,
    /// How it ended.
    pub status: crate::model::StepStatus,
    /// Its exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed (masked like output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it ended.
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(v: &str) -> Result<Batches, String> {
        serde_yaml_ng::from_str::<Batches>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn amounts_are_bounded() {
        assert_eq!(batch("3").unwrap().0, vec![BatchSize(Amount::Count(3))]);
        assert_eq!(
            batch("25%").unwrap().0,
            vec![BatchSize(Amount::Percent(25))]
        );
        assert_eq!(batch("[1, 5, 25%]").unwrap().0.len(), 3);
        for bad in [
            "0",
            "-1",
            "101%",
            "0%",
            "1.5",
            "abc",
            "99999999999999999999",
            "[]",
            "-5%",
            "1000001",
        ] {
            assert!(batch(bad).is_err(), "{bad} accepted");
        }
        let t: Threshold = serde_yaml_ng::from_str("0").unwrap();
        assert!(t.exceeded(1, 10) && !t.exceeded(0, 10));
        let t: Threshold = serde_yaml_ng::from_str("10%").unwrap();
        assert!(!t.exceeded(1, 10) && t.exceeded(2, 10));
        assert!(serde_yaml_ng::from_str::<Threshold>("-1").is_err());
        assert!(serde_yaml_ng::from_str::<Threshold>("150%").is_err());
    }

    #[test]
    fn percentages_round_up_and_never_reach_zero() {
        assert_eq!(BatchSize(Amount::Percent(25)).of(3), 1);
        assert_eq!(BatchSize(Amount::Percent(25)).of(10), 3);
        assert_eq!(BatchSize(Amount::Percent(100)).of(7), 7);
        assert_eq!(BatchSize(Amount::Count(5)).of(2), 5);
    }

    #[test]
    fn retry_policies_parse_and_grow() {
        let p: RetryPolicy = serde_yaml_ng::from_str(
            "{attempts: 4, delay: 1s, max_delay: 3s, on: [exit_code: [1, 75], timeout, connection]}",
        )
        .unwrap();
        assert_eq!(p.delay_before(2), Duration::from_secs(1));
        assert_eq!(p.delay_before(3), Duration::from_secs(2));
        assert_eq!(p.delay_before(4), Duration::from_secs(3));
        assert!(p.retries(&FailureKind::Exit(75)) && !p.retries(&FailureKind::Exit(2)));
        assert!(p.retries(&FailureKind::Connection));
        let back: RetryPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        for bad in [
            "{attempts: 0}",
            "{attempts: 101}",
            "{attempts: -1}",
            "{attempts: 3, delay: 2h}",
            "{attempts: 3, delay: -1}",
            "{attempts: 3, max_delay: 99999999999999d}",
            "{attempts: 3, on: [sometimes]}",
            "{attempts: 3, on: [exit_code: [0]]}",
            "{attempts: 3, on: [exit_code: []]}",
            "{attempts: 3, tries: 2}",
            "{delay: 1s}",
        ] {
            assert!(
                serde_yaml_ng::from_str::<RetryPolicy>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }
}
