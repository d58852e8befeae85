//! The store behaviour suite against PostgreSQL (a fresh database per test on
//! a throwaway server shared by this test binary), and what only PostgreSQL
//! has: claims under heavy concurrency from several stores (as several
//! processes would), `LISTEN`/`NOTIFY` between stores, surviving server
//! restarts and crashes, and its open errors.
//!
//! Needs the PostgreSQL server binaries (see `opsconductor_store::testing::pg`);
//! without them these tests fail, they never skip.

#![cfg(feature = "postgres")]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use futures::StreamExt;
use opsconductor_core::ErrorKind;
use opsconductor_core::bus::Event;
use opsconductor_core::model::{RunId, RunStatus, StepResult, StepStatus};
use opsconductor_core::store::{ApplyBatch, EventStream, RunStore, Store, TargetStore};
use opsconductor_store::behaviour::{
    Error, claim, job_spec, now_ms, queued_run, running_run, ssh_target,
};
use opsconductor_store::testing::pg::{TestPg, fresh_database};
use opsconductor_store::{PostgresStore, store_behaviour_suite};

type TestResult = Result<(), Error>;

async fn open(url: &str) -> PostgresStore {
    match PostgresStore::open(url).await {
        Ok(store) => store,
        Err(e) => panic!("cannot open the test database {url}: {e}"),
    }
}

async fn fresh_store() -> Arc<dyn Store> {
    Arc::new(open(&fresh_database().await).await)
}

store_behaviour_suite!(fresh_store);

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// The message of an error that must be a store error.
fn store_error<T>(result: Result<T, Error>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Store, "{e}");
            e.to_string()
        }
    }
}

/// Inserts `n` queued runs, one millisecond apart, oldest first.
async fn queue(store: &dyn Store, job: &str, n: i64) -> Result<Vec<RunId>, Error> {
    let base = now_ms() - TimeDelta::hours(1);
    let mut ids = Vec::new();
    for i in 0..n {
        let run = queued_run(job, base + TimeDelta::milliseconds(i));
        store.insert_run(&run).await?;
        ids.push(run.id);
    }
    Ok(ids)
}

/// Claims from `stores` (round robin) with `tasks` concurrent claimers of
/// `limit` runs each until the queue is empty; checks every batch and
/// returns who got which run.
async fn claim_all(
    stores: &[Arc<dyn Store>],
    tasks: usize,
    limit: usize,
) -> Result<HashMap<RunId, String>, Error> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let store = stores[t % stores.len()].clone();
        set.spawn(async move {
            let worker = format!("store-{}-worker-{t}", t % 2);
            let mut mine = Vec::new();
            loop {
                let got = store.claim_queued(&claim(&worker, limit)).await?;
                assert!(
                    got.len() <= limit,
                    "{worker} got {} runs with limit {limit}",
                    got.len()
                );
                assert!(
                    got.windows(2)
                        .all(|w| (w[0].created_at, w[0].id) < (w[1].created_at, w[1].id)),
                    "a claim returns its runs oldest first"
                );
                if got.is_empty() {
                    return Ok::<_, Error>((worker, mine));
                }
                for run in got {
                    assert_eq!(run.worker.as_deref(), Some(worker.as_str()));
                    assert_eq!(run.status, RunStatus::Running);
                    mine.push(run.id);
                }
            }
        });
    }
    let mut owner = HashMap::new();
    while let Some(joined) = set.join_next().await {
        let (worker, mine) = joined.map_err(internal)??;
        for id in mine {
            if let Some(first) = owner.insert(id, worker.clone()) {
                panic!("run {id} was claimed twice: by {first} and by {worker}");
            }
        }
    }
    Ok(owner)
}

/// 500 queued runs, 32 tasks claiming 5 at a time through one store (its
/// pool of 16 connections is the contention point): each run is claimed
/// exactly once, no claim returns more than 5, and the store agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_never_exceed_the_limit_under_heavy_concurrency() -> TestResult {
    let store: Arc<dyn Store> = fresh_store().await;
    let all: HashSet<RunId> = queue(&*store, "load", 500).await?.into_iter().collect();
    let owner = claim_all(std::slice::from_ref(&store), 32, 5).await?;
    assert_eq!(owner.len(), 500, "every run claimed");
    assert_eq!(owner.keys().copied().collect::<HashSet<_>>(), all);
    let running = store
        .list_runs(&opsconductor_core::store::RunFilter {
            statuses: vec![RunStatus::Running],
            limit: 1000,
            ..Default::default()
        })
        .await?;
    assert_eq!(running.len(), 500);
    for run in running {
        assert_eq!(run.attempt, 1, "claimed once");
        assert_eq!(run.worker.as_ref(), owner.get(&run.id), "the store agrees");
    }
    Ok(())
}

/// Two separate stores on one database (as two processes would have), 16
/// claimers between them: every run claimed once, both stores see the same
/// owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_claim_from_one_queue() -> TestResult {
    let url = fresh_database().await;
    let (a, b) = tokio::join!(open(&url), open(&url));
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a), Arc::new(b));
    let base = now_ms() - TimeDelta::hours(1);
    for i in 0..300 {
        let run = queued_run("shared", base + TimeDelta::milliseconds(i));
        if i % 2 == 0 { &a } else { &b }.insert_run(&run).await?;
    }
    let owner = claim_all(&[a.clone(), b.clone()], 16, 4).await?;
    assert_eq!(owner.len(), 300, "every run claimed once");
    for (id, worker) in owner {
        assert_eq!(
            a.get_run(id).await?.and_then(|r| r.worker),
            Some(worker.clone())
        );
        assert_eq!(b.get_run(id).await?.and_then(|r| r.worker), Some(worker));
    }
    Ok(())
}

/// 16 rescuers taking over 200 expired runs, 3 at a time, through two
/// stores: each run is taken over exactly once (attempt 2), none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_takeovers_take_each_expired_run_once() -> TestResult {
    let url = fresh_database().await;
    let stores: Vec<Arc<dyn Store>> = vec![Arc::new(open(&url).await), Arc::new(open(&url).await)];
    let now = now_ms();
    for i in 0..200 {
        let run = running_run("dead", "gone", now - TimeDelta::seconds(10 + i));
        stores[0].insert_run(&run).await?;
    }
    let mut set = tokio::task::JoinSet::new();
    for t in 0..16 {
        let store = stores[t % 2].clone();
        set.spawn(async move {
            let worker = format!("rescuer-{t}");
            let mut mine = Vec::new();
            loop {
                let got = store.claim_expired(&claim(&worker, 3), now).await?;
                assert!(got.len() <= 3, "{worker} took {} with limit 3", got.len());
                if got.is_empty() {
                    return Ok::<_, Error>(mine);
                }
                for run in got {
                    assert_eq!(
                        (run.attempt, run.worker.as_deref()),
                        (2, Some(worker.as_str()))
                    );
                    mine.push(run.id);
                }
            }
        });
    }
    let mut seen = HashSet::new();
    while let Some(joined) = set.join_next().await {
        for id in joined.map_err(internal)?? {
            assert!(seen.insert(id), "run {id} was taken over twice");
        }
    }
    assert_eq!(seen.len(), 200);
    Ok(())
}

/// Concurrent applies from two stores adding versions to one job never
/// collide: every apply succeeds and versions are 1..=n without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_applies_number_versions_without_collisions() -> TestResult {
    let url = fresh_database().await;
    let stores: Vec<Arc<dyn Store>> = vec![Arc::new(open(&url).await), Arc::new(open(&url).await)];
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12 {
        let store = stores[i % 2].clone();
        set.spawn(async move {
            let mut job = job_spec("deploy");
            job.description = format!("edit {i}");
            let batch = ApplyBatch {
                targets: vec![ssh_target("web")],
                jobs: vec![job],
                ..Default::default()
            };
            store.apply(&batch, &format!("user-{i}")).await
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(internal)??;
    }
    let versions: Vec<u32> = stores[1]
        .job_versions("deploy")
        .await?
        .iter()
        .map(|j| j.version)
        .collect();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
    assert_eq!(stores[0].list_targets().await?.len(), 1);
    Ok(())
}

/// Eight stores opening one new database at the same moment all succeed;
/// the schema is applied once (the migrator's advisory lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_opens_of_a_new_database() -> TestResult {
    let url = fresh_database().await;
    let mut opens = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = url.clone();
        opens.spawn(async move { PostgresStore::open(&url).await });
    }
    let mut stores = Vec::new();
    while let Some(opened) = opens.join_next().await {
        stores.push(opened.map_err(internal)??);
    }
    let run = queued_run("raced", now_ms());
    stores[0].insert_run(&run).await?;
    for store in &stores {
        assert_eq!(store.get_run(run.id).await?.map(|r| r.id), Some(run.id));
    }
    let pool = sqlx::PgPool::connect(&url).await.map_err(internal)?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .map_err(internal)?;
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .map_err(internal)?
        .count();
    assert_eq!(
        usize::try_from(applied).unwrap_or(0),
        files,
        "each migration applied once"
    );
    Ok(())
}

/// The next event of a stream, waiting at most `within`.
async fn next_event(stream: &mut EventStream, within: Duration) -> Option<Event> {
    tokio::time::timeout(within, stream.next())
        .await
        .ok()
        .flatten()
}

/// Sends a fresh event from `from` every 250 ms until `stream` receives one
/// of them (events sent while a listener reconnects are lost by design);
/// panics after `within`.
async fn eventually_delivered(from: &dyn Store, stream: &mut EventStream, within: Duration) {
    let deadline = Instant::now() + within;
    let mut sent = Vec::new();
    while Instant::now() < deadline {
        let event = Event::Queued(RunId::new());
        // While the server is still coming back, sending may fail: try again.
        if from.notify(event).await.is_ok() {
            sent.push(event);
        }
        let wait_until = Instant::now() + Duration::from_millis(250);
        while let Some(got) =
            next_event(stream, wait_until.saturating_duration_since(Instant::now())).await
        {
            if sent.contains(&got) {
                return;
            }
        }
    }
    panic!(
        "no event reached the listener within {within:?} ({} sent)",
        sent.len()
    );
}

/// An event sent by one store reaches another store's stream (and the
/// sender's own), every kind round-trips, and payloads that are not events
/// are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_reaches_listeners_of_other_stores() -> TestResult {
    let url = fresh_database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    assert!(a.capabilities().notifications && a.capabilities().multi_host);
    let mut at_b = b.listen().await?.ok_or_else(|| internal("no stream"))?;
    let mut at_a = a.listen().await?.ok_or_else(|| internal("no stream"))?;

    let id = RunId::new();
    let events = [
        Event::Queued(id),
        Event::Updated(id),
        Event::Log(id, u64::MAX),
        Event::CancelRequested(id),
    ];
    // Garbage on the channel first: skipped, not the end of the stream.
    let pool = sqlx::PgPool::connect(&url).await.map_err(internal)?;
    for garbage in [
        "",
        "hello",
        "q:not-a-uuid",
        "l:0190aaaa-0000-7000-8000-000000000001",
    ] {
        sqlx::query("SELECT pg_notify('opsconductor', $1)")
            .bind(garbage)
            .execute(&pool)
            .await
            .map_err(internal)?;
    }
    let started = Instant::now();
    for event in events {
        a.notify(event).await?;
    }
    for event in events {
        assert_eq!(
            next_event(&mut at_b, Duration::from_secs(5)).await,
            Some(event),
            "at b"
        );
        assert_eq!(
            next_event(&mut at_a, Duration::from_secs(5)).await,
            Some(event),
            "at a"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Another database is another channel.
    let other = open(&fresh_database().await).await;
    other.notify(Event::Queued(RunId::new())).await?;
    assert_eq!(
        next_event(&mut at_b, Duration::from_millis(500)).await,
        None
    );
    Ok(())
}

/// Closing the store ends its streams; so does dropping every clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_end_when_the_store_closes() -> TestResult {
    let url = fresh_database().await;
    let store = open(&url).await;
    let mut stream = store.listen().await?.ok_or_else(|| internal("no stream"))?;
    store.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the stream ends on close: {ended:?}"
    );

    let store = open(&url).await;
    let clone = store.clone();
    let mut stream = store.listen().await?.ok_or_else(|| internal("no stream"))?;
    drop(store);
    clone.notify(Event::Updated(RunId::new())).await?;
    assert!(
        next_event(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "a clone keeps it open"
    );
    drop(clone);
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the stream ends with the last clone: {ended:?}"
    );
    Ok(())
}

/// Listening and querying go on across a server restart and a crash
/// (immediate stop, then start), without reopening the store; a query made
/// while the server is down waits for it to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_and_queries_survive_restart_and_crash() -> TestResult {
    let pg = TestPg::start();
    let url = pg.create_database().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let mut stream = b.listen().await?.ok_or_else(|| internal("no stream"))?;
    let run = queued_run("survivor", now_ms());
    a.insert_run(&run).await?;
    eventually_delivered(&a, &mut stream, Duration::from_secs(5)).await;

    // A clean restart: every session is terminated.
    tokio::task::block_in_place(|| pg.restart());
    assert_eq!(
        b.get_run(run.id).await?.map(|r| r.id),
        Some(run.id),
        "queries work again"
    );
    eventually_delivered(&a, &mut stream, Duration::from_secs(30)).await;

    // A crash: the server dies without goodbyes, then comes back.
    tokio::task::block_in_place(|| pg.stop_immediate());
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.claim_queued(&claim("patient", 1)).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.start_again());
    let claimed = waiting.await.map_err(internal)??;
    assert_eq!(
        claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run.id],
        "a query made during the outage completes once the server is back"
    );
    eventually_delivered(&a, &mut stream, Duration::from_secs(30)).await;
    eventually_delivered(&b, &mut stream, Duration::from_secs(30)).await;

    // And once more, with the stream idle (nobody polling) during the crash.
    tokio::task::block_in_place(|| {
        pg.stop_immediate();
        pg.start_again();
    });
    assert!(
        a.heartbeat(run.id, "patient", 1, now_ms() + TimeDelta::minutes(1))
            .await?
    );
    eventually_delivered(&a, &mut stream, Duration::from_secs(30)).await;
    Ok(())
}

/// Open errors name the server and database, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_errors_are_clear_and_hide_the_password() -> TestResult {
    // Nobody listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(internal)?
        .port();
    let url = format!("postgres://oc:hunter2@127.0.0.1:{port}/ops");
    let started = Instant::now();
    let msg = store_error(PostgresStore::open(&url).await);
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("'ops'"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection fails fast"
    );
    // The same through the crate's `open`.
    let msg = store_error(opsconductor_store::open(&url).await.map(|_| ()));
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && !msg.contains("hunter2"),
        "{msg}"
    );

    let msg = store_error(
        PostgresStore::open("postgres://oc:hunter2@no-such-host.invalid:5544/ops").await,
    );
    assert!(msg.contains("no-such-host.invalid:5544"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");

    // A real server, an unknown database.
    let pg = TestPg::shared();
    let msg = store_error(PostgresStore::open(&pg.database_url("no_such_db")).await);
    assert!(msg.contains("'no_such_db' does not exist"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", pg.port())), "{msg}");

    // A malformed URL is the caller's mistake.
    match PostgresStore::open("postgres://oc:hunter2@h:notaport/ops").await {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        Ok(_) => panic!("a malformed URL opened"),
    }
    Ok(())
}

/// `open` picks PostgreSQL for both URL schemes, and the store says what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crate_open_selects_postgres() -> TestResult {
    let url = fresh_database().await;
    for url in [url.clone(), url.replacen("postgres://", "postgresql://", 1)] {
        let store = opsconductor_store::open(&url).await?;
        assert_eq!(store.backend(), "postgres");
        let caps = store.capabilities();
        assert!(caps.multi_host && caps.notifications);
        store
            .apply(
                &ApplyBatch {
                    targets: vec![],
                    jobs: vec![job_spec("kept")],
                    ..Default::default()
                },
                "alice",
            )
            .await?;
        assert!(store.get_job("kept", None).await?.is_some());
    }
    let store = open(&url).await;
    assert!(
        store.describe().contains("PostgreSQL database 'test_"),
        "{}",
        store.describe()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_version_is_refused() -> TestResult {
    let url = fresh_database().await;
    open(&url).await.close().await;
    let pool = sqlx::PgPool::connect(&url).await.map_err(internal)?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .map_err(internal)?;
    pool.close().await;
    let msg = store_error(PostgresStore::open(&url).await);
    assert!(msg.contains("newer version of OpsConductor"), "{msg}");
    assert!(msg.contains("9999"), "{msg}");
    // The failed open released the migration lock: others are not blocked.
    let again = tokio::time::timeout(Duration::from_secs(10), PostgresStore::open(&url)).await;
    assert!(
        matches!(again, Ok(Err(_))),
        "a second open fails the same way, promptly"
    );
    Ok(())
}

/// Names and ids sort byte-wise (as in SQLite and Rust) even in a database
/// whose default collation is a natural-language one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_sort_bytewise_in_a_natural_language_database() -> TestResult {
    let pg = TestPg::shared();
    let name = format!("icu_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(&pg.url()).await.map_err(internal)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
    )))
    .execute(&pool)
    .await
    .map_err(internal)?;
    let store = open(&pg.database_url(&name)).await;
    let names = ["b", "B", "a", "_x", "web-10", "web-9", "web1", "Z", "é"];
    store
        .apply(
            &ApplyBatch {
                targets: names.iter().map(|n| ssh_target(n)).collect(),
                jobs: vec![],
                ..Default::default()
            },
            "alice",
        )
        .await?;
    let mut want: Vec<&str> = names.to_vec();
    want.sort();
    let got: Vec<String> = store
        .list_targets()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(got, want, "targets by name, byte-wise");

    let run = queued_run("deploy", now_ms());
    store.insert_run(&run).await?;
    for target in names {
        store
            .put_step_result(&StepResult {
                run_id: run.id,
                step: 0,
                target: target.into(),
                status: StepStatus::Succeeded,
                exit_code: Some(0),
                signal: None,
                error: None,
                attempt: 1,
                started_at: now_ms(),
                finished_at: None,
                try_no: 1,
                tries: vec![],
                outputs: Default::default(),
                children: Vec::new(),
            })
            .await?;
    }
    let got: Vec<String> = store
        .step_results(run.id)
        .await?
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(got, want, "step results by target, byte-wise");
    Ok(())
}

/// A server the fixture started is stopped and its directory removed on drop.
#[test]
fn the_fixture_cleans_up_on_drop() {
    let pg = TestPg::start();
    let dir = pg.dir().to_path_buf();
    let port = pg.port();
    assert!(dir.join("data").join("PG_VERSION").is_file());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "listening"
    );
    drop(pg);
    assert!(!dir.exists(), "{} removed", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped"
    );
}

/// A test CA: its issuer (to sign with) and its certificate in PEM.
fn test_ca(name: &str) -> Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(internal)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().map_err(internal)?;
    rcgen::CertifiedIssuer::self_signed(params, key).map_err(internal)
}

/// Whether the session of `url` runs over TLS, as the server sees it.
async fn session_uses_tls(url: &str) -> Result<bool, Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.map_err(internal)?;
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .map_err(internal)?;
    let _ = conn.close().await;
    Ok(ssl)
}

/// PostgreSQL over TLS: `sslmode=verify-full` with the CA that signed the
/// server's certificate (for `localhost`) connects over TLS; a host name the
/// certificate is not for, or another CA, is refused with an error saying
/// it is TLS; `verify-ca` skips the host name; `require` against a server
/// without TLS is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_checks_the_ca_and_the_host_name() -> TestResult {
    let dir = tempfile::tempdir().map_err(internal)?;
    let ca = test_ca("opsconductor test CA")?;
    let other = test_ca("another CA")?;
    let key = rcgen::KeyPair::generate().map_err(internal)?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(internal)?;
    let cert = params.signed_by(&key, &ca).map_err(internal)?;
    let ca_file = dir.path().join("ca.crt");
    let other_file = dir.path().join("other.crt");
    std::fs::write(&ca_file, ca.pem()).map_err(internal)?;
    std::fs::write(&other_file, other.pem()).map_err(internal)?;

    let pg = TestPg::start();
    pg.enable_tls(&cert.pem(), &key.serialize_pem());
    let url = |host: &str, mode: &str, root: &std::path::Path| {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
            pg.port(),
            root.display()
        )
    };

    // The right CA and host name: a store opens, over TLS.
    let good = url("localhost", "verify-full", &ca_file);
    open(&good).await.close().await;
    assert!(
        session_uses_tls(&good).await?,
        "the session is not encrypted"
    );

    // A host name the certificate does not name.
    let msg = store_error(PostgresStore::open(&url("127.0.0.1", "verify-full", &ca_file)).await);
    assert!(msg.contains("TLS"), "{msg}");
    assert!(msg.contains("127.0.0.1"), "{msg}");
    // ... which verify-ca does not check (the CA still is).
    let ca_only = url("127.0.0.1", "verify-ca", &ca_file);
    open(&ca_only).await.close().await;
    assert!(session_uses_tls(&ca_only).await?);

    // Another CA.
    let msg = store_error(PostgresStore::open(&url("localhost", "verify-full", &other_file)).await);
    assert!(msg.contains("TLS"), "{msg}");
    let msg = store_error(PostgresStore::open(&url("127.0.0.1", "verify-ca", &other_file)).await);
    assert!(msg.contains("TLS"), "{msg}");

    // `require` encrypts without checking the certificate.
    let required = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    );
    assert!(session_uses_tls(&required).await?);

    // `require` against a server without TLS is refused.
    let plain = TestPg::shared();
    let msg = store_error(PostgresStore::open(&format!("{}?sslmode=require", plain.url())).await);
    assert!(msg.contains("TLS"), "{msg}");
    Ok(())
}
