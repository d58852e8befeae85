//! Schedules through the engine: checking them at apply (against the jobs
//! of the batch and the store), reading, pausing, resuming, deleting,
//! `run-now` and the next fire times. Every change is audited.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Conductor;
use crate::auth::Permission;
use crate::bus::Event;
use crate::error::{Error, Result};
use crate::model::{Actor, JobSpec, JobStatus, Run};
use crate::schedule::{FireRecord, Schedule, first_fire, upcoming};
use crate::store::ApplyBatch;

/// Most fire times [`Conductor::next_fire_times`] computes.
pub const MAX_NEXT_COUNT: usize = 1000;

/// A schedule with what people ask about it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleDetail {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// `active`, `paused`, `disabled` or `ended`.
    pub state: &'static str,
    /// The next fire time in the schedule's zone (RFC 3339 with offset).
    pub next_fire_local: Option<String>,
    /// The newest fire records (at most 20), newest first.
    pub recent: Vec<FireRecord>,
}

fn state(s: &Schedule) -> &'static str {
    if !s.spec.enabled {
        "disabled"
    } else if s.paused {
        "paused"
    } else if s.next_fire.is_none() {
        "ended"
    } else {
        "active"
    }
}

impl Conductor {
    /// Checks the schedules of a batch against the jobs (of the batch, else
    /// stored): the job exists, the version pinned exists, it is not
    /// deprecated, the parameters pass its schema; errors at
    /// `file:line:col` of the field. Fills each schedule's first fire time
    /// and owner role. Nothing is stored.
    pub(crate) async fn check_schedules(
        &self,
        batch: &ApplyBatch,
        actor: &Actor,
    ) -> Result<ApplyBatch> {
        let mut out = batch.clone();
        if batch.schedules.is_empty() {
            return Ok(out);
        }
        actor.require(Permission::ManageSchedules)?;
        let now = self.inner.scheduler.clock.now();
        let in_batch: HashMap<&str, &JobSpec> =
            batch.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
        for def in &mut out.schedules {
            crate::schedule_doc::check_def(def)?;
            let spec = &def.spec;
            let job: JobSpec = match (in_batch.get(spec.job.as_str()), spec.version) {
                (Some(j), None) => (*j).clone(),
                (_, v) => match self.inner.store.get_job(&spec.job, v).await? {
                    Some(j) => j.spec,
                    None => {
                        let (field, what) = match v {
                            Some(v)
                                if in_batch.contains_key(spec.job.as_str())
                                    || self
                                        .inner
                                        .store
                                        .get_job(&spec.job, None)
                                        .await?
                                        .is_some() =>
                            {
                                ("version", format!("job '{}' has no version {v}", spec.job))
                            }
                            _ => (
                                "job",
                                format!(
                                    "no job '{}' (define it first, or in the same apply)",
                                    spec.job
                                ),
                            ),
                        };
                        return Err(def.error(field, what));
                    }
                },
            };
            if job.status == JobStatus::Deprecated {
                let field = if spec.version.is_some() {
                    "version"
                } else {
                    "job"
                };
                return Err(def.error(
                    field,
                    format!(
                        "job '{}' is deprecated; a schedule would only fail",
                        spec.job
                    ),
                ));
            }
            if let Err(e) = crate::params::validate(&job.params, &spec.params) {
                return Err(match e {
                    Error::Validation { field, message } => {
                        let f = field.unwrap_or_else(|| "params".into());
                        let f = if f.starts_with("params") {
                            f
                        } else {
                            format!("params.{f}")
                        };
                        def.error(&f, message)
                    }
                    other => other,
                });
            }
            let timing = spec.timing().map_err(|e| def.error("cron", e))?;
            def.next_fire = first_fire(spec, &timing, now);
            def.owner_role = actor.role;
        }
        Ok(out)
    }

    /// Every schedule, by name.
    pub async fn schedules(&self, actor: &Actor) -> Result<Vec<ScheduleDetail>> {
        actor.require(Permission::Read)?;
        let all = self.inner.store.schedule_store().list_schedules().await?;
        Ok(all.into_iter().map(|s| detail(s, vec![])).collect())
    }

    /// One schedule with its newest fire records.
    pub async fn schedule(&self, name: &str, actor: &Actor) -> Result<ScheduleDetail> {
        actor.require(Permission::Read)?;
        let s = self.find_schedule(name).await?;
        let recent = self
            .inner
            .store
            .schedule_store()
            .fire_records(name, 20)
            .await?;
        Ok(detail(s, recent))
    }

    async fn find_schedule(&self, name: &str) -> Result<Schedule> {
        self.inner
            .store
            .schedule_store()
            .get_schedule(name)
            .await?
            .ok_or_else(|| Error::not_found("schedule", name))
    }

    /// The next `count` fire times (1 to [`MAX_NEXT_COUNT`]) of a schedule
    /// from now (or its start), within its window — also when paused.
    pub async fn next_fire_times(
        &self,
        name: &str,
        count: usize,
        actor: &Actor,
    ) -> Result<Vec<DateTime<Utc>>> {
        actor.require(Permission::Read)?;
        if !(1..=MAX_NEXT_COUNT).contains(&count) {
            return Err(Error::validation(
                "count",
                format!("must be 1 to {MAX_NEXT_COUNT}"),
            ));
        }
        let s = self.find_schedule(name).await?;
        let timing = s.spec.timing()?;
        let now = self.inner.scheduler.clock.now();
        Ok(upcoming(&s.spec, &timing, now, count))
    }

    /// Pauses a schedule: it fires no more until resumed (a re-apply of its
    /// file does not resume it).
    pub async fn pause_schedule(&self, name: &str, actor: &Actor) -> Result<Schedule> {
        self.set_paused(name, true, actor).await
    }

    /// Resumes a paused schedule from now: fire times that passed while it
    /// was paused are not misfires and do not run.
    pub async fn resume_schedule(&self, name: &str, actor: &Actor) -> Result<Schedule> {
        self.set_paused(name, false, actor).await
    }

    async fn set_paused(&self, name: &str, paused: bool, actor: &Actor) -> Result<Schedule> {
        actor.require(Permission::ManageSchedules)?;
        let s = self.find_schedule(name).await?;
        let next = if paused {
            s.next_fire
        } else {
            let timing = s.spec.timing()?;
            first_fire(&s.spec, &timing, self.inner.scheduler.clock.now())
        };
        let store = self.inner.store.schedule_store();
        if !store.set_schedule_paused(name, paused, next).await? {
            return Err(Error::not_found("schedule", name));
        }
        self.inner
            .audit_as(
                actor,
                if paused {
                    "schedule.pause"
                } else {
                    "schedule.resume"
                },
                format!("schedule:{name}"),
                serde_json::json!({"next_fire": next}),
            )
            .await;
        self.inner.publish(super::scheduler::schedule_event());
        self.find_schedule(name).await
    }

    /// Deletes a schedule; its runs and fire records stay.
    pub async fn delete_schedule(&self, name: &str, actor: &Actor) -> Result<()> {
        actor.require(Permission::ManageSchedules)?;
        if !self
            .inner
            .store
            .schedule_store()
            .delete_schedule(name)
            .await?
        {
            return Err(Error::not_found("schedule", name));
        }
        self.inner
            .audit_as(
                actor,
                "schedule.delete",
                format!("schedule:{name}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// Runs a schedule's job now, with its parameters and targets, as the
    /// caller (`runs list --schedule` lists it, with no fire time). The
    /// schedule's own fire times are not affected.
    pub async fn run_schedule_now(&self, name: &str, actor: &Actor) -> Result<Run> {
        actor.require(Permission::Run)?;
        let s = self.find_schedule(name).await?;
        let job = self.find_job(&s.spec.job, s.spec.version).await?;
        let all = self.all_targets().await?;
        let run = self.prepare_scheduled(&s, job, None, &all, actor).await?;
        self.inner.store.insert_run(&run).await?;
        self.inner.publish(Event::Queued(run.id));
        self.inner
            .audit_as(
                actor,
                "schedule.run_now",
                format!("schedule:{name}"),
                serde_json::json!({"run": run.id, "job": run.job, "version": run.job_version}),
            )
            .await;
        Ok(run)
    }
}

fn detail(s: Schedule, recent: Vec<FireRecord>) -> ScheduleDetail {
    let next_fire_local = match (s.next_fire, s.spec.timing()) {
        (Some(t), Ok(timing)) => Some(timing.local(t)),
        _ => None,
    };
    ScheduleDetail {
        state: state(&s),
        next_fire_local,
        recent,
        schedule: s,
    }
}
