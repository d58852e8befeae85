//! In-process wake-ups: a run was queued, changed state, logged output or was
//! asked to stop. Followers and workers treat an event as a hint and re-read
//! the store, which stays the source of truth; a missed event only costs a
//! poll interval. Across processes, the PostgreSQL store relays events with
//! `NOTIFY` ([`Event::encode`] is the payload); SQLite has no such channel,
//! so other processes on one SQLite file see changes at their next poll.

use tokio::sync::broadcast;

use crate::model::RunId;

/// Something happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A run was queued and waits for a worker.
    Queued(RunId),
    /// A run changed state.
    Updated(RunId),
    /// A run has new log chunks, up to this `seq`.
    Log(RunId, u64),
    /// Someone asked a run to stop.
    CancelRequested(RunId),
}

impl Event {
    /// The run concerned.
    pub fn run_id(&self) -> RunId {
        match self {
            Event::Queued(id)
            | Event::Updated(id)
            | Event::Log(id, _)
            | Event::CancelRequested(id) => *id,
        }
    }
}

impl Event {
    /// The wire form used by cross-process channels: `q:ID`, `u:ID`, `l:ID:SEQ`, `c:ID`.
    pub fn encode(&self) -> String {
        match self {
            Event::Queued(id) => format!("q:{id}"),
            Event::Updated(id) => format!("u:{id}"),
            Event::Log(id, seq) => format!("l:{id}:{seq}"),
            Event::CancelRequested(id) => format!("c:{id}"),
        }
    }

    /// Parses [`Event::encode`]'s output; `None` for anything else.
    pub fn decode(s: &str) -> Option<Event> {
        let mut parts = s.splitn(3, ':');
        let kind = parts.next()?;
        let id: RunId = parts.next()?.parse().ok()?;
        match (kind, parts.next()) {
            ("q", None) => Some(Event::Queued(id)),
            ("u", None) => Some(Event::Updated(id)),
            ("c", None) => Some(Event::CancelRequested(id)),
            ("l", Some(seq)) => seq.parse().ok().map(|seq| Event::Log(id, seq)),
            _ => None,
        }
    }
}

/// A broadcast channel of [`Event`]s.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus that buffers 4096 events per slow subscriber before it lags.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { tx }
    }

    /// Sends an event to every subscriber (none is fine).
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// A new subscription; events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips() {
        let id = RunId::new();
        for e in [
            Event::Queued(id),
            Event::Updated(id),
            Event::Log(id, 42),
            Event::CancelRequested(id),
        ] {
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        assert_eq!(Event::decode("x:y"), None);
        assert_eq!(Event::decode(&format!("l:{id}")), None);
    }
}
