//! Job-level approvals and the command policy end to end through the
//! engine: the real SQLite store, the real local executor, workers.

use std::time::Duration;

use opsconductor::auth::Role;
use opsconductor::{Actor, Conductor, Config, ErrorKind, ExecRequest, RunStatus, SubmitRequest};
use serde_json::json;
use tempfile::TempDir;

const JOB: &str = r#"
kind: Job
name: deploy
params:
  type: object
  properties: {version: {type: string}}
steps:
  - exec: echo deploying {{ params.version }} > {{ target.vars.out }}
approval:
  required: 2
  approvers: {roles: [admin, operator]}
  expires: 1h
"#;

async fn open(dir: &TempDir, workers: usize) -> Conductor {
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    opsconductor::builder(&url)
        .await
        .unwrap()
        .config(Config {
            poll: Duration::from_millis(100),
            follow_poll: Duration::from_millis(50),
            heartbeat: Duration::from_millis(200),
            ..Config::default()
        })
        .workers(workers)
        .build()
        .await
        .unwrap()
}

/// A password user who logged in just now.
fn user(name: &str, role: Role) -> Actor {
    let mut a = Actor::user(name, role, "password");
    a.login_at = Some(chrono::Utc::now());
    a
}

async fn apply(oc: &Conductor, dir: &TempDir) {
    let out = dir.path().join("out.txt");
    let yaml = format!(
        "kind: Target\nname: local\nconnection: {{type: local}}\nvars: {{out: '{}'}}\n---\n{JOB}",
        out.display()
    );
    let batch = opsconductor::spec::parse_str(&yaml, "t.yaml", None).unwrap();
    oc.apply(&batch, &Actor::new("admin")).await.unwrap();
}

async fn wait_status(oc: &Conductor, id: opsconductor::RunId, want: RunStatus) {
    for _ in 0..200 {
        if oc.run(id, &Actor::new("t")).await.unwrap().run.status == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} never became {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_eyes_two_distinct_approvers_then_it_runs_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let oc = open(&dir, 0).await;
    apply(&oc, &dir).await;
    let sub = user("sub", Role::Admin);
    let run = oc
        .submit(
            SubmitRequest::new("deploy").params(json!({"version": "1.2"})),
            &sub,
        )
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::WaitingApproval);
    let view = oc.approval(run.id, &sub).await.unwrap();
    assert_eq!(view.request.required, 2);
    assert_eq!(view.request.reasons, ["job"]);
    assert_eq!(view.request.plan_digest.len(), 64);
    let text = view.request.plan["steps"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("echo deploying 1.2 > "), "{text}");
    assert!(
        view.waiting_line()
            .starts_with("waiting for approval by role admin or operator (0 of 2")
    );
    // Nothing runs meanwhile, even with a worker.
    drop(oc);
    let oc = open(&dir, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        oc.run(run.id, &sub).await.unwrap().run.status,
        RunStatus::WaitingApproval
    );
    assert!(!dir.path().join("out.txt").exists());

    // Never the submitter (API tokens count as their user, any case).
    let e = oc
        .approve(run.id, None, &Actor::user("SUB", Role::Admin, "api_token"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert!(e.to_string().contains("four-eyes"), "{e}");
    // Viewers hold no Approve permission.
    let e = oc
        .approve(run.id, None, &user("vic", Role::Viewer))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    // A stale password login is refused; an API token is not held to it.
    let mut stale = Actor::user("ann", Role::Admin, "password");
    stale.login_at = Some(chrono::Utc::now() - chrono::Duration::minutes(6));
    let e = oc.approve(run.id, None, &stale).await.unwrap_err();
    assert!(e.to_string().contains("fresh login"), "{e}");

    let v = oc
        .approve(
            run.id,
            Some("looks right".into()),
            &user("ann", Role::Admin),
        )
        .await
        .unwrap();
    assert_eq!((v.status, v.approvals()), (RunStatus::WaitingApproval, 1));
    // Never the same person twice.
    let e = oc
        .approve(run.id, None, &Actor::user("Ann", Role::Admin, "api_token"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let v = oc
        .approve(
            run.id,
            None,
            &Actor::user("bob", Role::Operator, "api_token"),
        )
        .await
        .unwrap();
    assert_eq!(v.approvals(), 2);
    wait_status(&oc, run.id, RunStatus::Succeeded).await;
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert_eq!(out.trim(), "deploying 1.2");

    // Audited with approver, reason and plan digest.
    let log = oc
        .audit_log(Some(&format!("run:{}", run.id)), 50, &Actor::new("t"))
        .await
        .unwrap();
    let ev = log
        .iter()
        .find(|e| e.action == "approval.approve" && e.actor == "ann")
        .unwrap();
    assert_eq!(ev.detail["reason"], "looks right");
    assert_eq!(ev.detail["plan_digest"], view.request.plan_digest);
    assert!(log.iter().any(|e| e.action == "approval.request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rejection_ends_the_run_and_cancel_ends_a_waiting_run() {
    let dir = tempfile::tempdir().unwrap();
    let oc = open(&dir, 1).await;
    apply(&oc, &dir).await;
    let sub = Actor::new("sub");
    let req = || SubmitRequest::new("deploy").params(json!({"version": "1"}));
    let r1 = oc.submit(req(), &sub).await.unwrap();
    let e = oc
        .reject(r1.id, "  ".into(), &user("ann", Role::Admin))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
    let e = oc
        .reject(r1.id, "x".repeat(5000), &user("ann", Role::Admin))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
    let v = oc
        .reject(r1.id, "wrong window".into(), &user("ann", Role::Admin))
        .await
        .unwrap();
    assert_eq!(v.status, RunStatus::Rejected);
    let e = oc
        .approve(r1.id, None, &user("bob", Role::Admin))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let r2 = oc.submit(req(), &sub).await.unwrap();
    let c = oc.cancel(r2.id, &sub).await.unwrap();
    assert_eq!(c.status, RunStatus::Cancelled);
    assert_eq!(oc.approvals(true, 100, &sub).await.unwrap().len(), 0);
    assert_eq!(oc.approvals(false, 100, &sub).await.unwrap().len(), 2);
    let e = oc.approvals(false, 0, &sub).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation);
    assert!(!dir.path().join("out.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_lists_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let oc = open(&dir, 1).await;
    let yaml = "kind: Job\nname: j\nsteps: [{exec: 'true'}]\napproval: {approvers: {users: [carol]}, expires: 1m, reason_required: true}\n";
    oc.apply(
        &opsconductor::spec::parse_str(yaml, "t.yaml", None).unwrap(),
        &Actor::new("a"),
    )
    .await
    .unwrap();
    let run = oc
        .submit(SubmitRequest::new("j"), &Actor::new("sub"))
        .await
        .unwrap();
    let e = oc
        .approve(run.id, Some("ok".into()), &user("ann", Role::Admin))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("users carol"), "{e}");
    let e = oc
        .approve(run.id, None, &user("carol", Role::Operator))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("need a reason"), "{e}");
    // Bad approval specs are refused at apply, naming the field.
    for (bad, want) in [
        ("approval: {required: 0}", "approval.required"),
        ("approval: {required: 11}", "approval.required"),
        ("approval: {expires: 10s}", "approval.expires"),
        ("approval: {expires: 90d}", "approval.expires"),
        (
            "approval: {required: 2, approvers: {users: [a]}}",
            "approval.approvers.users",
        ),
        (
            "approval: {approvers: {users: [a], roles: [admin]}}",
            "approval.approvers",
        ),
        ("approval: {approvers: {roles: [root]}}", "t.yaml"),
        ("approval: {bogus: 1}", "t.yaml"),
    ] {
        let y = format!("kind: Job\nname: k\nsteps: [{{exec: 'true'}}]\n{bad}\n");
        let e = match opsconductor::spec::parse_str(&y, "t.yaml", None) {
            Err(e) => e,
            Ok(b) => oc.apply(&b, &Actor::new("a")).await.unwrap_err(),
        };
        assert!(e.to_string().contains(want), "{bad}: {e}");
    }
    // Expiry: the engine's own sweep ends it (here through the store's
    // clock being past the request: a request made with a 1m expiry is
    // expired by a sweep "now + 2m").
    let store =
        opsconductor::open_store(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
    let ids = store
        .approval_store()
        .expire_approvals(chrono::Utc::now() + chrono::Duration::minutes(2), 10)
        .await
        .unwrap();
    assert_eq!(ids, vec![run.id]);
    let e = oc
        .approve(run.id, Some("late".into()), &user("carol", Role::Admin))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_denies_rendered_commands_at_submit_and_job_text_at_apply() {
    let dir = tempfile::tempdir().unwrap();
    let oc = open(&dir, 1).await;
    // The job text is harmless; the parameter makes it `rm -rf /` (raw).
    let yaml = "kind: Job\nname: clean\nparams: {type: object, properties: {dir: {type: string}}}\nsteps:\n  - exec: rm -rf {{ params.dir }}/\n    raw: false\n";
    oc.apply(
        &opsconductor::spec::parse_str(yaml, "t.yaml", None).unwrap(),
        &Actor::new("a"),
    )
    .await
    .unwrap();
    let e = oc
        .submit(
            SubmitRequest::new("clean").params(json!({"dir": ""})),
            &Actor::new("sub"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("recursive-delete-root") && msg.contains("steps[0]"),
        "{msg}"
    );
    assert!(msg.contains("on target 'local'"), "{msg}");
    let ok = oc
        .submit(
            SubmitRequest::new("clean").params(json!({"dir": "/tmp/x-never"})),
            &Actor::new("sub"),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, RunStatus::Queued);
    // The job text itself at apply.
    let bad = "kind: Job\nname: wipe\nsteps:\n  - exec: sudo /bin/rm -rf --no-preserve-root /\n";
    let e = oc
        .apply(
            &opsconductor::spec::parse_str(bad, "t.yaml", None).unwrap(),
            &Actor::new("a"),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("job 'wipe'") && e.to_string().contains("recursive-delete-root"),
        "{e}"
    );
    // Ad-hoc commands too.
    let e = oc
        .submit_exec(
            ExecRequest::new("dd if=/dev/zero of=/dev/sda"),
            &Actor::new("sub"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("block-device-write"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn require_approval_rules_make_any_run_wait_with_its_hits_shown() {
    let dir = tempfile::tempdir().unwrap();
    let oc = open(&dir, 1).await;
    let policy = opsconductor::policy::Policy::from_yaml(
        "rules:\n  - {name: echo-warn, action: warn, regex: 'echo'}\n",
        "p.yaml",
    )
    .unwrap();
    oc.set_command_policy(policy);
    let run = oc
        .submit_exec(
            ExecRequest::new("echo hi; curl -fsSL https://example.invalid/i | sh"),
            &Actor::new("sub"),
        )
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::WaitingApproval);
    let v = oc.approval(run.id, &Actor::new("x")).await.unwrap();
    assert_eq!(v.request.reasons, ["policy"]);
    let rules: Vec<_> = v
        .request
        .policy_hits
        .iter()
        .map(|h| h.rule.as_str())
        .collect();
    assert_eq!(rules, ["pipe-to-shell", "echo-warn"]);
    assert_eq!(v.request.required, 1);
    // Warn-only runs do not wait.
    let r = oc
        .submit_exec(ExecRequest::new("echo hi"), &Actor::new("sub"))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Queued);
    oc.reject(run.id, "no piping scripts".into(), &Actor::new("boss"))
        .await
        .unwrap();
}
