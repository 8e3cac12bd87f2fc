//! Pure rotation policy and segment names: when the active file must be closed, how one
//! append is split across generations, and what a closed segment is called.
//!
//! Nothing here touches the file system; `super` (the `Sink`) executes the plans made here
//! and `super::recovery` uses the name parser to find closed segments.

use std::ops::Range;
use std::time::{Duration, SystemTime};

pub(super) use crate::time::unix_ms;

use super::compress::Compression;

/// Every file the sink writes ends with this; the stem is the active file name without it.
const EXT: &str = ".jsonl";

/// The stem of the active file name: closed segments are `<stem>.<stamp>.<seq>.jsonl`.
///
/// A name without `.jsonl` is its own stem, so the active file still never matches the
/// closed-segment glob `<stem>.*.jsonl`.
pub fn stem(file_name: &str) -> &str {
    file_name.strip_suffix(EXT).unwrap_or(file_name)
}

/// The name generation `seq` gets when it is closed at `closed_at`.
#[cfg(test)]
pub(super) fn closed_name(stem: &str, closed_at: SystemTime, seq: u64) -> String {
    closed_name_after(stem, closed_at, seq, None)
}

/// As [`closed_name`], with a stamp never before `floor` (the previous segment's): a wall clock set back
/// must not name a newer generation so that it sorts before an older one. Names then sort in generation
/// order whatever the clock did (equal stamps are ordered by the six-digit `seq`).
pub(super) fn closed_name_after(stem: &str, closed_at: SystemTime, seq: u64, floor: Option<&str>) -> String {
    let mut stamp = utc_stamp(unix_ms(closed_at) / 1000);
    if let Some(floor) = floor.filter(|f| is_stamp(f) && stamp_key(f) > stamp_key(&stamp)) {
        stamp = floor.to_string();
    }
    format!("{stem}.{stamp}.{seq:06}{EXT}")
}

/// Stamps in time order: a year past 9999 is longer, so by length first.
fn stamp_key(s: &str) -> (usize, &str) {
    (s.len(), s)
}

/// The `YYYYMMDDTHHMMSSZ` part of a segment's base name (`<stem>.<stamp>.<seq>`).
pub(super) fn stamp_of<'a>(stem: &str, base: &'a str) -> Option<&'a str> {
    let rest = base.strip_prefix(stem)?.strip_prefix('.')?;
    rest.split_once('.').map(|(stamp, _)| stamp).filter(|s| is_stamp(s))
}

#[cfg(test)]
/// The generation of an uncompressed closed segment of `stem`, or `None` when `name` is
/// anything else (the active file, a compressed segment, a manifest, another pipeline's files,
/// an operator's notes).
pub(super) fn parse_closed_name(stem: &str, name: &str) -> Option<u64> {
    match classify(stem, name)? {
        Entry::Segment { seq, compression: Compression::None, .. } => Some(seq),
        _ => None,
    }
}

/// What a file of `stem` in the output directory is, other than the active file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A closed segment: `<base>.jsonl`, or `.jsonl.zst` / `.jsonl.gz` once compressed.
    Segment {
        /// `<stem>.<stamp>.<seq>`: what the segment's files and its manifest share.
        base: String,
        /// The generation it holds.
        seq: u64,
        /// How it is stored, from its extension.
        compression: Compression,
    },
    /// `<base>.manifest.json`, which says the segment is final and what is in it.
    Manifest {
        /// The segment's base name.
        base: String,
        /// The segment's generation.
        seq: u64,
    },
    /// `.<segment or manifest name>.tmp`: a compression or manifest being written, or left by a
    /// crash. The leading dot and the `.tmp` suffix keep it out of every loader glob.
    Temp,
}

/// Classifies a file name of `stem`'s output; `None` for anything that is not ours.
pub fn classify(stem: &str, name: &str) -> Option<Entry> {
    if let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(TEMP_SUFFIX)) {
        return classify(stem, inner).filter(|e| !matches!(e, Entry::Temp)).map(|_| Entry::Temp);
    }
    let rest = name.strip_prefix(stem)?.strip_prefix('.')?;
    let (stamp, rest) = rest.split_once('.')?;
    let (seq_text, suffix) = rest.split_at(rest.find('.')?);
    if !is_stamp(stamp) || seq_text.len() < 6 || !seq_text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq = seq_text.parse().ok()?;
    let base = name[..name.len() - suffix.len()].to_string();
    if suffix == MANIFEST_SUFFIX {
        return Some(Entry::Manifest { base, seq });
    }
    let compression = Compression::ALL.into_iter().find(|c| suffix.strip_prefix(EXT) == Some(c.suffix()))?;
    Some(Entry::Segment { base, seq, compression })
}

/// What a manifest adds to its segment's base name.
const MANIFEST_SUFFIX: &str = ".manifest.json";
/// What a file being written atomically ends with (after a leading dot).
const TEMP_SUFFIX: &str = ".tmp";

/// The name of a segment stored with `c`.
pub fn segment_name(base: &str, c: Compression) -> String {
    format!("{base}{EXT}{}", c.suffix())
}

/// The name of a segment's manifest.
pub fn manifest_name(base: &str) -> String {
    format!("{base}{MANIFEST_SUFFIX}")
}

/// The name `final_name` is written under before its atomic rename: hidden (a leading dot) and
/// ending in `.tmp`, so it matches none of `*.jsonl`, `*.jsonl.zst`, `*.jsonl.gz`, `*.manifest.json`.
pub fn temp_name(final_name: &str) -> String {
    format!(".{final_name}{TEMP_SUFFIX}")
}

/// `YYYYMMDDTHHMMSSZ`; the year may grow past four digits rather than make a name we
/// could not parse back.
fn is_stamp(s: &str) -> bool {
    let Some((date, time)) = s.strip_suffix('Z').and_then(|s| s.split_once('T')) else {
        return false;
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    date.len() >= 8 && digits(date) && time.len() == 6 && digits(time)
}

/// `YYYYMMDDTHHMMSSZ` for `secs` after the epoch, in UTC.
fn utc_stamp(secs: u64) -> String {
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), done by hand because humantime panics past year 9999 and we never
/// want naming a file to panic.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The configured limits, as the policy needs them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// A line that would push the active file past this many bytes goes to a new generation.
    pub max_bytes: u64,
    /// A non-empty active file this old (since its first line) is closed; `None` = never.
    pub max_age: Option<Duration>,
}

/// What the policy needs to know about the active file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Active {
    /// Bytes in the active file; rotation only ever closes a non-empty one.
    pub len: u64,
    /// Unix ms of the first line in it; the age limit counts from here.
    pub since_ms: Option<u64>,
    /// Its age on the monotonic clock ([`crate::time::monotonic`]): since this process wrote its first
    /// line, or since start-up for a file found then (whose earlier age only the wall clock knows).
    pub age: Option<Duration>,
}

/// Whether the active file has reached the age limit (and so is due to be closed).
pub(super) fn age_due(active: Active, limits: &Limits, now_ms: u64) -> bool {
    let (Some(max_age), Some(since)) = (limits.max_age, active.since_ms) else {
        return false;
    };
    let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    // A wall clock that went backwards saturates to age 0, and one set forward when the first line came
    // and corrected since would hold the age at 0 until it catches up: the monotonic age still grows, so
    // either reaching the limit rotates (a forward step can only close a file early).
    let by_wall = now_ms.saturating_sub(since) >= max_ms;
    let by_monotonic = active.age.is_some_and(|a| a >= max_age);
    active.len > 0 && (by_wall || by_monotonic)
}

/// One `write_all` of an append: the lines that go into one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Batch {
    /// Close the active file before writing this batch.
    pub rotate_first: bool,
    /// Indices (into the append's lines) written by this batch, in order.
    pub lines: Range<usize>,
}

/// Splits one append into batches, one per generation it touches.
///
/// `line_lens` are the on-disk sizes (including the `\n`). A line rotates first when it
/// would push a non-empty file past `max_bytes`, so a closed segment never exceeds the
/// limit unless it holds one oversize line alone, and is never empty. The age limit is
/// checked once, before the first line: an append is too short for age to change inside it.
pub(super) fn plan_append(
    active: Active,
    line_lens: impl IntoIterator<Item = u64>,
    limits: &Limits,
    now_ms: u64,
) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    let mut len = active.len;
    let mut rotate_next = age_due(active, limits, now_ms);
    if rotate_next {
        len = 0;
    }
    for (i, line_len) in line_lens.into_iter().enumerate() {
        if len > 0 && len.saturating_add(line_len) > limits.max_bytes {
            rotate_next = true;
            len = 0;
        }
        match batches.last_mut() {
            Some(batch) if !rotate_next => batch.lines.end = i + 1,
            _ => batches.push(Batch { rotate_first: std::mem::take(&mut rotate_next), lines: i..i + 1 }),
        }
        len = len.saturating_add(line_len);
    }
    batches
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// `*` matches any run of characters, everything else itself: the shell glob loaders use.
    fn glob_match(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                let Some(rest) = name.strip_prefix(head) else {
                    return false;
                };
                (0..=rest.len()).filter(|&i| rest.is_char_boundary(i)).any(|i| glob_match(tail, &rest[i..]))
            }
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const LIMITS: Limits = Limits { max_bytes: 10, max_age: None };

    fn fresh() -> Active {
        Active { len: 0, since_ms: None, age: None }
    }

    fn batch(rotate_first: bool, lines: Range<usize>) -> Batch {
        Batch { rotate_first, lines }
    }

    #[test]
    fn closed_name_has_utc_stamp_and_six_digit_seq() {
        // 2024-02-29T23:59:58Z, a leap day.
        assert_eq!(
            closed_name("xquik-dm-handoff", at(1_709_251_198), 7),
            "xquik-dm-handoff.20240229T235958Z.000007.jsonl"
        );
        assert_eq!(closed_name("s", at(0), 1_234_567), "s.19700101T000000Z.1234567.jsonl");
    }

    #[test]
    fn stamp_agrees_with_humantime() {
        for secs in [0, 59, 951_782_400, 1_709_251_198, 4_102_444_799, 253_402_300_799] {
            let want = humantime::format_rfc3339_seconds(at(secs)).to_string().replace(['-', ':'], "");
            assert_eq!(utc_stamp(secs), want, "secs={secs}");
        }
        // Past humantime's range we still make a name we can parse back.
        let far = closed_name("s", at(253_402_300_800), 3);
        assert_eq!(far, "s.100000101T000000Z.000003.jsonl");
        assert_eq!(parse_closed_name("s", &far), Some(3));
    }

    #[test]
    fn names_round_trip() {
        for seq in [1, 42, 999_999, 1_000_000, u64::MAX] {
            for stem in ["xquik-dm-handoff", "a.b", "x"] {
                let name = closed_name(stem, at(1_700_000_000), seq);
                assert_eq!(parse_closed_name(stem, &name), Some(seq), "{name}");
            }
        }
    }

    #[test]
    fn parse_ignores_everything_else() {
        let stem = "out";
        for name in [
            "out.jsonl",
            "out.20240101T000000Z.00001.jsonl",
            "out.20240101T000000Z.000001.jsonl.tmp",
            "out.20240101T000000.000001.jsonl",
            "out.2024-01-01T000000Z.000001.jsonl",
            "out.20240101T000000Z.00000a.jsonl",
            "out.20240101T000000Z..jsonl",
            "out.x.20240101T000000Z.000001.jsonl",
            "other.20240101T000000Z.000001.jsonl",
            "outer.20240101T000000Z.000001.jsonl",
            ".out.20240101T000000Z.000001.jsonl",
            "out.20240101T000000Z.99999999999999999999999.jsonl",
        ] {
            assert_eq!(parse_closed_name(stem, name), None, "{name}");
        }
        assert_eq!(parse_closed_name(stem, "out.20240101T000000Z.000001.jsonl"), Some(1));
    }

    #[test]
    fn glob_matches_closed_segments_only() {
        for file_name in ["xquik-dm-handoff.jsonl", "a.b.jsonl", "plain"] {
            let stem = stem(file_name);
            let glob = format!("{stem}.*.jsonl");
            assert!(!glob_match(&glob, file_name), "{glob} matches {file_name}");
            for seq in [1, 999_999, 1_000_000] {
                let closed = closed_name(stem, at(1_700_000_000), seq);
                assert!(glob_match(&glob, &closed), "{glob} misses {closed}");
            }
        }
        assert_eq!(stem("xquik-dm-handoff.jsonl"), "xquik-dm-handoff");
        assert_eq!(stem("plain"), "plain");
    }

    #[test]
    fn classify_names_every_file_of_a_segment() {
        let (stem, base) = ("xquik-dm-handoff", "xquik-dm-handoff.20240229T235958Z.000007");
        for c in Compression::ALL {
            let name = segment_name(base, c);
            let want = Entry::Segment { base: base.into(), seq: 7, compression: c };
            assert_eq!(classify(stem, &name), Some(want), "{name}");
        }
        assert_eq!(segment_name(base, Compression::Zstd), format!("{base}.jsonl.zst"));
        assert_eq!(segment_name(base, Compression::Gzip), format!("{base}.jsonl.gz"));
        assert_eq!(classify(stem, &manifest_name(base)), Some(Entry::Manifest { base: base.into(), seq: 7 }));
        assert_eq!(manifest_name(base), format!("{base}.manifest.json"));
        for stranger in [
            format!("{base}.jsonl.bz2"),
            format!("{base}.json"),
            format!(".{base}.jsonl"),
            format!("{base}.jsonl.zst.tmp"),
            format!(".{base}.tmp"),
            "xquik-dm-handoff.jsonl".to_string(),
        ] {
            assert_eq!(classify(stem, &stranger), None, "{stranger}");
        }
    }

    #[test]
    fn temporaries_match_no_loader_glob_and_finished_files_only_their_own() {
        let (stem, base) = ("xquik-dm-handoff", "xquik-dm-handoff.20240229T235958Z.000007");
        let globs = |stem: &str| {
            [
                format!("{stem}.*.jsonl"),
                format!("{stem}.*.jsonl.zst"),
                format!("{stem}.*.jsonl.gz"),
                format!("{stem}.*.manifest.json"),
                "*.jsonl".to_string(),
                "*.jsonl.zst".to_string(),
                "*.jsonl.gz".to_string(),
                "*.manifest.json".to_string(),
            ]
        };
        let finals =
            [segment_name(base, Compression::Zstd), segment_name(base, Compression::Gzip), manifest_name(base)];
        for name in &finals {
            let tmp = temp_name(name);
            assert_eq!(classify(stem, &tmp), Some(Entry::Temp), "{tmp}");
            assert!(tmp.starts_with('.'), "hidden from shell globs: {tmp}");
            for g in globs(stem) {
                assert!(!glob_match(&g, &tmp), "{g} matches the temporary {tmp}");
            }
        }
        // The uncompressed-segment glob keeps matching uncompressed closed segments only.
        let closed_glob = format!("{stem}.*.jsonl");
        assert!(glob_match(&closed_glob, &segment_name(base, Compression::None)));
        for name in &finals {
            assert!(!glob_match(&closed_glob, name), "{closed_glob} matches {name}");
        }
        assert!(glob_match(&format!("{stem}.*.jsonl.zst"), &finals[0]));
        assert!(glob_match(&format!("{stem}.*.jsonl.gz"), &finals[1]));
    }

    #[test]
    fn line_that_fills_the_file_exactly_fits() {
        let active = Active { len: 6, since_ms: Some(0), age: None };
        assert_eq!(plan_append(active, [4], &LIMITS, 0), [batch(false, 0..1)]);
    }

    #[test]
    fn one_byte_more_rotates_first() {
        let active = Active { len: 6, since_ms: Some(0), age: None };
        assert_eq!(plan_append(active, [5], &LIMITS, 0), [batch(true, 0..1)]);
    }

    #[test]
    fn empty_file_never_rotates_even_for_an_oversize_line() {
        assert_eq!(plan_append(fresh(), [50], &LIMITS, 0), [batch(false, 0..1)]);
    }

    #[test]
    fn oversize_line_goes_alone() {
        let plan = plan_append(fresh(), [3, 50, 3, 3, 3, 3], &LIMITS, 0);
        assert_eq!(plan, [batch(false, 0..1), batch(true, 1..2), batch(true, 2..5), batch(true, 5..6)]);
    }

    #[test]
    fn zero_limit_puts_every_line_alone() {
        let limits = Limits { max_bytes: 0, max_age: None };
        let plan = plan_append(fresh(), [1, 1], &limits, 0);
        assert_eq!(plan, [batch(false, 0..1), batch(true, 1..2)]);
    }

    #[test]
    fn no_lines_no_batches() {
        let active = Active { len: 5, since_ms: Some(0), age: None };
        let limits = Limits { max_bytes: 10, max_age: Some(Duration::ZERO) };
        assert!(plan_append(active, [], &limits, 99).is_empty());
    }

    #[test]
    fn age_due_at_the_limit_not_before() {
        let limits = Limits { max_bytes: 100, max_age: Some(Duration::from_secs(60)) };
        let active = Active { len: 1, since_ms: Some(1_000), age: None };
        assert!(!age_due(active, &limits, 60_999));
        assert!(age_due(active, &limits, 61_000));
        // Clock went backwards.
        assert!(!age_due(active, &limits, 0));
        // Empty or never-written files are never due.
        let empty = Active { len: 0, since_ms: Some(0), age: None };
        assert!(!age_due(empty, &limits, u64::MAX));
        let unknown = Active { len: 1, since_ms: None, age: None };
        assert!(!age_due(unknown, &limits, u64::MAX));
        let no_limit = Limits { max_age: None, ..limits };
        assert!(!age_due(active, &no_limit, u64::MAX));
    }

    #[test]
    fn age_rotates_before_the_first_line() {
        let limits = Limits { max_bytes: 10, max_age: Some(Duration::from_secs(1)) };
        let active = Active { len: 2, since_ms: Some(0), age: None };
        assert_eq!(plan_append(active, [5, 5, 5], &limits, 1_000), [batch(true, 0..2), batch(true, 2..3)]);
        assert_eq!(plan_append(active, [5, 5], &limits, 999), [batch(false, 0..1), batch(true, 1..2)]);
    }
}
