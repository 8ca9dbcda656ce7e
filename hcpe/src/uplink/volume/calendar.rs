//! Quota periods: pure calendar arithmetic in UTC.

use time::{Date, Month, OffsetDateTime};

/// Start (unix seconds, 00:00 UTC on `reset_day`) of the quota period that contains `now_unix`.
/// `reset_day` must be 1..=28 (clamped otherwise).
pub fn period_start(now_unix: u64, reset_day: u8) -> u64 {
    let day = reset_day.clamp(1, 28);
    let today = OffsetDateTime::from_unix_timestamp(now_unix.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    let (year, month) = if today.day() >= day {
        (today.year(), today.month())
    } else if today.month() == Month::January {
        (today.year() - 1, Month::December)
    } else {
        (today.year(), today.month().previous())
    };
    unix_midnight(year, month, day)
}

/// Start of the period after the one starting at `start` (the same day of the next month).
pub fn next_period_start(start: u64, reset_day: u8) -> u64 {
    let day = reset_day.clamp(1, 28);
    let d = OffsetDateTime::from_unix_timestamp(start.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    let (year, month) =
        if d.month() == Month::December { (d.year() + 1, Month::January) } else { (d.year(), d.month().next()) };
    unix_midnight(year, month, day)
}

fn unix_midnight(year: i32, month: Month, day: u8) -> u64 {
    Date::from_calendar_date(year, month, day)
        .map(|d| d.midnight().assume_utc().unix_timestamp().max(0) as u64)
        .unwrap_or(0)
}
