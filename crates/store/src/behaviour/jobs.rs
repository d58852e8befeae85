//! Job definitions: versions, the latest of each.

use super::*;

/// Each change adds a version; old versions stay as they were; going back
/// to an older spec is a change too (a new version with the old content).
pub async fn job_versions_are_immutable_and_listed_oldest_first(
    store: Arc<dyn Store>,
) -> Result<()> {
    let v1 = job_spec("deploy");
    let mut v2 = v1.clone();
    v2.steps.push(step(
        "restart",
        Action::Exec {
            command: "systemctl restart app".into(),
        },
    ));
    for (spec, by) in [(&v1, "alice"), (&v2, "bob"), (&v1, "carol")] {
        store
            .apply(
                &ApplyBatch {
                    targets: vec![],
                    jobs: vec![spec.clone()],
                    ..Default::default()
                },
                by,
            )
            .await?;
    }
    let versions = store.job_versions("deploy").await?;
    let summary: Vec<_> = versions
        .iter()
        .map(|j| (j.version, &j.spec, j.created_by.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![(1, &v1, "alice"), (2, &v2, "bob"), (3, &v1, "carol")],
        "versions oldest first, each as stored"
    );
    assert!(versions[0].created_at <= versions[2].created_at);
    assert_eq!(
        store.get_job("deploy", Some(2)).await?.map(|j| j.spec),
        Some(v2),
        "a version is read back by number"
    );
    assert_eq!(
        store.get_job("deploy", None).await?.map(|j| j.version),
        Some(3),
        "no version given: the latest"
    );
    assert_eq!(store.get_job("deploy", Some(4)).await?, None);
    assert_eq!(store.get_job("missing", None).await?, None);
    assert!(store.job_versions("missing").await?.is_empty());
    Ok(())
}

/// `list_jobs` gives the latest version of every job, by name.
pub async fn list_jobs_returns_the_latest_version_of_each(store: Arc<dyn Store>) -> Result<()> {
    let mut b2 = job_spec("b");
    b2.description = "second".into();
    for jobs in [
        vec![job_spec("c"), job_spec("b")],
        vec![b2.clone(), job_spec("a")],
    ] {
        store
            .apply(
                &ApplyBatch {
                    targets: vec![],
                    jobs,
                    ..Default::default()
                },
                "alice",
            )
            .await?;
    }
    let listed: Vec<_> = store
        .list_jobs()
        .await?
        .into_iter()
        .map(|j| (j.spec.name.clone(), j.version, j.spec))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".into(), 1, job_spec("a")),
            ("b".into(), 2, b2),
            ("c".into(), 1, job_spec("c")),
        ]
    );
    Ok(())
}

/// Every field of a job spec survives the store, with a step of each kind.
pub async fn job_spec_round_trips_every_field(store: Arc<dyn Store>) -> Result<()> {
    let mut exec = step(
        "build",
        Action::Exec {
            command: "make release VERSION={{ params.version }}".into(),
        },
    );
    exec.timeout = Some(Duration::from_secs(30));
    exec.continue_on_error = true;
    exec.idempotent = true;
    exec.env = BTreeMap::from([("RUST_LOG".into(), "debug".into())]);
    exec.workdir = Some("/srv/app".into());
    exec.raw = true;
    let script = step(
        "migrate",
        Action::Script {
            interpreter: "python3".into(),
            body: "import sys\nprint('héllo', sys.argv)\n".into(),
        },
    );
    let inline = step(
        "config",
        Action::Copy {
            dest: "/etc/app.conf".into(),
            content: Some("port = {{ params.port }}\n".into()),
            src: None,
            mode: 0o600,
        },
    );
    let from_file = step(
        "binary",
        Action::Copy {
            dest: "/usr/local/bin/app".into(),
            content: None,
            src: Some("target/release/app".into()),
            mode: 0o755,
        },
    );
    let spec = JobSpec {
        name: "deploy".into(),
        description: "Builds and ships".into(),
        tags: vec!["prod".into(), "app".into()],
        status: JobStatus::Draft,
        params: json!({
            "type": "object",
            "properties": { "version": { "type": "string" }, "port": { "type": "integer" } },
            "required": ["version"]
        }),
        targets: vec!["tag:web".into(), "db-1".into()],
        concurrency: 3,
        timeout: Some(Duration::from_secs(5400)),
        secrets: vec!["deploy-key".into(), "api-token".into()],
        notify: vec![],
        steps: vec![exec, script, inline, from_file],
        strategy: Default::default(),
        batch: None,
        pause: None,
        max_failures: None,
        retry: None,
        on_failure: vec![],
        finally: vec![],
        approval: Some(opsconductor_core::approval::ApprovalSpec {
            required: 2,
            approvers: opsconductor_core::approval::Approvers {
                roles: vec![],
                users: vec!["alice".into(), "bob".into()],
            },
            expires: Some(Duration::from_secs(7200)),
            reason_required: true,
        }),
    };
    store
        .apply(
            &ApplyBatch {
                targets: vec![],
                jobs: vec![spec.clone()],
                ..Default::default()
            },
            "alice",
        )
        .await?;
    let stored = found(store.get_job("deploy", None).await?, "job deploy")?;
    assert_eq!(stored.spec, spec, "the job spec round-trips");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.created_by, "alice");
    Ok(())
}
