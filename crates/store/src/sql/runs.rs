//! Targets, jobs, runs, step results, logs, `apply` and the `Store` impl:
//! [`run_sql!`].

/// Writes `TargetStore`, `JobStore`, `RunStore`, `LogStore` and `Store` for
/// one backend (see the module docs of `crate::sql` for what it relies on).
macro_rules! run_sql {
    ($store:ty, $db:ty, owner_lock = $owner_lock:literal, owner_rows = $owner_rows:literal) => {
        const _: () = {
            use std::collections::HashSet;

            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use opsconductor_core::bus::Event;
            use opsconductor_core::model::{
                Job, JobSpec, LogChunk, Run, RunId, RunStatus, StepResult, Target,
            };
            use opsconductor_core::store::{
                ApplyAction, ApplyBatch, ApplyItem, AuditStore, Claim, EventStream, JobStore,
                LogStore, RetentionStore, RunFilter, RunStore, SecretStore, Store,
                StoreCapabilities, TargetStore, UserStore,
            };
            use opsconductor_core::{Error, Result};
            use sqlx::QueryBuilder;

            use $crate::common::{
                DEFAULT_LIST_LIMIT, DEFAULT_LOG_LIMIT, MAX_LIST_LIMIT, check_name, corrupt,
                lease_end, like_escape, limit_or, micros, same_json, seq_to_i64, to_u32,
            };
            use $crate::rows::{job_columns, log_columns, run_columns, step_columns, to_json};
            use $crate::sql::{Lock, run_write_error};

            /// The earlier tries of a result for the `tries` column (NULL
            /// when there are none, the common case).
            fn tries_json(r: &StepResult) -> Result<Option<String>> {
                if r.tries.is_empty() {
                    return Ok(None);
                }
                to_json("earlier tries", &r.tries).map(Some)
            }

            /// `step_results_page` limit when the caller passes 0.
            const DEFAULT_RESULT_LIMIT: usize = 1000;

            /// The guarded upsert of one step result: written only while
            /// worker `$14` holds run `$13` at attempt `$8`.
            const GUARDED_RESULT: &str = concat!(
                            "WITH owner AS (SELECT 1 FROM ",
                            $owner_rows,
                            " WHERE id = $13 AND worker = $14 \
                               AND attempt = $8 AND status = 'running'",
                            $owner_lock,
                            ") INSERT INTO step_results (",
                            step_columns!(),
                            ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $15, $16 FROM owner \
                             WHERE TRUE \
                             ON CONFLICT (run_id, step, target) DO UPDATE SET \
                               status = excluded.status, exit_code = excluded.exit_code, \
                               signal = excluded.signal, error = excluded.error, \
                               attempt = excluded.attempt, started_at = excluded.started_at, \
                               finished_at = excluded.finished_at, try_no = excluded.try_no, \
                               tries = excluded.tries, outputs = excluded.outputs, \
                               children = excluded.children"
                        );

            /// A result's outputs as stored: JSON, or NULL when there are none.
            fn outputs_json(r: &StepResult) -> Result<Option<String>> {
                if r.outputs.is_empty() {
                    return Ok(None);
                }
                to_json("step outputs", &r.outputs).map(Some)
            }

            /// A result's child runs as stored: a JSON list, or NULL.
            fn children_json(r: &StepResult) -> Result<Option<String>> {
                if r.children.is_empty() {
                    return Ok(None);
                }
                to_json("child runs", &r.children).map(Some)
            }

            impl $store {
                /// Takes runs with one of the backend's claim statements (see
                /// `crate::sql`), oldest first.
                async fn claim_with(
                    &self,
                    op: &str,
                    (all, one): (&'static str, &'static str),
                    claim: &Claim,
                    now: DateTime<Utc>,
                ) -> Result<Vec<Run>> {
                    if claim.limit == 0 {
                        return Ok(vec![]);
                    }
                    let lease_until = micros(lease_end(now, claim.lease)?);
                    let _turn = self.writer().await;
                    let query = match claim.only {
                        None => sqlx::query(all)
                            .bind(&claim.worker)
                            .bind(lease_until)
                            .bind(micros(now))
                            .bind(limit_or(claim.limit, 1, usize::MAX)),
                        Some(only) => sqlx::query(one)
                            .bind(&claim.worker)
                            .bind(lease_until)
                            .bind(micros(now))
                            .bind(only.to_string()),
                    };
                    let rows = query.fetch_all(&self.pool).await.map_err(self.fail(op))?;
                    let mut runs = rows.iter().map(rows::run).collect::<Result<Vec<_>>>()?;
                    // `RETURNING` promises no order.
                    runs.sort_by_key(|r| (r.created_at, r.id));
                    Ok(runs)
                }

                /// Inserts a run on `conn` (the pool's, or a transaction's: a
                /// schedule's fire inserts its run with its fire record).
                pub(crate) async fn insert_run_on(
                    &self,
                    conn: &mut <$db as sqlx::Database>::Connection,
                    run: &Run,
                ) -> Result<()> {
                    let spec = to_json("run spec", &run.spec)?;
                    let params = to_json("run parameters", &run.params)?;
                    let targets = to_json("run targets", &run.targets)?;
                    let fail = self.fail("recording a run");
                    sqlx::query(concat!(
                        "INSERT INTO runs (",
                        run_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                         $15, $16, $17, $18, $19, $20, $21, $22)"
                    ))
                    .bind(run.id.to_string())
                    .bind(&run.job)
                    .bind(run.job_version.map(i64::from))
                    .bind(spec)
                    .bind(params)
                    .bind(targets)
                    .bind(run.status.as_str())
                    .bind(&run.requested_by)
                    .bind(i64::from(run.attempt))
                    .bind(run.worker.as_deref())
                    .bind(run.lease_until.map(micros))
                    .bind(run.cancel_requested)
                    .bind(run.error.as_deref())
                    .bind(micros(run.created_at))
                    .bind(run.started_at.map(micros))
                    .bind(run.finished_at.map(micros))
                    .bind(run.request_id.as_deref())
                    .bind(run.schedule.as_ref().map(|s| s.name.as_str()))
                    .bind(run.schedule.as_ref().and_then(|s| s.fire_time).map(micros))
                    .bind(run.parent.as_ref().map(|p| p.run.to_string()))
                    .bind(run.parent.as_ref().map(|p| i64::from(p.step)))
                    .bind(run.parent.as_ref().map(|p| p.target.as_str()))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| match &e {
                        sqlx::Error::Database(db) if db.is_unique_violation() && run.parent.is_some() => {
                            Error::Conflict(format!(
                                "run {} already exists, or its parent step already has a child run",
                                run.id
                            ))
                        }
                        sqlx::Error::Database(db) if db.is_unique_violation() => {
                            Error::Conflict(format!("run {} already exists", run.id))
                        }
                        _ => fail(e),
                    })?;
                    Ok(())
                }

                /// Upserts a step result; with `owner`, only while that worker
                /// holds the run at the result's attempt. One statement: the
                /// check and the write are atomic (on PostgreSQL the owner's
                /// row is share-locked, so a concurrent take-over either waits
                /// for this write or makes it refused — never both).
                async fn put_step_result_guarded(
                    &self,
                    owner: Option<&str>,
                    result: &StepResult,
                ) -> Result<bool> {
                    let sql = if owner.is_some() {
                        GUARDED_RESULT
                    } else {
                        concat!(
                            "INSERT INTO step_results (",
                            step_columns!(),
                            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                             ON CONFLICT (run_id, step, target) DO UPDATE SET \
                               status = excluded.status, exit_code = excluded.exit_code, \
                               signal = excluded.signal, error = excluded.error, \
                               attempt = excluded.attempt, started_at = excluded.started_at, \
                               finished_at = excluded.finished_at, try_no = excluded.try_no, \
                               tries = excluded.tries, outputs = excluded.outputs, \
                               children = excluded.children"
                        )
                    };
                    let op = "recording a step result";
                    let _turn = self.writer().await;
                    let mut q = sqlx::query(sql)
                        .bind(result.run_id.to_string())
                        .bind(i64::from(result.step))
                        .bind(&result.target)
                        .bind(result.status.as_str())
                        .bind(result.exit_code)
                        .bind(result.signal)
                        .bind(result.error.as_deref())
                        .bind(i64::from(result.attempt))
                        .bind(micros(result.started_at))
                        .bind(result.finished_at.map(micros))
                        .bind(i64::from(result.try_no))
                        .bind(tries_json(result)?);
                    // The flow columns follow the owner check's `$13`/`$14`
                    // when there is one.
                    if let Some(worker) = owner {
                        q = q.bind(result.run_id.to_string()).bind(worker);
                    }
                    q = q.bind(outputs_json(result)?).bind(children_json(result)?);
                    let done = q.execute(&self.pool).await.map_err(run_write_error(
                        op,
                        &[result.run_id],
                        self.fail(op),
                    ))?;
                    Ok(done.rows_affected() > 0)
                }

                /// Appends log chunks; with `owner` (worker, attempt), only
                /// while that worker holds their run — checked (and on
                /// PostgreSQL the run row share-locked) inside the write
                /// transaction.
                async fn append_logs_guarded(
                    &self,
                    owner: Option<(&str, u32)>,
                    chunks: &[LogChunk],
                ) -> Result<bool> {
                    let Some(first) = chunks.first() else {
                        return Ok(true);
                    };
                    let run = first.run_id;
                    if owner.is_some() && chunks.iter().any(|c| c.run_id != run) {
                        return Err(Error::validation(
                            "log chunks",
                            "a guarded append takes the chunks of one run only",
                        ));
                    }
                    // Encode everything before taking the write turn.
                    let mut encoded = Vec::with_capacity(chunks.len());
                    for c in chunks {
                        encoded.push((
                            c.run_id,
                            seq_to_i64(c.seq)?,
                            c.step.map(i64::from),
                            c.target.as_deref(),
                            c.stream.as_str(),
                            c.data.as_slice(),
                            micros(c.time),
                            i64::from(c.try_no),
                        ));
                    }
                    let op = "appending log chunks";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    if let Some((worker, attempt)) = owner {
                        let held = sqlx::query(concat!(
                            "SELECT 1 FROM ",
                            $owner_rows,
                            " WHERE id = $1 AND worker = $2 AND attempt = $3 \
                             AND status = 'running'",
                            $owner_lock
                        ))
                        .bind(run.to_string())
                        .bind(worker)
                        .bind(i64::from(attempt))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(self.fail(op))?;
                        if held.is_none() {
                            return Ok(false);
                        }
                    }
                    for batch in encoded.chunks(Self::LOG_ROWS_PER_INSERT) {
                        let mut q = QueryBuilder::<$db>::new(concat!(
                            "INSERT INTO logs (",
                            log_columns!(),
                            ") "
                        ));
                        q.push_values(batch, |mut row, c| {
                            row.push_bind(c.0.to_string())
                                .push_bind(c.1)
                                .push_bind(c.2)
                                .push_bind(c.3)
                                .push_bind(c.4)
                                .push_bind(c.5)
                                .push_bind(c.6)
                                .push_bind(c.7);
                        });
                        // A retried batch carries the same (run, seq): keep what is there.
                        q.push(" ON CONFLICT (run_id, seq) DO NOTHING");
                        let ids: Vec<RunId> = batch.iter().map(|c| c.0).collect();
                        q.build()
                            .execute(&mut *tx)
                            .await
                            .map_err(run_write_error(op, &ids, self.fail(op)))?;
                    }
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(true)
                }

                /// `Store::apply`: one transaction, all or none.
                async fn apply_all(&self, batch: &ApplyBatch, by: &str) -> Result<Vec<ApplyItem>> {
                    let op = "applying targets and jobs";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Apply).await?;
                    match self.apply_in(&mut tx, batch, by, Utc::now()).await {
                        Ok(items) => {
                            tx.commit().await.map_err(self.fail(op))?;
                            Ok(items)
                        }
                        Err(e) => {
                            // Nothing of the batch stays: the rule is all or none.
                            tx.rollback().await.map_err(self.fail(op))?;
                            Err(e)
                        }
                    }
                }

                /// The body of `apply`, inside its transaction.
                ///
                /// Problems with the batch itself (an empty or repeated name)
                /// are found on the way, after earlier items were written, and
                /// undone by the rollback.
                async fn apply_in(
                    &self,
                    conn: &mut <$db as sqlx::Database>::Connection,
                    batch: &ApplyBatch,
                    by: &str,
                    now: DateTime<Utc>,
                ) -> Result<Vec<ApplyItem>> {
                    let op = "applying targets and jobs";
                    let now = micros(now);
                    let mut items = Vec::with_capacity(batch.targets.len() + batch.jobs.len());

                    let mut seen = HashSet::new();
                    for (i, target) in batch.targets.iter().enumerate() {
                        check_name(
                            &format!("targets[{i}].name"),
                            "target",
                            &target.name,
                            &mut seen,
                        )?;
                        let value = serde_json::to_value(target).map_err(|e| {
                            Error::Internal(format!("encoding target '{}': {e}", target.name))
                        })?;
                        let stored: Option<String> =
                            sqlx::query_scalar("SELECT spec FROM targets WHERE name = $1")
                                .bind(&target.name)
                                .fetch_optional(&mut *conn)
                                .await
                                .map_err(self.fail(op))?;
                        let action = match stored {
                            None => ApplyAction::Created,
                            Some(old) if same_json(&old, &value) => ApplyAction::Unchanged,
                            Some(_) => ApplyAction::Updated,
                        };
                        if action != ApplyAction::Unchanged {
                            sqlx::query(
                                "INSERT INTO targets (name, spec, created_at, updated_at) \
                                 VALUES ($1, $2, $3, $3) \
                                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
                                 updated_at = excluded.updated_at",
                            )
                            .bind(&target.name)
                            .bind(value.to_string())
                            .bind(now)
                            .execute(&mut *conn)
                            .await
                            .map_err(self.fail(op))?;
                        }
                        items.push(ApplyItem {
                            kind: "target",
                            name: target.name.clone(),
                            action,
                            version: None,
                        });
                    }

                    let mut seen = HashSet::new();
                    for (i, job) in batch.jobs.iter().enumerate() {
                        check_name(&format!("jobs[{i}].name"), "job", &job.name, &mut seen)?;
                        let (action, version) = self.apply_job(conn, job, by, now).await?;
                        items.push(ApplyItem {
                            kind: "job",
                            name: job.name.clone(),
                            action,
                            version: Some(version),
                        });
                    }
                    let mut seen = HashSet::new();
                    for (i, def) in batch.schedules.iter().enumerate() {
                        check_name(
                            &format!("schedules[{i}].name"),
                            "schedule",
                            &def.spec.name,
                            &mut seen,
                        )?;
                        let action = self.apply_schedule(conn, def, by, now).await?;
                        items.push(ApplyItem {
                            kind: "schedule",
                            name: def.spec.name.clone(),
                            action,
                            version: None,
                        });
                    }
                    Ok(items)
                }

                /// Stores a job version unless it equals the latest; returns
                /// what happened and the version now current.
                async fn apply_job(
                    &self,
                    conn: &mut <$db as sqlx::Database>::Connection,
                    job: &JobSpec,
                    by: &str,
                    now: i64,
                ) -> Result<(ApplyAction, u32)> {
                    let op = "applying targets and jobs";
                    let value = serde_json::to_value(job)
                        .map_err(|e| Error::Internal(format!("encoding job '{}': {e}", job.name)))?;
                    let latest: Option<(i64, String)> = sqlx::query_as(
                        "SELECT version, spec FROM jobs WHERE name = $1 \
                         ORDER BY version DESC LIMIT 1",
                    )
                    .bind(&job.name)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(self.fail(op))?;
                    let (action, version) = match latest {
                        None => (ApplyAction::Created, 1),
                        Some((v, old)) if same_json(&old, &value) => {
                            return Ok((ApplyAction::Unchanged, to_u32("job version", v)?));
                        }
                        Some((v, _)) => (ApplyAction::Updated, v + 1),
                    };
                    let version = u32::try_from(version).map_err(|_| {
                        Error::Conflict(format!("job '{}' has too many versions", job.name))
                    })?;
                    sqlx::query(
                        "INSERT INTO jobs (name, version, status, spec, created_at, created_by) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&job.name)
                    .bind(i64::from(version))
                    .bind(job.status.as_str())
                    .bind(value.to_string())
                    .bind(now)
                    .bind(by)
                    .execute(&mut *conn)
                    .await
                    .map_err(self.fail(op))?;
                    Ok((action, version))
                }
            }

            #[async_trait]
            impl TargetStore for $store {
                async fn get_target(&self, name: &str) -> Result<Option<Target>> {
                    let row = sqlx::query("SELECT spec FROM targets WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(self.fail("reading a target"))?;
                    row.map(|r| rows::json(&r, "spec")).transpose()
                }

                async fn list_targets(&self) -> Result<Vec<Target>> {
                    let rows = sqlx::query("SELECT spec FROM targets ORDER BY name")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(self.fail("listing targets"))?;
                    rows.iter().map(|r| rows::json(r, "spec")).collect()
                }

                async fn delete_target(&self, name: &str) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query("DELETE FROM targets WHERE name = $1")
                        .bind(name)
                        .execute(&self.pool)
                        .await
                        .map_err(self.fail("deleting a target"))?;
                    Ok(done.rows_affected() > 0)
                }
            }

            #[async_trait]
            impl JobStore for $store {
                async fn get_job(&self, name: &str, version: Option<u32>) -> Result<Option<Job>> {
                    let query = match version {
                        Some(v) => sqlx::query(concat!(
                            "SELECT ",
                            job_columns!(),
                            " FROM jobs WHERE name = $1 AND version = $2"
                        ))
                        .bind(name)
                        .bind(i64::from(v)),
                        None => sqlx::query(concat!(
                            "SELECT ",
                            job_columns!(),
                            " FROM jobs WHERE name = $1 ORDER BY version DESC LIMIT 1"
                        ))
                        .bind(name),
                    };
                    let row = query
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(self.fail("reading a job"))?;
                    row.as_ref().map(rows::job).transpose()
                }

                async fn list_jobs(&self) -> Result<Vec<Job>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs AS j \
                         WHERE version = (SELECT MAX(version) FROM jobs WHERE name = j.name) \
                         ORDER BY name"
                    ))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing jobs"))?;
                    rows.iter().map(rows::job).collect()
                }

                async fn job_versions(&self, name: &str) -> Result<Vec<Job>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE name = $1 ORDER BY version"
                    ))
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing job versions"))?;
                    rows.iter().map(rows::job).collect()
                }
            }

            #[async_trait]
            impl RunStore for $store {
                async fn insert_run(&self, run: &Run) -> Result<()> {
                    let _turn = self.writer().await;
                    let mut conn = self.pool.acquire().await.map_err(self.fail("recording a run"))?;
                    self.insert_run_on(&mut conn, run).await
                }

                async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        run_columns!(),
                        " FROM runs WHERE id = $1"
                    ))
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading a run"))?;
                    row.as_ref().map(rows::run).transpose()
                }

                async fn find_runs_by_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
                    // Ids are stored lower-case; people may type them either way.
                    let pattern = format!("{}%", like_escape(&prefix.to_ascii_lowercase()));
                    let ids: Vec<String> = sqlx::query_scalar(
                        "SELECT id FROM runs WHERE id LIKE $1 ESCAPE '\\' ORDER BY id LIMIT 2",
                    )
                    .bind(pattern)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("finding runs by id prefix"))?;
                    ids.iter().map(|id| $crate::rows::run_id(id)).collect()
                }

                async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
                    let op = "listing runs";
                    let mut q = QueryBuilder::<$db>::new(concat!(
                        "SELECT ",
                        run_columns!(),
                        " FROM runs WHERE TRUE"
                    ));
                    if let Some(job) = &filter.job {
                        q.push(" AND job = ").push_bind(job.clone());
                    }
                    if let Some(schedule) = &filter.schedule {
                        q.push(" AND schedule = ").push_bind(schedule.clone());
                    }
                    if !filter.statuses.is_empty() {
                        q.push(" AND status IN (");
                        let mut list = q.separated(", ");
                        for status in &filter.statuses {
                            list.push_bind(status.as_str());
                        }
                        q.push(")");
                    }
                    if let Some(before) = filter.before {
                        // Keyset pagination: strictly older than the cursor run,
                        // in the same (created_at, id) order the list is sorted by.
                        let created: Option<i64> =
                            sqlx::query_scalar("SELECT created_at FROM runs WHERE id = $1")
                                .bind(before.to_string())
                                .fetch_optional(&self.pool)
                                .await
                                .map_err(self.fail(op))?;
                        let Some(created) = created else {
                            return Err(Error::NotFound {
                                what: "run",
                                name: before.to_string(),
                                hint: Some(
                                    "the run to list from (`before`) does not exist".into(),
                                ),
                            });
                        };
                        q.push(" AND (created_at, id) < (")
                            .push_bind(created)
                            .push(", ")
                            .push_bind(before.to_string())
                            .push(")");
                    }
                    q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit_or(
                        filter.limit,
                        DEFAULT_LIST_LIMIT,
                        MAX_LIST_LIMIT,
                    ));
                    let rows = q.build().fetch_all(&self.pool).await.map_err(self.fail(op))?;
                    rows.iter().map(rows::run).collect()
                }

                async fn claim_queued(&self, claim: &Claim) -> Result<Vec<Run>> {
                    let sql = (Self::CLAIM_QUEUED, Self::CLAIM_QUEUED_ONE);
                    self.claim_with("claiming runs", sql, claim, Utc::now()).await
                }

                async fn claim_expired(&self, claim: &Claim, now: DateTime<Utc>) -> Result<Vec<Run>> {
                    let sql = (Self::TAKE_EXPIRED, Self::TAKE_EXPIRED_ONE);
                    self.claim_with("taking over expired runs", sql, claim, now).await
                }

                async fn heartbeat(
                    &self,
                    id: RunId,
                    worker: &str,
                    attempt: u32,
                    lease_until: DateTime<Utc>,
                ) -> Result<bool> {
                    // A late heartbeat costs the run its lease: ahead of the queue.
                    let _turn = self.urgent_writer().await;
                    let done = sqlx::query(
                        "UPDATE runs SET lease_until = $1 \
                         WHERE id = $2 AND worker = $3 AND attempt = $4 AND status = 'running'",
                    )
                    .bind(micros(lease_until))
                    .bind(id.to_string())
                    .bind(worker)
                    .bind(i64::from(attempt))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("extending a run's lease"))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn finish_run(
                    &self,
                    id: RunId,
                    worker: &str,
                    attempt: u32,
                    status: RunStatus,
                    error: Option<&str>,
                ) -> Result<bool> {
                    if !status.is_terminal() {
                        return Err(Error::validation(
                            "status",
                            format!("a run cannot finish as '{status}' (expected a final state)"),
                        ));
                    }
                    let _turn = self.writer().await;
                    let done = sqlx::query(
                        "UPDATE runs SET status = $1, error = $2, finished_at = $3, \
                         lease_until = NULL \
                         WHERE id = $4 AND worker = $5 AND attempt = $6 AND status = 'running'",
                    )
                    .bind(status.as_str())
                    .bind(error)
                    .bind(micros(Utc::now()))
                    .bind(id.to_string())
                    .bind(worker)
                    .bind(i64::from(attempt))
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("finishing a run"))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn request_cancel(&self, id: RunId) -> Result<Option<Run>> {
                    let _turn = self.writer().await;
                    // Every `SET` expression sees the row as it was, so one
                    // statement decides and changes.
                    let row = sqlx::query(concat!(
                        "UPDATE runs SET \
                           finished_at = CASE WHEN status IN ('queued', 'waiting_approval') THEN $1 \
                                              ELSE finished_at END, \
                           cancel_requested = CASE WHEN status IN ('queued', 'running', \
                                                   'waiting_approval') THEN TRUE \
                                                   ELSE cancel_requested END, \
                           status = CASE WHEN status IN ('queued', 'waiting_approval') \
                                         THEN 'cancelled' ELSE status END \
                         WHERE id = $2 RETURNING ",
                        run_columns!()
                    ))
                    .bind(micros(Utc::now()))
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("cancelling a run"))?;
                    row.as_ref().map(rows::run).transpose()
                }

                async fn put_step_result(&self, result: &StepResult) -> Result<()> {
                    self.put_step_result_guarded(None, result).await.map(|_| ())
                }

                async fn put_step_result_as(&self, worker: &str, result: &StepResult) -> Result<bool> {
                    self.put_step_result_guarded(Some(worker), result).await
                }

                /// One write transaction (one commit) for all of them; each
                /// row is guarded like `put_step_result_as`, and a refused one
                /// rolls back the others.
                async fn put_step_results_as(
                    &self,
                    worker: &str,
                    results: &[StepResult],
                ) -> Result<bool> {
                    if results.is_empty() {
                        return Ok(true);
                    }
                    let op = "recording step results";
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    for r in results {
                        let done = sqlx::query(GUARDED_RESULT)
                            .bind(r.run_id.to_string())
                            .bind(i64::from(r.step))
                            .bind(&r.target)
                            .bind(r.status.as_str())
                            .bind(r.exit_code)
                            .bind(r.signal)
                            .bind(r.error.as_deref())
                            .bind(i64::from(r.attempt))
                            .bind(micros(r.started_at))
                            .bind(r.finished_at.map(micros))
                            .bind(i64::from(r.try_no))
                            .bind(tries_json(r)?)
                            .bind(r.run_id.to_string())
                            .bind(worker)
                            .bind(outputs_json(r)?)
                            .bind(children_json(r)?)
                            .execute(&mut *tx)
                            .await
                            .map_err(run_write_error(op, &[r.run_id], self.fail(op)))?;
                        if done.rows_affected() == 0 {
                            return Ok(false);
                        }
                    }
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(true)
                }

                async fn run_status(&self, id: RunId) -> Result<Option<RunStatus>> {
                    let status: Option<String> =
                        sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
                            .bind(id.to_string())
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(self.fail("reading a run's status"))?;
                    status.map(|s| s.parse()).transpose()
                }

                async fn cancel_requested(&self, id: RunId) -> Result<Option<bool>> {
                    sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
                        .bind(id.to_string())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(self.fail("reading whether a run was cancelled"))
                }

                async fn step_results(&self, id: RunId) -> Result<Vec<StepResult>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        step_columns!(),
                        " FROM step_results WHERE run_id = $1 ORDER BY step, target"
                    ))
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading step results"))?;
                    rows.iter().map(rows::step_result).collect()
                }

                async fn find_child_run(
                    &self,
                    parent: RunId,
                    step: u32,
                    target: &str,
                ) -> Result<Option<Run>> {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        run_columns!(),
                        " FROM runs WHERE parent_run = $1 AND parent_step = $2 AND parent_target = $3"
                    ))
                    .bind(parent.to_string())
                    .bind(i64::from(step))
                    .bind(target)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("finding a child run"))?;
                    row.as_ref().map(rows::run).transpose()
                }

                async fn step_results_page(
                    &self,
                    id: RunId,
                    after: Option<(u32, &str)>,
                    limit: usize,
                ) -> Result<Vec<StepResult>> {
                    // No step index is negative: (-1, '') is before every result.
                    let (step, target) = after.map_or((-1, ""), |(s, t)| (i64::from(s), t));
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        step_columns!(),
                        " FROM step_results WHERE run_id = $1 AND (step, target) > ($2, $3) \
                         ORDER BY step, target LIMIT $4"
                    ))
                    .bind(id.to_string())
                    .bind(step)
                    .bind(target)
                    .bind(limit_or(limit, DEFAULT_RESULT_LIMIT, usize::MAX))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading a page of step results"))?;
                    rows.iter().map(rows::step_result).collect()
                }
            }

            #[async_trait]
            impl LogStore for $store {
                async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()> {
                    self.append_logs_guarded(None, chunks).await.map(|_| ())
                }

                async fn append_logs_as(
                    &self,
                    worker: &str,
                    attempt: u32,
                    chunks: &[LogChunk],
                ) -> Result<bool> {
                    self.append_logs_guarded(Some((worker, attempt)), chunks).await
                }

                async fn read_logs(&self, id: RunId, after: u64, limit: usize) -> Result<Vec<LogChunk>> {
                    let Ok(after) = i64::try_from(after) else {
                        return Ok(vec![]);
                    };
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        log_columns!(),
                        " FROM logs WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                    ))
                    .bind(id.to_string())
                    .bind(after)
                    .bind(limit_or(limit, DEFAULT_LOG_LIMIT, usize::MAX))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading log chunks"))?;
                    rows.iter().map(rows::log_chunk).collect()
                }

                async fn last_log_seq(&self, id: RunId) -> Result<u64> {
                    let seq: i64 =
                        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE run_id = $1")
                            .bind(id.to_string())
                            .fetch_one(&self.pool)
                            .await
                            .map_err(self.fail("reading the last log sequence number"))?;
                    u64::try_from(seq).map_err(|_| corrupt("log sequence number", seq))
                }
            }

            #[async_trait]
            impl Store for $store {
                fn backend(&self) -> &'static str {
                    Self::BACKEND
                }

                fn capabilities(&self) -> StoreCapabilities {
                    Self::store_capabilities()
                }

                fn secret_store(&self) -> &dyn SecretStore {
                    self
                }

                fn audit_store(&self) -> &dyn AuditStore {
                    self
                }

                fn user_store(&self) -> &dyn UserStore {
                    self
                }

                fn retention_store(&self) -> &dyn RetentionStore {
                    self
                }

                fn approval_store(&self) -> &dyn opsconductor_core::store::ApprovalStore {
                    self
                }

                fn schedule_store(&self) -> &dyn opsconductor_core::store::ScheduleStore {
                    self
                }

                fn notify_store(&self) -> &dyn opsconductor_core::store::NotifyStore {
                    self
                }

                async fn apply(&self, batch: &ApplyBatch, by: &str) -> Result<Vec<ApplyItem>> {
                    self.apply_all(batch, by).await
                }

                async fn notify(&self, event: Event) -> Result<()> {
                    self.send_event(event).await
                }

                async fn listen(&self) -> Result<Option<EventStream>> {
                    self.event_stream().await
                }
            }
        };
    };
}
pub(crate) use run_sql;
