//! `opsconductor run` and `exec`: parameters, output, exit codes, and input
//! errors that queue nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Env, lines, stderr_of, stdout_of};
use predicates::prelude::*;
use serde_json::Value;

/// Expects exit 2, one `error:` line on stderr containing every needle,
/// nothing on stdout, and no run queued.
fn assert_refused(env: &Env, args: &[&str], needles: &[&str]) -> String {
    let a = env
        .cmd(args)
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty());
    let err = stderr_of(&a);
    let l = lines(&err);
    assert_eq!(l.len(), 1, "expected one message, got: {err}");
    assert!(l[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(l[0].contains(n), "the message should contain {n:?}: {err}");
    }
    assert_eq!(env.runs(), Vec::<Value>::new(), "a run was queued");
    err
}

// --- run: input errors ------------------------------------------------------------

#[test]
fn run_unknown_job() {
    let env = Env::new();
    assert_refused(
        &env,
        &["run", "nope"],
        &["job 'nope' not found", "no jobs defined yet"],
    );
    env.apply_examples();
    assert_refused(
        &env,
        &["run", "nope"],
        &["job 'nope' not found", "known jobs: deploy, hello"],
    );
}

#[test]
fn run_parameter_violating_the_schema() {
    let env = Env::new();
    env.apply_examples();
    assert_refused(
        &env,
        &["run", "deploy", "-p", "version=abc"],
        &["params.version", "abc"],
    );
    // A required one missing.
    assert_refused(&env, &["run", "deploy"], &["version", "required"]);
    // Out of range.
    assert_refused(
        &env,
        &["run", "deploy", "-p", "version=1.2.3", "-p", "slow=99"],
        &["params.slow", "99"],
    );
    // Too long for maxLength.
    let long = format!("name={}", "x".repeat(65));
    assert_refused(&env, &["run", "hello", "-p", &long], &["params.name"]);
}

#[test]
fn run_unknown_parameter() {
    let env = Env::new();
    env.apply_examples();
    assert_refused(
        &env,
        &["run", "deploy", "-p", "version=1.2.3", "-p", "colour=blue"],
        &["params", "colour"],
    );
    // A job without a params schema takes none.
    env.apply_yaml(
        "plain.yaml",
        "kind: Job\nname: plain\nsteps:\n  - exec: echo hi\n",
    );
    assert_refused(
        &env,
        &["run", "plain", "-p", "x=1"],
        &["params.x", "no parameters"],
    );
}

#[test]
fn run_unknown_parameter_names_the_field() {
    let env = Env::new();
    env.apply_examples();
    assert_refused(
        &env,
        &["run", "deploy", "-p", "version=1.2.3", "-p", "colour=blue"],
        &["params.colour"],
    );
}

#[test]
fn run_wrongly_typed_parameter() {
    let env = Env::new();
    env.apply_examples();
    assert_refused(
        &env,
        &["run", "deploy", "-p", "version=1.2.3", "-p", "slow=x"],
        &["params.slow", "'x'", "integer"],
    );
    // Not key=value at all.
    assert_refused(&env, &["run", "hello", "-p", "name"], &["-p", "key=value"]);
}

#[test]
fn run_unknown_target_selector() {
    let env = Env::new();
    env.apply_examples();
    assert_refused(
        &env,
        &["run", "hello", "-t", "nope"],
        &["no target matches 'nope'", "known targets", "app-1"],
    );
    assert_refused(&env, &["run", "hello", "-t", "tag:nope"], &["tag:nope"]);
}

#[test]
fn run_template_error_at_render_time() {
    let env = Env::new();
    env.apply_yaml(
        "missing.yaml",
        "kind: Job\nname: missing\nsteps:\n  - name: first\n    exec: echo ok\n  - name: render-me\n    exec: echo {{ params.missing }}\n",
    );
    assert_refused(
        &env,
        &["run", "missing"],
        &["render-me", "'local'", "params.missing"],
    );
}

#[test]
fn run_unknown_version() {
    let env = Env::new();
    env.apply_examples();
    assert_refused(&env, &["run", "hello", "--version", "7"], &["hello@7"]);
}

// --- run: output ----------------------------------------------------------------

#[test]
fn run_follow_prefixes_lines_and_exits_0() {
    let env = Env::new();
    env.apply_examples();
    let a = env
        .cmd(["run", "hello", "-p", "name=Ada Lovelace", "--follow"])
        .assert()
        .success();
    let out = stdout_of(&a);
    let l = lines(&out);
    assert_eq!(l.first(), Some(&"local | Hello, Ada Lovelace"), "{out}");
    assert!(l.iter().all(|x| x.starts_with("local | ")), "{out}");
    assert!(l.iter().any(|x| x.starts_with("local | on ")), "{out}");
    // Status lines go to stderr, never into the output.
    let err = stderr_of(&a);
    assert!(err.contains("hello v1"), "{err}");
    assert!(err.contains("succeeded"), "{err}");
    let runs = env.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["params"]["name"], "Ada Lovelace");
}

#[test]
fn hostile_parameter_stays_a_string() {
    let env = Env::new();
    env.apply_examples();
    let pwned = env.path().join("pwned");
    let name = format!("x; touch {}", pwned.display());
    let name2 = format!("$(touch {})", pwned.display());
    for n in [&name, &name2] {
        env.cmd(["run", "hello", "--follow", "-p"])
            .arg(format!("name={n}"))
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("local | Hello, {n}\n")));
    }
    assert!(!pwned.exists(), "a parameter ran as code");
}

#[test]
fn no_prefix_prints_raw_lines() {
    let env = Env::new();
    env.apply_examples();
    let a = env
        .cmd(["run", "hello", "-p", "name=Bob", "--follow", "--no-prefix"])
        .assert()
        .success();
    let out = stdout_of(&a);
    assert_eq!(lines(&out)[0], "Hello, Bob", "{out}");
    assert!(!out.contains(" | "), "{out}");
    env.cmd(["exec", "--no-prefix", "--", "echo raw"])
        .assert()
        .success()
        .stdout("raw\n");
}

#[test]
fn run_json_prints_the_final_run() {
    let env = Env::new();
    env.apply_examples();
    let v = env.json(["run", "hello", "-p", "name=Json"]);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["job"], "hello");
    assert_eq!(v["job_version"], 1);
    assert_eq!(v["params"]["name"], "Json");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v}");
    for r in results {
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["target"], "local");
    }
    assert_eq!(env.runs()[0]["id"], v["id"]);
}

#[test]
fn run_follow_json_is_json_lines_ending_with_the_run() {
    let env = Env::new();
    env.apply_examples();
    let a = env
        .cmd(["--json", "run", "hello", "-p", "name=Lines", "--follow"])
        .assert()
        .success();
    let out = stdout_of(&a);
    let values: Vec<Value> = lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let (last, chunks) = values.split_last().unwrap();
    assert_eq!(last["status"], "succeeded", "{out}");
    assert!(
        chunks
            .iter()
            .any(|c| c["data"].as_str().unwrap_or("").contains("Hello, Lines")),
        "{out}"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["target"] == "local" && c["seq"].is_u64())
    );
}

#[test]
fn run_without_follow_shows_progress_per_target() {
    let env = Env::new();
    env.apply_examples();
    env.apply_yaml(
        "two.yaml",
        "kind: Job\nname: two\ntargets: [app-1, app-2]\nsteps:\n  - exec: echo on $OPSC_TARGET\n",
    );
    env.cmd(["run", "two"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^✓ app-1\s+succeeded").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^✓ app-2\s+succeeded").unwrap())
        .stdout(predicate::str::contains("on app-1").not());
    // The output was stored all the same.
    let id = env.runs()[0]["id"].as_str().unwrap().to_string();
    env.cmd(["runs", "logs", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("app-1 | on app-1"))
        .stdout(predicate::str::contains("app-2 | on app-2"));
}

// --- parameters from a file -----------------------------------------------------

const PARAMS_JOB: &str = r#"kind: Job
name: params
params:
  type: object
  properties:
    version: {type: string}
    count: {type: integer}
    flag: {type: boolean, default: false}
  required: [version, count]
  additionalProperties: false
steps:
  - exec: echo "v={{ params.version }} c={{ params.count }}"
"#;

#[test]
fn params_file_with_overrides() {
    let env = Env::new();
    env.apply_yaml("params.yaml", PARAMS_JOB);
    let file = env.write("p.yaml", "version: 1.0.0\ncount: 3\nflag: true\n");
    env.cmd(["run", "params", "--follow", "--params-file"])
        .arg(&file)
        .args(["-p", "version=2.0.0"])
        .assert()
        .success()
        .stdout("local | v=2.0.0 c=3\n");
    let r = &env.runs()[0];
    assert_eq!(r["params"]["version"], "2.0.0");
    assert_eq!(r["params"]["count"], 3);
    assert_eq!(r["params"]["flag"], true);

    // JSON is YAML too; -p is typed by the schema.
    let file = env.write("p.json", r#"{"version": "3.0.0", "count": 1}"#);
    env.cmd(["run", "params", "--follow", "--params-file"])
        .arg(&file)
        .args(["-p", "count=7"])
        .assert()
        .success()
        .stdout("local | v=3.0.0 c=7\n");
    assert_eq!(env.runs()[0]["params"]["count"], 7);
}

#[test]
fn boolean_parameter_renders_as_shell_true() {
    let env = Env::new();
    env.apply_yaml(
        "bool.yaml",
        "kind: Job\nname: flag\nparams:\n  type: object\n  properties:\n    on: {type: boolean}\nsteps:\n  - exec: if {{ params.on }}; then echo yes; else echo no; fi\n",
    );
    env.cmd(["run", "flag", "--follow", "-p", "on=true"])
        .assert()
        .success()
        .stdout("local | yes\n");
    env.cmd(["run", "flag", "--follow", "-p", "on=false"])
        .assert()
        .success()
        .stdout("local | no\n");
}

#[test]
fn bad_params_files() {
    let env = Env::new();
    env.apply_yaml("params.yaml", PARAMS_JOB);
    let missing = env.path().join("missing.yaml");
    assert_refused(
        &env,
        &["run", "params", "--params-file", missing.to_str().unwrap()],
        &["missing.yaml", "cannot read"],
    );
    let broken = env.write("broken.yaml", "version: [1\n");
    assert_refused(
        &env,
        &["run", "params", "--params-file", broken.to_str().unwrap()],
        &["broken.yaml"],
    );
    let list = env.write("list.yaml", "- 1\n- 2\n");
    assert_refused(
        &env,
        &["run", "params", "--params-file", list.to_str().unwrap()],
        &["list.yaml", "object"],
    );
    let wrong = env.write("wrong.yaml", "version: 1.0.0\ncount: many\n");
    assert_refused(
        &env,
        &["run", "params", "--params-file", wrong.to_str().unwrap()],
        &["params.count"],
    );
}

// --- exit codes -------------------------------------------------------------------

#[test]
fn single_target_step_exit_code_is_the_run_exit_code() {
    let env = Env::new();
    env.apply_yaml(
        "three.yaml",
        "kind: Job\nname: three\nsteps:\n  - name: fail\n    exec: echo before; exit 3\n  - name: never\n    exec: echo never\n",
    );
    let a = env.cmd(["run", "three", "--follow"]).assert().code(3);
    assert_eq!(stdout_of(&a), "local | before\n");
    let err = stderr_of(&a);
    assert!(err.contains("failed"), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    assert_eq!(env.runs()[0]["status"], "failed");
    // Without --follow it points at the logs.
    env.cmd(["run", "three"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("opsconductor runs logs"));
}

#[test]
fn failing_multi_target_run_exits_1() {
    let env = Env::new();
    env.apply_examples();
    env.apply_yaml(
        "multi.yaml",
        "kind: Job\nname: multi\ntargets: tag:app\nsteps:\n  - exec: \"if [ $OPSC_TARGET = app-2 ]; then exit 3; fi; echo fine\"\n",
    );
    let a = env.cmd(["run", "multi", "--follow"]).assert().code(1);
    let out = stdout_of(&a);
    assert_eq!(out, "app-1 | fine\n", "only the output on stdout");
    let err = stderr_of(&a);
    assert!(
        predicate::str::is_match(r"(?m)^app-1\s+succeeded\s+0\s")
            .unwrap()
            .eval(&err),
        "{err}"
    );
    assert!(
        predicate::str::is_match(r"(?m)^app-2\s+failed\s+3\s.*exit code 3")
            .unwrap()
            .eval(&err),
        "{err}"
    );
    // Several targets failing with the same code still give 1.
    env.cmd(["exec", "-t", "tag:app", "--", "exit 3"])
        .assert()
        .code(1);
}

#[test]
fn exec_timeout_exits_124() {
    let env = Env::new();
    let a = env
        .cmd(["exec", "--timeout", "1s", "--", "sleep", "30"])
        .assert()
        .code(124);
    let err = stderr_of(&a);
    assert!(err.contains("timed_out"), "{err}");
    assert!(err.contains("time limit"), "{err}");
    assert_eq!(env.runs()[0]["status"], "timed_out");
}

#[test]
fn exec_exit_codes() {
    let env = Env::new();
    env.cmd(["exec", "--", "false"]).assert().code(1);
    env.cmd(["exec", "--", "exit 7"]).assert().code(7);
    env.cmd(["exec", "--", "true"]).assert().code(0);
    // Several words are joined, as ssh does.
    env.cmd(["exec", "--", "echo", "a", "b"])
        .assert()
        .success()
        .stdout("local | a b\n");
    // stderr of the command goes to stderr.
    env.cmd(["exec", "--", "echo oops >&2"])
        .assert()
        .success()
        .stdout("")
        .stderr(predicate::str::contains("local | oops"));
    assert_eq!(env.runs().len(), 5);
}

#[test]
fn exec_input_errors_exit_2_and_queue_nothing() {
    let env = Env::new();
    assert_refused(
        &env,
        &["exec", "-t", "nope", "--", "true"],
        &["no target matches 'nope'"],
    );
    assert_refused(&env, &["exec", "--", " "], &["command", "empty"]);
    assert_refused(
        &env,
        &["exec", "--concurrency", "0", "--", "true"],
        &["concurrency"],
    );
    // Usage errors (clap).
    env.cmd(["exec", "--timeout", "5x", "--", "true"])
        .assert()
        .code(2);
    env.cmd(["exec"]).assert().code(2);
    assert_eq!(env.runs(), Vec::<Value>::new());
}

#[test]
fn exec_on_several_targets() {
    let env = Env::new();
    env.apply_examples();
    let a = env
        .cmd(["exec", "-t", "tag:app", "--", "echo hi from $OPSC_TARGET"])
        .assert()
        .success();
    let out = stdout_of(&a);
    let mut l = lines(&out);
    l.sort();
    assert_eq!(l, vec!["app-1 | hi from app-1", "app-2 | hi from app-2"]);
    assert!(stderr_of(&a).contains("2 target(s)"));
}

#[test]
fn exit_code_comes_from_the_step_that_failed_the_run() {
    let env = Env::new();
    env.apply_yaml(
        "tolerated.yaml",
        "kind: Job\nname: tolerated\nsteps:\n  - name: optional\n    exec: exit 5\n    continue_on_error: true\n  - name: real\n    exec: exit 3\n",
    );
    // Step 1 may fail (5); step 2 failing (3) is what failed the run.
    env.cmd(["run", "tolerated"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "step 'real' on local: exit code 3",
        ));
    // Only a tolerated failure: the run succeeds.
    env.apply_yaml(
        "tolerated.yaml",
        "kind: Job\nname: tolerated\nsteps:\n  - name: optional\n    exec: exit 5\n    continue_on_error: true\n  - name: real\n    exec: echo fine\n",
    );
    env.cmd(["run", "tolerated", "--follow"])
        .assert()
        .success()
        .stdout("local | fine\n");
    // Several targets: the summary shows the failing step's code and error.
    env.apply_yaml("t.yaml", "kind: Target\nname: other\n");
    env.apply_yaml(
        "tolerated.yaml",
        "kind: Job\nname: tolerated\ntargets: [local, other]\nsteps:\n  - name: optional\n    exec: exit 5\n    continue_on_error: true\n  - name: real\n    exec: exit 3\n",
    );
    let a = env.cmd(["run", "tolerated"]).assert().code(1);
    let err = stderr_of(&a);
    for t in ["local", "other"] {
        assert!(
            predicate::str::is_match(format!(r"(?m)^{t}\s+failed\s+3\s+\S+\s+exit code 3$"))
                .unwrap()
                .eval(&err),
            "{err}"
        );
    }
}

#[test]
fn exec_json_is_json_lines_ending_with_the_run() {
    let env = Env::new();
    let a = env
        .cmd(["--json", "exec", "--", "echo one; echo two"])
        .assert()
        .success();
    let out = stdout_of(&a);
    let values: Vec<Value> = lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let (last, chunks) = values.split_last().unwrap();
    assert_eq!(last["status"], "succeeded", "{out}");
    assert_eq!(last["job"], "exec");
    let text: String = chunks
        .iter()
        .map(|c| c["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "one\ntwo\n");
    assert_eq!(stderr_of(&a), "", "no notes in JSON mode");
}

#[test]
fn store_errors_exit_1() {
    let env = Env::new();
    let url = format!("sqlite://{}/missing-dir/t.db", env.path().display());
    let mut c = assert_cmd::Command::cargo_bin("opsconductor").unwrap();
    c.env_remove("OPSC_DATABASE_URL")
        .args(["--color", "never", "--database-url", &url, "runs", "list"])
        .timeout(common::HANG_GUARD)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing-dir"));
    let mut c = assert_cmd::Command::cargo_bin("opsconductor").unwrap();
    c.env_remove("OPSC_DATABASE_URL")
        .args([
            "--color",
            "never",
            "--database-url",
            "mysql://x",
            "runs",
            "list",
        ])
        .timeout(common::HANG_GUARD)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("mysql"));
}
