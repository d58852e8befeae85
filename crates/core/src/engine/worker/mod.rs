//! Executing runs: the worker loop (claim, rescue) here; each claimed run
//! in [`run`] (its steps, its end, panics), one step on one target in
//! [`step`], templates in [`render`], the lease, heartbeat and cancel
//! watcher in [`lease`], and the run's output in [`logs`].

mod child;
mod lease;
mod logs;
mod outputs;
pub(crate) mod plan;
mod render;
mod retry;
mod run;
mod step;
mod strategy;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::Inner;
use crate::bus::Event;
use crate::model::Run;
use crate::store::Claim;

pub(crate) use lease::{RunStop, StopReason};
pub(crate) use render::{Rendered, RunView, context_for, exec_quoting, render_step};
pub(crate) use run::execute_run;

use lease::after;

/// Most runs one claim statement takes at once.
const MAX_BATCH: usize = 32;

/// Claims queued runs (and rescues expired ones) for `slots` concurrent
/// executions until shutdown, then waits for the runs it started.
///
/// One claimer per pool rather than one per slot: when several slots are
/// free, a single statement claims that many runs (the store's batch claim),
/// which is what keeps a busy queue cheap on PostgreSQL. Expired leases are
/// looked for at least every heartbeat interval even while queued work keeps
/// the pool busy, so a dead worker's runs are rescued within about
/// `lease + heartbeat` however long the queue is.
pub(crate) async fn worker_loop(inner: Arc<Inner>, idx: usize, slots: usize) {
    let worker = format!("{}#{idx}", inner.config.worker_name);
    let mut rx = inner.bus.subscribe();
    let free = Arc::new(tokio::sync::Semaphore::new(slots.max(1)));
    let mut running = tokio::task::JoinSet::new();
    let rescue_every = inner.config.heartbeat;
    let mut last_rescue: Option<Instant> = None;
    'claiming: loop {
        // Reap finished executions so the set does not grow.
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = inner.shutdown.cancelled() => break 'claiming,
            p = free.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break 'claiming,
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match free.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let claim = |limit: usize| Claim {
            worker: worker.clone(),
            lease: inner.config.lease,
            limit,
            only: None,
        };
        let mut got = Vec::new();
        let rescue_due = last_rescue.is_none_or(|t| t.elapsed() >= rescue_every);
        if rescue_due {
            got = rescue(&inner, &worker, &claim(permits.len())).await;
            last_rescue = Some(Instant::now());
        }
        if got.len() < permits.len() {
            match inner
                .store
                .claim_queued(&claim(permits.len() - got.len()))
                .await
            {
                Ok(runs) => got.extend(runs),
                Err(e) => {
                    tracing::warn!(worker = %worker, error = %e, "claiming runs failed; retrying")
                }
            }
        }
        if got.is_empty() && !rescue_due {
            got = rescue(&inner, &worker, &claim(permits.len())).await;
            last_rescue = Some(Instant::now());
        }
        if got.is_empty() {
            drop(permits);
            if idle(&inner, &mut rx).await == Idle::Shutdown {
                break 'claiming;
            }
            continue;
        }
        // Permits beyond what was claimed go back (dropped) at the end of
        // this iteration; each claimed run holds one until it ends.
        for (mut run, permit) in got.into_iter().zip(permits) {
            run.worker = Some(worker.clone());
            inner.publish(Event::Updated(run.id));
            let inner = inner.clone();
            running.spawn(async move {
                execute_run(inner, run).await;
                drop(permit);
            });
        }
    }
    // Shutdown: let the runs in progress end (they hand back or finish).
    while running.join_next().await.is_some() {}
}

/// How an idle wait ended.
#[derive(PartialEq, Eq)]
enum Idle {
    /// Look for work again.
    Claim,
    /// The process is shutting down.
    Shutdown,
}

/// Waits, with nothing to run, for a queued run, the poll interval or shutdown.
async fn idle(inner: &Inner, rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Idle {
    let sleep = tokio::time::sleep(inner.config.poll);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Idle::Shutdown,
            _ = &mut sleep => return Idle::Claim,
            ev = rx.recv() => match ev {
                Ok(Event::Queued(_)) | Err(_) => return Idle::Claim,
                Ok(_) => continue,
            },
        }
    }
}

/// Claims runs whose lease expired (their worker died), logging each.
async fn rescue(inner: &Inner, worker: &str, claim: &Claim) -> Vec<Run> {
    // Approval requests past their expiry end here too (no lease involved).
    if let Err(e) = inner.sweep_expired_approvals().await {
        tracing::warn!(worker = %worker, error = %e, "expiring approval requests failed; retrying");
    }
    match inner.store.claim_expired(claim, Utc::now()).await {
        Ok(runs) => {
            for r in &runs {
                tracing::warn!(run = %r.id, attempt = r.attempt, "rescuing a run whose worker stopped heartbeating");
            }
            runs
        }
        Err(e) => {
            tracing::warn!(worker = %worker, error = %e, "rescuing runs failed; retrying");
            Vec::new()
        }
    }
}

/// Retries a store write through a database outage (a restart, a failover):
/// with backoff, for up to one lease length. Writes are guarded by owner and
/// attempt, so a retry after the lease was lost changes nothing.
async fn persist<T, F, Fut>(inner: &Inner, what: &str, mut op: F) -> crate::error::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let give_up = after(inner.config.lease);
    let mut wait = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == crate::error::ErrorKind::Store && after(wait) < give_up => {
                tracing::warn!(error = %e, "{what} failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}
