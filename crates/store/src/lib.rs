//! OpsConductor's persistence backends: implementations of the store traits
//! of `opsconductor_core::store`, picked at run time from a database URL.
//!
//! - [`SqliteStore`] (feature `sqlite`, the default): one file, nothing to set
//!   up; several processes on one host may share it.
//! - `PostgresStore` (feature `postgres`): one database shared by any number
//!   of processes and hosts: the queue (`FOR UPDATE SKIP LOCKED`) and the
//!   cross-process wake-up channel (`LISTEN`/`NOTIFY`).
//!
//! # One SQL for both backends
//!
//! Every statement is written once, in `sql` (with `$N` placeholders, which
//! sqlx's SQLite driver accepts), and decoded once, in `rows`; a backend
//! module holds only opening, its pool and what really differs. The
//! statements and mechanisms that differ on purpose:
//!
//! - **Claims** (`claim_queued`, `claim_expired`): SQLite takes runs with one
//!   `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`, atomic because
//!   SQLite has one writer; PostgreSQL picks them in a `MATERIALIZED` CTE
//!   with `FOR UPDATE SKIP LOCKED`, so concurrent claimers neither wait for
//!   nor double-take each other and the `LIMIT` is evaluated once.
//! - **Row locks**: PostgreSQL's guarded writes (`put_step_result_as`,
//!   `append_logs_as`) read the owner's run `FOR SHARE`, and a refresh-token
//!   use reads its token and family `FOR UPDATE OF t, f`; SQLite needs no
//!   clause (the same statements, with the clause empty).
//! - **Write serialisation**: SQLite writers of a process queue on a mutex
//!   (heartbeats ahead of the queue) and transactions start with
//!   `BEGIN IMMEDIATE`; PostgreSQL writes concurrently and serialises only
//!   `apply` and the audit chain (append and prune), with transaction-scoped
//!   advisory locks (`SELECT pg_advisory_xact_lock`).
//! - **Wake-ups**: PostgreSQL's `pg_notify` and `LISTEN` stream; SQLite has none.
//! - **Opening**: file and pragmas vs server, TLS and pool; each backend maps
//!   database errors in one place (PostgreSQL naming the server).
//!
//! Every backend passes the one behaviour suite, `behaviour` (feature
//! `testing`), run by `store_behaviour_suite!`. With `testing` and
//! `postgres`, `testing::pg` starts throwaway PostgreSQL servers for tests.
//!
//! ```no_run
//! # async fn demo() -> opsconductor_core::Result<()> {
//! let store = opsconductor_store::open(opsconductor_store::DEFAULT_DATABASE_URL).await?;
//! assert_eq!(store.backend(), "sqlite");
//! # Ok(()) }
//! ```

use std::sync::Arc;

use opsconductor_core::store::Store;
use opsconductor_core::{Error, Result};

#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, reason = "only the backends use these helpers")
)]
mod common;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(
        dead_code,
        unused_imports,
        unused_macros,
        reason = "only the backends use these helpers"
    )
)]
mod rows;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "testing")]
pub mod behaviour;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// The database used when none is configured: `opsconductor.db` in the
/// current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://opsconductor.db";

/// Which backend a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// `sqlite:…` or a plain file path.
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// The backend a URL names, without connecting; a validation error names
    /// an unknown scheme.
    pub fn from_url(url: &str) -> Result<Self> {
        match scheme(url) {
            None => Ok(Backend::Sqlite),
            Some(s) if s.eq_ignore_ascii_case("sqlite") => Ok(Backend::Sqlite),
            Some(s)
                if s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql") =>
            {
                Ok(Backend::Postgres)
            }
            Some(s) => Err(Error::validation(
                "database url",
                format!(
                    "unsupported database URL scheme '{s}:' in '{url}' \
                     (expected `sqlite://PATH`, `postgres://…` or a file path)"
                ),
            )),
        }
    }
}

/// The URL scheme, if `url` has one. A Windows drive letter (`C:\…`) is a
/// path, not a scheme.
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (valid && scheme.len() > 1).then_some(scheme)
}

/// The database file a SQLite URL names (`None` for other backends and
/// in-memory databases), so a front end can tell a missing database from an
/// empty one before opening creates it.
#[cfg(feature = "sqlite")]
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    match Backend::from_url(url).ok()? {
        Backend::Sqlite => sqlite::database_file(url),
        _ => None,
    }
}

/// Opens the store a URL names: `sqlite://PATH`, `sqlite:PATH`,
/// `sqlite::memory:` or a plain path → SQLite; `postgres://…` or
/// `postgresql://…` → PostgreSQL (when built in). Migrations are applied on open.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    match Backend::from_url(url)? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(url).await?)),
        #[cfg(not(feature = "sqlite"))]
        Backend::Sqlite => Err(Error::validation(
            "database url",
            "SQLite support is not built in (feature `sqlite`)",
        )),
        #[cfg(feature = "postgres")]
        Backend::Postgres => Ok(Arc::new(PostgresStore::open(url).await?)),
        #[cfg(not(feature = "postgres"))]
        Backend::Postgres => Err(Error::validation(
            "database url",
            "PostgreSQL support is not built in (feature `postgres`)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_backend_from_the_url() {
        for (url, backend) in [
            ("sqlite://oc.db", Backend::Sqlite),
            ("sqlite::memory:", Backend::Sqlite),
            ("oc.db", Backend::Sqlite),
            ("/var/lib/oc.db", Backend::Sqlite),
            ("C:\\data\\oc.db", Backend::Sqlite),
            ("postgres://u@h/db", Backend::Postgres),
            ("postgresql://u@h/db", Backend::Postgres),
        ] {
            assert_eq!(Backend::from_url(url).ok(), Some(backend), "{url}");
        }
    }

    #[test]
    fn names_an_unknown_scheme() {
        let err = Backend::from_url("mysql://h/db")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("'mysql:'")),
            "{err:?}"
        );
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn postgres_is_not_built_in() {
        let err = open("postgres://localhost/oc")
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("PostgreSQL support is not built in")),
            "{err:?}"
        );
    }
}
