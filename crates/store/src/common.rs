//! Helpers every backend shares: error context for database failures, the
//! conversions between model values and column values, the limits the
//! trait leaves to the backend, and the checks `apply` makes on a batch.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use opsconductor_core::{Error, Result};

/// `RunFilter::limit` when the caller passes 0.
pub(crate) const DEFAULT_LIST_LIMIT: usize = 50;
/// The most runs one `list_runs` returns, whatever the caller asks.
pub(crate) const MAX_LIST_LIMIT: usize = 1000;
/// `read_logs` limit when the caller passes 0.
pub(crate) const DEFAULT_LOG_LIMIT: usize = 1000;

/// Names the operation that failed, so a database error says what was being done.
pub(crate) trait Context<T> {
    /// Turns a database error into [`Error::Store`] prefixed with `op` ("claiming runs: …").
    fn ctx(self, op: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, op: &str) -> Result<T> {
        self.map_err(|e| Error::store(format!("{op}: {e}")))
    }
}

/// A corrupt or unexpected value read from the database.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::store(format!("unexpected {what} in the database: {detail}"))
}

/// Timestamps are stored as microseconds since the Unix epoch: lossless for
/// PostgreSQL's `timestamptz` as well, and sortable as plain integers.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`micros`].
pub(crate) fn from_micros(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt("timestamp", us))
}

/// [`from_micros`] for nullable columns.
pub(crate) fn from_micros_opt(us: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    us.map(from_micros).transpose()
}

/// `now + lease`, refusing leases too long to represent.
pub(crate) fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<DateTime<Utc>> {
    TimeDelta::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| Error::validation("lease", format!("a lease of {lease:?} is too long")))
}

/// A `u32` column (versions, attempts, step indexes) read back.
pub(crate) fn to_u32(what: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(what, v))
}

/// A caller's `u64` (log sequence numbers) as a column value.
pub(crate) fn seq_to_i64(seq: u64) -> Result<i64> {
    i64::try_from(seq)
        .map_err(|_| Error::validation("seq", format!("log sequence number {seq} is too large")))
}

/// A caller's limit as a bind value, with `0` meaning `default`.
pub(crate) fn limit_or(limit: usize, default: usize, max: usize) -> i64 {
    let limit = if limit == 0 { default } else { limit.min(max) };
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Rejects an empty name or one already seen in this batch.
pub(crate) fn check_name(
    field: &str,
    kind: &str,
    name: &str,
    seen: &mut HashSet<String>,
) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::validation(field, format!("a {kind} needs a name")));
    }
    if !seen.insert(name.to_string()) {
        return Err(Error::validation(
            field,
            format!("{kind} '{name}' appears more than once in the batch"),
        ));
    }
    Ok(())
}

/// Whether a stored JSON text equals a value (compared as JSON, not as text).
pub(crate) fn same_json(stored: &str, value: &serde_json::Value) -> bool {
    serde_json::from_str::<serde_json::Value>(stored).is_ok_and(|old| &old == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escape_escapes_wildcards() {
        assert_eq!(like_escape("a%b_c\\d"), "a\\%b\\_c\\\\d");
        assert_eq!(like_escape("0190-ab"), "0190-ab");
    }

    #[test]
    fn limits() {
        assert_eq!(limit_or(0, 50, 1000), 50);
        assert_eq!(limit_or(7, 50, 1000), 7);
        assert_eq!(limit_or(5000, 50, 1000), 1000);
        assert_eq!(limit_or(usize::MAX, 50, usize::MAX), i64::MAX);
    }

    #[test]
    fn micros_round_trip() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
        assert_eq!(from_micros(micros(t)).ok(), Some(t));
    }
}
