//! The server's own host is out of reach below admin: steps on a target with
//! the `local` connection (and `copy.src`, read on the server's host
//! whatever the target) could read or overwrite the access-token signing
//! key, the master key, the database and the configuration. Over real HTTP
//! on a real SQLite server with its real key files: an operator's every
//! attempt (exec, script, copy source and destination, a selector matching
//! a local target, creating or changing a local target) is a 403 that names
//! the target and the setting, is audited as `request.denied`, and leaves
//! the files untouched; an admin still can; `local_allow_roles` with the
//! operator role lets the operator.

use crate::common;

use std::path::PathBuf;

use common::{Backend, Srv, expect_error};
use opsconductor::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

/// A SQLite server with the key files next to its database (no JWT secret
/// in the configuration, so the signing key is the `ops.jwt` file) and a
/// configuration file in the same directory.
async fn server(allow: Vec<Role>) -> (Srv, Vec<PathBuf>) {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.jwt_secret = None;
        c.local_allow_roles = allow;
    })
    .await;
    let db = srv.db_path.clone().expect("SQLite file");
    let config = srv.dir.path().join("server.toml");
    std::fs::write(&config, "workers = 2\n").expect("config file");
    let files = vec![
        db.with_extension("jwt"),
        db.with_extension("key"),
        db.clone(),
        config,
    ];
    for f in &files {
        assert!(f.is_file(), "{} exists", f.display());
    }
    (srv, files)
}

async fn apply_yaml(srv: &Srv, token: &str, yaml: &str) -> reqwest::Response {
    srv.req(Method::POST, "/api/v1/apply", Some(token))
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .expect("apply")
}

/// Asserts a 403 that says which target or field and how to enable it.
async fn refused(r: reqwest::Response, names: &str) {
    let v = expect_error(r, 403, "forbidden").await;
    let m = v["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(m.contains(names), "names {names}: {m}");
    assert!(
        m.contains("local.allow_roles") && m.contains("OPSC_LOCAL_ALLOW_ROLES"),
        "says how to enable it: {m}"
    );
}

/// The jobs an operator could use to reach `file` through the server's host.
fn hostile_jobs(i: usize, file: &str) -> Vec<(String, String, &'static str)> {
    vec![
        (
            format!("script-read-{i}"),
            format!(
                "kind: Job\nname: script-read-{i}\ntargets: [local]\nsteps:\n  - interpreter: sh\n    script: |\n      cat {file}\n"
            ),
            "'local'",
        ),
        (
            format!("script-write-{i}"),
            format!(
                "kind: Job\nname: script-write-{i}\ntargets: [local]\nsteps:\n  - interpreter: sh\n    script: |\n      echo pwned > {file}\n"
            ),
            "'local'",
        ),
        (
            format!("copy-dest-{i}"),
            format!(
                "kind: Job\nname: copy-dest-{i}\ntargets: [local]\nsteps:\n  - copy:\n      dest: {file}\n      content: pwned\n"
            ),
            "'local'",
        ),
        (
            format!("copy-src-local-{i}"),
            format!(
                "kind: Job\nname: copy-src-local-{i}\ntargets: [local]\nsteps:\n  - copy:\n      src: {file}\n      dest: /tmp/opsc-stolen-{i}\n"
            ),
            "'local'",
        ),
        // The source is read on the server's host even for a remote target.
        (
            format!("copy-src-remote-{i}"),
            format!(
                "kind: Job\nname: copy-src-remote-{i}\ntargets: [remote]\nsteps:\n  - copy:\n      src: {file}\n      dest: /tmp/opsc-stolen-{i}\n"
            ),
            "copy.src",
        ),
        // A selector that matches a local target under another name.
        (
            format!("by-tag-{i}"),
            format!(
                "kind: Job\nname: by-tag-{i}\ntargets: ['tag:web']\nsteps:\n  - exec: cat {file}\n"
            ),
            "'box'",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_cannot_reach_the_servers_keys_database_or_config() {
    let (srv, files) = server(vec![Role::Admin]).await;
    let before: Vec<Vec<u8>> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e != "db"))
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    // Targets an admin made: a remote one, and a local one under another name.
    let r = apply_yaml(
        &srv,
        &srv.admin,
        "kind: Target\nname: remote\nconnection: {type: ssh, host: 127.0.0.1, port: 1, user: ops}\n---\nkind: Target\nname: box\ntags: [web]\nconnection: {type: local}\n",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let op = srv.user(Role::Operator).await;
    let mut attempts = 0;
    for (i, f) in files.iter().enumerate() {
        let file = f.display().to_string();
        // Ad-hoc commands, reading and overwriting.
        for command in [format!("cat {file}"), format!("echo pwned > {file}")] {
            refused(
                srv.post("/api/v1/exec", &op.access, json!({"command": command}))
                    .await,
                "'local'",
            )
            .await;
            refused(
                srv.post(
                    "/api/v1/exec",
                    &op.access,
                    json!({"command": command, "targets": ["tag:web"]}),
                )
                .await,
                "'box'",
            )
            .await;
            attempts += 2;
        }
        // Jobs: the operator may store them, never run them.
        for (name, yaml, names) in hostile_jobs(i, &file) {
            let r = apply_yaml(&srv, &op.access, &yaml).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            refused(
                srv.post("/api/v1/runs", &op.access, json!({"job": name}))
                    .await,
                names,
            )
            .await;
            attempts += 1;
        }
    }
    // Creating a local target, turning one into a local one, changing the
    // built-in one or one an admin made: all the same door.
    refused(
        srv.put(
            "/api/v1/targets/mine",
            &op.access,
            json!({"connection": {"type": "local"}}),
        )
        .await,
        "'mine'",
    )
    .await;
    refused(
        apply_yaml(
            &srv,
            &op.access,
            "kind: Target\nname: remote\nconnection: {type: local}\n",
        )
        .await,
        "'remote'",
    )
    .await;
    refused(
        srv.put(
            "/api/v1/targets/local",
            &op.access,
            json!({"connection": {"type": "local"}, "tags": ["web"]}),
        )
        .await,
        "'local'",
    )
    .await;
    refused(
        srv.put(
            "/api/v1/targets/box",
            &op.access,
            json!({"connection": {"type": "ssh", "host": "127.0.0.1", "user": "x"}}),
        )
        .await,
        "'box'",
    )
    .await;
    attempts += 4;
    // Nothing ran, nothing changed.
    let runs: Value = srv
        .get("/api/v1/runs?limit=500", &srv.admin)
        .await
        .json()
        .await
        .expect("runs");
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(0), "{runs}");
    let after: Vec<Vec<u8>> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e != "db"))
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    assert_eq!(before, after, "the key and config files are untouched");
    // Every attempt is in the audit log, with the reason.
    let audit: Value = srv
        .get("/api/v1/audit?limit=500", &srv.admin)
        .await
        .json()
        .await
        .expect("audit");
    let denied: Vec<&Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| {
            e["action"] == "request.denied"
                && e["actor"] == "operator-user"
                && e["detail"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("local.allow_roles"))
        })
        .collect();
    assert_eq!(denied.len(), attempts, "{audit}");

    // An admin still can: the same command reads the signing key.
    let r = srv
        .post(
            "/api/v1/exec",
            &srv.admin,
            json!({"command": format!("test -r {}", files[0].display())}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("run")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(srv.wait_run(&id).await["status"], "succeeded");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_roles_with_operator_lets_the_operator_use_local() {
    let (srv, files) = server(vec![Role::Admin, Role::Operator]).await;
    let op = srv.user(Role::Operator).await;
    let jwt = files[0].display().to_string();
    let r = srv
        .post(
            "/api/v1/exec",
            &op.access,
            json!({"command": format!("test -r {jwt}")}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("run")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(srv.wait_run(&id).await["status"], "succeeded");
    let r = srv
        .put(
            "/api/v1/targets/mine",
            &op.access,
            json!({"connection": {"type": "local"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    // A viewer still cannot run anything (the permission matrix).
    let viewer = srv.user(Role::Viewer).await;
    expect_error(
        srv.post("/api/v1/exec", &viewer.access, json!({"command": "true"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    srv.stop().await;
}

/// A parameter cannot move a `copy.dest` out of the directory the job names:
/// hostile values are refused at submit with the field named, nothing is
/// written; honest ones (also with a harmless `..` inside) still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_parameters_cannot_move_a_copy_dest() {
    let srv = Srv::start(Backend::Sqlite).await;
    let out = srv.dir.path().join("out");
    std::fs::create_dir_all(out.join("sub")).expect("out dir");
    let yaml = format!(
        "kind: Job\nname: drop\ntargets: [local]\nparams:\n  type: object\n  properties:\n    name: {{type: string}}\n  required: [name]\nsteps:\n  - name: first\n    exec: 'true'\n  - name: write\n    copy:\n      dest: \"{}/{{{{ params.name }}}}\"\n      content: x\n---\nkind: Job\nname: anywhere\ntargets: [local]\nparams:\n  type: object\n  properties:\n    path: {{type: string}}\nsteps:\n  - copy:\n      dest: \"{{{{ params.path }}}}\"\n      content: x\n",
        out.display()
    );
    srv.job(&yaml).await;
    let outside = srv.dir.path().join("escaped");
    let hostile = [
        "../../etc/passwd".to_string(),
        "a/../../b".to_string(),
        "..".to_string(),
        "x/..".to_string(),
        "../escaped".to_string(),
        "sub/../../escaped".to_string(),
        format!("../{}", "../".repeat(20)),
    ];
    for name in &hostile {
        let r = srv
            .post(
                "/api/v1/runs",
                &srv.admin,
                json!({"job": "drop", "params": {"name": name}}),
            )
            .await;
        let v = expect_error(r, 422, "validation").await;
        assert_eq!(v["error"]["field"], "steps[1].copy.dest", "{name}: {v}");
    }
    // The whole path from a parameter: absolute or climbing paths are refused.
    for path in [
        "/etc/passwd".to_string(),
        format!("{}", outside.display()),
        "../x".to_string(),
    ] {
        let r = srv
            .post(
                "/api/v1/runs",
                &srv.admin,
                json!({"job": "anywhere", "params": {"path": path}}),
            )
            .await;
        let v = expect_error(r, 422, "validation").await;
        assert_eq!(v["error"]["field"], "steps[0].copy.dest", "{path}: {v}");
    }
    assert!(!outside.exists(), "nothing was written outside");
    // An absolute path inside the directory stays inside it (`out//tmp/x`).
    let r = srv
        .post(
            "/api/v1/runs",
            &srv.admin,
            json!({"job": "drop", "params": {"name": outside.display().to_string()}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    // Honest values still work, normalised.
    for (name, file) in [("ok.txt", "ok.txt"), ("sub/../ok2.txt", "ok2.txt")] {
        let id = srv.submit("drop", json!({"name": name})).await;
        assert_eq!(srv.wait_run(&id).await["status"], "succeeded", "{name}");
        assert!(out.join(file).is_file(), "{name} wrote {file}");
    }
    srv.stop().await;
}

/// The audit event of an ad-hoc command records the command, with the
/// values of the secrets the run holds (its targets' credentials) masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_audit_event_records_the_masked_command() {
    let srv = Srv::start(Backend::Sqlite).await;
    let secret = "hunter2-credential-value";
    let r = srv
        .put(
            "/api/v1/secrets/box-cred",
            &srv.admin,
            json!({"value": secret}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = srv
        .put(
            "/api/v1/targets/box",
            &srv.admin,
            json!({"connection": {"type": "local"}, "credential": "box-cred"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let command = format!("echo {secret} && echo visible-part");
    let r = srv
        .post(
            "/api/v1/exec",
            &srv.admin,
            json!({"command": command, "targets": ["box"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("run")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let audit: Value = srv
        .get(&format!("/api/v1/audit?object=run:{id}"), &srv.admin)
        .await
        .json()
        .await
        .expect("audit");
    let submit = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "run.submit")
        .unwrap_or_else(|| panic!("run.submit in {audit}"))
        .clone();
    assert_eq!(
        submit["detail"]["command"], "echo *** && echo visible-part",
        "{submit}"
    );
    assert!(!submit.to_string().contains(secret), "{submit}");
    srv.wait_run(&id).await;
    srv.stop().await;
}

/// An operator who edits a job that an admin runs on `local` does not
/// borrow the admin's reach: a version written by a role that may not use
/// the server's host is refused there for everyone, until an admin stores
/// a reviewed version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_version_written_by_an_operator_does_not_run_on_local_for_an_admin() {
    let (srv, files) = server(vec![Role::Admin]).await;
    let op = srv.user(Role::Operator).await;
    let jwt = files[0].display().to_string();
    let yaml = format!(
        "kind: Job\nname: nightly\ntargets: [local]\nsteps:\n  - exec: cp {jwt} /tmp/opsc-leaked-key\n"
    );
    let r = apply_yaml(&srv, &op.access, &yaml).await;
    assert_eq!(r.status(), 200);
    let r = srv
        .post("/api/v1/runs", &srv.admin, json!({"job": "nightly"}))
        .await;
    let v = expect_error(r, 403, "forbidden").await;
    let m = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        m.contains("operator-user") && m.contains("local.allow_roles"),
        "{m}"
    );
    // The admin reviews it and stores a new version: it runs.
    let r = apply_yaml(
        &srv,
        &srv.admin,
        "kind: Job\nname: nightly\ntargets: [local]\nsteps:\n  - exec: 'true'\n",
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = srv.submit("nightly", json!({})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "succeeded");
    srv.stop().await;
}
