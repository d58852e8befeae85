//! From a target and its credential to what winrm-rs needs: endpoint, auth
//! method, user name and password, TLS policy, shell.

use std::fmt;
use std::time::Duration;

use opsconductor_core::executor::{Credential, ExecError};
use opsconductor_core::model::{Connection, Target};
use winrm_rs::{AuthMethod, EncryptionMode, WinrmClient, WinrmConfig, WinrmCredentials};

use super::{WinRmExecutor, WinShell};

/// Target variable: the user name, when the credential holds only the password.
pub(crate) const VAR_USER: &str = "user";
/// Target variable: the shell for [`opsconductor_core::executor::Command::Shell`].
pub(crate) const VAR_SHELL: &str = "shell";
/// Target variable: accept any server certificate (logs a warning).
pub(crate) const VAR_INSECURE: &str = "insecure_skip_verify";
/// Target variable: allow Basic/NTLM over plain HTTP (logs a warning).
pub(crate) const VAR_ALLOW_UNENCRYPTED: &str = "allow_unencrypted";

/// How the client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Basic,
    Ntlm,
}

impl fmt::Display for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::Basic => "basic",
            Auth::Ntlm => "ntlm",
        })
    }
}

/// Everything needed to open shells on one target.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Target name, for messages.
    pub target: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub auth: Auth,
    pub insecure_skip_verify: bool,
    pub credentials: WinrmCredentials,
    pub shell: WinShell,
    pub operation_timeout: Duration,
    pub connect_timeout: Duration,
    /// Bound on each clean-up request (terminate, delete, temp file removal).
    pub cleanup_timeout: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.target)
            .field("endpoint", &self.endpoint())
            .field("auth", &self.auth)
            .field("user", &self.credentials.username)
            .field("shell", &self.shell)
            .finish_non_exhaustive()
    }
}

fn flag(target: &Target, name: &str) -> Result<bool, ExecError> {
    match target.vars.get(name) {
        None => Ok(false),
        Some(v) if v.is_null() => Ok(false),
        Some(v) => match (v.as_bool(), v.as_str()) {
            (Some(b), _) => Ok(b),
            (None, Some("true" | "yes" | "1")) => Ok(true),
            (None, Some("false" | "no" | "0" | "")) => Ok(false),
            _ => Err(ExecError::Unsupported(format!(
                "target '{}': variable {name} must be true or false, not {v}",
                target.name
            ))),
        },
    }
}

impl Settings {
    /// Reads the target's connection, variables and credential, applying the
    /// transport policy (HTTPS required unless explicitly waived).
    pub fn new(
        exec: &WinRmExecutor,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<Self, ExecError> {
        let Connection::Winrm {
            host,
            port,
            tls,
            auth,
        } = &target.connection
        else {
            return Err(ExecError::Unsupported(format!(
                "the winrm executor cannot reach target '{}' (connection kind {})",
                target.name,
                target.connection.kind()
            )));
        };
        let name = &target.name;
        if host.trim().is_empty() {
            return Err(ExecError::Connect(format!("target '{name}': no host")));
        }
        let auth = match auth.trim().to_ascii_lowercase().as_str() {
            "basic" => Auth::Basic,
            "ntlm" | "" => Auth::Ntlm,
            other => {
                return Err(ExecError::Unsupported(format!(
                    "target '{name}': WinRM auth '{other}' is not supported (use basic or ntlm)"
                )));
            }
        };
        let shell = match target.vars.get(VAR_SHELL) {
            None => exec.shell,
            Some(v) => match v.as_str().map(str::parse::<WinShell>) {
                Some(Ok(s)) => s,
                _ => {
                    return Err(ExecError::Unsupported(format!(
                        "target '{name}': variable shell must be one of cmd, powershell, pwsh, sh; got {v}"
                    )));
                }
            },
        };
        let insecure_skip_verify = flag(target, VAR_INSECURE)?;
        let allow_unencrypted = flag(target, VAR_ALLOW_UNENCRYPTED)?;
        if !*tls {
            if !allow_unencrypted {
                return Err(ExecError::Connect(format!(
                    "target '{name}': refusing WinRM over plain HTTP (http://{host}:{port}/wsman): \
                     {auth} authentication would expose the password or the traffic \
                     (Basic sends it in clear text, and winrm-rs 1.1.2 does not seal NTLM \
                     messages). Use tls: true (HTTPS, port 5986), or set the target variable \
                     {VAR_ALLOW_UNENCRYPTED}: true to accept an unencrypted connection"
                )));
            }
            tracing::warn!(
                target = %name,
                "WinRM over plain HTTP to {host}:{port} with {auth} authentication: \
                 credentials and commands travel unencrypted ({VAR_ALLOW_UNENCRYPTED} is set)"
            );
        }
        if *tls && insecure_skip_verify {
            tracing::warn!(
                target = %name,
                "TLS certificate verification is OFF for {host}:{port} \
                 ({VAR_INSECURE} is set): anyone on the path can impersonate the host"
            );
        }
        let credentials = credentials(target, cred)?;
        Ok(Self {
            target: name.clone(),
            host: host.trim().to_owned(),
            port: *port,
            tls: *tls,
            auth,
            insecure_skip_verify,
            credentials,
            shell,
            operation_timeout: exec.operation_timeout,
            connect_timeout: exec.connect_timeout,
            cleanup_timeout: exec.cleanup_timeout,
        })
    }

    /// `https://host:port/wsman`, for messages.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/wsman", self.port)
    }

    /// A client whose shells get `env` and `workdir` (`rsp:Environment`,
    /// `rsp:WorkingDirectory`).
    pub fn client(
        &self,
        env: Vec<(String, String)>,
        workdir: Option<String>,
    ) -> Result<WinrmClient, ExecError> {
        let config = WinrmConfig {
            port: self.port,
            use_tls: self.tls,
            accept_invalid_certs: self.tls && self.insecure_skip_verify,
            connect_timeout_secs: self.connect_timeout.as_secs().max(1),
            operation_timeout_secs: self.operation_timeout.as_secs().max(1),
            auth_method: match self.auth {
                Auth::Basic => AuthMethod::Basic,
                Auth::Ntlm => AuthMethod::Ntlm,
            },
            // Over HTTPS TLS encrypts; over HTTP the user waived encryption
            // explicitly (sealing is unreliable in winrm-rs 1.1.2).
            encryption: EncryptionMode::Never,
            working_directory: workdir,
            env_vars: env,
            // We stream output ourselves and never accumulate it.
            max_output_bytes: None,
            ..WinrmConfig::default()
        };
        WinrmClient::new(config, self.credentials.clone()).map_err(|e| {
            ExecError::Connect(format!(
                "target '{}': cannot set up a WinRM client for {}: {e}",
                self.target,
                self.endpoint()
            ))
        })
    }
}

/// The user name and password: the credential is `user:password` (the user
/// may be `DOMAIN\user` or `user@domain`), or only the password when the
/// target variable `user` names the user.
fn credentials(target: &Target, cred: Option<&Credential>) -> Result<WinrmCredentials, ExecError> {
    let name = &target.name;
    let Some(cred) = cred else {
        return Err(ExecError::Auth(format!(
            "target '{name}': WinRM needs a credential (a secret of kind password holding \
             user:password, or the password with the target variable user)"
        )));
    };
    if !matches!(cred.kind.as_str(), "password" | "generic") {
        return Err(ExecError::Auth(format!(
            "target '{name}': a credential of kind {} cannot log in over WinRM \
             (use kind password)",
            cred.kind
        )));
    }
    let value = std::str::from_utf8(&cred.value).map_err(|_| {
        ExecError::Auth(format!("target '{name}': the credential is not UTF-8 text"))
    })?;
    let value = value.strip_suffix('\n').unwrap_or(value);
    let value = value.strip_suffix('\r').unwrap_or(value);
    let var_user = match target.vars.get(VAR_USER) {
        None => None,
        Some(v) => match v.as_str() {
            Some(u) if !u.trim().is_empty() => Some(u.trim().to_owned()),
            _ => {
                return Err(ExecError::Auth(format!(
                    "target '{name}': variable user must be a non-empty string"
                )));
            }
        },
    };
    let (user, password) = match var_user {
        Some(user) => (user, value.to_owned()),
        None => match value.split_once(':') {
            Some((user, password)) if !user.trim().is_empty() => {
                (user.trim().to_owned(), password.to_owned())
            }
            _ => {
                return Err(ExecError::Auth(format!(
                    "target '{name}': the credential must be user:password \
                     (or set the target variable user and store only the password)"
                )));
            }
        },
    };
    let (domain, user) = match user.split_once('\\') {
        Some((domain, user)) => (domain.to_owned(), user.to_owned()),
        None => (String::new(), user),
    };
    Ok(WinrmCredentials::new(user, password, domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use winrm_rs::ExposeSecret;

    fn target(tls: bool, auth: &str) -> Target {
        let mut t = Target::local();
        t.name = "win1".into();
        t.connection = Connection::Winrm {
            host: "win1.example".into(),
            port: 5986,
            tls,
            auth: auth.into(),
        };
        t
    }

    fn cred(v: &str) -> Credential {
        Credential {
            kind: "password".into(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn credential_forms() {
        let t = target(true, "ntlm");
        let c = credentials(&t, Some(&cred("CORP\\ops:pa:ss\n"))).unwrap();
        assert_eq!((c.domain.as_str(), c.username.as_str()), ("CORP", "ops"));
        assert_eq!(c.password.expose_secret(), "pa:ss");
        let c = credentials(&t, Some(&cred("ops@corp.example:x"))).unwrap();
        assert_eq!(
            (c.domain.as_str(), c.username.as_str()),
            ("", "ops@corp.example")
        );
        let mut t2 = t.clone();
        t2.vars.insert("user".into(), "admin".into());
        let c = credentials(&t2, Some(&cred("only:the:password"))).unwrap();
        assert_eq!(c.username, "admin");
        assert_eq!(c.password.expose_secret(), "only:the:password");
        assert!(matches!(
            credentials(&t, Some(&cred("nouser"))),
            Err(ExecError::Auth(_))
        ));
        assert!(matches!(credentials(&t, None), Err(ExecError::Auth(_))));
        let key = Credential {
            kind: "ssh_key".into(),
            value: b"a:b".to_vec(),
        };
        assert!(matches!(
            credentials(&t, Some(&key)),
            Err(ExecError::Auth(_))
        ));
    }

    #[test]
    fn plain_http_needs_the_opt_out() {
        let exec = WinRmExecutor::default();
        let t = target(false, "basic");
        match Settings::new(&exec, &t, Some(&cred("a:b"))) {
            Err(ExecError::Connect(m)) => {
                assert!(
                    m.contains("plain HTTP") && m.contains("allow_unencrypted"),
                    "{m}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let mut t = target(false, "ntlm");
        t.vars.insert("allow_unencrypted".into(), true.into());
        let s = Settings::new(&exec, &t, Some(&cred("a:b"))).unwrap();
        assert_eq!(s.endpoint(), "http://win1.example:5986/wsman");
    }

    #[test]
    fn vars_are_checked() {
        let exec = WinRmExecutor::default();
        let mut t = target(true, "kerberos");
        assert!(matches!(
            Settings::new(&exec, &t, Some(&cred("a:b"))),
            Err(ExecError::Unsupported(_))
        ));
        t = target(true, "Basic");
        t.vars.insert("shell".into(), "bash".into());
        assert!(matches!(
            Settings::new(&exec, &t, Some(&cred("a:b"))),
            Err(ExecError::Unsupported(_))
        ));
        t.vars.insert("shell".into(), "powershell".into());
        t.vars.insert("insecure_skip_verify".into(), "yes".into());
        let s = Settings::new(&exec, &t, Some(&cred("a:b"))).unwrap();
        assert_eq!(s.shell, WinShell::PowerShell);
        assert!(s.insecure_skip_verify);
        assert_eq!(s.auth, Auth::Basic);
        t.vars.insert("insecure_skip_verify".into(), 3.into());
        assert!(Settings::new(&exec, &t, Some(&cred("a:b"))).is_err());
    }
}
