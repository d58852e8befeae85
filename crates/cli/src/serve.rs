//! `opsconductor serve`: the REST API, live logs and workers in one process.
//! Settings come from, in increasing precedence: defaults, a TOML file
//! (`--config` / `OPSC_CONFIG`), `OPSC_…` variables, and flags; all of them
//! are checked before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use opsconductor::Error;
use opsconductor_http::ServerConfig;

use crate::exit;
use crate::output::Out;

/// `opsconductor serve`.
#[derive(Args, Debug)]
#[command(after_help = "\
First start: with no users, creates 'admin' with OPSC_ADMIN_PASSWORD or a generated password printed once.
Secrets of the server never go on the command line: OPSC_JWT_SECRET (or OPSC_JWT_SECRET_FILE),
OPSC_ADMIN_PASSWORD, OPSC_MASTER_KEY… are read from the environment (or the TOML file).
Steps on the server's own host (`local` targets, copy.src) are for admins only; allow more roles
deliberately with OPSC_LOCAL_ALLOW_ROLES=admin,operator (or `[local] allow_roles` in the TOML file).

Examples:
  opsconductor serve                                   # 127.0.0.1:8080, SQLite, 4 workers
  opsconductor serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem
  OPSC_JWT_SECRET=… opsconductor --database-url postgres://ops@db/ops serve --workers 0
  opsconductor serve --config /etc/opsconductor/server.toml")]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "OPSC_LISTEN", value_name = "IP:PORT")]
    listen: Option<String>,
    /// Worker tasks executing runs in this process; 0 serves the API only [default: 4].
    #[arg(long, env = "OPSC_WORKERS", value_name = "N")]
    workers: Option<usize>,
    /// PEM certificate chain for HTTPS (with --tls-key); plain HTTP without (e.g. behind a proxy).
    #[arg(long, env = "OPSC_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "OPSC_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// A TOML file with any of the server's settings (see `docs/server.md`).
    #[arg(long, env = "OPSC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Origins allowed by CORS, comma-separated (CORS is off without).
    #[arg(
        long,
        env = "OPSC_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    cors_origin: Vec<String>,
    /// Lifetime of access tokens (e.g. 15m) [default: 15m].
    #[arg(long, env = "OPSC_ACCESS_TOKEN_TTL", value_name = "DURATION")]
    access_token_ttl: Option<String>,
    /// Lifetime of refresh tokens (e.g. 7d) [default: 7d].
    #[arg(long, env = "OPSC_REFRESH_TOKEN_TTL", value_name = "DURATION")]
    refresh_token_ttl: Option<String>,
    /// Take client addresses from X-Forwarded-For (only behind a proxy you trust).
    #[arg(long, env = "OPSC_TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,
    /// Time a client has to send a request's headers (and the TLS handshake) [default: 10s].
    #[arg(long, env = "OPSC_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    header_read_timeout: Option<String>,
    /// Close a connection on which nothing moves for this long [default: 2m].
    #[arg(long, env = "OPSC_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Open connections at most, 0 for no cap [default: 4096].
    #[arg(long, env = "OPSC_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Open connections per client address at most, 0 for no cap [default: 256].
    #[arg(long, env = "OPSC_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    max_connections_per_ip: Option<usize>,
}

/// Whether the database URL was given on the command line or in the
/// environment (then it wins over the TOML file).
fn database_url_given() -> bool {
    std::env::var_os("OPSC_DATABASE_URL").is_some()
        || std::env::args().any(|a| a == "--database-url" || a.starts_with("--database-url="))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Builds the configuration: defaults < file < environment < flags.
pub fn config(args: &ServeArgs, database_url: &str) -> Result<ServerConfig, Error> {
    let mut c = match &args.config {
        Some(p) => ServerConfig::from_toml_file(p)?,
        None => ServerConfig::default(),
    };
    if database_url_given() || args.config.is_none() {
        c.database_url = database_url.to_string();
    }
    if let Some(l) = &args.listen {
        c.listen = opsconductor_http::config::parse_listen("--listen", l)?;
    }
    if let Some(w) = args.workers {
        c.workers = w;
    }
    if args.tls_cert.is_some() {
        c.tls_cert = args.tls_cert.clone();
    }
    if args.tls_key.is_some() {
        c.tls_key = args.tls_key.clone();
    }
    if !args.cors_origin.is_empty() {
        c.cors_origins = args
            .cors_origin
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
    }
    if let Some(t) = &args.access_token_ttl {
        c.access_token_ttl = opsconductor_http::config::parse_duration("--access-token-ttl", t)?;
    }
    if let Some(t) = &args.refresh_token_ttl {
        c.refresh_token_ttl = opsconductor_http::config::parse_duration("--refresh-token-ttl", t)?;
    }
    if args.trust_forwarded_for {
        c.trust_forwarded_for = true;
    }
    if let Some(t) = &args.header_read_timeout {
        c.header_read_timeout =
            opsconductor_http::config::parse_duration("--header-read-timeout", t)?;
    }
    if let Some(t) = &args.idle_timeout {
        c.idle_timeout = opsconductor_http::config::parse_duration("--idle-timeout", t)?;
    }
    if let Some(n) = args.max_connections {
        c.max_connections = n;
    }
    if let Some(n) = args.max_connections_per_ip {
        c.max_connections_per_ip = n;
    }
    if let Some(s) = env("OPSC_JWT_SECRET") {
        c.jwt_secret = Some(s);
        c.jwt_secret_file = None;
    } else if let Some(p) = env("OPSC_JWT_SECRET_FILE") {
        c.jwt_secret_file = Some(PathBuf::from(p));
        c.jwt_secret = None;
    }
    if let Ok(v) = std::env::var("OPSC_LOCAL_ALLOW_ROLES") {
        // Empty: no role may (only trusted local use); admin must be listed to keep it.
        let names: Vec<&str> = v.split(',').collect();
        c.local_allow_roles =
            opsconductor_http::config::parse_roles("OPSC_LOCAL_ALLOW_ROLES", &names)?;
    }
    if let Some(p) = env("OPSC_POLICY_FILE") {
        c.policy_file = Some(PathBuf::from(p));
    }
    if let Some(p) = env("OPSC_ADMIN_PASSWORD") {
        c.admin_password = Some(p);
    }
    c.validate()?;
    Ok(c)
}

/// Runs the server until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(args: ServeArgs, database_url: &str, out: &Out) -> Result<u8, Error> {
    let config = config(&args, database_url)?;
    let timeout: Duration = config.shutdown_timeout;
    let running = opsconductor_http::start(config).await?;
    for n in running.notices() {
        out.note(n);
    }
    if let Some(pw) = running.admin_password() {
        out.note(&format!(
            "created the first user 'admin' with the generated password: {pw}\n  \
             (shown once — store it now; change it with POST /api/v1/users/admin/password)"
        ));
    }
    let addr: SocketAddr = running.local_addr();
    if out.json {
        out.json(&serde_json::json!({"listening": running.url(), "address": addr}));
    } else {
        println!("listening on {}", running.url());
    }
    crate::signals::wait_for_signal().await;
    out.note(&format!(
        "shutting down: finishing open requests and running runs (up to {})",
        opsconductor::duration::format(timeout)
    ));
    running.shutdown().await?;
    Ok(exit::OK)
}
