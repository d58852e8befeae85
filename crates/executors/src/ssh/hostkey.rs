//! Server key verification: pinned fingerprints and known_hosts files, the
//! messages for unknown and changed keys, the russh client handler that
//! applies them, and [`fetch_host_key`] for `opsconductor targets trust`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsconductor_core::executor::ExecError;
use russh::client;
use russh::keys::{Algorithm, HashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::net::TcpStream;

use super::known_hosts::{self, KnownKey};
use super::{Destination, SshExecutor};

/// What a server key must match.
#[derive(Debug, Clone)]
pub(crate) enum Policy {
    /// The target's `host_key`, normalized to `SHA256:` + unpadded base64.
    Pinned(String),
    /// Keys recorded for the host in a known_hosts file.
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Every entry naming the host.
        keys: Vec<KnownKey>,
    },
    /// Nothing to compare with: every key is refused.
    Unknown {
        /// The known_hosts file consulted, if any.
        path: Option<PathBuf>,
    },
}

impl Policy {
    /// The policy for `dest`: its pin, else its entries in the target's own
    /// known_hosts file, else in the executor's default one. The file is read
    /// here, for each connection, so a file edited by hand or by
    /// configuration management takes effect at once.
    pub(crate) async fn load(config: &SshExecutor, dest: &Destination) -> Result<Self, ExecError> {
        if let Some(pin) = &dest.host_key {
            return normalize_fingerprint(pin)
                .map(Policy::Pinned)
                .map_err(|why| {
                    ExecError::Connect(format!(
                        "{}: host_key '{pin}' {why}; expected a fingerprint as `ssh-keygen -lf` \
                     prints it, like SHA256:uSRtK4sxdyxrdT2J1FwV1fuzBMpc0tE3Xf0pPHHAqD8",
                        dest.label()
                    ))
                });
        }
        let Some(path) = dest
            .known_hosts
            .clone()
            .or_else(|| config.known_hosts.clone())
        else {
            return Ok(Policy::Unknown { path: None });
        };
        let host = dest.host.clone();
        let port = dest.port;
        let file = path.clone();
        let keys = tokio::task::spawn_blocking(move || known_hosts::keys_for(&file, &host, port))
            .await
            .map_err(|e| ExecError::Connect(format!("cannot read {}: {e}", path.display())))?
            .map_err(|e| {
                ExecError::Connect(format!(
                    "{}: cannot read the known_hosts file {}: {e}",
                    dest.label(),
                    path.display()
                ))
            })?;
        if keys.is_empty() {
            Ok(Policy::Unknown { path: Some(path) })
        } else {
            Ok(Policy::KnownHosts { path, keys })
        }
    }

    /// Key algorithms to ask the server for first (those on record).
    pub(crate) fn algorithms(&self) -> Vec<Algorithm> {
        match self {
            Policy::KnownHosts { keys, .. } => {
                let mut algos = Vec::new();
                for known in keys.iter().filter(|k| !k.revoked) {
                    let algo = known.key.algorithm();
                    if algo.clone().is_rsa() {
                        for hash in [Some(HashAlg::Sha512), Some(HashAlg::Sha256), None] {
                            algos.push(Algorithm::Rsa { hash });
                        }
                    } else {
                        algos.push(algo);
                    }
                }
                algos
            }
            _ => Vec::new(),
        }
    }

    /// Accepts `offered` or says why not, for a person to act on.
    pub(crate) fn check(&self, offered: &PublicKey, dest: &Destination) -> Result<(), String> {
        let offered_fp = fingerprint(offered);
        let shown = format!("{} key {offered_fp}", offered.algorithm());
        let file = match self {
            Policy::KnownHosts { path, .. } | Policy::Unknown { path: Some(path) } => {
                format!(", or add the host's key to {}", path.display())
            }
            _ => String::new(),
        };
        let trust = format!(
            "If you expect this key, accept it with `opsconductor targets trust {}` \
             (or set `host_key: {offered_fp}` on the target{file})",
            dest.name
        );
        match self {
            Policy::Pinned(pin) if *pin == offered_fp => Ok(()),
            Policy::Pinned(pin) => Err(format!(
                "HOST KEY MISMATCH for {}: expected {pin} (the target's host_key), but the \
                 server offered {shown}. Someone may be intercepting the connection, or the \
                 host was reinstalled; verify the new key out of band. {trust}",
                dest.label()
            )),
            Policy::KnownHosts { path, keys } => {
                let same = |k: &&KnownKey| k.key.key_data() == offered.key_data();
                if let Some(revoked) = keys.iter().filter(|k| k.revoked).find(same) {
                    return Err(format!(
                        "REVOKED HOST KEY for {}: the server offered {shown}, which {}:{} \
                         marks @revoked; refusing it",
                        dest.label(),
                        path.display(),
                        revoked.line
                    ));
                }
                if keys.iter().filter(|k| !k.revoked).any(|k| same(&k)) {
                    return Ok(());
                }
                if keys.iter().all(|k| k.revoked) {
                    return Err(unknown(
                        dest,
                        &shown,
                        &format!("{} lists only revoked keys for it", path.display()),
                        &trust,
                    ));
                }
                let expected: Vec<String> = keys
                    .iter()
                    .filter(|k| !k.revoked)
                    .map(|k| {
                        format!(
                            "{} key {} ({}:{})",
                            k.key.algorithm(),
                            fingerprint(&k.key),
                            path.display(),
                            k.line
                        )
                    })
                    .collect();
                Err(format!(
                    "HOST KEY MISMATCH for {}: expected {}, but the server offered {shown}. \
                     Someone may be intercepting the connection, or the host was reinstalled; \
                     verify the new key out of band. {trust}",
                    dest.label(),
                    expected.join(" or ")
                ))
            }
            Policy::Unknown { path } => {
                let nowhere = match path {
                    Some(p) => format!(
                        "no host_key is pinned on the target and {} has no entry for it",
                        p.display()
                    ),
                    None => "no host_key is pinned on the target, and neither the target nor \
                             the executor names a known_hosts file"
                        .to_owned(),
                };
                Err(unknown(dest, &shown, &nowhere, &trust))
            }
        }
    }
}

fn unknown(dest: &Destination, shown: &str, nowhere: &str, trust: &str) -> String {
    format!(
        "unknown host key for {}: the server offered {shown}, but {nowhere}. {trust}",
        dest.label()
    )
}

/// `SHA256:` + unpadded base64 of the key, as `ssh-keygen -lf` prints it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Accepts `SHA256:<base64>` with or without padding (and a lower-case
/// prefix); returns the canonical form or why it is not one.
pub(crate) fn normalize_fingerprint(pin: &str) -> Result<String, &'static str> {
    let pin = pin.trim();
    let Some((alg, b64)) = pin.split_once(':') else {
        return Err("is not a fingerprint");
    };
    if !alg.eq_ignore_ascii_case("SHA256") {
        return Err("is not a SHA256 fingerprint (MD5 and others are not accepted)");
    }
    let b64 = b64.trim_end_matches('=');
    let valid = b64.len() == 43
        && b64
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
    if !valid {
        return Err("is not a valid SHA256 fingerprint (43 base64 characters after 'SHA256:')");
    }
    Ok(format!("SHA256:{b64}"))
}

/// Why a connection attempt ended inside the russh client.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// A protocol or I/O error.
    Ssh(russh::Error),
    /// The server key was refused; the message says why.
    HostKey(String),
    /// [`fetch_host_key`] has what it came for.
    Captured,
}

impl From<russh::Error> for ClientError {
    fn from(e: russh::Error) -> Self {
        ClientError::Ssh(e)
    }
}

/// The russh client handler: verifies the server key against a [`Policy`]
/// (or only records it, for [`fetch_host_key`]).
pub(crate) struct Client {
    policy: Option<Arc<Policy>>,
    dest: Arc<Destination>,
    seen: Arc<Mutex<Option<String>>>,
}

impl Client {
    /// A handler verifying against `policy`; the accepted key's fingerprint
    /// is stored in `seen`.
    pub(crate) fn verify(
        policy: Policy,
        dest: Destination,
        seen: Arc<Mutex<Option<String>>>,
    ) -> Self {
        Self {
            policy: Some(Arc::new(policy)),
            dest: Arc::new(dest),
            seen,
        }
    }
}

impl client::Handler for Client {
    type Error = ClientError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            return Err(ClientError::HostKey(format!(
                "{} presented a host certificate; only plain host keys are supported",
                self.dest.label()
            )));
        };
        let fp = fingerprint(key);
        match self.seen.lock() {
            Ok(mut seen) => *seen = Some(fp),
            Err(poisoned) => *poisoned.into_inner() = Some(fp),
        }
        match &self.policy {
            None => Err(ClientError::Captured),
            Some(policy) => policy
                .check(key, &self.dest)
                .map(|()| true)
                .map_err(ClientError::HostKey),
        }
    }
}

/// TCP connect and SSH handshake (key exchange and server key check) within
/// `timeout`.
pub(crate) async fn handshake(
    config: Arc<client::Config>,
    dest: &Destination,
    handler: Client,
    timeout: Duration,
) -> Result<client::Handle<Client>, ExecError> {
    let deadline = opsconductor_core::executor::deadline_after(timeout);
    let label = dest.label();
    let tcp = match tokio::time::timeout_at(
        deadline,
        TcpStream::connect((dest.host.as_str(), dest.port)),
    )
    .await
    {
        Err(_) => {
            return Err(ExecError::Connect(format!(
                "{label}: no answer within {timeout:?} (host down, or the port filtered?)"
            )));
        }
        Ok(Err(e)) => return Err(ExecError::Connect(format!("{label}: {e}"))),
        Ok(Ok(tcp)) => tcp,
    };
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    match tokio::time::timeout_at(deadline, client::connect_stream(config, tcp, handler)).await {
        Err(_) => Err(ExecError::Connect(format!(
            "{label}: the SSH handshake did not finish within {timeout:?}"
        ))),
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(ClientError::HostKey(msg))) => Err(ExecError::Connect(msg)),
        Ok(Err(ClientError::Captured)) => Err(ExecError::Connect(format!(
            "{label}: the handshake stopped after reading the host key"
        ))),
        Ok(Err(ClientError::Ssh(e))) => Err(ExecError::Connect(format!(
            "{label}: SSH handshake failed: {e}"
        ))),
    }
}

/// Connects to `host:port`, reads the server's host key — the one this
/// executor negotiates by default, so the one a later connection will be
/// checked against — and returns its fingerprint as `ssh-keygen -lf` prints
/// it (`SHA256:` + unpadded base64), without authenticating. For
/// `opsconductor targets trust`: show it to a person, and pin it once they
/// agree.
///
/// ```no_run
/// # async fn demo() -> Result<(), opsconductor_core::executor::ExecError> {
/// use std::time::Duration;
/// let fp = opsconductor_executors::ssh::fetch_host_key("db1.example.net", 22, Duration::from_secs(5)).await?;
/// assert!(fp.starts_with("SHA256:"));
/// # Ok(()) }
/// ```
pub async fn fetch_host_key(host: &str, port: u16, timeout: Duration) -> Result<String, ExecError> {
    let dest = Destination {
        name: host.to_owned(),
        host: host.to_owned(),
        port,
        user: String::new(),
        host_key: None,
        known_hosts: None,
    };
    let seen = Arc::new(Mutex::new(None));
    let handler = Client {
        policy: None,
        dest: Arc::new(dest.clone()),
        seen: seen.clone(),
    };
    let config = Arc::new(SshExecutor::default().client_config(&[]));
    let result = handshake(config, &dest, handler, timeout).await;
    let captured = match seen.lock() {
        Ok(seen) => seen.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    match (captured, result) {
        (Some(fp), _) => Ok(fp),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) => Err(ExecError::Connect(format!(
            "{}: the server sent no host key",
            dest.address()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        let fp = "SHA256:uSRtK4sxdyxrdT2J1FwV1fuzBMpc0tE3Xf0pPHHAqD8";
        assert_eq!(normalize_fingerprint(fp).as_deref(), Ok(fp));
        assert_eq!(
            normalize_fingerprint(&format!(" sha256:{}= ", &fp[7..])).as_deref(),
            Ok(fp)
        );
        assert!(normalize_fingerprint("MD5:aa:bb").is_err());
        assert!(normalize_fingerprint("SHA256:short").is_err());
        assert!(normalize_fingerprint("uSRtK4sxdyxrdT2J1FwV1fuzBMpc0tE3Xf0pPHHAqD8").is_err());
    }
}
