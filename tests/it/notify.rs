//! Notifications end to end, with real receivers: a local HTTP receiver
//! (signature checked byte for byte, 500/429/timeouts on demand) and a real
//! SMTP server (aiosmtpd), on SQLite and PostgreSQL. Real runs through the
//! local executor produce the events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use opsconductor::engine::notify::{
    AttemptOutcome, ChannelSpec, DeliveryFilter, DeliveryStatus, EventInput, EventKind, NotifyRule,
    NotifySettings, SmtpTls,
};
use opsconductor::{Actor, Conductor, Config, RunId, RunStatus, SetSecret, SubmitRequest};
use opsconductor_store::testing::receivers::{HttpReceiver, Received, Reply, SmtpSink};
use serde_json::Value;

const SECRET: &str = "s3cr3t-Hunter2-value";
const SIGNING_KEY: &str = "whsec-test-key-0123456789";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Env {
    oc: Conductor,
    _dir: tempfile::TempDir,
}

fn me() -> Actor {
    Actor::new("tester")
}

fn fast(mut s: NotifySettings) -> NotifySettings {
    s.poll = Duration::from_millis(50);
    s.timeout = Duration::from_secs(2);
    s.lease = Duration::from_secs(4);
    s.backoff_base = Duration::from_millis(200);
    s.backoff_max = Duration::from_secs(2);
    s
}

async fn engine(backend: Backend, settings: NotifySettings) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("t.db").display()),
        Backend::Postgres => opsconductor_store::testing::pg::fresh_database().await,
    };
    let store = opsconductor::open_store(&url).await.unwrap();
    let ring = opsconductor::secrets::Keyring::create_file(&dir.path().join("master.key")).unwrap();
    let config = Config {
        poll: Duration::from_millis(50),
        follow_poll: Duration::from_millis(50),
        cancel_poll: Duration::from_millis(50),
        ..Config::default()
    };
    let oc = Conductor::builder()
        .store_arc(store)
        .keyring(ring)
        .config(config)
        .notifications(fast(settings))
        .executor(opsconductor::LocalExecutor::default())
        .workers(2)
        .build()
        .await
        .unwrap();
    for (name, value) in [("db-password", SECRET), ("hook-key", SIGNING_KEY)] {
        oc.set_secret(
            SetSecret {
                name: name.into(),
                kind: None,
                description: None,
                value: value.as_bytes().to_vec(),
            },
            &me(),
        )
        .await
        .unwrap();
    }
    Env { oc, _dir: dir }
}

async fn apply(oc: &Conductor, yaml: &str) {
    let batch = opsconductor::spec::parse_str(yaml, "notify.yaml", None).unwrap();
    oc.apply(&batch, &me()).await.unwrap();
}

async fn hook(oc: &Conductor, name: &str, r: &HttpReceiver) {
    oc.set_channel(
        name,
        "",
        ChannelSpec::Webhook {
            url: format!("{}/hook", r.url),
            signing_secret: Some("hook-key".into()),
            headers: [("X-Team".to_string(), "ops".to_string())].into(),
            template: None,
        },
        &me(),
    )
    .await
    .unwrap();
}

async fn run(oc: &Conductor, job: &str) -> (RunId, RunStatus) {
    let r = oc.submit(SubmitRequest::new(job), &me()).await.unwrap();
    let done = oc.wait(r.id, &me()).await.unwrap();
    (r.id, done.status)
}

/// Checks a webhook request as a receiver must: the signature is
/// HMAC-SHA256 over `timestamp.body` with the shared key, the timestamp is
/// within the replay window (5 minutes).
fn verify_signature(req: &Received) {
    let ts = req
        .header("x-opsconductor-timestamp")
        .expect("timestamp header");
    let sig = req
        .header("x-opsconductor-signature")
        .expect("signature header");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SIGNING_KEY.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&req.body);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(sig, expected, "signature over the exact body bytes");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - ts.parse::<i64>().unwrap()).abs() < 300,
        "within the replay window"
    );
}

fn no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "the secret leaked into {what}: {text}"
    );
    assert!(
        !text.contains(SIGNING_KEY),
        "the signing key leaked into {what}"
    );
}

async fn failed_run_reaches_every_channel(backend: Backend) {
    let (hooks, chat) = (HttpReceiver::start().await, HttpReceiver::start().await);
    let smtp = SmtpSink::start();
    let env = engine(
        backend,
        NotifySettings {
            public_url: Some("https://ops.example.com/".into()),
            log_lines: 5,
            ..NotifySettings::default()
        },
    )
    .await;
    let oc = &env.oc;
    hook(oc, "hook", &hooks).await;
    oc.set_channel(
        "chat",
        "",
        ChannelSpec::Slack {
            url: Some(format!("{}/slack", chat.url)),
            url_secret: None,
        },
        &me(),
    )
    .await
    .unwrap();
    oc.set_channel(
        "mail",
        "on-call",
        ChannelSpec::Email {
            host: "127.0.0.1".into(),
            port: Some(smtp.port),
            tls: SmtpTls::None,
            ca_pem: None,
            username: None,
            password_secret: None,
            from: "OpsConductor <opsc@example.com>".into(),
            to: vec!["oncall@example.com".into(), "lead@example.com".into()],
            subject: None,
            body: None,
        },
        &me(),
    )
    .await
    .unwrap();
    apply(
        oc,
        r#"
kind: Job
name: nightly
tags: [prod]
secrets: [db-password]
steps:
  - name: work
    exec: 'for i in 1 2 3 4 5 6 7 8; do echo "line $i"; done; echo "pw=$DB_PASSWORD"; exit 3'
notify:
  - on: [run.failed]
    channels: [hook, chat, mail]
"#,
    )
    .await;
    let started = std::time::Instant::now();
    let (id, status) = run(oc, "nightly").await;
    assert_eq!(status, RunStatus::Failed);

    // The signed webhook.
    let got = hooks.wait_for(1, WAIT).await;
    let latency = started.elapsed();
    let req = &got[0];
    verify_signature(req);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hook");
    assert_eq!(req.header("x-team"), Some("ops"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-opsconductor-event"), Some("run.failed"));
    let ev = req.json();
    assert_eq!(ev["type"], "run.failed");
    assert_eq!(req.header("x-opsconductor-event-id"), ev["id"].as_str());
    assert_eq!(ev["job"], "nightly");
    assert_eq!(ev["run"]["id"], id.to_string());
    assert_eq!(ev["run"]["status"], "failed");
    assert_eq!(
        ev["run"]["url"],
        format!("https://ops.example.com/runs/{id}")
    );
    assert_eq!(ev["run"]["targets"][0]["name"], "local");
    assert_eq!(ev["run"]["targets"][0]["exit_code"], 3);
    let tail: Vec<&str> = ev["run"]["log_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(tail.len(), 5, "the last 5 lines only: {tail:?}");
    assert!(tail[4].contains("pw="), "{tail:?}");
    assert!(!tail.iter().any(|l| l.contains("line 1")), "{tail:?}");
    no_secret("the webhook", &String::from_utf8_lossy(&req.body));

    // The Slack-format message.
    let msg = chat.wait_for(1, WAIT).await[0].json();
    let text = msg["text"].as_str().unwrap();
    assert!(
        text.contains("nightly") && text.contains("failed"),
        "{text}"
    );
    assert!(
        text.contains(&format!("<https://ops.example.com/runs/{id}|")),
        "{text}"
    );
    let fields = msg["attachments"][0]["fields"].as_array().unwrap();
    let field = |t: &str| {
        fields
            .iter()
            .find(|f| f["title"] == t)
            .map(|f| f["value"].clone())
    };
    assert_eq!(field("Status"), Some(Value::from("failed")));
    assert_eq!(field("Job"), Some(Value::from("nightly")));
    assert_eq!(field("Targets"), Some(Value::from("local (failed)")));
    assert!(field("Duration").is_some());
    no_secret("the Slack message", &msg.to_string());

    // The e-mail: two recipients, plain text and HTML, masked.
    let mail = &smtp.wait_for(1, WAIT).await[0];
    assert_eq!(
        mail["rcpt_tos"],
        serde_json::json!(["oncall@example.com", "lead@example.com"])
    );
    assert_eq!(mail["content_type"], "multipart/alternative");
    let subject = mail["headers"]["subject"].as_str().unwrap();
    assert!(
        subject.contains("run.failed") && subject.contains("nightly"),
        "{subject}"
    );
    assert_eq!(
        mail["headers"]["message-id"].as_str().unwrap(),
        format!("<{}@opsconductor>", ev["id"].as_str().unwrap())
    );
    let parts = mail["parts"].as_array().unwrap();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text/plain", "text/html"]);
    assert!(parts[0]["text"].as_str().unwrap().contains("line 8"));
    assert!(parts[1]["text"].as_str().unwrap().contains("<pre"));
    no_secret("the e-mail", &mail.to_string());
    no_secret("the raw e-mail", mail["raw"].as_str().unwrap());

    // History: per run, every channel delivered after one attempt.
    let hist = oc
        .notification_history(
            &DeliveryFilter {
                run: Some(id),
                ..DeliveryFilter::default()
            },
            &me(),
        )
        .await
        .unwrap();
    let mut channels: Vec<&str> = hist.iter().map(|h| h.delivery.channel.as_str()).collect();
    channels.sort();
    assert_eq!(channels, ["chat", "hook", "mail"]);
    // The history is written right after the receiver answered.
    for _ in 0..100 {
        let h = oc
            .notification_history(
                &DeliveryFilter {
                    run: Some(id),
                    ..DeliveryFilter::default()
                },
                &me(),
            )
            .await
            .unwrap();
        if h.iter()
            .all(|d| d.delivery.status == DeliveryStatus::Delivered)
        {
            for d in &h {
                assert_eq!(d.attempts.len(), 1);
                assert_eq!(d.attempts[0].outcome, AttemptOutcome::Delivered);
                let code = d.attempts[0].code.unwrap();
                assert!(code == 200 || code == 250, "{code}");
                eprintln!(
                    "{backend:?}: {} delivered in {} ms (attempt latency)",
                    d.delivery.channel, d.attempts[0].latency_ms
                );
            }
            eprintln!("{backend:?}: run end to signed webhook received: {latency:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deliveries were not all recorded as delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_run_reaches_webhook_slack_and_email_sqlite() {
    failed_run_reaches_every_channel(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_run_reaches_webhook_slack_and_email_postgres() {
    failed_run_reaches_every_channel(Backend::Postgres).await;
}

/// Every event kind: succeeded, failed, timed_out, cancelled, recovered from
/// runs; schedule.missed and approval.* raised through the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_event_kind_is_delivered() {
    let hooks = HttpReceiver::start().await;
    let env = engine(
        Backend::Sqlite,
        NotifySettings {
            rules: vec![NotifyRule {
                on: EventKind::ALL.to_vec(),
                channels: vec!["hook".into()],
                jobs: vec!["flaky*".into()],
                tags: vec![],
                only_on_change: false,
            }],
            ..NotifySettings::default()
        },
    )
    .await;
    let oc = &env.oc;
    hook(oc, "hook", &hooks).await;
    apply(
        oc,
        r#"
kind: Job
name: flaky
params: {type: object, properties: {code: {type: integer, default: 0}, nap: {type: integer, default: 0}}}
timeout: 2s
steps:
  - exec: 'sleep {{ params.nap }}; exit {{ params.code }}'
"#,
    )
    .await;
    let submit = |code: i64, nap: i64| {
        let mut r = SubmitRequest::new("flaky");
        r.params = serde_json::json!({"code": code, "nap": nap});
        r
    };
    let mut want = vec![];
    for (code, nap, kinds) in [
        (0, 0, vec!["run.succeeded"]),
        (1, 0, vec!["run.failed"]),
        (0, 0, vec!["run.succeeded", "run.recovered"]),
        (0, 5, vec!["run.timed_out"]),
        (0, 0, vec!["run.succeeded", "run.recovered"]),
    ] {
        let r = oc.submit(submit(code, nap), &me()).await.unwrap();
        oc.wait(r.id, &me()).await.unwrap();
        want.extend(kinds);
    }
    // Cancelled while running.
    let r = oc.submit(submit(0, 30), &me()).await.unwrap();
    for _ in 0..200 {
        if oc.run(r.id, &me()).await.unwrap().run.status == RunStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    oc.cancel(r.id, &me()).await.unwrap();
    assert_eq!(
        oc.wait(r.id, &me()).await.unwrap().status,
        RunStatus::Cancelled
    );
    want.push("run.cancelled");
    for kind in [
        EventKind::ScheduleMissed,
        EventKind::ApprovalRequested,
        EventKind::ApprovalDecided,
    ] {
        let n = oc
            .enqueue_event(
                EventInput {
                    kind,
                    job: Some("flaky".into()),
                    run: None,
                    detail: serde_json::json!({"note": format!("about {SECRET}")}),
                },
                &me(),
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        want.push(kind.as_str());
    }
    let got = hooks.wait_for(want.len(), WAIT).await;
    let mut kinds: Vec<String> = got
        .iter()
        .map(|r| {
            verify_signature(r);
            no_secret("an event", &String::from_utf8_lossy(&r.body));
            r.json()["type"].as_str().unwrap().to_string()
        })
        .collect();
    kinds.sort();
    want.sort();
    assert_eq!(kinds, want);
    let recovered = got
        .iter()
        .find(|r| r.json()["type"] == "run.recovered")
        .unwrap()
        .json();
    assert_eq!(recovered["run"]["previous_status"], "failed");
    // Viewers cannot raise events.
    let viewer = Actor::user("v", opsconductor::auth::Role::Viewer, "test");
    let input = EventInput {
        kind: EventKind::ScheduleMissed,
        job: None,
        run: None,
        detail: Value::Null,
    };
    assert!(oc.enqueue_event(input, &viewer).await.is_err());
}

/// Retries: 500, 500, a timeout, 429 with `Retry-After: 1`, then 200. The
/// recorded attempts show each outcome, the backoff doubling (with
/// jitter), the timeout and the receiver's 1 s honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_back_off_and_honour_retry_after() {
    let hooks = HttpReceiver::start().await;
    hooks.plan([
        Reply::Status(500),
        Reply::Status(500),
        Reply::Hang(Duration::from_secs(4)),
        Reply::RetryAfter(429, "1".into()),
        Reply::Status(200),
    ]);
    let env = engine(Backend::Sqlite, NotifySettings::default()).await;
    let oc = &env.oc;
    hook(oc, "hook", &hooks).await;
    apply(
        oc,
        "kind: Job\nname: j\nsteps:\n  - exec: 'exit 1'\nnotify:\n  - on: [run.failed]\n    channels: [hook]\n",
    )
    .await;
    let (id, _) = run(oc, "j").await;
    let got = hooks.wait_for(5, WAIT).await;
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|r| r.header("x-opsconductor-event-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every retry carries the same event id");
    let info = loop {
        let h = oc
            .notification_history(
                &DeliveryFilter {
                    run: Some(id),
                    ..DeliveryFilter::default()
                },
                &me(),
            )
            .await
            .unwrap();
        if h[0].delivery.status == DeliveryStatus::Delivered {
            break h.into_iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let a = &info.attempts;
    let outcomes: Vec<_> = a.iter().map(|x| (x.outcome, x.code)).collect();
    assert_eq!(
        outcomes,
        [
            (AttemptOutcome::Retry, Some(500)),
            (AttemptOutcome::Retry, Some(500)),
            (AttemptOutcome::Retry, None),
            (AttemptOutcome::Retry, Some(429)),
            (AttemptOutcome::Delivered, Some(200)),
        ]
    );
    assert!(
        a[2].error.as_deref().unwrap().contains("timed out")
            || a[2].error.as_deref().unwrap().contains("timeout"),
        "{:?}",
        a[2].error
    );
    assert!(
        a[2].latency_ms >= 1900,
        "the 2 s attempt timeout: {}",
        a[2].latency_ms
    );
    // Gaps between one attempt's end and the next one's start.
    let gap = |i: usize| {
        let end = a[i].at + chrono::Duration::milliseconds(a[i].latency_ms as i64);
        (a[i + 1].at - end).num_milliseconds()
    };
    let gaps: Vec<i64> = (0..4).map(gap).collect();
    eprintln!(
        "retry gaps (ms): {gaps:?}; attempts: {:?}",
        a.iter().map(|x| x.latency_ms).collect::<Vec<_>>()
    );
    // Backoff base 200 ms: after attempt n the delay is in [base·2^(n-1)/2, base·2^(n-1)]
    // plus up to one poll (50 ms) and scheduling.
    for (i, g) in gaps.iter().take(3).enumerate() {
        let exp = 200i64 << i;
        assert!(
            *g >= exp / 2 - 5 && *g <= exp + 400,
            "gap {i}: {g} ms (expected {}..{exp})",
            exp / 2
        );
    }
    assert!(
        gaps[3] >= 990 && gaps[3] <= 1600,
        "Retry-After: 1 honoured: {} ms",
        gaps[3]
    );
}

/// `only_on_change`: notified on the first outcome and on each change,
/// not on a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_on_change_skips_repeated_outcomes() {
    let hooks = HttpReceiver::start().await;
    let env = engine(Backend::Sqlite, NotifySettings::default()).await;
    let oc = &env.oc;
    hook(oc, "hook", &hooks).await;
    apply(
        oc,
        r#"
kind: Job
name: j
params: {type: object, properties: {code: {type: integer, default: 0}}}
steps:
  - exec: 'exit {{ params.code }}'
notify:
  - on: [run.failed, run.succeeded]
    channels: [hook]
    only_on_change: true
"#,
    )
    .await;
    for code in [1, 1, 0, 0, 1] {
        let mut r = SubmitRequest::new("j");
        r.params = serde_json::json!({"code": code});
        let r = oc.submit(r, &me()).await.unwrap();
        oc.wait(r.id, &me()).await.unwrap();
    }
    let got = hooks.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got2 = hooks.received();
    assert_eq!(got2.len(), 3, "no more than the 3 changes");
    let kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(sorted, ["run.failed", "run.failed", "run.succeeded"]);
}

/// The SSRF guard: with it on, a channel on loopback is refused at send
/// time (and the refusal is permanent); a non-http URL never gets stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssrf_guard_refuses_internal_destinations() {
    let hooks = HttpReceiver::start().await;
    let env = engine(
        Backend::Sqlite,
        NotifySettings {
            block_private_addresses: true,
            ..NotifySettings::default()
        },
    )
    .await;
    let oc = &env.oc;
    hook(oc, "hook", &hooks).await;
    let by_name = ChannelSpec::Webhook {
        url: hooks.url.replace("127.0.0.1", "localhost"),
        signing_secret: None,
        headers: Default::default(),
        template: None,
    };
    oc.set_channel("by-name", "", by_name, &me()).await.unwrap();
    let t = oc.test_channel("hook", &me()).await.unwrap();
    assert!(!t.delivered);
    assert!(t.error.as_deref().unwrap().contains("SSRF guard"), "{t:?}");
    let t = oc.test_channel("by-name", &me()).await.unwrap();
    assert!(!t.delivered);
    assert!(t.error.as_deref().unwrap().contains("SSRF guard"), "{t:?}");
    for bad in [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://x",
        "http://user:pw@example.com/",
    ] {
        let spec = ChannelSpec::Webhook {
            url: bad.into(),
            signing_secret: None,
            headers: Default::default(),
            template: None,
        };
        let e = oc.set_channel("bad", "", spec, &me()).await.unwrap_err();
        assert_eq!(e.kind(), opsconductor::ErrorKind::Validation, "{bad}: {e}");
    }
    // And through the outbox: the attempt fails for good, nothing received.
    apply(
        oc,
        "kind: Job\nname: j\nsteps:\n  - exec: 'exit 1'\nnotify:\n  - on: [run.failed]\n    channels: [hook]\n",
    )
    .await;
    let (id, _) = run(oc, "j").await;
    for _ in 0..200 {
        let h = oc
            .notification_history(
                &DeliveryFilter {
                    run: Some(id),
                    ..DeliveryFilter::default()
                },
                &me(),
            )
            .await
            .unwrap();
        if h[0].delivery.status == DeliveryStatus::Failed {
            assert_eq!(h[0].attempts.len(), 1);
            assert!(
                h[0].attempts[0]
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("SSRF guard")
            );
            assert!(hooks.received().is_empty());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the delivery was not refused");
}

/// A test delivery reaches the receiver at once, signed; bad channel input
/// is refused with the field named; viewers may not test or change channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_delivery_and_channel_validation() {
    let hooks = HttpReceiver::start().await;
    let env = engine(Backend::Sqlite, NotifySettings::default()).await;
    let oc = &env.oc;
    hook(oc, "hook", &hooks).await;
    let t = oc.test_channel("hook", &me()).await.unwrap();
    assert!(t.delivered, "{t:?}");
    assert_eq!(t.code, Some(200));
    let got = hooks.wait_for(1, WAIT).await;
    verify_signature(&got[0]);
    assert_eq!(got[0].json()["type"], "notification.test");
    let viewer = Actor::user("v", opsconductor::auth::Role::Viewer, "test");
    assert!(oc.test_channel("hook", &viewer).await.is_err());
    assert_eq!(oc.channels(&viewer).await.unwrap().len(), 1);
    let missing = oc.test_channel("nope", &me()).await.unwrap_err();
    assert_eq!(missing.kind(), opsconductor::ErrorKind::NotFound);
    let cases: Vec<(ChannelSpec, &str)> = vec![
        (
            ChannelSpec::Webhook {
                url: "https://x.example/".into(),
                signing_secret: Some("no-such-secret".into()),
                headers: Default::default(),
                template: None,
            },
            "no-such-secret",
        ),
        (
            ChannelSpec::Webhook {
                url: "https://x.example/".into(),
                signing_secret: None,
                headers: [("Bad Header".to_string(), "v".to_string())].into(),
                template: None,
            },
            "headers.Bad Header",
        ),
        (
            ChannelSpec::Webhook {
                url: "https://x.example/".into(),
                signing_secret: None,
                headers: [("X-A".to_string(), "a\r\nInjected: 1".to_string())].into(),
                template: None,
            },
            "headers.X-A",
        ),
        (
            ChannelSpec::Webhook {
                url: format!("https://x.example/{}", "a".repeat(5000)),
                signing_secret: None,
                headers: Default::default(),
                template: None,
            },
            "url",
        ),
        (
            ChannelSpec::Webhook {
                url: "https://x.example/".into(),
                signing_secret: None,
                headers: Default::default(),
                template: Some("{{ unclosed".into()),
            },
            "template",
        ),
        (
            ChannelSpec::Email {
                host: "smtp.example.com".into(),
                port: None,
                tls: SmtpTls::Starttls,
                ca_pem: None,
                username: None,
                password_secret: None,
                from: "not an address".into(),
                to: vec!["a@example.com".into()],
                subject: None,
                body: None,
            },
            "from",
        ),
        (
            ChannelSpec::Email {
                host: "smtp.example.com".into(),
                port: None,
                tls: SmtpTls::Starttls,
                ca_pem: None,
                username: None,
                password_secret: None,
                from: "a@example.com".into(),
                to: (0..51).map(|i| format!("u{i}@example.com")).collect(),
                subject: None,
                body: None,
            },
            "to",
        ),
    ];
    for (spec, field) in cases {
        let e = oc.set_channel("bad", "", spec, &me()).await.unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    let e = oc
        .set_channel(
            "../bad",
            "",
            ChannelSpec::Slack {
                url: Some("https://x.example/".into()),
                url_secret: None,
            },
            &me(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), opsconductor::ErrorKind::Validation);
    // A job file's notify rules are checked with their place named.
    let bad = "kind: Job\nname: j\nsteps:\n  - exec: 'true'\nnotify:\n  - on: [run.exploded]\n    channels: [hook]\n";
    let e = opsconductor::spec::parse_str(bad, "bad.yaml", None).unwrap_err();
    assert!(e.to_string().contains("bad.yaml"), "{e}");
    let empty =
        "kind: Job\nname: j\nsteps:\n  - exec: 'true'\nnotify:\n  - on: []\n    channels: [hook]\n";
    let e = opsconductor::spec::parse_str(empty, "bad.yaml", None).unwrap_err();
    assert!(e.to_string().contains("notify[0]"), "{e}");
}
