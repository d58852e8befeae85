//! The store's integration tests, one binary: the behaviour suite on each
//! backend, and what only that backend has.
//!
//! `sqlite` is the fast tier (`cargo test -p opsconductor-store`: default
//! features, nothing but a temporary directory). `postgres` needs the
//! `postgres` feature and the PostgreSQL server binaries; with the feature on
//! it runs and never skips (`cargo test -p opsconductor-store --all-features`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests: a panic is the failure report, and printing is how a test explains itself"
)]

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
