//! The core's one error type. Every front end maps each [`ErrorKind`] to
//! exactly one HTTP status, CLI exit code or Python exception.

use std::fmt;

/// What kind of failure this is; front ends decide status codes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input is wrong (bad file, bad parameter, bad selector).
    Validation,
    /// The named object does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. a deprecated job).
    Conflict,
    /// The caller is not allowed to do this.
    Forbidden,
    /// The caller could not be identified (bad credentials, expired token).
    Unauthenticated,
    /// The store failed (database unreachable, corrupt, …).
    Store,
    /// An executor failed to reach or drive a target.
    Executor,
    /// A bug or an unexpected condition.
    Internal,
}

/// The core's error: a kind, a message a user can act on, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input; `field` names where (a parameter, `steps[2].exec`, `file.yaml:12`).
    #[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Validation {
        /// Where the problem is.
        field: Option<String>,
        /// What is wrong and, where possible, what to do.
        message: String,
    },
    /// A named object is missing.
    #[error("{what} '{name}' not found{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NotFound {
        /// Kind of object (`job`, `target`, `run`).
        what: &'static str,
        /// The name or id asked for.
        name: String,
        /// A suggestion (e.g. the list of known names).
        hint: Option<String>,
    },
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller's role does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Bad or missing credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The persistence layer failed.
    #[error("store error: {0}")]
    Store(String),
    /// An executor failed.
    #[error("{0}")]
    Executor(String),
    /// Unexpected.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A validation error about `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A validation error with no particular field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Validation {
            field: None,
            message: message.into(),
        }
    }

    /// A missing object.
    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
            hint: None,
        }
    }

    /// A store failure, from any displayable cause.
    pub fn store(e: impl fmt::Display) -> Self {
        Error::Store(e.to_string())
    }

    /// The kind, for mapping to status codes and exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Validation { .. } => ErrorKind::Validation,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::Store(_) => ErrorKind::Store,
            Error::Executor(_) => ErrorKind::Executor,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Adds context to a validation error's field (`file.yaml` + `steps[1]`).
    pub fn within(self, outer: &str) -> Self {
        match self {
            Error::Validation { field, message } => Error::Validation {
                field: Some(match field {
                    // Already placed inside `outer` (e.g. at `file:line:col: job 'x': …`).
                    Some(f) if f.contains(outer) => f,
                    Some(f) if f.starts_with('[') => format!("{outer}{f}"),
                    Some(f) => format!("{outer}.{f}"),
                    None => outer.to_string(),
                }),
                message,
            },
            other => other,
        }
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
