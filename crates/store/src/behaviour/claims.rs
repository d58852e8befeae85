//! The queue: claims, take-overs of expired leases, heartbeats, finishing and cancelling.

use super::*;

/// `claim_queued` takes the oldest queued runs first and makes them
/// `running` for the caller: worker, attempt + 1, lease, start time.
pub async fn claim_takes_the_oldest_first(store: Arc<dyn Store>) -> Result<()> {
    let base = now_ms() - TimeDelta::hours(1);
    let offsets = [5, 1, 4, 2, 3];
    let mut runs = Vec::new();
    for o in offsets {
        runs.push(queued_run("deploy", base + TimeDelta::seconds(o)));
    }
    let mut not_queued = running_run("deploy", "other", now_ms() + TimeDelta::hours(1));
    not_queued.created_at = base - TimeDelta::hours(1);
    runs.push(not_queued.clone());
    let runs = insert_all(&*store, runs).await?;
    let by_offset = |o: i64| {
        runs.iter()
            .find(|r| r.created_at == base + TimeDelta::seconds(o))
            .map(|r| r.id)
    };

    let before = Utc::now();
    let lease = Duration::from_secs(90);
    let got = store
        .claim_queued(&Claim {
            worker: "w1".into(),
            lease,
            limit: 2,
            only: None,
        })
        .await?;
    let after = Utc::now();
    assert_eq!(
        got.iter().map(|r| Some(r.id)).collect::<Vec<_>>(),
        vec![by_offset(1), by_offset(2)],
        "the two oldest queued runs, oldest first"
    );
    for run in &got {
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.worker.as_deref(), Some("w1"));
        assert_eq!(run.attempt, 1);
        let until = found(run.lease_until, "lease_until")?;
        let lease = TimeDelta::from_std(lease).unwrap_or_default();
        let slack = TimeDelta::seconds(1);
        assert!(
            until >= before + lease - slack && until <= after + lease + slack,
            "lease ends `lease` from now"
        );
        let started = found(run.started_at, "started_at")?;
        assert!(started >= before - slack && started <= after + slack);
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "stored as returned"
        );
    }

    let next = store.claim_queued(&claim("w2", 10)).await?;
    assert_eq!(
        next.iter().map(|r| Some(r.id)).collect::<Vec<_>>(),
        vec![by_offset(3), by_offset(4), by_offset(5)],
        "the rest, oldest first; never a run that is not queued"
    );
    assert!(store.claim_queued(&claim("w3", 10)).await?.is_empty());
    assert_eq!(store.get_run(not_queued.id).await?, Some(not_queued));
    Ok(())
}

/// `claim_queued` never returns more than `limit` runs, and with `only`
/// takes just that run, if it is queued.
pub async fn claim_honours_limit_and_only(store: Arc<dyn Store>) -> Result<()> {
    let base = now_ms() - TimeDelta::minutes(5);
    let runs: Vec<Run> = (0..6)
        .map(|i| queued_run("deploy", base + TimeDelta::seconds(i)))
        .collect();
    let runs = insert_all(&*store, runs).await?;

    assert!(
        store.claim_queued(&claim("w", 0)).await?.is_empty(),
        "limit 0 claims nothing"
    );
    let got = store.claim_queued(&claim("w", 2)).await?;
    assert_eq!(ids(&got), ids(&runs[..2]), "at most `limit`");

    let newest = runs[5].id;
    let got = store
        .claim_queued(&Claim {
            only: Some(newest),
            ..claim("w", 10)
        })
        .await?;
    assert_eq!(ids(&got), vec![newest], "`only` takes just that run");
    let again = store
        .claim_queued(&Claim {
            only: Some(newest),
            ..claim("w", 10)
        })
        .await?;
    assert!(again.is_empty(), "`only` on a run no longer queued");
    let missing = store
        .claim_queued(&Claim {
            only: Some(RunId::new()),
            ..claim("w", 10)
        })
        .await?;
    assert!(missing.is_empty(), "`only` on an unknown run");

    let rest = store.claim_queued(&claim("w", 10)).await?;
    assert_eq!(ids(&rest), ids(&runs[2..5]));
    for run in &runs[2..5] {
        assert_eq!(
            store.get_run(run.id).await?.map(|r| r.status),
            Some(RunStatus::Running)
        );
    }
    Ok(())
}

/// 16 callers claiming 3 at a time from 200 queued runs: every run is
/// claimed exactly once, by the caller the store says holds it.
pub async fn concurrent_claims_hand_each_run_to_one_caller(store: Arc<dyn Store>) -> Result<()> {
    let base = now_ms() - TimeDelta::hours(1);
    let mut all = HashSet::new();
    for i in 0..200 {
        let run = queued_run("load", base + TimeDelta::milliseconds(i));
        all.insert(run.id);
        store.insert_run(&run).await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            let worker = format!("worker-{w}");
            let mut mine = Vec::new();
            loop {
                let got = store.claim_queued(&claim(&worker, 3)).await?;
                assert!(
                    got.len() <= 3,
                    "{worker} got {} runs with limit 3",
                    got.len()
                );
                if got.is_empty() {
                    break;
                }
                for run in got {
                    assert_eq!(run.worker.as_deref(), Some(worker.as_str()));
                    mine.push(run.id);
                }
            }
            Ok::<_, Error>((worker, mine))
        });
    }
    let mut owner: HashMap<RunId, String> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker, mine) =
            joined.map_err(|e| Error::Internal(format!("a claiming task failed: {e}")))??;
        for id in mine {
            if let Some(first) = owner.insert(id, worker.clone()) {
                panic!("run {id} was claimed twice: by {first} and by {worker}");
            }
        }
    }
    assert_eq!(owner.len(), 200, "every run was claimed");
    assert_eq!(owner.keys().copied().collect::<HashSet<_>>(), all);
    for (id, worker) in &owner {
        let run = found(store.get_run(*id).await?, "claimed run")?;
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(
            run.worker.as_ref(),
            Some(worker),
            "the store agrees on the owner"
        );
        assert_eq!(run.attempt, 1, "claimed once");
    }
    Ok(())
}

/// `claim_expired` takes over only `running` runs whose lease ended before
/// `now`: not live leases, not queued runs, not finished runs.
pub async fn claim_expired_takes_only_expired_running_runs(store: Arc<dyn Store>) -> Result<()> {
    let now = now_ms();
    let expired = running_run("deploy", "dead", now - TimeDelta::seconds(30));
    let older_expired = running_run("deploy", "dead", now - TimeDelta::minutes(5));
    let live = running_run("deploy", "alive", now + TimeDelta::minutes(5));
    let queued = queued_run("deploy", now - TimeDelta::hours(1));
    let mut finished = running_run("deploy", "dead", now - TimeDelta::minutes(1));
    finished.status = RunStatus::Succeeded;
    finished.finished_at = Some(now - TimeDelta::minutes(2));
    let untouched = [live.clone(), queued.clone(), finished.clone()];
    insert_all(
        &*store,
        vec![
            expired.clone(),
            older_expired.clone(),
            live,
            queued,
            finished,
        ],
    )
    .await?;

    let lease = Duration::from_secs(120);
    let got = store
        .claim_expired(
            &Claim {
                worker: "rescuer".into(),
                lease,
                limit: 10,
                only: None,
            },
            now,
        )
        .await?;
    let mut got_ids = ids(&got);
    got_ids.sort();
    let mut want = vec![expired.id, older_expired.id];
    want.sort();
    assert_eq!(got_ids, want, "exactly the expired running runs");
    for run in &got {
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.worker.as_deref(), Some("rescuer"));
        assert_eq!(run.attempt, 2, "a takeover is a new attempt");
        assert_eq!(
            run.lease_until,
            Some(now + TimeDelta::from_std(lease).unwrap_or_default()),
            "the new lease runs from `now`"
        );
        assert!(run.started_at.is_some(), "start time kept");
        assert_eq!(store.get_run(run.id).await?.as_ref(), Some(run));
    }
    for run in &untouched {
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "{:?} untouched",
            run.status
        );
    }
    assert!(
        store
            .claim_expired(&claim("again", 10), now)
            .await?
            .is_empty(),
        "the new leases have not ended"
    );

    // The limit holds here too.
    let more: Vec<Run> = (0..3)
        .map(|i| running_run("deploy", "dead", now - TimeDelta::seconds(10 + i)))
        .collect();
    insert_all(&*store, more).await?;
    assert_eq!(store.claim_expired(&claim("r", 2), now).await?.len(), 2);
    assert_eq!(store.claim_expired(&claim("r", 0), now).await?.len(), 0);
    assert_eq!(store.claim_expired(&claim("r", 5), now).await?.len(), 1);
    Ok(())
}

/// A run whose owner finished it after its lease ended is never taken over,
/// and after a takeover the old owner can no longer finish it.
pub async fn claim_expired_never_touches_a_run_finished_meanwhile(
    store: Arc<dyn Store>,
) -> Result<()> {
    let slow = queued_run("deploy", now_ms() - TimeDelta::minutes(1));
    let late = queued_run("deploy", now_ms() - TimeDelta::seconds(30));
    insert_all(&*store, vec![slow.clone(), late.clone()]).await?;
    let claimed = store.claim_queued(&claim("w1", 2)).await?;
    assert_eq!(claimed.len(), 2);
    let later = Utc::now() + TimeDelta::hours(1);

    // Both leases have ended by `later`; `slow`'s worker finishes anyway.
    assert!(
        store
            .finish_run(slow.id, "w1", 1, RunStatus::Succeeded, None)
            .await?
    );
    let finished = found(store.get_run(slow.id).await?, "run")?;

    let taken = store.claim_expired(&claim("w2", 10), later).await?;
    assert_eq!(ids(&taken), vec![late.id], "only the run still running");
    assert_eq!(
        store.get_run(slow.id).await?,
        Some(finished),
        "the finished run is untouched"
    );
    assert!(
        !store
            .finish_run(late.id, "w1", 1, RunStatus::Failed, Some("too late"))
            .await?,
        "the old owner cannot finish a run taken over"
    );
    let run = found(store.get_run(late.id).await?, "run")?;
    assert_eq!(
        (run.status, run.worker.as_deref(), run.attempt),
        (RunStatus::Running, Some("w2"), 2)
    );
    Ok(())
}

/// `heartbeat` extends the lease only for the current owner (worker and
/// attempt) of a running run; anyone else gets `false` and changes nothing.
pub async fn heartbeat_only_for_the_owner(store: Arc<dyn Store>) -> Result<()> {
    let queued = queued_run("deploy", now_ms() - TimeDelta::minutes(1));
    store.insert_run(&queued).await?;
    let later = now_ms() + TimeDelta::hours(2);
    assert!(
        !store.heartbeat(queued.id, "w1", 0, later).await?,
        "a queued run has no owner"
    );

    let run = store
        .claim_queued(&claim("w1", 1))
        .await?
        .pop()
        .ok_or_else(|| Error::Internal("nothing claimed".into()))?;
    for (worker, attempt, why) in [
        ("w2", 1, "another worker"),
        ("w1", 2, "another attempt"),
        ("w1", 0, "a stale attempt"),
    ] {
        assert!(
            !store.heartbeat(run.id, worker, attempt, later).await?,
            "heartbeat by {why}"
        );
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(&run),
            "unchanged after {why}"
        );
    }
    assert!(
        !store.heartbeat(RunId::new(), "w1", 1, later).await?,
        "an unknown run"
    );

    assert!(store.heartbeat(run.id, "w1", 1, later).await?, "the owner");
    let after = found(store.get_run(run.id).await?, "run")?;
    assert_eq!(after.lease_until, Some(later), "lease extended");
    assert_eq!(after.status, RunStatus::Running);

    // A takeover by the same worker name is a new attempt: the old one is stale.
    let taken = store
        .claim_expired(&claim("w1", 1), later + TimeDelta::seconds(1))
        .await?;
    assert_eq!(taken.len(), 1);
    assert!(
        !store.heartbeat(run.id, "w1", 1, later).await?,
        "attempt 1 lost the run"
    );
    assert!(
        store
            .heartbeat(run.id, "w1", 2, later + TimeDelta::hours(1))
            .await?
    );
    Ok(())
}

/// `finish_run` ends a run only for its current owner: final state, error,
/// finish time, no lease. Anyone else, or a second finish, gets `false`.
pub async fn finish_run_only_for_the_owner(store: Arc<dyn Store>) -> Result<()> {
    let runs: Vec<Run> = (0..2)
        .map(|i| queued_run("deploy", now_ms() - TimeDelta::minutes(5 - i)))
        .collect();
    insert_all(&*store, runs.clone()).await?;
    assert!(
        !store
            .finish_run(runs[0].id, "w1", 0, RunStatus::Succeeded, None)
            .await?,
        "a queued run has no owner"
    );
    let claimed = store.claim_queued(&claim("w1", 2)).await?;
    let (run, other) = (&claimed[0], &claimed[1]);

    for (worker, attempt, why) in [("w2", 1, "another worker"), ("w1", 2, "another attempt")] {
        assert!(
            !store
                .finish_run(run.id, worker, attempt, RunStatus::Failed, Some("x"))
                .await?,
            "finish by {why}"
        );
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "unchanged after {why}"
        );
    }
    assert!(
        store
            .finish_run(run.id, "w1", 1, RunStatus::Running, None)
            .await
            .is_err(),
        "finishing needs a final state"
    );
    assert!(
        !store
            .finish_run(RunId::new(), "w1", 1, RunStatus::Failed, None)
            .await?,
        "an unknown run"
    );

    let before = Utc::now() - TimeDelta::seconds(1);
    assert!(
        store
            .finish_run(run.id, "w1", 1, RunStatus::Failed, Some("exit code 3"))
            .await?
    );
    let done = found(store.get_run(run.id).await?, "run")?;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("exit code 3"));
    assert_eq!(done.lease_until, None, "lease cleared");
    assert!(
        done.finished_at.is_some_and(|t| t >= before),
        "finish time set"
    );
    assert_eq!((done.worker.as_deref(), done.attempt), (Some("w1"), 1));
    assert!(
        !store
            .finish_run(run.id, "w1", 1, RunStatus::Succeeded, None)
            .await?,
        "a finished run cannot be finished again"
    );
    assert_eq!(store.get_run(run.id).await?, Some(done));

    assert!(
        store
            .finish_run(other.id, "w1", 1, RunStatus::TimedOut, None)
            .await?
    );
    let timed_out = found(store.get_run(other.id).await?, "run")?;
    assert_eq!(
        (timed_out.status, timed_out.error),
        (RunStatus::TimedOut, None)
    );
    Ok(())
}

/// `request_cancel`: queued → `cancelled` at once; running → flagged
/// `cancel_requested`; finished → unchanged; unknown → `None`.
pub async fn request_cancel_in_each_state(store: Arc<dyn Store>) -> Result<()> {
    let now = now_ms();
    let running_src = queued_run("deploy", now - TimeDelta::minutes(10));
    let queued = queued_run("deploy", now - TimeDelta::minutes(1));
    insert_all(&*store, vec![running_src.clone(), queued.clone()]).await?;
    let running = store
        .claim_queued(&Claim {
            only: Some(running_src.id),
            ..claim("w1", 1)
        })
        .await?
        .pop()
        .ok_or_else(|| Error::Internal("nothing claimed".into()))?;
    let mut finished = queued_run("deploy", now - TimeDelta::minutes(20));
    finished.status = RunStatus::Succeeded;
    finished.finished_at = Some(now - TimeDelta::minutes(15));
    store.insert_run(&finished).await?;

    let before = Utc::now() - TimeDelta::seconds(1);
    let c = found(store.request_cancel(queued.id).await?, "cancelled run")?;
    assert_eq!(
        c.status,
        RunStatus::Cancelled,
        "a queued run is cancelled at once"
    );
    assert!(c.cancel_requested);
    assert!(c.finished_at.is_some_and(|t| t >= before), "and finished");
    assert_eq!(
        store.get_run(queued.id).await?.as_ref(),
        Some(&c),
        "returned as stored"
    );
    assert!(
        store
            .claim_queued(&Claim {
                only: Some(queued.id),
                ..claim("w2", 1)
            })
            .await?
            .is_empty(),
        "a cancelled run is not claimed"
    );

    assert_eq!(store.cancel_requested(running.id).await?, Some(false));
    let r = found(store.request_cancel(running.id).await?, "running run")?;
    let mut want = running.clone();
    want.cancel_requested = true;
    assert_eq!(r, want, "a running run is only flagged");
    assert_eq!(
        store.cancel_requested(running.id).await?,
        Some(true),
        "the flag alone reads as stored"
    );
    assert_eq!(store.cancel_requested(RunId::new()).await?, None);
    assert!(
        store
            .heartbeat(running.id, "w1", 1, now + TimeDelta::minutes(5))
            .await?,
        "its owner still owns it"
    );

    let f = found(store.request_cancel(finished.id).await?, "finished run")?;
    assert_eq!(f, finished, "a finished run is unchanged");

    let again = found(store.request_cancel(queued.id).await?, "cancelled run")?;
    assert_eq!(again, c, "cancelling twice changes nothing");

    assert_eq!(
        store.request_cancel(RunId::new()).await?,
        None,
        "unknown run"
    );
    Ok(())
}
