//! Cross-process wake-ups: `NOTIFY` on one channel, and a stream of the
//! events every process sharing the database sends, that outlives server
//! restarts.
//!
//! sqlx's `PgListener` reconnects by itself only for some failures: when the
//! connection ends with EOF, an aborted or timed-out connection or a broken
//! pipe, `try_recv` reconnects, re-subscribes and returns `Ok(None)`; a
//! connection reset, a failed reconnect (the server still down: the pool
//! gives up after its acquire timeout) or any other error is returned as
//! `Err`, and `recv` would hand that error to us and stop. So the stream
//! drives `try_recv` itself: on an error it drops the listener and builds a
//! new one, with backoff, until the store closes. A connection that goes
//! silent (a peer gone without closing) is caught by a ping after a quiet
//! spell. Events sent while no connection listens are lost — they are
//! wake-up hints, and everything waiting also polls the store.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_core::bus::Event;
use opsconductor_core::store::EventStream;
use sqlx::postgres::{PgListener, PgNotification, PgPool};
use tokio::sync::watch;

use super::open::Endpoint;

/// The one channel every OpsConductor process listens on.
pub(super) const CHANNEL: &str = "opsconductor";

/// First wait before re-subscribing after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts to re-subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After this long without a notification, the connection is pinged.
const QUIET: Duration = Duration::from_secs(30);
/// How long a ping may take before the connection is considered dead.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener subscribed to [`CHANNEL`], on a connection of `pool`.
pub(super) async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The stream of events `listener` receives, re-subscribing as needed on
/// `pool` (the listener's own); it ends when `closed` turns true or its
/// sender (the store) is gone, and closes `pool` when dropped.
pub(super) fn events(
    listener: PgListener,
    pool: PgPool,
    closed: watch::Receiver<bool>,
    endpoint: Arc<Endpoint>,
) -> EventStream {
    let state = State {
        listener: Some(listener),
        pool,
        closed,
        endpoint,
        backoff: FIRST_BACKOFF,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    }))
}

struct State {
    /// `None` while re-subscribing.
    listener: Option<PgListener>,
    pool: PgPool,
    closed: watch::Receiver<bool>,
    endpoint: Arc<Endpoint>,
    backoff: Duration,
}

/// What one wait on the listener gave.
enum Received {
    Event(Event),
    /// Nothing to hand out; wait again.
    Nothing,
    /// The connection is unusable; re-subscribe.
    Lost(String),
    /// The store closed.
    Closed,
}

impl State {
    /// The next event, or `None` once the store is closed.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if *self.closed.borrow() || self.pool.is_closed() {
                return None;
            }
            match self.listener.take() {
                None => {
                    if !self.resubscribe().await {
                        return None;
                    }
                }
                Some(mut listener) => match self.receive(&mut listener).await {
                    Received::Event(event) => {
                        self.listener = Some(listener);
                        return Some(event);
                    }
                    Received::Nothing => self.listener = Some(listener),
                    Received::Lost(why) => {
                        tracing::warn!(
                            "lost the notification connection to {}: {why}; reconnecting",
                            self.endpoint
                        );
                        // Dropping the listener returns (or discards) its connection.
                        drop(listener);
                    }
                    Received::Closed => return None,
                },
            }
        }
    }

    /// Waits for one notification (or a quiet spell, answered by a ping).
    async fn receive(&mut self, listener: &mut PgListener) -> Received {
        enum Wake {
            Got(Result<Option<PgNotification>, sqlx::Error>),
            Closed,
            Quiet,
        }
        let wake = tokio::select! {
            r = listener.try_recv() => Wake::Got(r),
            () = closing(&mut self.closed) => Wake::Closed,
            () = tokio::time::sleep(QUIET) => Wake::Quiet,
        };
        let received = match wake {
            Wake::Got(r) => r,
            Wake::Closed => return Received::Closed,
            Wake::Quiet => {
                // Nothing for a while: make sure the connection still answers.
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                return match tokio::time::timeout(PING_TIMEOUT, ping).await {
                    Ok(Ok(_)) => Received::Nothing,
                    Ok(Err(e)) => Received::Lost(e.to_string()),
                    Err(_) => Received::Lost(format!(
                        "no answer to a ping within {}s",
                        PING_TIMEOUT.as_secs()
                    )),
                };
            }
        };
        match received {
            Ok(Some(notification)) => match Event::decode(notification.payload()) {
                Some(event) => Received::Event(event),
                None => {
                    tracing::debug!(
                        payload = notification.payload(),
                        "ignoring a notification that is not an OpsConductor event"
                    );
                    Received::Nothing
                }
            },
            // The connection dropped and the listener already re-subscribed
            // on a new one (or will, on the next call).
            Ok(None) => {
                tracing::info!(
                    "notification connection to {} was lost and re-established",
                    self.endpoint
                );
                Received::Nothing
            }
            Err(sqlx::Error::PoolClosed) => Received::Closed,
            Err(e) => Received::Lost(e.to_string()),
        }
    }

    /// One attempt to subscribe again, after the current backoff. False
    /// when the store closed meanwhile.
    async fn resubscribe(&mut self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.backoff) => {}
            () = closing(&mut self.closed) => return false,
        }
        let attempt = tokio::select! {
            r = subscribe(&self.pool) => r,
            () = closing(&mut self.closed) => return false,
        };
        match attempt {
            Ok(listener) => {
                tracing::info!("listening for notifications on {} again", self.endpoint);
                self.listener = Some(listener);
                self.backoff = FIRST_BACKOFF;
                true
            }
            Err(sqlx::Error::PoolClosed) => false,
            Err(e) => {
                tracing::debug!(
                    "cannot listen for notifications on {} yet: {e}; retrying in {:?}",
                    self.endpoint,
                    self.backoff
                );
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                true
            }
        }
    }
}

/// Resolves when the store closes (`closed` turns true or its sender is gone).
async fn closing(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await;
}
