//! The small POSIX shell programs the SSH executor sends on a channel's
//! stdin (see the [module docs](super)): the wrapper that sets up and
//! `exec`s a step's command, the status line it prints, and the helpers that
//! stop a process group and remove a script's directory.

use std::fmt::Write as _;
use std::time::Duration;

use opsconductor_core::executor::{Command, ExecError, StepContext};

/// The `exec` request of every channel: the user's login shell starts
/// `/bin/sh`, which reads the program's length (a decimal line) and then
/// exactly that many bytes from stdin, and evaluates them. Stdin stays open
/// after that: a step's wrapper watches it to notice a lost connection (see
/// [`build`]). Nothing step-specific is ever in it.
pub const EXEC_REQUEST: &str =
    r#"exec /bin/sh -c 'IFS= read -r _opsc_n && eval "$(head -c "$_opsc_n")"'"#;

/// `program` framed for [`EXEC_REQUEST`]: its length in bytes on a line of
/// its own, then the program.
pub(crate) fn framed(program: &str) -> String {
    format!("{}\n{program}", program.len())
}

/// Started in the background before the command: waits for the channel's
/// stdin (kept on fd 3) to reach EOF, which happens when the channel closes.
/// If the command (`$$`, the process group leader sshd made) is still alive
/// then, the worker's connection was lost: kill the whole group. The double
/// fork keeps it from being a child of the command; it ignores HUP, but not
/// TERM, so stopping the group stops it too.
///
/// With a lease margin (see [`StepContext::lease_margin`]) the worker also
/// sends a keepalive line on stdin every quarter margin, and the watcher
/// kills the group when none came for the margin: a frozen worker (SIGSTOP)
/// keeps its connection open, yet another node may rescue the run. `read -t`
/// is not POSIX (dash lacks it), so a ticker adds a `t` line every
/// [`TICK_MS`] (four per second where `sleep` takes only whole seconds).
fn watcher(lease_margin: Option<Duration>) -> String {
    let Some(margin) = lease_margin else {
        return "exec 3<&0 </dev/null\n\
            ( ( trap '' HUP; cat <&3 >/dev/null 2>&1; \
            kill -0 $$ 2>/dev/null && kill -KILL -$$ ) >/dev/null 2>&1 & )\n\
            exec 3<&-\n"
            .to_owned();
    };
    let ticks = (margin.as_millis() / TICK_MS).saturating_sub(1).max(1);
    format!(
        r#"exec 3<&0 </dev/null
( ( trap '' HUP
  {{ while :; do sleep 0.25 2>/dev/null || {{ sleep 1; echo t; echo t; echo t; }}; echo t || exit 0; done &
    cat <&3; echo e; kill $! 2>/dev/null; }} | {{
    _n=0
    while IFS= read -r _l; do
      case $_l in
        t) _n=$((_n + 1)); [ "$_n" -gt {ticks} ] && break ;;
        e) break ;;
        *) _n=0 ;;
      esac
    done
    kill -0 $$ 2>/dev/null && kill -KILL -$$
  }} ) >/dev/null 2>&1 & )
exec 3<&-
"#
    )
}

/// The watcher's tick, in milliseconds.
const TICK_MS: u128 = 250;

/// What the worker sends on a command's stdin to say it is alive.
pub(crate) const KEEPALIVE: &[u8] = b"k\n";

/// A step's command, ready to send.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The program for stdin.
    pub program: String,
    /// The per-command token that starts the status line.
    pub token: String,
    /// The shell or interpreter (for messages).
    pub program_name: String,
    /// For a script: the directory's name under `$TMPDIR` (or `/tmp`).
    pub script_dir: Option<String>,
}

/// Quotes `s` for a POSIX shell: single quotes, with `'` as `'\''`.
pub(crate) fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn no_nul(what: &str, s: &str) -> Result<(), ExecError> {
    if s.contains('\0') {
        Err(ExecError::Spawn(format!(
            "{what} contains a NUL byte, which a process cannot receive"
        )))
    } else {
        Ok(())
    }
}

/// The shell expression of a script directory, evaluated on the target with
/// the login environment (before the step's variables are exported).
fn script_dir_expr(name: &str) -> String {
    format!("\"${{TMPDIR:-/tmp}}\"/{}", quote(name))
}

/// Builds the wrapper for `cmd` (see the [module docs](super)).
pub(crate) fn build(
    shell: &str,
    ctx: &StepContext,
    cmd: &Command,
    token: &str,
) -> Result<Plan, ExecError> {
    let mut p = String::new();
    let fail = |what: &str| {
        format!(
            "{{ printf '%s\\n' {}; exit 1; }}",
            quote(&format!("{token}:fail:{what}"))
        )
    };
    let mut script_dir = None;
    let (program_name, exec_line) = match cmd {
        Command::Shell(line) => {
            no_nul("the command", line)?;
            (
                shell.to_owned(),
                format!("exec {} -c {}", quote(shell), quote(line)),
            )
        }
        Command::Script { interpreter, body } => {
            no_nul("the script", body)?;
            no_nul("the interpreter", interpreter)?;
            let mut words = interpreter.split_whitespace();
            let program = words.next().ok_or_else(|| {
                ExecError::Spawn(
                    "the script interpreter is empty; name a program such as 'sh'".into(),
                )
            })?;
            let dir = format!("opsc-script-{token}");
            let file = script_name(program);
            // Written before the step's variables exist, so with the login
            // TMPDIR and PATH, and exactly like the cleanup finds it.
            let _ = writeln!(p, "_opsc_d={}", script_dir_expr(&dir));
            let _ = writeln!(
                p,
                "(umask 077 && mkdir -- \"$_opsc_d\" && printf '%s' {} > \"$_opsc_d\"/{file} \
                 && chmod 700 \"$_opsc_d\"/{file}) 2>/dev/null || {}",
                quote(body),
                fail("script")
            );
            let mut line = format!("exec {}", quote(program));
            for w in words {
                line.push(' ');
                line.push_str(&quote(w));
            }
            let _ = write!(line, " \"$_opsc_d\"/{file}");
            script_dir = Some(dir);
            (program.to_owned(), line)
        }
    };
    for (name, value) in &ctx.env {
        if !valid_name(name) {
            return Err(ExecError::Spawn(format!(
                "environment variable name '{name}' cannot be passed through a POSIX shell \
                 (letters, digits and '_' only, not starting with a digit)"
            )));
        }
        no_nul(&format!("environment variable {name}"), value)?;
        let _ = writeln!(p, "export {name}={}", quote(value));
    }
    if let Some(dir) = &ctx.workdir {
        no_nul("the working directory", dir)?;
        let _ = writeln!(
            p,
            "CDPATH= cd -- {} >/dev/null 2>&1 || {}",
            quote(dir),
            fail("workdir")
        );
    }
    let _ = writeln!(
        p,
        "command -v {} >/dev/null 2>&1 || {}",
        quote(&program_name),
        fail("program")
    );
    if script_dir.is_none() {
        let _ = writeln!(p, "unset _opsc_d");
    }
    p.push_str(&watcher(ctx.lease_margin));
    let _ = writeln!(p, "printf '%s:ok:%s\\n' {} \"$$\"", quote(token));
    let _ = writeln!(p, "{exec_line}");
    Ok(Plan {
        program: p,
        token: token.to_owned(),
        program_name,
        script_dir,
    })
}

/// Some interpreters insist on an extension (PowerShell runs only `.ps1`).
fn script_name(program: &str) -> &'static str {
    let base = program.rsplit('/').next().unwrap_or(program);
    match base {
        "pwsh" | "powershell" | "powershell.exe" | "pwsh.exe" => "script.ps1",
        _ => "script",
    }
}

/// Removes a script directory made by [`build`].
pub(crate) fn cleanup_program(dir: &str) -> String {
    format!("rm -rf -- {}\n", script_dir_expr(dir))
}

/// Stops process group `pgid`: SIGTERM, then SIGKILL once `grace` has passed
/// with a live (non-zombie) member left.
pub(crate) fn kill_program(pgid: u32, grace: Duration) -> String {
    let rounds = (grace.as_millis() / 100).max(1);
    format!(
        r#"_p={pgid}; _n={rounds}; _i=0
_live() {{
  kill -0 -$_p 2>/dev/null || return 1
  [ -r /proc/self/stat ] || return 0
  for _f in /proc/[0-9]*/stat; do
    read -r _l < "$_f" 2>/dev/null || continue
    set -- ${{_l##*") "}}
    [ "$3" = "$_p" ] && [ "$1" != Z ] && return 0
  done
  return 1
}}
kill -TERM -$_p 2>/dev/null
while _live; do
  if [ "$_i" -ge "$_n" ]; then kill -KILL -$_p 2>/dev/null; exit 0; fi
  if sleep 0.1 2>/dev/null; then _i=$((_i + 1)); else sleep 1; _i=$((_i + 10)); fi
done
"#
    )
}

/// What the status line said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// The command runs as (and leads the process group of) this PID.
    Started(u32),
    /// The wrapper could not start it: `workdir`, `program` or `script`.
    Failed(String),
}

/// Finds the status line in stdout. Bytes before it (a login shell's
/// chatter) and after it are the command's output.
#[derive(Debug)]
pub(crate) struct Scanner {
    needle: Vec<u8>,
    buf: Vec<u8>,
    found: bool,
}

/// Held-back stdout beyond this is passed on while the status line is
/// still being looked for.
const SCAN_LIMIT: usize = 64 * 1024;

impl Scanner {
    /// A scanner for `token`'s line.
    pub(crate) fn new(token: &str) -> Self {
        Self {
            needle: format!("{token}:").into_bytes(),
            buf: Vec::new(),
            found: false,
        }
    }

    /// Whether the status line has been seen.
    pub(crate) fn found(&self) -> bool {
        self.found
    }

    /// Feeds stdout bytes; returns the bytes that are output, and the status
    /// once its line is complete.
    pub(crate) fn feed(&mut self, data: &[u8]) -> (Vec<u8>, Option<Status>) {
        if self.found {
            return (data.to_vec(), None);
        }
        self.buf.extend_from_slice(data);
        if let Some(at) = find(&self.buf, &self.needle) {
            let rest = &self.buf[at + self.needle.len()..];
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                return (Vec::new(), None);
            };
            let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
            let mut output = self.buf[..at].to_vec();
            output.extend_from_slice(&rest[nl + 1..]);
            self.buf = Vec::new();
            self.found = true;
            let status = match line.split_once(':') {
                Some(("ok", pid)) => match pid.trim().parse() {
                    Ok(pid) => Status::Started(pid),
                    Err(_) => Status::Failed(format!("bad pid '{pid}'")),
                },
                Some(("fail", what)) => Status::Failed(what.to_owned()),
                _ => Status::Failed(format!("bad status line '{line}'")),
            };
            return (output, Some(status));
        }
        if self.buf.len() > SCAN_LIMIT {
            let keep = self.needle.len();
            let pass = self.buf.len() - keep;
            let output = self.buf.drain(..pass).collect();
            return (output, None);
        }
        (Vec::new(), None)
    }

    /// Whatever is held back (the channel ended without a status line).
    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsconductor_core::model::Target;

    #[test]
    fn quoting_survives_a_real_shell() {
        let value = "it's \"q\" $HOME `id` \\ \t\n end ";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {}", quote(value)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }

    #[test]
    fn env_names_are_checked() {
        let mut ctx = StepContext::new(Target::local());
        ctx.env.insert("1BAD".into(), "x".into());
        let err = build("/bin/sh", &ctx, &Command::Shell("true".into()), "t").unwrap_err();
        assert!(err.to_string().contains("1BAD"), "{err}");
        ctx.env.clear();
        ctx.env.insert("GOOD_1".into(), "a\0b".into());
        assert!(build("/bin/sh", &ctx, &Command::Shell("true".into()), "t").is_err());
    }

    #[test]
    fn the_wrapper_runs_locally() {
        let mut ctx = StepContext::new(Target::local());
        ctx.env.insert("V".into(), "it's $x".into());
        ctx.workdir = Some("/tmp".into());
        let plan = build(
            "/bin/sh",
            &ctx,
            &Command::Shell("printf '%s|' \"$V\"; pwd".into()),
            "tok",
        )
        .unwrap();
        let out = run_locally(&plan.program);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut scanner = Scanner::new("tok");
        let (output, status) = scanner.feed(text.as_bytes());
        assert!(matches!(status, Some(Status::Started(_))), "{text}");
        assert_eq!(String::from_utf8_lossy(&output), "it's $x|/tmp\n");
    }

    #[test]
    fn a_missing_workdir_is_reported() {
        let mut ctx = StepContext::new(Target::local());
        ctx.workdir = Some("/nonexistent/opsc".into());
        let plan = build("/bin/sh", &ctx, &Command::Shell("true".into()), "tok").unwrap();
        let out = run_locally(&plan.program);
        let mut scanner = Scanner::new("tok");
        let (_, status) = scanner.feed(&out.stdout);
        assert_eq!(status, Some(Status::Failed("workdir".into())));
    }

    /// Runs `program` as sshd would: the exec request by `sh -c`, as a
    /// process group leader, the framed program on stdin, which is closed
    /// once the command has exited and been reaped.
    fn run_locally(program: &str) -> std::process::Output {
        use std::io::{Read, Write};
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(EXEC_REQUEST)
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(framed(program).as_bytes()).unwrap();
        let mut stdout = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        drop(stdin);
        std::process::Output {
            status,
            stdout,
            stderr: Vec::new(),
        }
    }

    /// Whether a live (non-zombie) process is in group `pgid`.
    fn group_alive(pgid: u32) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z"
        })
    }

    #[test]
    fn a_closed_stdin_kills_the_running_group_but_not_after_exit() {
        use std::io::{BufRead, Write};
        use std::os::unix::process::CommandExt;
        let ctx = StepContext::new(Target::local());
        // Running: the connection "drops" (stdin closes) mid-command.
        let plan = build(
            "/bin/sh",
            &ctx,
            &Command::Shell("sleep 30 & sleep 30".into()),
            "tok",
        )
        .unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(EXEC_REQUEST)
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = child.id();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(framed(&plan.program).as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("tok:ok:{pgid}\n"));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(group_alive(pgid), "the command did not keep running");
        drop(stdin);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while group_alive(pgid) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!group_alive(pgid), "the background sleep survived");

        // Finished: stdin closing afterwards leaves its daemon alone.
        let m = format!("4{}", std::process::id());
        let plan = build(
            "/bin/sh",
            &ctx,
            &Command::Shell(format!("sleep 3.{m} >/dev/null 2>&1 & echo $!")),
            "tok",
        )
        .unwrap();
        let out = run_locally(&plan.program);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let daemon: i32 = text.lines().last().unwrap().trim().parse().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            std::path::Path::new(&format!("/proc/{daemon}")).exists(),
            "a daemon left by a finished command was killed"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    #[test]
    fn scanner_passes_chatter_and_finds_split_lines() {
        let mut s = Scanner::new("tok");
        let (out, st) = s.feed(b"motd\nto");
        assert!(out.is_empty() && st.is_none());
        let (out, st) = s.feed(b"k:ok:12");
        assert!(out.is_empty() && st.is_none());
        let (out, st) = s.feed(b"3\nhello");
        assert_eq!(st, Some(Status::Started(123)));
        assert_eq!(out, b"motd\nhello");
        let (out, st) = s.feed(b"tok:ok:1\n");
        assert_eq!(out, b"tok:ok:1\n");
        assert!(st.is_none());
    }
}
