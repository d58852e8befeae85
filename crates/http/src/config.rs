//! The server's configuration: defaults, an optional TOML file, and checks
//! made once at start so a bad value is a clear error, not a surprise later.
//! Front ends (the CLI) layer flags and `OPSC_…` variables on top.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opsconductor::{Error, Result};
use serde::Deserialize;

/// Everything `opsconductor serve` can be told. Build it with
/// [`ServerConfig::default`], [`ServerConfig::from_toml_str`] or
/// [`ServerConfig::from_toml_file`], adjust fields, then [`crate::start`] it.
///
/// `Debug` never prints the JWT secret or the admin password.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8080`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Database URL (`sqlite://FILE`, `postgres://…`).
    pub database_url: String,
    /// Worker tasks executing runs in this process (0: API only).
    pub workers: usize,
    /// PEM certificate chain for HTTPS (with `tls_key`); plain HTTP without.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// HS256 key for access tokens (at least 32 bytes). See [`crate::jwt`] for
    /// what happens without one.
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 key (alternative to `jwt_secret`).
    pub jwt_secret_file: Option<PathBuf>,
    /// `iss` claim of access tokens.
    pub jwt_issuer: String,
    /// `aud` claim of access tokens.
    pub jwt_audience: String,
    /// Lifetime of an access token (default 15 minutes).
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (default 7 days).
    pub refresh_token_ttl: Duration,
    /// Password of the first admin, created when there are no users. Without
    /// one a random password is generated and reported once.
    pub admin_password: Option<String>,
    /// Origins allowed by CORS (empty: CORS off, the default).
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes (default 1 MiB).
    pub body_limit: usize,
    /// Deepest JSON nesting accepted (default 32).
    pub json_depth: usize,
    /// Login (and password-change) attempts per account and client address
    /// per minute (0: unlimited). The strict limit on guessing.
    pub login_per_account_address_per_minute: u32,
    /// Login attempts per account per minute from all addresses together,
    /// except addresses that logged in to that account successfully in the
    /// last 30 days (0: unlimited). Bounds distributed guessing without
    /// letting it lock out the real user.
    pub login_per_account_per_minute: u32,
    /// Login attempts per client address per minute (0: unlimited).
    pub login_per_ip_per_minute: u32,
    /// API requests per user (or API token) per minute (0: unlimited).
    pub api_per_user_per_minute: u32,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy you trust).
    pub trust_forwarded_for: bool,
    /// Serve `/metrics` without authentication (default true; it holds counts only).
    pub metrics_public: bool,
    /// How long a graceful shutdown waits for open requests and running runs.
    pub shutdown_timeout: Duration,
    /// Time a client has to send a request's headers, counted from when the
    /// server starts waiting for them (so it also ends idle keep-alive
    /// connections between requests), and for the TLS handshake (default 10s).
    pub header_read_timeout: Duration,
    /// A connection on which nothing moves in either direction for this long
    /// is closed (default 2m; live log streams send a keep-alive every 15s).
    pub idle_timeout: Duration,
    /// Open connections at most; more are closed at once (default 4096; 0: no cap).
    pub max_connections: usize,
    /// Open connections per client address at most (default 256; 0: no cap).
    /// Behind a proxy every connection comes from the proxy: raise it or use 0.
    pub max_connections_per_ip: usize,
    /// Roles that may run steps on the server's own host: targets with the
    /// `local` connection and `copy.src` (TOML `[local] allow_roles`,
    /// `OPSC_LOCAL_ALLOW_ROLES`). Default: admin only, since such steps can
    /// read the server's keys and database.
    pub local_allow_roles: Vec<opsconductor::auth::Role>,
    /// How long finished runs, their logs and audit events are kept (the
    /// `[retention]` table; default: forever). With any set, the server prunes
    /// every `retention.interval`.
    pub retention: opsconductor::Retention,
    /// Notifications (the `[notifications]` table): global rules, public
    /// URL, retry time, and the SSRF guard — on by default for servers.
    pub notifications: opsconductor::engine::notify::NotifySettings,
    /// The command policy file (TOML `policy_file`, `OPSC_POLICY_FILE`;
    /// see docs/approvals.md). Default: the built-in rules.
    pub policy_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: opsconductor::DEFAULT_DATABASE_URL.to_string(),
            workers: 4,
            tls_cert: None,
            tls_key: None,
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_issuer: "opsconductor".into(),
            jwt_audience: "opsconductor-api".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(7 * 24 * 3600),
            admin_password: None,
            cors_origins: Vec::new(),
            body_limit: 1024 * 1024,
            json_depth: 32,
            login_per_account_address_per_minute: 5,
            login_per_account_per_minute: 20,
            login_per_ip_per_minute: 30,
            api_per_user_per_minute: 1200,
            trust_forwarded_for: false,
            metrics_public: true,
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            max_connections_per_ip: 256,
            local_allow_roles: vec![opsconductor::auth::Role::Admin],
            retention: opsconductor::Retention::default(),
            notifications: opsconductor::engine::notify::NotifySettings {
                block_private_addresses: true,
                ..Default::default()
            },
            policy_file: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("workers", &self.workers)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("jwt_secret", &hidden(&self.jwt_secret))
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("admin_password", &hidden(&self.admin_password))
            .field("cors_origins", &self.cors_origins)
            .field("body_limit", &self.body_limit)
            .field("json_depth", &self.json_depth)
            .field(
                "login_per_account_address_per_minute",
                &self.login_per_account_address_per_minute,
            )
            .field(
                "login_per_account_per_minute",
                &self.login_per_account_per_minute,
            )
            .field("login_per_ip_per_minute", &self.login_per_ip_per_minute)
            .field("api_per_user_per_minute", &self.api_per_user_per_minute)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("metrics_public", &self.metrics_public)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("local_allow_roles", &self.local_allow_roles)
            .field("retention", &self.retention)
            .field("notifications", &self.notifications)
            .field("policy_file", &self.policy_file)
            .finish()
    }
}

/// Hides the password of a database URL (`postgres://user:***@host/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The TOML file: every field optional, unknown keys refused (a typo is an
/// error, not a silently ignored setting).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    workers: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    jwt_secret: Option<String>,
    jwt_secret_file: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    access_token_ttl: Option<String>,
    refresh_token_ttl: Option<String>,
    admin_password: Option<String>,
    cors_origins: Option<Vec<String>>,
    body_limit: Option<usize>,
    json_depth: Option<usize>,
    login_per_account_address_per_minute: Option<u32>,
    login_per_account_per_minute: Option<u32>,
    login_per_ip_per_minute: Option<u32>,
    api_per_user_per_minute: Option<u32>,
    trust_forwarded_for: Option<bool>,
    metrics_public: Option<bool>,
    shutdown_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    local: Option<LocalSection>,
    retention: Option<RetentionFile>,
    policy_file: Option<PathBuf>,
    notifications: Option<NotificationsFile>,
}

/// `[notifications]`: rules for every job, the public URL runs link to,
/// the SSRF guard and how long deliveries are retried.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationsFile {
    public_url: Option<String>,
    block_private_addresses: Option<bool>,
    retry_for: Option<String>,
    log_lines: Option<usize>,
    #[serde(default)]
    rules: Vec<opsconductor::engine::notify::NotifyRule>,
}

/// `[local]`: who may run steps on the server's own host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalSection {
    allow_roles: Option<Vec<String>>,
}

/// Parses role names (`admin`, `operator`, `viewer`) for `local.allow_roles`.
pub fn parse_roles<S: AsRef<str>>(
    field: &str,
    names: &[S],
) -> Result<Vec<opsconductor::auth::Role>> {
    let mut roles = Vec::new();
    for n in names {
        let n = n.as_ref().trim();
        if n.is_empty() {
            continue;
        }
        let r: opsconductor::auth::Role = n.parse().map_err(|_| {
            Error::validation(
                field,
                format!("unknown role '{n}' (expected admin, operator or viewer)"),
            )
        })?;
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    Ok(roles)
}

/// The `[retention]` table: durations like `90d`, `12h`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    runs: Option<String>,
    logs: Option<String>,
    audit: Option<String>,
    audit_require_export: Option<bool>,
    interval: Option<String>,
    batch: Option<usize>,
}

/// Parses a listen address, with a message saying what is expected.
pub fn parse_listen(field: &str, text: &str) -> Result<SocketAddr> {
    text.trim().parse().map_err(|_| {
        Error::validation(
            field,
            format!("'{text}' is not an address to listen on (expected IP:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8443)"),
        )
    })
}

/// Parses a duration (`15m`, `7d`, `90s` or seconds) with the core's
/// parser (checked arithmetic); the error names `field`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration> {
    opsconductor::duration::parse(text).map_err(|m| Error::validation(field, m))
}

impl ServerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::validation(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses TOML text over the defaults; `source` names it in errors.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self> {
        let file: FileConfig = toml::from_str(text)
            .map_err(|e| Error::validation(source, e.to_string().trim_end().to_string()))?;
        let mut c = Self::default();
        let field = |name: &str| format!("{source}: {name}");
        if let Some(v) = file.listen {
            c.listen = parse_listen(&field("listen"), &v)?;
        }
        if let Some(v) = file.database_url {
            c.database_url = v;
        }
        if let Some(v) = file.workers {
            c.workers = v;
        }
        c.tls_cert = file.tls_cert.or(c.tls_cert);
        c.tls_key = file.tls_key.or(c.tls_key);
        c.jwt_secret = file.jwt_secret.or(c.jwt_secret);
        c.jwt_secret_file = file.jwt_secret_file.or(c.jwt_secret_file);
        if let Some(v) = file.jwt_issuer {
            c.jwt_issuer = v;
        }
        if let Some(v) = file.jwt_audience {
            c.jwt_audience = v;
        }
        if let Some(v) = file.access_token_ttl {
            c.access_token_ttl = parse_duration(&field("access_token_ttl"), &v)?;
        }
        if let Some(v) = file.refresh_token_ttl {
            c.refresh_token_ttl = parse_duration(&field("refresh_token_ttl"), &v)?;
        }
        c.admin_password = file.admin_password.or(c.admin_password);
        if let Some(v) = file.cors_origins {
            c.cors_origins = v;
        }
        if let Some(v) = file.body_limit {
            c.body_limit = v;
        }
        if let Some(v) = file.json_depth {
            c.json_depth = v;
        }
        if let Some(v) = file.login_per_account_address_per_minute {
            c.login_per_account_address_per_minute = v;
        }
        if let Some(v) = file.login_per_account_per_minute {
            c.login_per_account_per_minute = v;
        }
        if let Some(v) = file.login_per_ip_per_minute {
            c.login_per_ip_per_minute = v;
        }
        if let Some(v) = file.api_per_user_per_minute {
            c.api_per_user_per_minute = v;
        }
        if let Some(v) = file.trust_forwarded_for {
            c.trust_forwarded_for = v;
        }
        if let Some(v) = file.metrics_public {
            c.metrics_public = v;
        }
        if let Some(v) = file.shutdown_timeout {
            c.shutdown_timeout = parse_duration(&field("shutdown_timeout"), &v)?;
        }
        if let Some(v) = file.header_read_timeout {
            c.header_read_timeout = parse_duration(&field("header_read_timeout"), &v)?;
        }
        if let Some(v) = file.idle_timeout {
            c.idle_timeout = parse_duration(&field("idle_timeout"), &v)?;
        }
        if let Some(v) = file.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = file.max_connections_per_ip {
            c.max_connections_per_ip = v;
        }
        if let Some(v) = file.policy_file {
            c.policy_file = Some(v);
        }
        if let Some(v) = file.local.and_then(|l| l.allow_roles) {
            c.local_allow_roles = parse_roles(&field("local.allow_roles"), &v)?;
        }
        if let Some(r) = file.retention {
            let age = |name: &str, v: Option<String>| {
                v.map(|v| parse_duration(&field(&format!("retention.{name}")), &v))
                    .transpose()
            };
            c.retention.runs = age("runs", r.runs)?;
            c.retention.logs = age("logs", r.logs)?;
            c.retention.audit = age("audit", r.audit)?;
            if let Some(v) = age("interval", r.interval)? {
                c.retention.interval = v;
            }
            if let Some(v) = r.audit_require_export {
                c.retention.audit_require_export = v;
            }
            if let Some(v) = r.batch {
                c.retention.batch = v;
            }
        }
        if let Some(n) = file.notifications {
            let s = &mut c.notifications;
            s.public_url = n.public_url.or(s.public_url.take());
            if let Some(v) = n.block_private_addresses {
                s.block_private_addresses = v;
            }
            if let Some(v) = n.retry_for {
                s.retry_for = parse_duration(&field("notifications.retry_for"), &v)?;
            }
            if let Some(v) = n.log_lines {
                s.log_lines = v;
            }
            s.rules = n.rules;
            s.check()?;
        }
        Ok(c)
    }

    /// Checks the values together; called by [`crate::start`].
    pub fn validate(&self) -> Result<()> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(Error::validation(
                    "tls_key",
                    "a TLS certificate was given without its key (--tls-key / OPSC_TLS_KEY)",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::validation(
                    "tls_cert",
                    "a TLS key was given without its certificate (--tls-cert / OPSC_TLS_CERT)",
                ));
            }
            _ => {}
        }
        for (name, p) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if let Some(p) = p
                && !p.is_file()
            {
                return Err(Error::validation(
                    name,
                    format!("{} does not exist or is not a file", p.display()),
                ));
            }
        }
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            return Err(Error::validation(
                "jwt_secret",
                "give the JWT secret or a file holding it, not both",
            ));
        }
        if let Some(s) = &self.jwt_secret
            && s.len() < 32
        {
            return Err(Error::validation(
                "jwt_secret",
                "must be at least 32 bytes (e.g. `openssl rand -base64 48`)",
            ));
        }
        if self.jwt_issuer.trim().is_empty() || self.jwt_audience.trim().is_empty() {
            return Err(Error::validation(
                "jwt_issuer",
                "the JWT issuer and audience must not be empty",
            ));
        }
        if self.access_token_ttl < Duration::from_secs(10)
            || self.access_token_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(Error::validation(
                "access_token_ttl",
                "must be between 10s and 24h (short-lived by design; refresh tokens renew it)",
            ));
        }
        if self.refresh_token_ttl < self.access_token_ttl
            || self.refresh_token_ttl > opsconductor::duration::MAX_TOKEN_LIFETIME
        {
            return Err(Error::validation(
                "refresh_token_ttl",
                "must be at least the access token lifetime and at most 365d",
            ));
        }
        if self.header_read_timeout < Duration::from_millis(100)
            || self.header_read_timeout > Duration::from_secs(600)
        {
            return Err(Error::validation(
                "header_read_timeout",
                "must be between 100ms and 10m",
            ));
        }
        if self.idle_timeout < self.header_read_timeout
            || self.idle_timeout > Duration::from_secs(24 * 3600)
        {
            return Err(Error::validation(
                "idle_timeout",
                "must be at least the header read timeout and at most 24h",
            ));
        }
        if self.max_connections_per_ip > self.max_connections && self.max_connections > 0 {
            return Err(Error::validation(
                "max_connections_per_ip",
                "must not be more than max_connections",
            ));
        }
        if self.body_limit < 1024 || self.body_limit > 256 * 1024 * 1024 {
            return Err(Error::validation(
                "body_limit",
                "must be between 1 KiB and 256 MiB",
            ));
        }
        if self.json_depth < 4 || self.json_depth > 128 {
            return Err(Error::validation("json_depth", "must be between 4 and 128"));
        }
        if self.workers > 1024 {
            return Err(Error::validation("workers", "at most 1024"));
        }
        for o in &self.cors_origins {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && axum::http::HeaderValue::from_str(o).is_ok());
            if !ok {
                return Err(Error::validation(
                    "cors_origins",
                    format!(
                        "'{o}' is not an origin (expected scheme://host[:port] without a path, or *)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// True if the server speaks HTTPS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_refuses_unknown_keys() {
        let c = ServerConfig::from_toml_str(
            "listen = \"0.0.0.0:9000\"\nworkers = 0\naccess_token_ttl = \"5m\"\nrefresh_token_ttl = \"2d\"\n",
            "ops.toml",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.workers, 0);
        assert_eq!(c.access_token_ttl, Duration::from_secs(300));
        assert_eq!(c.refresh_token_ttl, Duration::from_secs(2 * 86400));
        let e = ServerConfig::from_toml_str("listn = \"x\"\n", "ops.toml").unwrap_err();
        assert!(e.to_string().contains("ops.toml"), "{e}");
        assert!(e.to_string().contains("listn"), "{e}");
        let e = ServerConfig::from_toml_str("listen = \"nope\"\n", "ops.toml").unwrap_err();
        assert!(e.to_string().contains("ops.toml: listen"), "{e}");
        let c = ServerConfig::from_toml_str(
            "[local]\nallow_roles = [\"admin\", \"operator\"]\n",
            "ops.toml",
        )
        .unwrap();
        assert_eq!(
            c.local_allow_roles,
            [
                opsconductor::auth::Role::Admin,
                opsconductor::auth::Role::Operator
            ]
        );
        assert_eq!(
            ServerConfig::default().local_allow_roles,
            [opsconductor::auth::Role::Admin]
        );
        let e = ServerConfig::from_toml_str("[local]\nallow_roles = [\"root\"]\n", "ops.toml")
            .unwrap_err();
        assert!(e.to_string().contains("local.allow_roles"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let c = ServerConfig {
            jwt_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("jwt_secret"));
        let c = ServerConfig {
            tls_cert: Some("/nonexistent.pem".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("tls_key"));
        assert!(ServerConfig::default().validate().is_ok());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = ServerConfig {
            jwt_secret: Some("x".repeat(40)),
            admin_password: Some("hunter2hunter2".into()),
            database_url: "postgres://ops:s3cret@db/ops".into(),
            ..Default::default()
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("xxxx") && !d.contains("hunter2") && !d.contains("s3cret"),
            "{d}"
        );
    }
}
