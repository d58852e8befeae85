//! The scheduler loop: in every serve/worker process that starts it, it
//! wakes at the next fire time (or every `poll`), decides what each due
//! schedule does (misfire and overlap policies), prepares the runs like
//! `submit` does, and commits each schedule's decision with its runs in one
//! transaction guarded by a compare-and-set on the schedule's cursor. Any
//! number of schedulers may race: the database lets exactly one commit each
//! fire time (see `ScheduleStore`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Conductor;
use crate::bus::Event;
use crate::clock::Clock;
use crate::error::Result;
use crate::model::{Actor, Job, Run, RunId, Target};
use crate::schedule::{
    FireOutcome, FireRecord, MAX_PENDING, MisfirePolicy, OverlapPolicy, Schedule, ScheduledFire,
    due_times,
};
use crate::store::FireCommit;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Where the time comes from (default: this node's clock).
    pub clock: Arc<dyn Clock>,
    /// Longest sleep between ticks: how soon a new, changed or resumed
    /// schedule, or a queued fire time whose previous run ended, is seen.
    pub poll: Duration,
    /// A fire time older than this when handled is missed (the misfire
    /// policy decides).
    pub grace: Duration,
    /// Schedules decided per transaction.
    pub batch: usize,
    /// TEST ONLY: hold each fire transaction open this long before its
    /// commit (`OPSC_TEST_SCHEDULER_HOLD_MS`), so a test can kill a process
    /// in the middle of a tick.
    pub test_hold: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            clock: Arc::new(crate::clock::SystemClock),
            poll: Duration::from_secs(1),
            grace: crate::schedule::DEFAULT_MISFIRE_GRACE,
            batch: 100,
            test_hold: Duration::ZERO,
        }
    }
}

impl SchedulerConfig {
    /// The defaults, with the TEST ONLY knobs read from the environment
    /// (`OPSC_TEST_CLOCK`, `OPSC_TEST_SCHEDULER_HOLD_MS`); front ends that
    /// run the scheduler use this.
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if let Some(clock) = crate::clock::from_test_env() {
            tracing::warn!(
                ?clock,
                "OPSC_TEST_CLOCK is set: the scheduler uses a TEST clock"
            );
            c.clock = Arc::new(clock);
        }
        if let Some(ms) = std::env::var("OPSC_TEST_SCHEDULER_HOLD_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            c.test_hold = Duration::from_millis(ms.min(10_000));
        }
        c
    }
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// Runs queued.
    pub queued: usize,
    /// Fire times skipped (overlap) or failed.
    pub skipped: usize,
    /// Fire times missed and dropped by the misfire policy.
    pub missed: u64,
    /// Fire times left waiting (`overlap: queue`).
    pub pending: usize,
    /// Decisions another scheduler committed first (ours were dropped).
    pub lost: usize,
}

/// What the winner of a commit does after it: audit events and cancels.
#[derive(Default)]
struct After {
    audits: Vec<(String, String, serde_json::Value)>,
    cancel: Vec<RunId>,
}

impl Conductor {
    /// Starts the scheduler loop in this process (serve and worker do; an
    /// embedder may). Any number of processes may run one.
    pub fn start_scheduler(&self) {
        let oc = self.clone();
        tokio::spawn(async move { oc.scheduler_loop().await });
    }

    async fn scheduler_loop(self) {
        let cfg = self.inner.scheduler.clone();
        let shutdown = self.inner.shutdown.clone();
        let mut changes = self.inner.bus.subscribe();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = self.scheduler_tick().await {
                tracing::warn!(error = %e, "scheduler tick failed; retrying");
            }
            let now = cfg.clock.now();
            let poll = chrono::Duration::from_std(cfg.poll).unwrap_or(chrono::Duration::seconds(1));
            let until = match self.inner.store.schedule_store().earliest_fire().await {
                Ok(Some(t)) if t < now + poll => t,
                _ => now + poll,
            };
            tokio::select! {
                _ = cfg.clock.sleep_until(until, cfg.poll) => {}
                _ = shutdown.cancelled() => return,
                // A schedule changed (here or, on PostgreSQL, on another
                // node): look again now.
                _ = schedule_changed(&mut changes) => {}
            }
        }
    }

    /// One scheduler pass at the clock's current time: promotes queued
    /// fire times whose previous run ended, then decides and commits every
    /// due schedule. Tests call it directly with a [`crate::clock::ManualClock`].
    pub async fn scheduler_tick(&self) -> Result<TickReport> {
        let cfg = self.inner.scheduler.clone();
        let now = cfg.clock.now();
        let store = self.inner.store.schedule_store();
        let mut report = TickReport::default();
        let mut active: HashMap<String, Vec<RunId>> = HashMap::new();
        for (s, id) in store.active_scheduled_runs().await? {
            active.entry(s).or_default().push(id);
        }
        let mut pending: BTreeMap<String, Vec<FireRecord>> = BTreeMap::new();
        for f in store.pending_fires().await? {
            pending.entry(f.schedule.clone()).or_default().push(f);
        }
        let all_targets = self.all_targets().await?;
        let mut jobs: HashMap<(String, Option<u32>), Result<Job>> = HashMap::new();

        // Queued fire times whose previous run has ended: the oldest runs now.
        let mut promotions = Vec::new();
        for (name, fires) in &pending {
            if active.contains_key(name) {
                continue;
            }
            let (Some(first), Some(s)) = (fires.first(), store.get_schedule(name).await?) else {
                continue;
            };
            if !s.spec.enabled || s.paused {
                continue;
            }
            let mut after = After::default();
            match self
                .make_run(&s, first.fire_time, &all_targets, &mut jobs)
                .await
            {
                Ok(run) => {
                    after.audits.push(fire_audit(
                        &s,
                        first.fire_time,
                        "queued",
                        Some(run.id),
                        None,
                    ));
                    promotions.push((
                        FireCommit {
                            schedule: s.spec.name.clone(),
                            generation: s.generation,
                            from: None,
                            next_fire: None,
                            fires: vec![],
                            promote: vec![(first.fire_time, run.id)],
                            runs: vec![run],
                        },
                        after,
                    ));
                }
                Err(e) => {
                    tracing::warn!(schedule = %name, error = %e, "a queued fire time cannot run yet")
                }
            }
        }
        self.commit(promotions, &mut report).await?;

        // Due schedules, a batch per transaction.
        for _round in 0..100 {
            let due = store.due_schedules(now, cfg.batch).await?;
            if due.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(due.len());
            for s in &due {
                let busy = active.get(&s.spec.name).cloned().unwrap_or_default();
                let waiting = pending.get(&s.spec.name).map_or(0, Vec::len);
                batch.push(
                    self.decide_fire(s, now, &busy, waiting, &all_targets, &mut jobs, &mut report)
                        .await,
                );
            }
            let n = due.len();
            self.commit(batch, &mut report).await?;
            if n < cfg.batch {
                break;
            }
        }
        Ok(report)
    }

    /// Commits decisions; the winners' runs are announced, audited and
    /// their `cancel_previous` cancels made.
    async fn commit(
        &self,
        decisions: Vec<(FireCommit, After)>,
        report: &mut TickReport,
    ) -> Result<()> {
        if decisions.is_empty() {
            return Ok(());
        }
        let (commits, afters): (Vec<FireCommit>, Vec<After>) = decisions.into_iter().unzip();
        let hold = self.inner.scheduler.test_hold;
        let store = self.inner.store.schedule_store();
        let won = if hold.is_zero() {
            store.commit_fires(&commits).await?
        } else {
            tracing::info!("scheduler: fire transaction open (test hold)");
            // TEST ONLY: the hold happens before the commit call; the
            // store's transaction itself is short, so a kill during the
            // hold or the commit both leave nothing half-written.
            tokio::time::sleep(hold).await;
            store.commit_fires(&commits).await?
        };
        let owner = Actor::new("scheduler");
        for ((c, after), ok) in commits.iter().zip(afters).zip(won) {
            if !ok {
                report.lost += 1;
                continue;
            }
            for run in &c.runs {
                self.inner.publish(Event::Queued(run.id));
            }
            report.queued += c.runs.len();
            for f in &c.fires {
                match f.outcome {
                    FireOutcome::Skipped | FireOutcome::Failed => report.skipped += 1,
                    FireOutcome::Pending => report.pending += 1,
                    FireOutcome::Queued => {}
                }
            }
            for id in after.cancel {
                if let Err(e) = self.cancel(id, &owner).await {
                    tracing::warn!(run = %id, error = %e, "cancelling the previous run failed");
                }
            }
            for (action, object, detail) in after.audits {
                self.inner.audit_as(&owner, &action, object, detail).await;
            }
        }
        Ok(())
    }

    /// Decides one due schedule at `now`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the tick's shared state, passed down once"
    )]
    async fn decide_fire(
        &self,
        s: &Schedule,
        now: DateTime<Utc>,
        busy: &[RunId],
        waiting: usize,
        all_targets: &[Target],
        jobs: &mut HashMap<(String, Option<u32>), Result<Job>>,
        report: &mut TickReport,
    ) -> (FireCommit, After) {
        let mut after = After::default();
        let mut commit = FireCommit {
            schedule: s.spec.name.clone(),
            generation: s.generation,
            from: s.next_fire,
            next_fire: None,
            fires: vec![],
            promote: vec![],
            runs: vec![],
        };
        let (Some(from), Ok(timing)) = (s.next_fire, s.spec.timing()) else {
            return (commit, after);
        };
        let due = due_times(&s.spec, &timing, from, now, self.inner.scheduler.grace);
        commit.next_fire = due.next;
        let caught_up: Vec<DateTime<Utc>> = match s.spec.misfire {
            MisfirePolicy::Skip => vec![],
            MisfirePolicy::RunOnce => due.missed.last().copied().into_iter().collect(),
            MisfirePolicy::RunAll => due.missed.clone(),
        };
        if due.missed_count > 0 {
            let dropped = due.missed_count - caught_up.len() as u64;
            report.missed += dropped;
            after.audits.push((
                "schedule.misfire".into(),
                format!("schedule:{}", s.spec.name),
                serde_json::json!({
                    "missed": due.missed_count,
                    "first": due.first_missed,
                    "last": due.missed.last(),
                    "policy": s.spec.misfire.as_str(),
                    "catch_up": caught_up,
                    "dropped": dropped,
                    "now": now,
                }),
            ));
        }
        let mut running: Vec<RunId> = busy.to_vec();
        let mut queue_len = waiting;
        let decided_by = self.inner.config.worker_name.clone();
        let record = |fire_time, outcome, run_id, detail: Option<String>| FireRecord {
            schedule: s.spec.name.clone(),
            fire_time,
            outcome,
            run_id,
            detail,
            decided_at: now,
            decided_by: decided_by.clone(),
        };
        for ft in caught_up.into_iter().chain(due.on_time) {
            let overlapping = !running.is_empty() || queue_len > 0;
            if overlapping {
                match s.spec.overlap {
                    OverlapPolicy::Allow => {}
                    OverlapPolicy::Skip => {
                        let why = format!(
                            "overlap: the previous run {} is still going",
                            running.last().map(|r| r.to_string()).unwrap_or_default()
                        );
                        after
                            .audits
                            .push(fire_audit(s, ft, "skipped", None, Some(&why)));
                        commit
                            .fires
                            .push(record(ft, FireOutcome::Skipped, None, Some(why)));
                        continue;
                    }
                    OverlapPolicy::Queue => {
                        if queue_len < MAX_PENDING {
                            queue_len += 1;
                            commit
                                .fires
                                .push(record(ft, FireOutcome::Pending, None, None));
                        } else {
                            let why = format!("overlap: {MAX_PENDING} fire times already wait");
                            after
                                .audits
                                .push(fire_audit(s, ft, "skipped", None, Some(&why)));
                            commit
                                .fires
                                .push(record(ft, FireOutcome::Skipped, None, Some(why)));
                        }
                        continue;
                    }
                    OverlapPolicy::CancelPrevious => {
                        after.cancel.append(&mut running);
                    }
                }
            }
            match self.make_run(s, ft, all_targets, jobs).await {
                Ok(run) => {
                    after
                        .audits
                        .push(fire_audit(s, ft, "queued", Some(run.id), None));
                    commit
                        .fires
                        .push(record(ft, FireOutcome::Queued, Some(run.id), None));
                    running.push(run.id);
                    commit.runs.push(run);
                }
                Err(e) => {
                    let why = e.to_string();
                    after
                        .audits
                        .push(fire_audit(s, ft, "failed", None, Some(&why)));
                    commit
                        .fires
                        .push(record(ft, FireOutcome::Failed, None, Some(why)));
                }
            }
        }
        (commit, after)
    }

    /// A run of `s` for `fire_time`, validated and rendered like `submit`,
    /// as the schedule's owner (with the owner's role).
    pub(crate) async fn make_run(
        &self,
        s: &Schedule,
        fire_time: DateTime<Utc>,
        all_targets: &[Target],
        jobs: &mut HashMap<(String, Option<u32>), Result<Job>>,
    ) -> Result<Run> {
        let key = (s.spec.job.clone(), s.spec.version);
        if !jobs.contains_key(&key) {
            let job = self.find_job(&s.spec.job, s.spec.version).await;
            jobs.insert(key.clone(), job);
        }
        let job = match jobs.get(&key) {
            Some(Ok(j)) => j.clone(),
            Some(Err(e)) => return Err(crate::error::Error::Conflict(e.to_string())),
            None => return Err(crate::error::Error::Internal("job cache".into())),
        };
        let actor = schedule_actor(s);
        self.prepare_scheduled(s, job, Some(fire_time), all_targets, &actor)
            .await
    }

    /// The checks of `submit` for a schedule's run (deprecated job,
    /// parameters, targets, templates), without storing it.
    pub(crate) async fn prepare_scheduled(
        &self,
        s: &Schedule,
        job: Job,
        fire_time: Option<DateTime<Utc>>,
        all_targets: &[Target],
        actor: &Actor,
    ) -> Result<Run> {
        actor.require(crate::auth::Permission::Run)?;
        if job.spec.status == crate::model::JobStatus::Deprecated {
            return Err(crate::error::Error::Conflict(format!(
                "job '{}' version {} is deprecated; new runs are refused",
                job.spec.name, job.version
            )));
        }
        let params = crate::params::validate(&job.spec.params, &s.spec.params)?;
        let selector = s
            .spec
            .targets
            .clone()
            .unwrap_or_else(|| job.spec.targets.clone());
        let author = job.created_by.clone();
        let (mut run, _, gate) = self
            .prepare_run(
                job.spec,
                Some((job.version, author.as_str())),
                params,
                &selector,
                all_targets,
                actor,
            )
            .await?;
        if gate.is_some() {
            // A scheduled run has no submitter to wait on; until schedules
            // can queue runs for approval, such a fire is refused (audited
            // as a failed fire) rather than run without the approval.
            return Err(crate::Error::validation(
                "schedule",
                format!(
                    "job '{}' needs approval (its `approval` or a command-policy rule); scheduled runs of such jobs are not supported yet",
                    run.job
                ),
            ));
        }
        run.schedule = Some(ScheduledFire {
            name: s.spec.name.clone(),
            fire_time,
        });
        Ok(run)
    }
}

/// The wake-up `apply`, pause and resume publish: `Updated` of the nil run id.
pub(crate) fn schedule_event() -> Event {
    Event::Updated(RunId(uuid::Uuid::nil()))
}

/// Waits for a [`schedule_event`] (or for missed events: the bus lagged).
async fn schedule_changed(rx: &mut tokio::sync::broadcast::Receiver<Event>) {
    use tokio::sync::broadcast::error::RecvError;
    let wanted = schedule_event();
    loop {
        match rx.recv().await {
            Ok(ev) if ev == wanted => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Scheduled runs run as the schedule's owner, with the owner's role then.
pub(crate) fn schedule_actor(s: &Schedule) -> Actor {
    Actor {
        name: s.owner.clone(),
        role: s.owner_role,
        via: Some(format!("schedule:{}", s.spec.name)),
        source: None,
        request_id: None,
        login_at: None,
    }
}

fn fire_audit(
    s: &Schedule,
    fire_time: DateTime<Utc>,
    outcome: &str,
    run: Option<RunId>,
    why: Option<&str>,
) -> (String, String, serde_json::Value) {
    (
        format!("schedule.fire.{outcome}"),
        format!("schedule:{}", s.spec.name),
        serde_json::json!({"fire_time": fire_time, "run": run, "reason": why}),
    )
}
