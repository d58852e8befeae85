//! Starting and stopping the server: open the engine, create the first admin
//! if there are no users, pick the token key, start workers, listen (HTTP or
//! HTTPS with rustls), and shut down gracefully — stop accepting, end live
//! log streams, let open requests finish, then let the workers drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opsconductor::{Conductor, Error, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::state::AppState;

/// A started server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    tls: bool,
    state: AppState,
    handle: axum_server::Handle<SocketAddr>,
    task: JoinHandle<std::io::Result<()>>,
    observer: CancellationToken,
    notices: Vec<String>,
    admin_password: Option<String>,
    shutdown_timeout: Duration,
}

impl Running {
    /// The address it listens on (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// The engine.
    pub fn conductor(&self) -> &Conductor {
        self.state.conductor()
    }

    /// Things the operator should be told once (a generated key file, …).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// The generated password of the first admin, if this start created it
    /// without one being configured. Show it once.
    pub fn admin_password(&self) -> Option<&str> {
        self.admin_password.as_deref()
    }

    /// Waits until the server stops on its own (it normally does not).
    pub async fn wait(&mut self) -> Result<()> {
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Internal(format!("the server stopped: {e}"))),
            Err(e) => Err(Error::Internal(format!("the server task failed: {e}"))),
        }
    }

    /// Graceful shutdown: stop accepting, end live log streams, give open
    /// requests and running runs up to the shutdown timeout, then stop.
    pub async fn shutdown(self) -> Result<()> {
        self.state.begin_shutdown();
        self.handle.graceful_shutdown(Some(self.shutdown_timeout));
        let served =
            tokio::time::timeout(self.shutdown_timeout + Duration::from_secs(1), self.task).await;
        self.observer.cancel();
        // Runs still going late in the grace period are stopped and recorded
        // as interrupted (failed), so none is left `running` for a rescue.
        let drained = self
            .state
            .conductor()
            .shutdown_within(self.shutdown_timeout)
            .await;
        if !drained {
            tracing::warn!(
                "runs still in progress after the shutdown timeout; another worker rescues them when their lease expires"
            );
        }
        match served {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::Internal(format!(
                "the server stopped with an error: {e}"
            ))),
            Ok(Err(e)) => Err(Error::Internal(format!("the server task failed: {e}"))),
            Err(_) => Ok(()),
        }
    }
}

/// Opens the engine on `config.database_url` (with every executor compiled
/// in) and starts the server. See [`start_with`].
pub async fn start(config: ServerConfig) -> Result<Running> {
    config.validate()?;
    let (builder, notice) = opsconductor::builder_with_notice(&config.database_url).await?;
    let oc = builder
        .retention(config.retention.clone())
        .scheduler(opsconductor::SchedulerConfig::from_env())
        .notifications(config.notifications.clone())
        .build()
        .await?;
    let mut running = start_with(oc, config).await?;
    if let Some(n) = notice {
        running.notices.insert(0, n);
    }
    Ok(running)
}

/// Starts the server over an engine you built: resolves the token key,
/// creates the first admin when there are no users, starts
/// `config.workers` workers and listens on `config.listen`.
pub async fn start_with(oc: Conductor, config: ServerConfig) -> Result<Running> {
    config.validate()?;
    let mut notices = Vec::new();
    let (secret, notice) = crate::jwt::resolve_secret(&config, oc.backend())?;
    notices.extend(notice);
    let admin_password = oc.ensure_admin(config.admin_password.as_deref()).await?;
    // Steps on the server's own host reach its keys and database: only the
    // configured roles may run them (see `local_allow_roles`).
    oc.set_local_policy(opsconductor::LocalPolicy {
        allow_roles: config.local_allow_roles.clone(),
    });
    // The command policy: the admin's file, else the built-in rules.
    if let Some(path) = &config.policy_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::validation(
                "policy_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        oc.set_command_policy(opsconductor::policy::Policy::from_yaml(
            &text,
            &path.display().to_string(),
        )?);
    }
    let state = AppState::new(oc.clone(), &config, &secret)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(rustls_config(cert, key)?),
        _ => None,
    };
    let listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
        Error::validation("listen", format!("cannot listen on {}: {e}", config.listen))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Internal(format!("listener: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener: {e}")))?;
    oc.start_workers(config.workers);
    // Every server runs the scheduler too (API-only nodes included): the
    // database lets exactly one process queue each fire time.
    oc.start_scheduler();
    let observer = CancellationToken::new();
    tokio::spawn(crate::metrics::observe_runs(
        oc.clone(),
        state.inner.metrics.clone(),
        observer.clone(),
    ));
    let app = crate::api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let is_tls = tls.is_some();
    let limits =
        crate::conn::ConnLimits::new(config.max_connections, config.max_connections_per_ip);
    let task = match tls {
        Some(tls) => {
            let acceptor = crate::conn::LimitAcceptor::new(
                axum_server::tls_rustls::RustlsAcceptor::new(tls)
                    .handshake_timeout(config.header_read_timeout),
                limits,
                config.header_read_timeout,
                config.idle_timeout,
            );
            let mut server = axum_server::from_tcp(listener)
                .map_err(|e| Error::Internal(format!("listener: {e}")))?
                .acceptor(acceptor)
                .handle(handle.clone());
            bound_http(server.http_builder(), &config);
            tokio::spawn(async move { server.serve(app).await })
        }
        None => {
            let acceptor = crate::conn::LimitAcceptor::new(
                axum_server::accept::DefaultAcceptor::new(),
                limits,
                config.header_read_timeout,
                config.idle_timeout,
            );
            let mut server = axum_server::from_tcp(listener)
                .map_err(|e| Error::Internal(format!("listener: {e}")))?
                .acceptor(acceptor)
                .handle(handle.clone());
            bound_http(server.http_builder(), &config);
            tokio::spawn(async move { server.serve(app).await })
        }
    };
    tracing::info!(%addr, tls = is_tls, workers = config.workers, backend = oc.backend(), "serving");
    Ok(Running {
        addr,
        tls: is_tls,
        state,
        handle,
        task,
        observer,
        notices,
        admin_password,
        shutdown_timeout: config.shutdown_timeout,
    })
}

/// hyper's own limits: without a timer its header-read timeout does
/// nothing, so one is set here.
fn bound_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    config: &ServerConfig,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(config.idle_timeout / 2))
        .keep_alive_timeout(config.header_read_timeout);
}

fn rustls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::validation(
                "tls_cert",
                format!("cannot read certificates from {}: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::validation(
            "tls_cert",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::validation(
            "tls_key",
            format!("cannot read a private key from {}: {e}", key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::validation(
                "tls_key",
                format!("the certificate and key do not work together: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(config),
    ))
}
