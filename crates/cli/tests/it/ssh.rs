//! The CLI against real OpenSSH servers: `targets trust`, `targets check`
//! (status, latency, OS, and the reason a target is down), a job on several
//! SSH hosts with a secret as environment variable (never on the remote
//! command line, masked in output), grouped output, a job running on 22
//! hosts at once (and no more at once than its `concurrency`), and host
//! keys from a target's known_hosts file or `OPSC_SSH_KNOWN_HOSTS`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use crate::common;
#[path = "../../../executors/tests/it/support/sshd.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

fn target_yaml(name: &str, s: &sshd::Sshd, host_key: Option<&str>) -> String {
    target_yaml_at(name, "ssh", &s.host, s.port, host_key, None)
}

/// A target document; `known_hosts` names the target's own file.
fn target_yaml_at(
    name: &str,
    tag: &str,
    host: &str,
    port: u16,
    host_key: Option<&str>,
    known_hosts: Option<&Path>,
) -> String {
    let pin = host_key
        .map(|k| format!("\n  host_key: \"{k}\""))
        .unwrap_or_default();
    let file = known_hosts
        .map(|p| format!("\n  known_hosts: \"{}\"", p.display()))
        .unwrap_or_default();
    format!(
        "kind: Target\nname: {name}\ntags: [{tag}]\ncredential: ssh-key\nconnection:\n  type: ssh\n  host: {host}\n  port: {port}\n  user: {}{pin}{file}\n---\n",
        sshd::USER
    )
}

/// Stores the fixture's Ed25519 key as the secret `ssh-key`.
fn store_key(env: &Env) {
    let key = std::fs::read_to_string(&sshd::lab().keys.ed25519).unwrap();
    env.cmd(["secrets", "set", "ssh-key", "--kind", "ssh_key"])
        .write_stdin(key)
        .assert()
        .success();
}

/// The rows of the table in `out` whose header starts with `first`, as
/// column → cell, cut at the header's column starts (cells may hold spaces).
fn table_rows(out: &str, first: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with(first));
    let header: Vec<char> = lines
        .next()
        .unwrap_or_else(|| panic!("no table with {first} in:\n{out}"))
        .chars()
        .collect();
    let mut columns = Vec::new();
    for (i, c) in header.iter().enumerate() {
        if *c != ' ' && (i == 0 || header[i - 1] == ' ') {
            let name: String = header[i..].iter().take_while(|c| **c != ' ').collect();
            columns.push((i, name));
        }
    }
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            let cell = |from: usize, to: usize| -> String {
                chars
                    .get(from.min(chars.len())..to.min(chars.len()))
                    .map(|c| c.iter().collect::<String>().trim().to_owned())
                    .unwrap_or_default()
            };
            columns
                .iter()
                .enumerate()
                .map(|(k, (start, name))| {
                    let end = columns.get(k + 1).map_or(chars.len(), |(s, _)| *s);
                    (name.clone(), cell(*start, end))
                })
                .collect()
        })
        .collect()
}

/// The `targets check` row of `target`.
fn check_row<'a>(
    rows: &'a [BTreeMap<String, String>],
    target: &str,
) -> &'a BTreeMap<String, String> {
    rows.iter()
        .find(|r| r["TARGET"] == target)
        .unwrap_or_else(|| panic!("no row for {target}: {rows:?}"))
}

/// Asserts a `LATENCY` cell reads like `12 ms`.
fn assert_latency(row: &BTreeMap<String, String>) {
    let cell = &row["LATENCY"];
    let ms = cell.strip_suffix(" ms").and_then(|n| n.parse::<u64>().ok());
    assert!(ms.is_some(), "latency '{cell}' in {row:?}");
}

#[test]
fn trust_check_and_run_with_a_secret_over_ssh() {
    let env = Env::new();
    let pool = sshd::pool();
    store_key(&env);
    // web-1 is not pinned yet; web-2 and web-3 are. down-1 has no server.
    let mut yaml = target_yaml("web-1", &pool[0], None);
    yaml.push_str(&target_yaml("web-2", &pool[1], Some(&pool[1].fingerprint)));
    yaml.push_str(&target_yaml("web-3", &pool[2], Some(&pool[2].fingerprint)));
    let closed = sshd::free_port("127.0.0.1");
    yaml.push_str(&target_yaml_at(
        "down-1",
        "down",
        "127.0.0.1",
        closed,
        Some(&pool[0].fingerprint),
        None,
    ));
    env.apply_yaml("targets.yaml", &yaml);

    // Unpinned: check refuses it and says how to accept.
    let a = env.cmd(["targets", "check", "tag:ssh"]).assert().code(1);
    let out = stdout_of(&a);
    assert!(
        out.contains("web-1") && out.contains("targets trust"),
        "{out}"
    );
    // trust shows the key and pins it (non-interactive: --yes).
    let a = env
        .cmd(["targets", "trust", "web-1", "--yes"])
        .assert()
        .success();
    assert!(
        stderr_of(&a).contains(&pool[0].fingerprint),
        "{}",
        stderr_of(&a)
    );
    let a = env.cmd(["targets", "check", "tag:ssh"]).assert().success();
    let rows = table_rows(&stdout_of(&a), "TARGET");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for t in ["web-1", "web-2", "web-3"] {
        let row = check_row(&rows, t);
        assert_eq!(row["KIND"], "ssh", "{row:?}");
        assert_eq!(row["STATUS"], "ok", "{row:?}");
        assert_latency(row);
        assert!(row["OS"].starts_with("Linux "), "{row:?}");
        assert_eq!(row["ERROR"], "", "{row:?}");
    }
    // A host that is down fails alone, with the reason, and does not hold up
    // the others.
    let a = env
        .cmd(["targets", "check", "tag:ssh,tag:down"])
        .assert()
        .code(1);
    let rows = table_rows(&stdout_of(&a), "TARGET");
    assert_eq!(rows.len(), 4, "{rows:?}");
    for t in ["web-1", "web-2", "web-3"] {
        assert_eq!(check_row(&rows, t)["STATUS"], "ok", "{rows:?}");
    }
    let down = check_row(&rows, "down-1");
    assert_eq!(down["STATUS"], "error", "{down:?}");
    assert_latency(down);
    assert_eq!(down["OS"], "", "{down:?}");
    let reason = &down["ERROR"];
    assert!(
        reason.contains("down-1")
            && reason.contains(&format!("127.0.0.1:{closed}"))
            && reason.to_lowercase().contains("refused"),
        "the error names the target, the address and why: {down:?}"
    );
    assert!(
        stderr_of(&a).contains("3 ok, 1 failed"),
        "{}",
        stderr_of(&a)
    );
    // A changed key is refused: pin web-3 to web-1's key.
    env.apply_yaml(
        "bad.yaml",
        &target_yaml("web-3", &pool[2], Some(&pool[0].fingerprint)),
    );
    let a = env
        .cmd(["exec", "-t", "web-3", "--", "true"])
        .assert()
        .code(1);
    assert!(stderr_of(&a).contains("targets trust"), "{}", stderr_of(&a));
    env.apply_yaml(
        "good.yaml",
        &target_yaml("web-3", &pool[2], Some(&pool[2].fingerprint)),
    );

    // A job with a secret on three hosts: env only, masked, never on a command line.
    let value = format!("pw-{}", marker());
    env.cmd(["secrets", "set", "db-password"])
        .write_stdin(value.clone())
        .assert()
        .success();
    // Each host's command leaves a marker file once the secret is in its
    // environment, then sleeps for a uniquely numbered while, so the test
    // can see it running before it scans.
    let m = marker();
    let flag = std::env::temp_dir().join(format!("opsc-ps-{m}"));
    env.apply_yaml(
        "job.yaml",
        &format!(
            "kind: Job\nname: remote\ntargets: tag:ssh\nsecrets: [db-password]\nsteps:\n  - exec: echo \"pw=$DB_PASSWORD\"; grep -c \"$DB_PASSWORD\" /proc/$$/cmdline || true; touch {}-$OPSC_TARGET; sleep 3.{m}\n",
            flag.display()
        ),
    );
    let child = env.spawn(["run", "remote", "--follow"]);
    let flags: Vec<_> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|t| std::path::PathBuf::from(format!("{}-{t}", flag.display())))
        .collect();
    let sleeping = format!("sleep 3.{m}");
    // The `sleep` processes themselves (not the shells whose command line
    // holds the whole step).
    let sleeps = || {
        procs_with(&sleeping)
            .into_iter()
            .filter(|(_, c)| c.starts_with(&sleeping))
            .count()
    };
    let running = wait_until(PATIENCE, || {
        flags.iter().all(|f| f.exists()) && sleeps() == 3
    });
    assert!(
        running,
        "the job's commands never showed up on the servers: flags {:?}, processes {:?}",
        flags.iter().map(|f| f.exists()).collect::<Vec<_>>(),
        procs_with(&sleeping)
    );
    // While they run, with the secret in their environment, no process on
    // the (local) sshd hosts shows the value.
    assert!(
        procs_with(&value).is_empty(),
        "the secret is visible in a process list: {:?}",
        procs_with(&value)
    );
    assert_eq!(sleeps(), 3, "the commands were still running while scanned");
    let (code, out, err) = finish(child);
    for f in &flags {
        let _ = std::fs::remove_file(f);
    }
    assert_eq!(code, Some(0), "{out}\n{err}");
    for t in ["web-1", "web-2", "web-3"] {
        assert!(out.contains(&format!("{t} | pw=***")), "{out}");
    }
    assert!(!out.contains(&value) && !err.contains(&value));
    assert_eq!(
        out.matches("| 0").count(),
        3,
        "the value was on a command line: {out}"
    );

    // Grouped output: one block per host.
    let a = env
        .cmd([
            "exec",
            "-t",
            "tag:ssh",
            "--group",
            "--",
            "echo from $OPSC_TARGET",
        ])
        .assert()
        .success();
    let out = stdout_of(&a);
    for t in ["web-1", "web-2", "web-3"] {
        assert!(
            out.contains(&format!("── {t} succeeded\nfrom {t}\n")),
            "{out}"
        );
    }
}

/// `(start, end)` of each target, from lines `NAME | start=S` and
/// `NAME | end=E` (seconds since the epoch, as `date +%s.%N` prints them).
fn intervals(out: &str) -> BTreeMap<String, (f64, f64)> {
    let mut starts = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for line in out.lines() {
        let Some((name, text)) = line.split_once(" | ") else {
            continue;
        };
        let name = name.trim().to_owned();
        if let Some(t) = text.strip_prefix("start=") {
            starts.insert(name, t.trim().parse::<f64>().unwrap());
        } else if let Some(t) = text.strip_prefix("end=") {
            ends.insert(name, t.trim().parse::<f64>().unwrap());
        }
    }
    starts
        .into_iter()
        .map(|(name, start)| {
            let end = *ends
                .get(&name)
                .unwrap_or_else(|| panic!("{name} has no end: {out}"));
            (name, (start, end))
        })
        .collect()
}

/// The most intervals that hold at one instant.
fn most_at_once(intervals: &BTreeMap<String, (f64, f64)>) -> usize {
    intervals
        .values()
        .map(|(at, _)| {
            intervals
                .values()
                .filter(|(s, e)| s <= at && at < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_job_runs_on_twenty_two_ssh_targets_at_once_within_its_concurrency() {
    const TARGETS: usize = 22;
    let env = Env::new();
    let pool = sshd::pool();
    store_key(&env);
    let mut yaml = String::new();
    for i in 0..TARGETS {
        let s = &pool[i % pool.len()];
        yaml.push_str(&target_yaml_at(
            &format!("fan-{i:02}"),
            "fan",
            &s.host,
            s.port,
            Some(&s.fingerprint),
            None,
        ));
    }
    // Each host says when its command started and ended, on its own clock
    // (the servers are local: one clock), around a one-second sleep.
    let step = r#"echo "start=$(date +%s.%N)"; sleep 1; echo "end=$(date +%s.%N)""#;
    for (name, concurrency) in [("fan-all", TARGETS), ("fan-four", 4)] {
        yaml.push_str(&format!(
            "kind: Job\nname: {name}\ntargets: tag:fan\nconcurrency: {concurrency}\nsteps:\n  - exec: '{step}'\n---\n"
        ));
    }
    env.apply_yaml("fan.yaml", &yaml);

    // concurrency = the number of targets: every command is running at once,
    // which proves the parallelism without asserting any speed: the last
    // start comes before the first end.
    let (code, out, err) = finish(env.spawn(["run", "fan-all", "--follow"]));
    assert_eq!(code, Some(0), "{out}\n{err}");
    let all = intervals(&out);
    assert_eq!(all.len(), TARGETS, "{out}");
    let last_start = all.values().map(|(s, _)| *s).fold(f64::MIN, f64::max);
    let first_end = all.values().map(|(_, e)| *e).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "not all at once: the last start {last_start} is after the first end {first_end}: {all:?}"
    );
    assert_eq!(most_at_once(&all), TARGETS, "{all:?}");

    // concurrency 4: never more than four at once, yet in parallel.
    let (code, out, err) = finish(env.spawn(["run", "fan-four", "--follow"]));
    assert_eq!(code, Some(0), "{out}\n{err}");
    let four = intervals(&out);
    assert_eq!(four.len(), TARGETS, "{out}");
    let most = most_at_once(&four);
    assert!(
        (2..=4).contains(&most),
        "{most} commands at once with concurrency 4: {four:?}"
    );
}

#[test]
fn host_keys_from_a_targets_known_hosts_file_or_opsc_ssh_known_hosts() {
    let env = Env::new();
    let pool = sshd::pool();
    store_key(&env);
    let (a, b) = (&pool[3], &pool[4]);
    let good = env.write(
        "known_hosts",
        &format!(
            "# managed elsewhere\n[{}]:{} {}\n[{}]:{} {}\n",
            a.host, a.port, a.host_key_line, b.host, b.port, b.host_key_line
        ),
    );
    let lacking = env.write("known_hosts.other", "# no entries\n");
    let mut yaml = target_yaml_at("kh-file", "kh", &a.host, a.port, None, Some(&good));
    yaml.push_str(&target_yaml_at(
        "kh-lacking",
        "kh",
        &b.host,
        b.port,
        None,
        Some(&lacking),
    ));
    yaml.push_str(&target_yaml_at(
        "kh-env", "env", &b.host, b.port, None, None,
    ));
    env.apply_yaml("targets.yaml", &yaml);

    // The target's own file: it connects, checks and runs.
    let check = |selector: &str| {
        env.cmd(["targets", "check", selector])
            .env_remove("OPSC_SSH_KNOWN_HOSTS")
            .assert()
    };
    let out = stdout_of(&check("kh-file").success());
    assert_eq!(
        check_row(&table_rows(&out, "TARGET"), "kh-file")["STATUS"],
        "ok"
    );
    let ran = env
        .cmd(["exec", "-t", "kh-file", "--", "echo via-known-hosts"])
        .env_remove("OPSC_SSH_KNOWN_HOSTS")
        .assert()
        .success();
    assert!(
        stdout_of(&ran).contains("via-known-hosts"),
        "{}",
        stdout_of(&ran)
    );

    // A file without the host: refused, naming the host, what was expected,
    // what was offered and how to trust it.
    let out = stdout_of(&check("kh-lacking").code(1));
    let row = check_row(&table_rows(&out, "TARGET"), "kh-lacking").clone();
    assert_eq!(row["STATUS"], "error", "{row:?}");
    let reason = &row["ERROR"];
    for needle in [
        "unknown host key".to_owned(),
        format!("{}@{}:{}", sshd::USER, b.host, b.port),
        format!("{} has no entry for it", lacking.display()),
        format!("offered ssh-ed25519 key {}", b.fingerprint),
        "opsconductor targets trust kh-lacking".to_owned(),
    ] {
        assert!(reason.contains(&needle), "missing {needle:?} in {reason}");
    }

    // Neither pin nor file: refused, unless the process-wide default names one.
    let out = stdout_of(&check("kh-env").code(1));
    let row = check_row(&table_rows(&out, "TARGET"), "kh-env").clone();
    assert!(
        row["ERROR"].contains("neither the target nor the executor names a known_hosts file"),
        "{row:?}"
    );
    let with_env = env
        .cmd(["targets", "check", "kh-env"])
        .env("OPSC_SSH_KNOWN_HOSTS", &good)
        .assert()
        .success();
    let rows = table_rows(&stdout_of(&with_env), "TARGET");
    assert_eq!(check_row(&rows, "kh-env")["STATUS"], "ok", "{rows:?}");
    // …but a target's own file is not merged with it: it replaces it.
    let out = stdout_of(
        &env.cmd(["targets", "check", "kh-lacking"])
            .env("OPSC_SSH_KNOWN_HOSTS", &good)
            .assert()
            .code(1),
    );
    assert_eq!(
        check_row(&table_rows(&out, "TARGET"), "kh-lacking")["STATUS"],
        "error"
    );

    // A relative known_hosts path is refused when applied, naming the field.
    let bad = env.write(
        "relative.yaml",
        &target_yaml_at(
            "kh-rel",
            "kh",
            &a.host,
            a.port,
            None,
            Some(Path::new("known_hosts")),
        ),
    );
    let refused = env.cmd(["apply", "-f"]).arg(bad).assert().code(2);
    let err = stderr_of(&refused);
    assert!(
        err.contains("known_hosts") && err.contains("absolute"),
        "{err}"
    );
}

/// `kill -9` of `opsconductor exec` while its step runs on an SSH host: the
/// connection drops, and the remote wrapper kills the command's whole
/// process group (child and grandchild) within 1 s of the worker's death.
#[test]
fn remote_steps_die_when_the_worker_is_killed() {
    let env = Env::new();
    let pool = sshd::pool();
    store_key(&env);
    env.apply_yaml(
        "targets.yaml",
        &target_yaml("doomed", &pool[3], Some(&pool[3].fingerprint)),
    );
    let m = marker();
    let step = format!("sh -c 'sleep 30.{m} & sleep 30.{m}' & sleep 30.{m}");
    let mut child = env.spawn(["exec", "-t", "doomed", "--", &step]);
    // The sleeps themselves (not the shells whose command line holds them).
    let sleeping = format!("sleep 30.{m}");
    let sleeps = || {
        procs_with(&sleeping)
            .into_iter()
            .filter(|(_, c)| c.starts_with(&sleeping))
            .count()
    };
    assert!(
        wait_until(PATIENCE, || sleeps() == 3),
        "the step never started on the server: {:?}",
        procs_with(&sleeping)
    );
    child.kill().unwrap(); // SIGKILL
    let killed_at = std::time::Instant::now();
    child.wait().unwrap();
    let gone = wait_until(std::time::Duration::from_secs(1), || {
        procs_with(&sleeping).is_empty()
    });
    assert!(
        gone,
        "remote step processes outlived their worker by more than 1 s: {:?}",
        procs_with(&sleeping)
    );
    eprintln!(
        "remote step processes gone {:?} after SIGKILL",
        killed_at.elapsed()
    );
}

/// Issue 12 §1(c) over SSH: a worker frozen by SIGSTOP keeps its connection
/// open, so the remote wrapper sees no end-of-file; it kills the command's
/// group when the worker's keepalive stops for the lease margin (1.5 s with
/// a 3 s lease), before another node could rescue the run.
#[test]
fn remote_steps_die_when_the_worker_is_frozen_past_its_lease() {
    let env = Env::new();
    let pool = sshd::pool();
    store_key(&env);
    let m = marker();
    env.apply_yaml(
        "frozen.yaml",
        &format!(
            "{}kind: Job\nname: frozen\ntargets: frozen\nsteps:\n  - exec: sh -c 'sleep 30.{m} & sleep 30.{m}'\n",
            target_yaml("frozen", &pool[4], Some(&pool[4].fingerprint))
        ),
    );
    env.cmd(["run", "frozen", "--detach"]).assert().success();
    let mut worker = env.spawn(["worker", "--lease", "3s"]);
    let sleeping = format!("sleep 30.{m}");
    let sleeps = || {
        procs_with(&sleeping)
            .into_iter()
            .filter(|(_, c)| c.starts_with(&sleeping))
            .count()
    };
    assert!(
        wait_until(PATIENCE, || sleeps() == 2),
        "the step never started on the server: {:?}",
        procs_with(&sleeping)
    );
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &worker.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig}");
    };
    signal("-STOP");
    let frozen_at = std::time::Instant::now();
    let gone = wait_until(std::time::Duration::from_secs(10), || {
        procs_with(&sleeping).is_empty()
    });
    let after = frozen_at.elapsed();
    signal("-CONT");
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        gone,
        "remote step processes outlived their frozen worker: {:?}",
        procs_with(&sleeping)
    );
    eprintln!("remote step processes gone {after:?} after SIGSTOP");
    // Dead before the lease (3 s from the last heartbeat) could end.
    assert!(after < std::time::Duration::from_millis(2500), "{after:?}");
}
