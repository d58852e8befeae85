//! The audit log.

use super::*;

/// The audit chain: concurrent appends from many tasks still form one
/// linear chain (each event's `prev_hash` is its predecessor's `hash`, and
/// each `hash` is the event's chain hash).
pub async fn audit_chain_stays_linear_under_concurrent_appends(
    store: Arc<dyn Store>,
) -> Result<()> {
    use opsconductor_core::model::AuditEvent;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let a = store.audit_store();
            for i in 0..10 {
                a.append_audit(&AuditEvent::now(
                    &format!("task{t}"),
                    "test.append",
                    format!("obj:{i}"),
                    json!({"i": i}),
                ))
                .await?;
            }
            Ok::<(), opsconductor_core::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| opsconductor_core::Error::Internal(e.to_string()))??;
    }
    let a = store.audit_store();
    let all = a.audit_after(0, 1000).await?;
    assert_eq!(all.len(), 80);
    let mut prev = String::new();
    for (n, e) in all.iter().enumerate() {
        assert_eq!(
            e.prev_hash, prev,
            "event {n} is not chained to its predecessor"
        );
        assert_eq!(e.hash, e.chain_hash(&e.prev_hash), "event {n}'s hash");
        prev = e.hash.clone();
    }
    let newest = a.list_audit(Some("obj:3"), 100).await?;
    assert_eq!(newest.len(), 8);
    assert!(
        newest.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    Ok(())
}
