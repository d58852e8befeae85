//! The core's integration tests, one binary: each former test file is a
//! module. Part of the fast tier (no root, Docker, sshd or PostgreSQL):
//! `cargo test -p opsconductor-core`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests: a panic is the failure report, and printing is how a test explains itself"
)]

mod policy;
mod schedule_time;
mod template_quoting;
mod tidy;
