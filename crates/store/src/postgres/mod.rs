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
//!   same job would otherwise both compute the same version number); so are
//!   audit appends and prunes (the hash chain stays linear). Guarded writes
//!   share-lock the owner's run row; a refresh-token use locks its token and
//!   family (`FOR UPDATE`).
//! - **Wake-ups** are `NOTIFY opsconductor` with [`Event::encode`] payloads;
//!   [`listen`](opsconductor_core::store::Store::listen) streams them and
//!   re-subscribes by itself after a lost connection or a server restart
//!   (see the `listen` module).
//! - **Restarts**: the pool pings a connection before handing it out, so
//!   connections killed by a restart are replaced on the next query; while
//!   the server is down, queries wait (up to the acquire timeout) for it.
//!
//! Everything else is the shared SQL of `crate::sql`, given the row-lock
//! clauses above; this module holds opening, the locks and the claim
//! statements.

mod listen;
mod open;

use std::fmt;
use std::sync::Arc;

use opsconductor_core::bus::Event;
use opsconductor_core::store::{EventStream, StoreCapabilities};
use opsconductor_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;

use self::open::Endpoint;
use crate::rows::run_columns;
use crate::sql::Lock;

/// The advisory lock key that serialises `apply` between processes
/// (`opsc:apl` in ASCII).
const APPLY_LOCK: i64 = 0x6f70_7363_3a61_706c;

/// The advisory lock key serialising audit appends and audit prunes
/// (`opsc:aud` in ASCII).
const AUDIT_LOCK: i64 = 0x6f70_7363_3a61_7564;

/// A write turn that waits for nothing: PostgreSQL's writers lock rows.
struct AnyTime;

/// A store in a PostgreSQL database.
///
/// Cheap to clone: clones share the connection pool. Dropping the last
/// clone (or [`close`](Self::close)) ends every [`listen`](opsconductor_core::store::Store::listen)
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

    /// A single-statement write needs no turn (see [`AnyTime`]).
    async fn writer(&self) -> AnyTime {
        AnyTime
    }

    /// Like [`writer`](Self::writer).
    async fn urgent_writer(&self) -> AnyTime {
        AnyTime
    }

    /// A write transaction; for [`Lock::Apply`] and [`Lock::Audit`] it
    /// first takes a transaction-scoped advisory lock, serialising those
    /// writers across every process.
    async fn write_tx(
        &self,
        op: &str,
        lock: Lock,
    ) -> Result<(AnyTime, Transaction<'static, Postgres>)> {
        let mut tx = self.pool.begin().await.map_err(self.fail(op))?;
        let key = match lock {
            Lock::Rows => None,
            Lock::Apply => Some(APPLY_LOCK),
            Lock::Audit => Some(AUDIT_LOCK),
        };
        if let Some(key) = key {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(self.fail(op))?;
        }
        Ok((AnyTime, tx))
    }

    /// `Store::notify`: `NOTIFY opsconductor`.
    async fn send_event(&self, event: Event) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(listen::CHANNEL)
            .bind(event.encode())
            .execute(&self.pool)
            .await
            .map_err(self.fail("sending a notification"))?;
        Ok(())
    }

    /// `Store::listen`: a stream that re-subscribes by itself.
    async fn event_stream(&self) -> Result<Option<EventStream>> {
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

    const BACKEND: &'static str = "postgres";

    /// Log chunks per `INSERT` statement (8 parameters each; PostgreSQL
    /// allows 65535).
    const LOG_ROWS_PER_INSERT: usize = 1000;

    /// Any number of processes and hosts, with wake-ups between them.
    fn store_capabilities() -> StoreCapabilities {
        let mut caps = StoreCapabilities::default();
        caps.multi_host = true;
        caps.notifications = true;
        caps
    }

    /// Claims pick runs with `FOR UPDATE SKIP LOCKED` in a materialized CTE
    /// and take them in the same statement: `picked` locks the runs it
    /// chooses and skips those another claim holds; being MATERIALIZED it
    /// runs exactly once, so its LIMIT bounds the claim (an inlined subquery
    /// may be re-evaluated per row).
    const CLAIM_QUEUED: &'static str = concat!(
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
    );
    const CLAIM_QUEUED_ONE: &'static str = concat!(
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
    );
    /// Take-overs: the guard (`running` and lease over) is checked when the
    /// row is locked (FOR UPDATE re-reads the latest version) and again by
    /// the UPDATE, in one statement: a run finished meanwhile is never
    /// touched.
    const TAKE_EXPIRED: &'static str = concat!(
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
    );
    const TAKE_EXPIRED_ONE: &'static str = concat!(
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
    );
}

// Every statement but the claims above: the shared SQL (`crate::sql`), with
// the row locks that keep guarded writes and refresh-token uses atomic
// between processes.
crate::sql::store_sql!(
    PostgresStore,
    sqlx::Postgres,
    owner_lock = " FOR SHARE",
    owner_rows = "runs",
    refresh_lock = " FOR UPDATE OF t, f"
);

// Approval decisions lock the run row for update: a decision, a cancel and
// an expiry of the same run exclude each other.
crate::sql::approval_sql!(PostgresStore, sqlx::Postgres, row_lock = " FOR UPDATE");
