//! Step retries: which policy a step runs under, whether a failed try is
//! tried again, and the wait before the next try (backoff, jitter, cancel
//! and the run's deadline).
//!
//! The rule for steps that are not idempotent: the job's `retry` default
//! applies in full only to steps marked `idempotent`; any other step is
//! retried only when it has a `retry` of its own — except for a failure to
//! connect, which happens before the command starts and so is always safe
//! to try again under the job's default.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::{JobSpec, RetryPolicy, Step};
use crate::rollout::FailureKind;

/// The retry policy of one step.
pub(crate) struct Retries<'a> {
    policy: Option<&'a RetryPolicy>,
    /// Only failures to connect are retried (a non-idempotent step under
    /// the job's default policy).
    connection_only: bool,
}

impl<'a> Retries<'a> {
    /// The policy `step` of `spec` runs under.
    pub(crate) fn of(spec: &'a JobSpec, step: &'a Step) -> Self {
        match (&step.retry, &spec.retry) {
            (Some(own), _) => Self {
                policy: Some(own),
                connection_only: false,
            },
            (None, Some(job)) => Self {
                policy: Some(job),
                connection_only: !step.idempotent,
            },
            (None, None) => Self {
                policy: None,
                connection_only: false,
            },
        }
    }

    /// Most tries in all.
    pub(crate) fn attempts(&self) -> u32 {
        self.policy.map_or(1, |p| p.attempts.max(1))
    }

    /// Whether try `try_no`, which failed as `kind`, is tried again.
    pub(crate) fn again(&self, kind: &FailureKind, try_no: u32) -> bool {
        let Some(p) = self.policy else { return false };
        if try_no >= p.attempts {
            return false;
        }
        if self.connection_only && *kind != FailureKind::Connection {
            return false;
        }
        p.retries(kind)
    }

    /// The wait before try `next`: the policy's delay for it, with jitter
    /// (a random time between half of it and all of it) when asked for.
    pub(crate) fn delay_before(&self, next: u32) -> Duration {
        let Some(p) = self.policy else {
            return Duration::ZERO;
        };
        let d = p.delay_before(next);
        if !p.jitter || d.is_zero() {
            return d;
        }
        let half = d / 2;
        let spread = (d - half).as_nanos() as u64;
        let r = random_u64() % spread.saturating_add(1);
        half + Duration::from_nanos(r)
    }
}

/// 62 random bits from a fresh UUIDv7 (its random part): jitter needs no
/// cryptographic quality, only independence between targets and tries.
fn random_u64() -> u64 {
    (uuid::Uuid::now_v7().as_u128() as u64) & ((1 << 62) - 1)
}

/// How a wait before a retry ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The delay passed: try again.
    Done,
    /// The run was stopped (cancel, lease lost, shutdown) meanwhile.
    Stopped,
    /// The run's deadline comes before the delay ends: do not try again.
    Deadline,
}

/// Waits `delay` unless `stop` fires first or `deadline` comes before it ends.
pub(crate) async fn wait(
    delay: Duration,
    stop: &tokio_util::sync::CancellationToken,
    deadline: Option<Instant>,
) -> Waited {
    let until = super::lease::after(delay);
    if deadline.is_some_and(|d| d <= until) {
        return Waited::Deadline;
    }
    tokio::select! {
        _ = stop.cancelled() => Waited::Stopped,
        _ = tokio::time::sleep_until(until) => Waited::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> JobSpec {
        let text = format!("kind: Job\nname: j\n{yaml}");
        crate::spec::parse_str(&text, "t.yaml", None)
            .unwrap()
            .jobs
            .remove(0)
    }

    #[test]
    fn non_idempotent_steps_retry_only_connections_under_the_job_default() {
        let j = job(
            "retry: {attempts: 3}\nsteps:\n  - exec: a\n  - exec: b\n    idempotent: true\n  - exec: c\n    retry: {attempts: 2, on: [exit_code: [75]]}\n",
        );
        let plain = Retries::of(&j, &j.steps[0]);
        assert!(plain.again(&FailureKind::Connection, 1));
        assert!(!plain.again(&FailureKind::Exit(1), 1));
        let idem = Retries::of(&j, &j.steps[1]);
        assert!(idem.again(&FailureKind::Exit(1), 2));
        assert!(
            !idem.again(&FailureKind::Exit(1), 3),
            "attempts include the first try"
        );
        let own = Retries::of(&j, &j.steps[2]);
        assert!(own.again(&FailureKind::Exit(75), 1));
        assert!(!own.again(&FailureKind::Exit(1), 1));
        assert!(!own.again(&FailureKind::Timeout, 1));
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        let j = job(
            "steps:\n  - exec: a\n    retry: {attempts: 9, delay: 1s, backoff: fixed, jitter: true}\n",
        );
        let r = Retries::of(&j, &j.steps[0]);
        let mut seen = std::collections::HashSet::new();
        for next in 2..200 {
            let d = r.delay_before(next);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
            seen.insert(d);
        }
        assert!(seen.len() > 100, "jitter varies");
    }
}
