//! The scheduler's clock, injected so tests never wait for real minutes.
//!
//! Fire times are judged by the clock of the node that runs the scheduler
//! ([`SystemClock`] by default). Clock skew between nodes never makes a fire
//! time run twice or get lost — the database decides who commits it — but
//! a node whose clock runs ahead fires up to its skew early, since it is the
//! first to see a fire time due. Keep nodes on NTP.
//!
//! [`ManualClock`] is for tests in one process; [`ScaledClock`] (test only,
//! `OPSC_TEST_CLOCK`) lets several processes share a fast clock.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Where the scheduler reads the time and how it waits for it.
#[async_trait]
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Waits until the clock reads `t` or `max` of real time passed,
    /// whichever comes first.
    async fn sleep_until(&self, t: DateTime<Utc>, max: Duration);
}

/// The node's own clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, t: DateTime<Utc>, max: Duration) {
        let left = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(left.min(max)).await;
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: tokio::sync::Notify,
}

impl ManualClock {
    /// A clock reading `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(now),
            moved: tokio::sync::Notify::new(),
        }
    }

    /// Sets the time (wakes sleepers).
    pub fn set(&self, t: DateTime<Utc>) {
        match self.now.lock() {
            Ok(mut n) => *n = t,
            Err(p) => *p.into_inner() = t,
        }
        self.moved.notify_waiters();
    }

    /// Moves the time forward.
    pub fn advance(&self, d: Duration) {
        let t = self.now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        self.set(t);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        match self.now.lock() {
            Ok(n) => *n,
            Err(p) => *p.into_inner(),
        }
    }

    async fn sleep_until(&self, t: DateTime<Utc>, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let moved = self.moved.notified();
            if self.now() >= t {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return;
            }
        }
    }
}

/// TEST ONLY: a clock that runs `scale` times faster than real time from
/// `origin` (`now = origin + (real now − origin) × scale`), so processes
/// sharing the same origin and scale agree on the time. Selected by the
/// hidden `OPSC_TEST_CLOCK=ORIGIN_UNIX_SECONDS:SCALE` environment variable
/// (see [`from_test_env`]); never for production.
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    origin: DateTime<Utc>,
    scale: u32,
}

impl ScaledClock {
    /// A clock `scale` times faster than real time from `origin`.
    pub fn new(origin: DateTime<Utc>, scale: u32) -> Self {
        Self {
            origin,
            scale: scale.max(1),
        }
    }
}

#[async_trait]
impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let real = Utc::now() - self.origin;
        self.origin + real * i32::try_from(self.scale).unwrap_or(1)
    }

    async fn sleep_until(&self, t: DateTime<Utc>, max: Duration) {
        let left = (t - self.now()).to_std().unwrap_or(Duration::ZERO) / self.scale;
        tokio::time::sleep(left.min(max)).await;
    }
}

/// TEST ONLY: the [`ScaledClock`] named by `OPSC_TEST_CLOCK`
/// (`ORIGIN_UNIX_SECONDS:SCALE`), if set and well formed.
pub fn from_test_env() -> Option<ScaledClock> {
    let v = std::env::var("OPSC_TEST_CLOCK").ok()?;
    let (origin, scale) = v.split_once(':')?;
    let origin = DateTime::from_timestamp(origin.trim().parse().ok()?, 0)?;
    let scale: u32 = scale.trim().parse().ok()?;
    (1..=10_000)
        .contains(&scale)
        .then(|| ScaledClock::new(origin, scale))
}
