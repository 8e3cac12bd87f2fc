//! Deterministic content: stable hashing, snowflake ids, timestamps and message texts.
//!
//! Everything here is a pure function of its inputs so that a conversation of any length can be
//! generated lazily from `(seed, peer, index)`: nothing is stored per generated message. The
//! provider modules decide how the content is shaped on the wire; this module only invents it.

use std::time::{Duration, UNIX_EPOCH};

/// Twitter's snowflake epoch (2010-11-04T01:42:54.657Z), in Unix milliseconds.
pub(crate) const SNOWFLAKE_EPOCH_MS: u64 = 1_288_834_974_657;

/// Where generated conversations end (2026-06-01T00:00:00Z), before a per-peer spread of up to
/// thirty days. Fixed rather than "now" so that the same seed gives the same ids on every run.
pub(crate) const BASE_END_MS: u64 = 1_780_272_000_000;
const DAY_MS: u64 = 86_400_000;
/// A conversation's initial messages spread over about two years, unless that makes the average
/// gap longer than a day.
const SPAN_MS: u64 = 730 * DAY_MS;

/// SplitMix64's finaliser: a fast, well-mixed, platform-independent 64-bit hash step. We use our
/// own rather than `DefaultHasher` because the latter's output may change between Rust releases,
/// and ids, texts and cursors must not.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combines two values into one hash; order matters.
pub(crate) const fn mix2(a: u64, b: u64) -> u64 {
    mix64(mix64(a) ^ b.rotate_left(17))
}

/// Stable hash of a byte string (FNV-1a, then mixed).
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h ^ bytes.len() as u64)
}

/// 64 lowercase hex characters derived from `h`, shaped like the SHA-256 request hashes Xquik
/// returns; not cryptographic, only stable.
pub(crate) fn hex64(h: u64) -> String {
    let mut out = String::with_capacity(64);
    let mut x = h;
    for _ in 0..4 {
        x = mix64(x);
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds and `Z`, as Xquik does.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Builds a snowflake id from a wall-clock time and 22 low bits (worker + sequence).
pub(crate) const fn snowflake(ms: u64, low: u64) -> u64 {
    ((ms.saturating_sub(SNOWFLAKE_EPOCH_MS)) << 22) | (low & 0x3F_FFFF)
}

/// When a snowflake id was made, Unix ms (the inverse of [`snowflake`]'s time part).
pub(crate) const fn snowflake_ms(id: u64) -> u64 {
    (id >> 22) + SNOWFLAKE_EPOCH_MS
}

/// A stable numeric X user id for an account handle, in 10^17..10^18 like real modern ids.
/// A handle that is already all digits is taken to be the id itself.
pub(crate) fn account_id(handle: &str) -> u64 {
    let norm = normalize_handle(handle);
    if !norm.is_empty() && norm.len() <= 19 && norm.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = norm.parse::<u64>() {
            return n;
        }
    }
    100_000_000_000_000_000 + hash_bytes(norm.as_bytes()) % 900_000_000_000_000_000
}

/// Handles compare without a leading `@` and without regard to case, as on X.
pub(crate) fn normalize_handle(handle: &str) -> String {
    handle.trim().trim_start_matches('@').to_ascii_lowercase()
}

/// The timeline of one conversation: message `i` (0 = oldest) is sent at
/// `start + i * gap + jitter(i)` with `jitter < gap - 1`, which keeps times, and therefore
/// snowflake ids, strictly increasing whatever the jitter, and lets any index be computed in O(1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeline {
    key: u64,
    start_ms: u64,
    gap_ms: u64,
}

impl Timeline {
    pub(crate) fn new(key: u64, initial: usize) -> Timeline {
        let n = initial.max(1) as u64;
        let gap_ms = (SPAN_MS / n).clamp(2, DAY_MS);
        let end_ms = BASE_END_MS + key % (30 * DAY_MS);
        let start_ms = end_ms.saturating_sub(gap_ms.saturating_mul(initial as u64)).max(SNOWFLAKE_EPOCH_MS + DAY_MS);
        Timeline { key, start_ms, gap_ms }
    }

    /// The spacing of messages on this timeline.
    pub(crate) fn gap_ms(&self) -> u64 {
        self.gap_ms
    }

    pub(crate) fn ms(&self, i: usize) -> u64 {
        let jitter = mix2(self.key ^ 0x7469_6d65, i as u64) % (self.gap_ms - 1);
        self.start_ms + (i as u64) * self.gap_ms + jitter
    }

    pub(crate) fn id(&self, i: usize) -> u64 {
        self.id_at_ms(self.ms(i), i)
    }

    /// The ID of event `i` when it is dated `ms` rather than by the timeline (events added after
    /// start, dated by the world's event clock).
    pub(crate) fn id_at_ms(&self, ms: u64, i: usize) -> u64 {
        snowflake(ms, mix2(self.key ^ 0x0073_6571, i as u64))
    }
}

/// The invented parts of one generated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Generated {
    pub(crate) from_peer: bool,
    pub(crate) text: Option<String>,
    pub(crate) media_url: Option<String>,
    pub(crate) created_at_omitted: bool,
}

/// Generates message `i` of the conversation keyed `key`. `id` is only used to shape media URLs.
/// About 5% carry media and no text, 10% carry media in total, 6% omit `createdAt`.
pub(crate) fn generate(key: u64, i: usize, id: u64) -> Generated {
    let h = mix2(key ^ 0x006d_7367, i as u64);
    // An independent draw per message gives irregular runs from either side, like real chats.
    let from_peer = mix2(key ^ 0x7369_6465, i as u64) % 100 < 52;
    let roll = h % 100;
    let media = roll < 10;
    let text = if roll < 5 { None } else { Some(text(mix64(h))) };
    let media_url = media.then(|| media_url(mix64(h ^ 0x006d_6564_6961), id));
    let created_at_omitted = (h >> 20) % 100 < 6;
    Generated { from_peer, text, media_url, created_at_omitted }
}

fn media_url(h: u64, id: u64) -> String {
    let media_id = id.wrapping_add(1 + h % 4096);
    let (kind, ext) = match h % 10 {
        0 => ("dm_gif", "mp4"),
        1 => ("dm_video", "mp4"),
        2..=3 => ("dm_media", "png"),
        _ => ("dm_media", "jpg"),
    };
    format!("https://pbs.twimg.com/{kind}/{media_id}/{}.{ext}", token(mix64(h), 12, TOKEN_UPPER))
}

const TOKEN_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN_UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn token(mut h: u64, len: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(len);
    for k in 0..len {
        if k % 8 == 7 {
            h = mix64(h);
        }
        out.push(alphabet[(h % alphabet.len() as u64) as usize] as char);
        h /= alphabet.len() as u64;
    }
    out
}

/// The distinctive per-message marker embedded in every generated text (`zq` + 8 lowercase
/// alphanumerics), so a test can grep logs and prove no message text leaked.
pub(crate) fn marker(h: u64) -> String {
    format!("zq{}", token(mix64(h ^ 0x7a71), 8, TOKEN_LOWER))
}

const OPENERS: &[&str] = &[
    "Hey",
    "Hi!",
    "Hello",
    "Bonjour",
    "Hola",
    "Yo",
    "Morning ☀️",
    "Quick question:",
    "Thanks!",
    "Ok",
    "Sure",
    "Ciao",
    "Salut 👋",
    "Hallo",
    "Olá",
    "Привет",
    "",
    "",
    "",
];

const BODIES: &[&str] = &[
    "can you resend the invoice for March?",
    "the export finished, 12,408 rows in total",
    "I'll be in Zürich next week, café on Thursday?",
    "shipping label says \"fragile\" but the box was crushed",
    "the path is C:\\Users\\dana\\exports\\dm_backup.jsonl",
    "regex was ^\\d{3}-\\d{4}$ and it still failed",
    "naïve question: is the résumé upload fixed?",
    "🚀 deploy is out, let me know if anything breaks",
    "👍🏽 works on my side",
    "lol 😂😂",
    "she said 'ship it' so we shipped it",
    "price went from €40 to £35, weird",
    "東京 office confirmed the meeting",
    "we need ≥ 3 approvals before merge",
    "👩‍💻 pairing session at 3pm?",
    "🇫🇷 team is out tomorrow (holiday)",
    "ETA ~15 min, traffic on I-80",
    "did you see the thread? https://x.com/i/status/1893456789012345678",
    "password reset link expired again 🙄",
    "order #A-10293 still shows \"pending\"",
    "ok so the \\n in the template is literal, not a newline",
    "Ünïcödé test: ß, ø, å, ñ, ç",
    "can we move the call to 10:30 CET?",
    "❤️ thanks for the quick fix",
    "the CSV has a trailing comma, \"id\",\"text\",",
    "tab\tseparated\tvalues, sorry",
    "new API key is in the vault, not here",
    "mañana is fine",
    "refund approved ✅",
    "one more thing…",
];

const CLOSERS: &[&str] = &["", "", "", "Thanks!", "🙏", "Cheers", "—D", "talk soon", "x", "(sent from my phone)"];

/// A deterministic, varied chat text containing the marker token. Roughly 1 in 12 texts spans
/// two lines and 1 in 100 is long (several hundred characters).
pub(crate) fn text(h: u64) -> String {
    let pick =
        |salt: u64, list: &[&'static str]| -> &'static str { list[(mix2(h, salt) % list.len() as u64) as usize] };
    let mut parts: Vec<String> = Vec::with_capacity(6);
    let opener = pick(1, OPENERS);
    if !opener.is_empty() {
        parts.push(opener.to_string());
    }
    let bodies = 1 + (mix2(h, 2) % 3) as usize;
    let mut chosen: Vec<usize> = Vec::with_capacity(bodies);
    for k in 0..bodies {
        let mut at = (mix2(h, 10 + k as u64) % BODIES.len() as u64) as usize;
        // Step past phrases already used, so a text never repeats itself.
        while chosen.contains(&at) {
            at = (at + 1) % BODIES.len();
        }
        chosen.push(at);
        parts.push(BODIES[at].to_string());
    }
    let mark = marker(h);
    // The marker moves around so a leak check cannot rely on its position.
    let at = (mix2(h, 3) % (parts.len() as u64 + 1)) as usize;
    parts.insert(at, format!("ref {mark}"));
    let closer = pick(4, CLOSERS);
    if !closer.is_empty() {
        parts.push(closer.to_string());
    }
    let sep = if mix2(h, 5) % 12 == 0 { "\n" } else { " " };
    let mut out = parts.join(sep);
    if mix2(h, 6) % 100 == 0 {
        for k in 0..12 {
            out.push(' ');
            out.push_str(pick(20 + k, BODIES));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_ids_strictly_increase_with_time() {
        for initial in [0usize, 1, 35, 240, 1_000_000] {
            let t = Timeline::new(mix64(initial as u64), initial);
            let mut prev = 0u64;
            let mut prev_ms = 0u64;
            for i in (0..initial.min(5000)).chain(initial..initial + 50) {
                let id = t.id(i);
                assert!(id > prev, "ids must increase at {i}");
                assert!(t.ms(i) > prev_ms);
                assert_eq!((id >> 22) + SNOWFLAKE_EPOCH_MS, t.ms(i), "id encodes its time");
                prev = id;
                prev_ms = t.ms(i);
            }
        }
    }

    #[test]
    fn rfc3339_has_millis_and_z() {
        assert_eq!(rfc3339_ms(BASE_END_MS + 7), "2026-06-01T00:00:00.007Z");
    }

    #[test]
    fn texts_are_varied_and_marked() {
        let mut newline = 0;
        let mut non_ascii = 0;
        let mut quotes = 0;
        let mut backslash = 0;
        let mut distinct = std::collections::HashSet::new();
        for i in 0..2000u64 {
            let t = text(mix64(i));
            let mark_at = t.find("zq").expect("marker present");
            let mark = &t[mark_at..mark_at + 10];
            assert!(mark[2..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            newline += t.contains('\n') as usize;
            non_ascii += (!t.is_ascii()) as usize;
            quotes += t.contains('"') as usize;
            backslash += t.contains('\\') as usize;
            distinct.insert(t);
        }
        assert!(newline > 50 && newline < 400, "{newline}");
        assert!(non_ascii > 300 && quotes > 100 && backslash > 50);
        assert_eq!(distinct.len(), 2000);
    }

    #[test]
    fn optional_fields_have_the_documented_rates() {
        let (mut no_text, mut media, mut no_time) = (0, 0, 0);
        for i in 0..20_000 {
            let g = generate(42, i, 1);
            no_text += g.text.is_none() as usize;
            media += g.media_url.is_some() as usize;
            no_time += g.created_at_omitted as usize;
            assert!(g.text.is_some() || g.media_url.is_some());
        }
        assert!((800..1200).contains(&no_text), "{no_text}");
        assert!((1700..2300).contains(&media), "{media}");
        assert!((1000..1400).contains(&no_time), "{no_time}");
    }

    #[test]
    fn account_ids_are_stable_and_in_range() {
        let a = account_id("@Acme");
        assert_eq!(a, account_id("acme"));
        assert!((100_000_000_000_000_000..1_000_000_000_000_000_000).contains(&a));
        assert_eq!(account_id("12345"), 12345);
    }
}
