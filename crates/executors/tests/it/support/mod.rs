//! Fixtures the executor tests share with the facade's benchmarks (which
//! include these files by path): a Docker test image, OpenSSH servers on
//! loopback, a WS-Management protocol server.

#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "ssh")]
pub mod sshd;
#[cfg(feature = "winrm")]
pub mod winrm_server;
