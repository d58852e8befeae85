//! Schedules and fire records: apply, due, pause, and the exactly-once
//! commit (compare-and-set on the cursor plus the unique fire record).

use opsconductor_core::schedule::{
    FireOutcome, FireRecord, ScheduleDef, ScheduleSpec, ScheduledFire,
};
use opsconductor_core::store::FireCommit;

use super::*;

fn def(name: &str, next_fire: Option<DateTime<Utc>>) -> ScheduleDef {
    let mut d = ScheduleDef::new(ScheduleSpec::new(name, "deploy", "*/5 * * * *"));
    d.next_fire = next_fire;
    d
}

async fn apply_schedules(store: &dyn Store, defs: Vec<ScheduleDef>) -> Result<Vec<ApplyItem>> {
    store
        .apply(
            &ApplyBatch {
                jobs: vec![job_spec("deploy")],
                schedules: defs,
                ..Default::default()
            },
            "alice",
        )
        .await
}

fn fire(schedule: &str, t: DateTime<Utc>, outcome: FireOutcome, run: Option<RunId>) -> FireRecord {
    FireRecord {
        schedule: schedule.into(),
        fire_time: t,
        outcome,
        run_id: run,
        detail: None,
        decided_at: t,
        decided_by: "node-a".into(),
    }
}

/// A commit of one fire time of `schedule` moving its cursor from `from`,
/// with a fresh run.
fn commit_one(
    schedule: &str,
    generation: u64,
    from: DateTime<Utc>,
    next: DateTime<Utc>,
) -> FireCommit {
    let mut run = queued_run("deploy", from);
    run.schedule = Some(ScheduledFire {
        name: schedule.into(),
        fire_time: Some(from),
    });
    FireCommit {
        schedule: schedule.into(),
        generation,
        from: Some(from),
        next_fire: Some(next),
        fires: vec![fire(schedule, from, FireOutcome::Queued, Some(run.id))],
        promote: vec![],
        runs: vec![run],
    }
}

/// Schedules are stored by `apply` with the jobs (created, unchanged,
/// updated); an update bumps the generation and keeps a pause; delete
/// removes them.
pub async fn schedules_apply_with_jobs_and_keep_a_pause(store: Arc<dyn Store>) -> Result<()> {
    let items = apply_schedules(&*store, vec![def("nightly", Some(at(1000)))]).await?;
    assert!(
        items.contains(&item("schedule", "nightly", ApplyAction::Created, None)),
        "{items:?}"
    );
    let again = apply_schedules(&*store, vec![def("nightly", Some(at(2000)))]).await?;
    assert!(
        again.contains(&item("schedule", "nightly", ApplyAction::Unchanged, None)),
        "{again:?}"
    );
    let s = store.schedule_store();
    let got = found(s.get_schedule("nightly").await?, "schedule")?;
    assert_eq!(got.next_fire, Some(at(1000)), "unchanged keeps the cursor");
    assert_eq!(got.owner, "alice");
    assert!(!got.paused);
    assert!(s.set_schedule_paused("nightly", true, None).await?);
    let mut changed = def("nightly", Some(at(3000)));
    changed.spec.cron = "0 3 * * *".into();
    let upd = apply_schedules(&*store, vec![changed]).await?;
    assert!(upd.contains(&item("schedule", "nightly", ApplyAction::Updated, None)));
    let now = found(s.get_schedule("nightly").await?, "schedule")?;
    assert!(now.paused, "a re-apply does not resume a paused schedule");
    assert_eq!(now.next_fire, Some(at(3000)));
    assert!(
        now.generation >= got.generation + 2,
        "{} vs {}",
        now.generation,
        got.generation
    );
    assert_eq!(s.list_schedules().await?.len(), 1);
    assert!(s.delete_schedule("nightly").await?);
    assert!(!s.delete_schedule("nightly").await?);
    assert!(s.get_schedule("nightly").await?.is_none());
    Ok(())
}

/// `due_schedules`: only enabled, unpaused schedules due at `now`, oldest
/// fire time first; `earliest_fire` agrees.
pub async fn due_schedules_are_active_and_oldest_first(store: Arc<dyn Store>) -> Result<()> {
    let mut disabled = def("d-disabled", Some(at(100)));
    disabled.spec.enabled = false;
    apply_schedules(
        &*store,
        vec![
            def("b-later", Some(at(500))),
            def("a-first", Some(at(200))),
            def("c-future", Some(at(5000))),
            def("e-ended", None),
            def("f-paused", Some(at(50))),
            disabled,
        ],
    )
    .await?;
    let s = store.schedule_store();
    s.set_schedule_paused("f-paused", true, None).await?;
    let due: Vec<String> = s
        .due_schedules(at(1000), 10)
        .await?
        .into_iter()
        .map(|x| x.spec.name)
        .collect();
    assert_eq!(due, vec!["a-first", "b-later"]);
    assert_eq!(s.due_schedules(at(1000), 1).await?.len(), 1);
    assert_eq!(s.earliest_fire().await?, Some(at(200)));
    Ok(())
}

/// Eight schedulers commit the same decision at once: exactly one wins, one
/// fire record and one run exist; a later commit from the old cursor loses.
pub async fn fire_commits_are_exactly_once_under_races(store: Arc<dyn Store>) -> Result<()> {
    apply_schedules(&*store, vec![def("race", Some(at(1000)))]).await?;
    let s0 = found(
        store.schedule_store().get_schedule("race").await?,
        "schedule",
    )?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let c = commit_one("race", s0.generation, at(1000), at(2000));
        tasks.push(tokio::spawn(async move {
            store.schedule_store().commit_fires(&[c]).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        let won = t
            .await
            .map_err(|e| Error::Internal(format!("task: {e}")))??;
        wins += won.iter().filter(|w| **w).count();
    }
    assert_eq!(wins, 1, "exactly one scheduler commits a fire time");
    let runs = store
        .list_runs(&RunFilter {
            schedule: Some("race".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(runs.len(), 1, "one run for the fire time");
    let fires = store.schedule_store().fire_records("race", 10).await?;
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].run_id, Some(runs[0].id));
    let now = found(
        store.schedule_store().get_schedule("race").await?,
        "schedule",
    )?;
    assert_eq!(now.next_fire, Some(at(2000)));
    // The same fire time again, from a stale cursor: refused, nothing written.
    let late = store
        .schedule_store()
        .commit_fires(&[commit_one("race", s0.generation, at(1000), at(2000))])
        .await?;
    assert_eq!(late, vec![false]);
    // A duplicate fire record from a correct cursor fails the whole commit.
    let mut dup = commit_one("race", now.generation, at(2000), at(3000));
    dup.fires
        .push(fire("race", at(1000), FireOutcome::Skipped, None));
    let err = store.schedule_store().commit_fires(&[dup]).await;
    assert!(
        err.is_err(),
        "a fire record is unique per (schedule, fire time)"
    );
    let after = found(
        store.schedule_store().get_schedule("race").await?,
        "schedule",
    )?;
    assert_eq!(
        after.next_fire,
        Some(at(2000)),
        "nothing of a failed commit stays"
    );
    assert_eq!(
        store
            .list_runs(&RunFilter {
                schedule: Some("race".into()),
                ..Default::default()
            })
            .await?
            .len(),
        1
    );
    Ok(())
}

/// A decision made before a pause (older generation) is refused; a pending
/// fire time is promoted once, with its run.
pub async fn stale_generations_and_pending_promotions_are_refused(
    store: Arc<dyn Store>,
) -> Result<()> {
    apply_schedules(&*store, vec![def("q", Some(at(1000)))]).await?;
    let s = store.schedule_store();
    let g0 = found(s.get_schedule("q").await?, "schedule")?.generation;
    s.set_schedule_paused("q", true, None).await?;
    s.set_schedule_paused("q", false, Some(at(1000))).await?;
    assert_eq!(
        s.commit_fires(&[commit_one("q", g0, at(1000), at(2000))])
            .await?,
        vec![false],
        "a decision made before a pause/resume is stale"
    );
    let g = found(s.get_schedule("q").await?, "schedule")?.generation;
    let mut c = commit_one("q", g, at(1000), at(2000));
    c.fires = vec![fire("q", at(1000), FireOutcome::Pending, None)];
    c.runs = vec![];
    assert_eq!(s.commit_fires(&[c]).await?, vec![true]);
    let pending = s.pending_fires().await?;
    assert_eq!(pending.len(), 1);
    let run = queued_run("deploy", at(1500));
    let promote = |run: Run| FireCommit {
        schedule: "q".into(),
        generation: g,
        from: None,
        next_fire: None,
        fires: vec![],
        promote: vec![(at(1000), run.id)],
        runs: vec![run],
    };
    let first = s.commit_fires(&[promote(run.clone())]).await?;
    let second = s
        .commit_fires(&[promote(queued_run("deploy", at(1600)))])
        .await?;
    assert_eq!((first, second), (vec![true], vec![false]));
    assert!(s.pending_fires().await?.is_empty());
    let rec = s.fire_records("q", 10).await?;
    assert_eq!(rec[0].outcome, FireOutcome::Queued);
    assert_eq!(rec[0].run_id, Some(run.id));
    Ok(())
}

/// A scheduled run reads back with its schedule and fire time, is listed
/// by `schedule`, and counts as active until it ends.
pub async fn scheduled_runs_record_schedule_and_fire_time(store: Arc<dyn Store>) -> Result<()> {
    let mut run = queued_run("deploy", at(10));
    run.schedule = Some(ScheduledFire {
        name: "nightly".into(),
        fire_time: Some(at(5)),
    });
    let mut manual = queued_run("deploy", at(20));
    manual.schedule = Some(ScheduledFire {
        name: "nightly".into(),
        fire_time: None,
    });
    insert_all(
        &*store,
        vec![run.clone(), manual.clone(), queued_run("deploy", at(30))],
    )
    .await?;
    assert_eq!(found(store.get_run(run.id).await?, "run")?, run);
    assert_eq!(found(store.get_run(manual.id).await?, "run")?, manual);
    let listed = store
        .list_runs(&RunFilter {
            schedule: Some("nightly".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(ids(&listed), vec![manual.id, run.id]);
    let active = store.schedule_store().active_scheduled_runs().await?;
    assert_eq!(active.len(), 2);
    store.request_cancel(run.id).await?;
    let active = store.schedule_store().active_scheduled_runs().await?;
    assert_eq!(active, vec![("nightly".to_string(), manual.id)]);
    Ok(())
}
