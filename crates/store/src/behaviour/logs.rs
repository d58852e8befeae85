//! Log chunks.

use super::*;

/// Log chunks come back in `seq` order whatever the order of appends,
/// after `after`, at most `limit`, every field intact (any bytes).
pub async fn logs_read_back_in_seq_order(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    let all: Vec<LogChunk> = (1..=10)
        .map(|s| chunk(run.id, s, &format!("line {s}\n")))
        .collect();
    store.append_logs(&[all[4].clone(), all[2].clone()]).await?;
    store.append_logs(&all[5..]).await?;
    store
        .append_logs(&[all[1].clone(), all[0].clone(), all[3].clone()])
        .await?;
    store
        .append_logs(&[chunk(other.id, 1, "other run\n")])
        .await?;
    store.append_logs(&[]).await?;

    assert_eq!(store.read_logs(run.id, 0, 100).await?, all, "in seq order");
    assert_eq!(store.read_logs(run.id, 4, 100).await?, all[4..], "after 4");
    assert_eq!(
        store.read_logs(run.id, 4, 3).await?,
        all[4..7],
        "after 4, at most 3"
    );
    assert!(
        store.read_logs(run.id, 10, 100).await?.is_empty(),
        "after the last"
    );
    assert!(store.read_logs(RunId::new(), 0, 100).await?.is_empty());
    assert_eq!(store.read_logs(other.id, 0, 100).await?.len(), 1);

    let odd = LogChunk {
        run_id: run.id,
        seq: 11,
        step: None,
        target: None,
        stream: Stream::System,
        data: vec![0, 159, 146, 150, 255, b'\n', 0],
        time: at(123_456),
        try_no: 1,
    };
    let err = LogChunk {
        seq: 12,
        step: Some(7),
        target: Some("db".into()),
        stream: Stream::Stderr,
        data: vec![],
        ..odd.clone()
    };
    store.append_logs(&[odd.clone(), err.clone()]).await?;
    assert_eq!(
        store.read_logs(run.id, 10, 100).await?,
        vec![odd, err],
        "every field intact, bytes as given"
    );
    Ok(())
}

/// Appending an existing `(run, seq)` is an error-free no-op: a retried
/// batch never duplicates and never overwrites.
pub async fn log_append_of_an_existing_seq_is_a_no_op(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    store.insert_run(&run).await?;
    let first: Vec<LogChunk> = (1..=3).map(|s| chunk(run.id, s, "original\n")).collect();
    store.append_logs(&first).await?;
    store.append_logs(&first).await?;
    assert_eq!(
        store.read_logs(run.id, 0, 100).await?,
        first,
        "a retried batch"
    );

    let overlapping: Vec<LogChunk> = (2..=5).map(|s| chunk(run.id, s, "retry\n")).collect();
    store.append_logs(&overlapping).await?;
    let got = store.read_logs(run.id, 0, 100).await?;
    let mut want = first.clone();
    want.extend_from_slice(&overlapping[2..]);
    assert_eq!(got, want, "existing chunks kept, new ones added");

    // Many chunks in one call, half of them already there.
    let big: Vec<LogChunk> = (1..=1500).map(|s| chunk(run.id, s, "bulk\n")).collect();
    store.append_logs(&big).await?;
    let got = store.read_logs(run.id, 0, 5000).await?;
    assert_eq!(got.len(), 1500);
    assert_eq!(got[..5], want[..], "the first chunks are the originals");
    assert!(got.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(store.last_log_seq(run.id).await?, 1500);
    Ok(())
}

/// `last_log_seq` is the highest stored `seq` of the run, 0 without logs.
pub async fn last_log_seq(store: Arc<dyn Store>) -> Result<()> {
    let run = queued_run("deploy", at(0));
    let other = queued_run("deploy", at(1));
    insert_all(&*store, vec![run.clone(), other.clone()]).await?;
    assert_eq!(store.last_log_seq(run.id).await?, 0);
    assert_eq!(store.last_log_seq(RunId::new()).await?, 0, "unknown run");
    store
        .append_logs(&[
            chunk(run.id, 2, "b"),
            chunk(run.id, 7, "c"),
            chunk(run.id, 1, "a"),
        ])
        .await?;
    store.append_logs(&[chunk(other.id, 40, "x")]).await?;
    assert_eq!(store.last_log_seq(run.id).await?, 7);
    assert_eq!(store.last_log_seq(other.id).await?, 40);
    Ok(())
}

/// Step results and log chunks of a run that does not exist are refused
/// (and nothing of such a log batch is stored).
pub async fn logs_and_step_results_need_an_existing_run(store: Arc<dyn Store>) -> Result<()> {
    let ghost = RunId::new();
    let result = StepResult {
        run_id: ghost,
        step: 0,
        target: "local".into(),
        status: StepStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        error: None,
        attempt: 1,
        started_at: at(0),
        finished_at: Some(at(1)),
        try_no: 1,
        tries: vec![],
        outputs: Default::default(),
        children: Vec::new(),
    };
    assert!(
        store.put_step_result(&result).await.is_err(),
        "a step result"
    );
    assert!(store.step_results(ghost).await?.is_empty());

    let run = queued_run("deploy", at(0));
    store.insert_run(&run).await?;
    let mixed = [chunk(run.id, 1, "ok"), chunk(ghost, 1, "ghost")];
    assert!(store.append_logs(&mixed).await.is_err(), "a log chunk");
    assert!(
        store.read_logs(run.id, 0, 10).await?.is_empty(),
        "nothing of the refused batch is stored"
    );
    Ok(())
}
