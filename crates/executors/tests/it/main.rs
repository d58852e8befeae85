//! The executors' integration tests, one binary: the behaviour suite on each
//! executor compiled in, and what only that executor has. `local` always;
//! `ssh`, `docker` and `winrm` with their features (`--all-features` runs
//! every one; they need root and sshd, the Docker engine, and `openssl`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests: a panic is the failure report, and printing is how a test explains itself"
)]

#[cfg(feature = "docker")]
mod docker;
mod local;
#[cfg(feature = "ssh")]
mod ssh;
mod support;
#[cfg(feature = "winrm")]
mod winrm;
