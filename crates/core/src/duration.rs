//! Human durations in job files, request bodies and flags: `500ms`, `30s`,
//! `5m`, `1h30m`, `2d`. One parser for every front end (job files, REST
//! bodies, token lifetimes, CLI flags, Python), with checked arithmetic and
//! documented maximums, so an impossible value is refused at the door
//! instead of overflowing a deadline inside a worker.

use std::time::Duration;

/// Longest step or run time limit accepted (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86400);

/// Longest lifetime of a token (365 days).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 86400);

/// Parses `500ms`, `30s`, `5m`, `1h30m`, `2d` or a bare number of seconds.
/// A value that does not fit in a [`Duration`] is an error, never a wrap
/// or a saturation.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (expected e.g. 30s, 5m, 1h30m)".into());
    }
    let too_large = || format!("invalid duration '{s}': number too large");
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| too_large());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration '{s}' (expected e.g. 30s, 5m, 1h30m)"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs);
        let d = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86400),
            _ => {
                return Err(format!(
                    "invalid duration '{s}': unknown unit '{unit}' (use ms, s, m, h or d)"
                ));
            }
        };
        total = d.and_then(|d| total.checked_add(d)).ok_or_else(too_large)?;
    }
    Ok(total)
}

/// Checks a step, run or command time limit: more than 0 and at most
/// [`MAX_TIMEOUT`].
pub fn check_timeout(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    if d > MAX_TIMEOUT {
        return Err(format!(
            "{} is longer than the maximum time limit of {}",
            format(d),
            format(MAX_TIMEOUT)
        ));
    }
    Ok(d)
}

/// Parses a time limit ([`parse`], then [`check_timeout`]).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse(s).and_then(check_timeout)
}

/// Parses a token lifetime: more than 0 and at most [`MAX_TOKEN_LIFETIME`].
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    if d > MAX_TOKEN_LIFETIME {
        return Err(format!(
            "{} is longer than the maximum token lifetime of {}",
            format(d),
            format(MAX_TOKEN_LIFETIME)
        ));
    }
    Ok(d)
}

/// Converts seconds given as a float (Python, JSON numbers) without
/// panicking: NaN, infinities, negative values and values beyond `max` are
/// errors.
pub fn from_secs_f64(secs: f64, max: Duration) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "{secs} is not a usable duration (it must be a finite number of seconds, zero or more)"
        ));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= max => Ok(d),
        _ => Err(format!(
            "{secs} seconds is longer than the maximum of {}",
            format(max)
        )),
    }
}

/// Formats a duration the way [`parse`] reads it, shortest first.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert!(parse("5x").is_err());
        assert!(parse("m").is_err());
        assert!(parse("").is_err());
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn impossible_durations_are_errors_not_overflows() {
        // Each of these was accepted (saturated or wrapped) before.
        for s in [
            "99999999999999999999",
            "99999999999999999999s",
            "213503982334602d",
            "1000000000000000000h",
            "18446744073709551615s1s",
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.contains("too large"), "{s}: {e}");
        }
        // Fits in a Duration, but is no time limit or token lifetime.
        for s in ["18446744073709551615", "1000000000000000d", "8d", "7d1s"] {
            let e = parse_timeout(s).unwrap_err();
            assert!(e.contains("maximum") || e.contains("too large"), "{s}: {e}");
        }
        assert_eq!(parse_timeout("7d"), Ok(MAX_TIMEOUT));
        assert_eq!(parse_timeout("0s"), Err("must be more than 0".into()));
        assert_eq!(parse_timeout("0"), Err("must be more than 0".into()));
        assert!(parse_lifetime("366d").unwrap_err().contains("maximum"));
        assert!(parse_lifetime("213503982334602d").is_err());
        assert!(parse_lifetime("0s").is_err());
        assert_eq!(parse_lifetime("365d"), Ok(MAX_TOKEN_LIFETIME));
    }

    #[test]
    fn float_seconds_are_converted_fallibly() {
        let max = MAX_TIMEOUT;
        assert_eq!(from_secs_f64(1.5, max), Ok(Duration::from_millis(1500)));
        assert_eq!(from_secs_f64(0.0, max), Ok(Duration::ZERO));
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            1e300,
            18446744073709551615.0,
            max.as_secs_f64() + 1.0,
        ] {
            assert!(from_secs_f64(v, max).is_err(), "{v}");
        }
    }
}
