//! `opsconductor apply` and `jobs`/`targets`: creating, versioning, and
//! refusing bad input with one clear message and nothing half-written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Env, examples, lines, stderr_of, stdout_of};
use predicates::prelude::*;
use serde_json::Value;

/// `(kind, name, action, version)` of each `apply --json` item, sorted.
fn items(v: &Value) -> Vec<(String, String, String, Option<u64>)> {
    let mut all: Vec<_> = v
        .as_array()
        .expect("an array of items")
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
                i["version"].as_u64(),
            )
        })
        .collect();
    all.sort();
    all
}

fn item(
    kind: &str,
    name: &str,
    action: &str,
    version: Option<u64>,
) -> (String, String, String, Option<u64>) {
    (kind.into(), name.into(), action.into(), version)
}

#[test]
fn apply_creates_then_unchanged_then_updated_with_versions() {
    let env = Env::new();
    // A copy of the examples, so that one can be edited.
    let jobs = env.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    for f in ["deploy.yaml", "hello.yaml"] {
        std::fs::copy(examples().join(f), jobs.join(f)).unwrap();
    }

    // First apply: everything is created (the table for people).
    env.cmd(["apply", "-f"])
        .arg(examples())
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^KIND\s+NAME\s+ACTION\s+VERSION$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^job\s+hello\s+created\s+1$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^job\s+deploy\s+created\s+1$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^target\s+app-1\s+created$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^target\s+app-2\s+created$").unwrap());

    // Again, from the copy: nothing changed.
    let v = env.json(["apply", "-f", jobs.to_str().unwrap()]);
    assert_eq!(
        items(&v),
        vec![
            item("job", "deploy", "unchanged", Some(1)),
            item("job", "hello", "unchanged", Some(1)),
            item("target", "app-1", "unchanged", None),
            item("target", "app-2", "unchanged", None),
        ]
    );
    env.cmd(["apply", "-f"])
        .arg(&jobs)
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^job\s+hello\s+unchanged\s+1$").unwrap());

    // Change hello: a new version; the rest stays.
    let hello = jobs.join("hello.yaml");
    let text = std::fs::read_to_string(&hello).unwrap();
    let changed = text.replace("Greets someone", "Greets anyone");
    assert_ne!(text, changed, "the example changed; adjust this test");
    std::fs::write(&hello, changed).unwrap();
    let v = env.json(["apply", "-f", jobs.to_str().unwrap()]);
    assert_eq!(
        items(&v),
        vec![
            item("job", "deploy", "unchanged", Some(1)),
            item("job", "hello", "updated", Some(2)),
            item("target", "app-1", "unchanged", None),
            item("target", "app-2", "unchanged", None),
        ]
    );

    // Both versions are kept.
    let versions = env.json(["jobs", "versions", "hello"]);
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers.len(), 2, "{versions}");
    assert!(numbers.contains(&1) && numbers.contains(&2), "{versions}");
    env.cmd(["jobs", "versions", "hello"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^VERSION\s+STATUS\s+STORED\s+BY$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^1\s+active\s").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^2\s+active\s").unwrap());

    // Version 1 still shows the old text; the latest shows the new one.
    env.cmd(["jobs", "show", "hello", "--version", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Greets someone"))
        .stdout(predicate::str::is_match(r"(?m)^Version:\s+1 ").unwrap())
        .stdout(predicate::str::contains("1. greet"))
        .stdout(predicate::str::contains("2. where"));
    env.cmd(["jobs", "show", "hello"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Greets anyone"))
        .stdout(predicate::str::is_match(r"(?m)^Version:\s+2 ").unwrap());
    let v1 = env.json(["jobs", "show", "hello", "--version", "1"]);
    assert_eq!(v1["version"], 1);
    assert!(
        v1["spec"]["description"]
            .as_str()
            .unwrap()
            .contains("Greets someone")
    );

    // A version that does not exist.
    env.cmd(["jobs", "show", "hello", "--version", "9"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("hello@9"));

    // jobs list shows the latest versions.
    env.cmd(["jobs", "list"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^hello\s+2\s+active\s+2\s+local\s").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^deploy\s+1\s+active\s+4\s+tag:app\s").unwrap());
}

#[test]
fn dry_run_checks_and_stores_nothing() {
    let env = Env::new();
    env.cmd(["apply", "--dry-run", "-f"])
        .arg(examples())
        .assert()
        .success()
        .stdout(predicate::str::contains("2 target(s), 2 job(s)"))
        .stdout(predicate::str::contains("nothing stored"));
    env.assert_pristine();
}

#[test]
fn apply_from_stdin() {
    let env = Env::new();
    env.cmd(["apply", "-f", "-"])
        .write_stdin("kind: Job\nname: piped\nsteps:\n  - exec: echo piped\n")
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^job\s+piped\s+created\s+1$").unwrap());
    assert_eq!(env.job_names(), vec!["piped"]);
}

// --- bad input ----------------------------------------------------------------

/// A valid target and job placed before the broken document in every bad
/// file, to prove that nothing of a rejected batch is stored.
const GOOD_PREFIX: &str = "kind: Target\nname: half-written\ntags: [x]\n---\nkind: Job\nname: half-job\nsteps:\n  - exec: echo half\n---\n";

/// Applies `paths`, expecting exit 2, empty stdout and exactly one line on
/// stderr that contains every `needle`; then checks that nothing was stored.
fn assert_rejected(env: &Env, paths: &[&std::path::Path], needles: &[&str]) -> String {
    let mut cmd = env.cmd(["apply"]);
    for p in paths {
        cmd.arg("-f").arg(p);
    }
    let a = cmd.assert().code(2).stdout(predicate::str::is_empty());
    let err = stderr_of(&a);
    let l = lines(&err);
    assert_eq!(l.len(), 1, "expected one message, got: {err}");
    assert!(l[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(l[0].contains(n), "the message should contain {n:?}: {err}");
    }
    env.assert_pristine();
    err
}

#[test]
fn malformed_yaml_names_file_line_and_column() {
    let env = Env::new();
    let p = env.write(
        "broken.yaml",
        &format!("{GOOD_PREFIX}kind: Job\nname: a\nsteps:\n  - exec: echo: hi\n"),
    );
    let err = assert_rejected(&env, &[&p], &["broken.yaml:"]);
    // The syntax error is on line 13 of the file (4 of its last document).
    assert!(
        predicate::str::is_match(r"broken\.yaml:13:\d+: ")
            .unwrap()
            .eval(&err),
        "{err}"
    );
}

#[test]
fn unknown_key_names_the_key_and_its_line() {
    let env = Env::new();
    let p = env.write(
        "typo.yaml",
        &format!("{GOOD_PREFIX}kind: Job\nname: a\nsteps:\n  - name: s\n    exce: echo hi\n"),
    );
    let err = assert_rejected(&env, &[&p], &["typo.yaml:14:", "exce"]);
    assert!(err.contains("exec"), "it should list the known keys: {err}");
}

#[test]
fn step_with_two_actions() {
    let env = Env::new();
    let p = env.write(
        "two.yaml",
        &format!(
            "{GOOD_PREFIX}kind: Job\nname: a\nsteps:\n  - name: s\n    exec: echo hi\n    script: echo ho\n"
        ),
    );
    assert_rejected(
        &env,
        &[&p],
        &["two.yaml", "job 'a'", "steps[0]", "exactly one"],
    );
}

#[test]
fn document_without_kind() {
    let env = Env::new();
    let p = env.write(
        "nokind.yaml",
        &format!("{GOOD_PREFIX}name: a\nsteps:\n  - exec: echo hi\n"),
    );
    assert_rejected(&env, &[&p], &["nokind.yaml", "document 3", "kind"]);
}

#[test]
fn bad_json_schema_in_params() {
    let env = Env::new();
    let p = env.write(
        "schema.yaml",
        &format!(
            "{GOOD_PREFIX}kind: Job\nname: a\nparams:\n  type: object\n  properties:\n    n: {{type: integr}}\nsteps:\n  - exec: echo hi\n"
        ),
    );
    assert_rejected(
        &env,
        &[&p],
        &["schema.yaml", "job 'a'", "params", "JSON Schema"],
    );
}

#[test]
fn params_schema_that_is_not_an_object_schema() {
    let env = Env::new();
    let p = env.write(
        "schema2.yaml",
        &format!(
            "{GOOD_PREFIX}kind: Job\nname: a\nparams:\n  type: string\nsteps:\n  - exec: echo hi\n"
        ),
    );
    assert_rejected(
        &env,
        &[&p],
        &["schema2.yaml", "job 'a'.params", "type: object"],
    );
}

#[test]
fn template_syntax_error() {
    let env = Env::new();
    let p = env.write(
        "tpl.yaml",
        &format!("{GOOD_PREFIX}kind: Job\nname: a\nsteps:\n  - exec: echo {{{{ oops\n"),
    );
    assert_rejected(
        &env,
        &[&p],
        &["tpl.yaml", "job 'a'", "steps[0].exec", "template"],
    );
}

#[test]
fn directory_with_a_good_and_a_bad_file_stores_nothing() {
    let env = Env::new();
    let dir = env.path().join("mixed");
    env.write("mixed/a-good.yaml", GOOD_PREFIX.trim_end_matches("---\n"));
    env.write(
        "mixed/b-bad.yaml",
        "kind: Job\nname: bad\nsteps:\n  - exec: [echo\n",
    );
    assert_rejected(&env, &[&dir], &["b-bad.yaml:"]);

    // The same with a file that parses but does not validate.
    env.write(
        "mixed/b-bad.yaml",
        "kind: Job\nname: bad\nsteps:\n  - exec: echo {{ oops\n",
    );
    assert_rejected(&env, &[&dir], &["b-bad.yaml", "job 'bad'", "template"]);

    // And across two -f arguments.
    let good = env.path().join("mixed/a-good.yaml");
    let bad = env.path().join("mixed/b-bad.yaml");
    assert_rejected(&env, &[&good, &bad], &["b-bad.yaml", "job 'bad'"]);

    // Once fixed, both go in.
    env.write(
        "mixed/b-bad.yaml",
        "kind: Job\nname: bad\nsteps:\n  - exec: echo ok\n",
    );
    env.cmd(["apply", "-f"]).arg(&dir).assert().success();
    let mut jobs = env.job_names();
    jobs.sort();
    assert_eq!(jobs, vec!["bad", "half-job"]);
}

#[test]
fn invalid_copy_mode() {
    let env = Env::new();
    let p = env.write(
        "mode.yaml",
        &format!(
            "{GOOD_PREFIX}kind: Job\nname: a\nsteps:\n  - copy:\n      dest: /tmp/x\n      content: hi\n      mode: \"999\"\n"
        ),
    );
    assert_rejected(
        &env,
        &[&p],
        &["mode.yaml", "job 'a'", "steps[0].copy.mode", "999"],
    );
    // A bare number is refused too (0644 unquoted would be read as decimal).
    let p = env.write(
        "mode2.yaml",
        "kind: Job\nname: a\nsteps:\n  - copy: {dest: /tmp/x, content: hi, mode: 644}\n",
    );
    assert_rejected(&env, &[&p], &["mode2.yaml", "copy.mode", "quoted"]);
}

#[test]
fn invalid_duration() {
    let env = Env::new();
    let p = env.write(
        "dur.yaml",
        &format!("{GOOD_PREFIX}kind: Job\nname: a\ntimeout: 5x\nsteps:\n  - exec: echo hi\n"),
    );
    assert_rejected(&env, &[&p], &["dur.yaml:", "'5x'"]);
    let p = env.write(
        "dur2.yaml",
        "kind: Job\nname: a\nsteps:\n  - exec: echo hi\n    timeout: 5x\n",
    );
    assert_rejected(&env, &[&p], &["dur2.yaml:", "steps[0]", "'5x'"]);
}

#[test]
fn invalid_duration_names_its_line_and_field() {
    let env = Env::new();
    // `timeout: 5x` is on line 3, column 10.
    let p = env.write(
        "dur.yaml",
        "kind: Job\nname: a\ntimeout: 5x\nsteps:\n  - exec: echo hi\n",
    );
    assert_rejected(&env, &[&p], &["dur.yaml:3:", "timeout", "'5x'"]);
    // On line 5 here.
    let p = env.write(
        "dur2.yaml",
        "kind: Job\nname: a\nsteps:\n  - exec: echo hi\n    timeout: 5x\n",
    );
    assert_rejected(&env, &[&p], &["dur2.yaml:5:", "timeout", "'5x'"]);
}

#[test]
fn job_without_steps() {
    let env = Env::new();
    let p = env.write(
        "empty.yaml",
        &format!("{GOOD_PREFIX}kind: Job\nname: a\nsteps: []\n"),
    );
    assert_rejected(
        &env,
        &[&p],
        &["empty.yaml", "job 'a'", "steps", "at least one step"],
    );
    let p = env.write(
        "nosteps.yaml",
        &format!("{GOOD_PREFIX}kind: Job\nname: a\n"),
    );
    assert_rejected(&env, &[&p], &["nosteps.yaml:", "steps"]);
}

#[test]
fn duplicate_job_names_in_one_batch() {
    let env = Env::new();
    let p = env.write(
        "dup.yaml",
        &format!(
            "{GOOD_PREFIX}kind: Job\nname: a\nsteps:\n  - exec: echo 1\n---\nkind: Job\nname: a\nsteps:\n  - exec: echo 2\n"
        ),
    );
    assert_rejected(&env, &[&p], &["dup.yaml", "job 'a'", "defined twice"]);
    // Across two files, both are named.
    let one = env.write("one.yaml", "kind: Job\nname: b\nsteps:\n  - exec: echo 1\n");
    let two = env.write("two.yaml", "kind: Job\nname: b\nsteps:\n  - exec: echo 2\n");
    assert_rejected(
        &env,
        &[&one, &two],
        &["job 'b'", "defined twice", "one.yaml", "two.yaml"],
    );
    // The same for targets.
    let t = env.write(
        "targets.yaml",
        "kind: Target\nname: t\n---\nkind: Target\nname: t\n",
    );
    assert_rejected(
        &env,
        &[&t],
        &["targets.yaml", "target 't'", "defined twice"],
    );
}

#[test]
fn missing_path() {
    let env = Env::new();
    let missing = env.path().join("no-such-file.yaml");
    assert_rejected(&env, &[&missing], &["no-such-file.yaml", "cannot read"]);
    let empty = env.path().join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    assert_rejected(&env, &[&empty], &["empty-dir", "no .yaml"]);
}

#[test]
fn file_with_no_documents() {
    let env = Env::new();
    let p = env.write("comments.yaml", "# nothing here\n");
    assert_rejected(&env, &[&p], &["nothing to apply"]);
}

#[test]
fn apply_needs_a_file() {
    let env = Env::new();
    env.cmd(["apply"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--file"));
}

// --- jobs and targets ------------------------------------------------------------

#[test]
fn targets_and_jobs_inspection() {
    let env = Env::new();
    // No database yet: reading commands do not create one.
    env.cmd(["targets", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no database at"));
    // A dry run creates the database and stores nothing.
    env.cmd(["apply", "--dry-run", "-f"])
        .arg(common::examples())
        .assert()
        .success();
    // Before anything: only the implicit local target, no jobs.
    env.cmd(["targets", "list"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^NAME\s+KIND\s+ADDRESS").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^local\s+local\s+this host").unwrap());
    env.cmd(["targets", "show", "local"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Target:"))
        .stdout(predicate::str::contains("local"));
    let a = env.cmd(["jobs", "list"]).assert().success();
    assert_eq!(stdout_of(&a), "", "no table when there are no jobs");
    assert!(stderr_of(&a).contains("no jobs yet"));

    env.apply_examples();
    env.cmd(["targets", "list"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^local\s+local").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^app-1\s+local\s+this host\s+app\s").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^app-2\s+local\s+this host\s+app\s").unwrap());
    env.cmd(["targets", "show", "app-1"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^Target:\s+app-1$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^Tags:\s+app$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^var role:\s+primary$").unwrap())
        .stdout(predicate::str::contains(
            "Stands in for an application host",
        ));
    let t = env.json(["targets", "show", "app-1"]);
    assert_eq!(t["name"], "app-1");
    assert_eq!(t["vars"]["role"], "primary");

    env.cmd(["targets", "show", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("'nope' not found"));
    env.cmd(["jobs", "show", "nope"])
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("job 'nope' not found"))
        .stderr(predicate::str::contains("known jobs: deploy, hello"));
    env.cmd(["jobs", "versions", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("job 'nope' not found"));
    // In JSON mode the error is JSON on stdout.
    let a = env.cmd(["--json", "jobs", "show", "nope"]).assert().code(2);
    let v: Value = serde_json::from_slice(&a.get_output().stdout).unwrap();
    assert_eq!(v["error"]["kind"], "notfound");
}

/// `apply -f` refuses what is not a regular file (it used to read
/// `/dev/zero` forever and to block on a FIFO), and 1 MB YAML bombs of
/// several shapes are refused in well under a second each (exit 2).
#[test]
fn non_regular_files_and_yaml_bombs_are_refused_fast() {
    use std::time::{Duration, Instant};
    let env = Env::new();
    let fifo = env.path().join("pipe.yaml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let zero = std::path::PathBuf::from("/dev/zero");
    const MB: usize = 1024 * 1024;
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{p}"); 10].join(", ")
        ));
    }
    let mut cases: Vec<(String, std::path::PathBuf, &str)> = vec![
        ("/dev/zero".into(), zero, "not a regular file"),
        ("a FIFO".into(), fifo, "not a regular file"),
    ];
    for (shape, text) in [
        (
            "nested flow [",
            format!("kind: Job\nname: {}", "[".repeat(MB)),
        ),
        (
            "nested flow {",
            format!("kind: Job\nname: {}", "{a: ".repeat(MB / 4)),
        ),
        (
            "quoted brackets",
            format!(
                "kind: Job\nname: x\ndescription: '{}'\nsteps: {}",
                "\"[{''".repeat(MB / 6),
                "[".repeat(10_000)
            ),
        ),
        ("billion laughs", laughs),
        ("huge key", format!("{}: 1\n", "k".repeat(MB))),
    ] {
        let p = env.write(&format!("bomb-{}.yaml", cases.len()), &text);
        cases.push((shape.to_string(), p, "bomb-"));
    }
    for (shape, path, needle) in cases {
        let t = Instant::now();
        let a = env
            .cmd(["apply", "-f"])
            .arg(&path)
            .timeout(Duration::from_secs(20))
            .assert()
            .code(2);
        let took = t.elapsed();
        let err = stderr_of(&a);
        println!("{shape}: exit 2 in {took:?}");
        assert!(err.contains(needle), "{shape}: {err}");
        assert!(took < Duration::from_secs(10), "{shape}: {took:?}");
    }
    env.assert_pristine();
}
