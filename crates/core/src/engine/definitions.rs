//! Definitions through the engine: validating and applying batches of
//! targets and jobs, reading them back, removing targets.

use std::collections::HashMap;

use super::Conductor;
use crate::auth::Permission;
use crate::error::{Error, Result};
use crate::model::{Action, Actor, Job, Step, Target};
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
                    let existing = self.find_target(&t.name).await.ok();
                    policy.check_target(actor, t, existing.as_ref())?;
                }
            }
        }
        self.validate(batch)?;
        let checked;
        let batch = if batch.schedules.is_empty() {
            batch
        } else {
            checked = self.check_schedules(batch, actor).await?;
            &checked
        };
        self.check_job_calls(batch).await?;
        let items = self.inner.store.apply(batch, &actor.name).await?;
        if items.iter().any(|i| i.kind == "schedule") {
            // Wake the schedulers: a new or changed schedule may be due soon.
            self.inner.publish(super::scheduler::schedule_event());
        }
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
        if batch.targets.is_empty() && batch.jobs.is_empty() && batch.schedules.is_empty() {
            return Err(Error::invalid(NOTHING_TO_APPLY));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &batch.schedules {
            crate::schedule_doc::check_def(s)?;
            if !seen.insert(("schedule", s.spec.name.as_str())) {
                return Err(defined_twice("schedule", &s.spec.name, None));
            }
        }
        for t in &batch.targets {
            spec::validate_target(t).map_err(|e| e.within(&format!("target '{}'", t.name)))?;
            if !seen.insert(("target", t.name.as_str())) {
                return Err(defined_twice("target", &t.name, None));
            }
        }
        let policy = self.command_policy();
        for j in &batch.jobs {
            spec::validate_job(j, &self.inner.templates)
                .map_err(|e| e.within(&format!("job '{}'", j.name)))?;
            // The job's own text against the command policy: a `deny` is
            // refused now (submit screens the rendered text again).
            if let Some(hit) = policy
                .screen_job(j)
                .into_iter()
                .find(|h| h.action == crate::policy::PolicyAction::Deny)
            {
                return Err(hit.refusal(j).within(&format!("job '{}'", j.name)));
            }
            if !seen.insert(("job", j.name.as_str())) {
                return Err(defined_twice("job", &j.name, None));
            }
        }
        Ok(())
    }

    /// Every target, including the implicit `local` unless one is defined.
    pub async fn targets(&self, actor: &Actor) -> Result<Vec<Target>> {
        actor.require(Permission::Read)?;
        self.all_targets().await
    }

    /// [`targets`](Self::targets) for the engine's own use (no actor).
    pub(crate) async fn all_targets(&self) -> Result<Vec<Target>> {
        let mut all = self.inner.store.list_targets().await?;
        if !all.iter().any(|t| t.name == "local") {
            all.insert(0, Target::local());
        }
        Ok(all)
    }

    /// One target (the implicit `local` included).
    pub async fn target(&self, name: &str, actor: &Actor) -> Result<Target> {
        actor.require(Permission::Read)?;
        self.find_target(name).await
    }

    /// [`target`](Self::target) for the engine's own use (no actor).
    pub(crate) async fn find_target(&self, name: &str) -> Result<Target> {
        match self.inner.store.get_target(name).await? {
            Some(t) => Ok(t),
            None if name == "local" => Ok(Target::local()),
            None => Err(self.not_found_target(name).await),
        }
    }

    async fn not_found_target(&self, name: &str) -> Error {
        let names = self
            .all_targets()
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

    /// Merges definitions read from several sources (files) into one batch.
    /// Each source is checked on its own first, so a semantic error names
    /// the file it is in; a name defined in two sources names both; a batch
    /// with nothing in it is refused.
    pub fn merge_sources(&self, sources: Vec<(String, ApplyBatch)>) -> Result<ApplyBatch> {
        let mut batch = ApplyBatch::default();
        let mut origin: HashMap<(&'static str, String), String> = HashMap::new();
        for (source, b) in sources {
            if !(b.targets.is_empty() && b.jobs.is_empty() && b.schedules.is_empty()) {
                self.validate(&b).map_err(|e| in_source(e, &source))?;
            }
            let names = b
                .targets
                .iter()
                .map(|t| ("target", t.name.clone()))
                .chain(b.jobs.iter().map(|j| ("job", j.name.clone())))
                .chain(
                    b.schedules
                        .iter()
                        .map(|s| ("schedule", s.spec.name.clone())),
                );
            for key in names {
                if let Some(first) = origin.get(&key) {
                    return Err(defined_twice(key.0, &key.1, Some((first, &source))));
                }
                origin.insert(key, source.clone());
            }
            batch.targets.extend(b.targets);
            batch.jobs.extend(b.jobs);
            batch.schedules.extend(b.schedules);
        }
        if batch.targets.is_empty() && batch.jobs.is_empty() && batch.schedules.is_empty() {
            return Err(Error::invalid(NOTHING_TO_APPLY));
        }
        Ok(batch)
    }

    /// One job version in the job-file format (`docs/job-format.md`), as
    /// YAML that `apply` reads back to the same definition.
    pub async fn export_job(
        &self,
        name: &str,
        version: Option<u32>,
        actor: &Actor,
    ) -> Result<String> {
        actor.require(Permission::Read)?;
        let job = self.find_job(name, version).await?;
        let encode = |e: serde_json::Error| Error::Internal(format!("encoding job '{name}': {e}"));
        let mut doc = serde_json::Map::new();
        doc.insert("kind".into(), "Job".into());
        if let serde_json::Value::Object(m) = serde_json::to_value(&job.spec).map_err(encode)? {
            doc.extend(m);
        }
        let steps = job
            .spec
            .steps
            .iter()
            .map(step_document)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(encode)?;
        doc.insert("steps".into(), serde_json::Value::Array(steps));
        for (key, list) in [
            ("on_failure", &job.spec.on_failure),
            ("finally", &job.spec.finally),
        ] {
            if !list.is_empty() {
                let docs = list
                    .iter()
                    .map(step_document)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(encode)?;
                doc.insert(key.into(), serde_json::Value::Array(docs));
            }
        }
        serde_yaml_ng::to_string(&doc)
            .map_err(|e| Error::Internal(format!("encoding job '{name}' as YAML: {e}")))
    }

    /// Every version of a job, oldest first.
    pub async fn job_versions(&self, name: &str, actor: &Actor) -> Result<Vec<Job>> {
        actor.require(Permission::Read)?;
        let versions = self.inner.store.job_versions(name).await?;
        if versions.is_empty() {
            return Err(self
                .find_job(name, None)
                .await
                .err()
                .unwrap_or_else(|| Error::not_found("job", name)));
        }
        Ok(versions)
    }

    /// The latest version of every job.
    pub async fn jobs(&self, actor: &Actor) -> Result<Vec<Job>> {
        actor.require(Permission::Read)?;
        self.inner.store.list_jobs().await
    }

    /// One job version (latest if `version` is `None`).
    pub async fn job(&self, name: &str, version: Option<u32>, actor: &Actor) -> Result<Job> {
        actor.require(Permission::Read)?;
        self.find_job(name, version).await
    }

    /// [`job`](Self::job) for the engine's own use (no actor).
    pub(crate) async fn find_job(&self, name: &str, version: Option<u32>) -> Result<Job> {
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

/// The one message for a batch without definitions, whatever front end sent it.
const NOTHING_TO_APPLY: &str = "nothing to apply: no Job, Target or Schedule documents";

/// The one error for a name defined twice in a batch; `sources` names the
/// two places when they are known.
fn defined_twice(kind: &str, name: &str, sources: Option<(&str, &str)>) -> Error {
    Error::validation(
        format!("{kind} '{name}'"),
        match sources {
            Some((first, second)) => {
                format!("defined twice in this batch: in {first} and in {second}")
            }
            None => "defined twice in this batch".to_string(),
        },
    )
}

/// Puts the source (file) name in front of a validation error's field.
fn in_source(e: Error, source: &str) -> Error {
    match e {
        Error::Validation { field, message } => Error::Validation {
            field: Some(match field {
                Some(f) if f.starts_with(source) => f,
                Some(f) => format!("{source}: {f}"),
                None => source.to_string(),
            }),
            message,
        },
        other => other,
    }
}

/// A step as the job-file format writes it: the action's own key (`exec`,
/// `script` + `interpreter`, `copy`) instead of the model's `action`.
fn step_document(step: &Step) -> serde_json::Result<serde_json::Value> {
    let mut doc = match serde_json::to_value(step)? {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    doc.remove("action");
    match &step.action {
        Action::Exec { command } => {
            doc.insert("exec".into(), command.clone().into());
        }
        Action::Script { interpreter, body } => {
            doc.insert("script".into(), body.clone().into());
            doc.insert("interpreter".into(), interpreter.clone().into());
        }
        Action::Copy {
            dest,
            content,
            src,
            mode,
        } => {
            let mut copy = serde_json::Map::new();
            copy.insert("dest".into(), dest.clone().into());
            if let Some(c) = content {
                copy.insert("content".into(), c.clone().into());
            }
            if let Some(s) = src {
                copy.insert("src".into(), s.clone().into());
            }
            copy.insert("mode".into(), format!("{mode:04o}").into());
            doc.insert("copy".into(), copy.into());
        }
        Action::Job {
            job,
            params,
            targets,
        } => {
            doc.insert("job".into(), job.clone().into());
            if !params.is_empty() {
                doc.insert("params".into(), serde_json::to_value(params)?);
            }
            if !targets.is_empty() {
                doc.insert("targets".into(), serde_json::to_value(targets)?);
            }
        }
    }
    Ok(serde_json::Value::Object(doc))
}
