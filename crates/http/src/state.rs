//! What every request handler shares: the engine, the token keys, the rate
//! limiters, the metrics and the limits from the configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opsconductor::Conductor;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::jwt::JwtKeys;
use crate::limit::{KnownClients, RateLimiter};

/// How long a successful login exempts its (account, address) from the
/// per-account limit.
const KNOWN_CLIENT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
use crate::metrics::Metrics;

/// The state behind the router. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub oc: Conductor,
    pub jwt: JwtKeys,
    pub refresh_ttl: chrono::Duration,
    pub login_per_account_address: RateLimiter,
    pub login_per_account: RateLimiter,
    /// (account, address) pairs that logged in lately: exempt from `login_per_account`.
    pub known_clients: KnownClients,
    pub login_per_ip: RateLimiter,
    pub api_per_user: RateLimiter,
    pub metrics: Arc<Metrics>,
    pub body_limit: usize,
    pub json_depth: usize,
    pub trust_forwarded_for: bool,
    pub metrics_public: bool,
    pub tls: bool,
    pub cors_origins: Vec<String>,
    pub workers: usize,
    /// Fired on shutdown: live log streams end so connections can close.
    pub shutdown: CancellationToken,
    pub draining: AtomicBool,
    pub openapi_json: String,
    pub docs_html: String,
}

impl AppState {
    /// State for a router over an engine, with the JWT signing secret given.
    /// [`crate::start`] builds this for you; use it directly to mount the
    /// router elsewhere or to test it in-process.
    pub fn new(
        oc: Conductor,
        config: &ServerConfig,
        jwt_secret: &[u8],
    ) -> opsconductor::Result<Self> {
        config.validate()?;
        let jwt = JwtKeys::new(jwt_secret, config)?;
        let refresh_ttl = chrono::Duration::from_std(config.refresh_token_ttl)
            .map_err(|_| opsconductor::Error::validation("refresh_token_ttl", "too long"))?;
        let doc = crate::api::openapi();
        let openapi_json = doc
            .to_json()
            .map_err(|e| opsconductor::Error::Internal(format!("OpenAPI document: {e}")))?;
        let docs_html = crate::docs::render(&doc);
        Ok(Self {
            inner: Arc::new(Inner {
                oc,
                jwt,
                refresh_ttl,
                login_per_account_address: RateLimiter::new(
                    config.login_per_account_address_per_minute,
                ),
                login_per_account: RateLimiter::new(config.login_per_account_per_minute),
                known_clients: KnownClients::new(KNOWN_CLIENT_TTL, crate::limit::MAX_ENTRIES),
                login_per_ip: RateLimiter::new(config.login_per_ip_per_minute),
                api_per_user: RateLimiter::new(config.api_per_user_per_minute),
                metrics: Arc::new(Metrics::new()),
                body_limit: config.body_limit,
                json_depth: config.json_depth,
                trust_forwarded_for: config.trust_forwarded_for,
                metrics_public: config.metrics_public,
                tls: config.tls(),
                cors_origins: config.cors_origins.clone(),
                workers: config.workers,
                shutdown: CancellationToken::new(),
                draining: AtomicBool::new(false),
                openapi_json,
                docs_html,
            }),
        })
    }

    /// The engine.
    pub fn conductor(&self) -> &Conductor {
        &self.inner.oc
    }

    /// Ends live log streams and makes `/ready` fail (for a graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
    }

    pub(crate) fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}
