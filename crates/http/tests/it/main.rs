//! The server's integration tests, one binary: each former test file is a
//! module, `common` their shared fixtures (a server on loopback over SQLite
//! or a throwaway PostgreSQL). Run one with
//! `cargo test -p opsconductor-http --all-features --test it auth::`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests: a panic is the failure report, and printing is how a test explains itself"
)]

// First: its `on_both!` macro is used by the modules below.
#[macro_use]
mod common;

mod api;
mod audit;
mod auth;
mod bounded;
mod errors;
mod inprocess;
mod local;
mod matrix;
mod request_span;
mod streaming;
mod templates;
