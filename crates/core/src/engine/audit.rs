//! The audit log through the engine: recording events (with who, how and
//! where merged in), reading it newest first, and verifying its hash chain.

use serde::Serialize;

use super::{Conductor, Inner};
use crate::auth::Permission;
use crate::error::{Error, Result};
use crate::model::{Actor, AuditEvent};

/// The result of checking the audit chain.
#[derive(Debug, Clone, Serialize)]
pub struct AuditVerification {
    /// Events checked.
    pub events: u64,
    /// True if the chain is intact.
    pub ok: bool,
    /// The first event that is not what the chain says, if any.
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
    /// The newest event checked (its `seq`), `None` for an empty log. The
    /// chain alone cannot show that the newest events were deleted (what is
    /// left still chains); keep this and [`Self::head_hash`] somewhere else
    /// and pass them back to [`Conductor::verify_audit_against`] to detect that.
    pub head_seq: Option<u64>,
    /// The hash of the newest event checked.
    pub head_hash: Option<String>,
    /// Where verification started when older events were pruned: the
    /// stored checkpoint `(seq, hash)` of the newest pruned event.
    pub checkpoint: Option<crate::store::AuditCheckpoint>,
}

/// Largest page [`Conductor::audit_page`] returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Which page of the audit log to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events about this object (`run:ID`, `secret:NAME`, …).
    pub object: Option<String>,
    /// Only events with a smaller `seq` (the previous page's `next_before`).
    pub before: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// The events.
    pub events: Vec<AuditEvent>,
    /// The `before` of the next (older) page; `None` on the last page.
    pub next_before: Option<u64>,
}

impl Inner {
    /// Records an audit event by `actor`, with who/how/where merged into `detail`.
    pub(crate) async fn audit_as(
        &self,
        actor: &Actor,
        action: &str,
        object: String,
        detail: serde_json::Value,
    ) {
        let mut d = actor.audit_detail();
        if let (Some(m), serde_json::Value::Object(extra)) = (d.as_object_mut(), detail) {
            m.extend(extra);
        }
        self.audit(AuditEvent::now(&actor.name, action, object, d))
            .await;
    }

    pub(crate) async fn audit(&self, ev: AuditEvent) {
        if let Err(e) = self.store.audit_store().append_audit(&ev).await {
            tracing::error!(error = %e, action = %ev.action, "recording an audit event failed");
        }
    }
}

impl Conductor {
    /// The audit log, newest first.
    pub async fn audit_log(
        &self,
        object: Option<&str>,
        limit: usize,
        actor: &Actor,
    ) -> Result<Vec<AuditEvent>> {
        actor.require(Permission::ReadAudit)?;
        self.inner
            .store
            .audit_store()
            .list_audit(object, limit)
            .await
    }

    /// One page of the audit log, newest first: at most `q.limit` events
    /// (1 to [`MAX_AUDIT_PAGE`]) older than `q.before`, optionally about one
    /// object. One bounded store query per page, whatever the filter.
    pub async fn audit_page(&self, q: &AuditQuery, actor: &Actor) -> Result<AuditPage> {
        actor.require(Permission::ReadAudit)?;
        if !(1..=MAX_AUDIT_PAGE).contains(&q.limit) {
            return Err(Error::validation(
                "limit",
                format!("{} is out of range (1-{MAX_AUDIT_PAGE})", q.limit),
            ));
        }
        let a = self.inner.store.audit_store();
        let object = q.object.as_deref();
        let mut events = match q.before {
            None => a.list_audit(object, q.limit + 1).await?,
            Some(b) => a.audit_before(object, b, q.limit + 1).await?,
        };
        let next_before = if events.len() > q.limit {
            events.truncate(q.limit);
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_before,
        })
    }

    /// Records an audit event on behalf of a front end (e.g. a denied request).
    pub async fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        object: &str,
        detail: serde_json::Value,
    ) {
        self.inner
            .audit_as(actor, action, object.to_string(), detail)
            .await;
    }

    /// Recomputes the audit hash chain and reports the first event that was
    /// altered, deleted or reordered.
    pub async fn verify_audit(&self, actor: &Actor) -> Result<AuditVerification> {
        self.verify_audit_against(None, actor).await
    }

    /// Like [`Conductor::verify_audit`], and also checks an anchor: the
    /// `(head_seq, head_hash)` of an earlier verification, kept outside the
    /// database. The event it names must still be there with that hash.
    /// Without an anchor, deleting the newest events leaves a chain that
    /// verifies; with one, deletions up to the anchor are detected.
    pub async fn verify_audit_against(
        &self,
        anchor: Option<(u64, &str)>,
        actor: &Actor,
    ) -> Result<AuditVerification> {
        actor.require(Permission::ReadAudit)?;
        let a = self.inner.store.audit_store();
        // After pruning, the chain starts at the stored checkpoint: the first
        // kept event must chain to its hash.
        let checkpoint = self
            .inner
            .store
            .retention_store()
            .audit_checkpoint()
            .await?;
        let mut prev = checkpoint
            .as_ref()
            .map(|c| c.hash.clone())
            .unwrap_or_default();
        let mut last_seq = checkpoint.as_ref().map_or(0, |c| c.seq);
        let mut count = 0u64;
        let mut anchor_seen = false;
        if let (Some((anchor_seq, anchor_hash)), Some(c)) = (anchor, &checkpoint)
            && anchor_seq <= c.seq
        {
            // The anchor's event was pruned; an anchor at the checkpoint itself
            // must match it, older ones are covered by the archived export.
            if anchor_seq == c.seq && anchor_hash != c.hash {
                return Ok(AuditVerification {
                    events: 0,
                    ok: false,
                    first_bad_seq: Some(anchor_seq),
                    problem: Some("the checkpoint is not the event the anchor recorded (another hash): the checkpoint was rewritten".to_string()),
                    head_seq: None,
                    head_hash: None,
                    checkpoint,
                });
            }
            anchor_seen = true;
        }
        let bad = |count: u64, seq: u64, head: Option<(u64, String)>, p: String| {
            let (head_seq, head_hash) = head.unzip();
            AuditVerification {
                events: count,
                ok: false,
                first_bad_seq: Some(seq),
                problem: Some(p),
                head_seq,
                head_hash,
                checkpoint: checkpoint.clone(),
            }
        };
        loop {
            let page = a.audit_after(last_seq, 1000).await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                count += 1;
                let problem = if e.prev_hash != prev {
                    Some(if count == 1 && checkpoint.is_some() {
                        "it does not chain to the checkpoint of the pruned events: events after the checkpoint were deleted, or the checkpoint was altered".to_string()
                    } else if count == 1 && !e.prev_hash.is_empty() {
                        "the chain does not start at the first event: events before it were deleted"
                            .to_string()
                    } else {
                        "its predecessor is not the event it was chained to: an event before it was deleted or reordered".to_string()
                    })
                } else if e.chain_hash(&e.prev_hash) != e.hash {
                    Some("its content does not match its hash: the event was altered".to_string())
                } else {
                    None
                };
                if let Some(p) = problem {
                    return Ok(bad(count, e.seq, None, p));
                }
                if let Some((anchor_seq, anchor_hash)) = anchor
                    && e.seq == anchor_seq
                {
                    if e.hash != anchor_hash {
                        return Ok(bad(
                            count,
                            e.seq,
                            None,
                            "it is not the event the anchor recorded (another hash): the chain was rewritten from here, e.g. the newest events were deleted and others appended".to_string(),
                        ));
                    }
                    anchor_seen = true;
                }
                prev = e.hash.clone();
                last_seq = e.seq;
            }
        }
        let head = (count > 0).then(|| (last_seq, prev.clone()));
        if let Some((anchor_seq, _)) = anchor
            && !anchor_seen
        {
            return Ok(bad(
                count,
                anchor_seq,
                head,
                if count == 0 {
                    "the anchor's event is missing: every event was deleted".to_string()
                } else if last_seq < anchor_seq {
                    format!(
                        "the anchor's event is missing: the events after event {last_seq} were deleted"
                    )
                } else {
                    "the anchor's event is missing: it was deleted and the events after it were chained anew".to_string()
                },
            ));
        }
        let (head_seq, head_hash) = head.unzip();
        Ok(AuditVerification {
            events: count,
            ok: true,
            first_bad_seq: None,
            problem: None,
            head_seq,
            head_hash,
            checkpoint,
        })
    }
}
