//! Shared helpers for the CLI end-to-end tests: a private database per test,
//! the real `opsconductor` binary, and a `/proc` scan for leftover processes.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// Upper bound for any single command, so a hang fails instead of blocking
/// the suite. Never an assertion on speed.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// How long to wait for something that should happen "soon".
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_opsconductor")
}

/// `examples/jobs` of the workspace.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/jobs")
}

/// One test's world: a temp directory holding its database and files.
pub struct Env {
    pub dir: TempDir,
    pub url: String,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        // The master key file the embedded default would generate on first
        // start, made in advance so that its one-time notice is not part of
        // every test's output (the notice has its own test).
        let key = dir.path().join("t.key");
        std::fs::write(&key, "1 KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { dir, url }
    }

    /// An environment without a pre-made master key file.
    pub fn without_key() -> Self {
        let env = Self::new();
        std::fs::remove_file(env.path().join("t.key")).unwrap();
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `opsconductor --database-url … --color never ARGS`, run in the temp dir.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::cargo_bin("opsconductor").unwrap();
        c.current_dir(self.path())
            .env_remove("OPSC_DATABASE_URL")
            .env_remove("OPSC_LOG")
            .env_remove("NO_COLOR")
            .env_remove("OPSC_MASTER_KEY")
            .env_remove("OPSC_MASTER_KEY_FILE")
            .env_remove("OPSC_MASTER_PASSPHRASE")
            .args(["--database-url", &self.url, "--color", "never"])
            .args(args)
            .timeout(HANG_GUARD);
        c
    }

    /// The same command line as a plain `std::process::Command`, for
    /// processes the test drives itself (background runs, signals).
    pub fn std_cmd<I, S>(&self, args: I) -> std::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = std::process::Command::new(bin());
        c.current_dir(self.path())
            .env_remove("OPSC_DATABASE_URL")
            .env_remove("OPSC_LOG")
            .env_remove("NO_COLOR")
            .env_remove("OPSC_MASTER_KEY")
            .env_remove("OPSC_MASTER_KEY_FILE")
            .env_remove("OPSC_MASTER_PASSPHRASE")
            .args(["--database-url", &self.url, "--color", "never"])
            .args(args);
        c
    }

    /// Starts a background `opsconductor` with piped output.
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.std_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Writes `text` to `name` in the temp dir (creating parent dirs).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs a command that must succeed and parses its stdout as JSON.
    pub fn json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let out = self.cmd(args).arg("--json").assert().success();
        let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    /// `runs list --json` (newest first).
    pub fn runs(&self) -> Vec<Value> {
        self.json(["runs", "list", "--limit", "1000"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// The names of the stored jobs.
    pub fn job_names(&self) -> Vec<String> {
        names(&self.json(["jobs", "list"]), "/spec/name")
    }

    /// The names of the targets (the implicit `local` included).
    pub fn target_names(&self) -> Vec<String> {
        names(&self.json(["targets", "list"]), "/name")
    }

    /// Applies the example jobs and targets.
    pub fn apply_examples(&self) {
        self.cmd(["apply", "-f"]).arg(examples()).assert().success();
    }

    /// Applies a YAML text as a file named `name`.
    pub fn apply_yaml(&self, name: &str, yaml: &str) {
        let p = self.write(name, yaml);
        self.cmd(["apply", "-f"]).arg(p).assert().success();
    }

    /// Asserts that nothing has been stored: no job, no target but `local`, no run.
    pub fn assert_pristine(&self) {
        assert_eq!(self.job_names(), Vec::<String>::new(), "jobs were stored");
        assert_eq!(self.target_names(), vec!["local"], "targets were stored");
        assert_eq!(self.runs(), Vec::<Value>::new(), "runs were queued");
    }

    /// Waits until a run of this database is `running`; returns its id.
    pub fn wait_for_running_run(&self) -> String {
        let mut id = None;
        let found = wait_until(PATIENCE, || {
            // Read-only commands refuse a database that does not exist yet
            // (the run being waited for creates it).
            if !self.dir.path().join("t.db").exists() {
                return false;
            }
            let v = self.json(["runs", "list", "--status", "running"]);
            id = v
                .as_array()
                .and_then(|a| a.first())
                .and_then(|r| r["id"].as_str())
                .map(str::to_string);
            id.is_some()
        });
        assert!(found, "no run became running");
        id.unwrap()
    }
}

fn names(v: &Value, pointer: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            x.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Polls `f` every 50 ms until it is true or `limit` has passed.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A number no other test (in this run or a concurrent one) uses: digits
/// only, so `sleep 30.<marker>` is a valid sleep and a unique needle.
pub fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}{n:03}{nanos:09}", std::process::id())
}

/// Live processes whose command line contains `needle` (pid, command line).
/// Zombies have an empty command line and are not listed.
pub fn procs_with(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// Like [`procs_with`], leaving out `opsconductor` itself (whose own
/// arguments carry the marker while it runs).
pub fn children_with(needle: &str) -> Vec<(u32, String)> {
    procs_with(needle)
        .into_iter()
        .filter(|(_, c)| !c.starts_with(bin()))
        .collect()
}

/// Waits until no process carries `needle`; panics naming the survivors.
pub fn assert_no_process_with(needle: &str) {
    let gone = wait_until(PATIENCE, || procs_with(needle).is_empty());
    assert!(gone, "processes left running: {:?}", procs_with(needle));
}

/// Waits for a child to exit (bounded by [`HANG_GUARD`], killing it then).
/// Returns its exit code and its whole stdout and stderr.
pub fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let end = Instant::now() + HANG_GUARD;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the process did not exit; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The non-empty lines of a text.
pub fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// stdout of an assert as text.
pub fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

/// stderr of an assert as text.
pub fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}
