//! The embedded SQLite backend: one database file (or memory), WAL mode,
//! shared by every task of a process and by other processes on the same host.
//!
//! SQLite has one writer at a time. Writers of this process queue on an async
//! mutex (so they never spin in SQLite's busy handler against each other);
//! writers of other processes are waited for by the busy timeout, and every
//! multi-statement write starts with `BEGIN IMMEDIATE`, so a transaction never
//! has to upgrade a read lock — the case the busy timeout cannot cover. Claims
//! are single `UPDATE … RETURNING` statements, atomic on their own.

mod open;
mod retention;
mod rows;
mod secrets;
mod users;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opsconductor_core::model::{Job, JobSpec, LogChunk, Run, RunId, RunStatus, StepResult, Target};
use opsconductor_core::store::{
    ApplyAction, ApplyBatch, ApplyItem, Claim, JobStore, LogStore, RunFilter, RunStore, Store,
    StoreCapabilities, TargetStore,
};
use opsconductor_core::{Error, Result};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use self::open::Location;
use crate::common::{
    Context, DEFAULT_LIST_LIMIT, DEFAULT_LOG_LIMIT, MAX_LIST_LIMIT, check_name, lease_end,
    like_escape, limit_or, micros, same_json, seq_to_i64,
};
use crate::rows::{job_columns, log_columns, run_columns, step_columns};

/// Log chunks per `INSERT` statement (7 parameters each, far below SQLite's limit).
const LOG_ROWS_PER_INSERT: usize = 200;

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
            .ctx("creating a temporary directory")?;
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

    /// Starts a write transaction holding SQLite's write lock from the start.
    async fn begin_write(&self, op: &str) -> Result<Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.ctx(op)
    }

    /// Upserts a step result; with `owner`, only while that worker holds the
    /// run at the result's attempt (one statement: check and write are atomic).
    async fn put_step_result_guarded(
        &self,
        owner: Option<&str>,
        result: &StepResult,
    ) -> Result<bool> {
        let sql = if owner.is_some() {
            concat!(
                "INSERT INTO step_results (",
                step_columns!(),
                ") SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 \
                 WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?11 AND worker = ?12 \
                   AND attempt = ?8 AND status = 'running') \
                 ON CONFLICT (run_id, step, target) DO UPDATE SET \
                   status = excluded.status, exit_code = excluded.exit_code, \
                   signal = excluded.signal, error = excluded.error, attempt = excluded.attempt, \
                   started_at = excluded.started_at, finished_at = excluded.finished_at"
            )
        } else {
            concat!(
                "INSERT INTO step_results (",
                step_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (run_id, step, target) DO UPDATE SET \
                   status = excluded.status, exit_code = excluded.exit_code, \
                   signal = excluded.signal, error = excluded.error, attempt = excluded.attempt, \
                   started_at = excluded.started_at, finished_at = excluded.finished_at"
            )
        };
        let _w = self.writer().await;
        let mut q = sqlx::query(sql)
            .bind(result.run_id.to_string())
            .bind(i64::from(result.step))
            .bind(&result.target)
            .bind(result.status.as_str())
            .bind(result.exit_code)
            .bind(result.signal)
            .bind(result.error.as_deref())
            .bind(i64::from(result.attempt))
            .bind(micros(result.started_at))
            .bind(result.finished_at.map(micros));
        if let Some(worker) = owner {
            q = q.bind(result.run_id.to_string()).bind(worker);
        }
        let done = q
            .execute(&self.pool)
            .await
            .map_err(run_write_error("recording a step result", &[result.run_id]))?;
        Ok(done.rows_affected() > 0)
    }

    /// Appends log chunks; with `owner` (worker, attempt), only while that
    /// worker holds their run — checked inside the write transaction.
    async fn append_logs_guarded(
        &self,
        owner: Option<(&str, u32)>,
        chunks: &[LogChunk],
    ) -> Result<bool> {
        if chunks.is_empty() {
            return Ok(true);
        }
        let run = chunks[0].run_id;
        if owner.is_some() && chunks.iter().any(|c| c.run_id != run) {
            return Err(Error::validation(
                "log chunks",
                "a guarded append takes the chunks of one run only",
            ));
        }
        // Encode everything before taking the write lock.
        let mut encoded = Vec::with_capacity(chunks.len());
        for c in chunks {
            encoded.push((
                c.run_id,
                seq_to_i64(c.seq)?,
                c.step.map(i64::from),
                c.target.as_deref(),
                c.stream.as_str(),
                c.data.as_slice(),
                micros(c.time),
            ));
        }
        let op = "appending log chunks";
        let _w = self.writer().await;
        let mut tx = self.begin_write(op).await?;
        if let Some((worker, attempt)) = owner {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM runs WHERE id = ? AND worker = ? AND attempt = ? \
                 AND status = 'running'",
            )
            .bind(run.to_string())
            .bind(worker)
            .bind(i64::from(attempt))
            .fetch_optional(&mut *tx)
            .await
            .ctx(op)?;
            if held.is_none() {
                return Ok(false);
            }
        }
        for batch in encoded.chunks(LOG_ROWS_PER_INSERT) {
            let mut q =
                QueryBuilder::<Sqlite>::new(concat!("INSERT INTO logs (", log_columns!(), ") "));
            q.push_values(batch, |mut row, c| {
                row.push_bind(c.0.to_string())
                    .push_bind(c.1)
                    .push_bind(c.2)
                    .push_bind(c.3)
                    .push_bind(c.4)
                    .push_bind(c.5)
                    .push_bind(c.6);
            });
            // A retried batch carries the same (run, seq): keep what is there.
            q.push(" ON CONFLICT (run_id, seq) DO NOTHING");
            q.build().execute(&mut *tx).await.map_err(run_write_error(
                op,
                &batch.iter().map(|c| c.0).collect::<Vec<_>>(),
            ))?;
        }
        tx.commit().await.ctx(op)?;
        Ok(true)
    }
}

/// Maps a failed write about runs: a foreign-key failure means a run is missing.
fn run_write_error(op: &str, ids: &[RunId]) -> impl FnOnce(sqlx::Error) -> Error {
    let op = op.to_string();
    let mut names: Vec<String> = ids.iter().map(RunId::to_string).collect();
    names.sort();
    names.dedup();
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => Error::NotFound {
            what: "run",
            name: names.join("' or '"),
            hint: Some(format!("{op}: every run must be recorded first")),
        },
        _ => Error::store(format!("{op}: {e}")),
    }
}

/// Sorts claimed runs oldest first (`RETURNING` promises no order).
fn oldest_first(rows: Vec<SqliteRow>) -> Result<Vec<Run>> {
    let mut runs = rows.iter().map(rows::run).collect::<Result<Vec<_>>>()?;
    runs.sort_by_key(|r| (r.created_at, r.id));
    Ok(runs)
}

#[async_trait]
impl TargetStore for SqliteStore {
    async fn get_target(&self, name: &str) -> Result<Option<Target>> {
        let row = sqlx::query("SELECT spec FROM targets WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a target")?;
        row.map(|r| rows::json(&r, "spec")).transpose()
    }

    async fn list_targets(&self) -> Result<Vec<Target>> {
        let rows = sqlx::query("SELECT spec FROM targets ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .ctx("listing targets")?;
        rows.iter().map(|r| rows::json(r, "spec")).collect()
    }

    async fn delete_target(&self, name: &str) -> Result<bool> {
        let _w = self.writer().await;
        let done = sqlx::query("DELETE FROM targets WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .ctx("deleting a target")?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn get_job(&self, name: &str, version: Option<u32>) -> Result<Option<Job>> {
        let query = match version {
            Some(v) => sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE name = ? AND version = ?"
            ))
            .bind(name)
            .bind(i64::from(v)),
            None => sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE name = ? ORDER BY version DESC LIMIT 1"
            ))
            .bind(name),
        };
        let row = query
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a job")?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn list_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs AS j WHERE version = (SELECT MAX(version) FROM jobs WHERE name = j.name) \
             ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx("listing jobs")?;
        rows.iter().map(rows::job).collect()
    }

    async fn job_versions(&self, name: &str) -> Result<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE name = ? ORDER BY version"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .ctx("listing job versions")?;
        rows.iter().map(rows::job).collect()
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn insert_run(&self, run: &Run) -> Result<()> {
        let spec = crate::rows::to_json("run spec", &run.spec)?;
        let params = crate::rows::to_json("run parameters", &run.params)?;
        let targets = crate::rows::to_json("run targets", &run.targets)?;
        let _w = self.writer().await;
        sqlx::query(concat!(
            "INSERT INTO runs (",
            run_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(run.id.to_string())
        .bind(&run.job)
        .bind(run.job_version.map(i64::from))
        .bind(spec)
        .bind(params)
        .bind(targets)
        .bind(run.status.as_str())
        .bind(&run.requested_by)
        .bind(i64::from(run.attempt))
        .bind(run.worker.as_deref())
        .bind(run.lease_until.map(micros))
        .bind(run.cancel_requested)
        .bind(run.error.as_deref())
        .bind(micros(run.created_at))
        .bind(run.started_at.map(micros))
        .bind(run.finished_at.map(micros))
        .bind(run.request_id.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict(format!("run {} already exists", run.id))
            }
            _ => Error::store(format!("recording a run: {e}")),
        })?;
        Ok(())
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a run")?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn find_runs_by_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
        // Ids are stored lower-case; people may type them either way.
        let pattern = format!("{}%", like_escape(&prefix.to_ascii_lowercase()));
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 2",
        )
        .bind(pattern)
        .fetch_all(&self.pool)
        .await
        .ctx("finding runs by id prefix")?;
        ids.iter().map(|id| crate::rows::run_id(id)).collect()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let mut q = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE 1 = 1"
        ));
        if let Some(job) = &filter.job {
            q.push(" AND job = ").push_bind(job.clone());
        }
        if !filter.statuses.is_empty() {
            q.push(" AND status IN (");
            let mut list = q.separated(", ");
            for status in &filter.statuses {
                list.push_bind(status.as_str());
            }
            q.push(")");
        }
        if let Some(before) = filter.before {
            // Keyset pagination: strictly older than the cursor run, in the
            // same (created_at, id) order the list is sorted by.
            let created: Option<i64> =
                sqlx::query_scalar("SELECT created_at FROM runs WHERE id = ?")
                    .bind(before.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .ctx("listing runs")?;
            let Some(created) = created else {
                return Err(Error::NotFound {
                    what: "run",
                    name: before.to_string(),
                    hint: Some("the run to list from (`before`) does not exist".into()),
                });
            };
            q.push(" AND (created_at < ")
                .push_bind(created)
                .push(" OR (created_at = ")
                .push_bind(created)
                .push(" AND id < ")
                .push_bind(before.to_string())
                .push("))");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit_or(filter.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT));
        let rows = q.build().fetch_all(&self.pool).await.ctx("listing runs")?;
        rows.iter().map(rows::run).collect()
    }

    async fn claim_queued(&self, claim: &Claim) -> Result<Vec<Run>> {
        if claim.limit == 0 {
            return Ok(vec![]);
        }
        let now = Utc::now();
        let lease_until = micros(lease_end(now, claim.lease)?);
        let _w = self.writer().await;
        // One statement each: choosing and taking the runs cannot be split by
        // another writer, so no run is handed out twice.
        let rows = match claim.only {
            None => sqlx::query(concat!(
                "UPDATE runs SET status = 'running', worker = ?, attempt = attempt + 1, \
                 lease_until = ?, started_at = COALESCE(started_at, ?) \
                 WHERE status = 'queued' AND id IN (SELECT id FROM runs WHERE status = 'queued' \
                 ORDER BY created_at, id LIMIT ?) RETURNING ",
                run_columns!()
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(limit_or(claim.limit, 1, usize::MAX)),
            Some(only) => sqlx::query(concat!(
                "UPDATE runs SET status = 'running', worker = ?, attempt = attempt + 1, \
                 lease_until = ?, started_at = COALESCE(started_at, ?) \
                 WHERE status = 'queued' AND id = ? RETURNING ",
                run_columns!()
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(only.to_string()),
        }
        .fetch_all(&self.pool)
        .await
        .ctx("claiming runs")?;
        oldest_first(rows)
    }

    async fn claim_expired(&self, claim: &Claim, now: DateTime<Utc>) -> Result<Vec<Run>> {
        if claim.limit == 0 {
            return Ok(vec![]);
        }
        let lease_until = micros(lease_end(now, claim.lease)?);
        let _w = self.writer().await;
        // The guard (`running` and lease over) is part of the one statement
        // that takes the runs, so a run finished meanwhile is never touched.
        let rows = match claim.only {
            None => sqlx::query(concat!(
                "UPDATE runs SET worker = ?1, attempt = attempt + 1, lease_until = ?2, \
                 started_at = COALESCE(started_at, ?3) \
                 WHERE status = 'running' AND lease_until < ?3 AND id IN (SELECT id FROM runs \
                 WHERE status = 'running' AND lease_until < ?3 \
                 ORDER BY lease_until, id LIMIT ?4) RETURNING ",
                run_columns!()
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(limit_or(claim.limit, 1, usize::MAX)),
            Some(only) => sqlx::query(concat!(
                "UPDATE runs SET worker = ?1, attempt = attempt + 1, lease_until = ?2, \
                 started_at = COALESCE(started_at, ?3) \
                 WHERE status = 'running' AND lease_until < ?3 AND id = ?4 RETURNING ",
                run_columns!()
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(only.to_string()),
        }
        .fetch_all(&self.pool)
        .await
        .ctx("taking over expired runs")?;
        oldest_first(rows)
    }

    async fn heartbeat(
        &self,
        id: RunId,
        worker: &str,
        attempt: u32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool> {
        let _w = self.urgent_writer().await;
        let done = sqlx::query(
            "UPDATE runs SET lease_until = ? \
             WHERE id = ? AND worker = ? AND attempt = ? AND status = 'running'",
        )
        .bind(micros(lease_until))
        .bind(id.to_string())
        .bind(worker)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await
        .ctx("extending a run's lease")?;
        Ok(done.rows_affected() > 0)
    }

    async fn finish_run(
        &self,
        id: RunId,
        worker: &str,
        attempt: u32,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<bool> {
        if !status.is_terminal() {
            return Err(Error::validation(
                "status",
                format!("a run cannot finish as '{status}' (expected a final state)"),
            ));
        }
        let _w = self.writer().await;
        let done = sqlx::query(
            "UPDATE runs SET status = ?, error = ?, finished_at = ?, lease_until = NULL \
             WHERE id = ? AND worker = ? AND attempt = ? AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(micros(Utc::now()))
        .bind(id.to_string())
        .bind(worker)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await
        .ctx("finishing a run")?;
        Ok(done.rows_affected() > 0)
    }

    async fn request_cancel(&self, id: RunId) -> Result<Option<Run>> {
        let _w = self.writer().await;
        // `CASE` sees the row as it was, so one statement decides and changes.
        let row = sqlx::query(concat!(
            "UPDATE runs SET \
               finished_at = CASE WHEN status = 'queued' THEN ?1 ELSE finished_at END, \
               cancel_requested = CASE WHEN status IN ('queued', 'running') THEN 1 \
                                       ELSE cancel_requested END, \
               status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END \
             WHERE id = ?2 RETURNING ",
            run_columns!()
        ))
        .bind(micros(Utc::now()))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .ctx("cancelling a run")?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn put_step_result(&self, result: &StepResult) -> Result<()> {
        self.put_step_result_guarded(None, result).await.map(|_| ())
    }

    async fn put_step_result_as(&self, worker: &str, result: &StepResult) -> Result<bool> {
        self.put_step_result_guarded(Some(worker), result).await
    }

    async fn step_results(&self, id: RunId) -> Result<Vec<StepResult>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            step_columns!(),
            " FROM step_results WHERE run_id = ? ORDER BY step, target"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .ctx("reading step results")?;
        rows.iter().map(rows::step_result).collect()
    }
    async fn step_results_page(
        &self,
        id: RunId,
        after: Option<(u32, &str)>,
        limit: usize,
    ) -> Result<Vec<StepResult>> {
        // No cursor: after step -1, before every result.
        let (step, target) = after.map_or((-1, ""), |(s, t)| (i64::from(s), t));
        let rows = sqlx::query(concat!(
            "SELECT ",
            step_columns!(),
            " FROM step_results WHERE run_id = ? AND (step, target) > (?, ?) \
             ORDER BY step, target LIMIT ?"
        ))
        .bind(id.to_string())
        .bind(step)
        .bind(target)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .ctx("reading a page of step results")?;
        rows.iter().map(rows::step_result).collect()
    }
}

#[async_trait]
impl LogStore for SqliteStore {
    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()> {
        self.append_logs_guarded(None, chunks).await.map(|_| ())
    }

    async fn append_logs_as(
        &self,
        worker: &str,
        attempt: u32,
        chunks: &[LogChunk],
    ) -> Result<bool> {
        self.append_logs_guarded(Some((worker, attempt)), chunks)
            .await
    }

    async fn read_logs(&self, id: RunId, after: u64, limit: usize) -> Result<Vec<LogChunk>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(vec![]);
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            log_columns!(),
            " FROM logs WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(id.to_string())
        .bind(after)
        .bind(limit_or(limit, DEFAULT_LOG_LIMIT, usize::MAX))
        .fetch_all(&self.pool)
        .await
        .ctx("reading log chunks")?;
        rows.iter().map(rows::log_chunk).collect()
    }

    async fn last_log_seq(&self, id: RunId) -> Result<u64> {
        let seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE run_id = ?")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await
                .ctx("reading the last log sequence number")?;
        u64::try_from(seq).map_err(|_| crate::common::corrupt("log sequence number", seq))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> StoreCapabilities {
        // One host (processes share the file), no cross-process wake-ups.
        StoreCapabilities::default()
    }

    fn secret_store(&self) -> Option<&dyn opsconductor_core::store::SecretStore> {
        Some(self)
    }

    fn audit_store(&self) -> Option<&dyn opsconductor_core::store::AuditStore> {
        Some(self)
    }

    fn user_store(&self) -> Option<&dyn opsconductor_core::store::UserStore> {
        Some(self)
    }

    fn retention_store(&self) -> Option<&dyn opsconductor_core::store::RetentionStore> {
        Some(self)
    }

    async fn apply(&self, batch: &ApplyBatch, by: &str) -> Result<Vec<ApplyItem>> {
        let op = "applying targets and jobs";
        let _w = self.writer().await;
        let mut tx = self.begin_write(op).await?;
        match apply_in(&mut tx, batch, by, Utc::now()).await {
            Ok(items) => {
                tx.commit().await.ctx(op)?;
                Ok(items)
            }
            Err(e) => {
                // Nothing of the batch stays: the rule is all or none.
                tx.rollback().await.ctx(op)?;
                Err(e)
            }
        }
    }
}

/// The body of [`SqliteStore::apply`], inside its transaction.
///
/// Problems with the batch itself (an empty or repeated name) are found on
/// the way, after earlier items were written, and undone by the rollback.
async fn apply_in(
    conn: &mut SqliteConnection,
    batch: &ApplyBatch,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ApplyItem>> {
    let op = "applying targets and jobs";
    let now = micros(now);
    let mut items = Vec::with_capacity(batch.targets.len() + batch.jobs.len());

    let mut seen = HashSet::new();
    for (i, target) in batch.targets.iter().enumerate() {
        check_name(
            &format!("targets[{i}].name"),
            "target",
            &target.name,
            &mut seen,
        )?;
        let value = serde_json::to_value(target)
            .map_err(|e| Error::Internal(format!("encoding target '{}': {e}", target.name)))?;
        let stored: Option<String> = sqlx::query_scalar("SELECT spec FROM targets WHERE name = ?")
            .bind(&target.name)
            .fetch_optional(&mut *conn)
            .await
            .ctx(op)?;
        let action = match stored {
            None => ApplyAction::Created,
            Some(old) if same_json(&old, &value) => ApplyAction::Unchanged,
            Some(_) => ApplyAction::Updated,
        };
        if action != ApplyAction::Unchanged {
            sqlx::query(
                "INSERT INTO targets (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
                 updated_at = excluded.updated_at",
            )
            .bind(&target.name)
            .bind(value.to_string())
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await
            .ctx(op)?;
        }
        items.push(ApplyItem {
            kind: "target",
            name: target.name.clone(),
            action,
            version: None,
        });
    }

    let mut seen = HashSet::new();
    for (i, job) in batch.jobs.iter().enumerate() {
        check_name(&format!("jobs[{i}].name"), "job", &job.name, &mut seen)?;
        let (action, version) = apply_job(conn, job, by, now).await?;
        items.push(ApplyItem {
            kind: "job",
            name: job.name.clone(),
            action,
            version: Some(version),
        });
    }
    Ok(items)
}

/// Stores a job version unless it equals the latest; returns what happened
/// and the version now current.
async fn apply_job(
    conn: &mut SqliteConnection,
    job: &JobSpec,
    by: &str,
    now: i64,
) -> Result<(ApplyAction, u32)> {
    let op = "applying targets and jobs";
    let value = serde_json::to_value(job)
        .map_err(|e| Error::Internal(format!("encoding job '{}': {e}", job.name)))?;
    let latest: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, spec FROM jobs WHERE name = ? ORDER BY version DESC LIMIT 1",
    )
    .bind(&job.name)
    .fetch_optional(&mut *conn)
    .await
    .ctx(op)?;
    let (action, version) = match latest {
        None => (ApplyAction::Created, 1),
        Some((v, old)) if same_json(&old, &value) => {
            return Ok((
                ApplyAction::Unchanged,
                crate::common::to_u32("job version", v)?,
            ));
        }
        Some((v, _)) => (ApplyAction::Updated, v + 1),
    };
    let version = u32::try_from(version)
        .map_err(|_| Error::Conflict(format!("job '{}' has too many versions", job.name)))?;
    sqlx::query(
        "INSERT INTO jobs (name, version, status, spec, created_at, created_by) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&job.name)
    .bind(i64::from(version))
    .bind(job.status.as_str())
    .bind(value.to_string())
    .bind(now)
    .bind(by)
    .execute(&mut *conn)
    .await
    .ctx(op)?;
    Ok((action, version))
}
