//! Throwaway PostgreSQL servers for tests: `initdb` into a new directory
//! under `/tmp`, a free loopback port, no durability (`fsync=off`), trust
//! authentication for the `postgres` superuser — and everything removed
//! when the server is dropped or the test process ends, however it ends.
//!
//! Most tests want a fresh, empty database on the one server their test
//! binary shares:
//!
//! ```ignore
//! // dev-dependencies: opsconductor-store = { …, features = ["testing", "postgres"] }, tokio
//! #[tokio::test]
//! async fn my_test() {
//!     let url = opsconductor_store::testing::pg::fresh_database().await;
//!     let store = opsconductor_store::open(&url).await.unwrap();
//!     // …
//! }
//! ```
//!
//! Tests that stop or restart the server start their own with
//! [`TestPg::start`], so they never disturb other tests.
//!
//! **Requirements.** The PostgreSQL server binaries (`initdb`, `pg_ctl`,
//! `postgres`): `OPSC_TEST_PG_BIN` if set, else `/usr/lib/postgresql/15/bin`,
//! else the newest `/usr/lib/postgresql/*/bin`, else `pg_ctl` on `PATH`
//! (Debian/Ubuntu: `apt-get install -y postgresql-15`). PostgreSQL refuses
//! to run as root, so as root the server runs as the `postgres` OS user
//! through `runuser` (util-linux), and both must exist. A missing piece is a
//! panic naming it: tests that need PostgreSQL fail, they never skip.
//!
//! **Clean-up.** Each server has a watchdog process reading a pipe from the
//! test process; when the pipe closes — [`TestPg`] dropped, or the process
//! exiting, panicking or killed — the watchdog stops the server
//! (`immediate`) and removes its directory. The shared server is never
//! dropped (it is a `static`); its watchdog cleans up when the process exits.

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, Executor};

/// The default location of the binaries (Debian/Ubuntu, PostgreSQL 15).
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The binaries a server needs.
const NEEDED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Ports tried when the one picked was taken meanwhile.
const START_ATTEMPTS: u32 = 5;

static SHARED: OnceLock<TestPg> = OnceLock::new();

/// A fresh, empty database on the server shared by this test binary
/// (started on first use); returns its URL. Panics, naming what is
/// missing, when no server can be started.
pub async fn fresh_database() -> String {
    TestPg::shared().create_database().await
}

/// A running throwaway PostgreSQL server; see the [module docs](self).
///
/// Stopped and removed on drop. The methods that run `pg_ctl` block the
/// calling thread for the moment it takes (well under a second).
#[derive(Debug)]
pub struct TestPg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// `runuser`, when the binaries must run as the `postgres` user.
    runuser: Option<PathBuf>,
    /// The watchdog and the pipe it waits on.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl TestPg {
    /// The server shared by every test of this test binary, started on
    /// first use. Never restart or stop it: start your own for that.
    pub fn shared() -> &'static TestPg {
        SHARED.get_or_init(TestPg::start)
    }

    /// Starts a new server. Panics with a message naming what is missing
    /// (binaries, `runuser`, the `postgres` user) or what failed.
    pub fn start() -> TestPg {
        match Self::try_start() {
            Ok(pg) => pg,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`start`](Self::start), returning the reason instead of panicking.
    pub fn try_start() -> Result<TestPg, String> {
        Self::try_start_with(&find_bin_dir()?)
    }

    /// Starts a new server with the binaries in `bin`.
    pub fn try_start_with(bin: &Path) -> Result<TestPg, String> {
        for name in NEEDED {
            if !bin.join(name).is_file() {
                return Err(format!(
                    "PostgreSQL test server: `{}` not found. Install the PostgreSQL server \
                     binaries (Debian/Ubuntu: `apt-get install -y postgresql-15`) or set \
                     OPSC_TEST_PG_BIN to the directory holding {}.",
                    bin.join(name).display(),
                    NEEDED.join(", ")
                ));
            }
        }
        let dir = PathBuf::from(format!(
            "/tmp/opsconductor-pg-{}",
            uuid::Uuid::now_v7().simple()
        ));
        fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Traversable by the `postgres` user (a 0700 temp dir would not be).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        let is_root = fs::metadata(&dir).map(|m| m.uid() == 0).unwrap_or(false);
        let runuser = if is_root {
            match prepare_for_postgres_user(&dir) {
                Ok(runuser) => Some(runuser),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut pg = TestPg {
            bin: bin.to_path_buf(),
            dir,
            port: 0,
            runuser,
            watchdog: Mutex::new(None),
        };
        // From here on, dropping `pg` (also on an error) cleans up.
        pg.spawn_watchdog()?;
        pg.initdb()?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            pg.port = free_port()?;
            pg.append_conf(&format!("port = {}\n", pg.port))?;
            match pg.pg_ctl(&["start", "-w", "-t", "60", "-l", &pg.log_path()]) {
                Ok(_) => return Ok(pg),
                Err(e) => {
                    last = e;
                    // Another process took the port between our check and the start.
                    if !pg.log().contains("could not bind") {
                        break;
                    }
                }
            }
        }
        Err(format!(
            "PostgreSQL test server: cannot start it: {last}\n--- server log ---\n{}",
            pg.log_tail()
        ))
    }

    /// The superuser URL of the `postgres` database (no password: trust auth).
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The superuser URL of the database `name`.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (data directory, log, Unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a new, empty database with a unique name; returns its URL.
    /// Panics if the server cannot do it.
    pub async fn create_database(&self) -> String {
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        let mut last = String::new();
        for _ in 0..3 {
            match self.try_create_database(&name).await {
                Ok(()) => return self.database_url(&name),
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        panic!(
            "PostgreSQL test server: cannot create database {name}: {last}\n--- server log ---\n{}",
            self.log_tail()
        );
    }

    async fn try_create_database(&self, name: &str) -> Result<(), String> {
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.url()))?;
        let created = conn
            .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await;
        let _ = conn.close().await;
        created.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every session is
    /// ended, the server is back when this returns.
    pub fn restart(&self) {
        self.must(&[
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-l",
            &self.log_path(),
        ]);
    }

    /// Stops the server the way a crash would (`pg_ctl stop -m immediate`):
    /// no clean shutdown, crash recovery on the next start.
    pub fn stop_immediate(&self) {
        self.must(&["stop", "-m", "immediate", "-w"]);
    }

    /// Starts the server again after [`stop_immediate`](Self::stop_immediate),
    /// on the same port.
    pub fn start_again(&self) {
        self.must(&["start", "-w", "-t", "60", "-l", &self.log_path()]);
    }

    /// Turns TLS on (`ssl = on`) with the PEM certificate (chain) and key
    /// given, and restarts the server; clients may then use `sslmode`.
    /// Panics if the files cannot be written or the server refuses them.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.dir.join("data");
        let write = |name: &str, text: &str| {
            let path = data.join(name);
            fs::write(&path, text)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o600)))
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            // The server runs as the owner of the data directory.
            if let Ok(meta) = fs::metadata(&data) {
                std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        };
        write("server.crt", cert_pem);
        write("server.key", key_pem);
        if let Err(e) = self
            .append_conf("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        {
            panic!("{e}");
        }
        self.restart();
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn log_path(&self) -> String {
        self.dir.join("log").display().to_string()
    }

    fn data_path(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A command running `program` from the binaries, as the right user.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.runuser {
            Some(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The postgres user may not be able to enter the test's directory.
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) -> Result<(), String> {
        let data = self.data_path();
        run(self.command("initdb").args([
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]))
        .map_err(|e| format!("PostgreSQL test server: initdb failed: {e}"))?;
        let socket_dir = self.dir.display();
        self.append_conf(&format!(
            "\n# opsconductor test server\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 300\n\
             shared_buffers = 32MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n"
        ))
    }

    fn append_conf(&self, text: &str) -> Result<(), String> {
        let path = self.dir.join("data").join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, String> {
        let data = self.data_path();
        run(self.command("pg_ctl").args(["-D", &data]).args(args))
    }

    /// Runs `pg_ctl`, panicking (with the server log) if it fails.
    fn must(&self, args: &[&str]) {
        if let Err(e) = self.pg_ctl(args) {
            panic!(
                "PostgreSQL test server: pg_ctl {}: {e}\n--- server log ---\n{}",
                args.join(" "),
                self.log_tail()
            );
        }
    }

    /// Starts the process that stops the server and removes its directory
    /// once our end of its stdin closes.
    fn spawn_watchdog(&mut self) -> Result<(), String> {
        let as_postgres = match &self.runuser {
            Some(runuser) => format!("{} -u postgres -- ", quote(&runuser.display().to_string())),
            None => String::new(),
        };
        let script = format!(
            "trap '' INT HUP TERM QUIT\n\
             cat >/dev/null\n\
             {as_postgres}{pg_ctl} -D {data} -m immediate -w stop >/dev/null 2>&1\n\
             rm -rf {dir}\n",
            pg_ctl = quote(&self.bin.join("pg_ctl").display().to_string()),
            data = quote(&self.data_path()),
            dir = quote(&self.dir.display().to_string()),
        );
        let mut child = Command::new("/bin/sh")
            .args(["-c", &script])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("PostgreSQL test server: starting its watchdog: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or("PostgreSQL test server: the watchdog has no stdin")?;
        *self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner()) = Some((child, stdin));
        Ok(())
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((mut child, stdin)) = watchdog {
            // Closing the pipe tells the watchdog to stop the server and
            // remove the directory; wait until it has.
            drop(stdin);
            let _ = child.wait();
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory holding the server binaries.
fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("OPSC_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let default = PathBuf::from(DEFAULT_BIN);
    if default.join("pg_ctl").is_file() {
        return Ok(default);
    }
    // Any other installed major version, newest first.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(bin) = on_path("pg_ctl").and_then(|p| p.parent().map(Path::to_path_buf)) {
        return Ok(bin);
    }
    Err(format!(
        "PostgreSQL test server: no PostgreSQL server binaries found (looked in \
         OPSC_TEST_PG_BIN, {DEFAULT_BIN}, /usr/lib/postgresql/*/bin and PATH). Install them \
         (Debian/Ubuntu: `apt-get install -y postgresql-15`) or set OPSC_TEST_PG_BIN to the \
         directory holding {}.",
        NEEDED.join(", ")
    ))
}

/// As root: checks `runuser` and the `postgres` user, and gives `dir` to it.
fn prepare_for_postgres_user(dir: &Path) -> Result<PathBuf, String> {
    let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| on_path("runuser"))
        .ok_or(
            "PostgreSQL test server: running as root, and PostgreSQL refuses to run as root, \
             but `runuser` (util-linux) is missing, so the server cannot run as the `postgres` \
             user. Install util-linux, or run the tests as a normal user.",
        )?;
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| format!("PostgreSQL test server: running `id`: {e}"))?;
        if !out.status.success() {
            return Err(
                "PostgreSQL test server: running as root, and PostgreSQL refuses to run as \
                 root, but there is no `postgres` OS user to run it as. Create one \
                 (`useradd --system postgres`; installing the postgresql package does) or run \
                 the tests as a normal user."
                    .to_string(),
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("PostgreSQL test server: `id {flag} postgres`: {e}"))
    };
    let (uid, gid) = (id("-u")?, id("-g")?);
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(|e| format!("PostgreSQL test server: chown {}: {e}", dir.display()))?;
    Ok(runuser)
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("PostgreSQL test server: finding a free port: {e}"))
}

/// Runs a command to completion; `Err` with its output if it failed.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{:?} {:?} exited with {}: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `s` single-quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named() {
        let err = TestPg::try_start_with(Path::new("/nonexistent/pg/bin"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/pg/bin/initdb"), "{err}");
        assert!(err.contains("postgresql-15"), "{err}");
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
