//! OpsConductor's executors: the implementations of
//! [`opsconductor_core::executor::Executor`] that reach a target and run a step
//! there, and the behaviour suite every one of them must pass.
//!
//! - [`LocalExecutor`] (feature `local`, on by default) runs processes on the
//!   host the worker runs on, each in its own process group.
//! - [`SshExecutor`] (feature `ssh`) runs steps on SSH hosts over one
//!   verified, authenticated connection per target (russh; SFTP for copies).
//! - [`DockerExecutor`] (feature `docker`) runs every step in a fresh,
//!   isolated container on a Docker engine; see [`docker`].
//! - [`WinRmExecutor`] (feature `winrm`) runs steps on Windows hosts over
//!   WinRM (winrm-rs): cmd.exe or PowerShell, HTTPS with Basic or NTLM. It is
//!   tested against a WS-Management protocol test server, not Windows; see
//!   [`winrm`].
//! - [`behaviour`] (feature `testing`) holds the executor behaviour suite: one
//!   `pub async fn` per rule of the executor seam, and the
//!   [`executor_behaviour_suite!`] macro that turns them into `#[tokio::test]`s
//!   for a given executor.

#[cfg(feature = "testing")]
pub mod behaviour;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "ssh")]
pub mod ssh;
#[cfg(feature = "winrm")]
pub mod winrm;

#[cfg(feature = "docker")]
pub use docker::{DockerExecutor, DockerSession};
#[cfg(feature = "local")]
pub use local::{LocalExecutor, LocalSession};
#[cfg(feature = "ssh")]
pub use ssh::{SshExecutor, SshSession};
#[cfg(feature = "winrm")]
pub use winrm::{WinRmExecutor, WinRmSession};
