//! The facade crate's integration tests, one binary (one link, one set of
//! debug info): each former test file is a module. Run one with
//! `cargo test --all-features --test it engine::`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests: a panic is the failure report, and printing is how a test explains itself"
)]

mod approvals;
mod engine;
mod flow;
mod lease;
mod notify;
mod rollout;
mod schedules;
mod secrets;
