//! Schedules and fire records: [`schedule_sql!`].
//!
//! Exactly once: `commit_fires` moves a schedule's cursor with a
//! compare-and-set (`generation` and `next_fire` as read) and inserts the
//! fire records (primary key `(schedule, fire_time)`) and their runs in the
//! same transaction. On PostgreSQL a second scheduler's `UPDATE` of the same
//! row waits for the first transaction and then matches nothing; on SQLite
//! transactions are serialised by `BEGIN IMMEDIATE`. Commits of one batch
//! are applied in name order, so two schedulers lock rows in the same order
//! and never deadlock.

/// The columns a schedule row is read from.
macro_rules! schedule_columns {
    () => {
        "name, spec, paused, next_fire, generation, owner, owner_role, created_at, updated_at"
    };
}
pub(crate) use schedule_columns;

/// The columns of a fire record.
macro_rules! fire_columns {
    () => {
        "schedule, fire_time, outcome, run_id, detail, decided_at, decided_by"
    };
}
pub(crate) use fire_columns;

/// Writes `ScheduleStore` and the schedule part of `apply` for one backend.
macro_rules! schedule_sql {
    ($store:ty, $db:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use opsconductor_core::model::RunId;
            use opsconductor_core::schedule::{FireRecord, Schedule, ScheduleDef, ScheduleSpec};
            use opsconductor_core::store::{ApplyAction, FireCommit, ScheduleStore};
            use opsconductor_core::{Error, Result};
            use sqlx::Row as _;

            use $crate::common::{corrupt, from_micros, from_micros_opt, micros, same_json};
            use $crate::sql::Lock;
            use $crate::sql::{fire_columns, schedule_columns};

            fn schedule_row(row: &<$db as sqlx::Database>::Row) -> Result<Schedule> {
                let get = |e: sqlx::Error| corrupt("schedule row", e);
                let spec: String = row.try_get("spec").map_err(get)?;
                let spec: ScheduleSpec =
                    serde_json::from_str(&spec).map_err(|e| corrupt("schedule spec", e))?;
                let role: Option<String> = row.try_get("owner_role").map_err(get)?;
                let generation: i64 = row.try_get("generation").map_err(get)?;
                Ok(Schedule {
                    spec,
                    paused: row.try_get("paused").map_err(get)?,
                    next_fire: from_micros_opt(row.try_get("next_fire").map_err(get)?)?,
                    generation: u64::try_from(generation)
                        .map_err(|_| corrupt("schedule generation", generation))?,
                    owner: row.try_get("owner").map_err(get)?,
                    owner_role: role.map(|r| r.parse()).transpose()?,
                    created_at: from_micros(row.try_get("created_at").map_err(get)?)?,
                    updated_at: from_micros(row.try_get("updated_at").map_err(get)?)?,
                })
            }

            fn fire_row(row: &<$db as sqlx::Database>::Row) -> Result<FireRecord> {
                let get = |e: sqlx::Error| corrupt("fire record", e);
                let outcome: String = row.try_get("outcome").map_err(get)?;
                let run: Option<String> = row.try_get("run_id").map_err(get)?;
                Ok(FireRecord {
                    schedule: row.try_get("schedule").map_err(get)?,
                    fire_time: from_micros(row.try_get("fire_time").map_err(get)?)?,
                    outcome: outcome.parse()?,
                    run_id: run.map(|r| $crate::rows::run_id(&r)).transpose()?,
                    detail: row.try_get("detail").map_err(get)?,
                    decided_at: from_micros(row.try_get("decided_at").map_err(get)?)?,
                    decided_by: row.try_get("decided_by").map_err(get)?,
                })
            }

            fn generation(g: u64) -> Result<i64> {
                i64::try_from(g).map_err(|_| Error::validation("generation", "too large"))
            }

            impl $store {
                /// Stores one schedule of an `apply` unless its spec is
                /// unchanged; a change resets the cursor to the engine's
                /// `next_fire` and bumps the generation (a pause stays).
                async fn apply_schedule(
                    &self,
                    conn: &mut <$db as sqlx::Database>::Connection,
                    def: &ScheduleDef,
                    by: &str,
                    now: i64,
                ) -> Result<ApplyAction> {
                    let op = "applying schedules";
                    let value = serde_json::to_value(&def.spec).map_err(|e| {
                        Error::Internal(format!("encoding schedule '{}': {e}", def.spec.name))
                    })?;
                    let stored: Option<String> =
                        sqlx::query_scalar("SELECT spec FROM schedules WHERE name = $1")
                            .bind(&def.spec.name)
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(self.fail(op))?;
                    let action = match stored {
                        None => ApplyAction::Created,
                        Some(old) if same_json(&old, &value) => return Ok(ApplyAction::Unchanged),
                        Some(_) => ApplyAction::Updated,
                    };
                    sqlx::query(
                        "INSERT INTO schedules (name, spec, enabled, paused, next_fire, generation, \
                           owner, owner_role, created_at, updated_at) \
                         VALUES ($1, $2, $3, FALSE, $4, 1, $5, $6, $7, $7) \
                         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
                           enabled = excluded.enabled, next_fire = excluded.next_fire, \
                           generation = schedules.generation + 1, owner = excluded.owner, \
                           owner_role = excluded.owner_role, updated_at = excluded.updated_at",
                    )
                    .bind(&def.spec.name)
                    .bind(value.to_string())
                    .bind(def.spec.enabled)
                    .bind(def.next_fire.map(micros))
                    .bind(by)
                    .bind(def.owner_role.map(|r| r.as_str()))
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(self.fail(op))?;
                    Ok(action)
                }

                /// One commit inside the batch transaction; `false` if it
                /// lost the compare-and-set (nothing of it written).
                async fn commit_one(
                    &self,
                    conn: &mut <$db as sqlx::Database>::Connection,
                    c: &FireCommit,
                ) -> Result<bool> {
                    let op = "committing schedule fire times";
                    let won = match c.from {
                        Some(from) => {
                            sqlx::query(
                                "UPDATE schedules SET next_fire = $1 \
                                 WHERE name = $2 AND generation = $3 AND next_fire = $4",
                            )
                            .bind(c.next_fire.map(micros))
                            .bind(&c.schedule)
                            .bind(generation(c.generation)?)
                            .bind(micros(from))
                            .execute(&mut *conn)
                            .await
                            .map_err(self.fail(op))?
                            .rows_affected()
                                == 1
                        }
                        None => true,
                    };
                    if !won {
                        return Ok(false);
                    }
                    for (fire_time, run) in &c.promote {
                        let done = sqlx::query(
                            "UPDATE schedule_fires SET outcome = 'queued', run_id = $1 \
                             WHERE schedule = $2 AND fire_time = $3 AND outcome = 'pending'",
                        )
                        .bind(run.to_string())
                        .bind(&c.schedule)
                        .bind(micros(*fire_time))
                        .execute(&mut *conn)
                        .await
                        .map_err(self.fail(op))?;
                        if done.rows_affected() != 1 {
                            // Another scheduler promoted it first; this
                            // commit has written nothing yet (promotions
                            // come alone), so nothing needs undoing.
                            return Ok(false);
                        }
                    }
                    for f in &c.fires {
                        sqlx::query(concat!(
                            "INSERT INTO schedule_fires (",
                            fire_columns!(),
                            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                        ))
                        .bind(&f.schedule)
                        .bind(micros(f.fire_time))
                        .bind(f.outcome.as_str())
                        .bind(f.run_id.map(|r| r.to_string()))
                        .bind(f.detail.as_deref())
                        .bind(micros(f.decided_at))
                        .bind(&f.decided_by)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| match &e {
                            sqlx::Error::Database(db) if db.is_unique_violation() => {
                                Error::Conflict(format!(
                                    "schedule '{}' fire time {} was already recorded",
                                    f.schedule, f.fire_time
                                ))
                            }
                            _ => self.fail(op)(e),
                        })?;
                    }
                    for run in &c.runs {
                        self.insert_run_on(conn, run).await?;
                    }
                    Ok(true)
                }
            }

            #[async_trait]
            impl ScheduleStore for $store {
                async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>> {
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        schedule_columns!(),
                        " FROM schedules WHERE name = $1"
                    ))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(self.fail("reading a schedule"))?;
                    row.as_ref().map(schedule_row).transpose()
                }

                async fn list_schedules(&self) -> Result<Vec<Schedule>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        schedule_columns!(),
                        " FROM schedules ORDER BY name"
                    ))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("listing schedules"))?;
                    rows.iter().map(schedule_row).collect()
                }

                async fn due_schedules(
                    &self,
                    now: DateTime<Utc>,
                    limit: usize,
                ) -> Result<Vec<Schedule>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        schedule_columns!(),
                        " FROM schedules WHERE next_fire IS NOT NULL AND next_fire <= $1 \
                          AND enabled AND NOT paused ORDER BY next_fire, name LIMIT $2"
                    ))
                    .bind(micros(now))
                    .bind($crate::common::limit_or(limit, 100, 10_000))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("finding due schedules"))?;
                    rows.iter().map(schedule_row).collect()
                }

                async fn earliest_fire(&self) -> Result<Option<DateTime<Utc>>> {
                    let t: Option<i64> = sqlx::query_scalar(
                        "SELECT MIN(next_fire) FROM schedules \
                         WHERE next_fire IS NOT NULL AND enabled AND NOT paused",
                    )
                    .fetch_one(&self.pool)
                    .await
                    .map_err(self.fail("finding the next fire time"))?;
                    from_micros_opt(t)
                }

                async fn set_schedule_paused(
                    &self,
                    name: &str,
                    paused: bool,
                    next_fire: Option<DateTime<Utc>>,
                ) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query(
                        "UPDATE schedules SET paused = $1, \
                           next_fire = CASE WHEN $1 THEN next_fire ELSE $2 END, \
                           generation = generation + 1 WHERE name = $3",
                    )
                    .bind(paused)
                    .bind(next_fire.map(micros))
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(self.fail("pausing or resuming a schedule"))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn delete_schedule(&self, name: &str) -> Result<bool> {
                    let _turn = self.writer().await;
                    let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
                        .bind(name)
                        .execute(&self.pool)
                        .await
                        .map_err(self.fail("deleting a schedule"))?;
                    Ok(done.rows_affected() > 0)
                }

                async fn commit_fires(&self, commits: &[FireCommit]) -> Result<Vec<bool>> {
                    if commits.is_empty() {
                        return Ok(vec![]);
                    }
                    let op = "committing schedule fire times";
                    let mut order: Vec<usize> = (0..commits.len()).collect();
                    order.sort_by(|&a, &b| commits[a].schedule.cmp(&commits[b].schedule));
                    let mut out = vec![false; commits.len()];
                    let (_turn, mut tx) = self.write_tx(op, Lock::Rows).await?;
                    for i in order {
                        out[i] = self.commit_one(&mut tx, &commits[i]).await?;
                    }
                    tx.commit().await.map_err(self.fail(op))?;
                    Ok(out)
                }

                async fn pending_fires(&self) -> Result<Vec<FireRecord>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        fire_columns!(),
                        " FROM schedule_fires WHERE outcome = 'pending' \
                          ORDER BY schedule, fire_time LIMIT 10000"
                    ))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading pending fire times"))?;
                    rows.iter().map(fire_row).collect()
                }

                async fn active_scheduled_runs(&self) -> Result<Vec<(String, RunId)>> {
                    let rows: Vec<(String, String)> = sqlx::query_as(
                        "SELECT schedule, id FROM runs WHERE schedule IS NOT NULL \
                         AND status IN ('queued', 'running') ORDER BY created_at, id",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading runs of schedules"))?;
                    rows.into_iter()
                        .map(|(s, id)| Ok((s, $crate::rows::run_id(&id)?)))
                        .collect()
                }

                async fn fire_records(
                    &self,
                    schedule: &str,
                    limit: usize,
                ) -> Result<Vec<FireRecord>> {
                    let rows = sqlx::query(concat!(
                        "SELECT ",
                        fire_columns!(),
                        " FROM schedule_fires WHERE schedule = $1 \
                          ORDER BY fire_time DESC LIMIT $2"
                    ))
                    .bind(schedule)
                    .bind($crate::common::limit_or(limit, 20, 1000))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading fire records"))?;
                    rows.iter().map(fire_row).collect()
                }
            }
        };
    };
}
pub(crate) use schedule_sql;
