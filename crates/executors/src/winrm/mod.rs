//! The WinRM executor: runs steps on Windows hosts over WS-Management
//! (connection kind `winrm`), with the [winrm-rs] client (1.1.2, the newest
//! release that builds with our toolchain).
//!
//! **How it is tested:** no Windows host can run in our CI, so this executor
//! is tested end to end against a *WS-Management protocol test server*
//! (`crates/executors/tests/it/support/winrm_server.rs`): it speaks the real
//! shell protocol (Create, Command, Send, Receive, Signal, Delete, Basic
//! auth, NTLM's negotiate/challenge/authenticate handshake with the NTLMv2
//! proof checked, `w:TimedOut` faults) over HTTP and HTTPS, but runs command lines
//! with `/bin/sh`. It is a protocol test server, not Windows: the Windows
//! command lines this module generates (cmd.exe, PowerShell) are checked by
//! unit tests and by inspecting what reaches the server, never executed.
//!
//! # Target
//!
//! ```yaml
//! name: win1
//! connection: { type: winrm, host: win1.corp.example, port: 5986, tls: true, auth: ntlm }
//! credential: win1-login          # a secret of kind password
//! vars:
//!   shell: powershell             # optional: cmd (default), powershell, pwsh, sh
//!   user: CORP\ops                # optional: then the secret is only the password
//!   insecure_skip_verify: false   # optional, see below
//!   allow_unencrypted: false      # optional, see below
//! ```
//!
//! # Credentials
//!
//! The [`Connection::Winrm`](opsconductor_core::model::Connection::Winrm)
//! model has no user field, so the credential (a secret of kind `password`;
//! `generic` is accepted too) holds **`user:password`**, split at the first
//! `:` (Windows user names cannot contain one; the password may). The user
//! may be `DOMAIN\user` (NTLM then authenticates in that domain) or
//! `user@domain` (a UPN, sent as is). Alternatively the target variable
//! `user` names the user, and the credential is then the password alone,
//! taken whole. One trailing newline is ignored. `auth` is `ntlm` (the
//! default) or `basic` (local accounts only, on Windows).
//!
//! # Transport security
//!
//! - `tls: true` (the default, port 5986): HTTPS with **certificate
//!   verification on**. winrm-rs 1.1.2 trusts the public web PKI roots
//!   (webpki-roots), not the system store, and has no option for a private
//!   CA: a host with an internal-CA or self-signed certificate fails with a
//!   certificate error. Setting the target variable `insecure_skip_verify:
//!   true` accepts any certificate, with a warning in the log each time a
//!   session is opened — anyone on the path can then impersonate the host.
//! - `tls: false` is **refused** with [`ExecError::Connect`]: Basic would
//!   send the password in clear text, and winrm-rs 1.1.2 does not seal NTLM
//!   messages over HTTP. The target variable `allow_unencrypted: true` waives
//!   this (with a warning); the Windows service must then also allow
//!   unencrypted traffic (`winrm set winrm/config/service @{AllowUnencrypted="true"}`).
//!
//! # Sessions and shells
//!
//! [`Executor::connect`] checks the target's settings and credential, and
//! creates and deletes one shell to prove that the host is reachable and
//! accepts the credential (so a wrong password is an [`ExecError::Auth`]
//! before any step runs). Every `exec` and `copy` then runs in **a shell of
//! its own**: the step's environment and working directory are properties
//! of the shell (below). The executor drives the shell itself — Create,
//! Command, Send (end of stdin), Receive in a loop, Signal, Delete — rather
//! than winrm-rs's `run_command`, because 1.1.2 treats a `w:TimedOut` fault
//! (a command silent for longer than the operation timeout,
//! [`WinRmExecutor::operation_timeout`]) as an error; here it is an empty
//! poll and the executor polls again. Output is streamed to the
//! [`OutputSink`] as each Receive returns it; the exit code comes with
//! `CommandState/Done`. Stdin is closed at once (stdin is empty, as for every
//! executor).
//!
//! The shell is **always deleted** — after success, after errors, after a
//! timeout or cancel, and also when the caller's future is dropped (each job
//! runs in a task of its own that finishes the clean-up): Windows allows
//! few shells per user (30 by default).
//!
//! # Timeouts and cancel
//!
//! On the step's deadline or cancellation the executor sends Signal
//! `terminate` for the command and then deletes the shell; Windows ends the
//! command's processes with the shell (they run in the shell's job object),
//! the test server kills the command's process group. The step returns
//! [`ExecError::TimedOut`] or [`ExecError::Cancelled`]. Clean-up requests are
//! bounded by [`WinRmExecutor::cleanup_timeout`].
//!
//! # Environment (secrets)
//!
//! The step's environment is passed in the shell's `<rsp:Environment>` (what
//! `winrs -env:` does), which winrm-rs 1.1.2 supports: values travel inside
//! the (TLS-protected) SOAP body and are set in the environment of the
//! shell's processes. They never appear on a command line, also not encoded
//! (an `-EncodedCommand` would show them, base64-encoded, in the process
//! list of the Windows host). XML cannot carry most control characters, so a
//! value with a control character other than tab and newline (a carriage
//! return, say) is refused with [`ExecError::Spawn`] naming the variable.
//! The working directory is the shell's `<rsp:WorkingDirectory>`; a missing
//! one fails with [`ExecError::Spawn`].
//!
//! # Commands
//!
//! How a [`Command::Shell`] line runs is the target's *shell*
//! ([`WinShell`]): target variable `shell`, else
//! [`WinRmExecutor::with_shell`] (default [`WinShell::Cmd`]):
//! - `cmd`: the line goes to the WinRM shell unchanged, and Windows runs it
//!   with cmd.exe (so `%VAR%` expands, `&` chains);
//! - `powershell` / `pwsh`: the line is a PowerShell script, run as
//!   `powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass
//!   -EncodedCommand …` (UTF-16LE base64). The exit code is the script's
//!   `exit N`, else that of the last native command if the last statement
//!   failed, 1 for a failed cmdlet, 0 otherwise. A line too long for cmd.exe's
//!   8191-character limit is run from an uploaded `.ps1` file instead;
//! - `sh`: for WS-Management endpoints that are not Windows and run command
//!   lines with a POSIX shell — in practice the protocol test server. Lines go
//!   unchanged; scripts, copies and checks use POSIX tools.
//!
//! Template values must be quoted for the language they land in:
//! [`WinRmExecutor::quoting_for`] says which quoting a target's command lines
//! need — [`Quoting::PowerShell`] (single quotes, every kind of single quote
//! doubled: [`powershell_quote`](opsconductor_core::template::powershell_quote))
//! for `powershell`/`pwsh`, POSIX quoting for `sh`, and none for `cmd`:
//! cmd.exe has no reliable quoting, so values for cmd lines should come
//! through the environment (`%NAME%`) instead.
//!
//! A [`Command::Script`] is uploaded to `%TEMP%\opsc-script-ID.EXT`, run, and
//! deleted afterwards whatever happened. `powershell`/`pwsh` interpreters run
//! it with `-File` from a `.ps1` file written with a UTF-8 BOM (Windows
//! PowerShell reads BOM-less scripts in the ANSI code page); `cmd` runs a
//! `.cmd` file (line ends made CRLF) with `/d /c`; any other interpreter
//! (`python`, …) gets the path as its argument. On `sh` endpoints scripts go
//! to `/tmp/opsc-script-ID` (mode 0600).
//!
//! Uploads (scripts and copies) are chunked: each chunk is a PowerShell
//! `-EncodedCommand` that decodes a base64 literal and appends it to the
//! file — about 2 KiB per command under cmd.exe's line limit, so large
//! copies are slow (a PowerShell start per chunk). Script bodies and file
//! contents are therefore visible, encoded, in the Windows process list while
//! they are written; keep secrets in the environment.
//!
//! # Copies
//!
//! [`Session::copy`] uploads into a temporary file next to the destination
//! (`.NAME.opsc-ID.tmp`, created new, never overwriting) and moves it into
//! place: `[IO.File]::Replace` over an existing file (atomic, keeps the
//! file's ACL) or `[IO.File]::Move`. **The mode is ignored on Windows**
//! (files get the directory's inherited ACL); on `sh` endpoints it is applied
//! with `chmod` before the rename. A missing directory fails with
//! [`ExecError::Io`] naming it; a failed copy removes its temporary file.
//!
//! # Check
//!
//! [`Executor::check`] runs a PowerShell probe (`[Environment]::OSVersion`,
//! the machine name, `$PSVersionTable.PSVersion`) — `uname` on `sh`
//! endpoints — and reports the OS, host name, PowerShell version, endpoint,
//! authentication and shell.
//!
//! [winrm-rs]: https://docs.rs/winrm-rs/1.1.2

mod plan;
mod remote;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsconductor_core::executor::{
    Capabilities, Command, Credential, ExecError, Executor, ExitStatus, FileSpec, OutputSink,
    Probe, Session, StepContext,
};
use opsconductor_core::model::Target;
use opsconductor_core::template::Quoting;

pub use plan::WinShell;
use remote::{Done, Job, run_job};
use settings::Settings;

/// The default WS-Management `OperationTimeout`: how long one Receive waits
/// for output before the server answers `w:TimedOut` (and we poll again).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The default bound on opening a TCP connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default bound on each clean-up request (terminate, delete, removing
/// a temporary file).
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs steps on Windows hosts over WinRM (connection kind `winrm`). See the
/// [module docs](self) for credentials, transport security, shells,
/// environment and copies.
///
/// ```
/// use std::time::Duration;
/// use opsconductor_executors::winrm::{WinRmExecutor, WinShell};
///
/// let winrm = WinRmExecutor::default()
///     .with_shell(WinShell::PowerShell)
///     .with_operation_timeout(Duration::from_secs(30));
/// assert_eq!(winrm.shell, WinShell::PowerShell);
/// ```
#[derive(Debug, Clone)]
pub struct WinRmExecutor {
    /// How [`Command::Shell`] lines run on targets without a `shell` variable.
    pub shell: WinShell,
    /// The WS-Management `OperationTimeout` (whole seconds, at least 1).
    pub operation_timeout: Duration,
    /// Bound on opening a TCP connection (whole seconds, at least 1).
    pub connect_timeout: Duration,
    /// Bound on each clean-up request.
    pub cleanup_timeout: Duration,
}

impl Default for WinRmExecutor {
    fn default() -> Self {
        Self {
            shell: WinShell::Cmd,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
        }
    }
}

impl WinRmExecutor {
    /// An executor with the defaults (cmd.exe, 20 s operation timeout, 10 s
    /// connect and clean-up timeouts).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how [`Command::Shell`] lines run on targets without a `shell`
    /// variable.
    pub fn with_shell(mut self, shell: WinShell) -> Self {
        self.shell = shell;
        self
    }

    /// Sets the WS-Management `OperationTimeout` (rounded down to whole
    /// seconds, at least 1 s).
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// Sets the bound on opening a TCP connection (at least 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// Sets the bound on each clean-up request.
    pub fn with_cleanup_timeout(mut self, timeout: Duration) -> Self {
        self.cleanup_timeout = timeout;
        self
    }

    /// Checks the target and credential and proves them by creating and
    /// deleting a shell: what [`Executor::connect`] does, with the concrete
    /// session type.
    pub async fn open_session(
        &self,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<WinRmSession, ExecError> {
        let settings = Arc::new(Settings::new(self, target, cred)?);
        let mut ctx = StepContext::new(target.clone());
        ctx.deadline = Some(opsconductor_core::executor::deadline_after(
            self.setup_limit(),
        ));
        match run_job(settings.clone(), &ctx, Vec::new(), None, Job::Nothing).await {
            Ok(_) => Ok(WinRmSession { settings }),
            Err(ExecError::TimedOut) => Err(self.no_answer(&settings)),
            Err(e) => Err(e),
        }
    }

    /// The quoting that values substituted into `target`'s command lines
    /// need: PowerShell for `powershell`/`pwsh`, POSIX shell for `sh`, and
    /// `None` for `cmd` — cmd.exe has no quoting that makes every value a
    /// literal, so values must reach cmd lines through the environment.
    /// Script bodies take the quoting of their interpreter
    /// ([`Quoting::for_interpreter`]).
    pub fn quoting_for(&self, target: &Target) -> Option<Quoting> {
        let shell = match target.vars.get(settings::VAR_SHELL) {
            Some(v) => v.as_str()?.parse().ok()?,
            None => self.shell,
        };
        match shell {
            WinShell::Cmd => None,
            WinShell::PowerShell | WinShell::Pwsh => Some(Quoting::PowerShell),
            WinShell::Sh => Some(Quoting::Shell),
        }
    }

    /// How long connecting, probing or proving a target may take.
    fn setup_limit(&self) -> Duration {
        self.connect_timeout
            .saturating_add(self.operation_timeout.saturating_mul(2))
            .saturating_add(self.cleanup_timeout)
    }

    fn no_answer(&self, settings: &Settings) -> ExecError {
        ExecError::Connect(format!(
            "target '{}': {} did not answer within {:?}",
            settings.target,
            settings.endpoint(),
            self.setup_limit()
        ))
    }
}

#[async_trait]
impl Executor for WinRmExecutor {
    fn kind(&self) -> &'static str {
        "winrm"
    }

    fn capabilities(&self) -> Capabilities {
        // Windows has no signals: a stopped command has an exit code.
        Capabilities::full().without_signals()
    }

    /// The target's shell decides ([`WinRmExecutor::quoting_for`]); cmd.exe
    /// has no safe quoting, so substitutions into its lines are refused.
    fn quoting(&self, target: &Target) -> Quoting {
        self.quoting_for(target).unwrap_or(Quoting::Refuse)
    }

    async fn connect(
        &self,
        target: &Target,
        cred: Option<&Credential>,
    ) -> Result<Box<dyn Session>, ExecError> {
        Ok(Box::new(self.open_session(target, cred).await?))
    }

    async fn check(&self, target: &Target, cred: Option<&Credential>) -> Result<Probe, ExecError> {
        let settings = Arc::new(Settings::new(self, target, cred)?);
        let mut ctx = StepContext::new(target.clone());
        ctx.deadline = Some(opsconductor_core::executor::deadline_after(
            self.setup_limit(),
        ));
        let probe = plan::probe_command(settings.shell);
        let out = match run_job(settings.clone(), &ctx, Vec::new(), None, Job::Probe(probe)).await {
            Ok(Done::Output(out)) => out,
            Ok(_) => Vec::new(),
            Err(ExecError::TimedOut) => return Err(self.no_answer(&settings)),
            Err(e) => return Err(e),
        };
        let mut probe = Probe::default();
        for line in String::from_utf8_lossy(&out).lines() {
            if let Some((k, v)) = line.trim_end_matches('\r').split_once('=') {
                if k == "os" {
                    probe.os = v.trim().to_owned();
                } else if !k.is_empty() {
                    probe.details.insert(k.to_owned(), v.trim().to_owned());
                }
            }
        }
        if probe.os.is_empty() {
            return Err(ExecError::Io(format!(
                "target '{}': the probe printed no OS: {}",
                target.name,
                String::from_utf8_lossy(&out).trim()
            )));
        }
        probe.details.insert("endpoint".into(), settings.endpoint());
        probe
            .details
            .insert("auth".into(), settings.auth.to_string());
        probe
            .details
            .insert("shell".into(), settings.shell.to_string());
        probe
            .details
            .insert("user".into(), settings.credentials.username.clone());
        Ok(probe)
    }
}

/// A WinRM target whose settings and credential were proven by
/// [`WinRmExecutor::open_session`]. Every step runs in a shell of its own.
#[derive(Debug, Clone)]
pub struct WinRmSession {
    settings: Arc<Settings>,
}

impl WinRmSession {
    /// The shell that runs [`Command::Shell`] lines on this target.
    pub fn shell(&self) -> WinShell {
        self.settings.shell
    }

    /// The WS-Management endpoint (`https://host:port/wsman`).
    pub fn endpoint(&self) -> String {
        self.settings.endpoint()
    }
}

/// A fresh name part for temporary files.
fn temp_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The step's environment as `rsp:Environment` variables, refusing what XML
/// cannot carry. Messages name the variable, never its value.
fn environment(ctx: &StepContext) -> Result<Vec<(String, String)>, ExecError> {
    let bad = |c: char| c.is_control() && c != '\t' && c != '\n';
    let mut env = Vec::with_capacity(ctx.env.len());
    for (name, value) in &ctx.env {
        if name.is_empty() || name.contains('=') || name.chars().any(char::is_control) {
            return Err(ExecError::Spawn(format!(
                "invalid environment variable name {name:?}"
            )));
        }
        if value.chars().any(bad) {
            return Err(ExecError::Spawn(format!(
                "environment variable {name} contains a control character \
                 (other than tab or newline) that WinRM cannot carry"
            )));
        }
        env.push((name.clone(), value.clone()));
    }
    Ok(env)
}

#[async_trait]
impl Session for WinRmSession {
    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        let env = environment(ctx)?;
        let plan = plan::exec_plan(self.settings.shell, cmd, &temp_id())?;
        let job = Job::Exec {
            plan,
            out: out.clone(),
        };
        match run_job(self.settings.clone(), ctx, env, ctx.workdir.clone(), job).await? {
            Done::Status(status) => Ok(status),
            _ => Err(ExecError::Io("the WinRM command reported no status".into())),
        }
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        let plan = plan::copy_plan(self.settings.shell, file, &temp_id())?;
        if self.settings.shell.is_windows() {
            tracing::debug!(
                target = %self.settings.target,
                "copy to {}: mode {:o} is not applied on Windows",
                file.dest,
                file.mode
            );
        }
        let job = Job::Copy {
            plan,
            dest: file.dest.clone(),
        };
        run_job(self.settings.clone(), ctx, Vec::new(), None, job)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_refuses_what_xml_cannot_carry() {
        let mut ctx = StepContext::new(Target::local());
        ctx.env.insert("OK".into(), "tab\tand\nnewline".into());
        assert_eq!(environment(&ctx).unwrap().len(), 1);
        ctx.env
            .insert("BAD".into(), "carriage\rreturn-secret".into());
        match environment(&ctx) {
            Err(ExecError::Spawn(m)) => {
                assert!(m.contains("BAD") && !m.contains("secret"), "{m}")
            }
            other => panic!("expected Spawn, got {other:?}"),
        }
        let mut ctx = StepContext::new(Target::local());
        ctx.env.insert("A=B".into(), "x".into());
        assert!(environment(&ctx).is_err());
    }

    #[test]
    fn quoting_follows_the_shell() {
        let exec = WinRmExecutor::new();
        let mut t = Target::local();
        assert_eq!(exec.quoting_for(&t), None);
        t.vars.insert("shell".into(), "pwsh".into());
        assert_eq!(exec.quoting_for(&t), Some(Quoting::PowerShell));
        t.vars.insert("shell".into(), "sh".into());
        assert_eq!(exec.quoting_for(&t), Some(Quoting::Shell));
        let ps = WinRmExecutor::new().with_shell(WinShell::PowerShell);
        assert_eq!(ps.quoting_for(&Target::local()), Some(Quoting::PowerShell));
    }

    /// The engine asks the executor (`Executor::quoting`), and the executor
    /// answers for the shell it will really run: `powershell.exe` runs
    /// PowerShell, so its lines get PowerShell quoting; cmd (the default)
    /// and an unknown shell have no safe quoting.
    #[test]
    fn the_engine_gets_the_quoting_of_the_shell_that_runs() {
        let exec = WinRmExecutor::new();
        let quoting = |shell: Option<&str>| {
            let mut t = Target::local();
            if let Some(s) = shell {
                t.vars.insert("shell".into(), s.into());
            }
            Executor::quoting(&exec, &t)
        };
        assert_eq!(quoting(Some("powershell.exe")), Quoting::PowerShell);
        assert_eq!(quoting(Some("PowerShell")), Quoting::PowerShell);
        assert_eq!(quoting(Some("pwsh.exe")), Quoting::PowerShell);
        assert_eq!(quoting(Some("sh")), Quoting::Shell);
        assert_eq!(quoting(Some("cmd.exe")), Quoting::Refuse);
        assert_eq!(quoting(None), Quoting::Refuse);
        assert_eq!(quoting(Some("fish")), Quoting::Refuse);
    }

    #[test]
    fn capabilities() {
        let caps = WinRmExecutor::new().capabilities();
        assert!(caps.copy && caps.script && !caps.signals);
        assert_eq!(WinRmExecutor::new().kind(), "winrm");
    }
}
