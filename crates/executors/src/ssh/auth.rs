//! Credentials and authentication: turning a target's [`Credential`] into an
//! SSH authentication method (decoding private keys, with their passphrase),
//! and connecting plus authenticating within the executor's timeouts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use opsconductor_core::executor::{Credential, ExecError};
use russh::MethodKind;
use russh::client::{self, AuthResult, KeyboardInteractiveAuthResponse};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};
use tokio::sync::OnceCell;

use super::hostkey::{self, Client, Policy};
use super::{Destination, SshExecutor};

/// The line that carries a key's passphrase in an `ssh_key` credential, after
/// the key's `-----END … PRIVATE KEY-----` line: `Passphrase: ` followed by
/// the passphrase up to the end of the line (an interim encoding until
/// credentials have a passphrase field of their own).
///
/// ```text
/// -----BEGIN OPENSSH PRIVATE KEY-----
/// b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABD…
/// -----END OPENSSH PRIVATE KEY-----
/// Passphrase: correct horse battery staple
/// ```
pub const PASSPHRASE_PREFIX: &str = "Passphrase: ";

/// A decoded key shared by every connection using the same credential bytes.
pub(crate) type KeyCell = Arc<OnceCell<Arc<PrivateKey>>>;

/// How many decoded private keys a [`KeyCache`] holds at most; beyond that
/// the least recently used one is dropped.
pub(crate) const KEY_CACHE_SIZE: usize = 32;

/// How long a decoded key stays cached after its last use. Long enough for
/// the connections of one fan-out (which all start within moments of each
/// other, or one `concurrency` batch after another) to share one decoding;
/// short enough that an idle worker does not keep decrypted keys around.
pub const KEY_CACHE_IDLE: Duration = Duration::from_secs(120);

/// SHA-256 of a credential's bytes: the cache's key, so that neither the
/// private key nor its passphrase is ever held as a map key.
type Digest = [u8; 32];

/// Decoded private keys by the digest of their credential, so that the
/// many targets of a fan-out sharing one (passphrase-protected) key pay for
/// its key derivation once.
///
/// Lifetime: an entry is dropped [`KEY_CACHE_IDLE`] after its last use (by
/// a sweeper task that runs only while the cache is non-empty, and on every
/// access), when [`KEY_CACHE_SIZE`] newer keys push it out, or with the
/// last clone of the executor. The decoded key itself is freed once the
/// connections authenticating with it at that moment are done; `ssh-key`
/// zeroizes private key material on drop. `Debug` shows only the count.
#[derive(Clone, Default)]
pub(crate) struct KeyCache {
    state: Arc<Mutex<CacheState>>,
    /// Idle time after which an entry goes ([`KEY_CACHE_IDLE`]; shorter in
    /// unit tests).
    idle: Option<Duration>,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<Digest, Entry>,
    /// Whether a sweeper task is running for this cache.
    sweeping: bool,
}

struct Entry {
    cell: KeyCell,
    last_used: Instant,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.lock().entries.len())
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    fn idle(&self) -> Duration {
        self.idle.unwrap_or(KEY_CACHE_IDLE)
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        lock_state(&self.state)
    }

    /// The cell for `value`'s decoded key: shared with every other caller
    /// passing the same bytes, fresh (empty) otherwise.
    pub(crate) fn cell(&self, value: &[u8]) -> KeyCell {
        let digest = credential_digest(value);
        let idle = self.idle();
        let now = Instant::now();
        let mut state = self.lock();
        state.purge(now, idle);
        if let Some(entry) = state.entries.get_mut(&digest) {
            entry.last_used = now;
            return entry.cell.clone();
        }
        if state.entries.len() >= KEY_CACHE_SIZE
            && let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| *d)
        {
            state.entries.remove(&oldest);
        }
        let cell = KeyCell::default();
        state.entries.insert(
            digest,
            Entry {
                cell: cell.clone(),
                last_used: now,
            },
        );
        if !state.sweeping {
            state.sweeping = self.spawn_sweeper(idle);
        }
        cell
    }

    /// Starts the task that drops idle entries, if there is a runtime to run
    /// it on (there always is under the engine; without one, entries still
    /// go on the next access). It holds the cache weakly, and ends when the
    /// cache is empty or gone.
    fn spawn_sweeper(&self, idle: Duration) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let state: Weak<Mutex<CacheState>> = Arc::downgrade(&self.state);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(idle / 2).await;
                let Some(state) = state.upgrade() else {
                    return;
                };
                let mut state = lock_state(&state);
                state.purge(Instant::now(), idle);
                if state.entries.is_empty() {
                    state.sweeping = false;
                    return;
                }
            }
        });
        true
    }

    /// How many keys are cached now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl CacheState {
    fn purge(&mut self, now: Instant, idle: Duration) {
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_used) < idle);
    }
}

fn lock_state(state: &Mutex<CacheState>) -> MutexGuard<'_, CacheState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SHA-256 of a credential's bytes (with russh's own implementation).
fn credential_digest(value: &[u8]) -> Digest {
    let mut digest = [0u8; 32];
    for (d, h) in digest.iter_mut().zip(HashAlg::Sha256.digest(value)) {
        *d = h;
    }
    digest
}

/// How to authenticate.
enum Method {
    None,
    Password(String),
    Key(Arc<PrivateKey>),
}

/// Connects to `dest`, verifies its host key, and authenticates with `cred`.
/// Returns the handle and the server key's fingerprint.
pub(crate) async fn connect_and_authenticate(
    config: &SshExecutor,
    dest: &Destination,
    cred: Option<&Credential>,
) -> Result<(client::Handle<Client>, String), ExecError> {
    // A bad credential is reported before any network traffic.
    let method = method(config, dest, cred).await?;
    let policy = Policy::load(config, dest).await?;
    let ssh_config = Arc::new(config.client_config(&policy.algorithms()));
    let seen = Arc::new(Mutex::new(None));
    let handler = Client::verify(policy, dest.clone(), seen.clone());
    let mut handle = hostkey::handshake(ssh_config, dest, handler, config.connect_timeout).await?;
    let fingerprint = match seen.lock() {
        Ok(seen) => seen.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
    .unwrap_or_default();
    let limit = config.auth_timeout;
    match tokio::time::timeout(limit, authenticate(&mut handle, dest, &method)).await {
        Ok(Ok(())) => Ok((handle, fingerprint)),
        Ok(Err(e)) => {
            close_quietly(&handle).await;
            Err(e)
        }
        Err(_) => {
            close_quietly(&handle).await;
            Err(ExecError::Auth(format!(
                "{}: authentication did not finish within {limit:?}",
                dest.label()
            )))
        }
    }
}

async fn close_quietly(handle: &client::Handle<Client>) {
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
}

async fn method(
    config: &SshExecutor,
    dest: &Destination,
    cred: Option<&Credential>,
) -> Result<Method, ExecError> {
    let Some(cred) = cred else {
        return Ok(Method::None);
    };
    let looks_like_key = cred.value.trim_ascii_start().starts_with(b"-----BEGIN ");
    match cred.kind.as_str() {
        "password" => match String::from_utf8(cred.value.clone()) {
            Ok(p) => Ok(Method::Password(p)),
            Err(_) => Err(ExecError::Auth(format!(
                "{}: the password credential is not valid UTF-8",
                dest.label()
            ))),
        },
        "ssh_key" => decode_cached(config, dest, &cred.value).await,
        _ if looks_like_key => decode_cached(config, dest, &cred.value).await,
        other => Err(ExecError::Auth(format!(
            "{}: a credential of kind '{other}' cannot log in over SSH; use a secret of kind \
             'password' or 'ssh_key'",
            dest.label()
        ))),
    }
}

async fn decode_cached(
    config: &SshExecutor,
    dest: &Destination,
    value: &[u8],
) -> Result<Method, ExecError> {
    let cell = config.keys.cell(value);
    let key = cell
        .get_or_try_init(|| async {
            let value = value.to_vec();
            let label = dest.label();
            tokio::task::spawn_blocking(move || {
                decode_key(&value).map_err(|e| format!("{label}: {e}"))
            })
            .await
            .map_err(|e| ExecError::Auth(format!("cannot decode the ssh_key: {e}")))?
            .map(Arc::new)
            .map_err(ExecError::Auth)
        })
        .await?;
    Ok(Method::Key(key.clone()))
}

/// Decodes an `ssh_key` credential: a PEM private key, optionally followed
/// by a [`PASSPHRASE_PREFIX`] line.
pub(crate) fn decode_key(value: &[u8]) -> Result<PrivateKey, String> {
    let text = std::str::from_utf8(value).map_err(|_| {
        "the ssh_key credential is not text (expected a PEM private key)".to_owned()
    })?;
    let (pem, passphrase) = split_passphrase(text)?;
    match russh::keys::decode_secret_key(pem, passphrase) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(format!(
            "the ssh_key credential is passphrase-protected; add a line \
             '{PASSPHRASE_PREFIX}<passphrase>' after its -----END line"
        )),
        Err(e) if passphrase.is_some() => Err(format!(
            "cannot decrypt the ssh_key credential (wrong passphrase?): {e}"
        )),
        Err(e) => Err(format!(
            "the ssh_key credential is not a usable private key (expected an OpenSSH, \
             PKCS#1 or PKCS#8 PEM key): {e}"
        )),
    }
}

/// Splits a credential into the PEM block and the passphrase line after it.
fn split_passphrase(text: &str) -> Result<(&str, Option<&str>), String> {
    let Some(end) = text.find("-----END ") else {
        return Ok((text, None));
    };
    let after_end = match text[end..].find('\n') {
        Some(nl) => end + nl + 1,
        None => return Ok((text, None)),
    };
    let (pem, rest) = text.split_at(after_end);
    let mut passphrase = None;
    for line in rest.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        match line.strip_prefix(PASSPHRASE_PREFIX) {
            Some(p) if passphrase.is_none() => passphrase = Some(p),
            _ => {
                return Err(format!(
                    "unexpected text after the private key in the ssh_key credential; only one \
                     '{PASSPHRASE_PREFIX}<passphrase>' line may follow it"
                ));
            }
        }
    }
    Ok((pem, passphrase))
}

fn methods(remaining: &russh::MethodSet) -> String {
    let names: Vec<&str> = remaining.iter().map(<&str>::from).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn refused(dest: &Destination, what: &str, result: &AuthResult) -> ExecError {
    let (remaining, partial) = match result {
        AuthResult::Failure {
            remaining_methods,
            partial_success,
        } => (methods(remaining_methods), *partial_success),
        AuthResult::Success => (String::new(), false),
    };
    let more = if partial {
        " (it wants further authentication, which is not supported)"
    } else {
        ""
    };
    ExecError::Auth(format!(
        "{}: the server refused {what} for user '{}'{more}; it accepts: {remaining}",
        dest.label(),
        dest.user
    ))
}

fn lost(dest: &Destination, e: russh::Error) -> ExecError {
    ExecError::Connect(format!(
        "{}: connection lost during authentication: {e}",
        dest.label()
    ))
}

async fn authenticate(
    handle: &mut client::Handle<Client>,
    dest: &Destination,
    method: &Method,
) -> Result<(), ExecError> {
    let user = dest.user.clone();
    match method {
        Method::None => {
            let result = handle
                .authenticate_none(user)
                .await
                .map_err(|e| lost(dest, e))?;
            if result.success() {
                return Ok(());
            }
            Err(ExecError::Auth(format!(
                "{}: the target has no credential and the server requires one (it accepts: \
                 {}); set the target's `credential` to a secret of kind 'password' or 'ssh_key'",
                dest.label(),
                match &result {
                    AuthResult::Failure {
                        remaining_methods, ..
                    } => methods(remaining_methods),
                    AuthResult::Success => String::new(),
                }
            )))
        }
        Method::Password(password) => {
            let result = handle
                .authenticate_password(user.clone(), password.clone())
                .await
                .map_err(|e| lost(dest, e))?;
            if result.success() {
                return Ok(());
            }
            let interactive = matches!(
                &result,
                AuthResult::Failure { remaining_methods, .. }
                    if remaining_methods.contains(&MethodKind::KeyboardInteractive)
                        && !remaining_methods.contains(&MethodKind::Password)
            );
            if interactive && keyboard_interactive(handle, dest, password).await? {
                return Ok(());
            }
            Err(refused(dest, "the password", &result))
        }
        Method::Key(key) => {
            let hash = if key.algorithm().is_rsa() {
                match handle.best_supported_rsa_hash().await {
                    Ok(Some(hash)) => hash,
                    _ => Some(HashAlg::Sha256),
                }
            } else {
                None
            };
            let result = handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                .await
                .map_err(|e| lost(dest, e))?;
            if result.success() {
                return Ok(());
            }
            let what = format!(
                "the ssh_key ({} {})",
                key.algorithm(),
                key.public_key().fingerprint(HashAlg::Sha256)
            );
            Err(refused(dest, &what, &result))
        }
    }
}

/// `keyboard-interactive` with every prompt answered by the password; a
/// few rounds at most.
async fn keyboard_interactive(
    handle: &mut client::Handle<Client>,
    dest: &Destination,
    password: &str,
) -> Result<bool, ExecError> {
    let mut reply = handle
        .authenticate_keyboard_interactive_start(dest.user.clone(), None::<String>)
        .await
        .map_err(|e| lost(dest, e))?;
    for _ in 0..4 {
        match reply {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure { .. } => return Ok(false),
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                let answers = prompts.iter().map(|_| password.to_owned()).collect();
                reply = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await
                    .map_err(|e| lost(dest, e))?;
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn passphrase_line_is_split_off() {
        let text = format!("{PEM}Passphrase: a b 'c'\n");
        assert_eq!(split_passphrase(&text), Ok((PEM, Some("a b 'c'"))));
        assert_eq!(split_passphrase(PEM), Ok((PEM, None)));
        let crlf = format!("{PEM}\nPassphrase: x\r\n\n");
        assert_eq!(split_passphrase(&crlf), Ok((PEM, Some("x"))));
        assert!(split_passphrase(&format!("{PEM}garbage\n")).is_err());
        assert!(split_passphrase(&format!("{PEM}Passphrase: a\nPassphrase: b\n")).is_err());
    }

    #[test]
    fn the_cache_is_keyed_by_a_digest_and_shows_no_secrets() {
        let cache = KeyCache::default();
        let value = format!("{PEM}Passphrase: hunter2-secret\n");
        let a = cache.cell(value.as_bytes());
        let b = cache.cell(value.as_bytes());
        assert!(Arc::ptr_eq(&a, &b), "the same bytes share one cell");
        let c = cache.cell(PEM.as_bytes());
        assert!(!Arc::ptr_eq(&a, &c), "other bytes get their own");
        let state = cache.lock();
        assert!(
            state
                .entries
                .keys()
                .all(|k| *k == credential_digest(value.as_bytes())
                    || *k == credential_digest(PEM.as_bytes())),
            "only digests are keys"
        );
        drop(state);
        let shown = format!("{cache:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("BEGIN"),
            "{shown}"
        );
        assert!(shown.contains("keys: 2"), "{shown}");
    }

    #[test]
    fn the_cache_is_bounded_by_size_dropping_the_least_recently_used() {
        let cache = KeyCache::default();
        let first = cache.cell(b"key-0");
        std::thread::sleep(Duration::from_millis(2));
        for i in 1..KEY_CACHE_SIZE {
            cache.cell(format!("key-{i}").as_bytes());
        }
        std::thread::sleep(Duration::from_millis(2));
        // key-0 is used again, so one of the others is the oldest now.
        assert!(Arc::ptr_eq(&first, &cache.cell(b"key-0")));
        cache.cell(b"one-more");
        assert_eq!(cache.len(), KEY_CACHE_SIZE);
        assert!(
            Arc::ptr_eq(&first, &cache.cell(b"key-0")),
            "recently used: kept"
        );
    }

    #[tokio::test]
    async fn idle_keys_are_swept_without_further_use() {
        let cache = KeyCache {
            idle: Some(Duration::from_millis(100)),
            ..KeyCache::default()
        };
        cache.cell(b"a key");
        assert_eq!(cache.len(), 1);
        let give_up = Instant::now() + Duration::from_secs(5);
        while cache.len() > 0 {
            assert!(Instant::now() < give_up, "the idle key was never dropped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !cache.lock().sweeping,
            "the sweeper ends with an empty cache"
        );
        // And starts again for the next key.
        cache.cell(b"another");
        assert!(cache.lock().sweeping);
    }

    #[test]
    fn garbage_is_not_a_key() {
        let err = decode_key(b"not a key").unwrap_err();
        assert!(err.contains("not a usable private key"), "{err}");
    }
}
