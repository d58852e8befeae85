//! OpsConductor's core: the model, the persistence and executor traits, and the
//! [`Conductor`] engine. It knows no SQL and no network protocol; backends and
//! executors live in their own crates and plug in through the traits.

pub mod duration;
pub mod error;
pub mod executor;
pub mod model;
pub mod store;

pub use error::{Error, ErrorKind, Result};
