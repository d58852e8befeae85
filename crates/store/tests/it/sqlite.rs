//! The store behaviour suite against SQLite (a fresh temporary database file
//! per test, and again in memory), and what only SQLite has: its URLs, its
//! open errors, and several stores — as several processes would — sharing
//! one file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use opsconductor_core::ErrorKind;
use opsconductor_core::model::RunId;
use opsconductor_core::store::{ApplyBatch, JobStore, RunStore, Store};
use opsconductor_store::behaviour::{self, Error, claim, job_spec, now_ms, queued_run};
use opsconductor_store::{SqliteStore, store_behaviour_suite};

type TestResult = Result<(), Error>;

async fn fresh_store() -> Arc<dyn Store> {
    match SqliteStore::temporary().await {
        Ok(store) => Arc::new(store),
        Err(e) => panic!("cannot create a temporary SQLite store: {e}"),
    }
}

store_behaviour_suite!(fresh_store);

/// The same suite on `sqlite::memory:`, with the closure form of the factory.
mod in_memory {
    use super::*;

    store_behaviour_suite!(async || -> Arc<dyn Store> {
        match SqliteStore::open("sqlite::memory:").await {
            Ok(store) => Arc::new(store) as Arc<dyn Store>,
            Err(e) => panic!("cannot open an in-memory SQLite store: {e}"),
        }
    });
}

fn temp_dir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}

fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Store, "{e}");
            e.to_string()
        }
    }
}

/// Two stores on one new file, opened at the same moment (as two processes
/// starting together would), then claiming from both at once: no error, and
/// no run handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_share_the_queue() -> TestResult {
    let dir = temp_dir();
    let path = dir.path().join("shared.db");
    let (a, b) = tokio::join!(SqliteStore::open_path(&path), SqliteStore::open_path(&path));
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a?), Arc::new(b?));

    let base = now_ms() - chrono::TimeDelta::hours(1);
    for i in 0..300 {
        let run = queued_run("shared", base + chrono::TimeDelta::milliseconds(i));
        // Alternate writers, so both insert while the other reads.
        if i % 2 == 0 { &a } else { &b }.insert_run(&run).await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..12 {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let worker = format!("process-{}-worker-{w}", w % 2);
            let mut mine = Vec::new();
            loop {
                let got = store.claim_queued(&claim(&worker, 4)).await?;
                if got.is_empty() {
                    return Ok::<_, Error>((worker, mine));
                }
                mine.extend(got.iter().map(|r| r.id));
            }
        });
    }
    let mut owner: HashMap<RunId, String> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker, mine) = joined.map_err(|e| Error::Internal(e.to_string()))??;
        for id in mine {
            if let Some(first) = owner.insert(id, worker.clone()) {
                panic!("run {id} was claimed by {first} and by {worker}");
            }
        }
    }
    assert_eq!(owner.len(), 300, "every run claimed once");
    for (id, worker) in owner {
        let seen_by_b = b.get_run(id).await?.and_then(|r| r.worker);
        assert_eq!(seen_by_b, Some(worker), "both stores see the same owner");
    }
    Ok(())
}

/// Many stores opening one new file at the same moment all succeed: the
/// switch to WAL and the migrations are settled between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_opens_of_a_new_file() -> TestResult {
    let dir = temp_dir();
    let path = dir.path().join("raced.db");
    let mut opens = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let path = path.clone();
        opens.spawn(async move { SqliteStore::open_path(&path).await });
    }
    let mut stores = Vec::new();
    while let Some(opened) = opens.join_next().await {
        stores.push(opened.map_err(|e| Error::Internal(e.to_string()))??);
    }
    let run = queued_run("raced", now_ms());
    stores[0].insert_run(&run).await?;
    for store in &stores {
        assert_eq!(store.get_run(run.id).await?.map(|r| r.id), Some(run.id));
    }
    Ok(())
}

#[tokio::test]
async fn open_names_a_missing_directory() {
    let dir = temp_dir();
    let path = dir.path().join("no-such-dir").join("oc.db");
    let msg = message(SqliteStore::open_path(&path).await);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    let url = format!("sqlite://{}", path.display());
    let msg = message(opsconductor_store::open(&url).await.map(|s| s.backend()));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[tokio::test]
async fn open_names_a_directory() {
    let dir = temp_dir();
    let msg = message(SqliteStore::open_path(dir.path()).await);
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("is a directory"), "{msg}");
}

#[tokio::test]
async fn open_names_a_file_that_is_not_a_database() -> TestResult {
    let dir = temp_dir();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "these are not the tables you are looking for\n".repeat(200),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let msg = message(SqliteStore::open_path(&path).await);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused() -> TestResult {
    let dir = temp_dir();
    let path = dir.path().join("oc.db");
    SqliteStore::open_path(&path).await?.close().await;
    // What a later version's migration would leave behind.
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .map_err(Error::store)?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .map_err(Error::store)?;
    pool.close().await;

    let msg = message(SqliteStore::open_path(&path).await);
    assert!(msg.contains("newer version of OpsConductor"), "{msg}");
    assert!(msg.contains("9999"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    Ok(())
}

/// Every accepted spelling opens (creating the file), data persists across
/// opens, and the file is in WAL mode.
#[tokio::test]
async fn urls_paths_and_persistence() -> TestResult {
    let dir = temp_dir();
    let cwd_relative = |p: &Path| p.display().to_string();
    for (i, make) in [
        (|p: String| format!("sqlite://{p}")) as fn(String) -> String,
        |p| format!("sqlite:{p}"),
        |p| p,
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("db{i}.sqlite"));
        let url = make(cwd_relative(&path));
        let store = opsconductor_store::open(&url).await?;
        assert_eq!(store.backend(), "sqlite");
        assert!(path.is_file(), "{url} created {}", path.display());
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
        drop(store);
        let again = SqliteStore::open_path(&path).await?;
        assert!(
            again.get_job("kept", None).await?.is_some(),
            "{url} keeps data"
        );
        assert_eq!(again.path(), Some(path.as_path()));
    }

    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("db0.sqlite").display()
    ))
    .await
    .map_err(Error::store)?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .map_err(Error::store)?;
    assert_eq!(mode, "wal");
    Ok(())
}

/// A new database file and its `-wal` and `-shm` files are private to the
/// server's user (mode 0600), like the key files: they hold password and
/// token hashes and encrypted secrets.
#[cfg(unix)]
#[tokio::test]
async fn database_files_are_created_private() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let path = dir.path().join("private.db");
    let store = opsconductor_store::open(&format!("sqlite://{}", path.display())).await?;
    // A write makes sure the WAL and shared-memory files exist.
    store
        .apply(
            &ApplyBatch {
                targets: vec![],
                jobs: vec![job_spec("private")],
                ..Default::default()
            },
            "alice",
        )
        .await?;
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.path().join(format!("private.db{suffix}"));
        let meta = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{} should exist while open: {e}", p.display()));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{} must be 0600",
            p.display()
        );
    }
    drop(store);
    Ok(())
}

/// An in-memory store keeps its data for its lifetime (one connection), and
/// two in-memory stores are separate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_stores_are_private_and_persistent() -> TestResult {
    let a = SqliteStore::open("sqlite::memory:").await?;
    let b = SqliteStore::open("sqlite::memory:").await?;
    assert_eq!(a.path(), None);
    let run = queued_run("mem", now_ms());
    a.insert_run(&run).await?;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(a.get_run(run.id).await?, Some(run.clone()));
    assert_eq!(b.get_run(run.id).await?, None);
    Ok(())
}

#[tokio::test]
async fn unknown_url_schemes_are_validation_errors() {
    for url in ["mysql://localhost/oc", "file:oc.db", "redis://x"] {
        match opsconductor_store::open(url).await {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Validation, "{url}: {e}");
                let scheme = url.split(':').next().unwrap_or_default();
                assert!(e.to_string().contains(scheme), "{url}: {e}");
            }
            Ok(s) => panic!("{url} opened a {} store", s.backend()),
        }
    }
    #[cfg(not(feature = "postgres"))]
    match opsconductor_store::open("postgres://localhost/oc").await {
        Err(e) => assert!(
            e.to_string()
                .contains("PostgreSQL support is not built in (feature `postgres`)"),
            "{e}"
        ),
        Ok(_) => panic!("postgres opened without the feature"),
    }
}

/// The behaviour module's fixtures are usable on their own.
#[test]
fn fixtures_are_sane() {
    let run = queued_run("x", behaviour::at(0));
    assert_eq!(run.attempt, 0);
}
