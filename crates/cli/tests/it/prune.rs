//! `opsconductor prune` (retention of runs, logs and audit events) and
//! `opsconductor audit export`, against a real SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Env, stdout_of};
use serde_json::Value;

fn sql(env: &Env, statement: &str) {
    let db = env.path().join("t.db");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
            db.to_str().unwrap(),
            statement,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "{statement}");
}

#[test]
fn prune_dry_run_counts_and_prune_removes_only_finished_runs() {
    let env = Env::new();
    env.apply_examples();
    env.cmd(["exec", "--", "echo one"]).assert().success();
    env.cmd(["exec", "--", "echo two; exit 3"]).assert().code(3);
    env.cmd(["run", "hello", "-p", "name=q", "--detach"])
        .assert()
        .success();
    assert_eq!(env.runs().len(), 3);

    // Nothing to remove without saying what.
    env.cmd(["prune"]).assert().code(2);

    let dry = env.json(["prune", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["counts"]["runs"], 2, "{dry}");
    assert!(dry["counts"]["logs"].as_u64().unwrap() >= 2, "{dry}");
    assert_eq!(env.runs().len(), 3, "a dry run removes nothing");
    let text = stdout_of(
        &env.cmd(["prune", "--older-than", "0s", "--dry-run"])
            .assert()
            .success(),
    );
    assert!(text.contains("would remove 2 run(s)"), "{text}");

    let done = env.json(["prune", "--older-than", "0s", "--batch", "1"]);
    assert_eq!(done["counts"]["runs"], 2, "{done}");
    assert!(
        done["batches"].as_u64().unwrap() >= 4,
        "batches of one row: {done}"
    );
    let left = env.runs();
    assert_eq!(left.len(), 1, "the queued run stays");
    assert_eq!(left[0]["status"], "queued");

    let audit = env.json(["audit"]);
    let prunes: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "retention.prune")
        .collect();
    assert_eq!(prunes.len(), 1, "one audit event per prune: {audit}");
    assert_eq!(prunes[0]["detail"]["runs"], 2);
}

#[test]
fn audit_export_then_prune_verifies_from_the_checkpoint_and_tampering_fails() {
    let env = Env::new();
    env.apply_examples();
    for i in 0..3 {
        env.cmd(["exec", "--", &format!("echo {i}")])
            .assert()
            .success();
    }
    // Not exported yet: audit pruning keeps everything and says why.
    let held = env.json(["prune", "--audit-older-than", "0s"]);
    assert_eq!(held["counts"]["audit_events"], 0, "{held}");
    assert!(
        held["audit_kept_unexported"].as_u64().unwrap() > 0,
        "{held}"
    );

    let file = env.path().join("audit.jsonl");
    env.cmd(["audit", "export", "-o"])
        .arg(&file)
        .assert()
        .success();
    let exported: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(exported.len() >= 4, "{exported:?}");
    let seqs: Vec<u64> = exported
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps: {seqs:?}"
    );

    let pruned = env.json(["prune", "--audit-older-than", "0s"]);
    let n = pruned["counts"]["audit_events"].as_u64().unwrap();
    assert!(n >= 3, "{pruned}");
    let cp = &pruned["audit_checkpoint"];
    assert!(
        cp["seq"].as_u64().unwrap() <= *seqs.last().unwrap(),
        "never past the export: {pruned}"
    );

    let v = env.json(["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoint"]["seq"], cp["seq"], "{v}");

    // The first kept event altered: detected.
    sql(
        &env,
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = (SELECT MIN(seq) FROM audit_events)",
    );
    let out = env.cmd(["--json", "audit", "verify"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
}

#[test]
fn a_rewritten_checkpoint_fails_verification() {
    let env = Env::new();
    env.apply_examples();
    env.cmd(["exec", "--", "echo x"]).assert().success();
    env.cmd([
        "prune",
        "--audit-older-than",
        "0s",
        "--audit-without-export",
    ])
    .assert()
    .success();
    assert_eq!(env.json(["audit", "verify"])["ok"], true);
    sql(
        &env,
        "UPDATE audit_retention SET checkpoint_hash = 'forged'",
    );
    let out = env.cmd(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// `--batch` is a number of rows within the documented range (1-100000,
/// checked by the engine): zero, negative, oversized and non-numeric values
/// are refused with an error naming the flag and a non-zero exit, and
/// nothing is removed.
#[test]
fn prune_batch_outside_its_range_is_refused_and_removes_nothing() {
    let env = Env::new();
    env.cmd(["exec", "--", "echo one"]).assert().success();
    assert_eq!(env.runs().len(), 1);
    for bad in [
        "0",
        "100001",
        "18446744073709551615",
        "99999999999999999999999999",
        "-1",
        "-100",
        "ten",
        "",
    ] {
        let arg = format!("--batch={bad}");
        let out = env
            .cmd(["prune", "--older-than", "0s", &arg])
            .assert()
            .failure()
            .get_output()
            .clone();
        assert_ne!(out.status.code(), Some(0), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--batch"), "names the flag for {bad:?}: {err}");
        assert!(err.contains("100000"), "says the range for {bad:?}: {err}");
    }
    // A separate negative value, as a user types it.
    let out = env
        .cmd(["prune", "--older-than", "0s", "--batch", "-5"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch") && err.contains("negative"), "{err}");
    assert_eq!(env.runs().len(), 1, "nothing was pruned");

    // Both ends of the range work.
    env.cmd(["prune", "--older-than", "1d", "--batch", "1"])
        .assert()
        .success();
    let done = env.json(["prune", "--older-than", "0s", "--batch", "100000"]);
    assert_eq!(done["counts"]["runs"], 1, "{done}");
}
