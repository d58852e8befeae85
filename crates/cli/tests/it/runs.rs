//! `opsconductor runs …` (list, show, logs, cancel of finished runs) and
//! `--help` everywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Env, lines, marker, stderr_of, stdout_of};
use predicates::prelude::*;
use serde_json::Value;

/// Three runs: hello (succeeded), a failing exec, a succeeding exec with
/// output on both streams. Returns their ids in that order.
fn three_runs(env: &Env, tag: &str) -> (String, String, String) {
    env.apply_examples();
    env.cmd(["run", "hello", "-p", "name=lister"])
        .assert()
        .success();
    env.cmd(["exec", "--", &format!("echo failing-{tag}; exit 4")])
        .assert()
        .code(4);
    env.cmd(["exec", "--", &format!("echo out-{tag}; echo err-{tag} >&2")])
        .assert()
        .success();
    let runs = env.runs();
    assert_eq!(runs.len(), 3);
    let id = |i: usize| runs[i]["id"].as_str().unwrap().to_string();
    // Newest first.
    (id(2), id(1), id(0))
}

#[test]
fn runs_list_table_json_and_filters() {
    let env = Env::new();
    let m = marker();
    let (hello, failed, ok) = three_runs(&env, &m);

    let runs = env.runs();
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![ok.as_str(), failed.as_str(), hello.as_str()],
        "newest first"
    );
    assert_eq!(runs[2]["job"], "hello");
    assert_eq!(runs[2]["status"], "succeeded");
    assert_eq!(runs[1]["job"], "exec");
    assert_eq!(runs[1]["status"], "failed");

    let a = env.cmd(["runs", "list"]).assert().success();
    let out = stdout_of(&a);
    let l = lines(&out);
    assert!(
        predicate::str::is_match(r"^ID\s+JOB\s+STATUS\s+TARGETS\s+BY\s+CREATED\s+TOOK$")
            .unwrap()
            .eval(l[0]),
        "{out}"
    );
    assert_eq!(l.len(), 4, "{out}");
    assert!(
        predicate::str::is_match(format!(
            r"(?m)^{hello}\s+hello v1\s+succeeded\s+local\s+local\s"
        ))
        .unwrap()
        .eval(&out),
        "{out}"
    );
    assert!(
        predicate::str::is_match(format!(r"(?m)^{failed}\s+exec\s+failed\s+local\s"))
            .unwrap()
            .eval(&out),
        "{out}"
    );

    let failed_only = env.json(["runs", "list", "--status", "failed"]);
    let failed_only = failed_only.as_array().unwrap();
    assert_eq!(failed_only.len(), 1);
    assert_eq!(failed_only[0]["id"].as_str(), Some(failed.as_str()));
    env.cmd(["runs", "list", "--status", "failed"])
        .assert()
        .success()
        .stdout(predicate::str::contains(&failed))
        .stdout(predicate::str::contains(&ok).not())
        .stdout(predicate::str::contains(&hello).not());
    // Several statuses, comma-separated or repeated.
    let two = env.json(["runs", "list", "--status", "failed,succeeded"]);
    assert_eq!(two.as_array().unwrap().len(), 3);
    let two = env.json(["runs", "list", "--status", "failed", "--status", "running"]);
    assert_eq!(two.as_array().unwrap().len(), 1);

    let hello_only = env.json(["runs", "list", "--job", "hello"]);
    let hello_only = hello_only.as_array().unwrap();
    assert_eq!(hello_only.len(), 1);
    assert_eq!(hello_only[0]["id"].as_str(), Some(hello.as_str()));
    env.cmd(["runs", "list", "--job", "hello"])
        .assert()
        .success()
        .stdout(predicate::str::contains(&hello))
        .stdout(predicate::str::contains(&failed).not());
    assert_eq!(
        env.json(["runs", "list", "--job", "exec"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        env.json(["runs", "list", "--limit", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Nothing matching: no table, a note on stderr; JSON is [].
    let a = env
        .cmd(["runs", "list", "--status", "cancelled"])
        .assert()
        .success();
    assert_eq!(stdout_of(&a), "");
    assert_eq!(
        env.json(["runs", "list", "--job", "nope"]),
        Value::Array(vec![])
    );

    // Bad filters.
    env.cmd(["runs", "list", "--status", "bogus"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bogus"))
        .stderr(predicate::str::contains("timed_out"));
    env.cmd(["runs", "list", "--limit", "0"]).assert().code(2);
}

#[test]
fn runs_show_by_id_and_prefix() {
    let env = Env::new();
    let m = marker();
    let (hello, failed, _ok) = three_runs(&env, &m);

    env.cmd(["runs", "show", &failed])
        .assert()
        .success()
        .stdout(predicate::str::is_match(format!(r"(?m)^Run:\s+{failed}$")).unwrap())
        .stdout(predicate::str::is_match(r"(?m)^Job:\s+exec \(ad-hoc command\)$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^Status:\s+failed$").unwrap())
        .stdout(predicate::str::contains("exit code 4"))
        .stdout(predicate::str::is_match(r"(?m)^1\. exec\s+local\s+failed\s+4\s").unwrap());
    env.cmd(["runs", "show", &hello])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^Job:\s+hello \(version 1\)$").unwrap())
        .stdout(predicate::str::contains(r#"{"name":"lister"}"#))
        .stdout(predicate::str::is_match(r"(?m)^1\. greet\s+local\s+succeeded\s+0\s").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^2\. where\s+local\s+succeeded\s+0\s").unwrap());

    // A unique prefix: the id without its last 4 characters (the first
    // characters of a UUIDv7 are a timestamp, shared by runs made together).
    let prefix = &failed[..failed.len() - 4];
    let by_prefix = env.json(["runs", "show", prefix]);
    assert_eq!(by_prefix["id"].as_str(), Some(failed.as_str()));
    assert_eq!(by_prefix["results"][0]["exit_code"], 4);
    // Upper case works too.
    let upper = env.json(["runs", "show", &prefix.to_uppercase()]);
    assert_eq!(upper["id"].as_str(), Some(failed.as_str()));

    // Four characters match all three runs: ambiguous.
    env.cmd(["runs", "show", &failed[..4]])
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("matches several runs"));
    // Too short, not hex, unknown.
    env.cmd(["runs", "show", &failed[..3]])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least 4"));
    env.cmd(["runs", "show", "zzzz"]).assert().code(2);
    let unknown = "00000000-0000-7000-8000-000000000000";
    env.cmd(["runs", "show", unknown])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "run '{unknown}' not found"
        )));
    env.cmd(["runs", "show", "0000000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not found"));
}

#[test]
fn runs_logs_prints_stored_output() {
    let env = Env::new();
    let m = marker();
    let (_hello, _failed, ok) = three_runs(&env, &m);
    let a = env.cmd(["runs", "logs", &ok]).assert().success();
    assert_eq!(stdout_of(&a), format!("local | out-{m}\n"));
    assert!(stderr_of(&a).contains(&format!("local | err-{m}")));
    // --follow on a finished run prints the same and ends.
    let a = env
        .cmd(["runs", "logs", "--follow", &ok])
        .assert()
        .success();
    assert_eq!(stdout_of(&a), format!("local | out-{m}\n"));
    assert!(stderr_of(&a).contains(&format!("local | err-{m}")));
    // By prefix.
    env.cmd(["runs", "logs", &ok[..ok.len() - 4]])
        .assert()
        .success()
        .stdout(format!("local | out-{m}\n"));
    // JSON lines, one per chunk.
    let a = env.cmd(["--json", "runs", "logs", &ok]).assert().success();
    let chunks: Vec<Value> = lines(&stdout_of(&a))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .any(|c| c["stream"] == "stdout" && c["data"] == format!("out-{m}\n"))
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["stream"] == "stderr" && c["data"] == format!("err-{m}\n"))
    );

    env.cmd(["runs", "logs", "00000000-0000-7000-8000-000000000000"])
        .assert()
        .code(2);
}

#[test]
fn cancelling_finished_or_unknown_runs() {
    let env = Env::new();
    env.cmd(["exec", "--", "true"]).assert().success();
    let id = env.runs()[0]["id"].as_str().unwrap().to_string();
    env.cmd(["runs", "cancel", &id])
        .assert()
        .success()
        .stdout(format!("run {id} had already ended (succeeded)\n"));
    assert_eq!(
        env.runs()[0]["status"],
        "succeeded",
        "a finished run stays as it was"
    );
    let v = env.json(["runs", "cancel", &id]);
    assert_eq!(v["status"], "succeeded");
    env.cmd(["runs", "cancel", "00000000-0000-7000-8000-000000000000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not found"));
    env.cmd(["runs", "cancel", "xyz"]).assert().code(2);
}

// --- help ---------------------------------------------------------------------------

#[test]
fn help_everywhere() {
    let env = Env::new();
    let a = env.cmd(["--help"]).assert().success();
    let out = stdout_of(&a);
    for sub in ["apply", "run", "exec", "runs", "jobs", "targets"] {
        assert!(
            predicate::str::is_match(format!(r"(?m)^\s+{sub}\s+\S"))
                .unwrap()
                .eval(&out),
            "top-level help should list {sub}: {out}"
        );
    }
    assert!(out.contains("--database-url"));
    assert!(out.contains("Quick start"));

    let groups: &[(&str, &[&str])] = &[
        ("runs", &["list", "show", "logs", "cancel"]),
        ("jobs", &["list", "show", "versions"]),
        ("targets", &["list", "show"]),
    ];
    for (group, subs) in groups {
        let a = env.cmd([*group, "--help"]).assert().success();
        let out = stdout_of(&a);
        for sub in *subs {
            assert!(
                predicate::str::is_match(format!(r"(?m)^\s+{sub}\s+\S"))
                    .unwrap()
                    .eval(&out),
                "`{group} --help` should list {sub}: {out}"
            );
            env.cmd([*group, sub, "--help"])
                .assert()
                .success()
                .stdout(predicate::str::contains("Usage: opsconductor"));
        }
    }
    for (cmd, needle) in [
        ("apply", "--dry-run"),
        ("run", "--params-file"),
        ("exec", "--timeout"),
    ] {
        env.cmd([cmd, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains(needle));
    }
    env.cmd(["help", "runs"]).assert().success();
    env.cmd(["--version"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("opsconductor "));
    // Usage errors exit 2.
    env.cmd(Vec::<&str>::new()).assert().code(2);
    env.cmd(["frobnicate"]).assert().code(2);
    env.cmd(["runs"]).assert().code(2);
}

#[test]
fn database_url_from_the_environment() {
    let env = Env::new();
    let url = env.url.clone();
    let mut c = assert_cmd::Command::cargo_bin("opsconductor").unwrap();
    c.current_dir(env.path())
        .env("OPSC_DATABASE_URL", &url)
        .args(["--color", "never", "exec", "--", "echo via-env"])
        .timeout(common::HANG_GUARD)
        .assert()
        .success()
        .stdout("local | via-env\n");
    assert_eq!(env.runs().len(), 1, "the run went into the env's database");
}

#[test]
fn no_configuration_means_opsconductor_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cli = || {
        let mut c = assert_cmd::Command::cargo_bin("opsconductor").unwrap();
        c.current_dir(dir.path())
            .env_remove("OPSC_DATABASE_URL")
            .env_remove("OPSC_MASTER_KEY")
            .env_remove("OPSC_MASTER_KEY_FILE")
            .env_remove("OPSC_MASTER_PASSPHRASE")
            .args(["--color", "never"])
            .timeout(common::HANG_GUARD);
        c
    };
    cli()
        .args(["exec", "--", "echo zero-config"])
        .assert()
        .success()
        .stdout("local | zero-config\n");
    assert!(dir.path().join("opsconductor.db").is_file());
    let out = cli().args(["--json", "runs", "list"]).assert().success();
    let runs: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
}

/// Read-only commands refuse a database that does not exist (exit 2, "no
/// database at …") instead of creating an empty one and reporting success
/// on it (an empty audit log "verifies"); commands that create state still
/// create it.
#[test]
fn read_only_commands_refuse_a_missing_database() {
    let env = Env::new();
    let db = env.path().join("t.db");
    for args in [
        vec!["audit", "verify"],
        vec!["audit"],
        vec!["runs", "list"],
        vec!["runs", "show", "0123abcd"],
        vec!["jobs", "list"],
        vec!["targets", "list"],
        vec!["secrets", "list"],
        vec!["secrets", "keys"],
    ] {
        let out = env.cmd(&args).assert().code(2);
        let err = stderr_of(&out);
        assert!(
            err.contains(&format!("no database at {}", db.display())),
            "{args:?}: {err}"
        );
        assert!(!db.exists(), "{args:?} created {}", db.display());
    }
    // Creating state creates the database; then reading works.
    env.apply_examples();
    assert!(db.exists());
    env.cmd(["runs", "list"]).assert().success();
    env.cmd(["audit", "verify"]).assert().success();
}
