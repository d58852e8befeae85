//! The executor behaviour suite: one `pub async fn` per rule of the executor
//! seam (see [`opsconductor_core::executor`]), written once and run against
//! every executor. An executor is done when it passes all of them.
//!
//! Run it from an integration test of the executor's crate:
//!
//! ```ignore
//! use std::sync::Arc;
//! use opsconductor_core::executor::Executor;
//! use opsconductor_core::model::Target;
//! use opsconductor_executors::executor_behaviour_suite;
//!
//! async fn local() -> (Arc<dyn Executor>, Target) {
//!     (Arc::new(opsconductor_executors::LocalExecutor::default()), Target::local())
//! }
//!
//! executor_behaviour_suite!(local);
//! ```
//!
//! The factory is called once per test and returns a fresh target; it may
//! also return `(executor, target, Option<Credential>)` or a [`Fixture`]. The
//! tests use only POSIX `sh` and busybox-level tools (`echo`, `printf`,
//! `sleep`, `cat`, `ls`, `head`, `tr`, `mkdir`, `rm`, `test`, `kill`) and
//! `/proc`, so they run against a busybox container as well as a full host.
//! Each test opens one session and runs all its commands on it, so a target
//! that lives as long as its session (a container) keeps its state between
//! them. The suite never skips: when an executor's [`Capabilities`] say it
//! cannot do something, the suite checks that it says so with
//! [`ExecError::Unsupported`] instead.
//!
//! The caller's crate needs `tokio` (with `macros` and `rt-multi-thread`) as
//! a dev-dependency: the macro expands to `#[::tokio::test]` functions.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_core::executor::{
    Capabilities, Command, Credential, ExecError, Executor, ExitStatus, FileSpec, OutputSink,
    Session, StepContext,
};
use opsconductor_core::model::{RunId, Stream, Target};
use tokio::time::Instant;

/// How long any single operation of the suite may take before the test
/// fails instead of hanging.
pub const OPERATION_LIMIT: Duration = Duration::from_secs(60);

/// What a behaviour test runs against: an executor, a fresh target for it and
/// the target's credential.
#[derive(Clone)]
pub struct Fixture {
    /// The executor under test.
    pub executor: Arc<dyn Executor>,
    /// A target the executor serves.
    pub target: Target,
    /// The target's decrypted credential, if it needs one.
    pub credential: Option<Credential>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("executor", &self.executor.kind())
            .field("target", &self.target.name)
            .field("credential", &self.credential)
            .finish()
    }
}

impl From<(Arc<dyn Executor>, Target)> for Fixture {
    fn from((executor, target): (Arc<dyn Executor>, Target)) -> Self {
        Self {
            executor,
            target,
            credential: None,
        }
    }
}

impl From<(Arc<dyn Executor>, Target, Option<Credential>)> for Fixture {
    fn from(
        (executor, target, credential): (Arc<dyn Executor>, Target, Option<Credential>),
    ) -> Self {
        Self {
            executor,
            target,
            credential,
        }
    }
}

impl Fixture {
    /// Opens a session on the target; panics with the error if it cannot.
    pub async fn session(&self) -> Box<dyn Session> {
        let connect = self
            .executor
            .connect(&self.target, self.credential.as_ref());
        match within(connect, "connect").await {
            Ok(s) => s,
            Err(e) => panic!("cannot connect to target '{}': {e}", self.target.name),
        }
    }

    /// A fresh step context for the target.
    pub fn ctx(&self) -> StepContext {
        StepContext::new(self.target.clone())
    }

    /// The executor's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.executor.capabilities()
    }
}

/// One output chunk as the suite received it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The stream it came on.
    pub stream: Stream,
    /// The bytes.
    pub data: Vec<u8>,
    /// When the suite received it.
    pub at: Instant,
}

/// Everything one `exec` produced.
#[derive(Debug)]
pub struct Outcome {
    /// What `exec` returned.
    pub result: Result<ExitStatus, ExecError>,
    /// The chunks, in the order received.
    pub chunks: Vec<Chunk>,
    /// When `exec` was called.
    pub started: Instant,
    /// When `exec` returned.
    pub returned: Instant,
}

impl Outcome {
    /// All bytes of one stream, concatenated.
    pub fn bytes(&self, stream: Stream) -> Vec<u8> {
        self.chunks
            .iter()
            .filter(|c| c.stream == stream)
            .flat_map(|c| c.data.iter().copied())
            .collect()
    }

    /// Standard output as (lossy) text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.bytes(Stream::Stdout)).into_owned()
    }

    /// Standard error as (lossy) text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.bytes(Stream::Stderr)).into_owned()
    }

    /// The exit status; panics with the output if `exec` failed.
    pub fn status(&self) -> ExitStatus {
        match &self.result {
            Ok(s) => *s,
            Err(e) => panic!(
                "exec failed: {e}\nstdout: {}\nstderr: {}",
                self.stdout(),
                self.stderr()
            ),
        }
    }

    /// Panics unless the command exited with code 0.
    pub fn assert_success(&self) -> &Self {
        let status = self.status();
        assert!(
            status.success(),
            "expected exit code 0, got {status}\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// Runs `cmd` on `session` with `ctx`, collecting output concurrently. Calls
/// `on_chunk` for every chunk as it arrives (the cancel test cancels from it).
pub async fn run_with(
    session: &dyn Session,
    ctx: &StepContext,
    cmd: &Command,
    mut on_chunk: impl FnMut(&Chunk),
) -> Outcome {
    // Small on purpose: a reader that buffers would block on it, one that
    // streams does not care.
    let (sink, mut rx) = OutputSink::channel(16);
    let started = Instant::now();
    let exec = async {
        let result = session.exec(ctx, cmd, &sink).await;
        let returned = Instant::now();
        drop(sink);
        (result, returned)
    };
    let collect = async {
        let mut chunks = Vec::new();
        while let Some(event) = rx.recv().await {
            let chunk = Chunk {
                stream: event.stream,
                data: event.data.to_vec(),
                at: Instant::now(),
            };
            on_chunk(&chunk);
            chunks.push(chunk);
        }
        chunks
    };
    let ((result, returned), chunks) = within(async { tokio::join!(exec, collect) }, "exec").await;
    Outcome {
        result,
        chunks,
        started,
        returned,
    }
}

/// Runs `cmd` on `session` with `ctx`.
pub async fn run(session: &dyn Session, ctx: &StepContext, cmd: &Command) -> Outcome {
    run_with(session, ctx, cmd, |_| {}).await
}

/// Runs a shell command line with a fresh context and the given environment.
pub async fn sh(fx: &Fixture, session: &dyn Session, line: &str, env: &[(&str, &str)]) -> Outcome {
    let mut ctx = fx.ctx();
    for (k, v) in env {
        ctx.env.insert((*k).to_owned(), (*v).to_owned());
    }
    run(session, &ctx, &Command::Shell(line.to_owned())).await
}

/// A string no other test uses, safe in file names and command lines.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", RunId::new().0.simple())
}

async fn within<F: std::future::Future>(f: F, what: &str) -> F::Output {
    match tokio::time::timeout(OPERATION_LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {OPERATION_LIMIT:?}"),
    }
}

/// Lists the processes on the target whose command line contains `marker`,
/// as `/proc/PID/cmdline: ARGV` lines. The marker travels in the environment,
/// so the scanning shell never matches itself.
pub async fn processes_with(fx: &Fixture, session: &dyn Session, marker: &str) -> Vec<String> {
    const SCAN: &str = r#"
test -r /proc/$$/cmdline || { echo "no /proc on this target" >&2; exit 2; }
for f in /proc/[0-9]*/cmdline; do
  c=$(tr '\000' ' ' 2>/dev/null < "$f") || continue
  case "$c" in *"$BEHAVIOUR_MARKER"*) printf '%s: %s\n' "$f" "$c" ;; esac
done
"#;
    let out = sh(fx, session, SCAN, &[("BEHAVIOUR_MARKER", marker)]).await;
    out.assert_success();
    out.stdout().lines().map(str::to_owned).collect()
}

/// Waits (a few seconds at most) until no process on the target carries
/// `marker`; panics with the survivors otherwise.
pub async fn assert_no_survivors(fx: &Fixture, session: &dyn Session, marker: &str) {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(fx, session, marker).await;
        if left.is_empty() {
            return;
        }
        if Instant::now() >= give_up {
            panic!("processes survived the kill:\n{}", left.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------

/// Output is streamed: the first line arrives while the command still runs.
pub async fn stdout_is_streamed(fx: Fixture) {
    let session = fx.session().await;
    let out = sh(&fx, &*session, "echo first; sleep 2; echo second", &[]).await;
    out.assert_success();
    assert_eq!(out.stdout(), "first\nsecond\n");
    let first = out
        .chunks
        .iter()
        .find(|c| c.stream == Stream::Stdout)
        .unwrap_or_else(|| panic!("no stdout chunk at all"));
    assert!(
        first.data.starts_with(b"first"),
        "the first chunk should carry the first line, got {:?}",
        String::from_utf8_lossy(&first.data)
    );
    let early = out.returned.saturating_duration_since(first.at);
    assert!(
        early >= Duration::from_secs(1),
        "the first line arrived only {early:?} before exec returned; \
         output must be streamed as it arrives, not buffered"
    );
}

/// Stdout and stderr arrive on their own streams, byte-exact.
pub async fn stdout_and_stderr_are_separate(fx: Fixture) {
    let session = fx.session().await;
    let out = sh(
        &fx,
        &*session,
        "printf 'out1\\n'; printf 'err1\\n' >&2; printf 'out2'; printf 'err2' >&2",
        &[],
    )
    .await;
    out.assert_success();
    assert_eq!(out.stdout(), "out1\nout2");
    assert_eq!(out.stderr(), "err1\nerr2");
    assert!(
        out.chunks.iter().all(|c| c.stream != Stream::System),
        "executors report output on stdout/stderr only"
    );
}

/// Exit codes are reported as they are, and a signal that kills the process
/// is reported as a signal.
pub async fn exit_codes_and_signals_are_reported(fx: Fixture) {
    let session = fx.session().await;
    for code in [0, 3, 42] {
        let out = sh(&fx, &*session, &format!("exit {code}"), &[]).await;
        assert_eq!(out.status(), ExitStatus::code(code), "for `exit {code}`");
    }
    let out = sh(&fx, &*session, "kill -9 $$", &[]).await;
    let status = out.status();
    if fx.capabilities().signals {
        assert_eq!(
            status,
            ExitStatus {
                code: None,
                signal: Some(9)
            },
            "a process killed by SIGKILL must report the signal"
        );
    } else {
        assert!(
            !status.success(),
            "a killed process must not report success"
        );
    }
}

/// The step's environment reaches the process byte-exact and never appears
/// on any process's command line.
pub async fn env_is_passed_and_not_on_the_command_line(fx: Fixture) {
    let session = fx.session().await;
    let value = format!(
        "{} it's \"quoted\" $HOME $(id) `id` \\ back\\slash\ttab\nsecond line ",
        unique("secret-")
    );
    const SCRIPT: &str = r#"
printf '%s' "$BEHAVIOUR_VALUE"
test -r /proc/$$/cmdline || { echo "no /proc on this target" >&2; exit 2; }
for f in /proc/[0-9]*/cmdline; do
  c=$(tr '\000' ' ' 2>/dev/null < "$f") || continue
  case "$c" in *"$BEHAVIOUR_VALUE"*) printf 'LEAK %s: %s\n' "$f" "$c" >&2 ;; esac
done
"#;
    let out = sh(&fx, &*session, SCRIPT, &[("BEHAVIOUR_VALUE", &value)]).await;
    out.assert_success();
    assert_eq!(out.stdout(), value, "the env value must arrive byte-exact");
    assert!(
        !out.stderr().contains("LEAK"),
        "the env value is visible on a command line:\n{}",
        out.stderr()
    );
}

/// The working directory is honoured.
pub async fn workdir_is_honoured(fx: Fixture) {
    let session = fx.session().await;
    for dir in ["/tmp", "/"] {
        let mut ctx = fx.ctx();
        ctx.workdir = Some(dir.to_owned());
        let out = run(&*session, &ctx, &Command::Shell("pwd".into())).await;
        out.assert_success();
        assert_eq!(out.stdout(), format!("{dir}\n"), "workdir {dir}");
    }
}

/// A multi-line script runs through its interpreter, and its file is gone
/// afterwards.
pub async fn script_runs_through_interpreter(fx: Fixture) {
    let session = fx.session().await;
    let cmd = Command::Script {
        interpreter: "sh".into(),
        body: "set -e\n\
               greet() {\n  printf 'hello %s\\n' \"$1\"\n}\n\
               for who in one 'two words'; do\n  greet \"$who\"\ndone\n\
               printf '%s' \"$0\" >&2\n"
            .into(),
    };
    let out = run(&*session, &fx.ctx(), &cmd).await;
    if !fx.capabilities().script {
        assert!(
            matches!(out.result, Err(ExecError::Unsupported(_))),
            "an executor without script support must say Unsupported, got {:?}",
            out.result
        );
        return;
    }
    out.assert_success();
    assert_eq!(out.stdout(), "hello one\nhello two words\n");
    let path = out.stderr();
    assert!(
        path.starts_with('/'),
        "the script should run from a file, $0 = {path:?}"
    );
    let check = sh(
        &fx,
        &*session,
        r#"if test -e "$P"; then echo present; else echo gone; fi"#,
        &[("P", &path)],
    )
    .await;
    assert_eq!(
        check.stdout(),
        "gone\n",
        "the script file {path} must be removed"
    );
}

/// Deadline: the command is killed, with everything it started, and
/// `TimedOut` comes back fast.
pub async fn timeout_kills_the_process_group(fx: Fixture) {
    let session = fx.session().await;
    let marker = unique("opsc-timeout-");
    let mut ctx = fx.ctx();
    ctx.deadline = Some(Instant::now() + Duration::from_secs(1));
    // The background shell carries the marker in its command line; it cannot
    // exec `sleep` away because a command follows.
    let line = format!("sh -c 'sleep 30; echo {marker}' & echo started; sleep 30");
    let out = run(&*session, &ctx, &Command::Shell(line)).await;
    let took = out.returned - out.started;
    assert!(
        matches!(out.result, Err(ExecError::TimedOut)),
        "expected TimedOut, got {:?}",
        out.result
    );
    assert!(took < Duration::from_secs(10), "the timeout took {took:?}");
    assert!(
        out.stdout().contains("started"),
        "output before the timeout is kept"
    );
    assert_no_survivors(&fx, &*session, &marker).await;
}

/// Cancel: the command is killed, with everything it started, and
/// `Cancelled` comes back.
pub async fn cancel_kills_the_process_group(fx: Fixture) {
    let session = fx.session().await;
    let marker = unique("opsc-cancel-");
    let ctx = fx.ctx();
    let cancel = ctx.cancel.clone();
    let line = format!("sh -c 'sleep 30; echo {marker}' & echo started; sleep 30");
    let out = run_with(&*session, &ctx, &Command::Shell(line), |_| cancel.cancel()).await;
    let took = out.returned - out.started;
    assert!(
        matches!(out.result, Err(ExecError::Cancelled)),
        "expected Cancelled, got {:?}",
        out.result
    );
    assert!(took < Duration::from_secs(10), "the cancel took {took:?}");
    assert_eq!(out.stdout(), "started\n");
    assert_no_survivors(&fx, &*session, &marker).await;
}

/// Large output arrives complete, in many chunks.
pub async fn large_output_arrives_complete(fx: Fixture) {
    const SIZE: usize = 2 * 1024 * 1024;
    let session = fx.session().await;
    let out = sh(
        &fx,
        &*session,
        &format!("head -c {SIZE} /dev/zero; echo done >&2"),
        &[],
    )
    .await;
    out.assert_success();
    let bytes = out.bytes(Stream::Stdout);
    assert_eq!(bytes.len(), SIZE, "stdout length");
    assert!(bytes.iter().all(|b| *b == 0), "stdout content");
    assert_eq!(out.stderr(), "done\n");
    let chunks = out
        .chunks
        .iter()
        .filter(|c| c.stream == Stream::Stdout)
        .count();
    assert!(
        chunks >= 8,
        "2 MiB arrived in {chunks} chunk(s); output must be streamed, not buffered"
    );
}

/// `copy` writes content byte-exact with the mode asked, replacing an
/// existing file by rename and leaving no temporary file behind.
pub async fn copy_is_atomic_with_mode(fx: Fixture) {
    let session = fx.session().await;
    let dir = format!("/tmp/{}", unique("opsc-copy-"));
    let dest = format!("{dir}/file");
    let ctx = fx.ctx();
    let first = FileSpec {
        dest: dest.clone(),
        content: b"old content\n".to_vec(),
        mode: 0o600,
    };
    if !fx.capabilities().copy {
        let res = within(session.copy(&ctx, &first), "copy").await;
        assert!(
            matches!(res, Err(ExecError::Unsupported(_))),
            "an executor without copy support must say Unsupported, got {res:?}"
        );
        return;
    }
    sh(&fx, &*session, r#"mkdir "$D""#, &[("D", &dir)])
        .await
        .assert_success();
    if let Err(e) = within(session.copy(&ctx, &first), "copy").await {
        panic!("copy to {dest}: {e}");
    }
    let inode = |out: &Outcome| {
        out.stdout()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let before = sh(&fx, &*session, r#"ls -i "$F""#, &[("F", &dest)]).await;
    before.assert_success();

    let content: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let second = FileSpec {
        dest: dest.clone(),
        content: content.clone(),
        mode: 0o640,
    };
    if let Err(e) = within(session.copy(&ctx, &second), "copy").await {
        panic!("copy over {dest}: {e}");
    }
    let cat = sh(&fx, &*session, r#"cat "$F""#, &[("F", &dest)]).await;
    cat.assert_success();
    assert!(
        cat.bytes(Stream::Stdout) == content,
        "the copied bytes differ"
    );
    let ls = sh(&fx, &*session, r#"ls -ln "$F""#, &[("F", &dest)]).await;
    ls.assert_success();
    assert!(
        ls.stdout().starts_with("-rw-r----- "),
        "mode 0640 expected: {}",
        ls.stdout()
    );
    let after = sh(&fx, &*session, r#"ls -i "$F""#, &[("F", &dest)]).await;
    assert_ne!(
        inode(&before),
        inode(&after),
        "an overwrite must rename a new file into place, not rewrite the old one"
    );
    let listing = sh(&fx, &*session, r#"ls -a "$D""#, &[("D", &dir)]).await;
    let mut names: Vec<String> = listing.stdout().lines().map(str::to_owned).collect();
    names.sort();
    assert_eq!(
        names,
        [".", "..", "file"],
        "no temporary file may be left behind"
    );
    sh(&fx, &*session, r#"rm -rf "$D""#, &[("D", &dir)])
        .await
        .assert_success();
}

/// `copy` into a directory that does not exist fails, naming the directory.
pub async fn copy_to_a_missing_directory_names_it(fx: Fixture) {
    let session = fx.session().await;
    let dir = format!("/tmp/{}/sub", unique("opsc-missing-"));
    let file = FileSpec {
        dest: format!("{dir}/file"),
        content: b"x".to_vec(),
        mode: 0o644,
    };
    match within(session.copy(&fx.ctx(), &file), "copy").await {
        Err(ExecError::Unsupported(_)) if !fx.capabilities().copy => {}
        Err(ExecError::Io(msg)) => {
            assert!(msg.contains(&dir), "the error should name {dir}: {msg}")
        }
        other => panic!("expected an Io error naming {dir}, got {other:?}"),
    }
}

/// An empty command succeeds and an unknown command exits 127 from the
/// shell: neither is an executor error.
pub async fn empty_and_unknown_commands_are_shell_results(fx: Fixture) {
    let session = fx.session().await;
    let out = sh(&fx, &*session, "", &[]).await;
    assert_eq!(out.status(), ExitStatus::code(0), "an empty command");
    let name = unique("opsc-no-such-command-");
    let out = sh(&fx, &*session, &name, &[]).await;
    assert_eq!(out.status(), ExitStatus::code(127), "an unknown command");
    assert!(
        !out.stderr().is_empty(),
        "the shell should say the command is not found"
    );
}

/// The process reads an empty stdin: a command that reads it ends at once.
pub async fn stdin_is_empty(fx: Fixture) {
    let session = fx.session().await;
    let out = sh(&fx, &*session, "cat; echo end", &[]).await;
    out.assert_success();
    assert_eq!(out.stdout(), "end\n");
}

/// `check` reaches the target and reports its OS; `kind` matches the target.
pub async fn check_reports_the_os(fx: Fixture) {
    assert_eq!(
        fx.executor.kind(),
        fx.target.connection.kind(),
        "the executor's kind must match the target's connection"
    );
    let probe = match within(
        fx.executor.check(&fx.target, fx.credential.as_ref()),
        "check",
    )
    .await
    {
        Ok(p) => p,
        Err(e) => panic!("check failed: {e}"),
    };
    assert!(
        !probe.os.trim().is_empty(),
        "check must report the OS: {probe:?}"
    );
}

/// Expands to one `#[tokio::test]` per rule of the [`behaviour`](crate::behaviour)
/// suite, in a module `behaviour_suite` (or the name given first, to run the
/// suite twice in one file), each calling `$factory().await` for a fresh
/// fixture. The module does `use super::*`, so the factory may be any item in
/// scope where the macro is invoked.
///
/// `$factory` is anything callable with no arguments that returns a future of
/// `(Arc<dyn Executor>, Target)`, `(Arc<dyn Executor>, Target,
/// Option<Credential>)` or a [`Fixture`](crate::behaviour::Fixture): an
/// `async fn` in scope, or a closure such as `|| async { … }`.
///
/// ```ignore
/// async fn local() -> (Arc<dyn Executor>, Target) {
///     (Arc::new(LocalExecutor::default()), Target::local())
/// }
/// opsconductor_executors::executor_behaviour_suite!(local);
/// // or, with a module name of your own:
/// opsconductor_executors::executor_behaviour_suite!(local_bash, || async {
///     let exec = LocalExecutor::default().with_shell("/bin/bash");
///     (Arc::new(exec) as Arc<dyn Executor>, Target::local())
/// });
/// ```
#[macro_export]
macro_rules! executor_behaviour_suite {
    ($module:ident, $factory:expr $(,)?) => {
        $crate::executor_behaviour_suite!(@tests $module, $factory;
            stdout_is_streamed,
            stdout_and_stderr_are_separate,
            exit_codes_and_signals_are_reported,
            env_is_passed_and_not_on_the_command_line,
            workdir_is_honoured,
            script_runs_through_interpreter,
            timeout_kills_the_process_group,
            cancel_kills_the_process_group,
            large_output_arrives_complete,
            copy_is_atomic_with_mode,
            copy_to_a_missing_directory_names_it,
            empty_and_unknown_commands_are_shell_results,
            stdin_is_empty,
            check_reports_the_os,
        );
    };
    ($factory:expr $(,)?) => {
        $crate::executor_behaviour_suite!(behaviour_suite, $factory);
    };
    (@tests $module:ident, $factory:expr; $($rule:ident),* $(,)?) => {
        /// The executor behaviour suite, one test per rule.
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    let fixture: $crate::behaviour::Fixture = ($factory)().await.into();
                    $crate::behaviour::$rule(fixture).await;
                }
            )*
        }
    };
}
