//! A session: one target in one run, a fresh container per step (see the
//! [module docs](super) for the workspace, copies, OOM and clean-up rules).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
};
use opsconductor_core::executor::{
    Command, ExecError, ExitStatus, FileSpec, OutputSink, Session, StepContext,
};
use opsconductor_core::model::{RunId, Stream, Target};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::container::{Container, Exit, Upload, cleanup_now};
use super::engine::{create_volume, image_error, remove_volume};
use super::limits::{self, Limits, TmpMode};
use super::sweep::{self, WorkerId};
use super::{DockerExecutor, SCRIPT_DIR, archive};

/// Moves an uploaded temporary file (`$1`) over the destination (`$2`)
/// with a rename; refuses a directory, and removes the temporary file when
/// it fails.
const RENAME_INTO_PLACE: &str = r#"if [ -d "$2" ] && [ ! -L "$2" ]; then
  echo "$2 is a directory" >&2; rm -f -- "$1"; exit 1
fi
mv -f -- "$1" "$2" || { rc=$?; rm -f -- "$1"; exit $rc; }"#;

/// Where `/tmp` is mounted: the tmpfs (default) or the session's workspace
/// (`tmp: session`).
const WORKSPACE: &str = "/tmp";

/// How much of a helper container's stderr goes into an error message.
const HELPER_OUTPUT_LIMIT: usize = 4096;

impl DockerExecutor {
    /// Opens a session on a `docker` target: checks the limits and that the
    /// image is present. Nothing is created until the first step.
    pub async fn session(&self, target: &Target) -> Result<DockerSession, ExecError> {
        let (image, limits) = self.settings_for(target)?;
        let docker = self.client().await?;
        if let Err(e) = docker.inspect_image(&image).await {
            return Err(image_error(&image, &e));
        }
        let id = RunId::new().0.simple().to_string();
        Ok(DockerSession {
            inner: SessionInner {
                docker,
                worker: self.engine.worker.clone(),
                shell: self.shell.clone(),
                target: target.name.clone(),
                image,
                limits,
                workspace: OnceCell::new(),
                replay: Mutex::new(Vec::new()),
                id,
            },
        })
    }
}

/// A file recorded for re-upload into every later container of a session
/// (a copy outside the workspace on a writable root).
#[derive(Debug, Clone)]
struct Recorded {
    /// Absolute destination.
    dest: String,
    content: Vec<u8>,
    mode: u32,
}

/// One target in one run: a fresh container per step, sharing the recorded
/// copies and, with `tmp: session`, a workspace volume at `/tmp`. Close it
/// (or drop it) to remove the workspace.
#[derive(Debug)]
pub struct DockerSession {
    inner: SessionInner,
}

#[derive(Debug)]
struct SessionInner {
    docker: Docker,
    worker: WorkerId,
    shell: String,
    target: String,
    image: String,
    limits: Limits,
    /// The workspace volume's name, once created.
    workspace: OnceCell<String>,
    replay: Mutex<Vec<Recorded>>,
    id: String,
}

/// What to run in a container.
struct Spec {
    role: &'static str,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    script: bool,
}

impl DockerSession {
    /// The session id, as in the `opsconductor.session` label.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The image the session's containers run.
    pub fn image(&self) -> &str {
        &self.inner.image
    }

    /// The isolation of the session's containers.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The name of the workspace volume, once the first step created it.
    pub fn workspace_volume(&self) -> Option<&str> {
        self.inner.workspace.get().map(String::as_str)
    }
}

impl SessionInner {
    /// The session's isolation with the step's own overrides applied.
    fn step_limits(&self, ctx: &StepContext) -> Result<Limits, ExecError> {
        check_step_overrides(&self.limits, &ctx.limits)
            .map_err(|e| ExecError::Spawn(format!("step limits on target '{}': {e}", self.target)))
    }

    fn labels(&self, ctx: &StepContext, role: &str) -> HashMap<String, String> {
        let mut labels = self.worker.labels();
        labels.insert(sweep::LABEL_RUN.into(), ctx.run_id.to_string());
        labels.insert(sweep::LABEL_SESSION.into(), self.id.clone());
        labels.insert(sweep::LABEL_TARGET.into(), self.target.clone());
        labels.insert(sweep::LABEL_ROLE.into(), role.into());
        labels
    }

    /// Who owns uploaded files: a numeric owner in the archive, or the
    /// engine resolving the container's user (`copy_uidgid`).
    fn owner(&self) -> (Option<(u64, u64)>, bool) {
        match self.limits.numeric_owner() {
            Some(owner) => (Some(owner), false),
            None => (None, true),
        }
    }

    /// The workspace volume, created on first use (`tmp: session` only).
    /// Its root is made world-writable with the sticky bit (mode 1777, as
    /// `/tmp` should be), whatever the image has at `/tmp`: the volume is
    /// mounted with `nocopy`, and a container that never starts (with a
    /// writable root, since the engine extracts the mode from `/`) applies
    /// the mode.
    async fn workspace(&self, ctx: &StepContext) -> Result<Option<String>, ExecError> {
        if self.limits.tmp != TmpMode::Session {
            return Ok(None);
        }
        let name = self
            .workspace
            .get_or_try_init(|| async {
                let name = format!("opsc-ws-{}", self.id);
                create_volume(&self.docker, &name, self.labels(ctx, "workspace")).await?;
                if let Err(e) = self.prepare_workspace(ctx, &name).await {
                    remove_volume(&self.docker, &name).await;
                    return Err(e);
                }
                Ok::<_, ExecError>(name)
            })
            .await?;
        Ok(Some(name.clone()))
    }

    async fn prepare_workspace(&self, ctx: &StepContext, volume: &str) -> Result<(), ExecError> {
        let spec = Spec {
            role: "workspace",
            entrypoint: vec!["true".into()],
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
            script: false,
        };
        let mut config = self.config(ctx, &spec, Some(volume), &self.limits);
        if let Some(host) = config.host_config.as_mut() {
            host.readonly_rootfs = Some(false);
        }
        let name = format!("opsc-workspace-{}", RunId::new().0.simple());
        let container = Container::create(&self.docker, &name, &self.image, config).await?;
        let mode = Upload {
            path: "/".into(),
            tar: archive::directory(WORKSPACE.trim_start_matches('/'), 0o1777)?,
            copy_uidgid: false,
            what: "prepare the workspace".into(),
        };
        let done = container.upload(&mode).await;
        container.remove().await;
        done
    }

    /// The uploads every container of the session gets before it starts:
    /// the recorded copies.
    fn common_uploads(&self) -> Result<Vec<Upload>, ExecError> {
        let mut uploads = Vec::new();
        let recorded = match self.replay.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if !recorded.is_empty() {
            let (owner, copy_uidgid) = self.owner();
            let paths: Vec<String> = recorded
                .iter()
                .map(|r| r.dest.trim_start_matches('/').to_owned())
                .collect();
            let entries: Vec<archive::Entry<'_>> = recorded
                .iter()
                .zip(&paths)
                .map(|(r, path)| archive::Entry {
                    path,
                    content: &r.content,
                    mode: r.mode,
                    owner,
                })
                .collect();
            uploads.push(Upload {
                path: "/".into(),
                tar: archive::files(&entries)?,
                copy_uidgid,
                what: "restore the session's copied files".into(),
            });
        }
        Ok(uploads)
    }

    fn config(
        &self,
        ctx: &StepContext,
        spec: &Spec,
        workspace: Option<&str>,
        l: &Limits,
    ) -> ContainerCreateBody {
        let mut labels = self.labels(ctx, spec.role);
        labels.insert(sweep::LABEL_STEP.into(), ctx.step.to_string());
        let memory = i64::try_from(l.memory).unwrap_or(i64::MAX);
        let mut host = HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((l.cpus * 1e9).round() as i64),
            pids_limit: Some(l.pids),
            network_mode: Some(l.network.clone()),
            readonly_rootfs: Some(l.read_only),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(l.init),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            auto_remove: Some(false),
            ..Default::default()
        };
        match workspace {
            Some(volume) => {
                host.mounts = Some(vec![Mount {
                    target: Some(WORKSPACE.into()),
                    source: Some(volume.to_owned()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(false),
                    // Never copy the image's /tmp (content, owner, mode) in.
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]);
            }
            None => {
                host.tmpfs = Some(HashMap::from([(
                    WORKSPACE.to_owned(),
                    format!("rw,exec,nosuid,nodev,size={},mode=1777", l.tmpfs_size),
                )]));
            }
        }
        ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            working_dir: spec.workdir.clone(),
            user: (!l.user.is_empty()).then(|| l.user.clone()),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            volumes: spec.script.then(|| vec![SCRIPT_DIR.to_owned()]),
            host_config: Some(host),
            ..Default::default()
        }
    }

    /// Runs one container to its end under the context's deadline and
    /// cancellation; the container is removed on every path.
    async fn run(
        &self,
        ctx: &StepContext,
        spec: Spec,
        extra: Vec<Upload>,
        out: &OutputSink,
        limits: &Limits,
    ) -> Result<Exit, ExecError> {
        stopped(ctx)?;
        let workspace = self.workspace(ctx).await?;
        let mut uploads = self.common_uploads()?;
        uploads.extend(extra);
        let program = spec.entrypoint.first().cloned().unwrap_or_default();
        let name = format!("opsc-{}-{}", spec.role, RunId::new().0.simple());
        let config = self.config(ctx, &spec, workspace.as_deref(), limits);
        let container = Container::create(&self.docker, &name, &self.image, config).await?;
        let work = async {
            for up in &uploads {
                container.upload(up).await?;
            }
            container.run(&program, &self.image, out).await
        };
        let result = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(ExecError::Cancelled),
            _ = until(ctx.deadline) => Err(ExecError::TimedOut),
            r = work => r,
        };
        container.remove().await;
        result
    }

    /// Runs a helper container (no output forwarded) and returns its exit
    /// and the start of its stderr.
    async fn run_helper(
        &self,
        ctx: &StepContext,
        spec: Spec,
        extra: Vec<Upload>,
    ) -> Result<(Exit, String), ExecError> {
        let (sink, mut rx) = OutputSink::channel(16);
        let collect = async {
            let mut err = Vec::new();
            while let Some(ev) = rx.recv().await {
                if ev.stream == Stream::Stderr && err.len() < HELPER_OUTPUT_LIMIT {
                    err.extend_from_slice(&ev.data);
                }
            }
            err
        };
        let run = async {
            let r = self.run(ctx, spec, extra, &sink, &self.limits).await;
            drop(sink);
            r
        };
        let (result, err) = tokio::join!(run, collect);
        let err = String::from_utf8_lossy(&err[..err.len().min(HELPER_OUTPUT_LIMIT)])
            .trim()
            .to_owned();
        result.map(|exit| (exit, err))
    }

    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        stopped(ctx)?;
        if let Some(dir) = ctx.workdir.as_deref().filter(|d| !d.starts_with('/')) {
            return Err(ExecError::Spawn(format!(
                "the working directory '{dir}' must be an absolute path in the container"
            )));
        }
        let mut env = Vec::with_capacity(ctx.env.len());
        for (k, v) in &ctx.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(ExecError::Spawn(format!(
                    "environment variable {k:?} cannot be passed to a container"
                )));
            }
            env.push(format!("{k}={v}"));
        }
        let mut extra = Vec::new();
        let (entrypoint, args, script) = match cmd {
            Command::Shell(line) => (
                vec![self.shell.clone()],
                vec!["-c".to_owned(), line.clone()],
                false,
            ),
            Command::Script { interpreter, body } => {
                let mut words = interpreter.split_whitespace().map(str::to_owned);
                let program = words.next().ok_or_else(|| {
                    ExecError::Spawn(
                        "the script interpreter is empty; name a program such as 'sh'".into(),
                    )
                })?;
                let mut args: Vec<String> = words.collect();
                args.push(format!("{SCRIPT_DIR}/script"));
                let (owner, copy_uidgid) = self.owner();
                extra.push(Upload {
                    path: SCRIPT_DIR.into(),
                    tar: archive::files(&[archive::Entry {
                        path: "script",
                        content: body.as_bytes(),
                        mode: 0o644,
                        owner,
                    }])?,
                    copy_uidgid,
                    what: "upload the script".into(),
                });
                (vec![program], args, true)
            }
        };
        let spec = Spec {
            role: "step",
            entrypoint,
            cmd: args,
            env,
            workdir: ctx.workdir.clone(),
            script,
        };
        let program = spec.entrypoint.first().cloned().unwrap_or_default();
        let limits = self.step_limits(ctx)?;
        let exit = self.run(ctx, spec, extra, out, &limits).await?;
        if let Some(msg) = init_exec_failure(&exit) {
            return Err(ExecError::Spawn(format!(
                "'{program}' in image '{}': {msg}",
                self.image
            )));
        }
        let code = i32::try_from(exit.code).unwrap_or(-1);
        if exit.oom_killed {
            let why = format!(
                "killed: out of memory (limit {})",
                limits::human_bytes(limits.memory)
            );
            if code != 0 {
                return Err(ExecError::Io(why));
            }
            out.write(
                Stream::System,
                format!("note: a process of the step was {why}; the command still exited 0\n"),
            )
            .await;
        }
        Ok(ExitStatus::code(code))
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        stopped(ctx)?;
        let dest = normalize(&file.dest).ok_or_else(|| {
            ExecError::Io(format!(
                "cannot copy to {}: give an absolute path to a file, without '..'",
                file.dest
            ))
        })?;
        let (parent, name) = match dest.rsplit_once('/') {
            Some(("", name)) => ("/".to_owned(), name.to_owned()),
            Some((parent, name)) => (parent.to_owned(), name.to_owned()),
            None => ("/".to_owned(), dest.clone()),
        };
        let what = format!("copy to {dest}");
        let in_tmp = dest.starts_with("/tmp/");
        let (owner, copy_uidgid) = self.owner();
        if in_tmp && self.limits.tmp == TmpMode::Tmpfs {
            return Err(ExecError::Io(format!(
                "cannot {what}: /tmp is a fresh tmpfs in every step container (limits.tmp: \"tmpfs\", \
                 the default), which the engine cannot write into; set limits.tmp: \"session\" on the \
                 target to keep copied files under /tmp for later steps"
            )));
        }
        if in_tmp {
            // Upload under a temporary name, then rename into place.
            let temp_name = format!(
                ".{name}.opsc-{}",
                &RunId::new().0.simple().to_string()[..12]
            );
            let temp = format!("{}/{temp_name}", parent.trim_end_matches('/'));
            let upload = Upload {
                path: parent.clone(),
                tar: archive::files(&[archive::Entry {
                    path: &temp_name,
                    content: &file.content,
                    mode: file.mode,
                    owner,
                }])?,
                copy_uidgid,
                what: what.clone(),
            };
            let spec = Spec {
                role: "copy",
                entrypoint: vec![self.shell.clone()],
                cmd: vec![
                    "-c".into(),
                    RENAME_INTO_PLACE.into(),
                    "opsc-copy".into(),
                    temp,
                    dest.clone(),
                ],
                env: Vec::new(),
                workdir: None,
                script: false,
            };
            let (exit, stderr) = self.run_helper(ctx, spec, vec![upload]).await?;
            if exit.code != 0 {
                return Err(ExecError::Io(format!(
                    "cannot {what}: renaming the uploaded file into place failed (exit code {}): {stderr}",
                    exit.code
                )));
            }
            return Ok(());
        }
        if self.limits.read_only {
            return Err(ExecError::Io(format!(
                "cannot {what}: the container's root file system is read-only (limits.read_only); \
                 copy under /tmp with limits.tmp: \"session\" (the session's workspace), or set \
                 read_only: false on the target"
            )));
        }
        // A writable root: check now, on a container that never starts, that
        // the directory exists (an empty archive extracted there) and that the
        // file can be written (extracting at `/` alone would create missing
        // directories); then record it for every later container.
        let rel = dest.trim_start_matches('/').to_owned();
        let checks = [
            Upload {
                path: parent.clone(),
                tar: archive::files(&[])?,
                copy_uidgid: false,
                what: what.clone(),
            },
            Upload {
                path: "/".into(),
                tar: archive::files(&[archive::Entry {
                    path: &rel,
                    content: &file.content,
                    mode: file.mode,
                    owner,
                }])?,
                copy_uidgid,
                what: what.clone(),
            },
        ];
        let spec = Spec {
            role: "copy",
            entrypoint: vec!["true".into()],
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
            script: false,
        };
        let name = format!("opsc-copy-{}", RunId::new().0.simple());
        let config = self.config(ctx, &spec, None, &self.limits);
        let container = Container::create(&self.docker, &name, &self.image, config).await?;
        let mut checked = Ok(());
        for up in &checks {
            checked = container.upload(up).await;
            if checked.is_err() {
                break;
            }
        }
        container.remove().await;
        checked?;
        let mut replay = match self.replay.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        replay.retain(|r| r.dest != dest);
        replay.push(Recorded {
            dest,
            content: file.content.clone(),
            mode: file.mode,
        });
        Ok(())
    }

    /// Removes the workspace volume now; `Drop` then has nothing to do.
    async fn remove_workspace(&mut self) {
        if let Some(volume) = self.workspace.take() {
            remove_volume(&self.docker, &volume).await;
        }
    }
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        if let Some(volume) = self.workspace.take() {
            let docker = self.docker.clone();
            cleanup_now(async move { remove_volume(&docker, &volume).await });
        }
    }
}

/// The init's (tini's) own message when it could not start the command
/// (`[FATAL tini (7)] exec NAME failed: No such file or directory`, exit
/// code 127): without an init the engine reports that at start instead.
fn init_exec_failure(exit: &Exit) -> Option<String> {
    if exit.code != 127 {
        return None;
    }
    let text = String::from_utf8_lossy(&exit.stderr_head);
    let line = text.lines().find(|l| l.contains("[FATAL tini"))?;
    if !line.contains("exec ") || !line.contains(" failed") {
        return None;
    }
    let msg = line.split_once("] ").map_or(line, |(_, m)| m);
    Some(msg.trim().to_owned())
}

/// `/a/./b//c` → `/a/b/c`; `None` for relative paths, `..`, or a directory.
pub(super) fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.ends_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// A step's overrides of its target's limits. `tmp` is the session's (the
/// workspace volume is shared by every step of the run), so a step cannot
/// change it.
pub(super) fn check_step_overrides(
    base: &Limits,
    overrides: &BTreeMap<String, serde_json::Value>,
) -> Result<Limits, String> {
    if overrides.is_empty() {
        return Ok(base.clone());
    }
    if overrides.contains_key("tmp") {
        return Err(
            "'tmp' is chosen per target (every step of a run shares the session's /tmp); \
             set it in the target's limits"
                .into(),
        );
    }
    base.with_overrides(overrides)
        .map_err(|e| format!("invalid {e}"))
}

/// The context's stop reason if it already has one.
fn stopped(ctx: &StepContext) -> Result<(), ExecError> {
    if ctx.cancel.is_cancelled() {
        return Err(ExecError::Cancelled);
    }
    if ctx.deadline.is_some_and(|d| d <= Instant::now()) {
        return Err(ExecError::TimedOut);
    }
    Ok(())
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Session for DockerSession {
    async fn exec(
        &self,
        ctx: &StepContext,
        cmd: &Command,
        out: &OutputSink,
    ) -> Result<ExitStatus, ExecError> {
        self.inner.exec(ctx, cmd, out).await
    }

    async fn copy(&self, ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
        self.inner.copy(ctx, file).await
    }

    async fn close(self: Box<Self>) {
        let mut me = *self;
        me.inner.remove_workspace().await;
    }
}
