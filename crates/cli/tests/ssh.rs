//! The CLI against real OpenSSH servers: `targets trust`, `targets check`,
//! a job on several SSH hosts with a secret as environment variable (never
//! on the remote command line, masked in output) and grouped output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

mod common;
#[path = "../../executors/tests/support/sshd.rs"]
mod sshd;

use std::time::Duration;

use common::*;

fn target_yaml(name: &str, s: &sshd::Sshd, host_key: Option<&str>) -> String {
    let pin = host_key
        .map(|k| format!("\n  host_key: \"{k}\""))
        .unwrap_or_default();
    format!(
        "kind: Target\nname: {name}\ntags: [ssh]\ncredential: ssh-key\nconnection:\n  type: ssh\n  host: {}\n  port: {}\n  user: {}{pin}\n---\n",
        s.host,
        s.port,
        sshd::USER
    )
}

#[test]
fn trust_check_and_run_with_a_secret_over_ssh() {
    let env = Env::new();
    let pool = sshd::pool();
    let lab = sshd::lab();
    let key = std::fs::read_to_string(&lab.keys.ed25519).unwrap();
    env.cmd(["secrets", "set", "ssh-key", "--kind", "ssh_key"])
        .write_stdin(key)
        .assert()
        .success();
    // web-1 is not pinned yet; web-2 and web-3 are.
    let mut yaml = target_yaml("web-1", &pool[0], None);
    yaml.push_str(&target_yaml("web-2", &pool[1], Some(&pool[1].fingerprint)));
    yaml.push_str(&target_yaml("web-3", &pool[2], Some(&pool[2].fingerprint)));
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
    assert!(stdout_of(&a).contains("Linux"), "{}", stdout_of(&a));
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
    env.apply_yaml(
        "job.yaml",
        "kind: Job\nname: remote\ntargets: tag:ssh\nsecrets: [db-password]\nsteps:\n  - exec: echo \"pw=$DB_PASSWORD\"; grep -c \"$DB_PASSWORD\" /proc/$$/cmdline || true; sleep 1\n",
    );
    let child = env.spawn(["run", "remote", "--follow"]);
    // While it runs, no process on the (local) sshd hosts shows the value.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        procs_with(&value).is_empty(),
        "the secret is visible in a process list"
    );
    let (code, out, err) = finish(child);
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
