//! OpsConductor's core: the model, the persistence and executor traits, and the
//! [`Conductor`] engine. It knows no SQL and no network protocol; backends and
//! executors live in their own crates and plug in through the traits.

pub mod duration;
pub mod error;
pub mod executor;
pub mod model;
pub mod store;

pub use error::{Error, ErrorKind, Result};
pub mod auth;
pub mod bus;
pub mod engine;
pub mod mask;
pub mod params;
pub mod paths;
pub mod secrets;
pub mod selector;
pub mod spec;
pub mod template;

pub use engine::{
    AuditExport, AuditVerification, Conductor, ConductorBuilder, Config, DEFAULT_PRUNE_BATCH,
    ExecRequest, LocalPolicy, LogStream, Login, MAX_SECRET_BYTES, PRUNE_BATCH_RANGE, PruneReport,
    PruneRequest, Retention, RotationReport, RunDetail, SecretInfo, SetSecret, SetSecretOutcome,
    SubmitRequest, TargetCheck,
};
pub use model::*;
