//! OpsConductor's core: the model, the persistence and executor traits, and the
//! [`Conductor`] engine. It knows no SQL and no network protocol; backends and
//! executors live in their own crates and plug in through the traits.

pub mod duration;
pub mod error;
pub mod executor;
pub mod model;
pub mod rollout;
pub mod store;

pub use error::{Error, ErrorKind, Result};
pub mod approval;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod engine;
pub mod flow;
pub mod lines;
pub mod mask;
pub mod params;
pub mod paths;
pub mod schedule;
mod schedule_doc;
pub use schedule_doc::parse_instant;
pub mod policy;
pub mod secrets;
pub mod selector;
pub mod spec;
pub mod template;

pub use engine::{
    AuditExport, AuditPage, AuditQuery, AuditVerification, Conductor, ConductorBuilder, Config,
    DEFAULT_PRUNE_BATCH, ExecRequest, LocalPolicy, LogPage, LogStream, Login, MAX_AUDIT_PAGE,
    MAX_LOG_PAGE, MAX_RESULT_PAGE, MAX_SECRET_BYTES, PRUNE_BATCH_RANGE, PlannedCommand,
    PlannedSecret, PlannedStep, PruneReport, PruneRequest, Retention, RotationReport, RunDetail,
    RunPlan, ScheduleDetail, SchedulerConfig, SecretInfo, SetSecret, SetSecretOutcome,
    SubmitRequest, TargetCheck, TargetOutcome, TargetPlan,
};
pub use lines::{Line, LineSplitter};
pub use model::*;
/// Definitions and run filters front ends pass to the engine (plain data;
/// the store traits themselves stay behind the engine).
pub use store::{ApplyAction, ApplyBatch, ApplyItem, RunFilter};
