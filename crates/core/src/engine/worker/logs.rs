//! Writing a run's output: chunks from every step and target arrive on one
//! channel, are masked per stream, numbered in arrival order and stored in
//! batches (whatever queued up while the previous batch was written).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;

use super::super::Inner;
use super::lease::RunStop;
use super::persist;
use crate::bus::Event;
use crate::executor::OutputEvent;
use crate::mask::{MaskStream, Masker};
use crate::model::{LogChunk, RunId, Stream};

/// Most chunks one store write takes.
const MAX_BATCH: usize = 256;

/// The run's log writer: who writes (for the store's lease guard), where the
/// numbering continues, and the masking state of every open stream.
pub(crate) struct LogWriter {
    pub inner: Arc<Inner>,
    pub id: RunId,
    pub worker: String,
    pub attempt: u32,
    pub stop: Arc<RunStop>,
    /// The last `seq` stored before this attempt (the log continues after a rescue).
    pub seq: u64,
    pub masker: Masker,
}

impl LogWriter {
    /// Stores everything that arrives on `rx` until every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<OutputEvent>) {
        let mut batch: Vec<LogChunk> = Vec::new();
        // One masking state per step × target × stream: a secret split across
        // chunks of one stream is still caught, and streams never mix.
        let mut streams: HashMap<(u32, Arc<str>, Stream), MaskStream> = HashMap::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(ev) = next {
                self.push(&mut streams, &mut batch, ev);
                next = if batch.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.flush(&batch).await;
                batch.clear();
            }
        }
    }

    /// Masks one event and, when anything is left to store, numbers it.
    fn push(
        &mut self,
        streams: &mut HashMap<(u32, Arc<str>, Stream), MaskStream>,
        batch: &mut Vec<LogChunk>,
        ev: OutputEvent,
    ) {
        let key = (ev.step, ev.target.clone(), ev.stream);
        let data = if ev.eof {
            streams
                .remove(&key)
                .map(|mut s| s.finish())
                .unwrap_or_default()
        } else {
            streams
                .entry(key)
                .or_insert_with(|| self.masker.stream())
                .push(&ev.data)
        };
        if data.is_empty() {
            return;
        }
        self.seq += 1;
        let run_level = ev.target.is_empty();
        batch.push(LogChunk {
            run_id: self.id,
            seq: self.seq,
            step: (!run_level).then_some(ev.step),
            target: (!run_level).then(|| ev.target.to_string()),
            stream: ev.stream,
            data,
            time: Utc::now(),
            try_no: ev.try_no,
        });
    }

    /// Stores a batch (retrying through a store outage) and wakes followers.
    async fn flush(&self, batch: &[LogChunk]) {
        // After the lease was lost nothing is written (the store would refuse
        // it anyway); the channel is still drained so no producer blocks.
        if !self.stop.lease_lost() {
            let inner = &self.inner;
            match persist(inner, "storing output", || {
                inner
                    .store
                    .append_logs_as(&self.worker, self.attempt, batch)
            })
            .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(run = %self.id, "output refused: this worker no longer holds the run; stopping its steps");
                    self.stop.stop(super::lease::StopReason::LeaseLost);
                }
                Err(e) => {
                    tracing::error!(run = %self.id, error = %e, "output lost: the store keeps failing")
                }
            }
        }
        self.inner.publish(Event::Log(self.id, self.seq));
    }
}
