//! Conditions, step outputs and jobs that call jobs, end to end on the real
//! SQLite store and the local executor (real processes): `when` reading
//! outputs per target, skipped reasons, masking and bounds of outputs,
//! child runs that succeed, fail and are cancelled with their parent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::time::{Duration, Instant};

use opsconductor::secrets::{KeyBytes, KeySource, Keyring};
use opsconductor::store::RunFilter;
use opsconductor::{
    Actor, Conductor, Config, RunDetail, RunStatus, SetSecret, StepResult, StepStatus,
    SubmitRequest,
};
use serde_json::json;

struct Env {
    oc: Conductor,
    _dir: tempfile::TempDir,
}

fn me() -> Actor {
    Actor::new("tester")
}

/// An engine with a master key (secrets), the local executor and `workers`
/// execution slots.
async fn engine(workers: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = opsconductor::open_store(&url).await.unwrap();
    let key = KeyBytes::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=", "k").unwrap();
    let ring = Keyring::from_keys([(1, key)], KeySource::Env).unwrap();
    let oc = Conductor::builder()
        .store_arc(store)
        .executor(opsconductor::LocalExecutor::default())
        .keyring(ring)
        .config(Config {
            cancel_poll: Duration::from_millis(100),
            follow_poll: Duration::from_millis(50),
            poll: Duration::from_millis(100),
            ..Config::default()
        })
        .workers(workers)
        .build()
        .await
        .unwrap();
    Env { oc, _dir: dir }
}

impl Env {
    async fn apply(&self, yaml: &str) {
        let batch = opsconductor::spec::parse_str(yaml, "flow.yaml", None).unwrap();
        self.oc.apply(&batch, &me()).await.unwrap();
    }

    /// Submits `job` and executes it in this task (children run where a
    /// slot is free, or in the parent's own).
    async fn run(&self, job: &str, params: serde_json::Value) -> RunDetail {
        let run = self
            .oc
            .submit(SubmitRequest::new(job).params(params), &me())
            .await
            .unwrap();
        let done = self.oc.execute(run.id).await.unwrap();
        self.oc.run(done.id, &me()).await.unwrap()
    }

    async fn detail(&self, id: opsconductor::RunId) -> RunDetail {
        self.oc.run(id, &me()).await.unwrap()
    }

    async fn runs_of(&self, job: &str) -> Vec<opsconductor::Run> {
        self.oc
            .runs(
                &RunFilter {
                    job: Some(job.into()),
                    limit: 100,
                    ..Default::default()
                },
                &me(),
            )
            .await
            .unwrap()
    }
}

fn result<'a>(d: &'a RunDetail, step: u32, target: &str) -> &'a StepResult {
    d.results
        .iter()
        .find(|r| r.step == step && r.target == target)
        .unwrap_or_else(|| panic!("no result for step {step} on {target}: {:#?}", d.results))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_reads_outputs_of_earlier_steps_per_target_and_records_why_it_skipped() {
    let env = engine(0).await;
    env.apply(
        r#"
kind: Target
name: node-a
connection: { type: local }
vars: { role: primary }
---
kind: Target
name: node-b
connection: { type: local }
vars: { role: replica }
---
kind: Job
name: conditional
targets: [node-a, node-b]
steps:
  - name: check
    exec: echo "::output role={{ target.vars.role }}"; echo "::output port=5432"
  - name: facts
    outputs: json
    exec: |-
      echo 'noise'; echo '{"healthy": true, "lag": 3}'
  - name: promote
    when: "{{ steps.check.outputs.role == 'primary' and steps.facts.outputs.healthy }}"
    exec: echo "promoting on port" {{ steps.check.outputs.port }}
  - name: after
    when: "steps.promote.status == 'skipped'"
    exec: echo "was skipped here"; echo "::output seen={{ run.outputs[target.name].role }}"
"#,
    )
    .await;
    let d = env.run("conditional", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    // Outputs are stored with the result, per target.
    assert_eq!(result(&d, 0, "node-a").outputs["role"], "primary");
    assert_eq!(result(&d, 0, "node-b").outputs["role"], "replica");
    assert_eq!(result(&d, 1, "node-a").outputs["lag"], 3);
    // The condition is decided per target, with that target's outputs.
    assert_eq!(result(&d, 2, "node-a").status, StepStatus::Succeeded);
    let skipped = result(&d, 2, "node-b");
    assert_eq!(skipped.status, StepStatus::Skipped);
    let why = skipped.error.as_deref().unwrap();
    assert!(
        why.contains("condition") && why.contains("steps.check.outputs.role == 'primary'"),
        "the skipped reason names the condition: {why}"
    );
    // A skipped step is a fact later steps can read.
    assert_eq!(result(&d, 3, "node-a").status, StepStatus::Skipped);
    assert_eq!(result(&d, 3, "node-b").status, StepStatus::Succeeded);
    assert_eq!(result(&d, 3, "node-b").outputs["seen"], "replica");
    // `run.outputs`: per target, merged in step order.
    let all = d.outputs();
    assert_eq!(all["node-a"]["port"], "5432");
    assert_eq!(all["node-a"]["healthy"], true);
    assert_eq!(all["node-b"]["seen"], "replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_masked_and_bounded() {
    let env = engine(0).await;
    env.oc
        .set_secret(
            SetSecret {
                name: "token".into(),
                kind: None,
                description: None,
                value: b"tok-9f8e7d6c5b4a".to_vec(),
            },
            &me(),
        )
        .await
        .unwrap();
    env.apply(
        r#"
kind: Job
name: leaky
secrets: [token]
steps:
  - name: publish
    outputs: json
    exec: |-
      echo "::output auth=Bearer $TOKEN"; printf '{"nested": {"k": "%s"}}\n' "$TOKEN"
  - name: reuse
    exec: echo "got" {{ steps.publish.outputs.auth }}
---
kind: Job
name: many-keys
steps:
  - name: many
    exec: for i in $(seq 0 64); do echo "::output k$i=v"; done
---
kind: Job
name: bad-name
steps:
  - name: bad
    exec: echo "::output 9lives=cat"
---
kind: Job
name: not-json
steps:
  - name: nj
    outputs: json
    exec: echo '["a list"]'
---
kind: Job
name: endless-line
steps:
  - name: long
    outputs: json
    exec: head -c 300000 /dev/zero | tr '\0' 'x'
"#,
    )
    .await;
    env.apply(&format!(
        "kind: Job\nname: huge-value\nsteps:\n  - name: big\n    exec: printf '::output v=%0{}d\\n' 0\n",
        opsconductor::flow::MAX_OUTPUT_VALUE + 1
    ))
    .await;
    let d = env.run("leaky", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let stored = serde_json::to_string(&d.results).unwrap();
    assert!(
        !stored.contains("tok-9f8e7d6c5b4a"),
        "a secret never reaches stored outputs: {stored}"
    );
    let out = &result(&d, 0, "local").outputs;
    assert_eq!(out["auth"], "Bearer ***", "{out:?}");
    assert_eq!(out["nested"]["k"], "***", "{out:?}");
    for (job, says) in [
        ("huge-value", "output `v` is"),
        ("many-keys", "outputs"),
        ("bad-name", "invalid output name"),
        ("not-json", "not a JSON object"),
        ("endless-line", "longer than"),
    ] {
        let d = env.run(job, json!({})).await;
        assert_eq!(d.run.status, RunStatus::Failed, "{job}");
        let r = result(&d, 0, "local");
        assert_eq!(r.status, StepStatus::Failed, "{job}");
        assert!(r.outputs.is_empty(), "{job}: nothing half-published");
        let why = r.error.as_deref().unwrap();
        assert!(
            why.contains("outputs refused") && why.contains(says),
            "{job}: {why}"
        );
    }
}

const CHILD_JOBS: &str = r#"
kind: Job
name: child-ok
params:
  type: object
  properties: { who: { type: string } }
  required: [who]
steps:
  - name: hello
    exec: echo "::output greeting=hello-{{ params.who }}"
---
kind: Job
name: child-fails
steps:
  - name: boom
    exec: echo failing; exit 3
---
kind: Job
name: child-slow
steps:
  - name: nap
    exec: echo "$$" > "$MARK_FILE"; sleep 30
    env: { MARK_FILE: "{{ params.mark }}" }
params:
  type: object
  properties: { mark: { type: string } }
---
kind: Job
name: parent
params:
  type: object
  properties: { child: { type: string } }
steps:
  - name: call
    job: child-ok
    params: { who: "{{ target.name }}" }
  - name: use
    exec: echo "child said" {{ steps.call.outputs.greeting }}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_run_is_linked_both_ways_and_its_status_is_the_steps() {
    let env = engine(2).await;
    env.apply(CHILD_JOBS).await;
    env.apply(
        r#"
kind: Job
name: parent-of-failure
steps:
  - name: call
    job: child-fails
  - name: never
    exec: echo never
"#,
    )
    .await;

    // Success: the child's outputs become the step's.
    let d = env.run("parent", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let call = result(&d, 0, "local");
    assert_eq!(call.status, StepStatus::Succeeded);
    assert_eq!(call.children.len(), 1, "{call:?}");
    assert_eq!(call.outputs["greeting"], "hello-local");
    let child = env.detail(call.children[0]).await;
    assert_eq!(child.run.job, "child-ok");
    assert_eq!(child.run.status, RunStatus::Succeeded);
    assert_eq!(
        child.run.requested_by, "tester",
        "the child runs as the parent's requester"
    );
    let link = child
        .run
        .parent
        .clone()
        .expect("the child names its parent");
    assert_eq!(
        (link.run, link.step, link.target.as_str()),
        (d.run.id, 0, "local")
    );
    assert_eq!(env.runs_of("child-ok").await.len(), 1);

    // Failure: the child's failure is the step's, and the parent stops there.
    let d = env.run("parent-of-failure", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Failed);
    let call = result(&d, 0, "local");
    assert_eq!(call.status, StepStatus::Failed);
    let why = call.error.as_deref().unwrap();
    assert!(
        why.contains("ended failed") && why.contains("exit"),
        "{why}"
    );
    let child = env.detail(call.children[0]).await;
    assert_eq!(child.run.status, RunStatus::Failed);
    assert_eq!(result(&d, 1, "local").status, StepStatus::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_cancels_its_child_and_kills_its_process() {
    let env = engine(2).await;
    env.apply(CHILD_JOBS).await;
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("pid");
    env.apply(
        r#"
kind: Job
name: slow-parent
params:
  type: object
  properties: { mark: { type: string } }
steps:
  - name: call
    job: child-slow
    params: { mark: "{{ params.mark }}" }
"#,
    )
    .await;
    let parent = env
        .oc
        .submit(
            SubmitRequest::new("slow-parent").params(json!({"mark": mark.display().to_string()})),
            &me(),
        )
        .await
        .unwrap();
    // Wait until the child's process runs.
    let start = Instant::now();
    while !mark.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the child never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::thread::sleep(Duration::from_millis(100));
    let pid: i32 = std::fs::read_to_string(&mark)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    env.oc.cancel(parent.id, &me()).await.unwrap();
    let done = env.oc.wait(parent.id, &me()).await.unwrap();
    assert_eq!(done.status, RunStatus::Cancelled);
    let d = env.detail(parent.id).await;
    let call = result(&d, 0, "local");
    assert_eq!(call.status, StepStatus::Cancelled);
    let child = env.oc.wait(call.children[0], &me()).await.unwrap();
    assert_eq!(child.status, RunStatus::Cancelled, "{:?}", child.error);
    // The child's process is gone (no zombie check: it was our grandchild's group).
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "the child's process {pid} still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_is_executed_in_its_parents_slot_when_no_other_is_free() {
    // One slot (the parent's own, by `execute`): the child must not wait for a
    // slot its parent holds.
    let env = engine(0).await;
    env.apply(CHILD_JOBS).await;
    let d = env.run("parent", json!({})).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(result(&d, 1, "local").status, StepStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_cycles_and_unknown_steps_are_refused_at_apply_with_their_place() {
    let env = engine(0).await;
    let refused = |yaml: &str| {
        let oc = env.oc.clone();
        let yaml = yaml.to_string();
        async move {
            let batch = match opsconductor::spec::parse_str(&yaml, "jobs.yaml", None) {
                Ok(b) => b,
                Err(e) => return e.to_string(),
            };
            match oc.apply(&batch, &me()).await {
                Ok(_) => panic!("applied, but should be refused:\n{yaml}"),
                Err(e) => e.to_string(),
            }
        }
    };
    // A calls B calls A, in one file.
    let e = refused(
        "kind: Job\nname: a\nsteps:\n  - name: s\n    job: b\n---\nkind: Job\nname: b\nsteps:\n  - name: s\n    job: a\n",
    )
    .await;
    assert!(
        e.contains("jobs.yaml:5:10") && e.contains("a → b → a"),
        "{e}"
    );
    // Itself.
    let e = refused("kind: Job\nname: me\nsteps:\n  - name: s\n    job: me\n").await;
    assert!(e.contains("jobs.yaml:5:10") && e.contains("me → me"), "{e}");
    // Through stored jobs: y calls x, then x is changed to call y.
    env.apply("kind: Job\nname: x\nsteps:\n  - exec: 'true'\n")
        .await;
    env.apply("kind: Job\nname: y\nsteps:\n  - job: x\n").await;
    let e = refused("kind: Job\nname: x\nsteps:\n  - name: back\n    job: y\n").await;
    assert!(
        e.contains("jobs.yaml:5:10") && e.contains("x → y → x"),
        "{e}"
    );
    // A job that does not exist.
    let e = refused("kind: Job\nname: z\nsteps:\n  - name: s\n    job: nope\n").await;
    assert!(
        e.contains("jobs.yaml:5:10") && e.contains("'nope', which does not exist"),
        "{e}"
    );
    // Unknown, later and unnamed steps in conditions and templates.
    let e = refused(
        "kind: Job\nname: w\nsteps:\n  - name: check\n    exec: 'true'\n  - name: go\n    when: \"{{ steps.chek.exit_code == 0 }}\"\n    exec: 'true'\n",
    )
    .await;
    assert!(
        e.contains("jobs.yaml:7:11") && e.contains("no earlier step 'chek'"),
        "{e}"
    );
    let e = refused(
        "kind: Job\nname: w\nsteps:\n  - name: first\n    exec: echo {{ steps.second.outputs.x }}\n  - name: second\n    exec: 'true'\n",
    )
    .await;
    assert!(
        e.contains("jobs.yaml:5:11") && e.contains("runs later"),
        "{e}"
    );
    let e = refused(
        "kind: Job\nname: w\nsteps:\n  - name: a\n    exec: 'true'\n  - name: b\n    when: \"steps['a'].exit_code == 0\"\n    exec: 'true'\n",
    )
    .await;
    assert!(e.contains("steps.NAME"), "{e}");
    // A hostile condition: too long.
    let long = format!("{{{{ {} }}}}", "1 + ".repeat(2000) + "1");
    let e = refused(&format!(
        "kind: Job\nname: w\nsteps:\n  - name: a\n    when: \"{long}\"\n    exec: 'true'\n"
    ))
    .await;
    assert!(e.contains("at most 4096"), "{e}");
    // Nothing of the refused batches was stored.
    let jobs: Vec<String> = env
        .oc
        .jobs(&me())
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.spec.name)
        .collect();
    assert_eq!(jobs, ["x", "y"]);
}
