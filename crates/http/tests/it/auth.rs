//! Authentication over real HTTP: logins, the token attacks (alg none, key
//! confusion, wrong signature, expired, not yet valid, wrong audience or
//! issuer, missing claims), rotating refresh tokens with reuse detection,
//! logout, password changes and disabling, API tokens, and the rate limits.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Backend, JWT_SECRET, PASSWORD, Srv, expect_error};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use opsconductor::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Claims like the server's, for `sub`/`sid`, adjustable.
fn claims(sub: &str, sid: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": sub, "sid": sid, "role": "admin",
        "iss": "opsconductor", "aud": "opsconductor-api",
        "iat": now, "nbf": now, "exp": now + 600, "jti": "t",
    })
}

fn sign(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("signing")
}

/// The `sid` of a server-issued token (read without verification).
fn sid_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    let v: Value = serde_json::from_slice(&bytes).expect("claims");
    v["sid"].as_str().expect("sid").to_string()
}

async fn me(srv: &Srv, token: &str) -> reqwest::Response {
    srv.get("/api/v1/auth/me", token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_and_token_attacks() {
    let srv = Srv::start(Backend::Sqlite).await;
    let r = srv
        .req(Method::POST, "/api/v1/auth/login", None)
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900, "15 minutes by default");
    assert!(body["refresh_expires_in"].as_i64().expect("refresh ttl") > 6 * 86400);
    let good = body["access_token"].as_str().expect("token").to_string();
    let r = me(&srv, &good).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("me");
    assert_eq!(
        (
            v["username"].as_str(),
            v["role"].as_str(),
            v["via"].as_str()
        ),
        (Some("admin"), Some("admin"), Some("password"))
    );

    let sid = sid_of(&good);
    let secret = JWT_SECRET.as_bytes();
    // A correctly signed token of a live login works (the baseline of the attacks).
    assert_eq!(
        me(
            &srv,
            &sign(Algorithm::HS256, &claims("admin", &sid), secret)
        )
        .await
        .status(),
        200
    );

    // alg: none, with and without a signature part.
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims("admin", &sid).to_string().as_bytes());
    for t in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        expect_error(me(&srv, &t).await, 401, "unauthenticated").await;
    }
    // Key confusion: another algorithm (HS512 with the same secret; RS256 header with an HMAC signature).
    expect_error(
        me(
            &srv,
            &sign(Algorithm::HS512, &claims("admin", &sid), secret),
        )
        .await,
        401,
        "unauthenticated",
    )
    .await;
    let rs_header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let forged = format!(
        "{rs_header}.{payload}.{}",
        good.split('.').nth(2).unwrap_or("")
    );
    expect_error(me(&srv, &forged).await, 401, "unauthenticated").await;
    // Wrong signature: another key, and a flipped signature.
    expect_error(
        me(
            &srv,
            &sign(
                Algorithm::HS256,
                &claims("admin", &sid),
                b"another-secret-another-secret-another-secret",
            ),
        )
        .await,
        401,
        "unauthenticated",
    )
    .await;
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap_or('A');
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    expect_error(me(&srv, &tampered).await, 401, "unauthenticated").await;
    // A payload changed under a valid signature (role/sub swap).
    let parts: Vec<&str> = good.split('.').collect();
    let evil = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims("someone-else", &sid).to_string().as_bytes()),
        parts[2]
    );
    expect_error(me(&srv, &evil).await, 401, "unauthenticated").await;

    let now = chrono::Utc::now().timestamp();
    let mut c = claims("admin", &sid);
    c["exp"] = json!(now - 120);
    c["iat"] = json!(now - 1000);
    c["nbf"] = json!(now - 1000);
    let body = expect_error(
        me(&srv, &sign(Algorithm::HS256, &c, secret)).await,
        401,
        "unauthenticated",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{body}"
    );
    let mut c = claims("admin", &sid);
    c["nbf"] = json!(now + 3600);
    expect_error(
        me(&srv, &sign(Algorithm::HS256, &c, secret)).await,
        401,
        "unauthenticated",
    )
    .await;
    let mut c = claims("admin", &sid);
    c["aud"] = json!("another-api");
    expect_error(
        me(&srv, &sign(Algorithm::HS256, &c, secret)).await,
        401,
        "unauthenticated",
    )
    .await;
    let mut c = claims("admin", &sid);
    c["iss"] = json!("evil");
    expect_error(
        me(&srv, &sign(Algorithm::HS256, &c, secret)).await,
        401,
        "unauthenticated",
    )
    .await;
    for missing in ["exp", "nbf", "aud", "iss", "sub", "sid"] {
        let mut c = claims("admin", &sid);
        c.as_object_mut().expect("object").remove(missing);
        expect_error(
            me(&srv, &sign(Algorithm::HS256, &c, secret)).await,
            401,
            "unauthenticated",
        )
        .await;
    }
    // A valid signature over a login that never existed.
    expect_error(
        me(
            &srv,
            &sign(Algorithm::HS256, &claims("admin", "no-such-login"), secret),
        )
        .await,
        401,
        "unauthenticated",
    )
    .await;
    // Malformed headers.
    for h in ["Basic YWRtaW46eA==", "Bearer", "Bearer ", "token"] {
        let r = srv
            .client
            .get(srv.url("/api/v1/auth/me"))
            .header("authorization", h)
            .send()
            .await
            .expect("request");
        expect_error(r, 401, "unauthenticated").await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_user_and_wrong_password_look_the_same() {
    let srv = Srv::start(Backend::Sqlite).await;
    let attempt = |user: &'static str| {
        let srv = &srv;
        async move {
            let started = Instant::now();
            let r = srv
                .req(Method::POST, "/api/v1/auth/login", None)
                .json(&json!({"username": user, "password": "wrong password here"}))
                .send()
                .await
                .expect("login");
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            (status, body, started.elapsed())
        }
    };
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        wrong.push(attempt("admin").await);
        unknown.push(attempt("nobody-at-all").await);
    }
    assert_eq!(wrong[0].0, 401);
    assert_eq!(wrong[0].0, unknown[0].0);
    assert_eq!(wrong[0].1, unknown[0].1, "the same body");
    let median = |v: &mut Vec<(u16, Value, Duration)>| {
        let mut t: Vec<Duration> = v.iter().map(|x| x.2).collect();
        t.sort();
        t[1]
    };
    let (w, u) = (median(&mut wrong), median(&mut unknown));
    let diff = w.abs_diff(u);
    assert!(
        diff < w.max(u) / 2 + Duration::from_millis(50),
        "similar timing: wrong password {w:?}, unknown user {u:?}"
    );
    // Both failures are audited, with the source address and the request id.
    let audit: Value = srv
        .get("/api/v1/audit?object=user:nobody-at-all", &srv.admin)
        .await
        .json()
        .await
        .expect("audit");
    let e = &audit["items"][0];
    assert_eq!(e["action"], "auth.login");
    assert_eq!(e["detail"]["outcome"], "failure");
    assert_eq!(e["detail"]["source"], "127.0.0.1");
    assert!(e["detail"]["request_id"].is_string());
    srv.stop().await;
}

async fn refresh(srv: &Srv, token: &str) -> reqwest::Response {
    srv.req(Method::POST, "/api/v1/auth/refresh", None)
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .expect("refresh")
}

async fn refresh_rotation_reuse_and_logout(backend: Backend) {
    let srv = Srv::start(backend).await;
    let first = srv.user(Role::Operator).await;
    let r = refresh(&srv, &first.refresh).await;
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.expect("json");
    let access2 = second["access_token"].as_str().expect("access").to_string();
    let refresh2 = second["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    assert_ne!(refresh2, first.refresh, "rotated");
    assert_eq!(me(&srv, &access2).await.status(), 200);
    // The thief replays the spent refresh token: refused, and the whole login ends.
    let body = expect_error(refresh(&srv, &first.refresh).await, 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{body}"
    );
    expect_error(refresh(&srv, &refresh2).await, 401, "unauthenticated").await;
    expect_error(me(&srv, &access2).await, 401, "unauthenticated").await;
    expect_error(me(&srv, &first.access).await, 401, "unauthenticated").await;
    // A new login is unaffected by the old family; logout voids its access token at once.
    let login = srv.login("operator-user", PASSWORD).await;
    assert_eq!(me(&srv, &login.access).await.status(), 200);
    let r = srv
        .req(Method::POST, "/api/v1/auth/logout", Some(&login.access))
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 204);
    expect_error(me(&srv, &login.access).await, 401, "unauthenticated").await;
    expect_error(refresh(&srv, &login.refresh).await, 401, "unauthenticated").await;
    // Garbage refresh tokens.
    expect_error(refresh(&srv, "nope").await, 401, "unauthenticated").await;
    srv.stop().await;
}

async fn password_change_and_disabling_end_logins(backend: Backend) {
    let srv = Srv::start(backend).await;
    let viewer = srv.user(Role::Viewer).await;
    let other = srv.login("viewer-user", PASSWORD).await;
    // Own password: the current one is required and checked.
    let r = srv
        .post(
            "/api/v1/users/viewer-user/password",
            &viewer.access,
            json!({"new_password": "brand new password 1"}),
        )
        .await;
    expect_error(r, 422, "validation").await;
    let r = srv
        .post(
            "/api/v1/users/viewer-user/password",
            &viewer.access,
            json!({"current_password": "wrong one here!", "new_password": "brand new password 1"}),
        )
        .await;
    expect_error(r, 401, "unauthenticated").await;
    let r = srv
        .post(
            "/api/v1/users/viewer-user/password",
            &viewer.access,
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    let body = expect_error(r, 422, "validation").await;
    assert_eq!(body["error"]["field"], "password");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = srv
        .post(
            "/api/v1/users/viewer-user/password",
            &viewer.access,
            json!({"current_password": PASSWORD, "new_password": "brand new password 1"}),
        )
        .await;
    assert_eq!(r.status(), 204);
    expect_error(me(&srv, &viewer.access).await, 401, "unauthenticated").await;
    expect_error(me(&srv, &other.access).await, 401, "unauthenticated").await;
    let fresh = srv.login("viewer-user", "brand new password 1").await;
    assert_eq!(me(&srv, &fresh.access).await.status(), 200);
    // Disabling ends every login, and the account cannot log in (same error as a wrong password).
    let r = srv
        .req(Method::PATCH, "/api/v1/users/viewer-user", Some(&srv.admin))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    expect_error(me(&srv, &fresh.access).await, 401, "unauthenticated").await;
    let r = srv
        .req(Method::POST, "/api/v1/auth/login", None)
        .json(&json!({"username": "viewer-user", "password": "brand new password 1"}))
        .send()
        .await
        .expect("login");
    let body = expect_error(r, 401, "unauthenticated").await;
    assert_eq!(body["error"]["message"], "wrong username or password");
    // Admins cannot lock themselves out.
    let r = srv
        .req(Method::PATCH, "/api/v1/users/admin", Some(&srv.admin))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .expect("patch");
    expect_error(r, 409, "conflict").await;
    srv.stop().await;
}

async fn api_tokens(backend: Backend) {
    // The token runs a job on `local`: allow operators there (the local
    // policy itself is tested by `tests/it/local.rs`).
    let srv = Srv::start_with(backend, |c| {
        c.local_allow_roles = vec![Role::Admin, Role::Operator];
    })
    .await;
    let op = srv.user(Role::Operator).await;
    // Not above one's own role.
    let r = srv
        .post(
            "/api/v1/auth/tokens",
            &op.access,
            json!({"name": "too much", "role": "admin"}),
        )
        .await;
    expect_error(r, 403, "forbidden").await;
    let r = srv
        .post(
            "/api/v1/auth/tokens",
            &op.access,
            json!({"name": "ci", "expires_in": "30d"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");
    let token = created["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("opsc_"));
    assert_eq!(created["role"], "operator");
    assert!(created["expires_at"].is_string());
    let id = created["id"].as_str().expect("id").to_string();
    let r = me(&srv, &token).await;
    let v: Value = r.json().await.expect("me");
    assert_eq!(
        (v["via"].as_str(), v["token_id"].as_str()),
        (Some("api_token"), Some(id.as_str()))
    );
    // The list never shows secrets.
    let list = srv
        .get("/api/v1/auth/tokens", &op.access)
        .await
        .text()
        .await
        .expect("text");
    assert!(list.contains(&id) && !list.contains(&token), "{list}");
    // A token acts with its role, capped by its owner's current role.
    srv.job(common::HELLO_JOB).await;
    let r = srv
        .post("/api/v1/runs", &token, json!({"job": "hello"}))
        .await;
    assert_eq!(r.status(), 201);
    let r = srv
        .req(
            Method::PATCH,
            "/api/v1/users/operator-user",
            Some(&srv.admin),
        )
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .expect("demote");
    assert_eq!(r.status(), 200);
    expect_error(
        srv.post("/api/v1/runs", &token, json!({"job": "hello"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    // Another user may not revoke it; an admin may; then it stops working.
    let viewer = srv.user(Role::Viewer).await;
    let r = srv
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/tokens/{id}"),
            Some(&viewer.access),
        )
        .send()
        .await
        .expect("delete");
    expect_error(r, 403, "forbidden").await;
    let r = srv
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/tokens/{id}"),
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let body = expect_error(me(&srv, &token).await, 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{body}"
    );
    let r = srv
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/tokens/{id}"),
            Some(&srv.admin),
        )
        .send()
        .await
        .expect("delete");
    expect_error(r, 409, "conflict").await;
    // Logging out with an API token is refused (revoke it instead).
    let t2 = srv.api_token(Role::Viewer).await;
    let r = srv
        .req(Method::POST, "/api/v1/auth/logout", Some(&t2))
        .send()
        .await
        .expect("logout");
    expect_error(r, 409, "conflict").await;
    // Forged API tokens.
    for bad in [
        "opsc_",
        "opsc_short",
        "opsc_aaaaaaaaaaaa_bbbb",
        &format!("{}x", &token[..token.len() - 1]),
    ] {
        expect_error(me(&srv, bad).await, 401, "unauthenticated").await;
    }
    // The revocation is in the audit log.
    let audit: Value = srv
        .get(&format!("/api/v1/audit?object=token:{id}"), &srv.admin)
        .await
        .json()
        .await
        .expect("audit");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"token.revoke") && actions.contains(&"token.create"),
        "{actions:?}"
    );
    srv.stop().await;
}

on_both!(
    usernames_ignore_case,
    refresh_rotation_reuse_and_logout,
    password_change_and_disabling_end_logins,
    api_tokens
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_rate_limits_per_account_and_per_address() {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.login_per_account_per_minute = 3;
        c.login_per_ip_per_minute = 6;
    })
    .await; // the admin's own login used one per-account and one per-address attempt
    let attempt = |user: &'static str| {
        let srv = &srv;
        async move {
            srv.req(Method::POST, "/api/v1/auth/login", None)
                .json(&json!({"username": user, "password": "wrong password here"}))
                .send()
                .await
                .expect("login")
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt("carol").await.status(), 401);
    }
    let r = attempt("carol").await;
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let body = expect_error(r, 429, "rate_limited").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("account")
    );
    // Other accounts from the same address: the address limit (6/min) stops
    // them (within a few attempts: Argon2 on a loaded machine may let the
    // bucket refill one token every 10 s).
    let names = ["dave", "erin", "frank", "grace", "heidi", "ivan"];
    let mut r = attempt(names[0]).await;
    for name in &names[1..] {
        if r.status() == 429 {
            break;
        }
        assert_eq!(r.status(), 401);
        r = attempt(name).await;
    }
    assert!(r.headers().get("retry-after").is_some());
    let body = expect_error(r, 429, "rate_limited").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("address")
    );
    srv.stop().await;
}

/// A login attempt from client address `ip` (the server trusts `X-Forwarded-For`).
async fn login_from(srv: &Srv, ip: &str, user: &str, password: &str) -> u16 {
    srv.req(Method::POST, "/api/v1/auth/login", None)
        .header("x-forwarded-for", ip)
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("login")
        .status()
        .as_u16()
}

/// Guessing cannot lock the real user out from the address they use: the
/// strict limit is per (account, address); the per-account limit holds back
/// every other address together but not one that logged in lately. Names
/// ignore case, so `ALICE` and `alice` share every limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_cannot_lock_out_the_real_user_from_their_address() {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        c.trust_forwarded_for = true;
        // Low limits: a token comes back only every 20-30 s, longer than this test.
        c.login_per_account_address_per_minute = 2;
        c.login_per_account_per_minute = 3;
    })
    .await;
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "alice", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    // The real user logs in from home.
    assert_eq!(login_from(&srv, "10.0.0.1", "alice", PASSWORD).await, 200);
    // An attacker: 2 guesses from one address, then that address is held back...
    for _ in 0..2 {
        assert_eq!(
            login_from(&srv, "10.9.0.1", "ALICE", "wrong password 1").await,
            401
        );
    }
    assert_eq!(
        login_from(&srv, "10.9.0.1", "Alice", "wrong password 1").await,
        429
    );
    // ... even with the right password (the limit is checked first).
    assert_eq!(login_from(&srv, "10.9.0.1", "alice", PASSWORD).await, 429);
    // More addresses: the per-account limit (3/min over all unknown addresses).
    let mut refused = false;
    for i in 2..6 {
        for _ in 0..2 {
            let s = login_from(&srv, &format!("10.9.0.{i}"), "alice", "wrong password 2").await;
            assert!(s == 401 || s == 429, "{s}");
            refused |= s == 429;
        }
    }
    assert!(
        refused,
        "the per-account limit holds distributed guessing back"
    );
    assert_eq!(login_from(&srv, "10.9.9.9", "alice", PASSWORD).await, 429);
    // The real user, from their usual address, is not locked out.
    assert_eq!(login_from(&srv, "10.0.0.1", "Alice", PASSWORD).await, 200);
    srv.stop().await;
}

/// Checking the current password in a password change is a guess like a
/// login: the same limiter answers 429 after the per-(account, address) limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_change_guesses_share_the_login_limits() {
    let srv = Srv::start_with(Backend::Sqlite, |c| {
        // 2 per minute: a token comes back every 30 s, longer than this test.
        c.login_per_account_address_per_minute = 2;
    })
    .await;
    let viewer = srv.user(Role::Viewer).await; // one login attempt used
    let change = |current: &'static str| {
        let srv = &srv;
        let access = viewer.access.clone();
        async move {
            srv.req(
                Method::POST,
                "/api/v1/users/VIEWER-user/password",
                Some(&access),
            )
            .json(&json!({"current_password": current, "new_password": "another good password 9"}))
            .send()
            .await
            .expect("password")
        }
    };
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(change("not my password 1").await.status().as_u16());
    }
    assert_eq!(answers, vec![401, 429, 429, 429, 429, 429], "{answers:?}");
    let r = change(PASSWORD).await;
    assert!(r.headers().get("retry-after").is_some());
    expect_error(r, 429, "rate_limited").await;
    // The login limiter is the same one.
    let r = srv
        .req(Method::POST, "/api/v1/auth/login", None)
        .json(&json!({"username": "viewer-user", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 429);
    srv.stop().await;
}

/// Usernames ignore letter case: one account per name in any case (409),
/// and login in any case gives the account's own name.
async fn usernames_ignore_case(backend: Backend) {
    let srv = Srv::start(backend).await;
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "Bob.Smith", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = srv
        .post(
            "/api/v1/users",
            &srv.admin,
            json!({"username": "bob.smith", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    expect_error(r, 409, "conflict").await;
    let t = srv.login("BOB.SMITH", PASSWORD).await;
    let me: Value = srv
        .get("/api/v1/auth/me", &t.access)
        .await
        .json()
        .await
        .expect("me");
    assert_eq!(me["username"], "Bob.Smith");
    assert_eq!(me["role"], "viewer");
    let r = srv.get("/api/v1/users/bob.smith", &srv.admin).await;
    assert_eq!(r.status(), 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_rate_limit_per_user() {
    let srv = Srv::start_with(Backend::Sqlite, |c| c.api_per_user_per_minute = 5).await;
    let viewer = srv.user(Role::Viewer).await;
    for _ in 0..5 {
        assert_eq!(me(&srv, &viewer.access).await.status(), 200);
    }
    let r = me(&srv, &viewer.access).await;
    assert!(r.headers().get("retry-after").is_some());
    expect_error(r, 429, "rate_limited").await;
    // Per user: another user is not slowed down.
    assert_eq!(me(&srv, &srv.admin).await.status(), 200);
    srv.stop().await;
}

/// Tokens signed with the server's real key are still refused when their
/// claims break the server's own rules: a login (`sid`) of another user, an
/// `iat` in the future, a lifetime longer than the configured maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_claims_with_the_real_key_are_refused() {
    let srv = Srv::start(Backend::Sqlite).await;
    let op = srv.user(Role::Operator).await;
    let admin_sid = sid_of(&srv.admin);
    let op_sid = sid_of(&op.access);
    let key = JWT_SECRET.as_bytes();
    // The control: well-formed claims with the real key are accepted.
    let good = sign(Algorithm::HS256, &claims("admin", &admin_sid), key);
    assert_eq!(me(&srv, &good).await.status(), 200);
    // An operator's login presented as the admin's: 401, not admin.
    let swapped = sign(Algorithm::HS256, &claims("admin", &op_sid), key);
    let body = expect_error(me(&srv, &swapped).await, 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("another user"),
        "{body}"
    );
    let now = chrono::Utc::now().timestamp();
    // Issued an hour from now (the leeway is 5 s), valid now by `nbf`.
    let mut future = claims("admin", &admin_sid);
    future["iat"] = json!(now + 3600);
    future["exp"] = json!(now + 3600 + 600);
    let body = expect_error(
        me(&srv, &sign(Algorithm::HS256, &future, key)).await,
        401,
        "unauthenticated",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("future"),
        "{body}"
    );
    // Thirty days of life where the server issues 15 minutes.
    let mut long = claims("admin", &admin_sid);
    long["exp"] = json!(now + 30 * 86400);
    let body = expect_error(
        me(&srv, &sign(Algorithm::HS256, &long, key)).await,
        401,
        "unauthenticated",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("longer"),
        "{body}"
    );
    srv.stop().await;
}

/// API tokens cannot create tokens (403 naming why), and an owner's password
/// change or disabling revokes their tokens for good (re-enabling does not
/// bring them back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_tokens_cannot_mint_and_die_with_password_change_or_disabling() {
    let srv = Srv::start(Backend::Sqlite).await;
    let op = srv.user(Role::Operator).await;
    let mint = |access: String| {
        let srv = &srv;
        async move {
            let r = srv
                .post("/api/v1/auth/tokens", &access, json!({"name": "ci"}))
                .await;
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.expect("json");
            v["token"].as_str().expect("token").to_string()
        }
    };
    let t1 = mint(op.access.clone()).await;
    assert_eq!(me(&srv, &t1).await.status(), 200);
    // A token cannot mint a child token, whatever role it asks for.
    for role in ["viewer", "operator"] {
        let r = srv
            .post(
                "/api/v1/auth/tokens",
                &t1,
                json!({"name": "child", "role": role}),
            )
            .await;
        let body = expect_error(r, 403, "forbidden").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("cannot create API tokens"),
            "{body}"
        );
    }
    // The owner's password changes: the token is revoked.
    let r = srv
        .post(
            "/api/v1/users/operator-user/password",
            &op.access,
            json!({"current_password": PASSWORD, "new_password": "brand new password 2"}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let body = expect_error(me(&srv, &t1).await, 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("password changed"),
        "{body}"
    );
    // A new token; the owner is disabled and enabled again: the token stays dead.
    let fresh = srv.login("operator-user", "brand new password 2").await;
    let t2 = mint(fresh.access).await;
    assert_eq!(me(&srv, &t2).await.status(), 200);
    for disabled in [true, false] {
        let r = srv
            .req(
                Method::PATCH,
                "/api/v1/users/operator-user",
                Some(&srv.admin),
            )
            .json(&json!({"disabled": disabled}))
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), 200);
    }
    let body = expect_error(me(&srv, &t2).await, 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{body}"
    );
    srv.stop().await;
}
