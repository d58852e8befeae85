//! Turning database rows into model values, shared by every backend: the
//! column lists the queries use, and [`row_decoders!`], which writes the
//! decoding functions for one backend's row type.
//!
//! Both backends store the same column meanings (ids and JSON as text,
//! timestamps as integer microseconds, log data as bytes), so one set of
//! decoders serves both; only the row type differs.

use opsconductor_core::model::RunId;
use opsconductor_core::{Error, Result};
use uuid::Uuid;

use crate::common::corrupt;

/// The columns `run` reads, in `SELECT` and `RETURNING` clauses.
macro_rules! run_columns {
    () => {
        "id, job, job_version, spec, params, targets, status, requested_by, attempt, worker, \
         lease_until, cancel_requested, error, created_at, started_at, finished_at, request_id, \
         schedule, fire_time, parent_run, parent_step, parent_target"
    };
}
pub(crate) use run_columns;

/// The columns `job` reads.
macro_rules! job_columns {
    () => {
        "version, spec, created_at, created_by"
    };
}
pub(crate) use job_columns;

/// The columns `step_result` reads.
macro_rules! step_columns {
    () => {
        "run_id, step, target, status, exit_code, signal, error, attempt, started_at, finished_at, \
         try_no, tries, outputs, children"
    };
}
pub(crate) use step_columns;

/// The columns `log_chunk` reads.
macro_rules! log_columns {
    () => {
        "run_id, seq, step, target, stream, data, time, try_no"
    };
}
pub(crate) use log_columns;

/// The columns `secret` reads (a literal, so queries stay `&'static str`).
macro_rules! secret_columns {
    () => {
        "name, id, kind, description, version, key_version, ciphertext, created_at, created_by, \
         updated_at, updated_by"
    };
}
pub(crate) use secret_columns;

/// The columns `audit_event` reads, in insert order.
macro_rules! audit_columns {
    () => {
        "seq, time, actor, action, object, detail, prev_hash, hash"
    };
}
pub(crate) use audit_columns;

/// The columns `user` reads.
macro_rules! user_columns {
    () => {
        "username, role, disabled, password_hash, created_at, password_changed_at"
    };
}
pub(crate) use user_columns;

/// The columns `api_token` reads.
macro_rules! token_columns {
    () => {
        "id, name, role, username, token_hash, created_at, expires_at, revoked_at, last_used_at"
    };
}
pub(crate) use token_columns;

/// A model value encoded for a JSON (text) column.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encoding {what}: {e}")))
}

/// A run id stored as text.
pub(crate) fn run_id(text: &str) -> Result<RunId> {
    Uuid::parse_str(text)
        .map(RunId)
        .map_err(|e| corrupt("run id", format!("'{text}': {e}")))
}

/// Writes, for one backend's row type, the functions that decode rows of
/// [`run_columns!`], [`job_columns!`], [`step_columns!`] and
/// [`log_columns!`] (`run`, `job`, `step_result`, `log_chunk`), of the
/// secrets, audit and user tables (`secret`, `secret_change`, `key_record`,
/// `audit_event`, `user`, `api_token`), `json` for a single JSON column and
/// `get` for any column. Invoked once per backend by `crate::sql::store_sql!`.
macro_rules! row_decoders {
    ($row:ty, $db:ty) => {
        use opsconductor_core::Error as __Error;
        use opsconductor_core::auth::{ApiToken, Role, User};
        use opsconductor_core::model::{AuditEvent, Job, LogChunk, Run, StepResult};
        use opsconductor_core::secrets::{KeyRecord, SecretChange, SecretMeta, SecretRecord};
        use sqlx::Row as _;

        use $crate::common::{corrupt, from_micros, from_micros_opt, to_u32};
        use $crate::rows::run_id;

        /// A column, with a store error naming it when it cannot be read.
        pub(super) fn get<'r, T>(row: &'r $row, column: &str) -> opsconductor_core::Result<T>
        where
            T: sqlx::Decode<'r, $db> + sqlx::Type<$db>,
        {
            row.try_get(column)
                .map_err(|e| corrupt(&format!("value in column `{column}`"), e))
        }

        /// A JSON column decoded into a model type.
        pub(super) fn json<T: serde::de::DeserializeOwned>(
            row: &$row,
            column: &str,
        ) -> opsconductor_core::Result<T> {
            let text: String = get(row, column)?;
            serde_json::from_str(&text)
                .map_err(|e| corrupt(&format!("JSON in column `{column}`"), e))
        }

        /// A status-like column parsed with the model's `FromStr`.
        fn parsed<T: std::str::FromStr<Err = __Error>>(
            row: &$row,
            column: &str,
        ) -> opsconductor_core::Result<T> {
            let text: String = get(row, column)?;
            text.parse()
                .map_err(|e| corrupt(&format!("value in column `{column}`"), e))
        }

        /// A row of `run_columns!`.
        pub(super) fn run(row: &$row) -> opsconductor_core::Result<Run> {
            let id: String = get(row, "id")?;
            Ok(Run {
                id: run_id(&id)?,
                job: get(row, "job")?,
                job_version: get::<Option<i64>>(row, "job_version")?
                    .map(|v| to_u32("job version", v))
                    .transpose()?,
                spec: json(row, "spec")?,
                params: json(row, "params")?,
                targets: json(row, "targets")?,
                status: parsed(row, "status")?,
                requested_by: get(row, "requested_by")?,
                attempt: to_u32("attempt", get(row, "attempt")?)?,
                worker: get(row, "worker")?,
                lease_until: from_micros_opt(get(row, "lease_until")?)?,
                cancel_requested: get(row, "cancel_requested")?,
                error: get(row, "error")?,
                created_at: from_micros(get(row, "created_at")?)?,
                started_at: from_micros_opt(get(row, "started_at")?)?,
                finished_at: from_micros_opt(get(row, "finished_at")?)?,
                request_id: get(row, "request_id")?,
                schedule: get::<Option<String>>(row, "schedule")?
                    .map(|name| {
                        Ok::<_, opsconductor_core::Error>(
                            opsconductor_core::schedule::ScheduledFire {
                                name,
                                fire_time: from_micros_opt(get(row, "fire_time")?)?,
                            },
                        )
                    })
                    .transpose()?,
                parent: match get::<Option<String>>(row, "parent_run")? {
                    Some(p) => Some(opsconductor_core::model::RunParent {
                        run: run_id(&p)?,
                        step: to_u32(
                            "parent step",
                            get::<Option<i64>>(row, "parent_step")?.unwrap_or(0),
                        )?,
                        target: get::<Option<String>>(row, "parent_target")?.unwrap_or_default(),
                    }),
                    None => None,
                },
            })
        }

        /// A row of `job_columns!`.
        pub(super) fn job(row: &$row) -> opsconductor_core::Result<Job> {
            Ok(Job {
                version: to_u32("job version", get(row, "version")?)?,
                spec: json(row, "spec")?,
                created_at: from_micros(get(row, "created_at")?)?,
                created_by: get(row, "created_by")?,
            })
        }

        /// A row of `step_columns!`.
        pub(super) fn step_result(row: &$row) -> opsconductor_core::Result<StepResult> {
            let id: String = get(row, "run_id")?;
            Ok(StepResult {
                run_id: run_id(&id)?,
                step: to_u32("step index", get(row, "step")?)?,
                target: get(row, "target")?,
                status: parsed(row, "status")?,
                exit_code: get(row, "exit_code")?,
                signal: get(row, "signal")?,
                error: get(row, "error")?,
                attempt: to_u32("attempt", get(row, "attempt")?)?,
                started_at: from_micros(get(row, "started_at")?)?,
                finished_at: from_micros_opt(get(row, "finished_at")?)?,
                try_no: to_u32("try number", get(row, "try_no")?)?,
                tries: match get::<Option<String>>(row, "tries")? {
                    Some(_) => json(row, "tries")?,
                    None => Vec::new(),
                },
                outputs: opt_json(row, "outputs")?.unwrap_or_default(),
                children: opt_json(row, "children")?.unwrap_or_default(),
            })
        }

        /// A nullable JSON column.
        fn opt_json<T: serde::de::DeserializeOwned>(
            row: &$row,
            column: &str,
        ) -> opsconductor_core::Result<Option<T>> {
            let text: Option<String> = get(row, column)?;
            text.map(|t| {
                serde_json::from_str(&t)
                    .map_err(|e| corrupt(&format!("JSON in column `{column}`"), e))
            })
            .transpose()
        }

        /// A row of `secret_columns!`.
        pub(super) fn secret(row: &$row) -> opsconductor_core::Result<SecretRecord> {
            Ok(SecretRecord {
                id: get(row, "id")?,
                ciphertext: get(row, "ciphertext")?,
                meta: SecretMeta {
                    name: get(row, "name")?,
                    kind: get(row, "kind")?,
                    description: get(row, "description")?,
                    version: to_u32("secret version", get(row, "version")?)?,
                    key_version: to_u32("key version", get(row, "key_version")?)?,
                    created_at: from_micros(get(row, "created_at")?)?,
                    created_by: get(row, "created_by")?,
                    updated_at: from_micros(get(row, "updated_at")?)?,
                    updated_by: get(row, "updated_by")?,
                },
            })
        }

        /// A row of `secret_history` (name, version, action, by_user, at).
        pub(super) fn secret_change(row: &$row) -> opsconductor_core::Result<SecretChange> {
            Ok(SecretChange {
                name: get(row, "name")?,
                version: to_u32("secret version", get(row, "version")?)?,
                action: get(row, "action")?,
                by: get(row, "by_user")?,
                at: from_micros(get(row, "at")?)?,
            })
        }

        /// A row of `master_keys`.
        pub(super) fn key_record(row: &$row) -> opsconductor_core::Result<KeyRecord> {
            Ok(KeyRecord {
                version: to_u32("key version", get(row, "version")?)?,
                salt: get(row, "salt")?,
                check: get(row, "check_value")?,
                created_at: from_micros(get(row, "created_at")?)?,
                retired_at: from_micros_opt(get(row, "retired_at")?)?,
            })
        }

        /// A row of `audit_columns!`.
        pub(super) fn audit_event(row: &$row) -> opsconductor_core::Result<AuditEvent> {
            let detail: String = get(row, "detail")?;
            let seq: i64 = get(row, "seq")?;
            Ok(AuditEvent {
                time: from_micros(get(row, "time")?)?,
                actor: get(row, "actor")?,
                action: get(row, "action")?,
                object: get(row, "object")?,
                // Kept as text if it is not JSON any more: the verifier must
                // see what is stored.
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                seq: u64::try_from(seq).unwrap_or(0),
                prev_hash: get(row, "prev_hash")?,
                hash: get(row, "hash")?,
            })
        }

        /// A role column.
        fn role(row: &$row, column: &str) -> opsconductor_core::Result<Role> {
            let text: String = get(row, column)?;
            text.parse().map_err(|_| corrupt("role", &text))
        }

        /// A row of `user_columns!`.
        pub(super) fn user(row: &$row) -> opsconductor_core::Result<User> {
            Ok(User {
                username: get(row, "username")?,
                role: role(row, "role")?,
                disabled: get(row, "disabled")?,
                password_hash: get(row, "password_hash")?,
                created_at: from_micros(get(row, "created_at")?)?,
                password_changed_at: from_micros(get(row, "password_changed_at")?)?,
            })
        }

        /// A row of `token_columns!`.
        pub(super) fn api_token(row: &$row) -> opsconductor_core::Result<ApiToken> {
            Ok(ApiToken {
                id: get(row, "id")?,
                name: get(row, "name")?,
                role: role(row, "role")?,
                username: get(row, "username")?,
                token_hash: get(row, "token_hash")?,
                created_at: from_micros(get(row, "created_at")?)?,
                expires_at: from_micros_opt(get(row, "expires_at")?)?,
                revoked_at: from_micros_opt(get(row, "revoked_at")?)?,
                last_used_at: from_micros_opt(get(row, "last_used_at")?)?,
            })
        }

        /// A row of `log_columns!`.
        pub(super) fn log_chunk(row: &$row) -> opsconductor_core::Result<LogChunk> {
            let id: String = get(row, "run_id")?;
            let seq: i64 = get(row, "seq")?;
            Ok(LogChunk {
                run_id: run_id(&id)?,
                seq: u64::try_from(seq).map_err(|_| corrupt("log sequence number", seq))?,
                step: get::<Option<i64>>(row, "step")?
                    .map(|v| to_u32("step index", v))
                    .transpose()?,
                target: get(row, "target")?,
                stream: parsed(row, "stream")?,
                data: get(row, "data")?,
                time: from_micros(get(row, "time")?)?,
                try_no: to_u32("try number", get(row, "try_no")?)?,
            })
        }
    };
}
pub(crate) use row_decoders;
