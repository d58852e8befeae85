//! A real OpenSSH server on loopback for the SSH executor's tests and the
//! fan-out benchmark: a test user, client keys of every type, and `sshd`
//! processes with their own host keys on 127.0.0.N addresses.
//!
//! Needs root (sshd checks passwords against /etc/shadow, `useradd`). When
//! `/usr/sbin/sshd` is missing it installs `openssh-server` with apt-get
//! (after writing `/usr/sbin/policy-rc.d` so the package starts no daemon of
//! its own), or fails with a message saying so: tests never skip.
//!
//! Every `sshd` runs under a small watchdog shell that reads its stdin: when
//! the test process ends, for whatever reason, the pipe closes and the
//! watchdog stops the server, so no server outlives the tests. The same
//! trick removes the lab's temporary directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The test account on this machine.
pub const USER: &str = "opsc-test-ssh";

/// The passphrase of [`Keys::encrypted`], [`Keys::encrypted_ecdsa`] and
/// [`Keys::encrypted_rsa`] (with quotes and spaces, so that it is passed
/// through verbatim, not through a shell).
pub const PASSPHRASE: &str = "correct horse 'battery' staple";

const SSHD: &str = "/usr/sbin/sshd";

/// Client keys (private key files; the `.pub` files are beside them).
#[derive(Debug)]
pub struct Keys {
    /// Ed25519, authorized.
    pub ed25519: PathBuf,
    /// ECDSA P-256, authorized.
    pub ecdsa: PathBuf,
    /// RSA 2048, authorized.
    pub rsa: PathBuf,
    /// Ed25519 protected by [`PASSPHRASE`], authorized.
    pub encrypted: PathBuf,
    /// ECDSA P-256 protected by [`PASSPHRASE`], authorized.
    pub encrypted_ecdsa: PathBuf,
    /// RSA 2048 protected by [`PASSPHRASE`], authorized.
    pub encrypted_rsa: PathBuf,
    /// Ed25519, **not** authorized.
    pub stranger: PathBuf,
}

/// The account, the keys and a private directory, shared by every server.
#[derive(Debug)]
pub struct Lab {
    /// Private directory (removed when the process ends).
    pub dir: PathBuf,
    /// The user's password, set for this process.
    pub password: String,
    /// Client keys.
    pub keys: Keys,
    _cleaner: Mutex<Child>,
    next_addr: Mutex<u8>,
}

/// One running `sshd`.
#[derive(Debug)]
pub struct Sshd {
    /// Listen address (127.0.0.N).
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// The host key's public half.
    pub host_key_pub: PathBuf,
    /// The host key's fingerprint, from `ssh-keygen -lf`.
    pub fingerprint: String,
    /// The host key line (`ssh-ed25519 AAAA…`).
    pub host_key_line: String,
    /// sshd's log file.
    pub log: PathBuf,
    watchdog: Option<Child>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.watchdog.take() {
            // Closing its stdin makes the watchdog stop sshd.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes sure `/usr/sbin/sshd` exists, installing `openssh-server` if not.
pub fn ensure_sshd() {
    if Path::new(SSHD).exists() {
        return;
    }
    eprintln!("{SSHD} is missing: installing openssh-server with apt-get");
    if !Path::new("/usr/sbin/policy-rc.d").exists() {
        std::fs::write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n")
            .expect("write /usr/sbin/policy-rc.d (the SSH tests need root)");
        run(Command::new("chmod").args(["755", "/usr/sbin/policy-rc.d"]));
    }
    let install = |update: bool| {
        if update {
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "openssh-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !(install(false) || install(true)) || !Path::new(SSHD).exists() {
        panic!(
            "{SSHD} is missing and `apt-get install openssh-server` failed: the SSH tests need \
             a real OpenSSH server; install it (as root: apt-get install -y openssh-server)"
        );
    }
}

fn ensure_user(password: &str) {
    let exists = Command::new("id")
        .arg("-u")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !exists {
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", USER])
            .status()
            .expect("run useradd (the SSH tests need root)");
        // Another test process may have created it meanwhile.
        assert!(
            status.success()
                || Command::new("id")
                    .arg(USER)
                    .status()
                    .is_ok_and(|s| s.success()),
            "useradd {USER} failed"
        );
    }
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run chpasswd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{USER}:{password}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "chpasswd failed");
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn keygen(path: &Path, args: &[&str], passphrase: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-N", passphrase, "-C", "opsc-test", "-f"])
        .arg(path)
        .args(args));
}

/// The fingerprint `ssh-keygen -lf` prints for a key file.
pub fn fingerprint(pub_path: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(pub_path));
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected ssh-keygen -lf output: {out}"))
        .to_owned()
}

impl Lab {
    /// Sets up the account, keys and directory. Prefer [`lab`] (one per process).
    pub fn new() -> Self {
        ensure_sshd();
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let password = format!("pw-{}", random_hex(12));
        ensure_user(&password);
        let dir = std::env::temp_dir().join(format!("opsc-sshd-{}", random_hex(8)));
        std::fs::create_dir(&dir).expect("create the lab directory");
        // sshd reads authorized_keys as the user: the directory must be traversable.
        run(Command::new("chmod").arg("755").arg(&dir));
        let cleaner = Command::new("sh")
            .args(["-c", r#"cat >/dev/null; rm -rf -- "$1""#, "sh"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .spawn()
            .expect("start the lab cleaner");
        let keys = Keys {
            ed25519: dir.join("id_ed25519"),
            ecdsa: dir.join("id_ecdsa"),
            rsa: dir.join("id_rsa"),
            encrypted: dir.join("id_encrypted"),
            encrypted_ecdsa: dir.join("id_encrypted_ecdsa"),
            encrypted_rsa: dir.join("id_encrypted_rsa"),
            stranger: dir.join("id_stranger"),
        };
        keygen(&keys.ed25519, &["-t", "ed25519"], "");
        keygen(&keys.ecdsa, &["-t", "ecdsa", "-b", "256"], "");
        keygen(&keys.rsa, &["-t", "rsa", "-b", "2048"], "");
        keygen(&keys.encrypted, &["-t", "ed25519", "-a", "16"], PASSPHRASE);
        keygen(
            &keys.encrypted_ecdsa,
            &["-t", "ecdsa", "-b", "256", "-a", "16"],
            PASSPHRASE,
        );
        keygen(
            &keys.encrypted_rsa,
            &["-t", "rsa", "-b", "2048", "-a", "16"],
            PASSPHRASE,
        );
        keygen(&keys.stranger, &["-t", "ed25519"], "");
        let mut authorized = String::new();
        for key in [
            &keys.ed25519,
            &keys.ecdsa,
            &keys.rsa,
            &keys.encrypted,
            &keys.encrypted_ecdsa,
            &keys.encrypted_rsa,
        ] {
            authorized
                .push_str(&std::fs::read_to_string(format!("{}.pub", key.display())).unwrap());
        }
        let auth_path = dir.join("authorized_keys");
        std::fs::write(&auth_path, authorized).unwrap();
        run(Command::new("chmod").arg("644").arg(&auth_path));
        Self {
            dir,
            password,
            keys,
            _cleaner: Mutex::new(cleaner),
            next_addr: Mutex::new(2),
        }
    }

    /// The next unused loopback address, 127.0.0.2 and up.
    pub fn next_host(&self) -> String {
        let mut n = self.next_addr.lock().unwrap();
        let host = format!("127.0.0.{}", *n);
        *n = n.checked_add(1).expect("out of 127.0.0.N addresses");
        host
    }

    /// Starts an sshd with a fresh host key on the next 127.0.0.N.
    pub fn start_sshd(&self) -> Sshd {
        let host = self.next_host();
        let tag = host.replace('.', "_");
        let host_key = self.dir.join(format!("host_{tag}"));
        keygen(&host_key, &["-t", "ed25519"], "");
        let host_key_pub = PathBuf::from(format!("{}.pub", host_key.display()));
        let fingerprint = fingerprint(&host_key_pub);
        let host_key_line = std::fs::read_to_string(&host_key_pub)
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let log = self.dir.join(format!("sshd_{tag}.log"));
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port(&host);
            let conf = self.dir.join(format!("sshd_{tag}.conf"));
            std::fs::write(&conf, self.config(&host, port, &host_key, &tag)).unwrap();
            let mut watchdog = Command::new("sh")
                .args([
                    "-c",
                    r#"trap '' INT; "$1" -D -e -f "$2" 2>>"$3" & p=$!; cat >/dev/null; kill $p 2>/dev/null; wait $p"#,
                    "sh",
                    SSHD,
                ])
                .arg(&conf)
                .arg(&log)
                .stdin(Stdio::piped())
                .spawn()
                .expect("start sshd");
            if wait_for_banner(&host, port, &mut watchdog) {
                return Sshd {
                    host,
                    port,
                    host_key_pub,
                    fingerprint,
                    host_key_line,
                    log,
                    watchdog: Some(watchdog),
                };
            }
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
            last_error = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("sshd on {host} did not start:\n{last_error}");
    }

    fn config(&self, host: &str, port: u16, host_key: &Path, tag: &str) -> String {
        let mut conf = format!(
            "ListenAddress {host}:{port}\n\
             HostKey {}\n\
             PidFile {}\n\
             AuthorizedKeysFile {}\n\
             StrictModes no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PermitRootLogin no\n\
             AllowUsers {USER}\n\
             AllowAgentForwarding no\n\
             Subsystem sftp internal-sftp\n\
             MaxStartups 1000\n\
             MaxSessions 100\n\
             MaxAuthTries 20\n\
             LogLevel ERROR\n",
            host_key.display(),
            self.dir.join(format!("sshd_{tag}.pid")).display(),
            self.dir.join("authorized_keys").display(),
        );
        if supports_option("PerSourcePenalties no") {
            // OpenSSH 9.8+ would otherwise lock out 127.0.0.1 after the
            // failed logins some tests make on purpose.
            conf.push_str("PerSourcePenalties no\n");
        }
        conf
    }
}

/// Whether this sshd knows a config option.
fn supports_option(line: &str) -> bool {
    static KNOWN: OnceLock<Mutex<Vec<(String, bool)>>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| Mutex::new(Vec::new()));
    let mut known = known.lock().unwrap();
    if let Some((_, ok)) = known.iter().find(|(l, _)| l == line) {
        return *ok;
    }
    let (key, value) = line.split_once(' ').unwrap();
    let ok = Command::new(SSHD)
        .args(["-t", "-f", "/dev/null", "-o"])
        .arg(format!("{key}={value}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map(|o| !String::from_utf8_lossy(&o.stderr).contains("Bad configuration option"))
        .unwrap_or(false);
    known.push((line.to_owned(), ok));
    ok
}

/// A port that was free a moment ago on `host`.
pub fn free_port(host: &str) -> u16 {
    let listener = TcpListener::bind((host, 0)).expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

fn wait_for_banner(host: &str, port: u16, watchdog: &mut Child) -> bool {
    let give_up = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
    while Instant::now() < give_up {
        if let Ok(Some(_)) = watchdog.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The lab of this process.
pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(Lab::new)
}

/// Number of servers in [`pool`].
pub const POOL_SIZE: usize = 6;

/// A few servers shared by the tests of this process, on 127.0.0.2 and up.
pub fn pool() -> &'static [Sshd] {
    static POOL: OnceLock<Vec<Sshd>> = OnceLock::new();
    POOL.get_or_init(|| {
        let lab = lab();
        (0..POOL_SIZE).map(|_| lab.start_sshd()).collect()
    })
}
