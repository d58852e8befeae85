//! Test fixtures for backends and for the crates that test against them
//! (feature `testing`).
//!
//! - [`pg`] (with feature `postgres`): throwaway PostgreSQL servers, one
//!   shared per test binary, a fresh database per test.
//! - [`receivers`]: a local HTTP receiver and a real SMTP server
//!   (aiosmtpd) for notification tests.

#[cfg(feature = "postgres")]
pub mod pg;
pub mod receivers;
