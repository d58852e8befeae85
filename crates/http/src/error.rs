//! The one error shape of the API, `{"error": {"code", "message", "field"?}}`,
//! and the one HTTP status for each core [`ErrorKind`]. Internal details
//! (database messages, bugs) are logged with the request id, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opsconductor::{Error, ErrorKind};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`validation`, `not_found`, `forbidden`, …).
    pub code: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
    /// Where: a field, a parameter, a position in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The code (see [`ErrorDetail::code`]).
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// Where.
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

/// Marks a response whose body already has the error shape (so the
/// normalising middleware leaves it alone).
#[derive(Debug, Clone, Copy)]
pub struct Shaped;

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400: the request itself is malformed (syntax, query string, headers).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: well-formed but invalid input, naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
        }
    }

    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 501.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", message)
    }

    /// Adds the field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }
}

/// The status and code of each core error kind — one each.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::Validation => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        ErrorKind::Store => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        ErrorKind::Executor => (StatusCode::BAD_GATEWAY, "executor"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = status_of(e.kind());
        match e {
            Error::Validation { field, message } => Self {
                field,
                ..Self::new(status, code, message)
            },
            Error::Forbidden(m) => Self::new(status, code, m),
            Error::Unauthenticated(m) => Self::new(status, code, m),
            Error::Store(m) => {
                tracing::error!(error = %m, "store error");
                Self {
                    retry_after: Some(5),
                    ..Self::new(
                        status,
                        code,
                        "the database is unavailable or failed; try again shortly (the server log has the details, under this request's X-Request-Id)",
                    )
                }
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Self::new(
                    status,
                    code,
                    "an unexpected error occurred (the server log has the details, under this request's X-Request-Id)",
                )
            }
            other => Self::new(status, code, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        let h = res.headers_mut();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"opsconductor\""),
            );
        }
        res.extensions_mut().insert(Shaped);
        res.extensions_mut().insert(self);
        res
    }
}

/// The result type of handlers.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_status() {
        let cases = [
            (Error::validation("f", "m"), 422),
            (Error::not_found("job", "x"), 404),
            (Error::Conflict("c".into()), 409),
            (Error::Forbidden("f".into()), 403),
            (Error::Unauthenticated("u".into()), 401),
            (Error::Store("secret sql".into()), 503),
            (Error::Executor("e".into()), 502),
            (Error::Internal("bug".into()), 500),
        ];
        for (e, status) in cases {
            let a = ApiError::from(e);
            assert_eq!(a.status.as_u16(), status);
            assert!(!a.message.contains("secret sql") && !a.message.contains("bug"));
        }
        let v = ApiError::from(Error::validation("params.version", "required"));
        assert_eq!(v.field.as_deref(), Some("params.version"));
    }
}
