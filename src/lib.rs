//! OpsConductor: operations automation — commands, scripts and file copies on
//! a fleet of hosts — as an embeddable engine.
//!
//! This facade re-exports the core ([`Conductor`], the model, the traits) and
//! the backends and executors chosen with cargo features (`sqlite` and
//! `local` by default).
//!
//! ```no_run
//! use opsconductor::{Actor, Conductor, SubmitRequest};
//!
//! # async fn demo() -> opsconductor::Result<()> {
//! let oc = opsconductor::open("sqlite://ops.db").await?;
//! let run = oc.submit(SubmitRequest::new("deploy"), &Actor::local_user()).await?;
//! let done = oc.execute(run.id).await?;
//! println!("{}", done.status);
//! # Ok(()) }
//! ```

pub use opsconductor_core::*;

#[cfg(feature = "docker")]
pub use opsconductor_executors::DockerExecutor;
#[cfg(feature = "local")]
pub use opsconductor_executors::LocalExecutor;
#[cfg(feature = "ssh")]
pub use opsconductor_executors::SshExecutor;
#[cfg(feature = "winrm")]
pub use opsconductor_executors::WinRmExecutor;
#[cfg(feature = "sqlite")]
pub use opsconductor_store::SqliteStore;
#[cfg(feature = "sqlite")]
pub use opsconductor_store::sqlite_file;
pub use opsconductor_store::{DEFAULT_DATABASE_URL, open as open_store};

/// Opens the store named by `url` and builds an engine with every executor
/// compiled in, the master key from the environment (see [`keyring_for`]),
/// and no background workers (call [`Conductor::execute`] or
/// [`Conductor::start_workers`]).
pub async fn open(url: &str) -> Result<Conductor> {
    builder(url).await?.build().await
}

/// Like [`open`], but returns the builder to adjust workers, lease and more.
pub async fn builder(url: &str) -> Result<ConductorBuilder> {
    let (b, notice) = builder_with_notice(url).await?;
    if let Some(n) = notice {
        tracing::warn!("{n}");
    }
    Ok(b)
}

/// Like [`builder`], also returning a one-time notice for the user (e.g.
/// "generated a master key file at …") that a front end should show.
pub async fn builder_with_notice(url: &str) -> Result<(ConductorBuilder, Option<String>)> {
    let store = opsconductor_store::open(url).await?;
    let (keyring, notice) = keyring_for(url, store.as_ref()).await?;
    let b = Conductor::builder().store_arc(store);
    let b = match keyring {
        Some(k) => b.keyring(k),
        None => b,
    };
    let b = with_executors(b);
    Ok((b, notice))
}

/// Like [`builder`], with the master keys given explicitly (`None`: secrets
/// unavailable) instead of looked up in the environment.
pub async fn builder_with_keyring(
    url: &str,
    keyring: Option<secrets::Keyring>,
) -> Result<ConductorBuilder> {
    let store = opsconductor_store::open(url).await?;
    let b = Conductor::builder().store_arc(store);
    let b = match keyring {
        Some(k) => b.keyring(k),
        None => b,
    };
    Ok(with_executors(b))
}

/// Registers every executor compiled in, configured from the environment
/// the same way for every front end (CLI, server, Python).
pub fn with_executors(b: ConductorBuilder) -> ConductorBuilder {
    #[cfg(feature = "local")]
    let b = b.executor(LocalExecutor::default());
    // Verifies host keys against each target's pinned `host_key` or
    // known_hosts file, else `OPSC_SSH_KNOWN_HOSTS`.
    #[cfg(feature = "ssh")]
    let b = b.executor(ssh_executor());
    // Connects to the engine (and sweeps orphans) on first use only; the
    // engine is the one `OPSC_DOCKER_SOCKET` or `DOCKER_HOST` names (a
    // socket path, `unix://…` or `tcp://…`), so deployments pick it without
    // code.
    #[cfg(feature = "docker")]
    let b = b.executor(DockerExecutor::from_env());
    // Proves each target's credential by opening (and deleting) a shell.
    #[cfg(feature = "winrm")]
    let b = b.executor(WinRmExecutor::default());
    b
}

/// The environment variable naming the SSH executor's default known_hosts
/// file (see [`ssh_executor`]).
#[cfg(feature = "ssh")]
pub const SSH_KNOWN_HOSTS_ENV: &str = "OPSC_SSH_KNOWN_HOSTS";

/// The SSH executor as [`open`] registers it: the defaults, plus — when
/// [`SSH_KNOWN_HOSTS_ENV`] (`OPSC_SSH_KNOWN_HOSTS`) is set — that file as the
/// process-wide known_hosts default, for targets that neither pin a
/// `host_key` nor name a `known_hosts` file. A deployment can so trust a
/// fleet's keys from one file (as `ssh` does with `~/.ssh/known_hosts`)
/// without editing every target. A relative path is made absolute now, so a
/// later change of directory does not change what it means. Embedders
/// registering executors themselves can call this to behave the same.
#[cfg(feature = "ssh")]
pub fn ssh_executor() -> SshExecutor {
    let ssh = SshExecutor::default();
    match std::env::var_os(SSH_KNOWN_HOSTS_ENV).filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            ssh.with_known_hosts(std::path::absolute(&path).unwrap_or(path))
        }
        None => ssh,
    }
}

/// Finds the master key, in this order: `OPSC_MASTER_KEY` (base64 key, or
/// `1:KEY,2:KEY`), `OPSC_MASTER_KEY_FILE`, `OPSC_MASTER_PASSPHRASE`, then —
/// for the embedded SQLite default only — the key file next to the database
/// (`opsconductor.db` → `opsconductor.key`), generated with mode 0600 on
/// first start. A database that already holds secrets never gets a new key
/// silently: a missing key file is an error.
pub async fn keyring_for(
    url: &str,
    store: &dyn store::Store,
) -> Result<(Option<secrets::Keyring>, Option<String>)> {
    use secrets::Keyring;
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(v) = var("OPSC_MASTER_KEY") {
        return Ok((Some(Keyring::from_env_value(&v)?), None));
    }
    if let Some(p) = var("OPSC_MASTER_KEY_FILE") {
        return Ok((Some(Keyring::from_file(std::path::Path::new(&p))?), None));
    }
    if let Some(p) = var("OPSC_MASTER_PASSPHRASE") {
        return Ok((Some(Keyring::from_passphrase(p.as_bytes())?), None));
    }
    let ss = store.secret_store();
    if store.backend() != "sqlite" {
        return Ok((None, None));
    }
    let Some(path) = sqlite_sibling_file(url, "key") else {
        // An in-memory database: a key that lives as long as it does.
        let k = secrets::KeyBytes::generate()?;
        return Ok((
            Some(Keyring::from_keys([(1, k)], secrets::KeySource::Env)?),
            None,
        ));
    };
    if path.exists() {
        return Ok((Some(Keyring::from_file(&path)?), None));
    }
    if ss
        .key_records()
        .await?
        .iter()
        .any(|r| r.retired_at.is_none())
    {
        return Err(Error::invalid(format!(
            "the master key file {} is missing, but this database holds secrets encrypted with it; \
             restore the file or point OPSC_MASTER_KEY_FILE at it",
            path.display()
        )));
    }
    let ring = Keyring::create_file(&path)?;
    let notice = format!(
        "generated a master key for secrets at {} (mode 0600) — back it up: without it the secrets in this database cannot be read",
        path.display()
    );
    Ok((Some(ring), Some(notice)))
}

/// A file that belongs next to a SQLite database, named after it with
/// another extension: `sqlite://dir/ops.db` → `dir/ops.key` (the master
/// key), `dir/ops.jwt` (the server's token key). `None` for in-memory
/// databases and other backends. The URL is read by the store's own parser
/// ([`sqlite_file`]), so the file is always the one the store opens.
pub fn sqlite_sibling_file(url: &str, extension: &str) -> Option<std::path::PathBuf> {
    #[cfg(feature = "sqlite")]
    {
        sqlite_file(url).map(|p| p.with_extension(extension))
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = (url, extension);
        None
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::path::PathBuf;

    use super::sqlite_sibling_file;

    #[test]
    fn sibling_files_sit_next_to_the_database() {
        assert_eq!(
            sqlite_sibling_file("sqlite://x/ops.db", "jwt"),
            Some(PathBuf::from("x/ops.jwt"))
        );
        assert_eq!(
            sqlite_sibling_file("sqlite:///abs/ops.db?mode=rwc", "key"),
            Some(PathBuf::from("/abs/ops.key"))
        );
        assert_eq!(
            sqlite_sibling_file("ops.db", "key"),
            Some(PathBuf::from("ops.key"))
        );
        assert_eq!(sqlite_sibling_file("sqlite::memory:", "jwt"), None);
        assert_eq!(sqlite_sibling_file("postgres://db/ops", "jwt"), None);
    }
}
