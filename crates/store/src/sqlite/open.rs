//! Opening a SQLite database: URL parsing, connection settings, clear errors
//! for unusable paths, and the embedded migrations.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use opsconductor_core::{Error, Result};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The schema, embedded at build time and applied on open. A released
/// migration is never edited (its checksum is recorded in each database);
/// schema changes are new files, `0002_….sql` and on.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another writer before giving up.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per pool for a database file. Writes are serialised anyway;
/// the rest serve concurrent readers, which WAL lets run beside a writer.
const FILE_POOL_SIZE: u32 = 8;

/// How often opening is retried while another process holds the lock needed
/// to switch a fresh file to WAL or to apply the migrations.
const OPEN_ATTEMPTS: u32 = 20;

/// Where a store lives, parsed from what the caller gave.
#[derive(Debug, Clone)]
pub(super) enum Location {
    /// A private in-memory database (`sqlite::memory:`).
    Memory,
    /// A database file.
    File(PathBuf),
}

impl Location {
    /// For messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Location::Memory => "in-memory database".into(),
            Location::File(p) => format!("'{}'", p.display()),
        }
    }
}

/// Parses `sqlite://path`, `sqlite:path`, `sqlite::memory:` or a bare path.
pub(super) fn parse(url_or_path: &str) -> Result<(Location, SqliteConnectOptions)> {
    if url_or_path.trim().is_empty() {
        return Err(Error::validation(
            "database url",
            "no database given (expected a file path or a `sqlite://` URL)",
        ));
    }
    if !url_or_path.starts_with("sqlite:") {
        let path = PathBuf::from(url_or_path);
        let options = SqliteConnectOptions::new().filename(&path);
        return Ok((Location::File(path), options));
    }
    let rest = url_or_path
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = database == ":memory:" || query.split('&').any(|kv| kv == "mode=memory");
    let options = SqliteConnectOptions::from_str(url_or_path).map_err(|e| {
        Error::validation(
            "database url",
            format!("'{url_or_path}' is not a valid SQLite URL: {e}"),
        )
    })?;
    if in_memory {
        return Ok((Location::Memory, options));
    }
    if database.is_empty() {
        return Err(Error::validation(
            "database url",
            format!("'{url_or_path}' names no database file (try `sqlite://opsconductor.db`)"),
        ));
    }
    let path = options.get_filename().to_path_buf();
    Ok((Location::File(path), options))
}

/// Opens the pool with OpsConductor's settings and applies the migrations.
pub(super) async fn connect(
    location: &Location,
    options: SqliteConnectOptions,
) -> Result<SqlitePool> {
    let options = options
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let pool_options = match location {
        Location::File(path) => {
            check_path(path)?;
            create_private(path)?;
            SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE)
        }
        // Each connection to `:memory:` would be a database of its own (and
        // shared-cache mode reports lock conflicts no busy timeout waits on),
        // so an in-memory store keeps exactly one connection for its lifetime.
        Location::Memory => SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None),
    };
    let options = match location {
        Location::File(_) => options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal),
        Location::Memory => options,
    };

    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match pool_options.clone().connect_with(options.clone()).await {
            Ok(pool) => migrate(&pool).await.map(|()| pool),
            Err(e) => Err(Failure::Open(e)),
        };
        match result {
            Ok(pool) => return Ok(pool),
            // Another process is creating the same file right now: switching
            // to WAL takes a lock SQLite's busy timeout does not wait for, and
            // two migrators may race. Both settle in moments; try again.
            Err(f) if f.is_retryable() && attempt < OPEN_ATTEMPTS => {
                tracing::debug!(
                    "opening {} (attempt {attempt}): {}; retrying",
                    location.describe(),
                    f.message(location)
                );
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(f) => return Err(f.into_error(location)),
        }
    }
}

/// Explains paths SQLite cannot open before SQLite gives its terser message.
fn check_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::store(format!(
            "cannot open SQLite database '{}': it is a directory, not a database file",
            path.display()
        )));
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        return Err(Error::store(format!(
            "cannot open SQLite database '{}': the directory '{}' does not exist (create it first)",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// Creates a missing database file with mode 0600 before SQLite opens it.
/// The database holds password hashes, token hashes and encrypted secrets;
/// SQLite gives its `-wal` and `-shm` files the mode of the database file,
/// so they are private too. An existing file keeps its mode (the operator
/// chose it).
fn create_private(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::store(format!(
            "cannot create SQLite database '{}': {e}",
            path.display()
        ))),
    }
}

/// Why opening failed.
enum Failure {
    /// Connecting (or setting a pragma) failed.
    Open(sqlx::Error),
    /// Applying the migrations failed.
    Migrate(MigrateError),
}

impl Failure {
    /// Whether another process may have caused it and trying again may help.
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Open(e) => is_busy(e),
            Failure::Migrate(MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)) => {
                // Busy, or the other migrator won: "table already exists" or a
                // duplicate row in `_sqlx_migrations`. A second run sees its work.
                is_busy(e) || matches!(e, sqlx::Error::Database(_))
            }
            Failure::Migrate(_) => false,
        }
    }

    fn message(&self, location: &Location) -> String {
        let at = location.describe();
        match self {
            Failure::Open(e) => format!("cannot open SQLite database {at}: {e}"),
            Failure::Migrate(MigrateError::VersionMissing(v)) => format!(
                "the SQLite database {at} was created by a newer version of OpsConductor \
                 (it has schema migration {v}, which this version does not know); \
                 upgrade OpsConductor or use another database"
            ),
            Failure::Migrate(MigrateError::VersionMismatch(v)) => format!(
                "the SQLite database {at} has a schema migration {v} that differs from this \
                 version's; it was created by an incompatible build of OpsConductor"
            ),
            Failure::Migrate(e) => {
                format!("cannot prepare the schema of SQLite database {at}: {e}")
            }
        }
    }

    fn into_error(self, location: &Location) -> Error {
        Error::store(self.message(location))
    }
}

/// Applies the embedded migrations.
async fn migrate(pool: &SqlitePool) -> std::result::Result<(), Failure> {
    match MIGRATOR.run(pool).await {
        Ok(()) => Ok(()),
        Err(e) => {
            pool.close().await;
            Err(Failure::Migrate(e))
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, including their extended codes.
pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        for (input, expected) in [
            ("sqlite://data/oc.db", Some("data/oc.db")),
            ("sqlite:oc.db", Some("oc.db")),
            ("sqlite:///abs/oc.db", Some("/abs/oc.db")),
            ("oc.db", Some("oc.db")),
            ("/var/lib/oc.db", Some("/var/lib/oc.db")),
            ("sqlite::memory:", None),
            ("sqlite://:memory:", None),
        ] {
            let (location, _) = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            match (location, expected) {
                (Location::File(p), Some(e)) => assert_eq!(p, Path::new(e), "{input}"),
                (Location::Memory, None) => {}
                (other, _) => panic!("{input}: parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_empty_names() {
        assert!(parse("").is_err());
        assert!(parse("sqlite://").is_err());
    }
}
