//! Runs: recording, finding and listing.

use super::*;

/// Every field of a run survives the store, with every option set and with
/// none set.
pub async fn run_round_trips_every_field(store: Arc<dyn Store>) -> Result<()> {
    let mut spec = job_spec("deploy");
    spec.timeout = Some(Duration::from_secs(600));
    spec.steps.push(step(
        "script",
        Action::Script {
            interpreter: "bash".into(),
            body: "echo ok".into(),
        },
    ));
    let full = Run {
        id: RunId::new(),
        job: "deploy".into(),
        job_version: Some(7),
        spec,
        params: json!({ "version": "2.0", "flags": ["a", "ü"], "n": 3, "deep": { "x": null } }),
        targets: vec!["web-2".into(), "web-1".into(), "db".into()],
        status: RunStatus::Failed,
        requested_by: "alice@example.com".into(),
        attempt: 3,
        worker: Some("host-a:1234".into()),
        lease_until: Some(at(90_000)),
        cancel_requested: true,
        error: Some("step 'build' failed on web-1: exit code 2".into()),
        created_at: at(1),
        started_at: Some(at(2_500)),
        finished_at: Some(at(80_123)),
        request_id: Some("req-7f3a".into()),
        schedule: None,
        parent: None,
    };
    let mut bare = queued_run("exec", at(5));
    bare.job_version = None;
    bare.params = serde_json::Value::Null;
    bare.targets = vec![];
    for run in [&full, &bare] {
        store.insert_run(run).await?;
        assert_eq!(
            store.get_run(run.id).await?.as_ref(),
            Some(run),
            "run {} round-trips",
            run.job
        );
    }
    assert_eq!(store.get_run(RunId::new()).await?, None, "an unknown run");
    Ok(())
}

/// Inserting a run whose id already exists is a conflict and changes nothing.
pub async fn insert_run_refuses_an_existing_id(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    store.insert_run(&run).await?;
    let mut again = run.clone();
    again.job = "other".into();
    match store.insert_run(&again).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        Ok(()) => panic!("a second run with the same id was accepted"),
    }
    assert_eq!(store.get_run(run.id).await?, Some(run));
    Ok(())
}

/// Runs are found by an id prefix (any case), at most 2, and wildcard
/// characters in the prefix match nothing but themselves.
pub async fn find_runs_by_prefix(store: Arc<dyn Store>) -> Result<()> {
    let a = fixed_id("0190aaaa-0000-7000-8000-000000000001")?;
    let b = fixed_id("0190aaaa-0000-7000-8000-000000000002")?;
    let c = fixed_id("0190aaab-0000-7000-8000-000000000003")?;
    let d = fixed_id("0190aaaa-1111-7000-8000-000000000004")?;
    for (i, id) in [a, b, c, d].into_iter().enumerate() {
        let mut run = queued_run("deploy", at(i64::try_from(i).unwrap_or(0)));
        run.id = id;
        store.insert_run(&run).await?;
    }
    let find = |prefix: String| {
        let store = store.clone();
        async move {
            let mut ids = store.find_runs_by_prefix(&prefix).await?;
            ids.sort();
            Ok::<_, Error>(ids)
        }
    };
    assert_eq!(find("0190aaab".into()).await?, vec![c], "a unique prefix");
    assert_eq!(find("0190AAAB".into()).await?, vec![c], "upper case");
    assert_eq!(find(a.to_string()).await?, vec![a], "a whole id");
    assert_eq!(find("0190aaaa-1".into()).await?, vec![d]);
    assert_eq!(
        find("0190aaaa".into()).await?.len(),
        2,
        "an ambiguous prefix gives at most 2"
    );
    assert_eq!(
        find("0190aaaa-0000-7000-8000-00000000000".into()).await?,
        vec![a, b]
    );
    assert!(find("0191".into()).await?.is_empty(), "no match");
    assert!(find("%".into()).await?.is_empty(), "`%` is not a wildcard");
    assert!(
        find("0190aaa_".into()).await?.is_empty(),
        "`_` is not a wildcard"
    );
    Ok(())
}

/// `list_runs` is newest first (ties by id, descending) and filters by job,
/// by statuses and with a limit (0: 50).
pub async fn list_runs_newest_first_with_filters(store: Arc<dyn Store>) -> Result<()> {
    let statuses = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::TimedOut,
    ];
    let mut runs = Vec::new();
    for i in 0..60_i64 {
        let job = if i % 3 == 0 { "backup" } else { "deploy" };
        // Pairs share a creation time, so ties are broken by id.
        let mut run = queued_run(job, at(i / 2));
        run.status = statuses[usize::try_from(i).unwrap_or(0) % statuses.len()];
        runs.push(run);
    }
    let runs = insert_all(&*store, runs).await?;
    let mut newest_first = runs.clone();
    newest_first.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));

    let list = |filter: RunFilter| {
        let store = store.clone();
        async move { store.list_runs(&filter).await }
    };
    let expect = |keep: &dyn Fn(&Run) -> bool, limit: usize| -> Vec<RunId> {
        newest_first
            .iter()
            .filter(|r| keep(r))
            .take(limit)
            .map(|r| r.id)
            .collect()
    };

    let all = list(RunFilter::default()).await?;
    assert_eq!(ids(&all), expect(&|_| true, 50), "no limit: the newest 50");
    assert_eq!(all[0], newest_first[0], "listed runs are complete");

    let got = list(RunFilter {
        limit: 7,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(ids(&got), expect(&|_| true, 7), "limit");

    let got = list(RunFilter {
        job: Some("backup".into()),
        limit: 100,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(ids(&got), expect(&|r| r.job == "backup", 100), "by job");
    assert_eq!(got.len(), 20);

    let wanted = [RunStatus::Failed, RunStatus::Queued];
    let got = list(RunFilter {
        statuses: wanted.to_vec(),
        limit: 100,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(
        ids(&got),
        expect(&|r| wanted.contains(&r.status), 100),
        "by statuses"
    );

    let got = list(RunFilter {
        job: Some("deploy".into()),
        statuses: vec![RunStatus::Running],
        limit: 3,
        ..RunFilter::default()
    })
    .await?;
    assert_eq!(
        ids(&got),
        expect(&|r| r.job == "deploy" && r.status == RunStatus::Running, 3),
        "job, status and limit together"
    );

    assert!(
        list(RunFilter {
            job: Some("nothing".into()),
            ..RunFilter::default()
        })
        .await?
        .is_empty()
    );
    Ok(())
}

/// `before` pages through every run exactly once, newest first, also
/// across runs created at the same instant, and combines with filters;
/// `before` an unknown run is `NotFound`.
pub async fn list_runs_pages_with_before(store: Arc<dyn Store>) -> Result<()> {
    let runs: Vec<Run> = (0..25_i64)
        .map(|i| queued_run(if i % 2 == 0 { "even" } else { "odd" }, at(i / 3)))
        .collect();
    let runs = insert_all(&*store, runs).await?;
    let mut expected = runs.clone();
    expected.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));

    for job in [None, Some("even")] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .list_runs(&RunFilter {
                    job: job.map(str::to_string),
                    before,
                    limit: 4,
                    ..RunFilter::default()
                })
                .await?;
            assert!(page.len() <= 4);
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            seen.extend(ids(&page));
        }
        let want: Vec<RunId> = expected
            .iter()
            .filter(|r| job.is_none_or(|j| r.job == j))
            .map(|r| r.id)
            .collect();
        assert_eq!(seen, want, "paging with before (job {job:?})");
    }
    let unknown = store
        .list_runs(&RunFilter {
            before: Some(RunId::new()),
            ..RunFilter::default()
        })
        .await;
    match unknown {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
        Ok(runs) => panic!("`before` an unknown run listed {} runs", runs.len()),
    }
    Ok(())
}
