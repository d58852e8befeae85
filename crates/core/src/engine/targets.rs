//! Target operations that reach out: `check` (connect, authenticate, probe)
//! and `trust` (record the host key a target offers).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::Conductor;
use crate::auth::Permission;
use crate::error::{Error, Result};
use crate::executor::Probe;
use crate::model::{Actor, Connection, Target};
use crate::store::ApplyBatch;

/// The outcome of checking one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// Target name.
    pub target: String,
    /// Connection kind.
    pub kind: String,
    /// True if it connected, authenticated and ran the probe.
    pub ok: bool,
    /// What the probe found.
    pub probe: Option<Probe>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long the check took.
    pub latency_ms: u64,
}

impl Conductor {
    /// Checks every target the selector picks, concurrently (at most
    /// `concurrency` at once): connect, authenticate, run a trivial probe.
    pub async fn check_targets(
        &self,
        selector: &[String],
        concurrency: usize,
        actor: &Actor,
    ) -> Result<Vec<TargetCheck>> {
        actor.require(Permission::ManageTargets)?;
        let targets = crate::selector::resolve(selector, &self.all_targets().await?)?;
        self.check_list(targets, concurrency).await
    }

    /// Checks the one target named exactly `name` (no selector: a name is
    /// never read as a pattern). `NotFound` names the known targets.
    pub async fn check_target(&self, name: &str, actor: &Actor) -> Result<TargetCheck> {
        actor.require(Permission::ManageTargets)?;
        let target = self.find_target(name).await?;
        let mut checks = self.check_list(vec![target], 1).await?;
        checks
            .pop()
            .ok_or_else(|| Error::Internal(format!("checking '{name}' gave no result")))
    }

    async fn check_list(
        &self,
        targets: Vec<crate::model::Target>,
        concurrency: usize,
    ) -> Result<Vec<TargetCheck>> {
        let creds = self.inner.run_secrets_for_targets(&targets).await?;
        let checks = futures::stream::iter(targets.into_iter().map(|t| {
            let cred = creds.get(&t.name).cloned();
            let exec = self.inner.executors.get(t.connection.kind()).cloned();
            async move {
                let start = Instant::now();
                let result = match exec {
                    None => Err(format!(
                        "no executor for '{}' targets in this build",
                        t.connection.kind()
                    )),
                    Some(e) => match tokio::time::timeout(
                        Duration::from_secs(60),
                        e.check(&t, cred.as_ref()),
                    )
                    .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("timed out after 60s".into()),
                    },
                };
                let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                let (ok, probe, error) = match result {
                    Ok(p) => (true, Some(p), None),
                    Err(e) => (false, None, Some(e)),
                };
                TargetCheck {
                    target: t.name.clone(),
                    kind: t.connection.kind().to_string(),
                    ok,
                    probe,
                    error,
                    latency_ms,
                }
            }
        }))
        .buffered(concurrency.max(1))
        .collect()
        .await;
        Ok(checks)
    }

    /// The host key target `name` offers now, and the one it pins (if any).
    /// Connecting to fetch it is part of trusting a target: it needs
    /// [`Permission::ManageTargets`](crate::auth::Permission::ManageTargets).
    pub async fn offered_host_key(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<(String, Option<String>)> {
        actor.require(crate::auth::Permission::ManageTargets)?;
        let t = self.find_target(name).await?;
        let Connection::Ssh { host_key, .. } = &t.connection else {
            return Err(Error::validation(
                "target",
                format!("target '{name}' is not an SSH target; only SSH targets have host keys"),
            ));
        };
        let exec = self
            .inner
            .executors
            .get("ssh")
            .ok_or_else(|| Error::Conflict("this build has no SSH executor".into()))?;
        let offered = exec
            .fetch_host_key(&t)
            .await
            .map_err(|e| Error::Executor(format!("cannot fetch the host key of '{name}': {e}")))?
            .ok_or_else(|| Error::Executor(format!("'{name}' offered no host key")))?;
        Ok((offered, host_key.clone()))
    }

    /// Pins `fingerprint` as target `name`'s host key (after the user saw it).
    pub async fn trust_host_key(
        &self,
        name: &str,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<Target> {
        actor.require(Permission::ManageTargets)?;
        if !fingerprint.starts_with("SHA256:") {
            return Err(Error::validation(
                "host_key",
                "expected a fingerprint like SHA256:… (as `ssh-keygen -lf` prints)",
            ));
        }
        let mut t = self.find_target(name).await?;
        match &mut t.connection {
            Connection::Ssh { host_key, .. } => *host_key = Some(fingerprint.to_string()),
            _ => {
                return Err(Error::validation(
                    "target",
                    format!("target '{name}' is not an SSH target"),
                ));
            }
        }
        self.apply(
            &ApplyBatch {
                targets: vec![t.clone()],
                ..Default::default()
            },
            actor,
        )
        .await?;
        self.inner
            .audit_as(
                actor,
                "target.trust",
                format!("target:{name}"),
                serde_json::json!({"host_key": fingerprint}),
            )
            .await;
        Ok(t)
    }
}
