//! Deliverers: claim due deliveries under a lease (like runs), send each
//! through its channel, record the attempt and schedule the next one with
//! exponential backoff and jitter, honouring `Retry-After`, until the retry
//! time runs out.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;

use super::super::Inner;
use super::render;
use super::send::{self, Mail, Post, Sent};
use super::types::{Attempt, AttemptOutcome, Channel, ChannelSpec, Delivery, DeliveryNext};

/// Deliveries claimed at once.
const CLAIM_BATCH: usize = 16;
/// Deliveries sent at the same time by one deliverer.
const CONCURRENCY: usize = 8;

/// The delay before attempt `n + 1` after `n` failed ones: `base · 2^(n-1)`
/// capped at `max`, then "equal jitter" (half fixed, half random), so
/// many deliverers retrying one receiver spread out.
pub(crate) fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let exp = base
        .checked_mul(
            1u32.checked_shl(n.saturating_sub(1).min(30))
                .unwrap_or(u32::MAX),
        )
        .unwrap_or(max)
        .min(max);
    let half = exp / 2;
    let mut r = [0u8; 8];
    let frac = if getrandom::fill(&mut r).is_ok() {
        (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64
    } else {
        0.5
    };
    half + half.mul_f64(frac)
}

/// What to do after an attempt.
pub(crate) fn next_step(d: &Delivery, sent: &Sent, base: Duration, max: Duration) -> DeliveryNext {
    match sent.outcome {
        AttemptOutcome::Delivered => DeliveryNext::Delivered,
        AttemptOutcome::Failed => DeliveryNext::GiveUp,
        AttemptOutcome::Retry => {
            let delay = sent
                .retry_after
                .unwrap_or_else(|| backoff(d.attempts, base, max));
            let at = chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d));
            match at {
                Some(at) if at <= d.give_up_at => DeliveryNext::RetryAt(at),
                _ => DeliveryNext::GiveUp,
            }
        }
    }
}

/// The deliverer of this process: runs until shutdown.
pub(crate) async fn deliver_loop(inner: Arc<Inner>) {
    let s = inner.notify.settings.clone();
    let worker = format!("{}/notify", inner.config.worker_name);
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let claimed = inner
            .store
            .notify_store()
            .claim_deliveries(&worker, s.lease, CLAIM_BATCH, Utc::now())
            .await;
        let batch = match claimed {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "claiming notifications failed; retrying");
                vec![]
            }
        };
        let full = batch.len() == CLAIM_BATCH;
        futures::stream::iter(batch)
            .for_each_concurrent(CONCURRENCY, |d| {
                let inner = inner.clone();
                let worker = worker.clone();
                async move { deliver_one(&inner, &worker, d).await }
            })
            .await;
        if full {
            continue;
        }
        tokio::select! {
            _ = inner.notify.wake.notified() => {}
            _ = tokio::time::sleep(s.poll) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// One claimed delivery: send, record, schedule.
async fn deliver_one(inner: &Inner, worker: &str, d: Delivery) {
    let sent = match inner.store.notify_store().get_channel(&d.channel).await {
        Ok(Some(ch)) => match serde_json::from_str::<Value>(&d.payload) {
            Ok(payload) => send_to(inner, &ch, &payload, d.event_id, d.id).await,
            Err(e) => failed(format!("the stored payload is not JSON: {e}")),
        },
        Ok(None) => failed(format!("channel '{}' does not exist (deleted?)", d.channel)),
        Err(e) => Sent {
            outcome: AttemptOutcome::Retry,
            code: None,
            reply: None,
            error: Some(format!("cannot read the channel: {e}")),
            retry_after: None,
            latency: Duration::ZERO,
        },
    };
    // The attempt's time is when its send started: its end less its latency.
    let at =
        Utc::now() - chrono::Duration::from_std(sent.latency).unwrap_or(chrono::Duration::zero());
    let s = &inner.notify.settings;
    let next = next_step(&d, &sent, s.backoff_base, s.backoff_max);
    let masker = inner.notify_masker().await;
    let attempt = Attempt {
        delivery_id: d.id,
        n: d.attempts,
        at,
        latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
        outcome: sent.outcome,
        code: sent.code,
        reply: sent.reply.map(|r| masker.mask_str(&r)),
        error: sent.error.map(|e| masker.mask_str(&e)),
        worker: worker.to_string(),
    };
    match inner
        .store
        .notify_store()
        .record_attempt(&attempt, next)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(delivery = %d.id, "a notification's lease ended before its attempt was recorded; another deliverer may send it again")
        }
        Err(e) => {
            tracing::warn!(delivery = %d.id, error = %e, "recording a notification attempt failed; it will be sent again after its lease")
        }
    }
}

fn failed(error: String) -> Sent {
    Sent {
        outcome: AttemptOutcome::Failed,
        code: None,
        reply: None,
        error: Some(error),
        retry_after: None,
        latency: Duration::ZERO,
    }
}

fn retry(error: String) -> Sent {
    Sent {
        outcome: AttemptOutcome::Retry,
        ..failed(error)
    }
}

/// Sends an event through a channel (one attempt).
pub(crate) async fn send_to(
    inner: &Inner,
    ch: &Channel,
    payload: &Value,
    event_id: uuid::Uuid,
    delivery_id: uuid::Uuid,
) -> Sent {
    let s = &inner.notify.settings;
    let masker = inner.notify_masker().await;
    let mut payload = payload.clone();
    render::mask_json(&mut payload, &masker);
    let kind = payload
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("event")
        .to_string();
    let guard = s.block_private_addresses;
    let client = match inner.notify.client() {
        Ok(c) => c,
        Err(e) => return retry(e),
    };
    match &ch.spec {
        ChannelSpec::Webhook {
            url,
            signing_secret,
            headers,
            template,
        } => {
            let body = match template {
                Some(t) => match render::render(t, &payload, &masker) {
                    Ok(b) => b,
                    Err(e) => return failed(e),
                },
                None => payload.to_string(),
            };
            let mut hs: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            hs.push((send::EVENT_HEADER.into(), kind));
            hs.push((send::EVENT_ID_HEADER.into(), event_id.to_string()));
            hs.push((send::DELIVERY_HEADER.into(), delivery_id.to_string()));
            if let Some(secret) = signing_secret {
                let key = match inner.channel_secret(secret).await {
                    Ok(k) => k,
                    Err(e) => return retry(format!("signing key: {e}")),
                };
                let ts = Utc::now().timestamp();
                hs.push((send::TIMESTAMP_HEADER.into(), ts.to_string()));
                hs.push((
                    send::SIGNATURE_HEADER.into(),
                    format!("v1={}", send::sign(&key, ts, body.as_bytes())),
                ));
            }
            send::post(
                &client,
                Post {
                    url,
                    body,
                    headers: hs,
                    guard,
                },
            )
            .await
        }
        ChannelSpec::Slack { url, url_secret } => {
            let url = match (url, url_secret) {
                (Some(u), _) => u.clone(),
                (None, Some(sec)) => match inner.channel_secret(sec).await {
                    Ok(v) => match String::from_utf8(v) {
                        Ok(u) => u.trim().to_string(),
                        Err(_) => return failed(format!("secret '{sec}' is not a URL")),
                    },
                    Err(e) => return retry(format!("webhook URL: {e}")),
                },
                (None, None) => return failed("the channel has no URL".into()),
            };
            if let Err(e) = super::types::check_url("url", &url) {
                return failed(e.to_string());
            }
            let mut msg = render::slack_message(&payload);
            render::mask_json(&mut msg, &masker);
            send::post(
                &client,
                Post {
                    url: &url,
                    body: msg.to_string(),
                    headers: vec![],
                    guard,
                },
            )
            .await
        }
        ChannelSpec::Email {
            host,
            port,
            tls,
            ca_pem,
            username,
            password_secret,
            from,
            to,
            subject,
            body,
        } => {
            let credentials = match (username, password_secret) {
                (Some(u), Some(p)) => match inner.channel_secret(p).await {
                    Ok(v) => Some((u.clone(), String::from_utf8_lossy(&v).into_owned())),
                    Err(e) => return retry(format!("SMTP password: {e}")),
                },
                _ => None,
            };
            let subject = match subject {
                Some(t) => match render::render(t, &payload, &masker) {
                    Ok(s) => s
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect(),
                    Err(e) => return failed(format!("subject: {e}")),
                },
                None => format!("[OpsConductor] {}", render::summary(&payload)),
            };
            let text = match body {
                Some(t) => match render::render(t, &payload, &masker) {
                    Ok(b) => b,
                    Err(e) => return failed(format!("body: {e}")),
                },
                None => render::email_text(&payload),
            };
            let text = masker.mask_str(&text);
            let html = render::email_html(&text);
            send::mail(Mail {
                host,
                port: *port,
                tls: *tls,
                ca_pem: ca_pem.as_deref(),
                credentials,
                from,
                to,
                subject: masker.mask_str(&subject),
                text,
                html,
                message_id: format!("<{event_id}@opsconductor>"),
                timeout: s.timeout,
                guard,
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for n in 1..=10u32 {
            let exp = (base * 2u32.pow(n - 1)).min(max);
            let d = backoff(n, base, max);
            assert!(d >= exp / 2 && d <= exp, "attempt {n}: {d:?} vs {exp:?}");
        }
        assert!(backoff(u32::MAX, base, max) <= max);
    }
}
