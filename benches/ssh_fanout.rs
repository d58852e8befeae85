//! Run with: `cargo bench --features ssh --bench ssh_fanout` (as root: it
//! starts OpenSSH servers on loopback and uses a test account, like the SSH
//! executor's tests; set `OPSC_BENCH_SIZES`, default `10,50,100`, and
//! `OPSC_BENCH_SERVERS`, default 10).
//!
//! `uname -a` on N SSH targets at once, cold connections (connect, verify
//! the host key, authenticate with an Ed25519 key, run, disconnect), two
//! ways — [`SshExecutor`] in this process, and the whole product as a user
//! runs it (`opsconductor exec -t tag:bench` from the release binary, on a
//! SQLite database holding the targets and the key as a secret; the ratios
//! are against this one) — side by side with the tools a user would
//! otherwise reach for, against the same hosts and key:
//! - `ansible all -m command -a 'uname -a' --forks N` (ansible-core from
//!   PyPI in `target/bench-venv`, created on first run with `python3 -m
//!   venv` + `pip install ansible-core`; pipelining on, no SSH connection
//!   reuse, host keys checked against a known_hosts file);
//! - `parallel-ssh -p N` (Debian's `pssh`, installed with apt-get if
//!   missing; host keys checked the same way).
//!
//! The targets are spread over `OPSC_BENCH_SERVERS` sshd processes, each on
//! its own 127.0.0.N address with its own host key (so 100 targets are 10
//! per server). Prints the wall time of each tool and ours as a ratio. A
//! peer that cannot be installed is reported as unavailable, not faked.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    reason = "a benchmark or example reports by printing, and a broken fixture ends it"
)]

#[path = "../crates/executors/tests/it/support/sshd.rs"]
#[allow(missing_docs, unused)]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsconductor::SshExecutor;
use opsconductor::executor::{
    Command as Step, Credential, ExecError, Executor, OutputSink, StepContext,
};
use opsconductor::model::{Connection, Target};

struct Host {
    alias: String,
    host: String,
    port: u16,
    fingerprint: String,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

async fn ours(hosts: &[Host], key: &Path) -> Result<Duration, String> {
    let exec = Arc::new(SshExecutor::default());
    let cred = Credential {
        kind: "ssh_key".into(),
        value: std::fs::read(key).map_err(|e| e.to_string())?,
    };
    let started = Instant::now();
    let tasks: Vec<_> = hosts
        .iter()
        .map(|h| {
            let exec = exec.clone();
            let cred = cred.clone();
            let mut target = Target::local();
            target.name = h.alias.clone();
            target.connection = Connection::Ssh {
                host: h.host.clone(),
                port: h.port,
                user: sshd::USER.into(),
                host_key: Some(h.fingerprint.clone()),
                known_hosts: None,
            };
            tokio::spawn(async move {
                let session = exec.connect(&target, Some(&cred)).await?;
                let (sink, mut rx) = OutputSink::channel(16);
                let ctx = StepContext::new(target.clone());
                let drain = tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(ev) = rx.recv().await {
                        n += ev.data.len();
                    }
                    n
                });
                let status = session
                    .exec(&ctx, &Step::Shell("uname -a".into()), &sink)
                    .await?;
                drop(sink);
                let bytes = drain.await.unwrap_or(0);
                session.close().await;
                if status.success() && bytes > 0 {
                    Ok(())
                } else {
                    Err(ExecError::Io(format!("{}: {status}", target.name)))
                }
            })
        })
        .collect();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(started.elapsed())
}

/// The released `opsconductor` binary (built here when missing).
fn cli_binary() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release/opsconductor");
    if !bin.exists() {
        eprintln!("building the opsconductor CLI (release)…");
        let _ = Command::new(env!("CARGO"))
            .args(["build", "--release", "-q", "-p", "opsconductor-cli"])
            .current_dir(&root)
            .status();
    }
    bin.exists().then_some(bin)
}

/// The whole product as a user runs it: `opsconductor exec` on a fresh
/// SQLite database holding the targets and the key as a secret — process
/// start, store, engine, workers, masking, output — timed like the peers.
fn ours_cli(cli: &Path, hosts: &[Host], key: &Path, dir: &Path) -> Result<Duration, String> {
    let work = dir.join(format!("cli-{}", hosts.len()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", work.join("bench.db").display());
    let master = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
    let run = |args: &[&str], stdin: Option<&Path>| -> Result<std::process::Output, String> {
        let mut c = Command::new(cli);
        c.current_dir(&work)
            .env("OPSC_MASTER_KEY", master)
            .args(["--database-url", &url, "--color", "never"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match stdin {
            Some(p) => c.stdin(std::fs::File::open(p).map_err(|e| e.to_string())?),
            None => c.stdin(Stdio::null()),
        };
        let out = c.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "opsconductor {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(
        &["secrets", "set", "bench-key", "--kind", "ssh_key"],
        Some(key),
    )?;
    let mut yaml = String::new();
    for h in hosts {
        yaml.push_str(&format!(
            "kind: Target\nname: {}\ntags: [bench]\nconnection: {{ type: ssh, host: \"{}\", port: {}, user: {}, host_key: \"{}\" }}\ncredential: bench-key\n---\n",
            h.alias, h.host, h.port, sshd::USER, h.fingerprint
        ));
    }
    let file = work.join("targets.yaml");
    std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
    run(&["apply", "-f", &file.display().to_string()], None)?;
    let n = hosts.len().to_string();
    let started = Instant::now();
    let out = run(
        &[
            "exec",
            "-t",
            "tag:bench",
            "--concurrency",
            &n,
            "--",
            "uname -a",
        ],
        None,
    )?;
    let took = started.elapsed();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Linux"))
        .count();
    if lines != hosts.len() {
        return Err(format!(
            "opsconductor exec: {lines}/{} hosts answered",
            hosts.len()
        ));
    }
    Ok(took)
}

fn ssh_options(key: &Path, known_hosts: &Path) -> Vec<String> {
    vec![
        format!("-i {}", key.display()),
        format!("-o UserKnownHostsFile={}", known_hosts.display()),
        "-o StrictHostKeyChecking=yes".into(),
        "-o BatchMode=yes".into(),
        "-o IdentitiesOnly=yes".into(),
        "-o ControlMaster=no".into(),
        "-o ControlPath=none".into(),
    ]
}

fn venv() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let ansible = dir.join("bin/ansible");
    if ansible.exists() {
        return Some(ansible);
    }
    eprintln!(
        "creating {} with ansible-core (first run only)…",
        dir.display()
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "ansible-core"])
            .status()
            .is_ok_and(|s| s.success());
    (ok && ansible.exists()).then_some(ansible)
}

fn ansible(
    ansible: &Path,
    hosts: &[Host],
    key: &Path,
    known_hosts: &Path,
    dir: &Path,
) -> Result<Duration, String> {
    let inventory = dir.join(format!("inventory-{}", hosts.len()));
    let mut text = String::from("[targets]\n");
    for h in hosts {
        text.push_str(&format!(
            "{} ansible_host={} ansible_port={}\n",
            h.alias, h.host, h.port
        ));
    }
    text.push_str("[targets:vars]\nansible_python_interpreter=/usr/bin/python3\n");
    std::fs::write(&inventory, text).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let out = Command::new(ansible)
        .args(["targets", "-i"])
        .arg(&inventory)
        .args(["-m", "command", "-a", "uname -a", "-u", sshd::USER])
        .args(["--forks", &hosts.len().to_string()])
        .arg("--private-key")
        .arg(key)
        .env("ANSIBLE_SSH_ARGS", ssh_options(key, known_hosts).join(" "))
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.matches("| CHANGED |").count();
    if !out.status.success() || ok != hosts.len() {
        return Err(format!(
            "ansible: {ok}/{} succeeded ({})\n{}{}",
            hosts.len(),
            out.status,
            stdout.lines().take(10).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

fn pssh_binary() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/parallel-ssh", "/usr/bin/pssh"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("installing pssh with apt-get…");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "pssh"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    find()
}

fn pssh(
    binary: &Path,
    hosts: &[Host],
    key: &Path,
    known_hosts: &Path,
    dir: &Path,
) -> Result<Duration, String> {
    let list = dir.join(format!("pssh-hosts-{}", hosts.len()));
    let text: String = hosts
        .iter()
        .map(|h| format!("{}@{}:{}\n", sshd::USER, h.host, h.port))
        .collect();
    std::fs::write(&list, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(binary);
    cmd.arg("-h")
        .arg(&list)
        .args(["-p", &hosts.len().to_string(), "-t", "60"]);
    for o in ssh_options(key, known_hosts) {
        cmd.arg("-x").arg(o);
    }
    let started = Instant::now();
    let out = cmd
        .arg("uname -a")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.matches("[SUCCESS]").count();
    if !out.status.success() || ok != hosts.len() {
        return Err(format!(
            "parallel-ssh: {ok}/{} succeeded ({})\n{}{}",
            hosts.len(),
            out.status,
            stdout.lines().take(10).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

fn show(result: &Result<Duration, String>) -> String {
    match result {
        Ok(d) => format!("{:>8.2} s", d.as_secs_f64()),
        Err(_) => format!("{:>10}", "failed"),
    }
}

fn ratio(peer: &Result<Duration, String>, ours: &Result<Duration, String>) -> String {
    match (peer, ours) {
        (Ok(p), Ok(o)) if o.as_secs_f64() > 0.0 => {
            format!("{:.1}x", p.as_secs_f64() / o.as_secs_f64())
        }
        _ => "-".into(),
    }
}

fn main() {
    let sizes = env_list("OPSC_BENCH_SIZES", &[10, 50, 100]);
    let servers = env_list("OPSC_BENCH_SERVERS", &[10])
        .first()
        .copied()
        .unwrap_or(10)
        .max(1);
    let lab = sshd::lab();
    let pool: Vec<sshd::Sshd> = (0..servers).map(|_| lab.start_sshd()).collect();
    let known_hosts = lab.dir.join("bench_known_hosts");
    let lines: String = pool
        .iter()
        .map(|s| format!("[{}]:{} {}\n", s.host, s.port, s.host_key_line))
        .collect();
    std::fs::write(&known_hosts, lines).expect("write known_hosts");
    let key = lab.keys.ed25519.clone();
    let ansible_bin = venv();
    let pssh_bin = pssh_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "uname -a on N SSH targets, cold connections, {servers} sshd on 127.0.0.2.., {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let cli_bin = cli_binary();
    println!(
        "{:>5} | {:>10} | {:>10} | {:>10} {:>7} | {:>10} {:>7}",
        "N", "executor", "CLI", "ansible", "ratio", "pssh", "ratio"
    );
    for &n in &sizes {
        let hosts: Vec<Host> = (0..n)
            .map(|i| {
                let s = &pool[i % pool.len()];
                Host {
                    alias: format!("t{i:03}"),
                    host: s.host.clone(),
                    port: s.port,
                    fingerprint: s.fingerprint.clone(),
                }
            })
            .collect();
        let our = rt.block_on(ours(&hosts, &key));
        let ans = match &ansible_bin {
            Some(bin) => ansible(bin, &hosts, &key, &known_hosts, &lab.dir),
            None => Err("ansible-core could not be installed".into()),
        };
        let ps = match &pssh_bin {
            Some(bin) => pssh(bin, &hosts, &key, &known_hosts, &lab.dir),
            None => Err("parallel-ssh could not be installed".into()),
        };
        let cli = match &cli_bin {
            Some(bin) => ours_cli(bin, &hosts, &key, &lab.dir),
            None => Err("the opsconductor CLI could not be built".into()),
        };
        println!(
            "{n:>5} | {} | {} | {} {:>7} | {} {:>7}",
            show(&our),
            show(&cli),
            show(&ans),
            ratio(&ans, &cli),
            show(&ps),
            ratio(&ps, &cli)
        );
        for (what, r) in [
            ("ours", &our),
            ("cli", &cli),
            ("ansible", &ans),
            ("pssh", &ps),
        ] {
            if let Err(e) = r {
                eprintln!("  {what} at N={n}: {e}");
            }
        }
    }
    println!(
        "executor = SshExecutor in this process; CLI = `opsconductor exec` as a user runs it \
         (process start, SQLite store, engine); ratio = peer wall time / CLI (above 1: ours is faster)"
    );
}
