//! The audit log over real HTTP: mutations, logins and refusals are events
//! with who, how, from where and the request id; and `GET /api/v1/audit/verify`
//! pinpoints a row edited, deleted or reordered directly in the database
//! (SQLite opened with sqlx, PostgreSQL through its own connection).

use crate::common;

use common::{Backend, HELLO_JOB, Srv};
use opsconductor::auth::Role;
use serde_json::{Value, json};

/// Runs a statement on the server's database behind its back.
async fn tamper(srv: &Srv, sql: &str) {
    match srv.backend {
        Backend::Sqlite => {
            let path = srv.db_path.as_ref().expect("sqlite file");
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let pool = sqlx::SqlitePool::connect_with(opts)
                .await
                .expect("open sqlite");
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&pool)
                .await
                .expect("tamper");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&srv.database_url)
                .await
                .expect("open postgres");
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&pool)
                .await
                .expect("tamper");
            pool.close().await;
        }
    }
}

async fn verify(srv: &Srv) -> Value {
    let r = srv.get("/api/v1/audit/verify", &srv.admin).await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

async fn audit_chain_detects_tampering(backend: Backend) {
    let srv = Srv::start(backend).await;
    // Some history: a login, a job, a run, a secret, a denied request.
    srv.job(HELLO_JOB).await;
    let id = srv.submit("hello", json!({"name": "audit"})).await;
    srv.wait_run(&id).await;
    let r = srv
        .put(
            "/api/v1/secrets/db-password",
            &srv.admin,
            json!({"value": "s3cret-value-123"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let viewer = srv.user(Role::Viewer).await;
    assert_eq!(srv.get("/api/v1/users", &viewer.access).await.status(), 403);

    let page = audit_page(&srv).await;
    let events = page["items"].as_array().expect("items").clone();
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "user.create",
        "auth.login",
        "job.create",
        "run.submit",
        "secret.create",
        "request.denied",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let submit = events
        .iter()
        .find(|e| e["action"] == "run.submit")
        .expect("run.submit");
    assert_eq!(submit["actor"], "admin");
    assert_eq!(submit["object"], format!("run:{id}"));
    assert_eq!(submit["detail"]["role"], "admin");
    assert_eq!(submit["detail"]["via"], "password");
    assert_eq!(submit["detail"]["source"], "127.0.0.1");
    assert!(submit["detail"]["request_id"].is_string());
    // The secret's value is nowhere in the log.
    assert!(!page.to_string().contains("s3cret-value-123"));
    // Newest first, with pages that neither skip nor repeat.
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audit?limit=3&cursor={c}"),
            None => "/api/v1/audit?limit=3".to_string(),
        };
        let p: Value = srv.get(&path, &srv.admin).await.json().await.expect("page");
        paged.extend(
            p["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|e| e["seq"].as_u64()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let total = verify(&srv).await["events"].as_u64().expect("events");
    // The verify call itself is not audited; later events may have been added by workers.
    assert!(
        paged.len() as u64 >= seqs.len() as u64 && paged.len() as u64 <= total,
        "{paged:?}"
    );
    let mut sorted = paged.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(sorted, paged, "no duplicates, newest first");

    let v = verify(&srv).await;
    assert_eq!(v["ok"], true, "{v}");
    let n = v["events"].as_u64().expect("events");
    assert!(n >= 6);
    // An edited row.
    tamper(
        &srv,
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3",
    )
    .await;
    let v = verify(&srv).await;
    assert_broken_at(&v, 3, "altered");
    // Put it back: intact again.
    let actor: String = events
        .iter()
        .find(|e| e["seq"] == 3)
        .and_then(|e| e["actor"].as_str())
        .expect("event 3")
        .to_string();
    tamper(
        &srv,
        &format!("UPDATE audit_events SET actor = '{actor}' WHERE seq = 3"),
    )
    .await;
    assert_eq!(verify(&srv).await["ok"], true);
    // A deleted row: the next one no longer chains.
    tamper(&srv, "DELETE FROM audit_events WHERE seq = 4").await;
    let v = verify(&srv).await;
    assert_broken_at(&v, 5, "deleted");
    // The viewer may verify too (ReadAudit), and sees the same verdict.
    let r = srv.get("/api/v1/audit/verify", &viewer.access).await;
    let vv: Value = r.json().await.expect("json");
    assert_eq!(vv["first_bad_seq"], 5);
    srv.stop().await;
}

/// Swaps two events' positions: three renumberings, since `seq` is the key.
async fn swap(srv: &Srv, a: u64, b: u64) {
    tamper(
        srv,
        &format!("UPDATE audit_events SET seq = -1 WHERE seq = {a}"),
    )
    .await;
    tamper(
        srv,
        &format!("UPDATE audit_events SET seq = {a} WHERE seq = {b}"),
    )
    .await;
    tamper(
        srv,
        &format!("UPDATE audit_events SET seq = {b} WHERE seq = -1"),
    )
    .await;
}

async fn verify_against(srv: &Srv, seq: u64, hash: &str) -> Value {
    let r = srv
        .get(
            &format!("/api/v1/audit/verify?head_seq={seq}&head_hash={hash}"),
            &srv.admin,
        )
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

async fn audit_detects_reordering_and_deleted_newest_events(backend: Backend) {
    let srv = Srv::start(backend).await;
    srv.job(HELLO_JOB).await;
    for name in ["t1", "t2", "t3"] {
        let r = srv
            .put(&format!("/api/v1/targets/{name}"), &srv.admin, json!({}))
            .await;
        assert_eq!(r.status(), 201);
    }
    let v = verify(&srv).await;
    assert_eq!(v["ok"], true, "{v}");
    let head_seq = v["head_seq"].as_u64().expect("head_seq");
    let head_hash = v["head_hash"].as_str().expect("head_hash").to_string();
    assert_eq!(head_seq, v["events"].as_u64().expect("events"), "{v}");
    assert_eq!(head_hash.len(), 64, "{v}");
    // The anchor of an intact log matches.
    assert_eq!(verify_against(&srv, head_seq, &head_hash).await["ok"], true);
    // Half an anchor is an error.
    common::expect_error(
        srv.get("/api/v1/audit/verify?head_seq=1", &srv.admin).await,
        422,
        "validation",
    )
    .await;

    // Two events swapped: the first of them no longer follows its predecessor.
    swap(&srv, 3, 4).await;
    let v = verify(&srv).await;
    assert_broken_at(&v, 3, "reordered");
    swap(&srv, 3, 4).await;
    assert_eq!(verify(&srv).await["ok"], true);

    // The newest event deleted: what is left still chains — only the anchor shows it.
    tamper(
        &srv,
        &format!("DELETE FROM audit_events WHERE seq = {head_seq}"),
    )
    .await;
    let v = verify(&srv).await;
    assert_eq!(v["ok"], true, "the chain alone cannot see it: {v}");
    assert_eq!(v["head_seq"].as_u64(), Some(head_seq - 1), "{v}");
    let v = verify_against(&srv, head_seq, &head_hash).await;
    assert_broken_at(&v, head_seq, "deleted");
    // Even when new events were appended since (the chain goes on from the
    // event before the deleted one, and may reuse its number).
    let r = srv.put("/api/v1/targets/t4", &srv.admin, json!({})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(verify(&srv).await["ok"], true);
    let v = verify_against(&srv, head_seq, &head_hash).await;
    assert_eq!(
        (v["ok"].as_bool(), v["first_bad_seq"].as_u64()),
        (Some(false), Some(head_seq)),
        "{v}"
    );
    srv.stop().await;
}

async fn audited_mutations_carry_an_outcome(backend: Backend) {
    let srv = Srv::start(backend).await;
    srv.job(HELLO_JOB).await;
    let viewer = srv.user(Role::Viewer).await;
    // A failed login (audited by the engine), a denied request, and
    // mutations that fail validation or find nothing.
    let r = srv
        .req(reqwest::Method::POST, "/api/v1/auth/login", None)
        .json(&json!({"username": "admin", "password": "wrong password"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 401);
    assert_eq!(
        srv.post("/api/v1/runs", &viewer.access, json!({"job": "hello"}))
            .await
            .status(),
        403
    );
    let r = srv
        .req(reqwest::Method::POST, "/api/v1/runs", Some(&srv.admin))
        .header("x-request-id", "failed-submit-1")
        .json(&json!({"job": "no-such-job"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status(), 404);
    let r = srv
        .req(
            reqwest::Method::DELETE,
            "/api/v1/targets/ghost",
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 404);
    let r = srv
        .post(
            "/api/v1/runs",
            &srv.admin,
            json!({"job": "hello", "params": {"name": 5}}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = srv
        .put(
            "/api/v1/secrets/s1",
            &srv.admin,
            json!({"value": 12345678, "oops": "do-not-log-me"}),
        )
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());
    // Not audited: reads that fail, and requests without a valid token.
    assert!(
        srv.get("/api/v1/runs/does-not-exist", &srv.admin)
            .await
            .status()
            .is_client_error()
    );
    let r = srv
        .req(reqwest::Method::POST, "/api/v1/runs", None)
        .json(&json!({"job": "hello"}))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(r.status(), 401);

    let page = audit_page(&srv).await;
    let events = page["items"].as_array().expect("items").clone();
    for e in &events {
        let outcome = e["outcome"].as_str().unwrap_or("");
        assert!(
            ["success", "denied", "failed"].contains(&outcome),
            "every event has an outcome: {e}"
        );
    }
    let find =
        |action: &str| -> Vec<&Value> { events.iter().filter(|e| e["action"] == action).collect() };
    assert!(find("job.create").iter().all(|e| e["outcome"] == "success"));
    assert!(
        find("user.create")
            .iter()
            .all(|e| e["outcome"] == "success")
    );
    let logins = find("auth.login");
    assert!(logins.iter().any(|e| e["outcome"] == "success"));
    assert!(logins.iter().any(|e| e["outcome"] == "failed"));
    let denied = find("request.denied");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["outcome"], "denied");
    assert_eq!(denied[0]["actor"], "viewer-user");
    let failed = find("request.failed");
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(failed.iter().all(|e| e["outcome"] == "failed"));
    let unknown_job = failed
        .iter()
        .find(|e| e["detail"]["request_id"] == "failed-submit-1")
        .expect("the failed submission");
    assert_eq!(unknown_job["actor"], "admin");
    assert_eq!(unknown_job["object"], "route:POST /api/v1/runs");
    assert_eq!(unknown_job["detail"]["status"], 404);
    assert_eq!(unknown_job["detail"]["code"], "not_found");
    assert_eq!(unknown_job["detail"]["role"], "admin");
    assert_eq!(unknown_job["detail"]["source"], "127.0.0.1");
    let invalid = failed
        .iter()
        .filter(|e| e["object"] == "route:POST /api/v1/runs")
        .count();
    assert_eq!(invalid, 2, "{failed:?}");
    let invalid = failed
        .iter()
        .find(|e| e["detail"]["status"] == 422)
        .expect("the invalid parameters");
    assert_eq!(invalid["detail"]["code"], "validation");
    let not_found = failed
        .iter()
        .find(|e| e["object"] == "route:DELETE /api/v1/targets/{name}")
        .expect("the failed deletion");
    assert_eq!(not_found["detail"]["status"], 404);
    assert_eq!(not_found["detail"]["code"], "not_found");
    assert_eq!(not_found["detail"]["path"], "/api/v1/targets/ghost");
    let secret = failed
        .iter()
        .find(|e| e["object"] == "route:PUT /api/v1/secrets/{name}")
        .expect("the bad secret");
    assert_eq!(secret["detail"]["path"], "/api/v1/secrets/s1");
    // The input is not in the log.
    let text = page.to_string();
    assert!(
        !text.contains("12345678") && !text.contains("do-not-log-me"),
        "{text}"
    );
    assert_eq!(verify(&srv).await["ok"], true);
    srv.stop().await;
}

on_both!(
    audit_chain_detects_tampering,
    audit_detects_reordering_and_deleted_newest_events,
    audited_mutations_carry_an_outcome
);

/// A verification that failed at event `seq` for the reason `problem` names.
fn assert_broken_at(v: &Value, seq: u64, problem: &str) {
    assert_eq!(
        (v["ok"].as_bool(), v["first_bad_seq"].as_u64()),
        (Some(false), Some(seq)),
        "{v}"
    );
    assert!(v["problem"].as_str().unwrap_or("").contains(problem), "{v}");
}

/// The newest 500 audit events as the admin reads them.
async fn audit_page(srv: &Srv) -> Value {
    srv.get("/api/v1/audit?limit=500", &srv.admin)
        .await
        .json()
        .await
        .expect("audit")
}

/// A failed login is recorded with the name tried and no role (not
/// `trusted`); what was typed as a username (it may be a mistyped password)
/// is shown to admins only: viewers and operators see it redacted, in the
/// whole page and when they filter by the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_have_no_role_and_the_name_tried_is_for_admins_only() {
    let srv = Srv::start(Backend::Sqlite).await;
    let viewer = srv.user(Role::Viewer).await;
    let operator = srv.user(Role::Operator).await;
    let typed = "Tr0ub4dor-typed-as-a-name";
    let r = srv
        .req(reqwest::Method::POST, "/api/v1/auth/login", None)
        .json(&json!({"username": typed, "password": "whatever it was"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 401);
    // The admin sees the name tried, the outcome, and no role.
    let page = audit_page(&srv).await;
    let failed = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "auth.login" && e["outcome"] == "failed")
        .unwrap_or_else(|| panic!("a failed login in {page}"))
        .clone();
    assert_eq!(failed["actor"], typed, "{failed}");
    assert_eq!(failed["object"], format!("user:{typed}"), "{failed}");
    assert!(failed["detail"]["role"].is_null(), "no role: {failed}");
    // A successful login carries the user's role.
    let ok = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "auth.login" && e["actor"] == "viewer-user")
        .expect("the viewer's login")
        .clone();
    assert_eq!(ok["detail"]["role"], "viewer", "{ok}");
    // Viewers and operators never see it, whichever way they ask.
    for token in [&viewer.access, &operator.access] {
        for path in [
            "/api/v1/audit?limit=500".to_string(),
            format!("/api/v1/audit?object=user:{typed}"),
        ] {
            let r = srv.get(&path, token).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.expect("text");
            assert!(!text.contains(typed), "{path} shows the name tried: {text}");
        }
        let page: Value = srv
            .get("/api/v1/audit?limit=500", token)
            .await
            .json()
            .await
            .expect("json");
        let redacted = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|e| e["action"] == "auth.login" && e["outcome"] == "failed")
            .expect("the failed login, redacted")
            .clone();
        assert_eq!(redacted["actor"], "[redacted]", "{redacted}");
        assert_eq!(redacted["object"], "user:[redacted]", "{redacted}");
    }
    srv.stop().await;
}
