//! The embedded SQLite backend: one database file (or memory), WAL mode,
//! shared by every task of a process and by other processes on the same host.
//!
//! SQLite has one writer at a time. Writers of this process queue on an async
//! mutex (so they never spin in SQLite's busy handler against each other);
//! writers of other processes are waited for by the busy timeout, and every
//! multi-statement write starts with `BEGIN IMMEDIATE`, so a transaction never
//! has to upgrade a read lock — the case the busy timeout cannot cover. Claims
//! are single `UPDATE … RETURNING` statements, atomic on their own.
//!
//! Everything else is the shared SQL of `crate::sql`; this module holds
//! opening, the writer turn and the claim statements.

mod open;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use opsconductor_core::bus::Event;
use opsconductor_core::store::{EventStream, StoreCapabilities};
use opsconductor_core::{Error, Result};
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use self::open::Location;
use crate::rows::run_columns;
use crate::sql::Lock;

/// A store in a SQLite database.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Serialises this process's writers; see the module docs.
    writer: Arc<Mutex<()>>,
    /// The queue ordinary writers wait in before `writer`, so that a lease
    /// heartbeat (which goes to `writer` directly) has at most one ordinary
    /// write ahead of it besides the one in progress — never a backlog of
    /// log batches.
    queue: Arc<Mutex<()>>,
    location: Arc<Location>,
    /// Keeps a [`SqliteStore::temporary`] database's directory alive.
    #[cfg(feature = "testing")]
    _temp_dir: Option<Arc<tempfile::TempDir>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location.describe())
            .finish_non_exhaustive()
    }
}

/// The file `url_or_path` names, if it names one (not in memory).
pub(crate) fn database_file(url_or_path: &str) -> Option<std::path::PathBuf> {
    match open::parse(url_or_path).ok()? {
        (Location::File(p), _) => Some(p),
        (Location::Memory, _) => None,
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database named by `url_or_path`:
    /// `sqlite://path`, `sqlite:path`, `sqlite::memory:` or a bare file path.
    /// Applies the schema migrations.
    ///
    /// Fails with a message naming the path when the file cannot be opened,
    /// and when the database was created by a newer version of OpsConductor.
    pub async fn open(url_or_path: &str) -> Result<Self> {
        let (location, options) = open::parse(url_or_path)?;
        let pool = open::connect(&location, options).await?;
        Ok(Self::from_pool(pool, location))
    }

    /// Opens (creating if missing) the database file at `path`.
    pub async fn open_path(path: &Path) -> Result<Self> {
        let location = Location::File(path.to_path_buf());
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        let pool = open::connect(&location, options).await?;
        Ok(Self::from_pool(pool, location))
    }

    /// A fresh database in a new temporary directory, removed when the last
    /// clone of the store is dropped. For tests.
    #[cfg(feature = "testing")]
    pub async fn temporary() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("opsconductor-store-")
            .tempdir()
            .map_err(|e| Error::store(format!("creating a temporary directory: {e}")))?;
        let mut store = Self::open_path(&dir.path().join("opsconductor.db")).await?;
        store._temp_dir = Some(Arc::new(dir));
        Ok(store)
    }

    fn from_pool(pool: SqlitePool, location: Location) -> Self {
        Self {
            pool,
            writer: Arc::new(Mutex::new(())),
            queue: Arc::new(Mutex::new(())),
            location: Arc::new(location),
            #[cfg(feature = "testing")]
            _temp_dir: None,
        }
    }

    /// The database file, `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &*self.location {
            Location::File(p) => Some(p),
            Location::Memory => None,
        }
    }

    /// Closes every connection; later calls fail. Dropping the store also
    /// closes them, in the background.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Waits for this process's turn to write.
    async fn writer(&self) -> MutexGuard<'_, ()> {
        let _turn = self.queue.lock().await;
        self.writer.lock().await
    }

    /// Waits for the turn to write ahead of every queued ordinary writer
    /// (heartbeats: a late one costs the run its lease).
    async fn urgent_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// A write transaction holding SQLite's write lock from the start
    /// (`BEGIN IMMEDIATE`), with this process's turn: it excludes every
    /// other writer, so every [`Lock`] is held.
    async fn write_tx(
        &self,
        op: &str,
        _lock: Lock,
    ) -> Result<(MutexGuard<'_, ()>, Transaction<'static, Sqlite>)> {
        let turn = self.writer().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.fail(op))?;
        Ok((turn, tx))
    }

    /// The one mapping of a database error of operation `op`.
    fn fail(&self, op: &str) -> impl FnOnce(sqlx::Error) -> Error + use<> {
        let op = op.to_string();
        move |e| Error::store(format!("{op}: {e}"))
    }

    /// `Store::notify`: SQLite has no channel between processes.
    async fn send_event(&self, _event: Event) -> Result<()> {
        Ok(())
    }

    /// `Store::listen`: none (see [`send_event`](Self::send_event)).
    async fn event_stream(&self) -> Result<Option<EventStream>> {
        Ok(None)
    }

    const BACKEND: &'static str = "sqlite";

    /// Log chunks per `INSERT` statement (8 parameters each, far below
    /// SQLite's limit).
    const LOG_ROWS_PER_INSERT: usize = 200;

    /// One host (processes share the file), no cross-process wake-ups.
    fn store_capabilities() -> StoreCapabilities {
        StoreCapabilities::default()
    }

    /// Claims are single `UPDATE … RETURNING` statements: choosing and
    /// taking the runs cannot be split by another writer (there is one), so
    /// no run is handed out twice.
    const CLAIM_QUEUED: &'static str = concat!(
        "UPDATE runs SET status = 'running', worker = $1, attempt = attempt + 1, \
         lease_until = $2, started_at = COALESCE(started_at, $3) \
         WHERE status = 'queued' AND id IN (SELECT id FROM runs WHERE status = 'queued' \
         ORDER BY created_at, id LIMIT $4) RETURNING ",
        run_columns!()
    );
    const CLAIM_QUEUED_ONE: &'static str = concat!(
        "UPDATE runs SET status = 'running', worker = $1, attempt = attempt + 1, \
         lease_until = $2, started_at = COALESCE(started_at, $3) \
         WHERE status = 'queued' AND id = $4 RETURNING ",
        run_columns!()
    );
    /// The guard (`running` and lease over) is part of the one statement
    /// that takes the runs, so a run finished meanwhile is never touched.
    const TAKE_EXPIRED: &'static str = concat!(
        "UPDATE runs SET worker = $1, attempt = attempt + 1, lease_until = $2, \
         started_at = COALESCE(started_at, $3) \
         WHERE status = 'running' AND lease_until < $3 AND id IN (SELECT id FROM runs \
         WHERE status = 'running' AND lease_until < $3 ORDER BY lease_until, id LIMIT $4) \
         RETURNING ",
        run_columns!()
    );
    const TAKE_EXPIRED_ONE: &'static str = concat!(
        "UPDATE runs SET worker = $1, attempt = attempt + 1, lease_until = $2, \
         started_at = COALESCE(started_at, $3) \
         WHERE status = 'running' AND lease_until < $3 AND id = $4 RETURNING ",
        run_columns!()
    );
}

// Every statement but the claims above: the shared SQL (`crate::sql`).
// SQLite serialises writers, so it needs no row-lock clauses.
crate::sql::store_sql!(
    SqliteStore,
    sqlx::Sqlite,
    owner_lock = "",
    owner_rows = "runs INDEXED BY runs_owner",
    refresh_lock = ""
);

// Approval decisions: `BEGIN IMMEDIATE` already excludes every other writer.
crate::sql::approval_sql!(SqliteStore, sqlx::Sqlite, row_lock = "");
