//! Shared fixtures: a real server on a loopback port (port 0) over SQLite
//! (through `opsconductor_http::start`, as `opsconductor serve` does) or
//! PostgreSQL (a fresh database on the throwaway test server), a reqwest
//! client, users of every role, and small request helpers.

#![allow(dead_code, reason = "each test binary uses a part of the helpers")]

use std::path::PathBuf;
use std::time::Duration;

use opsconductor::auth::Role;
use opsconductor_http::{Running, ServerConfig};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery staple";
/// The JWT secret of the test servers.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the shared throwaway PostgreSQL server.
    Postgres,
}

/// A running server and a client for it.
pub struct Srv {
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
    /// The admin's access token.
    pub admin: String,
    pub dir: tempfile::TempDir,
    /// The SQLite file (SQLite only).
    pub db_path: Option<PathBuf>,
    pub backend: Backend,
    /// The database URL.
    pub database_url: String,
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client (no proxies, short timeouts).
pub fn client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// Defaults for test servers: generous limits (tests that check limits lower them).
pub fn test_config(backend_url: String) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: backend_url,
        workers: 2,
        jwt_secret: Some(JWT_SECRET.into()),
        admin_password: Some(PASSWORD.into()),
        login_per_account_address_per_minute: 1000,
        login_per_account_per_minute: 1000,
        login_per_ip_per_minute: 10_000,
        api_per_user_per_minute: 100_000,
        shutdown_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

/// An engine on the PostgreSQL database `url`, built by hand as a
/// PostgreSQL deployment does (an explicit master key: a key file in `dir`,
/// so that key rotation works as with SQLite), with the local executor.
pub async fn postgres_engine(url: &str, dir: &std::path::Path) -> opsconductor::Conductor {
    let store = opsconductor::open_store(url)
        .await
        .expect("open PostgreSQL");
    let ring =
        opsconductor::secrets::Keyring::create_file(&dir.join("master.key")).expect("keyring");
    opsconductor::Conductor::builder()
        .store_arc(store)
        .keyring(ring)
        .executor(opsconductor::LocalExecutor::default())
        .build()
        .await
        .expect("engine")
}

impl Srv {
    /// A server with the test defaults.
    pub async fn start(backend: Backend) -> Srv {
        Self::start_with(backend, |_| {}).await
    }

    /// A server with adjusted configuration.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Srv {
        install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, db_path) = match backend {
            Backend::Sqlite => {
                let p = dir.path().join("ops.db");
                (format!("sqlite://{}", p.display()), Some(p))
            }
            Backend::Postgres => (
                opsconductor_store::testing::pg::fresh_database().await,
                None,
            ),
        };
        let mut config = test_config(url.clone());
        tweak(&mut config);
        let tls_cert = config
            .tls_cert
            .as_ref()
            .map(|p| std::fs::read(p).expect("the test certificate"));
        let running = match backend {
            // The way `opsconductor serve` starts (engine from the URL, key file next to the database).
            Backend::Sqlite => opsconductor_http::start(config)
                .await
                .expect("server start"),
            // An engine built by hand: PostgreSQL needs an explicit master key (and JWT secret).
            Backend::Postgres => {
                let oc = postgres_engine(&url, dir.path()).await;
                opsconductor_http::start_with(oc, config)
                    .await
                    .expect("server start")
            }
        };
        let base = running.url();
        let client = match &tls_cert {
            None => client(),
            // Trust the test certificate, and only it.
            Some(pem) => reqwest::Client::builder()
                .no_proxy()
                .tls_certs_only([reqwest::Certificate::from_pem(pem).expect("certificate")])
                .build()
                .expect("client"),
        };
        let mut srv = Srv {
            running: Some(running),
            base,
            client,
            admin: String::new(),
            dir,
            db_path,
            backend,
            database_url: url,
        };
        srv.admin = srv.login("admin", PASSWORD).await.access;
        srv
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET /metrics` without a token (the default: metrics are public).
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let r = self.client.request(method, self.url(path));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.req(Method::GET, path, Some(token))
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.req(Method::POST, path, Some(token))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.req(Method::PUT, path, Some(token))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// Logs in; panics unless it works.
    pub async fn login(&self, user: &str, password: &str) -> Tokens {
        let r = self
            .req(Method::POST, "/api/v1/auth/login", None)
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("login request");
        let status = r.status();
        let body: Value = r.json().await.expect("login body");
        assert_eq!(status, StatusCode::OK, "login of {user}: {body}");
        Tokens {
            access: body["access_token"].as_str().expect("access").to_string(),
            refresh: body["refresh_token"].as_str().expect("refresh").to_string(),
        }
    }

    /// Creates a user of `role` named after it (idempotent) and logs in.
    pub async fn user(&self, role: Role) -> Tokens {
        let name = format!("{role}-user");
        let r = self
            .post(
                "/api/v1/users",
                &self.admin,
                json!({"username": name, "password": PASSWORD, "role": role.as_str()}),
            )
            .await;
        assert!(
            r.status() == StatusCode::CREATED || r.status() == StatusCode::CONFLICT,
            "creating {name}: {}",
            r.status()
        );
        self.login(&name, PASSWORD).await
    }

    /// An API token with `role` owned by the admin (no password hashing per request).
    pub async fn api_token(&self, role: Role) -> String {
        let r = self
            .post(
                "/api/v1/auth/tokens",
                &self.admin,
                json!({"name": format!("{role} token"), "role": role.as_str()}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.expect("token body");
        body["token"].as_str().expect("token").to_string()
    }

    /// Stores a job from YAML; panics unless it works.
    pub async fn job(&self, yaml: &str) {
        let r = self
            .req(Method::POST, "/api/v1/apply", Some(&self.admin))
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .expect("apply");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "apply: {text}");
    }

    /// Submits a run of `job` and returns its id.
    pub async fn submit(&self, job: &str, params: Value) -> String {
        let r = self
            .post(
                "/api/v1/runs",
                &self.admin,
                json!({"job": job, "params": params}),
            )
            .await;
        let status = r.status();
        let body: Value = r.json().await.expect("run body");
        assert_eq!(status, StatusCode::CREATED, "submit: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// Waits until a run has ended; returns it.
    pub async fn wait_run(&self, id: &str) -> Value {
        for _ in 0..600 {
            let v: Value = self
                .get(&format!("/api/v1/runs/{id}"), &self.admin)
                .await
                .json()
                .await
                .expect("run");
            let s = v["status"].as_str().unwrap_or("");
            if !matches!(s, "queued" | "running") {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("run {id} did not end in 60 s");
    }

    /// A second server on the same database (another "node"), sharing the
    /// key files and JWT secret, with adjusted configuration.
    pub async fn second(&self, tweak: impl FnOnce(&mut ServerConfig)) -> Running {
        let url = self.database_url.clone();
        let mut config = test_config(url.clone());
        tweak(&mut config);
        match self.backend {
            Backend::Sqlite => opsconductor_http::start(config)
                .await
                .expect("second server"),
            Backend::Postgres => {
                let store = opsconductor::open_store(&url)
                    .await
                    .expect("open PostgreSQL");
                let ring =
                    opsconductor::secrets::Keyring::from_file(&self.dir.path().join("master.key"))
                        .expect("keyring");
                let oc = opsconductor::Conductor::builder()
                    .store_arc(store)
                    .keyring(ring)
                    .executor(opsconductor::LocalExecutor::default())
                    .build()
                    .await
                    .expect("engine");
                opsconductor_http::start_with(oc, config)
                    .await
                    .expect("second server")
            }
        }
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("graceful shutdown");
        }
    }
}

/// Tokens from a login.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// Asserts the API's error shape and status; returns the body.
pub async fn expect_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let rid = r.headers().get("x-request-id").is_some();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "status (body: {text})");
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct}: {text}"
    );
    assert!(rid, "every response carries X-Request-Id");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no `error`: {text}"));
    assert_eq!(err["code"], code, "{text}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {text}"
    );
    let keys: Vec<&String> = err
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert!(
        keys.iter()
            .all(|k| ["code", "message", "field"].contains(&k.as_str())),
        "only code, message, field: {text}"
    );
    v
}

/// A job that prints numbered lines slowly (for streaming tests).
pub const COUNTER_JOB: &str = r#"
kind: Job
name: counter
params:
  type: object
  properties:
    n: {type: integer, default: 20}
    delay: {type: number, default: 0.05}
steps:
  - name: count
    exec: "i=1; while [ $i -le {{ params.n }} ]; do echo line-$i; i=$((i+1)); sleep {{ params.delay }}; done"
"#;

/// A quick job.
pub const HELLO_JOB: &str = r#"
kind: Job
name: hello
tags: [demo]
params:
  type: object
  properties:
    name: {type: string, default: world}
steps:
  - name: greet
    exec: "echo hello {{ params.name }}"
"#;

/// Runs each listed test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}
