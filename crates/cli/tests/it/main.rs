//! The `opsconductor` binary's integration tests, one binary: each former
//! test file is a module, `common` their shared fixtures. Run one with
//! `cargo test -p opsconductor-cli --test it serve::`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests: a panic is the failure report, and printing is how a test explains itself"
)]

mod apply;
mod approvals;
mod cluster;
mod common;
/// The executors' Docker test image (built locally from busybox-static).
#[path = "../../../executors/tests/it/support/docker.rs"]
mod docker_support;
mod flow;
mod notify;
mod processes;
mod prune;
mod run;
mod runs;
mod schedules;
mod secrets;
mod serve;
mod ssh;
