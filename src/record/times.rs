//! Provider timestamps into the one record form (RFC 3339 UTC, milliseconds, `Z`), without a date library:
//! every form the providers document or have been seen to send is read here, and a time that none of them
//! describes is None (the caller then derives it from the snowflake ID).
//!
//! Read:
//! - RFC 3339 / ISO 8601: `2026-02-24T10:00:00Z`, fractions of any length, `T` or a space, a UTC offset
//!   as `+05:30`, `+0530` or `+05` (converted to `Z`: `2026-02-24T10:00:00+05:30` is `04:30:00.000Z`), or
//!   no zone at all (taken as UTC);
//! - Twitter's classic form, `Tue Feb 24 10:00:00 +0000 2026`;
//! - epoch numbers, as JSON numbers or digit strings: milliseconds (X's `created_timestamp`), or seconds
//!   when the value is below 10^11 (which as milliseconds would be 1973; Xquik's "Unix timestamp" contract).
//!   A number that would be before 2001 in its unit is not taken as a time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::time::format_time;

/// A provider timestamp in record form; None when no known form reads it.
pub fn normalize_time(s: &str) -> Option<String> {
    parse_time(s).map(format_time)
}

/// A provider timestamp as a point in time; None when no known form reads it.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let ms = epoch(s).or_else(|| rfc3339(s)).or_else(|| twitter(s))?;
    // Before 1970 or after 9999 is no DM's time.
    if !(0..=253_402_300_799_999).contains(&ms) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?))
}

/// Digits, optionally with a fraction: epoch milliseconds, or seconds below 10^11.
fn epoch(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || int.len() > 16 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = int.parse().ok()?;
    // Before 2001 in either unit is no DM's time, just a number: better the snowflake's time than 1970.
    if n < 1_000_000_000 || (100_000_000_000..1_000_000_000_000).contains(&n) {
        return None;
    }
    if n < 100_000_000_000 {
        // Seconds, with up to millisecond precision from the fraction.
        let ms = frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0i64, |a, b| a * 10 + i64::from(b - b'0'));
        n.checked_mul(1000)?.checked_add(ms)
    } else {
        Some(n)
    }
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.fff…]][Z|±HH[:]MM|±HH]`.
fn rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi) = (num(&b[11..13])?, num(&b[14..16])?);
    let mut i = 16;
    let mut sec = 0;
    let mut ms = 0;
    if b.get(i) == Some(&b':') {
        sec = num(b.get(i + 1..i + 3)?)?;
        i += 3;
        if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
            ms =
                b[start..i].iter().chain(std::iter::repeat(&b'0')).take(3).fold(0, |a, d| a * 10 + i64::from(d - b'0'));
        }
    }
    let offset = zone(&b[i..])?;
    let t = civil(y, mo, d, h, mi, sec)?;
    Some((t - offset) * 1000 + ms)
}

/// `Tue Feb 24 10:00:00 +0000 2026`.
fn twitter(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_weekday, month, day, time, zone_part, year] = parts[..] else { return None };
    let mo = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as i64 + 1;
    let d = num(day.as_bytes())?;
    let t = time.as_bytes();
    if t.len() != 8 || t[2] != b':' || t[5] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(&t[0..2])?, num(&t[3..5])?, num(&t[6..8])?);
    let y = num(year.as_bytes())?;
    let offset = zone(zone_part.as_bytes()).filter(|_| !zone_part.is_empty())?;
    Some((civil(y, mo, d, h, mi, sec)? - offset) * 1000)
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A zone suffix as seconds east of UTC: empty (UTC), `Z`, `±HH:MM`, `±HHMM` or `±HH`.
fn zone(b: &[u8]) -> Option<i64> {
    match b {
        [] | [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2] => (num(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => (num(&[*h1, *h2])?, num(&[*m1, *m2])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            Some(if *sign == b'-' { -secs } else { secs })
        }
        _ => None,
    }
}

/// Unix seconds of a UTC civil time, checking every field's range (a leap second counts as the next one).
fn civil(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || d < 1 || d > days_in[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

fn num(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Option<String> {
        normalize_time(s)
    }

    #[test]
    fn rfc3339_forms_and_offsets_become_millis_z() {
        assert_eq!(n("2026-02-24T10:00:00Z").as_deref(), Some("2026-02-24T10:00:00.000Z"));
        assert_eq!(n("2026-02-24T10:00:00.123456Z").as_deref(), Some("2026-02-24T10:00:00.123Z"));
        assert_eq!(n("2026-02-24T10:00:00.5Z").as_deref(), Some("2026-02-24T10:00:00.500Z"));
        assert_eq!(n("2026-02-24T10:00:00+00:00").as_deref(), Some("2026-02-24T10:00:00.000Z"));
        assert_eq!(n("2026-02-24T10:00:00+05:30").as_deref(), Some("2026-02-24T04:30:00.000Z"));
        assert_eq!(n("2026-02-24T10:00:00.250-0800").as_deref(), Some("2026-02-24T18:00:00.250Z"));
        assert_eq!(n("2026-02-24T01:00:00+02").as_deref(), Some("2026-02-23T23:00:00.000Z"));
        assert_eq!(n("2026-02-24 10:00:00").as_deref(), Some("2026-02-24T10:00:00.000Z"), "no zone: UTC");
        assert_eq!(n("2026-02-24T10:00Z").as_deref(), Some("2026-02-24T10:00:00.000Z"));
        assert_eq!(n("2024-02-29T00:00:00Z").as_deref(), Some("2024-02-29T00:00:00.000Z"));
    }

    #[test]
    fn twitter_and_epoch_forms() {
        assert_eq!(n("Tue Feb 24 10:00:00 +0000 2026").as_deref(), Some("2026-02-24T10:00:00.000Z"));
        assert_eq!(n("Tue Feb 24 10:00:00 +0530 2026").as_deref(), Some("2026-02-24T04:30:00.000Z"));
        assert_eq!(n("1771927200000").as_deref(), Some("2026-02-24T10:00:00.000Z"), "epoch ms");
        assert_eq!(n("1771927200123").as_deref(), Some("2026-02-24T10:00:00.123Z"));
        assert_eq!(n("1771927200").as_deref(), Some("2026-02-24T10:00:00.000Z"), "epoch seconds");
        assert_eq!(n("1771927200.5").as_deref(), Some("2026-02-24T10:00:00.500Z"));
    }

    #[test]
    fn nonsense_is_none() {
        for bad in [
            "yesterday",
            "",
            "2026-02-30T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-02-24T25:00:00Z",
            "2026-02-24T10:00:00+99:00",
            "2026-02-24T10:00:00 junk",
            "Tue Foo 24 10:00:00 +0000 2026",
            "-5",
            "5",
            "123456789012",
            "1.2.3",
            "99999999999999999999",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }
}
