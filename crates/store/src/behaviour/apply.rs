//! Targets and jobs written together: `Store::apply`.

use super::*;

/// `apply` reports Created, then Updated (a new job version) on a change,
/// then Unchanged (no new version) for an equal spec; items come back in
/// batch order, targets first.
pub async fn apply_creates_updates_and_reports_unchanged(store: Arc<dyn Store>) -> Result<()> {
    let batch = ApplyBatch {
        targets: vec![ssh_target("web-2"), ssh_target("web-1")],
        jobs: vec![job_spec("deploy"), job_spec("backup")],
        ..Default::default()
    };
    let items = store.apply(&batch, "alice").await?;
    assert_eq!(
        items,
        vec![
            item("target", "web-2", ApplyAction::Created, None),
            item("target", "web-1", ApplyAction::Created, None),
            item("job", "deploy", ApplyAction::Created, Some(1)),
            item("job", "backup", ApplyAction::Created, Some(1)),
        ],
        "first apply creates everything, in batch order"
    );

    let items = store.apply(&batch, "bob").await?;
    assert_eq!(
        items,
        vec![
            item("target", "web-2", ApplyAction::Unchanged, None),
            item("target", "web-1", ApplyAction::Unchanged, None),
            item("job", "deploy", ApplyAction::Unchanged, Some(1)),
            item("job", "backup", ApplyAction::Unchanged, Some(1)),
        ],
        "applying the same batch again changes nothing"
    );
    assert_eq!(
        store.job_versions("deploy").await?.len(),
        1,
        "no new version"
    );

    let mut web1 = ssh_target("web-1");
    web1.tags.push("canary".into());
    let mut deploy = job_spec("deploy");
    deploy.description = "Ships the app".into();
    let items = store
        .apply(
            &ApplyBatch {
                targets: vec![web1.clone(), ssh_target("web-2")],
                jobs: vec![job_spec("backup"), deploy.clone()],
                ..Default::default()
            },
            "carol",
        )
        .await?;
    assert_eq!(
        items,
        vec![
            item("target", "web-1", ApplyAction::Updated, None),
            item("target", "web-2", ApplyAction::Unchanged, None),
            item("job", "backup", ApplyAction::Unchanged, Some(1)),
            item("job", "deploy", ApplyAction::Updated, Some(2)),
        ],
        "a changed target is updated, a changed job gets version 2"
    );
    assert_eq!(store.get_target("web-1").await?, Some(web1));
    let latest = found(store.get_job("deploy", None).await?, "job deploy")?;
    assert_eq!((latest.version, &latest.spec), (2, &deploy));
    assert_eq!(
        latest.created_by, "carol",
        "`by` is recorded on the new version"
    );
    Ok(())
}

/// `apply` is atomic: when an item fails, nothing of the batch is stored,
/// including the items before it, and existing objects keep their state.
pub async fn apply_is_atomic(store: Arc<dyn Store>) -> Result<()> {
    store
        .apply(
            &ApplyBatch {
                targets: vec![ssh_target("existing")],
                jobs: vec![job_spec("existing-job")],
                ..Default::default()
            },
            "alice",
        )
        .await?;

    let mut changed = ssh_target("existing");
    changed.description = "changed by the failing batch".into();
    let mut changed_job = job_spec("existing-job");
    changed_job.description = "changed by the failing batch".into();
    // The last item is invalid (a repeated name), so it fails after every
    // other item of the batch was already written.
    let failing = ApplyBatch {
        targets: vec![changed, ssh_target("new-target")],
        jobs: vec![changed_job, job_spec("new-job"), job_spec("new-job")],
        ..Default::default()
    };
    let err = store.apply(&failing, "mallory").await;
    assert!(err.is_err(), "a batch with a repeated job name must fail");

    assert_eq!(store.get_target("new-target").await?, None, "no new target");
    assert_eq!(store.get_job("new-job", None).await?, None, "no new job");
    assert_eq!(
        store.get_target("existing").await?,
        Some(ssh_target("existing")),
        "an existing target keeps its state"
    );
    let versions = store.job_versions("existing-job").await?;
    assert_eq!(versions.len(), 1, "an existing job gets no version");
    assert_eq!(versions[0].spec, job_spec("existing-job"));

    // And a good batch is visible as a whole.
    let items = store
        .apply(
            &ApplyBatch {
                targets: (0..20).map(|i| ssh_target(&format!("t{i:02}"))).collect(),
                jobs: (0..20).map(|i| job_spec(&format!("j{i:02}"))).collect(),
                ..Default::default()
            },
            "alice",
        )
        .await?;
    assert_eq!(items.len(), 40);
    assert_eq!(store.list_targets().await?.len(), 21);
    assert_eq!(store.list_jobs().await?.len(), 21);
    Ok(())
}

/// `apply` refuses, as validation errors, a target or job without a name
/// and a name given twice in one batch.
pub async fn apply_rejects_unnamed_and_repeated_objects(store: Arc<dyn Store>) -> Result<()> {
    let batches = [
        ApplyBatch {
            targets: vec![ssh_target("")],
            jobs: vec![],
            ..Default::default()
        },
        ApplyBatch {
            targets: vec![],
            jobs: vec![job_spec("ok"), job_spec("")],
            ..Default::default()
        },
        ApplyBatch {
            targets: vec![ssh_target("twice"), ssh_target("twice")],
            jobs: vec![],
            ..Default::default()
        },
        ApplyBatch {
            targets: vec![],
            jobs: vec![job_spec("twice"), job_spec("twice")],
            ..Default::default()
        },
    ];
    for (i, batch) in batches.iter().enumerate() {
        match store.apply(batch, "alice").await {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Validation, "batch {i}: {e}"),
            Ok(items) => panic!("batch {i} should be rejected, got {items:?}"),
        }
    }
    assert!(store.list_targets().await?.is_empty());
    assert!(store.list_jobs().await?.is_empty());
    Ok(())
}
