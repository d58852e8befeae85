//! Notification channels and the outbox (`NotifyStore`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use opsconductor_core::Result;
use opsconductor_core::engine::notify::{
    Attempt, AttemptOutcome, Channel, ChannelSpec, DeliveryFilter, DeliveryNext, DeliveryStatus,
    EventKind, NewDelivery,
};
use opsconductor_core::model::{RunId, RunStatus};
use opsconductor_core::store::{FinishRun, Store};
use uuid::Uuid;

use super::{claim, now_ms, queued_run};

fn webhook(name: &str, url: &str) -> Channel {
    Channel {
        name: name.into(),
        description: "ops hook".into(),
        spec: ChannelSpec::Webhook {
            url: url.into(),
            signing_secret: Some("hook-key".into()),
            headers: [("X-Team".to_string(), "ops".to_string())].into(),
            template: None,
        },
        updated_at: now_ms(),
        updated_by: "admin".into(),
    }
}

fn delivery(run: Option<RunId>, event: Uuid, channel: &str) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event_id: event,
        kind: EventKind::RunFailed,
        run_id: run,
        job: Some("deploy".into()),
        channel: channel.into(),
        payload: r#"{"type":"run.failed"}"#.into(),
        next_at: now_ms() - TimeDelta::seconds(1),
        give_up_at: now_ms() + TimeDelta::hours(24),
    }
}

fn attempt(id: Uuid, n: u32, worker: &str, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        delivery_id: id,
        n,
        at: now_ms(),
        latency_ms: 12,
        outcome,
        code: Some(500),
        reply: Some("oops".into()),
        error: Some("the receiver answered HTTP 500".into()),
        worker: worker.into(),
    }
}

/// Channels are created, replaced, listed by name and deleted.
pub async fn notify_channels_crud(store: Arc<dyn Store>) -> Result<()> {
    let ns = store.notify_store();
    ns.put_channel(&webhook("b-hook", "https://b.example/x"))
        .await?;
    ns.put_channel(&webhook("a-hook", "https://a.example/x"))
        .await?;
    let replaced = webhook("a-hook", "https://a.example/y");
    ns.put_channel(&replaced).await?;
    assert_eq!(ns.get_channel("a-hook").await?, Some(replaced));
    let names: Vec<String> = ns
        .list_channels()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["a-hook", "b-hook"]);
    assert!(ns.delete_channel("a-hook").await?);
    assert!(!ns.delete_channel("a-hook").await?);
    assert_eq!(ns.get_channel("a-hook").await?, None);
    Ok(())
}

/// `finish_run_notifying` is `finish_run`'s guard plus the deliveries in one
/// transaction: a non-owner writes neither; the owner writes both; a
/// repeated `(event, channel)` is ignored.
pub async fn finish_run_notifying_is_guarded_and_atomic(store: Arc<dyn Store>) -> Result<()> {
    store.insert_run(&queued_run("deploy", now_ms())).await?;
    let run = store.claim_queued(&claim("w1", 1)).await?.remove(0);
    let ev = Uuid::now_v7();
    let ds = vec![
        delivery(Some(run.id), ev, "hook"),
        delivery(Some(run.id), ev, "mail"),
    ];
    let f = |worker, attempt| FinishRun {
        id: run.id,
        worker,
        attempt,
        status: RunStatus::Failed,
        error: Some("exit code 3"),
    };
    let ns = store.notify_store();
    assert!(
        !ns.finish_run_notifying(&f("w2", 1), &ds).await?,
        "not the owner"
    );
    let filter = DeliveryFilter {
        run: Some(run.id),
        ..DeliveryFilter::default()
    };
    assert!(
        ns.list_deliveries(&filter).await?.is_empty(),
        "nothing written for a non-owner"
    );
    assert_eq!(
        store.get_run(run.id).await?.map(|r| r.status),
        Some(RunStatus::Running)
    );

    assert!(ns.finish_run_notifying(&f("w1", 1), &ds).await?);
    let r = store
        .get_run(run.id)
        .await?
        .ok_or_else(|| opsconductor_core::Error::Internal("the run is missing".into()))?;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("exit code 3"));
    assert!(r.finished_at.is_some() && r.lease_until.is_none());
    let stored = ns.list_deliveries(&filter).await?;
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|d| d.event_id == ev && d.status == DeliveryStatus::Pending)
    );
    assert!(
        !ns.finish_run_notifying(&f("w1", 1), &ds).await?,
        "a second finish"
    );

    ns.enqueue_deliveries(&[delivery(Some(run.id), ev, "hook")])
        .await?;
    assert_eq!(
        ns.list_deliveries(&filter).await?.len(),
        2,
        "(event, channel) is unique"
    );
    assert!(
        ns.finish_run_notifying(&f("w1", 1), &[]).await.is_ok(),
        "an empty outbox is fine"
    );
    Ok(())
}

/// Due deliveries go to exactly one claimer; an attempt is always recorded;
/// a retry waits for its time; a lease that ends frees the delivery for
/// another deliverer, and the old holder can no longer move it on.
pub async fn deliveries_are_claimed_once_retried_and_rescued(store: Arc<dyn Store>) -> Result<()> {
    let ns = store.notify_store();
    let mut all = Vec::new();
    for i in 0..20 {
        all.push(delivery(None, Uuid::now_v7(), &format!("c{i}")));
    }
    ns.enqueue_deliveries(&all).await?;
    let lease = Duration::from_secs(60);
    let now = Utc::now();
    let (a, b, c) = tokio::join!(
        ns.claim_deliveries("a", lease, 8, now),
        ns.claim_deliveries("b", lease, 8, now),
        ns.claim_deliveries("c", lease, 8, now),
    );
    let (a, b, c) = (a?, b?, c?);
    let ids: HashSet<Uuid> = a.iter().chain(&b).chain(&c).map(|d| d.id).collect();
    assert_eq!(
        ids.len(),
        a.len() + b.len() + c.len(),
        "each delivery to one claimer"
    );
    assert_eq!(ids.len(), 20);
    assert!(
        a.iter()
            .all(|d| d.attempts == 1 && d.status == DeliveryStatus::Delivering)
    );
    assert!(ns.claim_deliveries("d", lease, 8, now).await?.is_empty());

    // A retry: pending again, not due before its time.
    let d = &a[0];
    let later = Utc::now() + TimeDelta::seconds(30);
    assert!(
        ns.record_attempt(
            &attempt(d.id, 1, "a", AttemptOutcome::Retry),
            DeliveryNext::RetryAt(later)
        )
        .await?
    );
    let got = ns
        .get_delivery(d.id)
        .await?
        .ok_or_else(|| opsconductor_core::Error::Internal("the delivery is missing".into()))?;
    assert_eq!(got.status, DeliveryStatus::Pending);
    assert_eq!(
        got.last_error.as_deref(),
        Some("the receiver answered HTTP 500")
    );
    assert!(
        ns.claim_deliveries("d", lease, 50, Utc::now())
            .await?
            .is_empty()
    );
    let again = ns
        .claim_deliveries("d", lease, 50, later + TimeDelta::seconds(1))
        .await?;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (d.id, 2));
    let mut ok = attempt(d.id, 2, "d", AttemptOutcome::Delivered);
    ok.code = Some(200);
    assert!(ns.record_attempt(&ok, DeliveryNext::Delivered).await?);
    let got = ns
        .get_delivery(d.id)
        .await?
        .ok_or_else(|| opsconductor_core::Error::Internal("the delivery is missing".into()))?;
    assert_eq!(got.status, DeliveryStatus::Delivered);
    assert!(got.delivered_at.is_some());
    let tries = ns.attempts(d.id).await?;
    assert_eq!(tries.iter().map(|t| t.n).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        tries[0],
        attempt(d.id, 1, "a", AttemptOutcome::Retry).with_at(tries[0].at)
    );
    assert_eq!(tries[1].code, Some(200));

    // A deliverer that died: its lease ends, another takes over.
    let dead = &b[0];
    let after_lease = Utc::now() + TimeDelta::seconds(61);
    let rescued = ns.claim_deliveries("e", lease, 50, after_lease).await?;
    assert!(rescued.iter().any(|r| r.id == dead.id && r.attempts == 2));
    assert!(
        !ns.record_attempt(
            &attempt(dead.id, 1, "b", AttemptOutcome::Delivered),
            DeliveryNext::Delivered
        )
        .await?,
        "the old holder cannot move it on"
    );
    assert_eq!(
        ns.attempts(dead.id).await?.len(),
        1,
        "but its attempt is recorded"
    );
    assert!(
        ns.record_attempt(
            &attempt(dead.id, 2, "e", AttemptOutcome::Failed),
            DeliveryNext::GiveUp
        )
        .await?
    );
    assert_eq!(
        ns.get_delivery(dead.id).await?.map(|d| d.status),
        Some(DeliveryStatus::Failed)
    );
    Ok(())
}

/// History lists deliveries newest first, by run and by channel, bounded.
pub async fn delivery_history_by_run_and_channel(store: Arc<dyn Store>) -> Result<()> {
    let ns = store.notify_store();
    let runs: Vec<_> = (0..2).map(|_| queued_run("deploy", now_ms())).collect();
    for r in &runs {
        store.insert_run(r).await?;
    }
    let mut ds = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let ev = Uuid::now_v7();
        ds.push(delivery(Some(r.id), ev, "hook"));
        if i == 0 {
            ds.push(delivery(Some(r.id), ev, "mail"));
        }
    }
    ns.enqueue_deliveries(&ds).await?;
    let by_run = |run| DeliveryFilter {
        run: Some(run),
        ..DeliveryFilter::default()
    };
    assert_eq!(ns.list_deliveries(&by_run(runs[0].id)).await?.len(), 2);
    assert_eq!(ns.list_deliveries(&by_run(runs[1].id)).await?.len(), 1);
    let hook = DeliveryFilter {
        channel: Some("hook".into()),
        ..DeliveryFilter::default()
    };
    assert_eq!(ns.list_deliveries(&hook).await?.len(), 2);
    let one = DeliveryFilter {
        limit: 1,
        ..DeliveryFilter::default()
    };
    assert_eq!(ns.list_deliveries(&one).await?.len(), 1);
    assert_eq!(
        ns.list_deliveries(&DeliveryFilter::default()).await?.len(),
        3
    );
    Ok(())
}

trait WithAt {
    fn with_at(self, at: chrono::DateTime<Utc>) -> Self;
}

impl WithAt for Attempt {
    fn with_at(mut self, at: chrono::DateTime<Utc>) -> Self {
        self.at = at;
        self
    }
}
