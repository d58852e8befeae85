//! The PostgreSQL backend: one database shared by any number of processes
//! on any number of hosts — the queue, the wake-up channel and the store.
//!
//! - **Claims** pick runs with `FOR UPDATE SKIP LOCKED` in a materialized
//!   CTE and take them in the same statement: concurrent claimers never wait
//!   for each other, never get the same run, and never more than `limit`
//!   (a materialized CTE runs once, so its `LIMIT` bounds the whole claim).
//!   Takeovers of expired leases re-check `running` and the lease in the
//!   same statement; heartbeats and finishes are guarded by worker, attempt
//!   and state.
//! - **`apply`** is one transaction, serialised between processes by a
//!   transaction-scoped advisory lock (two processes adding a version to the
//!   same job would otherwise both compute the same version number).
//! - **Wake-ups** are `NOTIFY opsconductor` with [`Event::encode`] payloads;
//!   [`listen`](Store::listen) streams them and re-subscribes by itself after
//!   a lost connection or a server restart (see the `listen` module).
//! - **Restarts**: the pool pings a connection before handing it out, so
//!   connections killed by a restart are replaced on the next query; while
//!   the server is down, queries wait (up to the acquire timeout) for it.

mod listen;
mod open;
mod retention;
mod rows;
mod secrets;
mod users;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opsconductor_core::bus::Event;
use opsconductor_core::model::{Job, JobSpec, LogChunk, Run, RunId, RunStatus, StepResult, Target};
use opsconductor_core::store::{
    ApplyAction, ApplyBatch, ApplyItem, Claim, EventStream, JobStore, LogStore, RunFilter,
    RunStore, Store, StoreCapabilities, TargetStore,
};
use opsconductor_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder};
use tokio::sync::watch;

use self::open::Endpoint;
use crate::common::{
    DEFAULT_LIST_LIMIT, DEFAULT_LOG_LIMIT, MAX_LIST_LIMIT, check_name, lease_end, like_escape,
    limit_or, micros, same_json, seq_to_i64,
};
use crate::rows::{job_columns, log_columns, run_columns, step_columns, to_json};

/// Log chunks per `INSERT` statement (7 parameters each; PostgreSQL allows 65535).
const LOG_ROWS_PER_INSERT: usize = 1000;

/// The advisory lock key that serialises `apply` between processes
/// (`opsc:apl` in ASCII).
const APPLY_LOCK: i64 = 0x6f70_7363_3a61_706c;

/// A store in a PostgreSQL database.
///
/// Cheap to clone: clones share the connection pool. Dropping the last
/// clone (or [`close`](Self::close)) ends every [`listen`](Store::listen)
/// stream.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// How to connect, for the pools of `listen` streams.
    options: Arc<PgConnectOptions>,
    endpoint: Arc<Endpoint>,
    /// Tells `listen` streams the store closed; dropped with the last clone.
    closed: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Opens the database a `postgres://` or `postgresql://` URL names
    /// (`postgres://user:password@host:port/database?sslmode=…`; the usual
    /// `PG*` environment variables fill in what the URL leaves out) and
    /// applies the schema migrations. Several processes may open one
    /// database at the same moment.
    ///
    /// Fails fast, with a message naming the server, database and user
    /// (never the password), when the server cannot be reached within
    /// 10 seconds, the database does not exist, the login is refused, or
    /// the database was set up by a newer version of OpsConductor.
    pub async fn open(url: &str) -> Result<Self> {
        let (endpoint, options) = open::parse(url)?;
        let pool = open::connect(&endpoint, options.clone()).await?;
        let (closed, _) = watch::channel(false);
        Ok(Self {
            pool,
            options: Arc::new(options),
            endpoint: Arc::new(endpoint),
            closed: Arc::new(closed),
        })
    }

    /// Which database this is, for messages: server, database and user.
    pub fn describe(&self) -> String {
        self.endpoint.to_string()
    }

    /// Closes every connection and ends every `listen` stream (at its next
    /// poll); later calls fail. Dropping the store also closes them, in the
    /// background.
    pub async fn close(&self) {
        self.closed.send_replace(true);
        self.pool.close().await;
    }

    /// Maps a database error of operation `op` (naming the server when it
    /// is unreachable).
    fn fail(&self, op: &str) -> impl FnOnce(sqlx::Error) -> Error + use<> {
        let endpoint = self.endpoint.clone();
        let op = op.to_string();
        move |e| open::query_error(&endpoint, &op, &e)
    }

    /// Like [`fail`](Self::fail), for writes about runs: a foreign-key
    /// failure means a run is missing.
    fn run_write_fail(&self, op: &str, ids: &[RunId]) -> impl FnOnce(sqlx::Error) -> Error + use<> {
        let endpoint = self.endpoint.clone();
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
            _ => open::query_error(&endpoint, &op, &e),
        }
    }

    /// Upserts a step result; with `owner`, only while that worker holds the
    /// run at the result's attempt. The owner's row is locked (`FOR SHARE`)
    /// by the same statement, so a concurrent take-over either waits for
    /// this write or makes it refused — never both.
    async fn put_step_result_guarded(
        &self,
        owner: Option<&str>,
        result: &StepResult,
    ) -> Result<bool> {
        let sql = if owner.is_some() {
            concat!(
                "WITH owner AS (SELECT 1 FROM runs WHERE id = $11 AND worker = $12 \
                   AND attempt = $8 AND status = 'running' FOR SHARE) \
                 INSERT INTO step_results (",
                step_columns!(),
                ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM owner \
                 ON CONFLICT (run_id, step, target) DO UPDATE SET \
                   status = EXCLUDED.status, exit_code = EXCLUDED.exit_code, \
                   signal = EXCLUDED.signal, error = EXCLUDED.error, attempt = EXCLUDED.attempt, \
                   started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at"
            )
        } else {
            concat!(
                "INSERT INTO step_results (",
                step_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (run_id, step, target) DO UPDATE SET \
                   status = EXCLUDED.status, exit_code = EXCLUDED.exit_code, \
                   signal = EXCLUDED.signal, error = EXCLUDED.error, attempt = EXCLUDED.attempt, \
                   started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at"
            )
        };
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
            .map_err(self.run_write_fail("recording a step result", &[result.run_id]))?;
        Ok(done.rows_affected() > 0)
    }

    /// Appends log chunks; with `owner` (worker, attempt), only while that
    /// worker holds their run — checked (and the run row share-locked)
    /// inside the write transaction.
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
        let mut tx = self.pool.begin().await.map_err(self.fail(op))?;
        if let Some((worker, attempt)) = owner {
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM runs WHERE id = $1 AND worker = $2 AND attempt = $3 \
                 AND status = 'running' FOR SHARE",
            )
            .bind(run.to_string())
            .bind(worker)
            .bind(i64::from(attempt))
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.fail(op))?;
            if held.is_none() {
                return Ok(false);
            }
        }
        for batch in encoded.chunks(LOG_ROWS_PER_INSERT) {
            let mut q =
                QueryBuilder::<Postgres>::new(concat!("INSERT INTO logs (", log_columns!(), ") "));
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
            let ids: Vec<RunId> = batch.iter().map(|c| c.0).collect();
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(self.run_write_fail(op, &ids))?;
        }
        tx.commit().await.map_err(self.fail(op))?;
        Ok(true)
    }
}

/// Runs decoded in the order the query returned them.
fn runs(rows: &[PgRow]) -> Result<Vec<Run>> {
    rows.iter().map(rows::run).collect()
}

#[async_trait]
impl TargetStore for PostgresStore {
    async fn get_target(&self, name: &str) -> Result<Option<Target>> {
        let row = sqlx::query("SELECT spec FROM targets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.fail("reading a target"))?;
        row.map(|r| rows::json(&r, "spec")).transpose()
    }

    async fn list_targets(&self) -> Result<Vec<Target>> {
        let rows = sqlx::query("SELECT spec FROM targets ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("listing targets"))?;
        rows.iter().map(|r| rows::json(r, "spec")).collect()
    }

    async fn delete_target(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM targets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(self.fail("deleting a target"))?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn get_job(&self, name: &str, version: Option<u32>) -> Result<Option<Job>> {
        let query = match version {
            Some(v) => sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE name = $1 AND version = $2"
            ))
            .bind(name)
            .bind(i64::from(v)),
            None => sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE name = $1 ORDER BY version DESC LIMIT 1"
            ))
            .bind(name),
        };
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(self.fail("reading a job"))?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn list_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT DISTINCT ON (name) ",
            job_columns!(),
            " FROM jobs ORDER BY name, version DESC"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("listing jobs"))?;
        rows.iter().map(rows::job).collect()
    }

    async fn job_versions(&self, name: &str) -> Result<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE name = $1 ORDER BY version"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("listing job versions"))?;
        rows.iter().map(rows::job).collect()
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn insert_run(&self, run: &Run) -> Result<()> {
        let spec = to_json("run spec", &run.spec)?;
        let params = to_json("run parameters", &run.params)?;
        let targets = to_json("run targets", &run.targets)?;
        let endpoint = self.endpoint.clone();
        sqlx::query(concat!(
            "INSERT INTO runs (",
            run_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
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
            _ => open::query_error(&endpoint, "recording a run", &e),
        })?;
        Ok(())
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(self.fail("reading a run"))?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn find_runs_by_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
        // Ids are stored lower-case; people may type them either way.
        let pattern = format!("{}%", like_escape(&prefix.to_ascii_lowercase()));
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE id LIKE $1 ESCAPE '\\' ORDER BY id LIMIT 2",
        )
        .bind(pattern)
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("finding runs by id prefix"))?;
        ids.iter().map(|id| crate::rows::run_id(id)).collect()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let mut q = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE TRUE"
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
                sqlx::query_scalar("SELECT created_at FROM runs WHERE id = $1")
                    .bind(before.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("listing runs"))?;
            let Some(created) = created else {
                return Err(Error::NotFound {
                    what: "run",
                    name: before.to_string(),
                    hint: Some("the run to list from (`before`) does not exist".into()),
                });
            };
            q.push(" AND (created_at, id) < (")
                .push_bind(created)
                .push(", ")
                .push_bind(before.to_string())
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit_or(filter.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("listing runs"))?;
        runs(&rows)
    }

    async fn claim_queued(&self, claim: &Claim) -> Result<Vec<Run>> {
        if claim.limit == 0 {
            return Ok(vec![]);
        }
        let now = Utc::now();
        let lease_until = micros(lease_end(now, claim.lease)?);
        // `picked` locks the runs it chooses and skips those another claim
        // holds; being MATERIALIZED it runs exactly once, so its LIMIT bounds
        // the claim (an inlined subquery may be re-evaluated per row).
        let query = match claim.only {
            None => sqlx::query(concat!(
                "WITH picked AS MATERIALIZED (\
                   SELECT id FROM runs WHERE status = 'queued' \
                   ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED\
                 ), taken AS (\
                   UPDATE runs SET status = 'running', worker = $1, attempt = runs.attempt + 1, \
                     lease_until = $2, started_at = COALESCE(runs.started_at, $3) \
                   FROM picked WHERE runs.id = picked.id AND runs.status = 'queued' \
                   RETURNING runs.*\
                 ) SELECT ",
                run_columns!(),
                " FROM taken ORDER BY created_at, id"
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(limit_or(claim.limit, 1, usize::MAX)),
            Some(only) => sqlx::query(concat!(
                "WITH picked AS MATERIALIZED (\
                   SELECT id FROM runs WHERE status = 'queued' AND id = $4 \
                   FOR UPDATE SKIP LOCKED\
                 ), taken AS (\
                   UPDATE runs SET status = 'running', worker = $1, attempt = runs.attempt + 1, \
                     lease_until = $2, started_at = COALESCE(runs.started_at, $3) \
                   FROM picked WHERE runs.id = picked.id AND runs.status = 'queued' \
                   RETURNING runs.*\
                 ) SELECT ",
                run_columns!(),
                " FROM taken ORDER BY created_at, id"
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(only.to_string()),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("claiming runs"))?;
        runs(&rows)
    }

    async fn claim_expired(&self, claim: &Claim, now: DateTime<Utc>) -> Result<Vec<Run>> {
        if claim.limit == 0 {
            return Ok(vec![]);
        }
        let lease_until = micros(lease_end(now, claim.lease)?);
        // The guard (`running` and lease over) is checked when the row is
        // locked (FOR UPDATE re-reads the latest version) and again by the
        // UPDATE, in one statement: a run finished meanwhile is never touched.
        let query = match claim.only {
            None => sqlx::query(concat!(
                "WITH picked AS MATERIALIZED (\
                   SELECT id FROM runs WHERE status = 'running' AND lease_until < $3 \
                   ORDER BY lease_until, id LIMIT $4 FOR UPDATE SKIP LOCKED\
                 ), taken AS (\
                   UPDATE runs SET worker = $1, attempt = runs.attempt + 1, lease_until = $2, \
                     started_at = COALESCE(runs.started_at, $3) \
                   FROM picked WHERE runs.id = picked.id \
                     AND runs.status = 'running' AND runs.lease_until < $3 \
                   RETURNING runs.*\
                 ) SELECT ",
                run_columns!(),
                " FROM taken ORDER BY created_at, id"
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(limit_or(claim.limit, 1, usize::MAX)),
            Some(only) => sqlx::query(concat!(
                "WITH picked AS MATERIALIZED (\
                   SELECT id FROM runs WHERE status = 'running' AND lease_until < $3 AND id = $4 \
                   FOR UPDATE SKIP LOCKED\
                 ), taken AS (\
                   UPDATE runs SET worker = $1, attempt = runs.attempt + 1, lease_until = $2, \
                     started_at = COALESCE(runs.started_at, $3) \
                   FROM picked WHERE runs.id = picked.id \
                     AND runs.status = 'running' AND runs.lease_until < $3 \
                   RETURNING runs.*\
                 ) SELECT ",
                run_columns!(),
                " FROM taken ORDER BY created_at, id"
            ))
            .bind(&claim.worker)
            .bind(lease_until)
            .bind(micros(now))
            .bind(only.to_string()),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("taking over expired runs"))?;
        runs(&rows)
    }

    async fn heartbeat(
        &self,
        id: RunId,
        worker: &str,
        attempt: u32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET lease_until = $1 \
             WHERE id = $2 AND worker = $3 AND attempt = $4 AND status = 'running'",
        )
        .bind(micros(lease_until))
        .bind(id.to_string())
        .bind(worker)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await
        .map_err(self.fail("extending a run's lease"))?;
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
        let done = sqlx::query(
            "UPDATE runs SET status = $1, error = $2, finished_at = $3, lease_until = NULL \
             WHERE id = $4 AND worker = $5 AND attempt = $6 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(micros(Utc::now()))
        .bind(id.to_string())
        .bind(worker)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await
        .map_err(self.fail("finishing a run"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn request_cancel(&self, id: RunId) -> Result<Option<Run>> {
        // Every `SET` expression sees the row as it was, so one statement
        // decides and changes.
        let row = sqlx::query(concat!(
            "UPDATE runs SET \
               finished_at = CASE WHEN status = 'queued' THEN $1 ELSE finished_at END, \
               cancel_requested = CASE WHEN status IN ('queued', 'running') THEN TRUE \
                                       ELSE cancel_requested END, \
               status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END \
             WHERE id = $2 RETURNING ",
            run_columns!()
        ))
        .bind(micros(Utc::now()))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(self.fail("cancelling a run"))?;
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
            " FROM step_results WHERE run_id = $1 ORDER BY step, target"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("reading step results"))?;
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
            " FROM step_results WHERE run_id = $1 AND (step, target) > ($2, $3) \
             ORDER BY step, target LIMIT $4"
        ))
        .bind(id.to_string())
        .bind(step)
        .bind(target)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("reading a page of step results"))?;
        rows.iter().map(rows::step_result).collect()
    }
}

#[async_trait]
impl LogStore for PostgresStore {
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
            " FROM logs WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(id.to_string())
        .bind(after)
        .bind(limit_or(limit, DEFAULT_LOG_LIMIT, usize::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(self.fail("reading log chunks"))?;
        rows.iter().map(rows::log_chunk).collect()
    }

    async fn last_log_seq(&self, id: RunId) -> Result<u64> {
        let seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE run_id = $1")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await
                .map_err(self.fail("reading the last log sequence number"))?;
        u64::try_from(seq).map_err(|_| crate::common::corrupt("log sequence number", seq))
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> StoreCapabilities {
        let mut caps = StoreCapabilities::default();
        caps.multi_host = true;
        caps.notifications = true;
        caps
    }

    fn user_store(&self) -> Option<&dyn opsconductor_core::store::UserStore> {
        Some(self)
    }

    fn secret_store(&self) -> Option<&dyn opsconductor_core::store::SecretStore> {
        Some(self)
    }

    fn audit_store(&self) -> Option<&dyn opsconductor_core::store::AuditStore> {
        Some(self)
    }

    fn retention_store(&self) -> Option<&dyn opsconductor_core::store::RetentionStore> {
        Some(self)
    }

    async fn apply(&self, batch: &ApplyBatch, by: &str) -> Result<Vec<ApplyItem>> {
        let op = "applying targets and jobs";
        let mut tx = self.pool.begin().await.map_err(self.fail(op))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPLY_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(self.fail(op))?;
        match self.apply_in(&mut tx, batch, by, Utc::now()).await {
            Ok(items) => {
                tx.commit().await.map_err(self.fail(op))?;
                Ok(items)
            }
            Err(e) => {
                // Nothing of the batch stays: the rule is all or none.
                tx.rollback().await.map_err(self.fail(op))?;
                Err(e)
            }
        }
    }

    async fn notify(&self, event: Event) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(listen::CHANNEL)
            .bind(event.encode())
            .execute(&self.pool)
            .await
            .map_err(self.fail("sending a notification"))?;
        Ok(())
    }

    async fn listen(&self) -> Result<Option<EventStream>> {
        if *self.closed.borrow() {
            return Err(open::query_error(
                &self.endpoint,
                "listening for notifications",
                &sqlx::Error::PoolClosed,
            ));
        }
        // Each stream has its own connection, in a pool of its own (see
        // `open::listener_pool`). Subscribed before returning: every event
        // sent after `listen` returns reaches the stream (unless the
        // connection is lost meanwhile).
        let pool = open::listener_pool(&self.options);
        let listener = match listen::subscribe(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                pool.close().await;
                return Err(open::query_error(
                    &self.endpoint,
                    "listening for notifications",
                    &e,
                ));
            }
        };
        Ok(Some(listen::events(
            listener,
            pool,
            self.closed.subscribe(),
            self.endpoint.clone(),
        )))
    }
}

impl PostgresStore {
    /// The body of [`Store::apply`], inside its transaction.
    ///
    /// Problems with the batch itself (an empty or repeated name) are found on
    /// the way, after earlier items were written, and undone by the rollback.
    async fn apply_in(
        &self,
        conn: &mut PgConnection,
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
            let stored: Option<String> =
                sqlx::query_scalar("SELECT spec FROM targets WHERE name = $1")
                    .bind(&target.name)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(self.fail(op))?;
            let action = match stored {
                None => ApplyAction::Created,
                Some(old) if same_json(&old, &value) => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Updated,
            };
            if action != ApplyAction::Unchanged {
                sqlx::query(
                    "INSERT INTO targets (name, spec, created_at, updated_at) \
                     VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, \
                     updated_at = EXCLUDED.updated_at",
                )
                .bind(&target.name)
                .bind(value.to_string())
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(self.fail(op))?;
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
            let (action, version) = self.apply_job(conn, job, by, now).await?;
            items.push(ApplyItem {
                kind: "job",
                name: job.name.clone(),
                action,
                version: Some(version),
            });
        }
        Ok(items)
    }

    /// Stores a job version unless it equals the latest; returns what
    /// happened and the version now current.
    async fn apply_job(
        &self,
        conn: &mut PgConnection,
        job: &JobSpec,
        by: &str,
        now: i64,
    ) -> Result<(ApplyAction, u32)> {
        let op = "applying targets and jobs";
        let value = serde_json::to_value(job)
            .map_err(|e| Error::Internal(format!("encoding job '{}': {e}", job.name)))?;
        let latest: Option<(i64, String)> = sqlx::query_as(
            "SELECT version, spec FROM jobs WHERE name = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(&job.name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(self.fail(op))?;
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
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&job.name)
        .bind(i64::from(version))
        .bind(job.status.as_str())
        .bind(value.to_string())
        .bind(now)
        .bind(by)
        .execute(&mut *conn)
        .await
        .map_err(self.fail(op))?;
        Ok((action, version))
    }
}
