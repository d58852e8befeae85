//! One container's life: create it, put files into it, attach to its output,
//! start it, stream stdout and stderr as they come, wait for it and read its
//! exit code and OOM flag — and remove it on every path out, including a
//! dropped future.

use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use opsconductor_core::executor::{ExecError, OutputSink};
use opsconductor_core::model::Stream;

use super::engine_error;

/// How long cleanup from a `Drop` may take before it is abandoned (the
/// sweeper gets what is left).
const DROP_CLEANUP_LIMIT: Duration = Duration::from_secs(20);

/// A file (as a tar archive) to extract into the container before it starts.
#[derive(Debug, Clone)]
pub(super) struct Upload {
    /// The directory to extract into.
    pub path: String,
    /// The archive.
    pub tar: Vec<u8>,
    /// Let the engine chown the files to the container's user (for users
    /// given by name; numeric owners are written into the archive).
    pub copy_uidgid: bool,
    /// What the upload is for, for error messages ("copy to /tmp/x").
    pub what: String,
}

/// How much of the start of stderr [`Exit::stderr_head`] keeps.
const STDERR_HEAD: usize = 1024;

/// How a started container ended.
#[derive(Debug, Clone)]
pub(super) struct Exit {
    /// The exit code of its main process (128 + N after signal N).
    pub code: i64,
    /// Whether the kernel's OOM killer killed a process in it.
    pub oom_killed: bool,
    /// The first bytes of its stderr (also forwarded), to recognise the
    /// init's own failure to start the command.
    pub stderr_head: Vec<u8>,
}

/// A created container, removed (killed if need be) by [`Container::remove`]
/// or, if that is never reached, when dropped.
pub(super) struct Container {
    docker: Docker,
    /// The container id.
    pub id: String,
    removed: bool,
}

impl Container {
    /// Creates a container named `name` from `config`.
    pub async fn create(
        docker: &Docker,
        name: &str,
        image: &str,
        config: ContainerCreateBody,
    ) -> Result<Self, ExecError> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        match docker.create_container(Some(opts), config).await {
            Ok(created) => Ok(Self {
                docker: docker.clone(),
                id: created.id,
                removed: false,
            }),
            Err(e) if status(&e) == Some(404) && engine_error(&e).contains("No such image") => {
                Err(ExecError::Spawn(super::missing_image(image)))
            }
            Err(e) => Err(ExecError::Spawn(format!(
                "cannot create a container from image '{image}': {}",
                engine_error(&e)
            ))),
        }
    }

    /// Extracts an archive into the (not yet started) container.
    pub async fn upload(&self, up: &Upload) -> Result<(), ExecError> {
        let mut opts = UploadToContainerOptionsBuilder::default().path(&up.path);
        if up.copy_uidgid {
            opts = opts.copy_uidgid("1");
        }
        let body = bollard::body_full(up.tar.clone().into());
        match self
            .docker
            .upload_to_container(&self.id, Some(opts.build()), body)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(ExecError::Io(format!(
                "cannot {}: the directory {} does not exist in the container",
                up.what, up.path
            ))),
            Err(e) => {
                let msg = engine_error(&e);
                if msg.contains("read-only") {
                    Err(ExecError::Io(format!(
                        "cannot {}: {} is on a read-only file system in the container ({msg})",
                        up.what, up.path
                    )))
                } else {
                    Err(ExecError::Io(format!("cannot {}: {msg}", up.what)))
                }
            }
        }
    }

    /// Attaches, starts the container and streams its output into `out`
    /// until it exits; then reads its exit code and OOM flag.
    pub async fn run(
        &self,
        program: &str,
        image: &str,
        out: &OutputSink,
    ) -> Result<Exit, ExecError> {
        let opts = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(&self.id, Some(opts))
            .await
            .map_err(|e| {
                ExecError::Io(format!(
                    "cannot attach to the container: {}",
                    engine_error(&e)
                ))
            })?;
        if let Err(e) = self.docker.start_container(&self.id, None).await {
            return Err(ExecError::Spawn(format!(
                "'{program}' in image '{image}': {}",
                engine_error(&e)
            )));
        }
        let mut output = attached.output;
        let mut stderr_head = Vec::new();
        while let Some(item) = output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    out.write(Stream::Stdout, message).await
                }
                Ok(LogOutput::StdErr { message }) => {
                    if stderr_head.len() < STDERR_HEAD {
                        let room = STDERR_HEAD - stderr_head.len();
                        stderr_head.extend_from_slice(&message[..message.len().min(room)]);
                    }
                    out.write(Stream::Stderr, message).await
                }
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => {
                    return Err(ExecError::Io(format!(
                        "lost the container's output stream: {}",
                        engine_error(&e)
                    )));
                }
            }
        }
        // The output ends when the container's processes are gone; wait for
        // the engine to record the exit before reading it.
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waiting = self.docker.wait_container(&self.id, Some(wait));
        match waiting.next().await {
            None | Some(Ok(_)) | Some(Err(EngineError::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) => {
                return Err(ExecError::Io(format!(
                    "cannot wait for the container: {}",
                    engine_error(&e)
                )));
            }
        }
        let inspect = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .map_err(|e| {
                ExecError::Io(format!(
                    "cannot inspect the container: {}",
                    engine_error(&e)
                ))
            })?;
        let state = inspect.state.unwrap_or_default();
        let code = state.exit_code.ok_or_else(|| {
            ExecError::Io("the engine reported no exit code for the container".into())
        })?;
        Ok(Exit {
            code,
            oom_killed: state.oom_killed.unwrap_or(false),
            stderr_head,
        })
    }

    /// Kills (if running) and removes the container and its anonymous
    /// volumes. Failures are logged: the sweeper removes what is left.
    pub async fn remove(mut self) {
        self.removed = true;
        remove_container(&self.docker, &self.id).await;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let docker = self.docker.clone();
        let id = std::mem::take(&mut self.id);
        cleanup_now(async move { remove_container(&docker, &id).await });
    }
}

async fn remove_container(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    for attempt in 0..3 {
        match docker.remove_container(id, Some(opts.clone())).await {
            Ok(()) => return,
            Err(e) if status(&e) == Some(404) => return,
            // 409: a removal is already in progress; it will finish.
            Err(e)
                if status(&e) == Some(409) && engine_error(&e).contains("already in progress") =>
            {
                return;
            }
            Err(e) => {
                tracing::warn!(container = %id, attempt, error = %engine_error(&e), "cannot remove a container");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The HTTP status of an engine error, if it is one.
pub(super) fn status(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Runs cleanup from a `Drop`: blocks on it when that is allowed (a
/// multi-threaded runtime, so the removal is done when the drop returns),
/// else spawns it on the runtime, else runs it on a thread of its own.
pub(super) fn cleanup_now<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let bounded = async move {
        if tokio::time::timeout(DROP_CLEANUP_LIMIT, fut).await.is_err() {
            tracing::warn!("cleanup of a Docker object timed out; the sweeper will remove it");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(bounded));
        }
        Ok(handle) => {
            handle.spawn(bounded);
        }
        Err(_) => {
            let spawned = std::thread::Builder::new()
                .name("opsc-docker-cleanup".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(bounded),
                        Err(e) => tracing::warn!(error = %e, "no runtime for Docker cleanup"),
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for Docker cleanup");
            }
        }
    }
}
