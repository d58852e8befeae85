//! The resources over real HTTP on SQLite and PostgreSQL: targets, jobs
//! (versions, YAML and JSON bodies, search by name, tag and status),
//! secrets (write-only values, history, usage), runs (parameters, per step
//! × target results, filters, pagination, cancel), ad-hoc commands, users.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, COUNTER_JOB, HELLO_JOB, PASSWORD, Srv, expect_error};
use opsconductor::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("JSON body")
}

/// Follows `next_cursor` to the end; returns every item's `key`.
async fn all_pages(srv: &Srv, path: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_string(),
        };
        let v = json_of(srv.get(&url, &srv.admin).await).await;
        out.extend(
            v["items"]
                .as_array()
                .unwrap_or_else(|| panic!("items in {v}"))
                .iter()
                .map(|i| {
                    i[key]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i[key].to_string())
                }),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

async fn targets(backend: Backend) {
    let srv = Srv::start(backend).await;
    for (i, name) in ["web-1", "web-2", "db-1", "cache-1", "web-3"]
        .iter()
        .enumerate()
    {
        let tags = if name.starts_with("web") {
            json!(["web"])
        } else {
            json!(["data"])
        };
        let r = srv
            .put(
                &format!("/api/v1/targets/{name}"),
                &srv.admin,
                json!({"tags": tags, "vars": {"i": i}}),
            )
            .await;
        assert_eq!(r.status(), 201, "{name}");
    }
    // YAML, with an SSH connection.
    let r = srv
        .req(Method::PUT, "/api/v1/targets/bastion", Some(&srv.admin))
        .header("content-type", "application/yaml")
        .body("kind: Target\nname: bastion\nconnection:\n  type: ssh\n  host: 127.0.0.1\n  port: 1\n  user: ops\n")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let v = json_of(srv.get("/api/v1/targets/bastion", &srv.admin).await).await;
    assert_eq!(
        v["connection"],
        json!({"type": "ssh", "host": "127.0.0.1", "port": 1, "user": "ops"})
    );
    // The same again: unchanged (200).
    let r = srv
        .put(
            "/api/v1/targets/web-1",
            &srv.admin,
            json!({"tags": ["web"], "vars": {"i": 0}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["action"], "unchanged");
    // Pages of 2, by name; descending; filters.
    let names = all_pages(&srv, "/api/v1/targets?limit=2", "name").await;
    assert_eq!(
        names,
        [
            "bastion", "cache-1", "db-1", "local", "web-1", "web-2", "web-3"
        ]
    );
    let names = all_pages(&srv, "/api/v1/targets?limit=3&sort=-name", "name").await;
    assert_eq!(
        names,
        [
            "web-3", "web-2", "web-1", "local", "db-1", "cache-1", "bastion"
        ]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/targets?tag=web", "name").await,
        ["web-1", "web-2", "web-3"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/targets?connection=ssh", "name").await,
        ["bastion"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/targets?q=-1", "name").await,
        ["cache-1", "db-1", "web-1"]
    );
    // Invalid targets are 422 with the field.
    let r = srv
        .put(
            "/api/v1/targets/x",
            &srv.admin,
            json!({"connection": {"type": "telnet"}}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .put("/api/v1/targets/x", &srv.admin, json!({"kind": "Job"}))
        .await;
    expect_error(r, 422, "validation").await;
    // Check now: the local target answers.
    let r = srv
        .post("/api/v1/targets/local/check", &srv.admin, json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        (v["ok"].as_bool(), v["kind"].as_str()),
        (Some(true), Some("local")),
        "{v}"
    );
    // An unreachable SSH host: a 200 with the reason (the check ran).
    let r = srv
        .post("/api/v1/targets/bastion/check", &srv.admin, json!({}))
        .await;
    let v = json_of(r).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].is_string());
    expect_error(
        srv.post("/api/v1/targets/nope/check", &srv.admin, json!({}))
            .await,
        404,
        "not_found",
    )
    .await;
    // Host keys are for SSH targets; a fingerprint must look like one.
    expect_error(
        srv.get("/api/v1/targets/local/host-key", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    let r = srv
        .post(
            "/api/v1/targets/bastion/trust",
            &srv.admin,
            json!({"fingerprint": "md5:xx"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let fp = "SHA256:2n7H4fmTqNQd0RvO7dLq0q9N4Xc0v5Yz3e1w2r3t4y5";
    let r = srv
        .post(
            "/api/v1/targets/bastion/trust",
            &srv.admin,
            json!({"fingerprint": fp}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["connection"]["host_key"], fp);
    // Delete; then it is gone.
    let r = srv
        .req(Method::DELETE, "/api/v1/targets/db-1", Some(&srv.admin))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    expect_error(
        srv.get("/api/v1/targets/db-1", &srv.admin).await,
        404,
        "not_found",
    )
    .await;
    let r = srv
        .req(Method::DELETE, "/api/v1/targets/db-1", Some(&srv.admin))
        .send()
        .await
        .expect("delete");
    expect_error(r, 404, "not_found").await;
    srv.stop().await;
}

async fn jobs(backend: Backend) {
    let srv = Srv::start(backend).await;
    srv.job(HELLO_JOB).await;
    // JSON in the job-file format, named by the URL.
    let r = srv
        .put("/api/v1/jobs/deploy", &srv.admin, json!({"tags": ["prod"], "status": "draft", "steps": [{"name": "go", "exec": "echo deploying"}]}))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(json_of(r).await["version"], 1);
    let r = srv
        .put("/api/v1/jobs/deploy", &srv.admin, json!({"tags": ["prod"], "status": "draft", "steps": [{"name": "go", "exec": "echo deploying"}]}))
        .await;
    assert_eq!(json_of(r).await["action"], "unchanged");
    let r = srv
        .put("/api/v1/jobs/deploy", &srv.admin, json!({"tags": ["prod"], "status": "active", "steps": [{"name": "go", "exec": "echo deploying v2"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        (v["action"].as_str(), v["version"].as_u64()),
        (Some("updated"), Some(2))
    );
    let versions = json_of(srv.get("/api/v1/jobs/deploy/versions", &srv.admin).await).await;
    let vs: Vec<u64> = versions["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|j| j["version"].as_u64())
        .collect();
    assert_eq!(vs, [1, 2]);
    let v1 = json_of(srv.get("/api/v1/jobs/deploy?version=1", &srv.admin).await).await;
    assert_eq!(v1["status"], "draft");
    assert!(v1["spec"]["steps"].is_array());
    expect_error(
        srv.get("/api/v1/jobs/deploy?version=9", &srv.admin).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        srv.get(
            "/api/v1/jobs/deploy/versions"
                .replace("deploy", "nope")
                .as_str(),
            &srv.admin,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // POST names the job in the body; YAML too.
    let r = srv
        .req(Method::POST, "/api/v1/jobs", Some(&srv.admin))
        .header("content-type", "application/yaml")
        .body("kind: Job\nname: legacy\nstatus: deprecated\ntags: [prod, old]\nsteps:\n  - exec: 'true'\n")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    // Search by name, tag and status; sorting.
    assert_eq!(
        all_pages(&srv, "/api/v1/jobs", "name").await,
        ["deploy", "hello", "legacy"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/jobs?tag=prod", "name").await,
        ["deploy", "legacy"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/jobs?status=deprecated", "name").await,
        ["legacy"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/jobs?q=ell", "name").await,
        ["hello"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/jobs?sort=-created_at&limit=1", "name").await,
        ["legacy", "deploy", "hello"]
    );
    expect_error(
        srv.get("/api/v1/jobs?status=retired", &srv.admin).await,
        422,
        "validation",
    )
    .await;
    // Lists leave the definition out.
    let list = json_of(srv.get("/api/v1/jobs", &srv.admin).await).await;
    assert!(list["items"][0].get("spec").is_none());
    // A batch with an error stores nothing.
    let r = srv
        .req(Method::POST, "/api/v1/apply", Some(&srv.admin))
        .header("content-type", "application/yaml")
        .body("kind: Job\nname: fine\nsteps:\n  - exec: 'true'\n---\nkind: Job\nname: broken\nsteps:\n  - exec: '{{ unclosed'\n")
        .send()
        .await
        .expect("apply");
    expect_error(r, 422, "validation").await;
    expect_error(
        srv.get("/api/v1/jobs/fine", &srv.admin).await,
        404,
        "not_found",
    )
    .await;
    let r = srv
        .req(Method::POST, "/api/v1/apply?dry_run=true", Some(&srv.admin))
        .header("content-type", "application/yaml")
        .body("kind: Job\nname: fine\nsteps:\n  - exec: 'true'\n")
        .send()
        .await
        .expect("dry run");
    assert_eq!(json_of(r).await["dry_run"], true);
    expect_error(
        srv.get("/api/v1/jobs/fine", &srv.admin).await,
        404,
        "not_found",
    )
    .await;
    srv.stop().await;
}

async fn secrets(backend: Backend) {
    let srv = Srv::start(backend).await;
    let r = srv
        .put(
            "/api/v1/secrets/db-password",
            &srv.admin,
            json!({"value": "hunter2-hunter2", "kind": "password", "description": "the db"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v = json_of(r).await;
    assert_eq!(
        (v["created"].as_bool(), v["secret"]["version"].as_u64()),
        (Some(true), Some(1))
    );
    let r = srv
        .put(
            "/api/v1/secrets/db-password",
            &srv.admin,
            json!({"value": "hunter3-hunter3"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        (
            v["secret"]["version"].as_u64(),
            v["secret"]["kind"].as_str()
        ),
        (Some(2), Some("password"))
    );
    let r = srv
        .put(
            "/api/v1/secrets/blob",
            &srv.admin,
            json!({"value_base64": "AAECAwQFBgcICQoLDA0ODw=="}),
        )
        .await;
    assert_eq!(r.status(), 201);
    // Short values are accepted with a warning (they cannot be masked).
    let r = srv
        .put("/api/v1/secrets/pin", &srv.admin, json!({"value": "12"}))
        .await;
    let v = json_of(r).await;
    assert!(
        !v["warnings"].as_array().expect("warnings").is_empty(),
        "{v}"
    );
    // Values are never returned, by any endpoint.
    for path in [
        "/api/v1/secrets",
        "/api/v1/secrets/db-password",
        "/api/v1/secrets/db-password/history",
    ] {
        let text = srv.get(path, &srv.admin).await.text().await.expect("text");
        assert!(
            !text.contains("hunter") && !text.contains("AAECAwQF"),
            "{path}: {text}"
        );
    }
    let h = json_of(
        srv.get("/api/v1/secrets/db-password/history", &srv.admin)
            .await,
    )
    .await;
    let actions: Vec<&str> = h["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert_eq!(actions, ["created", "updated"]);
    assert_eq!(
        all_pages(&srv, "/api/v1/secrets?kind=password", "name").await,
        ["db-password"]
    );
    // A job using it: usage is shown, deletion refused unless forced; the value reaches the command masked.
    srv.job("kind: Job\nname: uses-db\nsecrets: [db-password]\nsteps:\n  - exec: 'echo pw=$DB_PASSWORD'\n").await;
    let v = json_of(srv.get("/api/v1/secrets/db-password", &srv.admin).await).await;
    assert_eq!(v["used_by_jobs"], json!(["uses-db"]));
    let id = srv.submit("uses-db", json!({})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "succeeded");
    let logs = srv
        .get(&format!("/api/v1/runs/{id}/logs"), &srv.admin)
        .await
        .text()
        .await
        .expect("logs");
    assert!(
        logs.contains("pw=") && !logs.contains("hunter3"),
        "masked: {logs}"
    );
    let r = srv
        .req(
            Method::DELETE,
            "/api/v1/secrets/db-password",
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("delete");
    expect_error(r, 409, "conflict").await;
    let r = srv
        .req(
            Method::DELETE,
            "/api/v1/secrets/db-password?force=true",
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    expect_error(
        srv.get("/api/v1/secrets/db-password", &srv.admin).await,
        404,
        "not_found",
    )
    .await;
    let h = json_of(
        srv.get("/api/v1/secrets/db-password/history", &srv.admin)
            .await,
    )
    .await;
    assert_eq!(
        h["items"].as_array().expect("items").len(),
        3,
        "history outlives the secret"
    );
    // Keys: rotate re-encrypts everything.
    let r = srv.post("/api/v1/keys/rotate", &srv.admin, json!({})).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(
        (v["key_version"].as_u64(), v["rewrapped"].as_u64()),
        (Some(2), Some(2))
    );
    let keys = json_of(srv.get("/api/v1/keys", &srv.admin).await).await;
    assert_eq!(keys["items"].as_array().expect("items").len(), 2);
    srv.stop().await;
}

async fn runs(backend: Backend) {
    let srv = Srv::start(backend).await;
    srv.job(HELLO_JOB).await;
    srv.job(COUNTER_JOB).await;
    let r = srv
        .post(
            "/api/v1/runs",
            &srv.admin,
            json!({"job": "hello", "params": {"name": "api"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let v = json_of(r).await;
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/api/v1/runs/{id}"));
    assert_eq!(
        (
            v["status"].as_str(),
            v["requested_by"].as_str(),
            v["job_version"].as_u64()
        ),
        (Some("queued"), Some("admin"), Some(1))
    );
    let done = srv.wait_run(&id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["params"]["name"], "api");
    let res = &done["results"][0];
    assert_eq!(
        (
            res["step"].as_u64(),
            res["step_name"].as_str(),
            res["target"].as_str(),
            res["status"].as_str(),
            res["exit_code"].as_i64()
        ),
        (
            Some(0),
            Some("greet"),
            Some("local"),
            Some("succeeded"),
            Some(0)
        )
    );
    assert!(done["spec"]["steps"].is_array());
    // Short ids work as people type them.
    let short = json_of(
        srv.get(&format!("/api/v1/runs/{}", &id[..13]), &srv.admin)
            .await,
    )
    .await;
    assert_eq!(short["id"], id.as_str());
    let logs = srv
        .get(&format!("/api/v1/runs/{id}/logs"), &srv.admin)
        .await
        .text()
        .await
        .expect("logs");
    assert!(logs.contains("hello api"), "{logs}");
    // Ad-hoc commands.
    let r = srv
        .post(
            "/api/v1/exec",
            &srv.admin,
            json!({"command": "echo adhoc-$((6*7))", "timeout": "30s"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let exec_id = json_of(r).await["id"].as_str().expect("id").to_string();
    let done = srv.wait_run(&exec_id).await;
    assert_eq!(
        (done["job"].as_str(), done["status"].as_str()),
        (Some("exec"), Some("succeeded"))
    );
    let logs = srv
        .get(&format!("/api/v1/runs/{exec_id}/logs"), &srv.admin)
        .await
        .text()
        .await
        .expect("logs");
    assert!(logs.contains("adhoc-42"), "{logs}");
    let r = srv
        .post(
            "/api/v1/exec",
            &srv.admin,
            json!({"command": "true", "timeout": "soon"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .post(
            "/api/v1/exec",
            &srv.admin,
            json!({"command": "true", "targets": ["nowhere"]}),
        )
        .await;
    assert!(r.status().is_client_error());
    // Cancel a long run: it ends cancelled.
    let long = srv
        .submit("counter", json!({"n": 10000, "delay": 0.05}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = srv
        .post(
            &format!("/api/v1/runs/{long}/cancel"),
            &srv.admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["cancel_requested"], true);
    assert_eq!(srv.wait_run(&long).await["status"], "cancelled");
    // More runs, then filters and pages (newest first).
    let mut ids = vec![id.clone(), exec_id.clone(), long.clone()];
    for i in 0..5 {
        ids.push(srv.submit("hello", json!({"name": format!("n{i}")})).await);
    }
    for i in &ids {
        srv.wait_run(i).await;
    }
    let paged = all_pages(&srv, "/api/v1/runs?limit=3", "id").await;
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(paged, newest_first);
    let hello: BTreeSet<String> = all_pages(&srv, "/api/v1/runs?job=hello&limit=2", "id")
        .await
        .into_iter()
        .collect();
    assert_eq!(hello.len(), 6);
    assert_eq!(
        all_pages(&srv, "/api/v1/runs?status=cancelled", "id").await,
        [long.as_str()]
    );
    assert_eq!(
        all_pages(
            &srv,
            "/api/v1/runs?status=cancelled,failed,succeeded&job=exec",
            "id"
        )
        .await,
        [exec_id.as_str()]
    );
    let before = json_of(
        srv.get(&format!("/api/v1/runs?before={exec_id}"), &srv.admin)
            .await,
    )
    .await;
    let b: Vec<&str> = before["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(b, [id.as_str()]);
    expect_error(
        srv.get(
            &format!("/api/v1/runs?before={exec_id}&cursor=x"),
            &srv.admin,
        )
        .await,
        422,
        "validation",
    )
    .await;
    run_detail_pages_results(&srv).await;
    run_detail_shows_outputs_skips_and_children(&srv).await;
    srv.stop().await;
}

/// The run detail carries what a `when`, step outputs and a `job:` step
/// left: skipped reasons, outputs (per result and by target), child run
/// ids on the parent's result and the parent link on the child.
async fn run_detail_shows_outputs_skips_and_children(srv: &Srv) {
    srv.job("kind: Job\nname: leaf\nsteps:\n  - {name: say, exec: 'echo ::output answer=42'}\n")
        .await;
    srv.job(
        "kind: Job\nname: tree\nsteps:\n  - {name: call, job: leaf}\n  - {name: never, when: 'steps.call.outputs.answer == \"41\"', exec: 'true'}\n",
    )
    .await;
    let id = srv.submit("tree", json!({})).await;
    let d = srv.wait_run(&id).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let call = &d["results"][0];
    assert_eq!(call["outputs"]["answer"], "42", "{d}");
    assert_eq!(d["outputs"]["local"]["answer"], "42", "{d}");
    let skipped = &d["results"][1];
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["error"]
            .as_str()
            .expect("reason")
            .contains("condition"),
        "{skipped}"
    );
    let child = call["children"][0].as_str().expect("child id");
    let c = json_of(srv.get(&format!("/api/v1/runs/{child}"), &srv.admin).await).await;
    assert_eq!(c["job"], "leaf");
    assert_eq!(c["parent"]["run"], id.as_str());
    assert_eq!(c["parent"]["step"], 0);
    assert_eq!(c["parent"]["target"], "local");
}

/// A large run's detail comes in pages of results (`results_limit`,
/// `results_after` = the previous page's `results_next`); a small run's
/// detail keeps its shape (no `results_next`); bad paging is a 422.
async fn run_detail_pages_results(srv: &Srv) {
    srv.job(
        "kind: Job\nname: five\nsteps:\n  - {name: s1, exec: 'true'}\n  - {name: s2, exec: 'true'}\n  - {name: s3, exec: 'true'}\n  - {name: s4, exec: 'true'}\n  - {name: s5, exec: 'true'}\n",
    )
    .await;
    let id = srv.submit("five", json!({})).await;
    let all = srv.wait_run(&id).await;
    assert_eq!(all["status"], "succeeded", "{all}");
    assert_eq!(all["results"].as_array().expect("results").len(), 5);
    assert!(all.get("results_next").is_none(), "one page: no cursor");
    let mut steps = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            None => format!("/api/v1/runs/{id}?results_limit=2"),
            Some(c) => format!("/api/v1/runs/{id}?results_limit=2&results_after={c}"),
        };
        let page = json_of(srv.get(&path, &srv.admin).await).await;
        pages += 1;
        for r in page["results"].as_array().expect("results") {
            steps.push(r["step_name"].as_str().expect("step_name").to_string());
        }
        match page.get("results_next").and_then(|v| v.as_str()) {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(steps, ["s1", "s2", "s3", "s4", "s5"]);
    for bad in ["results_limit=0", "results_limit=5001", "results_after=x"] {
        expect_error(
            srv.get(&format!("/api/v1/runs/{id}?{bad}"), &srv.admin)
                .await,
            422,
            "validation",
        )
        .await;
    }
}

async fn users(backend: Backend) {
    let srv = Srv::start(backend).await;
    let viewer = srv.user(Role::Viewer).await;
    srv.user(Role::Operator).await;
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "viewer-user", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    expect_error(r, 409, "conflict").await;
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "bad name", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "weak", "password": "short", "role": "viewer"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "x", "password": PASSWORD, "role": "root"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    assert_eq!(
        all_pages(&srv, "/api/v1/users", "username").await,
        ["admin", "operator-user", "viewer-user"]
    );
    assert_eq!(
        all_pages(&srv, "/api/v1/users?role=operator", "username").await,
        ["operator-user"]
    );
    // One's own account, never the password hash.
    let me = srv
        .get("/api/v1/users/viewer-user", &viewer.access)
        .await
        .text()
        .await
        .expect("text");
    assert!(
        me.contains("\"role\":\"viewer\"") && !me.contains("argon2"),
        "{me}"
    );
    expect_error(
        srv.get("/api/v1/users/operator-user", &viewer.access).await,
        403,
        "forbidden",
    )
    .await;
    let r = srv
        .req(Method::PATCH, "/api/v1/users/viewer-user", Some(&srv.admin))
        .json(&json!({"role": "operator"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(json_of(r).await["role"], "operator");
    // The new role applies to existing tokens at once.
    let me = json_of(srv.get("/api/v1/auth/me", &viewer.access).await).await;
    assert_eq!(me["role"], "operator");
    let r = srv
        .req(Method::PATCH, "/api/v1/users/viewer-user", Some(&srv.admin))
        .json(&json!({}))
        .send()
        .await
        .expect("patch");
    expect_error(r, 422, "validation").await;
    let r = srv
        .req(Method::PATCH, "/api/v1/users/ghost", Some(&srv.admin))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .expect("patch");
    expect_error(r, 404, "not_found").await;
    srv.stop().await;
}

/// Every stored secret's value is masked in every run's output, declared or
/// not: 100 secrets printed by a run that declares none never appear in its
/// stored logs nor to a live follower; a value one job wrote to a file is
/// masked when a later ad-hoc command prints the file; updates, key rotation
/// and deletion are seen by the next run.
async fn undeclared_secrets_never_show(backend: Backend) {
    let srv = Srv::start(backend).await;
    let value = |i: usize| format!("leakcheck-{i}-Zq9x");
    for i in 0..100 {
        let r = srv
            .put(
                &format!("/api/v1/secrets/s{i}"),
                &srv.admin,
                json!({"value": value(i)}),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    srv.job(concat!(
        "kind: Job\nname: prints-all\nsteps:\n  - exec: ",
        "'i=0; while [ $i -lt 100 ]; do echo \"v=leakcheck-$i-Zq9x\"; i=$((i+1)); done; sleep 0.5; ",
        "i=0; while [ $i -lt 100 ]; do echo \"w=leakcheck-$i-Zq9x\"; i=$((i+1)); done'\n"
    ))
    .await;
    let id = srv.submit("prints-all", json!({})).await;
    // A live follower from the start.
    let live = srv
        .client
        .get(srv.url(&format!("/api/v1/runs/{id}/logs")))
        .bearer_auth(&srv.admin)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse")
        .text()
        .await
        .expect("sse text");
    assert_eq!(srv.wait_run(&id).await["status"], "succeeded");
    let stored = srv
        .get(&format!("/api/v1/runs/{id}/logs?limit=5000"), &srv.admin)
        .await
        .text()
        .await
        .expect("logs");
    for (what, text) in [("stored", &stored), ("live", &live)] {
        assert!(
            text.contains("v=***") && text.contains("w=***"),
            "{what}: {text}"
        );
        let leaked: Vec<usize> = (0..100).filter(|i| text.contains(&value(*i))).collect();
        assert!(
            leaked.is_empty(),
            "{what}: {} values leaked: {leaked:?}",
            leaked.len()
        );
        assert!(!text.contains("leakcheck-"), "{what}: {text}");
    }
    // A job declaring `db` writes it to a file; any later run printing the file sees it masked.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("creds.txt");
    let file = file.to_str().expect("path");
    let r = srv
        .put(
            "/api/v1/secrets/db",
            &srv.admin,
            json!({"value": "first-db-pass-71"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    srv.job(&format!(
        "kind: Job\nname: writes-db\nsecrets: [db]\nsteps:\n  - exec: 'echo password=$DB > {file}'\n"
    ))
    .await;
    let cat = |expect_masked: &'static str, expect_clear: Option<&'static str>| {
        let srv = &srv;
        async move {
            let r = srv
                .post(
                    "/api/v1/exec",
                    &srv.admin,
                    json!({"command": format!("cat {file}"), "timeout": "30s"}),
                )
                .await;
            assert_eq!(r.status(), 201);
            let exec_id = json_of(r).await["id"].as_str().expect("id").to_string();
            assert_eq!(srv.wait_run(&exec_id).await["status"], "succeeded");
            let logs = srv
                .get(&format!("/api/v1/runs/{exec_id}/logs"), &srv.admin)
                .await
                .text()
                .await
                .expect("logs");
            assert!(
                !logs.contains(expect_masked),
                "{expect_masked} leaked: {logs}"
            );
            match expect_clear {
                Some(clear) => assert!(logs.contains(clear), "{logs}"),
                None => assert!(logs.contains("password=***"), "{logs}"),
            }
        }
    };
    let run = srv.submit("writes-db", json!({})).await;
    assert_eq!(srv.wait_run(&run).await["status"], "succeeded");
    cat("first-db-pass-71", None).await;
    // Key rotation re-encrypts: still masked.
    let r = srv.post("/api/v1/keys/rotate", &srv.admin, json!({})).await;
    assert_eq!(r.status(), 200);
    cat("first-db-pass-71", None).await;
    // An update: the next runs mask the new value.
    let r = srv
        .put(
            "/api/v1/secrets/db",
            &srv.admin,
            json!({"value": "second-db-pass-72"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let run = srv.submit("writes-db", json!({})).await;
    assert_eq!(srv.wait_run(&run).await["status"], "succeeded");
    cat("second-db-pass-72", None).await;
    // Deleted: no longer a secret, so no longer masked.
    let r = srv
        .req(
            Method::DELETE,
            "/api/v1/secrets/db?force=true",
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    cat("first-db-pass-71", Some("password=second-db-pass-72")).await;
    srv.stop().await;
}

on_both!(
    targets,
    jobs,
    secrets,
    runs,
    users,
    undeclared_secrets_never_show
);
