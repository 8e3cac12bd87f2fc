//! Wall-clock helpers every layer shares: the one timestamp form of our records and status output,
//! Unix milliseconds, and the UTC day credit budgets count by. A leaf.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; times before it count as 0, so a badly set clock cannot make a
/// caller fail.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 UTC with milliseconds and `Z`, the one timestamp form in our records.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Now, in record form.
pub fn now_string() -> String {
    format_time(SystemTime::now())
}

/// The UTC day of a time, as `YYYY-MM-DD`: the key of the per-day credit counter.
pub fn utc_day(t: SystemTime) -> String {
    let mut day = format_time(t);
    day.truncate(10);
    day
}

/// Time on a clock that never steps (`CLOCK_MONOTONIC`, through [`std::time::Instant`]), counted from its
/// first reading in this process. Ages and intervals are measured on it, so a wall clock set forward and
/// then corrected (or set back) can neither stop nor stretch them. Unit tests move it forward on their own
/// thread with `advance_monotonic`.
pub fn monotonic() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let real = START.get_or_init(std::time::Instant::now).elapsed();
    #[cfg(test)]
    let real = real + fake::AHEAD.with(std::cell::Cell::get);
    real
}

/// Moves [`monotonic`] forward by `by` on the calling thread (unit tests only: a fake clock).
#[cfg(test)]
pub fn advance_monotonic(by: std::time::Duration) {
    fake::AHEAD.with(|a| a.set(a.get() + by));
}

#[cfg(test)]
mod fake {
    thread_local!(pub(super) static AHEAD: std::cell::Cell<std::time::Duration> = const { std::cell::Cell::new(std::time::Duration::ZERO) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_days_and_millis() {
        assert_eq!(utc_day(UNIX_EPOCH), "1970-01-01");
        assert_eq!(utc_day(UNIX_EPOCH + Duration::from_secs(1_771_927_200)), "2026-02-24");
        assert_eq!(utc_day(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29");
        assert_eq!(utc_day(UNIX_EPOCH + Duration::from_secs(1_798_761_599)), "2026-12-31");
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
