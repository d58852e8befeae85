//! Jobs that call jobs, on the engine's side: the checks at apply (a called
//! job exists, no cycle through stored jobs) and submitting a child run for
//! a `job:` step — at most one per parent step × target, enforced by the
//! store's unique index on the parent link, so a rescued parent finds the
//! child its dead worker started instead of starting another.

use serde_json::Value;

use super::Conductor;
use crate::error::{Error, Result};
use crate::model::{Actor, JobStatus, Run, RunParent};
use crate::store::ApplyBatch;

impl Conductor {
    /// Refuses `job:` steps that call a job neither in `batch` nor stored,
    /// and calls that would form a cycle with the stored jobs.
    pub(super) async fn check_job_calls(&self, batch: &ApplyBatch) -> Result<()> {
        let calling: Vec<_> = batch
            .jobs
            .iter()
            .filter(|j| !crate::flow::called_jobs(j).is_empty())
            .collect();
        if calling.is_empty() {
            // Without a `job:` step in the batch no new cycle can form.
            return Ok(());
        }
        let stored: Vec<_> = self
            .inner
            .store
            .list_jobs()
            .await?
            .into_iter()
            .map(|j| j.spec)
            .filter(|s| !batch.jobs.iter().any(|b| b.name == s.name))
            .collect();
        for j in &calling {
            for (i, callee) in crate::flow::called_jobs(j) {
                let known = batch.jobs.iter().any(|b| b.name == callee)
                    || stored.iter().any(|s| s.name == callee);
                if !known {
                    let step = &j.steps[i];
                    let here = format!("steps[{i}].job");
                    let field = match step.origin.of("job") {
                        Some(at) => format!("{at}: job '{}': {here}", j.name),
                        None => format!("job '{}': {here}", j.name),
                    };
                    return Err(Error::validation(
                        field,
                        format!(
                            "calls job '{callee}', which does not exist (apply it first, or in the same batch)"
                        ),
                    ));
                }
            }
        }
        crate::flow::check_cycles(&batch.jobs, &stored)
    }

    /// Starts (or, after a rescue, finds) the child run of a `job:` step.
    /// Returns the child and whether it was started just now.
    ///
    /// The child runs as the parent's requester: a user of that name runs
    /// it with the user's current role (permissions and the local policy
    /// are checked as for any submit); any other name is the trusted actor
    /// (the local CLI, an embedder) that submitted the parent.
    pub(crate) async fn submit_child(
        &self,
        parent: RunParent,
        job: &str,
        params: Value,
        targets: Vec<String>,
        requested_by: &str,
    ) -> Result<(Run, bool)> {
        let store = &self.inner.store;
        if let Some(found) = store
            .find_child_run(parent.run, parent.step, &parent.target)
            .await?
        {
            return Ok((found, false));
        }
        let actor = match self.inner.store.user_store().get_user(requested_by).await? {
            Some(u) if !u.disabled => Actor::user(u.username, u.role, "parent-run"),
            Some(u) => {
                return Err(Error::Forbidden(format!(
                    "user '{}', who requested the parent run, is disabled",
                    u.username
                )));
            }
            None => Actor {
                via: Some("parent-run".into()),
                ..Actor::new(requested_by)
            },
        };
        actor.require(crate::auth::Permission::Run)?;
        let called = self.find_job(job, None).await?;
        if called.spec.status == JobStatus::Deprecated {
            return Err(Error::Conflict(format!(
                "job '{}' version {} is deprecated; new runs are refused",
                called.spec.name, called.version
            )));
        }
        let params = crate::params::validate(&called.spec.params, &params)?;
        let selector = if targets.is_empty() {
            called.spec.targets.clone()
        } else {
            targets
        };
        let author = called.created_by.clone();
        let queued = self
            .enqueue(
                called.spec,
                Some((called.version, author.as_str())),
                params,
                &selector,
                &actor,
                Some(parent.clone()),
            )
            .await;
        match queued {
            Ok(run) => Ok((run, true)),
            // Another attempt of the parent got there first (the unique index).
            Err(Error::Conflict(m)) => match store
                .find_child_run(parent.run, parent.step, &parent.target)
                .await?
            {
                Some(found) => Ok((found, false)),
                None => Err(Error::Conflict(m)),
            },
            Err(e) => Err(e),
        }
    }
}
