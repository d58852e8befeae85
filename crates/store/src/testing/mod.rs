//! Test fixtures for backends and for the crates that test against them
//! (feature `testing`).
//!
//! - [`pg`] (with feature `postgres`): throwaway PostgreSQL servers, one
//!   shared per test binary, a fresh database per test.

#[cfg(feature = "postgres")]
pub mod pg;
