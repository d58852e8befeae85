//! The SQL both backends run, written once.
//!
//! sqlx's SQLite driver accepts PostgreSQL's `$N` placeholders, and SQLite
//! has row values, `RETURNING`, `TRUE` and upserts, so one statement serves
//! both databases almost everywhere. [`store_sql!`] writes, for one
//! backend's store type, every store trait impl (targets, jobs, runs, logs,
//! `Store`, secrets, audit, users, retention) and the row decoders.
//!
//! The generated code relies on these items of the backend, which hold what
//! really differs (listed in the crate docs):
//!
//! - `self.pool`, the backend's pool;
//! - `self.writer()` and `self.urgent_writer()`: this process's turn for a
//!   single-statement write (SQLite's writer mutex; a no-op turn on
//!   PostgreSQL, whose rows lock themselves);
//! - `self.write_tx(op, Lock)`: a write transaction with the turn, holding
//!   what [`Lock`] asks for (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an
//!   advisory lock for `apply` and the audit chain);
//! - `self.fail(op)`: the backend's one mapping of a database error;
//! - `Self::BACKEND`, `Self::LOG_ROWS_PER_INSERT`, `Self::store_capabilities()`;
//! - `Self::CLAIM_QUEUED`, `Self::CLAIM_QUEUED_ONE`, `Self::TAKE_EXPIRED`,
//!   `Self::TAKE_EXPIRED_ONE`: the claim statements, all with the
//!   parameters `$1` worker, `$2` lease end, `$3` now, `$4` limit or run id;
//! - `self.send_event(event)` and `self.event_stream()`: `Store::notify`
//!   and `Store::listen`.
//!
//! The row-lock clauses SQLite has no use for (its writers are serialised)
//! are given to the macro as literals: `owner_lock` (after the owner check of
//! a guarded write) and `refresh_lock` (after reading a refresh token).
//! `owner_rows` is what the owner check of a guarded write reads `FROM`:
//! on SQLite the covering index `runs_owner` (migration 0013), because the
//! columns the check needs are stored after the run's job spec, and reading
//! them from the table would walk the spec's overflow pages on every step
//! of a long job; PostgreSQL keeps large values out of line, so `runs`.

pub(crate) mod approvals;
mod notify;
mod retention;
mod runs;
mod schedules;
mod secrets;
mod users;

pub(crate) use approvals::approval_sql;
pub(crate) use notify::{delivery_columns, due_deliveries, notify_sql};
pub(crate) use retention::{batch, count, finished_before, retention_sql};
pub(crate) use runs::run_sql;
pub(crate) use schedules::{fire_columns, schedule_columns, schedule_sql};
pub(crate) use secrets::secret_sql;
pub(crate) use users::user_sql;

use opsconductor_core::Error;
use opsconductor_core::model::RunId;

/// What a write transaction holds besides the backend's usual write turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// Nothing more: the rows written (or read `FOR UPDATE`/`FOR SHARE`)
    /// lock themselves.
    Rows,
    /// Every `apply`, of any process: two would otherwise both compute the
    /// same next job version.
    Apply,
    /// Every audit append and audit prune, of any process: the hash chain
    /// stays linear.
    Audit,
}

/// Maps a failed write about runs: a foreign-key failure means a run is
/// missing; anything else goes to the backend's mapping `other`.
pub(crate) fn run_write_error(
    op: &str,
    ids: &[RunId],
    other: impl FnOnce(sqlx::Error) -> Error,
) -> impl FnOnce(sqlx::Error) -> Error {
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
        _ => other(e),
    }
}

/// Writes every store trait impl and the row decoders for one backend:
/// `store_sql!(Store, Database, owner_lock = "…", owner_rows = "…", refresh_lock = "…")`.
macro_rules! store_sql {
    ($store:ty, $db:ty, owner_lock = $owner_lock:literal, owner_rows = $owner_rows:literal, refresh_lock = $refresh_lock:literal) => {
        /// Row decoding, shared by every backend (see `crate::rows`).
        mod rows {
            $crate::rows::row_decoders!(<$db as sqlx::Database>::Row, $db);
        }
        $crate::sql::run_sql!(
            $store,
            $db,
            owner_lock = $owner_lock,
            owner_rows = $owner_rows
        );
        $crate::sql::secret_sql!($store, $db);
        $crate::sql::user_sql!($store, refresh_lock = $refresh_lock);
        $crate::sql::retention_sql!($store);
        $crate::sql::schedule_sql!($store, $db);
        $crate::sql::notify_sql!($store, $db);
    };
}
pub(crate) use store_sql;
