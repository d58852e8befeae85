//! The audit log over real HTTP: mutations, logins and refusals are events
//! with who, how, from where and the request id; and `GET /api/v1/audit/verify`
//! pinpoints a row edited, deleted or reordered directly in the database
//! (SQLite opened with sqlx, PostgreSQL through its own connection).

mod common;

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

    let page: Value = srv
        .get("/api/v1/audit?limit=500", &srv.admin)
        .await
        .json()
        .await
        .expect("audit");
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
    assert_eq!(
        (v["ok"].as_bool(), v["first_bad_seq"].as_u64()),
        (Some(false), Some(3)),
        "{v}"
    );
    assert!(
        v["problem"].as_str().unwrap_or("").contains("altered"),
        "{v}"
    );
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
    assert_eq!(
        (v["ok"].as_bool(), v["first_bad_seq"].as_u64()),
        (Some(false), Some(5)),
        "{v}"
    );
    assert!(
        v["problem"].as_str().unwrap_or("").contains("deleted"),
        "{v}"
    );
    // The viewer may verify too (ReadAudit), and sees the same verdict.
    let r = srv.get("/api/v1/audit/verify", &viewer.access).await;
    let vv: Value = r.json().await.expect("json");
    assert_eq!(vv["first_bad_seq"], 5);
    srv.stop().await;
}

on_both!(audit_chain_detects_tampering);
