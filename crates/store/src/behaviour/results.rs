//! Step results: upserts, order and pages.

use super::*;

/// Step results are upserted by (run, step, target) and read back by step,
/// then target, with every field intact.
pub async fn step_results_upsert_and_order(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    let result = |step: u32, target: &str| StepResult {
        run_id: run.id,
        step,
        target: target.into(),
        status: StepStatus::Running,
        exit_code: None,
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(1_000 + i64::from(step)),
        finished_at: None,
        try_no: 1,
        tries: vec![],
        outputs: Default::default(),
        children: Vec::new(),
    };
    for (step, target) in [
        (1, "web-2"),
        (0, "web-2"),
        (1, "db"),
        (0, "web-1"),
        (10, "a"),
        (2, "a"),
    ] {
        store.put_step_result(&result(step, target)).await?;
    }
    store
        .put_step_result(&StepResult {
            run_id: other.id,
            ..result(0, "web-1")
        })
        .await?;
    let order: Vec<_> = store
        .step_results(run.id)
        .await?
        .into_iter()
        .map(|r| (r.step, r.target))
        .collect();
    assert_eq!(
        order,
        vec![
            (0, "web-1".to_string()),
            (0, "web-2".into()),
            (1, "db".into()),
            (1, "web-2".into()),
            (2, "a".into()),
            (10, "a".into()),
        ],
        "by step (numerically), then target; only this run's"
    );

    let done = StepResult {
        status: StepStatus::Failed,
        exit_code: Some(-1),
        signal: Some(9),
        error: Some("killed by signal 9 — out of memory?".into()),
        attempt: 2,
        started_at: at(5_000),
        finished_at: Some(at(6_789)),
        outputs: Default::default(),
        children: Vec::new(),
        ..result(1, "db")
    };
    store.put_step_result(&done).await?;
    let results = store.step_results(run.id).await?;
    assert_eq!(results.len(), 6, "an upsert adds no row");
    assert_eq!(results[2], done, "replaced, every field intact");
    assert_eq!(results[0], result(0, "web-1"));
    assert!(store.step_results(RunId::new()).await?.is_empty());
    Ok(())
}

/// A result fixture: `step` of `run` on `target`, running since `at(step)`.
fn running_result(run: RunId, step: u32, target: &str) -> StepResult {
    StepResult {
        run_id: run,
        step,
        target: target.into(),
        status: StepStatus::Running,
        exit_code: None,
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(i64::from(step)),
        finished_at: None,
        try_no: 1,
        tries: vec![],
        outputs: Default::default(),
        children: Vec::new(),
    }
}

/// `step_results_page` walks a run's results in the order of
/// `step_results` (by step numerically, then target), strictly after the
/// `(step, target)` cursor, at most `limit` a page; the pages together are
/// every result exactly once, and only this run's.
pub async fn step_results_page_walks_every_result_once(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    for step in [0, 1, 2, 10] {
        for target in ["web-2", "db", "web-1"] {
            store
                .put_step_result(&running_result(run.id, step, target))
                .await?;
        }
    }
    store
        .put_step_result(&running_result(other.id, 0, "db"))
        .await?;
    let all = store.step_results(run.id).await?;
    assert_eq!(all.len(), 12);

    let mut walked = Vec::new();
    let mut after: Option<(u32, String)> = None;
    let mut pages = 0;
    loop {
        let cursor = after.as_ref().map(|(s, t)| (*s, t.as_str()));
        let page = store.step_results_page(run.id, cursor, 5).await?;
        assert!(page.len() <= 5, "a page holds at most `limit` results");
        let Some(last) = page.last() else { break };
        after = Some((last.step, last.target.clone()));
        walked.extend(page);
        pages += 1;
        assert!(pages <= 3, "12 results in pages of 5 take 3 pages");
    }
    assert_eq!(pages, 3);
    assert_eq!(walked, all, "the pages, in order, are every result once");

    let first = store.step_results_page(run.id, None, 0).await?;
    assert_eq!(first, all, "limit 0 is the default page (1000)");
    let mid = &all[4];
    let rest = store
        .step_results_page(run.id, Some((mid.step, &mid.target)), 100)
        .await?;
    assert_eq!(rest, all[5..], "strictly after the cursor");
    let past = store
        .step_results_page(run.id, Some((2, "zzz")), 100)
        .await?;
    assert_eq!(
        past.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![10, 10, 10],
        "a cursor that names no result still orders by (step, target)"
    );
    let last = &all[11];
    assert!(
        store
            .step_results_page(run.id, Some((last.step, &last.target)), 100)
            .await?
            .is_empty(),
        "nothing after the last result"
    );
    assert!(
        store
            .step_results_page(RunId::new(), None, 10)
            .await?
            .is_empty()
    );
    Ok(())
}

/// `put_step_results_as` writes all of a batch for the run's holder, and
/// nothing for anyone else; `run_status` reads just the status.
pub async fn guarded_result_batches_are_all_or_nothing(store: Arc<dyn Store>) -> Result<()> {
    let run = running_run("deploy", "w1", now_ms() + TimeDelta::minutes(5));
    insert_all(&*store, vec![run.clone()]).await?;
    let result = |step: u32, target: &str, status: StepStatus| StepResult {
        run_id: run.id,
        step,
        target: target.into(),
        status,
        exit_code: None,
        signal: None,
        error: None,
        attempt: run.attempt,
        started_at: at(1_000 + i64::from(step)),
        finished_at: None,
        try_no: 1,
        tries: vec![],
        outputs: Default::default(),
        children: Vec::new(),
    };
    assert!(
        store.put_step_results_as("w1", &[]).await?,
        "an empty batch"
    );
    assert!(
        store
            .put_step_results_as(
                "w1",
                &[
                    result(0, "web-1", StepStatus::Succeeded),
                    result(1, "web-1", StepStatus::Running),
                ],
            )
            .await?,
        "the holder writes"
    );
    assert!(
        !store
            .put_step_results_as(
                "w2",
                &[
                    result(1, "web-1", StepStatus::Failed),
                    result(2, "web-1", StepStatus::Running),
                ],
            )
            .await?,
        "another worker is refused"
    );
    let stored: Vec<_> = store
        .step_results(run.id)
        .await?
        .into_iter()
        .map(|r| (r.step, r.status))
        .collect();
    assert_eq!(
        stored,
        vec![(0, StepStatus::Succeeded), (1, StepStatus::Running)],
        "the refused batch wrote nothing"
    );
    assert_eq!(store.run_status(run.id).await?, Some(RunStatus::Running));
    assert_eq!(store.run_status(RunId::new()).await?, None);
    Ok(())
}

/// A page of results: by step (numerically), then target in byte order,
/// strictly after the cursor, at most `limit`, only the run's own; paging
/// with the last result of each page as the next cursor visits every
/// result once.
pub async fn step_results_page_after_a_cursor(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    let result = |run_id: RunId, step: u32, target: &str| StepResult {
        run_id,
        step,
        target: target.into(),
        status: StepStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(1_000),
        finished_at: Some(at(2_000)),
        try_no: 1,
        tries: vec![],
        outputs: Default::default(),
        children: Vec::new(),
    };
    // Byte order: upper case before lower case, "web-10" before "web-2".
    let targets = ["Web", "web-1", "web-10", "web-2", "\u{e9}t\u{e9}"];
    for step in [10u32, 2, 0, 1] {
        for t in targets {
            store.put_step_result(&result(run.id, step, t)).await?;
        }
    }
    store.put_step_result(&result(other.id, 1, "web-1")).await?;
    let mut expected: Vec<(u32, String)> = [0u32, 1, 2, 10]
        .iter()
        .flat_map(|s| targets.iter().map(move |t| (*s, t.to_string())))
        .collect();
    expected.sort_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
    let key = |r: StepResult| (r.step, r.target);

    let first: Vec<_> = store
        .step_results_page(run.id, None, 3)
        .await?
        .into_iter()
        .map(key)
        .collect();
    assert_eq!(first, expected[..3].to_vec(), "the first page");
    let mut seen = Vec::new();
    let mut after: Option<(u32, String)> = None;
    loop {
        let page = store
            .step_results_page(run.id, after.as_ref().map(|(s, t)| (*s, t.as_str())), 3)
            .await?;
        assert!(page.len() <= 3, "at most `limit`");
        let Some(last) = page.last() else { break };
        after = Some((last.step, last.target.clone()));
        seen.extend(page.into_iter().map(key));
    }
    assert_eq!(seen, expected, "every result once, in order");
    let tail = store
        .step_results_page(run.id, Some((2, "web-10")), 100)
        .await?;
    assert_eq!(
        tail.into_iter().map(key).collect::<Vec<_>>(),
        expected[expected
            .iter()
            .position(|e| *e == (2, "web-10".into()))
            .unwrap_or(0)
            + 1..]
            .to_vec(),
        "strictly after the cursor"
    );
    assert!(
        store
            .step_results_page(RunId::new(), None, 10)
            .await?
            .is_empty()
    );
    Ok(())
}
