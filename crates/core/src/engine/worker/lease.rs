//! Holding a run: its stop switch, the lease clock that fences a worker
//! whose heartbeats stopped getting through, and the two watchers that run
//! beside the steps — the heartbeat and the cancel watcher — on their own
//! tasks and timers, so neither log traffic nor step count can delay them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::super::Inner;
use crate::bus::Event;
use crate::model::{Run, RunId};

/// Why a run's steps were stopped. The first reason given wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Someone asked to cancel the run.
    Cancel = 1,
    /// This worker may no longer hold the run (a heartbeat was refused, or
    /// none succeeded for too long): it stops and writes nothing more.
    LeaseLost = 2,
    /// The process is shutting down and the grace period is running out.
    Shutdown = 3,
}

/// A run's stop switch: the token its steps watch and why it was pulled.
pub(crate) struct RunStop {
    token: CancellationToken,
    /// Pulled for every reason but a cancel: what `on_failure` and
    /// `finally` steps watch, since they must still run after a cancel.
    hard: CancellationToken,
    reason: AtomicU8,
}

impl RunStop {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            token: CancellationToken::new(),
            hard: CancellationToken::new(),
            reason: AtomicU8::new(0),
        })
    }

    /// Stops the run's steps (their processes are killed) for `reason`,
    /// unless it was stopped already for another one.
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
        if reason != StopReason::Cancel {
            self.hard.cancel();
        }
    }

    /// The token cleanup steps (`on_failure`, `finally`) watch: pulled when
    /// the worker loses the run or shuts down, not by a cancel.
    pub(crate) fn hard_token(&self) -> CancellationToken {
        self.hard.clone()
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::LeaseLost),
            3 => Some(StopReason::Shutdown),
            _ => None,
        }
    }

    /// True once the run's steps were told to stop, for whatever reason.
    pub(crate) fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// True once this worker may no longer write anything for the run.
    pub(crate) fn lease_lost(&self) -> bool {
        self.reason() == Some(StopReason::LeaseLost)
    }

    /// The token the steps' executors watch.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// How long this worker may still act on a run without a newer successful
/// heartbeat: the lease it last obtained, minus a safety margin, measured on
/// the monotonic clock from the moment that heartbeat was *sent*. Past it,
/// another node may take the run over, so the worker fences itself: it
/// starts nothing more and kills its steps (see [`heartbeat_loop`]).
pub(crate) struct LeaseClock {
    valid_until: std::sync::Mutex<Instant>,
    /// The lease minus the margin.
    valid_for: Duration,
}

impl LeaseClock {
    pub(crate) fn new(inner: &Inner, run: &Run) -> Self {
        let valid_for = inner.config.lease.saturating_sub(fence_margin(inner));
        // The claim set the first lease end; measure the rest of it from now.
        let left = run
            .lease_until
            .and_then(|until| (until - Utc::now()).to_std().ok())
            .unwrap_or(inner.config.lease)
            .saturating_sub(fence_margin(inner));
        Self {
            valid_until: std::sync::Mutex::new(after(left)),
            valid_for,
        }
    }

    fn valid_until(&self) -> Instant {
        match self.valid_until.lock() {
            Ok(v) => *v,
            Err(p) => *p.into_inner(),
        }
    }

    /// A heartbeat sent at `sent` was accepted.
    fn renewed(&self, sent: Instant) {
        let until = after_from(sent, self.valid_for);
        match self.valid_until.lock() {
            Ok(mut v) => *v = until,
            Err(p) => *p.into_inner() = until,
        }
    }

    /// True once the lease may have run out (or is about to).
    pub(crate) fn fenced(&self) -> bool {
        Instant::now() >= self.valid_until()
    }
}

/// The part of the lease a worker never uses: it stops its steps this long
/// before the lease ends, so they are dead before another node may rescue
/// the run (and small clock differences between hosts are covered).
fn fence_margin(inner: &Inner) -> Duration {
    inner.config.lease / 6
}

/// How long a step's processes may outlive a frozen worker's last
/// keepalive (see [`crate::executor::StepContext::lease_margin`]). The worker
/// may have been frozen up to one heartbeat after its last accepted one, and
/// the lease runs from that heartbeat: what is left after the heartbeat
/// interval and the fence margin (half the lease with the defaults) ends
/// before any other node may rescue the run.
pub(super) fn lease_margin(inner: &Inner) -> Duration {
    let lease = inner.config.lease;
    lease
        .saturating_sub(inner.config.heartbeat)
        .saturating_sub(fence_margin(inner))
        .max(lease / 4)
}

/// `now + d`, or a point so far ahead that it never comes when `d` is too
/// large to add (a huge time limit means "no practical deadline", never a panic).
pub(crate) fn after(d: Duration) -> Instant {
    after_from(Instant::now(), d)
}

fn after_from(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365 * 30))
}

/// The heartbeat and the cancel watcher of one run. Dropping this stops
/// both (the guard cancels their token), also while a panic unwinds, so a
/// run that ends any way never keeps renewing its lease.
pub(crate) struct Watchers {
    _stop_on_drop: DropGuard,
    done: CancellationToken,
    tasks: [JoinHandle<()>; 2],
}

impl Watchers {
    /// Starts both watchers for `run` as `worker`.
    pub(crate) fn start(
        inner: &Arc<Inner>,
        run: &Run,
        worker: &str,
        clock: Arc<LeaseClock>,
        stop: Arc<RunStop>,
    ) -> Self {
        let done = CancellationToken::new();
        let beat = Heartbeat {
            inner: inner.clone(),
            id: run.id,
            worker: worker.to_string(),
            attempt: run.attempt,
            clock,
            stop: stop.clone(),
        };
        let heart = tokio::spawn(heartbeat_loop(beat, done.clone()));
        let watcher = tokio::spawn(watch_cancel(inner.clone(), run.id, stop, done.clone()));
        Self {
            _stop_on_drop: done.clone().drop_guard(),
            done,
            tasks: [heart, watcher],
        }
    }

    /// Stops both and waits until they have ended (no heartbeat is in
    /// flight afterwards).
    pub(crate) async fn stop(self) {
        self.done.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the heartbeat renews, and what it pulls when it cannot.
struct Heartbeat {
    inner: Arc<Inner>,
    id: RunId,
    worker: String,
    attempt: u32,
    clock: Arc<LeaseClock>,
    stop: Arc<RunStop>,
}

/// Renews the run's lease every heartbeat interval on its own timer, until
/// `done`. A refused heartbeat, or none accepted before the lease (minus the
/// margin) runs out, stops the run's steps as [`StopReason::LeaseLost`]: the
/// worker fences itself before another node may take the run over.
async fn heartbeat_loop(hb: Heartbeat, done: CancellationToken) {
    let every = hb.inner.config.heartbeat;
    let lease = chrono::Duration::from_std(hb.inner.config.lease)
        .unwrap_or_else(|_| chrono::Duration::seconds(30));
    let mut next = after(every);
    loop {
        let fence_at = hb.clock.valid_until();
        tokio::select! {
            biased;
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(fence_at) => {
                tracing::error!(run = %hb.id, "no heartbeat succeeded within the lease; stopping the run's steps before another worker takes it over");
                hb.stop.stop(StopReason::LeaseLost);
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let until = Utc::now() + lease;
        let beat = hb
            .inner
            .store
            .heartbeat(hb.id, &hb.worker, hb.attempt, until);
        match tokio::time::timeout_at(fence_at, beat).await {
            Ok(Ok(true)) => {
                hb.clock.renewed(sent);
                next = after_from(sent, every);
            }
            Ok(Ok(false)) => {
                tracing::warn!(run = %hb.id, "heartbeat refused: this worker no longer holds the run; stopping its steps");
                hb.stop.stop(StopReason::LeaseLost);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(run = %hb.id, error = %e, "heartbeat failed; retrying");
                next = after((every / 4).max(Duration::from_millis(50)));
            }
            // The fence is reached; the next turn of the loop stops the run.
            Err(_) => {}
        }
    }
}

/// Watches for a cancel request (a wake-up on the bus, or the store polled
/// on its own fixed interval) until `done`.
async fn watch_cancel(inner: Arc<Inner>, id: RunId, stop: Arc<RunStop>, done: CancellationToken) {
    let mut rx = inner.bus.subscribe();
    let mut poll = tokio::time::interval(inner.config.cancel_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = poll.tick() => {
                // The flag alone: decoding the whole run (its job spec) on
                // every poll would cost a long job more than its steps.
                if let Ok(Some(true)) = inner.store.cancel_requested(id).await {
                    stop.stop(StopReason::Cancel);
                    return;
                }
            }
            ev = rx.recv() => match ev {
                Ok(Event::CancelRequested(c)) if c == id => {
                    stop.stop(StopReason::Cancel);
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    rx = inner.bus.subscribe();
                }
                _ => {}
            },
        }
    }
}
