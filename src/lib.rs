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

#[cfg(feature = "local")]
pub use opsconductor_executors::LocalExecutor;
#[cfg(feature = "sqlite")]
pub use opsconductor_store::SqliteStore;
pub use opsconductor_store::{DEFAULT_DATABASE_URL, open as open_store};

/// Opens the store named by `url` and builds an engine with every executor
/// compiled in, and no background workers (call [`Conductor::execute`] or
/// [`Conductor::start_workers`]).
pub async fn open(url: &str) -> Result<Conductor> {
    builder(url).await?.build().await
}

/// Like [`open`], but returns the builder to adjust workers, lease and more.
pub async fn builder(url: &str) -> Result<ConductorBuilder> {
    let store = opsconductor_store::open(url).await?;
    let b = Conductor::builder().store_arc(store);
    #[cfg(feature = "local")]
    let b = b.executor(LocalExecutor::default());
    Ok(b)
}
