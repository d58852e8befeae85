//! Pagination and sorting, the same on every list: `limit` (1-500, default
//! 50), `cursor` (opaque, from the previous page's `next_cursor`) and, where
//! a list offers several orders, `sort` (a field, `-field` for descending).
//! Pages are keyset-based: an item added or removed meanwhile never shifts
//! the next page.

use base64::Engine as _;

use crate::error::ApiError;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 500;

/// Checks `limit`.
pub fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "limit",
            format!("{n} is out of range (1-{MAX_LIMIT})"),
        )),
    }
}

/// Makes an opaque cursor from a key.
pub fn encode_cursor(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Reads an opaque cursor back.
pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(c) = cursor else { return Ok(None) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid(
                "cursor",
                "not a cursor from this API (pass `next_cursor` from the previous page)",
            )
        })
}

/// A requested order: one of the list's sort fields, ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort<'a> {
    /// The field.
    pub field: &'a str,
    /// Descending.
    pub descending: bool,
}

/// Parses `sort` against the fields a list offers (the first is the default, ascending).
pub fn sort<'a>(sort: Option<&str>, fields: &[&'a str]) -> Result<Sort<'a>, ApiError> {
    let default = fields.first().copied().unwrap_or("name");
    let Some(s) = sort else {
        return Ok(Sort {
            field: default,
            descending: false,
        });
    };
    let (descending, name) = match s.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, s),
    };
    fields
        .iter()
        .find(|f| **f == name)
        .map(|f| Sort {
            field: f,
            descending,
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "sort",
                format!(
                    "cannot sort by '{name}' here (use one of: {}; prefix '-' for descending)",
                    fields.join(", ")
                ),
            )
        })
}

/// One page of `items` in the order of `key` (a string whose order is the
/// sort order and which is unique per item), after the cursor.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    descending: bool,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let after = decode_cursor(cursor)?;
    let mut keyed: Vec<(String, T)> = items.into_iter().map(|t| (key(&t), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    if descending {
        keyed.reverse();
    }
    let mut out: Vec<(String, T)> = keyed
        .into_iter()
        .filter(|(k, _)| match &after {
            None => true,
            Some(a) if descending => k < a,
            Some(a) => k > a,
        })
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|(k, _)| encode_cursor(k))
    } else {
        None
    };
    Ok((out.into_iter().map(|(_, t)| t).collect(), next))
}

/// A timestamp as a sortable key part.
pub fn time_key(t: chrono::DateTime<chrono::Utc>) -> String {
    format!("{:020}", t.timestamp_micros().max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_without_gaps_or_duplicates() {
        let items: Vec<String> = (0..7).map(|i| format!("n{i}")).collect();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (p, next) =
                page(items.clone(), |s| s.clone(), false, 3, cursor.as_deref()).unwrap();
            seen.extend(p);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, items);
        let (p, _) = page(items.clone(), |s| s.clone(), true, 2, None).unwrap();
        assert_eq!(p, ["n6", "n5"]);
        assert!(page(items, |s| s.clone(), false, 2, Some("%%%")).is_err());
        assert!(sort(Some("-name"), &["name"]).unwrap().descending);
        assert!(sort(Some("size"), &["name"]).is_err());
        assert!(limit(Some(0)).is_err());
    }
}
