//! Definitions through the engine: validating and applying batches of
//! targets and jobs, reading them back, removing targets.

use super::Conductor;
use crate::error::{Error, Result};
use crate::model::{Actor, Job, Target};
use crate::spec;
use crate::store::{ApplyBatch, ApplyItem};

impl Conductor {
    /// Validates every target and job of `batch`, then stores all of them in
    /// one transaction — or nothing, if any is invalid.
    pub async fn apply(&self, batch: &ApplyBatch, actor: &Actor) -> Result<Vec<ApplyItem>> {
        if !batch.jobs.is_empty() {
            actor.require(crate::auth::Permission::ManageJobs)?;
        }
        if !batch.targets.is_empty() {
            actor.require(crate::auth::Permission::ManageTargets)?;
            if actor.role.is_some() {
                let policy = self.local_policy();
                for t in &batch.targets {
                    let existing = self.target(&t.name).await.ok();
                    policy.check_target(actor, t, existing.as_ref())?;
                }
            }
        }
        self.validate(batch)?;
        let items = self.inner.store.apply(batch, &actor.name).await?;
        for i in &items {
            if i.action != crate::store::ApplyAction::Unchanged {
                let action = format!(
                    "{}.{}",
                    i.kind,
                    if i.action == crate::store::ApplyAction::Created {
                        "create"
                    } else {
                        "update"
                    }
                );
                self.inner
                    .audit_as(
                        actor,
                        &action,
                        format!("{}:{}", i.kind, i.name),
                        serde_json::json!({"version": i.version}),
                    )
                    .await;
            }
        }
        Ok(items)
    }

    /// Checks a batch the way [`Conductor::apply`] does, without storing anything.
    pub fn validate(&self, batch: &ApplyBatch) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for t in &batch.targets {
            spec::validate_target(t).map_err(|e| e.within(&format!("target '{}'", t.name)))?;
            if !seen.insert(("target", t.name.as_str())) {
                return Err(Error::validation(
                    format!("target '{}'", t.name),
                    "defined twice in this batch",
                ));
            }
        }
        for j in &batch.jobs {
            spec::validate_job(j, &self.inner.templates)
                .map_err(|e| e.within(&format!("job '{}'", j.name)))?;
            if !seen.insert(("job", j.name.as_str())) {
                return Err(Error::validation(
                    format!("job '{}'", j.name),
                    "defined twice in this batch",
                ));
            }
        }
        Ok(())
    }

    /// Every target, including the implicit `local` unless one is defined.
    pub async fn targets(&self) -> Result<Vec<Target>> {
        let mut all = self.inner.store.list_targets().await?;
        if !all.iter().any(|t| t.name == "local") {
            all.insert(0, Target::local());
        }
        Ok(all)
    }

    /// One target (the implicit `local` included).
    pub async fn target(&self, name: &str) -> Result<Target> {
        match self.inner.store.get_target(name).await? {
            Some(t) => Ok(t),
            None if name == "local" => Ok(Target::local()),
            None => Err(self.not_found_target(name).await),
        }
    }

    async fn not_found_target(&self, name: &str) -> Error {
        let names = self
            .targets()
            .await
            .map(|ts| ts.into_iter().map(|t| t.name).collect::<Vec<_>>());
        Error::NotFound {
            what: "target",
            name: name.into(),
            hint: names
                .ok()
                .map(|n| format!("known targets: {}", n.join(", "))),
        }
    }

    /// Removes a target (runs that name it keep their history).
    pub async fn remove_target(&self, name: &str, actor: &Actor) -> Result<()> {
        actor.require(crate::auth::Permission::ManageTargets)?;
        if !self.inner.store.delete_target(name).await? {
            return Err(self.not_found_target(name).await);
        }
        self.inner
            .audit_as(
                actor,
                "target.delete",
                format!("target:{name}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// Every version of a job, oldest first.
    pub async fn job_versions(&self, name: &str) -> Result<Vec<Job>> {
        let versions = self.inner.store.job_versions(name).await?;
        if versions.is_empty() {
            return Err(self
                .job(name, None)
                .await
                .err()
                .unwrap_or_else(|| Error::not_found("job", name)));
        }
        Ok(versions)
    }

    /// The latest version of every job.
    pub async fn jobs(&self) -> Result<Vec<Job>> {
        self.inner.store.list_jobs().await
    }

    /// One job version (latest if `version` is `None`).
    pub async fn job(&self, name: &str, version: Option<u32>) -> Result<Job> {
        if let Some(j) = self.inner.store.get_job(name, version).await? {
            return Ok(j);
        }
        if let (Some(v), Some(_)) = (version, self.inner.store.get_job(name, None).await?) {
            return Err(Error::NotFound {
                what: "job version",
                name: format!("{name}@{v}"),
                hint: None,
            });
        }
        let jobs = self.inner.store.list_jobs().await?;
        let hint = if jobs.is_empty() {
            "no jobs defined yet; add some with `opsconductor apply -f FILE`".to_string()
        } else {
            format!(
                "known jobs: {}",
                jobs.iter()
                    .map(|j| j.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Error::NotFound {
            what: "job",
            name: name.into(),
            hint: Some(hint),
        })
    }
}
