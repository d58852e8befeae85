//! Fire times across daylight-saving transitions, in Europe/Berlin and
//! America/New_York, following croner's documented rule: a fixed-time
//! expression whose local time is skipped fires once just after the gap, and
//! in a repeated hour fires once (the first pass); an interval expression
//! follows real time.

use chrono::{DateTime, Utc};
use opsconductor_core::schedule::{ScheduleSpec, due_times, upcoming};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn fires(cron: &str, tz: &str, after: &str, n: usize) -> Vec<DateTime<Utc>> {
    let mut s = ScheduleSpec::new("s", "j", cron);
    s.timezone = tz.into();
    let timing = s.timing().unwrap();
    upcoming(&s, &timing, t(after), n)
}

#[test]
fn berlin_spring_forward_fires_the_skipped_time_once_after_the_gap() {
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    assert_eq!(
        fires("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
        vec![
            t("2026-03-28T02:30:00+01:00"),
            t("2026-03-29T03:00:00+02:00"), // right after the gap, once
            t("2026-03-30T02:30:00+02:00"),
        ]
    );
}

#[test]
fn berlin_fall_back_fires_the_repeated_time_once() {
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    assert_eq!(
        fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 3),
        vec![
            t("2026-10-25T02:30:00+02:00"), // the first pass only
            t("2026-10-26T02:30:00+01:00"),
            t("2026-10-27T02:30:00+01:00"),
        ]
    );
}

#[test]
fn new_york_spring_forward_and_fall_back() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
    assert_eq!(
        fires("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 3),
        vec![
            t("2026-03-08T03:00:00-04:00"), // right after the gap, once
            t("2026-03-09T02:30:00-04:00"),
            t("2026-03-10T02:30:00-04:00"),
        ]
    );
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        vec![
            t("2026-11-01T01:30:00-04:00"),
            t("2026-11-02T01:30:00-05:00")
        ]
    );
}

#[test]
fn interval_expressions_follow_real_time_across_transitions() {
    // Every 30 minutes through New York's fall back: both passes of 01:xx.
    let got = fires(
        "*/30 * * * *",
        "America/New_York",
        "2026-11-01T04:45:00Z",
        5,
    );
    assert_eq!(
        got,
        vec![
            t("2026-11-01T01:00:00-04:00"),
            t("2026-11-01T01:30:00-04:00"),
            t("2026-11-01T01:00:00-05:00"),
            t("2026-11-01T01:30:00-05:00"),
            t("2026-11-01T02:00:00-05:00"),
        ]
    );
    // Hourly through Berlin's spring forward: one hour fewer, no double.
    let got = fires("0 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z", 3);
    assert_eq!(
        got,
        vec![
            t("2026-03-29T01:00:00Z"),
            t("2026-03-29T02:00:00Z"),
            t("2026-03-29T03:00:00Z")
        ]
    );
    // The same fire times come out of the scheduler's own walk (due_times)
    // as from `upcoming`, so a tick across a transition fires each once.
    let mut s = ScheduleSpec::new("s", "j", "*/30 * * * *");
    s.timezone = "America/New_York".into();
    let timing = s.timing().unwrap();
    let due = due_times(
        &s,
        &timing,
        t("2026-11-01T05:00:00Z"),
        t("2026-11-01T07:00:00Z"),
        std::time::Duration::from_secs(86400),
    );
    assert_eq!(due.on_time.len(), 5, "{:?}", due.on_time);
    assert_eq!(due.next, Some(t("2026-11-01T07:30:00Z")));
}

#[test]
fn nicknames_and_utc_default() {
    assert_eq!(
        fires("@daily", "UTC", "2026-01-01T10:00:00Z", 2),
        vec![t("2026-01-02T00:00:00Z"), t("2026-01-03T00:00:00Z")]
    );
    assert_eq!(
        fires("0 0 9 * * MON", "Europe/Berlin", "2026-01-01T00:00:00Z", 1),
        vec![t("2026-01-05T09:00:00+01:00")]
    );
}
