//! Engine access: the client (connected, version-negotiated and the
//! sweeper run once, on first use), the engine address forms, and the
//! engine's errors as this executor reports them. Container lifecycles are
//! in [`super::container`]; what a session does with them is in
//! [`super::session`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::RemoveVolumeOptionsBuilder;
use bollard::{API_DEFAULT_VERSION, Docker};
use opsconductor_core::executor::ExecError;
use tokio::sync::OnceCell;

use super::DockerExecutor;
use super::container::status;
use super::sweep::{self, SweepReport, WorkerId};

/// How long engine requests that return at once may take.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The message for an image the engine does not have.
pub(crate) fn missing_image(image: &str) -> String {
    format!(
        "image '{image}' is not present on the engine; no registry can be assumed here — \
         build or load it first (docker build, docker load or docker import)"
    )
}

/// The engine's own message for an error, without bollard's wrapping.
pub(crate) fn engine_error(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        other => other.to_string(),
    }
}

/// The connection, shared by clones of one executor.
#[derive(Debug)]
pub(super) struct Engine {
    preset: Option<Docker>,
    client: OnceCell<Docker>,
    swept: OnceCell<()>,
    pub(super) worker: WorkerId,
}

impl Engine {
    pub(super) fn new(preset: Option<Docker>) -> Arc<Self> {
        Arc::new(Self {
            preset,
            client: OnceCell::new(),
            swept: OnceCell::new(),
            worker: WorkerId::current(),
        })
    }
}

impl DockerExecutor {
    /// The engine client, connected and version-negotiated on first use
    /// (which also runs the sweeper once, if enabled).
    pub async fn client(&self) -> Result<Docker, ExecError> {
        let docker = self
            .engine
            .client
            .get_or_try_init(|| async {
                let (docker, addr) = match &self.engine.preset {
                    Some(d) => (d.clone(), "the configured address".to_owned()),
                    None => (connect_to(&self.socket)?, self.socket.clone()),
                };
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable_engine(&addr, &e))
            })
            .await?
            .clone();
        if self.sweep_on_first_use {
            self.engine
                .swept
                .get_or_init(|| async {
                    match sweep::sweep(&docker, &self.engine.worker, self.orphan_grace).await {
                        Ok(r) if r.containers.is_empty() && r.volumes.is_empty() => {}
                        Ok(r) => tracing::info!(
                            containers = r.containers.len(),
                            volumes = r.volumes.len(),
                            "removed orphaned Docker objects"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "sweeping orphaned Docker objects failed")
                        }
                    }
                })
                .await;
        }
        Ok(docker)
    }

    /// Removes containers and volumes left behind by workers that are gone
    /// (the rule is in [`sweep`]).
    pub async fn sweep_orphans(&self) -> Result<SweepReport, ExecError> {
        let docker = self.client().await?;
        sweep::sweep(&docker, &self.engine.worker, self.orphan_grace).await
    }
}

/// A client for an engine address (see [`DockerExecutor::socket`]).
pub(super) fn connect_to(addr: &str) -> Result<Docker, ExecError> {
    let addr = addr.trim();
    if addr.starts_with("https://") {
        return Err(ExecError::Connect(format!(
            "cannot reach the Docker engine at {addr}: TLS to the engine (DOCKER_TLS_VERIFY) is not \
             built into this program; use a Unix socket or an SSH tunnel to it, or embed the \
             executor with a TLS client (DockerExecutor::with_client, bollard's ssl feature)"
        )));
    }
    let docker = if addr.starts_with("tcp://") || addr.starts_with("http://") {
        Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else if addr.contains("://") && !addr.starts_with("unix://") {
        return Err(ExecError::Connect(format!(
            "cannot reach the Docker engine at {addr}: give a socket path, unix:///path or \
             tcp://host:port"
        )));
    } else {
        Docker::connect_with_socket(addr, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    };
    docker.map_err(|e| unreachable_engine(addr, &e))
}

pub(super) fn unreachable_engine(addr: &str, e: &EngineError) -> ExecError {
    ExecError::Connect(format!(
        "cannot reach the Docker engine at {addr}: {}",
        engine_error(e)
    ))
}

pub(super) fn image_error(image: &str, e: &EngineError) -> ExecError {
    if status(e) == Some(404) {
        ExecError::Spawn(missing_image(image))
    } else {
        ExecError::Connect(format!(
            "cannot inspect image '{image}': {}",
            engine_error(e)
        ))
    }
}

/// Creates a volume with these labels.
pub(super) async fn create_volume(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<(), ExecError> {
    let request = VolumeCreateRequest {
        name: Some(name.to_owned()),
        labels: Some(labels),
        ..Default::default()
    };
    docker
        .create_volume(request)
        .await
        .map(|_| ())
        .map_err(|e| {
            ExecError::Io(format!(
                "cannot create the workspace volume: {}",
                engine_error(&e)
            ))
        })
}

/// Removes a volume, waiting a moment while a container still holds it;
/// the sweeper gets it when that fails.
pub(super) async fn remove_volume(docker: &Docker, volume: &str) {
    let opts = RemoveVolumeOptionsBuilder::default().force(true).build();
    // A container being removed may still hold the volume for a moment.
    for attempt in 0..25 {
        match docker.remove_volume(volume, Some(opts.clone())).await {
            Ok(()) => return,
            Err(e) if status(&e) == Some(404) => return,
            Err(e) if status(&e) == Some(409) && attempt < 24 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(volume, error = %engine_error(&e), "cannot remove the workspace volume; the sweeper will");
                return;
            }
        }
    }
}
