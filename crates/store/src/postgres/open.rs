//! Opening a PostgreSQL database: URL parsing, pool settings, the embedded
//! migrations, and errors that name the server and database — never the
//! password.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use opsconductor_core::{Error, Result};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

/// The schema, embedded at build time and applied on open. A released
/// migration is never edited (its checksum is recorded in each database);
/// schema changes are new files, `0002_….sql` and on.
///
/// sqlx's migrator holds a PostgreSQL advisory lock (keyed by the database
/// name) while it checks and applies migrations, so processes opening one
/// new database at the same moment take turns: the first applies the
/// schema, the others find it applied.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per store. Claims, heartbeats and log batches are short
/// statements; 16 serve many workers, and a fleet of processes stays far
/// below PostgreSQL's default `max_connections` of 100.
pub(super) const POOL_SIZE: u32 = 16;

/// How long opening waits for the server to answer.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a query waits for a connection. While the server restarts, new
/// connections are refused; the pool keeps retrying them for this long, so
/// a restart shorter than this costs latency, not errors.
pub(super) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a store lives, for messages: server, database and user, no password.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `host:port`, or the Unix socket directory.
    server: String,
    /// The database name.
    database: String,
    /// The user name.
    user: String,
    /// The host name or address (what a certificate must name).
    host: String,
}

impl Endpoint {
    fn of(options: &PgConnectOptions) -> Self {
        let server = match options.get_socket() {
            Some(dir) => format!("socket {}:{}", dir.display(), options.get_port()),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let user = options.get_username().to_string();
        // PostgreSQL's default database is the one named like the user.
        let database = options.get_database().unwrap_or(&user).to_string();
        Self {
            server,
            database,
            user,
            host: options.get_host().to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL database '{}' at {} (user '{}')",
            self.database, self.server, self.user
        )
    }
}

/// Parses a `postgres://` / `postgresql://` URL. The error shows the URL
/// with its password hidden.
pub(super) fn parse(url: &str) -> Result<(Endpoint, PgConnectOptions)> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        Error::validation(
            "database url",
            scrub(
                url,
                format!("'{}' is not a valid PostgreSQL URL: {e}", redact_url(url)),
            ),
        )
    })?;
    let options = if options.get_application_name().is_none() {
        options.application_name("opsconductor")
    } else {
        options
    };
    Ok((Endpoint::of(&options), options))
}

/// Connects once (failing fast, with a clear message), then applies the
/// migrations through a pool that connects lazily, and returns that pool.
pub(super) async fn connect(endpoint: &Endpoint, options: PgConnectOptions) -> Result<PgPool> {
    // rustls picks a process-wide crypto provider only when exactly one is
    // compiled in; a binary with WinRM (reqwest with aws-lc-rs) has two, and
    // sqlx's TLS would panic. Installing ring first is harmless when another
    // provider was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        // Closing politely is not important; the server notices either way.
        Ok(Ok(conn)) => drop(conn.close().await),
        Ok(Err(e)) => return Err(connect_error(endpoint, &e)),
        Err(_) => {
            return Err(Error::store(format!(
                "cannot connect to {endpoint}: no answer within {}s \
                 (is the server running, and the host and port right?)",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // Ping a connection before handing it out: after a server restart
        // every pooled connection is dead, and this replaces them.
        .test_before_acquire(true)
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(1800))
        .connect_lazy_with(options);
    if let Err(e) = MIGRATOR.run(&pool).await {
        // Closing the pool also releases the migrator's advisory lock,
        // which sqlx does not release when it stops on an error.
        pool.close().await;
        return Err(migrate_error(endpoint, e));
    }
    Ok(pool)
}

/// A pool of one connection for a notification listener. Listeners hold
/// their connection for as long as they live; on a pool of their own they
/// never take one of the store's, and closing the store need not wait for
/// them. Its connection lives as long as the listener (no lifetime limit).
pub(super) fn listener_pool(options: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(true)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone())
}

/// A failure to connect, explained.
fn connect_error(endpoint: &Endpoint, e: &sqlx::Error) -> Error {
    let message = match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_catalog_name
            Some("3D000") => format!(
                "cannot open {endpoint}: the database '{}' does not exist on {} \
                 (create it first, e.g. `CREATE DATABASE \"{}\"`)",
                endpoint.database, endpoint.server, endpoint.database
            ),
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => format!(
                "cannot open {endpoint}: the server refused user '{}': {}",
                endpoint.user,
                db.message()
            ),
            _ => format!("cannot open {endpoint}: {}", db.message()),
        },
        // rustls reports a refused certificate as invalid data on the socket.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            tls_error(endpoint, io)
        }
        sqlx::Error::Tls(tls) => tls_error(endpoint, tls),
        sqlx::Error::Io(io) => format!(
            "cannot connect to {endpoint}: {io} (is the server running and reachable at {}?)",
            endpoint.server
        ),
        other => format!("cannot connect to {endpoint}: {other}"),
    };
    Error::store(message)
}

/// A failed TLS handshake, with what each `sslmode` checks.
fn tls_error(endpoint: &Endpoint, e: &dyn std::fmt::Display) -> String {
    format!(
        "cannot connect to {endpoint}: TLS failed: {e} (with sslmode=verify-full the \
             server's certificate must be signed by the CA in sslrootcert and name the host \
             '{}' of the URL; sslmode=verify-ca skips the host name; sslmode=require needs a \
             server with ssl = on)",
        endpoint.host
    )
}

/// A failure to apply the migrations, explained.
fn migrate_error(endpoint: &Endpoint, e: MigrateError) -> Error {
    Error::store(match e {
        MigrateError::VersionMissing(v) => format!(
            "the {endpoint} was set up by a newer version of OpsConductor \
             (it has schema migration {v}, which this version does not know); \
             upgrade OpsConductor or use another database"
        ),
        MigrateError::VersionMismatch(v) => format!(
            "the {endpoint} has a schema migration {v} that differs from this version's; \
             it was set up by an incompatible build of OpsConductor"
        ),
        MigrateError::Dirty(v) => format!(
            "the {endpoint} has a half-applied schema migration {v} \
             (an earlier upgrade failed); repair it by hand"
        ),
        other => format!("cannot prepare the schema of the {endpoint}: {other}"),
    })
}

/// Describes a failed query; a lost or unreachable server is named.
pub(super) fn query_error(endpoint: &Endpoint, op: &str, e: &sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolTimedOut => Error::store(format!(
            "{op}: no connection to {endpoint} within {}s (is the server up?)",
            ACQUIRE_TIMEOUT.as_secs()
        )),
        sqlx::Error::Io(io) => Error::store(format!("{op}: connection to {endpoint} failed: {io}")),
        sqlx::Error::PoolClosed => Error::store(format!("{op}: the store was closed")),
        other => Error::store(format!("{op}: {other}")),
    }
}

/// The URL with the password (in the user part or the query) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// Removes from `message` any password `url` carries, in case an error
/// message quoted it.
fn scrub(url: &str, message: String) -> String {
    let mut message = message;
    for secret in passwords(url) {
        if secret.len() >= 2 {
            message = message.replace(&secret, "***");
        }
    }
    message
}

/// The passwords written in a URL (user part and `password=` parameter).
fn passwords(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@')
            && let Some((_, password)) = authority[..at].split_once(':')
        {
            found.push(password.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && k.eq_ignore_ascii_case("password")
            {
                found.push(v.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        for (url, want) in [
            (
                "postgres://oc:s3cret@db.internal:5433/ops",
                "postgres://oc:***@db.internal:5433/ops",
            ),
            (
                "postgresql://oc:p%40ss@h/db?sslmode=disable&password=x",
                "postgresql://oc:***@h/db?sslmode=disable&password=***",
            ),
            ("postgres://oc@h/db", "postgres://oc@h/db"),
            (
                "postgres://h/db?password=abc",
                "postgres://h/db?password=***",
            ),
            ("postgres://u:@h", "postgres://u:***@h"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn describes_the_endpoint_without_the_password() -> Result<()> {
        let (endpoint, _) = parse("postgres://oc:s3cret@db.internal:5433/ops")?;
        let text = endpoint.to_string();
        assert_eq!(
            text,
            "PostgreSQL database 'ops' at db.internal:5433 (user 'oc')"
        );
        let (endpoint, _) = parse("postgres://alice:pw@db.internal")?;
        assert_eq!(
            endpoint.to_string(),
            "PostgreSQL database 'alice' at db.internal:5432 (user 'alice')"
        );
        Ok(())
    }

    #[test]
    fn a_bad_url_hides_the_password() {
        let msg = parse("postgres://oc:s3cret@db.internal:notaport/ops")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("not a valid PostgreSQL URL"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}
