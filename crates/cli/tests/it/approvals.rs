//! `opsconductor approvals list|show`, `approve`, `reject`, `run --follow`
//! on a job that needs approval, and policy refusals (exit 2), with the
//! real binary. Different people are different `$USER`s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::{Env, finish, stderr_of, stdout_of, wait_until};
use serde_json::Value;

const JOB: &str = "kind: Job\nname: gated\nsteps:\n  - exec: echo gated-ran\napproval: {required: 1, approvers: {users: [bob, carol]}}\n";

#[test]
fn run_follow_waits_for_approval_by_someone_else_then_runs() {
    let env = Env::new();
    env.apply_yaml("gated.yaml", JOB);
    let child = env
        .std_cmd(["run", "gated", "--follow"])
        .env("USER", "alice")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The waiting run shows up in the list.
    let mut id = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        let a = env.cmd(["--json", "approvals", "list"]).assert().success();
        let v: Value = serde_json::from_str(&stdout_of(&a)).unwrap();
        match v.as_array().and_then(|l| l.first()) {
            Some(r) => {
                id = r["run_id"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    }));
    let a = env.cmd(["approvals", "show", &id[..8]]).assert().success();
    let out = stdout_of(&a);
    assert!(
        out.contains("plan digest:") && out.contains("echo gated-ran"),
        "{out}"
    );
    // Never the submitter; only the listed users.
    let a = env
        .cmd(["approve", &id])
        .env("USER", "alice")
        .assert()
        .failure();
    assert!(stderr_of(&a).contains("four-eyes"), "{}", stderr_of(&a));
    let a = env
        .cmd(["approve", &id])
        .env("USER", "mallory")
        .assert()
        .failure();
    assert!(
        stderr_of(&a).contains("users bob, carol"),
        "{}",
        stderr_of(&a)
    );
    let a = env
        .cmd(["approve", &id, "--comment", "fine"])
        .env("USER", "bob")
        .assert()
        .success();
    assert!(stdout_of(&a).contains("approved"), "{}", stdout_of(&a));
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("waiting for approval by users bob, carol"),
        "{err}"
    );
    assert!(out.contains("gated-ran"), "{out}");
}

#[test]
fn reject_ends_the_run_and_policy_refusals_exit_2() {
    let env = Env::new();
    env.apply_yaml("gated.yaml", JOB);
    let a = env
        .cmd(["--json", "run", "gated", "--detach"])
        .env("USER", "alice")
        .assert()
        .success();
    let v: Value = serde_json::from_str(&stdout_of(&a)).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    env.cmd(["reject", &id]).env("USER", "bob").assert().code(2);
    env.cmd(["reject", &id, "--reason", "not today"])
        .env("USER", "carol")
        .assert()
        .success();
    let a = env
        .cmd(["--json", "approvals", "list", "--all"])
        .assert()
        .success();
    let v: Value = serde_json::from_str(&stdout_of(&a)).unwrap();
    assert_eq!(v[0]["status"], "rejected");
    assert_eq!(v[0]["decisions"][0]["reason"], "not today");
    // Dangerous commands: refused with the rule's name, exit 2.
    let a = env
        .cmd(["exec", "--", "sudo", "rm", "-rf", "/"])
        .assert()
        .code(2);
    assert!(
        stderr_of(&a).contains("recursive-delete-root"),
        "{}",
        stderr_of(&a)
    );
    let p = env.write(
        "wipe.yaml",
        "kind: Job\nname: wipe\nsteps:\n  - exec: mkfs.ext4 /dev/sdb\n",
    );
    let a = env.cmd(["apply", "-f"]).arg(p).assert().code(2);
    assert!(stderr_of(&a).contains("mkfs"), "{}", stderr_of(&a));
}
