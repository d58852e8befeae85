//! What runs on the target, as WinRM command lines: pure functions from a
//! step to the commands that carry it out, for Windows (cmd.exe and
//! PowerShell) and for POSIX `sh` endpoints (the protocol test server).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use opsconductor_core::executor::{Command, ExecError, FileSpec};
use opsconductor_core::template::{powershell_quote, shell_quote};

/// The longest command line sent to a Windows host. cmd.exe, which runs every
/// WinRM command, accepts 8191 characters; the rest is margin.
pub(crate) const WINDOWS_MAX_COMMAND_LINE: usize = 8000;

/// Raw bytes per upload command on POSIX endpoints (base64: 4/3 of it).
pub(crate) const POSIX_UPLOAD_CHUNK: usize = 48 * 1024;

/// The exit code upload and copy commands use for "the directory does not
/// exist", so the executor can say so.
pub(crate) const EXIT_NO_DIRECTORY: i32 = 3;

/// How [`Command::Shell`] lines run on a WinRM target. Set per executor
/// ([`super::WinRmExecutor::with_shell`]) or per target (variable `shell`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WinShell {
    /// The line goes to the WinRM shell unchanged: cmd.exe on Windows. The
    /// default. Scripts, copies and checks use Windows PowerShell.
    #[default]
    Cmd,
    /// The line is a Windows PowerShell script, run as
    /// `powershell -EncodedCommand` (or uploaded to a `.ps1` file when it is
    /// too long for a command line).
    PowerShell,
    /// Like [`WinShell::PowerShell`] with PowerShell 7 (`pwsh`).
    Pwsh,
    /// The endpoint is not Windows: its WinRM shell runs command lines with a
    /// POSIX `sh`, as the WS-Management protocol test server does. Lines go
    /// unchanged; scripts, copies and checks use POSIX tools (`base64`,
    /// `chmod`, `mv`, `uname`). Also accepted as `raw` or `posix`.
    Sh,
}

impl WinShell {
    /// The name used in the `shell` target variable.
    pub fn name(self) -> &'static str {
        match self {
            WinShell::Cmd => "cmd",
            WinShell::PowerShell => "powershell",
            WinShell::Pwsh => "pwsh",
            WinShell::Sh => "sh",
        }
    }

    /// True for Windows hosts (every shell but [`WinShell::Sh`]).
    pub fn is_windows(self) -> bool {
        self != WinShell::Sh
    }

    /// The PowerShell executable used for scripts, copies and checks.
    fn powershell_exe(self) -> &'static str {
        match self {
            WinShell::Pwsh => "pwsh",
            _ => "powershell",
        }
    }
}

impl fmt::Display for WinShell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WinShell {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cmd" | "cmd.exe" | "" => Ok(WinShell::Cmd),
            "powershell" | "powershell.exe" => Ok(WinShell::PowerShell),
            "pwsh" | "pwsh.exe" => Ok(WinShell::Pwsh),
            "sh" | "posix" | "raw" => Ok(WinShell::Sh),
            other => Err(format!(
                "unknown WinRM shell '{other}' (cmd, powershell, pwsh or sh)"
            )),
        }
    }
}

/// One WinRM command: `rsp:Command` and its `rsp:Arguments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteCommand {
    pub command: String,
    pub args: Vec<String>,
}

impl RemoteCommand {
    fn line(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            args: Vec::new(),
        }
    }

    /// The command line as the remote shell sees it.
    pub fn command_line(&self) -> String {
        let mut line = self.command.clone();
        for a in &self.args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }
}

/// Steps that write bytes to a file on the target: every command must exit
/// 0; [`EXIT_NO_DIRECTORY`] means the directory is missing.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub steps: Vec<RemoteCommand>,
    /// Removes what the steps wrote (run after a failure).
    pub cleanup: RemoteCommand,
}

/// How a step runs.
#[derive(Debug, Clone)]
pub(crate) enum ExecPlan {
    /// One command.
    Direct(RemoteCommand),
    /// Upload a file, run it, remove it whatever happened.
    Script {
        upload: Upload,
        run: RemoteCommand,
        cleanup: RemoteCommand,
    },
}

/// A copy: upload to a temporary name next to the destination, then move it
/// into place.
#[derive(Debug, Clone)]
pub(crate) struct CopyPlan {
    pub upload: Upload,
    pub finish: RemoteCommand,
    /// The destination's directory, for messages.
    pub dir: String,
}

/// UTF-16LE base64, what `-EncodedCommand` takes.
pub(crate) fn encode_powershell(script: &str) -> String {
    winrm_rs::encode_powershell_command(script)
}

/// A PowerShell script as a command: `powershell -EncodedCommand …`.
fn powershell_command(exe: &str, script: &str) -> RemoteCommand {
    RemoteCommand {
        command: exe.to_owned(),
        args: vec![
            "-NoLogo".into(),
            "-NoProfile".into(),
            "-NonInteractive".into(),
            "-ExecutionPolicy".into(),
            "Bypass".into(),
            "-EncodedCommand".into(),
            encode_powershell(script),
        ],
    }
}

/// Length of the command line of `powershell_command(exe, script)`.
fn powershell_command_len(exe: &str, utf16_units: usize) -> usize {
    let fixed = powershell_command(exe, "").command_line().len();
    fixed + (utf16_units * 2).div_ceil(3) * 4
}

/// Run before every PowerShell script we generate: no progress records
/// (they arrive as CLIXML on stderr over WinRM).
const PS_PRELUDE: &str = "$ProgressPreference = 'SilentlyContinue'\n";

/// Appended to a PowerShell [`Command::Shell`] line: the exit code of the
/// last native command if the last statement failed, 1 for a failed cmdlet.
const PS_EPILOGUE: &str = "\n$opscOk = $?\n\
    if (-not $opscOk) { if ($LASTEXITCODE) { exit $LASTEXITCODE }; exit 1 }\n\
    exit 0\n";

/// The plan for a command on a target whose shell is `shell`; `id` names
/// temporary files.
pub(crate) fn exec_plan(shell: WinShell, cmd: &Command, id: &str) -> Result<ExecPlan, ExecError> {
    match (shell, cmd) {
        (WinShell::Sh, Command::Shell(line)) => Ok(ExecPlan::Direct(RemoteCommand::line(line))),
        (WinShell::Cmd, Command::Shell(line)) => {
            // cmd.exe with an empty line is an error; `rem` is its no-op.
            let line = if line.trim().is_empty() { "rem" } else { line };
            Ok(ExecPlan::Direct(RemoteCommand::line(line)))
        }
        (WinShell::PowerShell | WinShell::Pwsh, Command::Shell(line)) => {
            let exe = shell.powershell_exe();
            let script = format!("{PS_PRELUDE}{line}{PS_EPILOGUE}");
            let units = script.encode_utf16().count();
            if powershell_command_len(exe, units) <= WINDOWS_MAX_COMMAND_LINE {
                Ok(ExecPlan::Direct(powershell_command(exe, &script)))
            } else {
                // Too long for a command line: run it from a file.
                windows_script(exe, &script, id)
            }
        }
        (WinShell::Sh, Command::Script { interpreter, body }) => {
            let interpreter = interpreter_of(interpreter)?;
            let path = format!("/tmp/opsc-script-{id}");
            let q = shell_quote(&path);
            Ok(ExecPlan::Script {
                upload: posix_upload(&path, None, body.as_bytes()),
                run: RemoteCommand::line(format!("{interpreter} {q}")),
                cleanup: RemoteCommand::line(format!("rm -f {q}")),
            })
        }
        (_, Command::Script { interpreter, body }) => {
            let interpreter = interpreter_of(interpreter)?;
            windows_script(interpreter, body, id)
        }
    }
}

fn interpreter_of(interpreter: &str) -> Result<&str, ExecError> {
    let interpreter = interpreter.trim();
    if interpreter.is_empty() {
        return Err(ExecError::Spawn("the script has no interpreter".into()));
    }
    if interpreter.contains(['\n', '\r', '\0']) {
        return Err(ExecError::Spawn(format!(
            "the interpreter {interpreter:?} contains a line break"
        )));
    }
    Ok(interpreter)
}

/// What kind of program an interpreter is on Windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WinInterpreter {
    PowerShell,
    Cmd,
    Other(&'static str),
}

fn windows_interpreter(interpreter: &str) -> WinInterpreter {
    let prog = interpreter.split_whitespace().next().unwrap_or("");
    let base = prog.rsplit(['\\', '/']).next().unwrap_or(prog);
    let base = base.to_ascii_lowercase();
    let base = base.strip_suffix(".exe").unwrap_or(&base);
    if base.starts_with("powershell") || base.starts_with("pwsh") {
        WinInterpreter::PowerShell
    } else if base == "cmd" {
        WinInterpreter::Cmd
    } else if base.starts_with("python") || base == "py" {
        WinInterpreter::Other(".py")
    } else if base.ends_with("sh") {
        WinInterpreter::Other(".sh")
    } else {
        WinInterpreter::Other("")
    }
}

/// A script on Windows: uploaded to `%TEMP%\opsc-script-ID.EXT`, run,
/// deleted. PowerShell files get a UTF-8 BOM (Windows PowerShell reads
/// BOM-less files in the ANSI code page); batch files get CRLF line ends.
fn windows_script(interpreter: &str, body: &str, id: &str) -> Result<ExecPlan, ExecError> {
    let kind = windows_interpreter(interpreter);
    let ext = match kind {
        WinInterpreter::PowerShell => ".ps1",
        WinInterpreter::Cmd => ".cmd",
        WinInterpreter::Other(ext) => ext,
    };
    let name = format!("opsc-script-{id}{ext}");
    let content: Vec<u8> = match kind {
        WinInterpreter::PowerShell => {
            let mut c = b"\xEF\xBB\xBF".to_vec();
            c.extend_from_slice(body.as_bytes());
            c
        }
        WinInterpreter::Cmd => body
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes(),
        WinInterpreter::Other(_) => body.as_bytes().to_vec(),
    };
    let dest = format!("[IO.Path]::Combine($env:TEMP, {})", powershell_quote(&name));
    // cmd.exe expands %TEMP% in the run and clean-up lines.
    let path = format!("\"%TEMP%\\{name}\"");
    let run = match kind {
        WinInterpreter::PowerShell => format!(
            "{interpreter} -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File {path}"
        ),
        WinInterpreter::Cmd => format!("{interpreter} /d /c {path}"),
        WinInterpreter::Other(_) => format!("{interpreter} {path}"),
    };
    Ok(ExecPlan::Script {
        upload: windows_upload("powershell", &dest, None, &content)?,
        run: RemoteCommand::line(run),
        cleanup: RemoteCommand::line(format!("del /f /q {path}")),
    })
}

/// Upload steps for Windows: each is a PowerShell `-EncodedCommand` that
/// decodes one base64 chunk and appends it to `dest_expr` (a PowerShell
/// expression; the file is created by the first step and must not exist).
/// With `dir`, the first step checks that the directory exists.
fn windows_upload(
    exe: &str,
    dest_expr: &str,
    dir: Option<&str>,
    content: &[u8],
) -> Result<Upload, ExecError> {
    let step = |first: bool, b64: &str| -> String {
        let mut s = String::from("$ErrorActionPreference = 'Stop'\n");
        s.push_str(PS_PRELUDE);
        if first && let Some(dir) = dir {
            s.push_str(&format!(
                "$d = {}\nif (-not [IO.Directory]::Exists($d)) {{ \
                 [Console]::Error.WriteLine(\"directory does not exist: $d\"); exit {EXIT_NO_DIRECTORY} }}\n",
                powershell_quote(dir)
            ));
        }
        let mode = if first { "CreateNew" } else { "Append" };
        s.push_str(&format!(
            "$b = [Convert]::FromBase64String('{b64}')\n\
             $f = [IO.File]::Open({dest_expr}, [IO.FileMode]::{mode}, [IO.FileAccess]::Write)\n\
             try {{ $f.Write($b, 0, $b.Length) }} finally {{ $f.Dispose() }}\n"
        ));
        s
    };
    // The largest chunk whose command line fits, from the longer (first) step.
    let overhead = step(true, "").encode_utf16().count();
    let fixed = powershell_command_len(exe, overhead);
    if fixed + 1024 > WINDOWS_MAX_COMMAND_LINE {
        return Err(ExecError::Io(
            "the destination path is too long for a WinRM upload command".into(),
        ));
    }
    // base64 chars c cost c UTF-16 units, i.e. 8c/3 command-line chars.
    let room_units = (WINDOWS_MAX_COMMAND_LINE - fixed) * 3 / 8;
    let chunk = (room_units / 4) * 3;
    let mut steps = Vec::new();
    if content.is_empty() {
        steps.push(powershell_command(exe, &step(true, "")));
    }
    for (i, part) in content.chunks(chunk.max(3)).enumerate() {
        steps.push(powershell_command(exe, &step(i == 0, &B64.encode(part))));
    }
    let cleanup = powershell_command(
        exe,
        &format!(
            "{PS_PRELUDE}Remove-Item -LiteralPath ({dest_expr}) -Force -ErrorAction SilentlyContinue\n"
        ),
    );
    Ok(Upload { steps, cleanup })
}

/// Upload steps for POSIX: `printf` (a shell builtin) piped into
/// `base64 -d`, into a new file created under `umask 077` (mode 0600) with
/// noclobber.
fn posix_upload(path: &str, dir: Option<&str>, content: &[u8]) -> Upload {
    let q = shell_quote(path);
    let mut steps = Vec::new();
    let mut first = String::new();
    if let Some(dir) = dir {
        let d = shell_quote(dir);
        first.push_str(&format!(
            "test -d {d} || {{ printf 'directory does not exist: %s\\n' {d} >&2; exit {EXIT_NO_DIRECTORY}; }}; "
        ));
    }
    first.push_str("umask 077; set -C; ");
    let mut chunks = content.chunks(POSIX_UPLOAD_CHUNK);
    match chunks.next() {
        Some(part) => first.push_str(&format!(
            "printf '%s' '{}' | base64 -d > {q}",
            B64.encode(part)
        )),
        None => first.push_str(&format!(": > {q}")),
    }
    steps.push(RemoteCommand::line(first));
    for part in chunks {
        steps.push(RemoteCommand::line(format!(
            "printf '%s' '{}' | base64 -d >> {q}",
            B64.encode(part)
        )));
    }
    Upload {
        steps,
        cleanup: RemoteCommand::line(format!("rm -f {q}")),
    }
}

/// Splits an absolute destination into (directory, file name).
fn split_dest(dest: &str, windows: bool) -> Result<(&str, &str), ExecError> {
    let absolute = if windows {
        let b = dest.as_bytes();
        (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/'))
            || dest.starts_with("\\\\")
    } else {
        dest.starts_with('/')
    };
    if !absolute {
        return Err(ExecError::Io(format!(
            "copy destination {dest} is not an absolute path"
        )));
    }
    if dest.contains(['\0', '\n', '\r']) {
        return Err(ExecError::Io(format!(
            "copy destination {dest:?} contains a control character"
        )));
    }
    let seps: &[char] = if windows { &['\\', '/'] } else { &['/'] };
    let cut = dest.rfind(seps).unwrap_or(0);
    let (dir, name) = (&dest[..cut], &dest[cut + 1..]);
    if name.is_empty() || name == "." || name == ".." {
        return Err(ExecError::Io(format!(
            "copy destination {dest} does not name a file"
        )));
    }
    let dir = if dir.is_empty() {
        "/"
    } else if windows && dir.len() == 2 && dir.ends_with(':') {
        // `C:\file`: the directory is the drive root.
        &dest[..3]
    } else {
        dir
    };
    Ok((dir, name))
}

/// The plan for a copy. On Windows the mode is ignored (files get the
/// directory's inherited ACLs); elsewhere it is applied before the rename.
pub(crate) fn copy_plan(shell: WinShell, file: &FileSpec, id: &str) -> Result<CopyPlan, ExecError> {
    let windows = shell.is_windows();
    let (dir, name) = split_dest(&file.dest, windows)?;
    let sep = if windows { "\\" } else { "/" };
    let tmp = if dir.ends_with(['/', '\\']) {
        format!("{dir}.{name}.opsc-{id}.tmp")
    } else {
        format!("{dir}{sep}.{name}.opsc-{id}.tmp")
    };
    if windows {
        let exe = shell.powershell_exe();
        let upload = windows_upload(exe, &powershell_quote(&tmp), Some(dir), &file.content)?;
        let finish = powershell_command(
            exe,
            &format!(
                "$ErrorActionPreference = 'Stop'\n{PS_PRELUDE}$t = {}\n$p = {}\n\
                 if ([IO.File]::Exists($p)) {{ [IO.File]::Replace($t, $p, [NullString]::Value) }} \
                 else {{ [IO.File]::Move($t, $p) }}\n",
                powershell_quote(&tmp),
                powershell_quote(&file.dest)
            ),
        );
        Ok(CopyPlan {
            upload,
            finish,
            dir: dir.to_owned(),
        })
    } else {
        let upload = posix_upload(&tmp, Some(dir), &file.content);
        let t = shell_quote(&tmp);
        let finish = RemoteCommand::line(format!(
            "chmod {:04o} {t} && mv -f {t} {}",
            file.mode & 0o7777,
            shell_quote(&file.dest)
        ));
        Ok(CopyPlan {
            upload,
            finish,
            dir: dir.to_owned(),
        })
    }
}

/// The probe for `check`: prints `key=value` lines, `os` among them.
pub(crate) fn probe_command(shell: WinShell) -> RemoteCommand {
    if shell.is_windows() {
        powershell_command(
            shell.powershell_exe(),
            &format!(
                "{PS_PRELUDE}'os=' + [Environment]::OSVersion.VersionString\n\
                 'hostname=' + [Environment]::MachineName\n\
                 'powershell=' + $PSVersionTable.PSVersion.ToString()\n"
            ),
        )
    } else {
        RemoteCommand::line(
            "printf 'os=%s\\nhostname=%s\\n' \"$(uname -s -r)\" \"$(uname -n)\"".to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes the script of a `powershell -EncodedCommand` command.
    fn decode(cmd: &RemoteCommand) -> String {
        let b64 = cmd.args.last().unwrap();
        let bytes = B64.decode(b64).unwrap();
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).unwrap()
    }

    /// The bytes the base64 literals of upload steps carry, in order.
    fn reassemble(steps: &[RemoteCommand]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in steps {
            let script = decode(s);
            let start = script.find("FromBase64String('").unwrap() + 18;
            let end = start + script[start..].find('\'').unwrap();
            out.extend(B64.decode(&script[start..end]).unwrap());
        }
        out
    }

    #[test]
    fn shells_parse() {
        for (s, w) in [
            ("cmd", WinShell::Cmd),
            ("PowerShell", WinShell::PowerShell),
            ("pwsh.exe", WinShell::Pwsh),
            ("raw", WinShell::Sh),
            ("sh", WinShell::Sh),
        ] {
            assert_eq!(s.parse::<WinShell>().unwrap(), w);
        }
        assert!("bash".parse::<WinShell>().is_err());
    }

    #[test]
    fn powershell_lines_are_encoded_with_exit_codes() {
        let plan = exec_plan(
            WinShell::PowerShell,
            &Command::Shell("Get-Date; exit 3".into()),
            "x",
        )
        .unwrap();
        let ExecPlan::Direct(cmd) = plan else {
            panic!("expected a direct command")
        };
        assert_eq!(cmd.command, "powershell");
        assert!(cmd.args.contains(&"-EncodedCommand".to_owned()));
        let script = decode(&cmd);
        assert!(script.starts_with(PS_PRELUDE), "{script}");
        assert!(
            script.contains("\nGet-Date; exit 3\n$opscOk = $?"),
            "{script}"
        );
        assert!(cmd.command_line().len() <= WINDOWS_MAX_COMMAND_LINE);
    }

    #[test]
    fn long_powershell_lines_run_from_a_file() {
        let line = format!("Write-Output '{}'", "x".repeat(10_000));
        let plan = exec_plan(WinShell::Pwsh, &Command::Shell(line.clone()), "id1").unwrap();
        let ExecPlan::Script {
            upload,
            run,
            cleanup,
        } = plan
        else {
            panic!("expected a script plan")
        };
        assert!(run.command.starts_with("pwsh -NoLogo"), "{}", run.command);
        assert!(
            run.command
                .ends_with("-File \"%TEMP%\\opsc-script-id1.ps1\"")
        );
        assert_eq!(cleanup.command, "del /f /q \"%TEMP%\\opsc-script-id1.ps1\"");
        let content = reassemble(&upload.steps);
        assert!(content.starts_with(b"\xEF\xBB\xBF"));
        let text = String::from_utf8(content[3..].to_vec()).unwrap();
        assert!(text.contains(&line));
        for s in &upload.steps {
            assert!(s.command_line().len() <= WINDOWS_MAX_COMMAND_LINE);
        }
    }

    #[test]
    fn cmd_lines_go_unchanged() {
        let plan = exec_plan(WinShell::Cmd, &Command::Shell("dir C:\\ & ver".into()), "x").unwrap();
        let ExecPlan::Direct(cmd) = plan else {
            panic!()
        };
        assert_eq!(cmd.command_line(), "dir C:\\ & ver");
        let ExecPlan::Direct(cmd) =
            exec_plan(WinShell::Cmd, &Command::Shell(" ".into()), "x").unwrap()
        else {
            panic!()
        };
        assert_eq!(cmd.command, "rem");
    }

    #[test]
    fn windows_scripts_by_interpreter() {
        let cmd = Command::Script {
            interpreter: "cmd".into(),
            body: "@echo off\necho hi\n".into(),
        };
        let ExecPlan::Script { upload, run, .. } = exec_plan(WinShell::Cmd, &cmd, "i").unwrap()
        else {
            panic!()
        };
        assert_eq!(run.command, "cmd /d /c \"%TEMP%\\opsc-script-i.cmd\"");
        assert_eq!(reassemble(&upload.steps), b"@echo off\r\necho hi\r\n");
        let cmd = Command::Script {
            interpreter: "python -u".into(),
            body: "print('hi')\n".into(),
        };
        let ExecPlan::Script { run, .. } = exec_plan(WinShell::PowerShell, &cmd, "i").unwrap()
        else {
            panic!()
        };
        assert_eq!(run.command, "python -u \"%TEMP%\\opsc-script-i.py\"");
        let bad = Command::Script {
            interpreter: " ".into(),
            body: String::new(),
        };
        assert!(matches!(
            exec_plan(WinShell::Cmd, &bad, "i"),
            Err(ExecError::Spawn(_))
        ));
    }

    #[test]
    fn windows_copy_chunks_fit_and_reassemble() {
        let content: Vec<u8> = (0..=255u8).cycle().take(20_000).collect();
        let file = FileSpec {
            dest: "C:\\Program Files\\it's ‘odd’\\app.conf".into(),
            content: content.clone(),
            mode: 0o640,
        };
        let plan = copy_plan(WinShell::Cmd, &file, "id2").unwrap();
        assert_eq!(plan.dir, "C:\\Program Files\\it's ‘odd’");
        assert!(plan.upload.steps.len() > 5, "{}", plan.upload.steps.len());
        for s in &plan.upload.steps {
            assert!(s.command_line().len() <= WINDOWS_MAX_COMMAND_LINE);
        }
        assert_eq!(reassemble(&plan.upload.steps), content);
        let first = decode(&plan.upload.steps[0]);
        assert!(
            first.contains("$d = 'C:\\Program Files\\it''s ‘‘odd’’'"),
            "{first}"
        );
        assert!(first.contains("exit 3"));
        assert!(first.contains("CreateNew"));
        assert!(decode(&plan.upload.steps[1]).contains("Append"));
        let finish = decode(&plan.finish);
        assert!(finish.contains("[IO.File]::Replace($t, $p, [NullString]::Value)"));
        assert!(finish.contains(".app.conf.opsc-id2.tmp'"), "{finish}");
        let empty = FileSpec {
            dest: "D:/x".into(),
            content: vec![],
            mode: 0o600,
        };
        let plan = copy_plan(WinShell::Pwsh, &empty, "e").unwrap();
        assert_eq!(plan.dir, "D:/");
        assert_eq!(plan.upload.steps.len(), 1);
        assert_eq!(plan.upload.steps[0].command, "pwsh");
        assert!(reassemble(&plan.upload.steps).is_empty());
    }

    #[test]
    fn destinations_must_be_absolute_files() {
        for (shell, dest) in [
            (WinShell::Cmd, "relative\\x"),
            (WinShell::Cmd, "/unix/style"),
            (WinShell::Sh, "relative/x"),
            (WinShell::Sh, "/tmp/dir/"),
            (WinShell::Sh, "/tmp/a\nb"),
        ] {
            let file = FileSpec {
                dest: dest.into(),
                content: vec![],
                mode: 0o644,
            };
            assert!(
                matches!(copy_plan(shell, &file, "i"), Err(ExecError::Io(_))),
                "{dest}"
            );
        }
    }

    #[test]
    fn posix_copy_quotes_paths_and_sets_the_mode() {
        let file = FileSpec {
            dest: "/tmp/it's here/f".into(),
            content: vec![1; POSIX_UPLOAD_CHUNK + 1],
            mode: 0o640,
        };
        let plan = copy_plan(WinShell::Sh, &file, "i").unwrap();
        assert_eq!(plan.upload.steps.len(), 2);
        let first = plan.upload.steps[0].command_line();
        assert!(
            first.starts_with("test -d '/tmp/it'\\''s here' ||"),
            "{first}"
        );
        assert!(
            first.contains("> '/tmp/it'\\''s here/.f.opsc-i.tmp'"),
            "{first}"
        );
        assert_eq!(
            plan.finish.command_line(),
            "chmod 0640 '/tmp/it'\\''s here/.f.opsc-i.tmp' && \
             mv -f '/tmp/it'\\''s here/.f.opsc-i.tmp' '/tmp/it'\\''s here/f'"
        );
    }
}
