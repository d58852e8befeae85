//! Retention: pruning old runs, results, logs and audit events.

use super::*;

/// A run in `status` that finished at `finished` (None: not finished).
fn aged_run(status: RunStatus, finished: Option<DateTime<Utc>>) -> Run {
    let mut run = queued_run("deploy", at(0));
    run.status = status;
    run.attempt = 1;
    run.started_at = Some(at(1));
    run.finished_at = finished;
    if status == RunStatus::Running {
        run.worker = Some("w1".into());
        run.lease_until = Some(Utc::now() + TimeDelta::minutes(5));
    }
    run
}

/// Stores a run with `logs` log chunks and one step result.
async fn run_with_data(store: &dyn Store, run: &Run, logs: u64) -> Result<()> {
    store.insert_run(run).await?;
    let chunks: Vec<LogChunk> = (1..=logs).map(|s| chunk(run.id, s, "x\n")).collect();
    store.append_logs(&chunks).await?;
    store
        .put_step_result(&StepResult {
            run_id: run.id,
            step: 0,
            target: "local".into(),
            status: StepStatus::Succeeded,
            exit_code: Some(0),
            signal: None,
            error: None,
            attempt: 1,
            started_at: at(1),
            finished_at: Some(at(2)),
            try_no: 1,
            tries: vec![],
            outputs: Default::default(),
            children: Vec::new(),
        })
        .await
}

fn retention_of(store: &dyn Store) -> Result<&dyn opsconductor_core::store::RetentionStore> {
    Ok(store.retention_store())
}

/// Pruning touches only runs in a final state finished before the cut-off:
/// queued and running runs (even with an old `finished_at`) and recent
/// finished runs keep their results and logs.
pub async fn prune_keeps_unfinished_and_recent_runs(store: Arc<dyn Store>) -> Result<()> {
    let r = retention_of(&*store)?;
    let cut = at(10_000);
    let old = [
        aged_run(RunStatus::Succeeded, Some(at(5_000))),
        aged_run(RunStatus::Failed, Some(at(5_000))),
        aged_run(RunStatus::Cancelled, Some(at(5_000))),
        aged_run(RunStatus::TimedOut, Some(at(5_000))),
    ];
    let keep = [
        aged_run(RunStatus::Queued, None),
        aged_run(RunStatus::Running, None),
        // Not finished although something wrote an old finish time.
        aged_run(RunStatus::Running, Some(at(5_000))),
        aged_run(RunStatus::Succeeded, Some(at(20_000))),
    ];
    for run in old.iter().chain(&keep) {
        run_with_data(&*store, run, 3).await?;
    }
    let counts = r.count_prunable(Some(cut), None).await?;
    assert_eq!(
        (counts.runs, counts.results, counts.logs),
        (4, 4, 12),
        "dry counts"
    );
    assert_eq!(r.prune_logs(cut, 1000).await?, 12, "logs of the old runs");
    assert_eq!(
        r.prune_results(cut, 1000).await?,
        4,
        "results of the old runs"
    );
    assert_eq!(r.prune_runs(cut, 1000).await?, 4, "the old runs");
    assert_eq!(r.prune_runs(cut, 1000).await?, 0, "nothing left");
    for run in &old {
        assert!(
            store.get_run(run.id).await?.is_none(),
            "{} pruned",
            run.status
        );
        assert!(store.read_logs(run.id, 0, 100).await?.is_empty());
    }
    for run in &keep {
        assert!(
            store.get_run(run.id).await?.is_some(),
            "{} kept",
            run.status
        );
        assert_eq!(
            store.read_logs(run.id, 0, 100).await?.len(),
            3,
            "{} logs kept",
            run.status
        );
        assert_eq!(
            store.step_results(run.id).await?.len(),
            1,
            "{} results kept",
            run.status
        );
    }
    // Queued work is still claimable.
    assert_eq!(store.claim_queued(&claim("w2", 10)).await?.len(), 1);
    Ok(())
}

/// Each prune call removes at most `limit` rows and reports how many.
pub async fn prune_works_in_bounded_batches(store: Arc<dyn Store>) -> Result<()> {
    let r = retention_of(&*store)?;
    let cut = at(10_000);
    let runs: Vec<Run> = (0..3)
        .map(|_| aged_run(RunStatus::Succeeded, Some(at(5_000))))
        .collect();
    for run in &runs {
        run_with_data(&*store, run, 9).await?;
    }
    let mut got = Vec::new();
    loop {
        let n = r.prune_logs(cut, 10).await?;
        got.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(got, vec![10, 10, 7, 0], "27 log chunks in batches of 10");
    assert_eq!(r.prune_results(cut, 2).await?, 2);
    assert_eq!(r.prune_runs(cut, 2).await?, 2, "runs in batches too");
    assert_eq!(r.prune_runs(cut, 2).await?, 1);
    assert_eq!(r.prune_runs(cut, 2).await?, 0);
    Ok(())
}

/// Logs may go sooner than run records: pruning logs with a later cut-off
/// keeps the runs and their results.
pub async fn prune_logs_before_runs(store: Arc<dyn Store>) -> Result<()> {
    let r = retention_of(&*store)?;
    let older = aged_run(RunStatus::Succeeded, Some(at(5_000)));
    let newer = aged_run(RunStatus::Failed, Some(at(15_000)));
    let recent = aged_run(RunStatus::Succeeded, Some(at(30_000)));
    for run in [&older, &newer, &recent] {
        run_with_data(&*store, run, 4).await?;
    }
    let (runs_cut, logs_cut) = (at(10_000), at(20_000));
    let counts = r.count_prunable(Some(runs_cut), Some(logs_cut)).await?;
    assert_eq!(
        (counts.runs, counts.logs),
        (1, 8),
        "one run; the logs of two"
    );
    assert_eq!(r.prune_logs(logs_cut, 1000).await?, 8);
    assert!(
        store.read_logs(newer.id, 0, 100).await?.is_empty(),
        "logs gone"
    );
    assert!(
        store.get_run(newer.id).await?.is_some(),
        "the run record stays"
    );
    assert_eq!(
        store.step_results(newer.id).await?.len(),
        1,
        "its results stay"
    );
    assert_eq!(store.read_logs(recent.id, 0, 100).await?.len(), 4);
    assert_eq!(r.prune_results(runs_cut, 1000).await?, 1);
    assert_eq!(r.prune_runs(runs_cut, 1000).await?, 1);
    assert!(store.get_run(older.id).await?.is_none());
    assert!(store.get_run(newer.id).await?.is_some());
    Ok(())
}

/// Audit pruning stores a checkpoint (the newest pruned event's seq and
/// hash) the first kept event chains to, deletes in batches, never deletes
/// the newest event (appends chain to it), and the export mark only rises.
pub async fn audit_prune_keeps_a_checkpoint(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::model::AuditEvent;
    let r = retention_of(&*store)?;
    let a = store.audit_store();
    assert!(r.audit_checkpoint().await?.is_none());
    for i in 0..10 {
        a.append_audit(&AuditEvent::now(
            "alice",
            "test.append",
            format!("obj:{i}"),
            json!({}),
        ))
        .await?;
    }
    let all = a.audit_after(0, 100).await?;
    let fourth = &all[3];
    assert_eq!(r.prune_audit(fourth.seq, 3).await?, 3, "a batch");
    let cp = found(r.audit_checkpoint().await?, "the checkpoint")?;
    assert_eq!(
        (cp.seq, cp.hash.as_str()),
        (fourth.seq, fourth.hash.as_str())
    );
    assert_eq!(r.prune_audit(fourth.seq, 3).await?, 1, "the rest up to it");
    assert_eq!(r.prune_audit(fourth.seq, 3).await?, 0);
    let kept = a.audit_after(0, 100).await?;
    assert_eq!(kept.len(), 6);
    assert_eq!(
        kept[0].prev_hash, cp.hash,
        "the first kept event chains to the checkpoint"
    );

    assert_eq!(r.prune_audit(u64::MAX, 100).await?, 5, "all but the newest");
    assert_eq!(a.audit_after(0, 100).await?.len(), 1);
    a.append_audit(&AuditEvent::now("alice", "test.append", "obj:x", json!({})))
        .await?;
    let after = a.audit_after(0, 100).await?;
    assert_eq!(after.len(), 2);
    assert_eq!(after[1].prev_hash, after[0].hash, "appends chain on");
    assert!(after[1].seq > after[0].seq);

    assert_eq!(r.audit_exported_through().await?, 0);
    r.set_audit_exported_through(7).await?;
    r.set_audit_exported_through(3).await?;
    assert_eq!(r.audit_exported_through().await?, 7, "never lowered");
    Ok(())
}
