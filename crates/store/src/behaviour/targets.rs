//! Targets.

use super::*;

/// Targets are created, read, listed by name and deleted.
pub async fn targets_crud(store: Arc<dyn Store>) -> Result<()> {
    assert!(store.list_targets().await?.is_empty());
    assert_eq!(store.get_target("db").await?, None);
    store
        .apply(
            &ApplyBatch {
                targets: vec![ssh_target("web"), ssh_target("db"), Target::local()],
                jobs: vec![],
                ..Default::default()
            },
            "alice",
        )
        .await?;
    let names: Vec<_> = store
        .list_targets()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["db", "local", "web"], "listed by name");
    assert_eq!(store.get_target("db").await?, Some(ssh_target("db")));

    assert!(
        store.delete_target("db").await?,
        "deleting an existing target"
    );
    assert!(!store.delete_target("db").await?, "deleting it again");
    assert!(!store.delete_target("never").await?);
    assert_eq!(store.get_target("db").await?, None);
    assert_eq!(store.list_targets().await?.len(), 2);
    Ok(())
}

/// Every field of a target survives the store, for each kind of connection.
pub async fn target_round_trips_every_field(store: Arc<dyn Store>) -> Result<()> {
    let ssh = Target {
        name: "web-1".into(),
        description: "Front end — «prod»".into(),
        tags: vec!["web".into(), "prod".into()],
        vars: BTreeMap::from([
            ("role".into(), json!("frontend")),
            ("weights".into(), json!({ "a": [1, 2.5, null, true] })),
        ]),
        connection: Connection::Ssh {
            host: "10.0.0.5".into(),
            port: 2222,
            user: "deploy".into(),
            host_key: Some("SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
            known_hosts: Some("/etc/opsconductor/known_hosts".into()),
        },
        credential: Some("deploy-key".into()),
    };
    let winrm = Target {
        name: "win-1".into(),
        connection: Connection::Winrm {
            host: "win.example.internal".into(),
            port: 5985,
            tls: false,
            auth: "basic".into(),
        },
        credential: Some("win-admin".into()),
        ..ssh_target("win-1")
    };
    let docker = Target {
        name: "box".into(),
        connection: Connection::Docker {
            image: "alpine:3.20".into(),
            limits: BTreeMap::from([
                ("memory".into(), json!("256m")),
                ("cpus".into(), json!(1.5)),
            ]),
        },
        ..ssh_target("box")
    };
    let all = vec![ssh, winrm, docker, Target::local()];
    store
        .apply(
            &ApplyBatch {
                targets: all.clone(),
                jobs: vec![],
                ..Default::default()
            },
            "alice",
        )
        .await?;
    for target in &all {
        assert_eq!(
            store.get_target(&target.name).await?.as_ref(),
            Some(target),
            "target {} round-trips",
            target.name
        );
    }
    Ok(())
}
