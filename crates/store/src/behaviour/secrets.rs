//! Secrets and master key records.

use super::*;

fn secrets_of(store: &dyn Store) -> Result<&dyn opsconductor_core::store::SecretStore> {
    Ok(store.secret_store())
}

fn secret_record(
    name: &str,
    version: u32,
    key_version: u32,
    ct: &[u8],
) -> opsconductor_core::secrets::SecretRecord {
    let now = at(1_000);
    opsconductor_core::secrets::SecretRecord {
        id: format!("id-{name}"),
        ciphertext: ct.to_vec(),
        meta: opsconductor_core::secrets::SecretMeta {
            name: name.into(),
            kind: "password".into(),
            description: "d".into(),
            version,
            key_version,
            created_at: now,
            created_by: "alice".into(),
            updated_at: now,
            updated_by: "bob".into(),
        },
    }
}

/// Secrets: create (a taken name is a `Conflict`), every field round-trips,
/// updates are guarded by the value version, rewraps by the key version,
/// and every change (also a delete) leaves a history entry.
pub async fn secrets_create_update_rewrap_delete_with_history(store: Arc<dyn Store>) -> Result<()> {
    let ss = secrets_of(store.as_ref())?;
    let a = secret_record("a", 1, 1, b"ct-1");
    ss.create_secret(&a).await?;
    let dup = ss.create_secret(&a).await;
    assert_eq!(dup.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    assert_eq!(
        found(ss.get_secret("a").await?, "secret a")?,
        a,
        "every field round-trips"
    );
    ss.create_secret(&secret_record("b", 1, 1, b"ct-b")).await?;
    let names: Vec<String> = ss
        .list_secrets()
        .await?
        .into_iter()
        .map(|s| s.meta.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Update from version 1 to 2 works once; a stale update (1 → 2 again) is refused.
    let a2 = secret_record("a", 2, 1, b"ct-2");
    assert!(ss.update_secret(&a2).await?);
    assert!(
        !ss.update_secret(&a2).await?,
        "a stale update must not overwrite"
    );
    assert_eq!(found(ss.get_secret("a").await?, "a")?.ciphertext, b"ct-2");
    // Rewrap only from the expected key version.
    assert!(ss.rewrap_secret("a", 1, 2, b"ct-k2").await?);
    assert!(
        !ss.rewrap_secret("a", 1, 2, b"ct-other").await?,
        "already at key 2"
    );
    let now = found(ss.get_secret("a").await?, "a")?;
    assert_eq!(
        (
            now.meta.key_version,
            now.meta.version,
            now.ciphertext.as_slice()
        ),
        (2, 2, &b"ct-k2"[..])
    );
    assert!(ss.delete_secret("a", "carol").await?);
    assert!(!ss.delete_secret("a", "carol").await?);
    assert!(ss.get_secret("a").await?.is_none());
    let h: Vec<(String, String)> = ss
        .secret_history("a")
        .await?
        .into_iter()
        .map(|c| (c.action, c.by))
        .collect();
    assert_eq!(h.len(), 4, "{h:?}");
    assert_eq!(h[0], ("created".to_string(), "alice".to_string()));
    assert_eq!(h[1].0, "updated");
    assert!(h[2].0.starts_with("rewrapped"));
    assert_eq!(h[3], ("deleted".to_string(), "carol".to_string()));
    Ok(())
}

/// Key records: registering a version twice keeps the first; retiring works once.
pub async fn key_records_register_once_and_retire(store: Arc<dyn Store>) -> Result<()> {
    use opsconductor_core::secrets::KeyRecord;
    let ss = secrets_of(store.as_ref())?;
    let rec = |v: u32, check: &[u8]| KeyRecord {
        version: v,
        salt: Some(vec![1, 2, 3]),
        check: check.to_vec(),
        created_at: at(5),
        retired_at: None,
    };
    ss.put_key_record(&rec(1, b"first")).await?;
    ss.put_key_record(&rec(1, b"second")).await?;
    ss.put_key_record(&rec(2, b"two")).await?;
    let got = ss.key_records().await?;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], rec(1, b"first"), "the first registration stands");
    assert!(ss.retire_key(1).await?);
    assert!(!ss.retire_key(1).await?);
    assert!(ss.key_records().await?[0].retired_at.is_some());
    Ok(())
}
