//! Credentials and authentication: turning a target's [`Credential`] into an
//! SSH authentication method (decoding private keys, with their passphrase),
//! and connecting plus authenticating within the executor's timeouts.

use std::sync::{Arc, Mutex};

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
    let cell = config.cached_key(value);
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
    fn garbage_is_not_a_key() {
        let err = decode_key(b"not a key").unwrap_err();
        assert!(err.contains("not a usable private key"), "{err}");
    }
}
