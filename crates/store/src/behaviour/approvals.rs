//! Approval requests and decisions: the rules of `ApprovalStore`.

use super::*;
use opsconductor_core::approval::{
    ApprovalDecision, ApprovalRequest, Approvers, DecideOutcome, Decision,
};

fn request(run: RunId, required: u32, expires_at: DateTime<Utc>) -> ApprovalRequest {
    ApprovalRequest {
        run_id: run,
        job: "deploy".into(),
        requested_by: "sub".into(),
        required,
        approvers: Approvers {
            roles: vec![],
            users: vec!["alice".into(), "bob".into()],
        },
        reason_required: true,
        expires_at,
        plan_digest: "d1".into(),
        plan: json!({"targets": ["local"], "steps": [{"text": "echo hi"}]}),
        reasons: vec!["job".into(), "policy".into()],
        policy_hits: vec![],
        created_at: now_ms(),
    }
}

fn decision(run: RunId, who: &str, d: Decision) -> ApprovalDecision {
    ApprovalDecision {
        run_id: run,
        approver: who.into(),
        decision: d,
        reason: Some(format!("{who} says {}", d.as_str())),
        plan_digest: "d1".into(),
        time: now_ms(),
    }
}

/// Stores a waiting run with its request, the way the engine does.
async fn waiting(
    store: &Arc<dyn Store>,
    required: u32,
    expires_at: DateTime<Utc>,
) -> Result<(Run, ApprovalRequest)> {
    let mut run = queued_run("deploy", now_ms());
    run.status = RunStatus::WaitingApproval;
    let req = request(run.id, required, expires_at);
    store.approval_store().put_approval_request(&req).await?;
    store.insert_run(&run).await?;
    Ok((run, req))
}

/// The error of a call that must fail.
fn must_fail<T: std::fmt::Debug>(r: Result<T>, what: &str) -> Error {
    match r {
        Err(e) => e,
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
    }
}

/// The value of an option that must be there.
fn must<T>(v: Option<T>, what: &str) -> T {
    v.unwrap_or_else(|| panic!("{what}: missing"))
}

fn later() -> DateTime<Utc> {
    now_ms() + TimeDelta::hours(1)
}

/// A request round-trips every field; one whose run was never inserted (a
/// crash between the two writes) is never read or listed; waiting runs
/// are never claimed.
pub async fn approval_requests_round_trip_and_orphans_stay_hidden(
    store: Arc<dyn Store>,
) -> Result<()> {
    let a = store.approval_store();
    let orphan = request(RunId::new(), 1, later());
    a.put_approval_request(&orphan).await?;
    assert_eq!(a.approval_request(orphan.run_id).await?, None);
    assert!(a.list_approval_requests(false, 10).await?.is_empty());
    let (run, req) = waiting(&store, 2, later()).await?;
    assert_eq!(a.approval_request(run.id).await?.as_ref(), Some(&req));
    let e = must_fail(a.put_approval_request(&req).await, "a second request");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let listed = a.list_approval_requests(true, 10).await?;
    assert_eq!(listed, vec![(req.clone(), RunStatus::WaitingApproval)]);
    assert!(
        store.claim_queued(&claim("w", 10)).await?.is_empty(),
        "a waiting run must never be claimed"
    );
    assert_eq!(
        store.get_run(run.id).await?.map(|r| r.status),
        Some(RunStatus::WaitingApproval)
    );
    Ok(())
}

/// Approvals count once per person (names case-insensitive); the last one
/// needed queues the run; a rejection ends it; a decided run takes no more.
pub async fn decisions_count_distinct_approvers_and_move_the_run(
    store: Arc<dyn Store>,
) -> Result<()> {
    let a = store.approval_store();
    let (run, _) = waiting(&store, 2, later()).await?;
    let first = decision(run.id, "alice", Decision::Approve);
    assert_eq!(
        a.decide(&first, now_ms()).await?,
        DecideOutcome::Recorded { approvals: 1 }
    );
    assert_eq!(
        a.decide(&decision(run.id, "ALICE", Decision::Approve), now_ms())
            .await?,
        DecideOutcome::AlreadyDecided
    );
    assert_eq!(
        store.run_status(run.id).await?,
        Some(RunStatus::WaitingApproval)
    );
    assert_eq!(
        a.decide(&decision(run.id, "bob", Decision::Approve), now_ms())
            .await?,
        DecideOutcome::Approved
    );
    assert_eq!(store.run_status(run.id).await?, Some(RunStatus::Queued));
    let decisions = a.approval_decisions(run.id).await?;
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0], first);
    assert_eq!(
        a.decide(&decision(run.id, "carol", Decision::Reject), now_ms())
            .await?,
        DecideOutcome::NotWaiting(RunStatus::Queued)
    );
    let claimed = store.claim_queued(&claim("w", 10)).await?;
    assert_eq!(
        claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run.id]
    );

    let (run2, _) = waiting(&store, 2, later()).await?;
    a.decide(&decision(run2.id, "alice", Decision::Approve), now_ms())
        .await?;
    assert_eq!(
        a.decide(&decision(run2.id, "bob", Decision::Reject), now_ms())
            .await?,
        DecideOutcome::Rejected
    );
    let r = must(store.get_run(run2.id).await?, "the rejected run");
    assert_eq!(r.status, RunStatus::Rejected);
    assert!(r.finished_at.is_some());
    assert!(r.error.unwrap_or_default().contains("rejected by bob"));
    assert!(store.claim_queued(&claim("w", 10)).await?.is_empty());
    let e = must_fail(
        a.decide(
            &decision(RunId::new(), "alice", Decision::Approve),
            now_ms(),
        )
        .await,
        "a decision on a missing run",
    );
    assert_eq!(e.kind(), ErrorKind::NotFound);
    Ok(())
}

/// Expiry: a decision after the expiry records nothing and ends the run
/// `expired`; the sweep ends only waiting runs past their expiry.
pub async fn expired_requests_end_the_run_and_the_sweep_is_guarded(
    store: Arc<dyn Store>,
) -> Result<()> {
    let a = store.approval_store();
    let t0 = now_ms();
    let (late, _) = waiting(&store, 1, t0).await?;
    assert_eq!(
        a.decide(&decision(late.id, "alice", Decision::Approve), t0)
            .await?,
        DecideOutcome::Expired
    );
    assert_eq!(store.run_status(late.id).await?, Some(RunStatus::Expired));
    assert!(a.approval_decisions(late.id).await?.is_empty());

    let (due, _) = waiting(&store, 1, t0).await?;
    let (decided, _) = waiting(&store, 1, t0).await?;
    let (fresh, _) = waiting(&store, 1, later()).await?;
    let (cancelled, _) = waiting(&store, 1, t0).await?;
    a.decide(
        &decision(decided.id, "bob", Decision::Approve),
        t0 - TimeDelta::milliseconds(1),
    )
    .await?;
    let c = must(
        store.request_cancel(cancelled.id).await?,
        "the cancelled run",
    );
    assert_eq!(
        c.status,
        RunStatus::Cancelled,
        "cancel ends a waiting run at once"
    );
    let swept = a.expire_approvals(t0, 100).await?;
    assert_eq!(swept, vec![due.id]);
    assert_eq!(store.run_status(due.id).await?, Some(RunStatus::Expired));
    assert_eq!(store.run_status(decided.id).await?, Some(RunStatus::Queued));
    assert_eq!(
        store.run_status(fresh.id).await?,
        Some(RunStatus::WaitingApproval)
    );
    assert_eq!(
        store.run_status(cancelled.id).await?,
        Some(RunStatus::Cancelled)
    );
    assert!(a.expire_approvals(t0, 100).await?.is_empty());
    assert_eq!(a.list_approval_requests(true, 100).await?.len(), 1);
    assert_eq!(a.list_approval_requests(false, 100).await?.len(), 5);
    Ok(())
}

/// An approval racing with expiry, and one racing with cancel, have
/// exactly one outcome each time.
pub async fn approval_races_with_expiry_and_cancel_have_one_outcome(
    store: Arc<dyn Store>,
) -> Result<()> {
    const N: usize = 24;
    let t0 = now_ms() + TimeDelta::seconds(30);
    let mut runs = Vec::new();
    for _ in 0..N {
        runs.push(waiting(&store, 1, t0).await?.0.id);
    }
    // Expiry: the decision is made just before the expiry, the sweep at it.
    let mut tasks = Vec::new();
    for id in &runs {
        let (s1, s2, id) = (store.clone(), store.clone(), *id);
        tasks.push(tokio::spawn(async move {
            let d = decision(id, "alice", Decision::Approve);
            let decide = s1
                .approval_store()
                .decide(&d, t0 - TimeDelta::milliseconds(1));
            let sweep = s2.approval_store().expire_approvals(t0, 1000);
            let (d, s) = tokio::join!(decide, sweep);
            (id, d, s)
        }));
    }
    let mut swept_total = std::collections::HashSet::new();
    let mut results = Vec::new();
    for t in tasks {
        let (id, d, s) = t.await.map_err(|e| Error::Internal(e.to_string()))?;
        swept_total.extend(s?);
        results.push((id, d?));
    }
    for (id, d) in results {
        let status = store.run_status(id).await?;
        let expired = swept_total.contains(&id);
        match d {
            DecideOutcome::Approved => {
                assert!(!expired, "run {id} approved and expired");
                assert_eq!(status, Some(RunStatus::Queued));
                assert_eq!(
                    store.approval_store().approval_decisions(id).await?.len(),
                    1
                );
            }
            DecideOutcome::NotWaiting(RunStatus::Expired) => {
                assert!(
                    expired,
                    "run {id}: refused as expired but nobody expired it"
                );
                assert_eq!(status, Some(RunStatus::Expired));
                assert!(
                    store
                        .approval_store()
                        .approval_decisions(id)
                        .await?
                        .is_empty()
                );
            }
            other => panic!("run {id}: unexpected outcome {other:?}"),
        }
    }
    // Cancel.
    let mut runs = Vec::new();
    for _ in 0..N {
        runs.push(waiting(&store, 1, later()).await?.0.id);
    }
    let mut tasks = Vec::new();
    for id in runs {
        let (s1, s2) = (store.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            let d = decision(id, "bob", Decision::Approve);
            let decide = s1.approval_store().decide(&d, now_ms());
            let cancel = s2.request_cancel(id);
            let (d, c) = tokio::join!(decide, cancel);
            (id, d, c)
        }));
    }
    for t in tasks {
        let (id, d, c) = t.await.map_err(|e| Error::Internal(e.to_string()))?;
        let (d, c) = (d?, must(c?, "the cancelled run"));
        let decisions = store.approval_store().approval_decisions(id).await?;
        match d {
            // Approved first: the cancel then met a queued run.
            DecideOutcome::Approved => {
                assert_eq!(decisions.len(), 1);
                assert_eq!(c.status, RunStatus::Cancelled);
            }
            // Cancelled first: the approval was refused and not recorded.
            DecideOutcome::NotWaiting(RunStatus::Cancelled) => assert!(decisions.is_empty()),
            other => panic!("run {id}: unexpected outcome {other:?}"),
        }
        assert_eq!(store.run_status(id).await?, Some(RunStatus::Cancelled));
    }
    Ok(())
}
