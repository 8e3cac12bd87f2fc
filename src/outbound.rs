//! Outbound DMs (SPEC section 6): `send` (one job, or a batch from a JSONL file), `lookup`, `upload-media`,
//! and the send ledger that makes a send job idempotent.
//!
//! A send *job* is (recipient, text, optional media) under an idempotency key: the one given, or a stable
//! hash of (pipeline, recipient, text, media) ([`default_key`]). The key is the job's identity everywhere:
//! in the state's send ledger, in the `Idempotency-Key` header of every write (the upload's key is derived
//! from it, [`media_key`]) and in the `dm_send` record.
//!
//! The ledger entry of a key ([`LedgerEntry`]) goes `prepared` → `recorded`:
//! - `prepared` is committed before the first write request, with the payload's hash (so a key reused for
//!   another message is refused before anything is spent) and, once the upload is done, its media ID (so
//!   a retried job does not upload again);
//! - `recorded` is committed in the same atomic batch as the record's line and its seen key, through the
//!   pipeline's [`Handoff`], after the line is fsynced: the exactly-once rule of the history records.
//!
//! A job found `recorded` sends nothing ("already sent"). A job found `prepared` was interrupted somewhere
//! between its first request and its record (a crash, a kill, a failure): it asks again with the *same*
//! key, and the provider answers with the original write instead of writing again. If the record's line
//! reached the disk but its commit did not, start-up reconciliation has put the line's key in the seen set,
//! and only the ledger is completed. A provider on the legacy contract ignores the key; against one of
//! those, a crash in that window can send twice, which the README says.
//!
//! Writes are held to the account's rate limit ([`WriteLimiter`], 120 per minute for Xquik), retried with
//! the same key when the provider says so (429, 503, …; a rate limit is ridden out for up to
//! [`RATE_LIMIT_BUDGET`]), and a write the provider accepts but has not confirmed (202) is polled until it
//! is final.
//!
//! Privacy: the message text goes to the provider and into the record, nowhere else: not into logs,
//! errors, reports or the ledger (which keeps a hash). [`Job`]'s `Debug` leaves it out.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::Exit;
use crate::cli::{LookupArgs, SendArgs, UploadMediaArgs};
use crate::config::{Config, ConfigError, Pipeline};
use crate::handoff::{Batch, Handoff};
use crate::provider::{with_retry, Client, ErrorClass, ProviderError, Upload, WriteDone, WriteKind, WriteState};
use crate::record::{normalize_time, now_string, Kind, Record};
use crate::state::{Commit, Store};
use crate::sync::Runtime;

/// The largest media Xquik takes (documented for URL uploads; files are held to it too).
pub const MAX_MEDIA_BYTES: u64 = 15_728_640;
/// Xquik's write limit per account: POST/PUT/PATCH, 120 in any 60 s window.
pub const WRITES_PER_WINDOW: usize = 120;
pub const WRITE_WINDOW: Duration = Duration::from_secs(60);
/// How long a rate-limited write keeps being retried (same key) before its job fails.
pub const RATE_LIMIT_BUDGET: Duration = Duration::from_secs(15 * 60);
/// How long a write the provider has not confirmed is polled before its job gives up. The ledger stays
/// `prepared`, so running the job again asks about the same write.
const POLL_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// The shortest wait between two polls, however eager the provider's hint.
const MIN_POLL_WAIT: Duration = Duration::from_millis(50);
/// Credits of one user lookup, and of one send or upload (SPEC section 5: Xquik charges 10 per write; the
/// other providers bill per request, counted as 1).
const LOOKUP_CREDITS: u64 = 1;

fn write_credits(p: &Pipeline) -> u64 {
    match p.provider {
        crate::config::ProviderKind::Xquik => 10,
        _ => 1,
    }
}

/// **Test-only hook.** When this variable is `1`, `send` aborts the process right after the provider has
/// answered a send and before anything about that answer is written (record or ledger), which is the
/// window the ledger exists for. The integration tests use it to prove a rerun sends once and records
/// once. It does nothing else; never set it in production.
pub const CRASH_AFTER_SEND_ENV: &str = "DM_HANDOFF_TEST_CRASH_AFTER_SEND";

// ---------------------------------------------------------------------------------------------
// Jobs

/// One send: to whom, what, with which media, under which key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// A numeric X user ID or `@username`.
    pub to: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaSource>,
    /// None: [`default_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text is what must never reach a log line.
        f.debug_struct("Job")
            .field("to", &self.to)
            .field("text", &format_args!("<{} chars>", self.text.chars().count()))
            .field("media", &self.media)
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

/// Where a job's media comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSource {
    /// A local file (absolute once the request is prepared).
    File(PathBuf),
    /// An `https://` URL the provider downloads.
    Url(String),
}

impl MediaSource {
    /// Reads a `--media` value or a job's `media`: an `https://` URL, or a path taken from `base`.
    pub fn parse(s: &str, base: &Path) -> Result<MediaSource, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("media is empty; give a file path or an https:// URL".into());
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") {
            let rest = &s[8..];
            if rest.is_empty() || rest.starts_with('/') || s.contains(char::is_whitespace) {
                return Err("media URL is not a valid https:// URL".into());
            }
            return Ok(MediaSource::Url(s.to_string()));
        }
        if lower.contains("://") {
            return Err("media URLs must use https://; download the file and give its path instead".into());
        }
        Ok(MediaSource::File(base.join(s)))
    }
}

/// A `send` as the CLI resolved it: every file read and every path absolute, so whoever runs it (this
/// process, or a running daemon reached over the control socket) needs nothing from the caller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    /// The pipeline named with `--pipeline`; None: the only configured one.
    pub pipeline: Option<String>,
    /// The jobs with their number: 1 for a single send, the line number in a jobs file.
    pub jobs: Vec<NumberedJob>,
    /// From `--jobs`: report per job and with a summary.
    pub batch: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NumberedJob {
    pub n: u64,
    pub job: Job,
}

/// Turns `send`'s arguments into a [`SendRequest`]: reads `--text-file` or `--jobs`, resolves paths, and
/// checks everything that can be checked without the network, so a bad batch is refused before any job runs.
pub fn prepare_send(args: &SendArgs) -> Result<SendRequest, ConfigError> {
    let cwd = std::env::current_dir().map_err(|e| ConfigError(format!("cannot read the current folder: {e}")))?;
    let jobs = if let Some(path) = &args.jobs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read jobs file {}: {e}", path.display())))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| cwd.join(p)).unwrap_or(cwd);
        parse_jobs(&text, &base).map_err(|e| ConfigError(format!("jobs file {}: {e}", path.display())))?
    } else {
        let text = match (&args.text, &args.text_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => read_text_file(path)?,
            (None, None) => return Err(ConfigError("give the message with --text or --text-file".into())),
        };
        let to = args.to.clone().ok_or_else(|| ConfigError("give the recipient with --to ID|@username".into()))?;
        let media = match &args.media {
            Some(m) => Some(MediaSource::parse(m, &cwd).map_err(|e| ConfigError(format!("--media: {e}")))?),
            None => None,
        };
        let job = Job { to, text, media, idempotency_key: args.idempotency_key.clone() };
        check_job(&job).map_err(|e| ConfigError(e.to_string()))?;
        // A bad file is the caller's to fix before anything is opened or spent (a batch checks per job).
        if let Some(m) = &job.media {
            check_media(m).map_err(|e| ConfigError(e.to_string()))?;
        }
        vec![NumberedJob { n: 1, job }]
    };
    Ok(SendRequest { pipeline: args.pipeline.clone(), jobs, batch: args.jobs.is_some() })
}

/// Reads a message from `--text-file` (`-`: standard input), without the trailing newline editors add.
pub(crate) fn read_text_file(path: &Path) -> Result<String, ConfigError> {
    let mut text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| ConfigError(format!("cannot read the message from standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read --text-file {}: {e}", path.display())))?
    };
    // Editors end files with a newline the writer did not mean to send.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// A job line as written in a jobs file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    to: String,
    text: String,
    #[serde(default)]
    media: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Parses a jobs file: one JSON object per line, blank lines skipped, jobs numbered by line. Relative media
/// paths are taken from `base` (the jobs file's folder). Errors name the line, never its text.
pub fn parse_jobs(text: &str, base: &Path) -> Result<Vec<NumberedJob>, String> {
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let raw: JobLine = serde_json::from_str(line).map_err(|e| {
            // serde's message can quote a value (the text); say only what kind of problem it is.
            let what = match e.classify() {
                serde_json::error::Category::Data => "wrong fields or types",
                _ => "not valid JSON",
            };
            format!(
                "line {n}: {what}; each line is one JSON object {{\"to\": \"ID or @username\", \"text\": \"…\", \"media\"?: \"path or https URL\", \"idempotency_key\"?: \"…\"}}"
            )
        })?;
        let media = match raw.media.as_deref() {
            Some(m) => Some(MediaSource::parse(m, base).map_err(|e| format!("line {n}: {e}"))?),
            None => None,
        };
        let job = Job { to: raw.to, text: raw.text, media, idempotency_key: raw.idempotency_key };
        check_job(&job).map_err(|e| format!("line {n}: {}: {}", e.code, e.detail))?;
        jobs.push(NumberedJob { n, job });
    }
    if jobs.is_empty() {
        return Err("no jobs in it".into());
    }
    Ok(jobs)
}

/// What can be checked about a job without the network or the files.
fn check_job(job: &Job) -> Result<(), JobError> {
    parse_recipient(&job.to)?;
    if job.text.trim().is_empty() {
        return Err(JobError::input("empty_text", "the message text is empty; X needs some text".into()));
    }
    if let Some(k) = &job.idempotency_key {
        check_key(k)?;
    }
    Ok(())
}

/// A recipient as given: an ID, or a username to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Recipient {
    Id(String),
    Username(String),
}

fn parse_recipient(to: &str) -> Result<Recipient, JobError> {
    let to = to.trim();
    if let Some(name) = to.strip_prefix('@') {
        if !name.is_empty() && name.len() <= 15 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Ok(Recipient::Username(name.to_string()));
        }
    } else if !to.is_empty() && to.len() <= 20 && to.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Recipient::Id(to.to_string()));
    }
    Err(JobError::input("invalid_recipient", format!("`{to}` is not a numeric user ID or @username")))
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

/// FNV-1a, 128 bits: tiny, stable across Rust versions and platforms (unlike `std::hash`), and wide enough
/// that two different jobs never share a default key in practice.
pub fn fnv1a_128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash apart.
            h ^= 0xff;
            h = h.wrapping_mul(PRIME);
        }
        for b in *part {
            h ^= u128::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The default idempotency key of a job: `dmh-` and 32 hex digits of (pipeline, recipient ID, text, media).
/// The same job always gets the same key, here or on another machine, so the provider's own replay
/// protection holds even if the state directory is lost.
pub fn default_key(pipeline: &str, recipient: &str, text: &str, media: Option<&str>) -> String {
    let h = fnv1a_128(&[b"dmh1", pipeline.as_bytes(), recipient.as_bytes(), text.as_bytes(), media_part(media)]);
    format!("dmh-{h:032x}")
}

/// The hash the ledger keeps of what a key was used for: recipient, text, media.
fn payload_hash(recipient: &str, text: &str, media: Option<&str>) -> String {
    let h = fnv1a_128(&[b"payload1", recipient.as_bytes(), text.as_bytes(), media_part(media)]);
    format!("{h:032x}")
}

fn media_part(media: Option<&str>) -> &[u8] {
    // "\u{0}" cannot be a media identity, so "no media" and any media hash apart.
    media.map(str::as_bytes).unwrap_or(b"\0")
}

/// The upload's key, derived from the send's: `<key>-media`, or a hash when that would pass 255 characters.
pub fn media_key(key: &str) -> String {
    if key.len() <= 249 {
        format!("{key}-media")
    } else {
        format!("dmh-media-{:032x}", fnv1a_128(&[key.as_bytes()]))
    }
}

/// Xquik's rule for `Idempotency-Key`: `^[!-~]{1,255}$`.
pub fn check_key(key: &str) -> Result<&str, JobError> {
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        Ok(key)
    } else {
        Err(JobError::input(
            "invalid_idempotency_key",
            "an idempotency key is 1 to 255 printable ASCII characters without spaces".into(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Media checks

/// The media types Xquik takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    Avif,
    Gif,
    Jpeg,
    Png,
    Webp,
    Mp4,
}

impl MediaType {
    fn from_ext(ext: &str) -> Option<MediaType> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "avif" => MediaType::Avif,
            "gif" => MediaType::Gif,
            "jpg" | "jpeg" => MediaType::Jpeg,
            "png" => MediaType::Png,
            "webp" => MediaType::Webp,
            "mp4" => MediaType::Mp4,
            _ => return None,
        })
    }

    /// What the first bytes of a file say it is; None for anything else (HEIC, QuickTime, text, …).
    pub fn sniff(b: &[u8]) -> Option<MediaType> {
        match b {
            [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Some(MediaType::Png),
            [0xff, 0xd8, 0xff, ..] => Some(MediaType::Jpeg),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(MediaType::Gif),
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(MediaType::Webp),
            [_, _, _, _, b'f', b't', b'y', b'p', brand @ ..] if brand.len() >= 4 => match &brand[..4] {
                b"avif" | b"avis" => Some(MediaType::Avif),
                b"isom" | b"iso2" | b"iso4" | b"iso5" | b"iso6" | b"mp41" | b"mp42" | b"avc1" | b"M4V " | b"dash"
                | b"MSNV" | b"f4v " => Some(MediaType::Mp4),
                _ => None,
            },
            _ => None,
        }
    }

    fn mime(self) -> &'static str {
        match self {
            MediaType::Avif => "image/avif",
            MediaType::Gif => "image/gif",
            MediaType::Jpeg => "image/jpeg",
            MediaType::Png => "image/png",
            MediaType::Webp => "image/webp",
            MediaType::Mp4 => "video/mp4",
        }
    }

    fn name(self) -> &'static str {
        match self {
            MediaType::Avif => "AVIF",
            MediaType::Gif => "GIF",
            MediaType::Jpeg => "JPEG",
            MediaType::Png => "PNG",
            MediaType::Webp => "WebP",
            MediaType::Mp4 => "MP4",
        }
    }
}

const SUPPORTED: &str = "AVIF, GIF, JPEG, PNG, WebP or MP4";

/// Media that passed the checks, ready to upload.
#[derive(Clone, Debug)]
pub struct CheckedMedia {
    pub upload: Upload,
    /// Stable identity for keys and the ledger: `url:<url>`, or `file:<name>:<bytes>:<content hash>` (the
    /// content, not the path, so the same file sent from another folder is the same job).
    pub identity: String,
}

/// Checks type and size before any credit is spent: a file by extension, magic bytes and size; a URL by
/// its extension (its size is the provider's to check, up to [`MAX_MEDIA_BYTES`]).
pub fn check_media(src: &MediaSource) -> Result<CheckedMedia, JobError> {
    let bad = |code: &'static str, detail: String| Err(JobError::input(code, detail));
    match src {
        MediaSource::Url(url) => {
            let path = url.split(['?', '#']).next().unwrap_or_default();
            let path = path.get(8..).and_then(|rest| rest.split_once('/')).map(|(_, p)| p).unwrap_or("");
            let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            if MediaType::from_ext(ext).is_none() {
                return bad(
                    "unsupported_media",
                    format!("media URL must end in the file type ({SUPPORTED}: .avif .gif .jpg .png .webp .mp4)"),
                );
            }
            Ok(CheckedMedia { upload: Upload::Url(url.clone()), identity: format!("url:{url}") })
        }
        MediaSource::File(path) => {
            let shown = path.display();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(by_ext) = name.rsplit_once('.').and_then(|(_, e)| MediaType::from_ext(e)) else {
                return bad("unsupported_media", format!("{shown}: not a supported media file ({SUPPORTED})"));
            };
            let meta = match std::fs::metadata(path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => return bad("media_unreadable", format!("{shown} is not a file")),
                Err(e) => return bad("media_unreadable", format!("cannot read {shown}: {e}")),
            };
            if meta.len() == 0 {
                return bad("media_empty", format!("{shown} is empty"));
            }
            if meta.len() > MAX_MEDIA_BYTES {
                return bad(
                    "media_too_large",
                    format!("{shown} is {} bytes; the limit is {MAX_MEDIA_BYTES} (15 MiB)", meta.len()),
                );
            }
            let bytes = std::fs::read(path)
                .map_err(|e| JobError::input("media_unreadable", format!("cannot read {shown}: {e}")))?;
            match MediaType::sniff(&bytes) {
                Some(t) if t == by_ext => {}
                Some(t) => {
                    return bad(
                        "media_type_mismatch",
                        format!(
                            "{shown} is named like {} but its content is {}; rename or convert it",
                            by_ext.name(),
                            t.name()
                        ),
                    )
                }
                None => {
                    return bad(
                        "unsupported_media",
                        format!("{shown}: the content is not {SUPPORTED} (checked its first bytes)"),
                    )
                }
            }
            let identity = format!("file:{name}:{}:{:032x}", bytes.len(), fnv1a_128(&[&bytes]));
            Ok(CheckedMedia { upload: Upload::File { name, mime: by_ext.mime(), bytes }, identity })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limit

/// Holds writes to at most `max` in any `window` (a sliding window, so the provider's fixed window is never
/// exceeded either). Waiters go in turn. Uses tokio time, so tests can pause the clock.
pub struct WriteLimiter {
    max: usize,
    window: Duration,
    /// Start times of the writes in the current window, oldest first. The async lock is held while waiting,
    /// which is what queues waiters fairly.
    recent: tokio::sync::Mutex<VecDeque<Instant>>,
}

impl WriteLimiter {
    pub fn new(max: usize, window: Duration) -> WriteLimiter {
        WriteLimiter { max: max.max(1), window, recent: tokio::sync::Mutex::new(VecDeque::new()) }
    }

    /// Waits until one more write fits, and counts it.
    pub async fn acquire(&self) {
        let mut recent = self.recent.lock().await;
        loop {
            let now = Instant::now();
            while recent.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                recent.pop_front();
            }
            if recent.len() < self.max {
                recent.push_back(now);
                return;
            }
            if let Some(oldest) = recent.front().copied() {
                tracing::debug!(wait_ms = (oldest + self.window - now).as_millis() as u64, "write rate limit: waiting");
                tokio::time::sleep_until(oldest + self.window).await;
            }
        }
    }
}

/// What outbound commands share across jobs (and, in a daemon, across requests): one write limiter per
/// provider account, and the token that stops them.
pub struct SendContext {
    limiters: std::sync::Mutex<HashMap<String, Arc<WriteLimiter>>>,
    pub cancel: CancellationToken,
}

impl SendContext {
    pub fn new(cancel: CancellationToken) -> SendContext {
        SendContext { limiters: std::sync::Mutex::new(HashMap::new()), cancel }
    }

    /// The limiter of the pipeline's account (pipelines sharing an account share it).
    pub fn limiter(&self, p: &Pipeline) -> Arc<WriteLimiter> {
        let key = format!("{}\u{0}{}", p.base_url, p.account.trim_start_matches('@').to_ascii_lowercase());
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_insert_with(|| Arc::new(WriteLimiter::new(WRITES_PER_WINDOW, WRITE_WINDOW))).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// Where a send job is. Stored as JSON under the state's `x` prefix, by pipeline and idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Committed before the first write; the job may have reached the provider.
    Prepared,
    /// The record is in the files (committed with it).
    Recorded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub stage: Stage,
    /// [`payload_hash`] of what this key was first used for; another payload under it is refused.
    pub payload_hash: String,
    /// The recipient's numeric ID.
    pub recipient: String,
    /// The media identity ([`CheckedMedia::identity`]), when the job has media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_source: Option<String>,
    /// Set once uploaded, so a retried job does not upload again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Unix ms of the first attempt.
    pub prepared_at_ms: u64,
    /// Runs of this job that reached the write step.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure's code (never text), cleared when it is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

async fn commit_entry(rt: &Runtime, key: &str, entry: &LedgerEntry) -> Result<(), JobError> {
    let commit = Commit { raw: vec![Store::ledger_entry(&rt.pipeline.name, key, entry)], ..Commit::default() };
    rt.handoff.write(Batch { lines: Vec::new(), commit }).await.map_err(|e| JobError::local(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Outcomes and errors

/// How a job that did not fail ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent (or, `resumed`, found sent by asking the provider again with the same key) and recorded now.
    Sent { message_id: String, recipient: String, key: String, media_id: Option<String>, resumed: bool },
    /// The ledger says it was recorded before; nothing was asked of the provider.
    AlreadySent { message_id: String, recipient: String, key: String },
}

/// Why a job failed, as one line without message text.
#[derive(Clone, Debug)]
pub struct JobError {
    pub kind: FailKind,
    /// The provider's error code (`x_dm_not_allowed`) or ours (`media_too_large`).
    pub code: String,
    /// What it means and what to do.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// Something about the job itself (arguments, media file): nothing was sent.
    Input,
    /// The provider refused or failed; the class says whether the account can go on at all.
    Provider(ErrorClass),
    /// Our own state or files failed.
    Local,
    /// Stopped by a signal.
    Interrupted,
}

impl JobError {
    fn input(code: &str, detail: String) -> JobError {
        JobError { kind: FailKind::Input, code: code.into(), detail }
    }

    fn local(detail: String) -> JobError {
        JobError { kind: FailKind::Local, code: "state_error".into(), detail }
    }

    fn interrupted() -> JobError {
        JobError {
            kind: FailKind::Interrupted,
            code: "interrupted".into(),
            detail: "stopped by a signal; run the job again: it continues with the same idempotency key".into(),
        }
    }

    /// A provider failure, explained for the codes the DM workflow names.
    fn provider(e: &ProviderError, account: &str, key: &str) -> JobError {
        let detail = match e.code.as_str() {
            "x_dm_not_allowed" => format!(
                "the recipient does not accept DMs from account `{account}`; not retried: send from another permitted connected account, or ask the recipient to allow messages"
            ),
            "idempotency_conflict" => format!(
                "the provider already used idempotency key `{key}` for a different message (recipient, text or media); resend the original message with it, or pass a new --idempotency-key"
            ),
            "account_needs_reauth" => format!(
                "account `{account}` must be reconnected in the Xquik dashboard; then run the job again (same key: nothing is sent twice)"
            ),
            "account_restricted" => format!("account `{account}` is restricted by X; send from another connected account"),
            "user_not_found" => "no such X user; check the username or ID".to_string(),
            _ => match e.status {
                Some(s) => format!("{} ({}, HTTP {s})", e.hint, e.endpoint),
                None => format!("{} ({})", e.hint, e.endpoint),
            },
        };
        JobError { kind: FailKind::Provider(e.class), code: e.code.clone(), detail }
    }

    fn fatal(&self) -> bool {
        self.kind == FailKind::Provider(ErrorClass::Fatal)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

fn interrupted_error(endpoint: &'static str) -> ProviderError {
    ProviderError::new(ErrorClass::Conversation, endpoint, None, "interrupted", "stopped by a signal")
}

// ---------------------------------------------------------------------------------------------
// One send job

/// Runs one send job to its end: resolve, check the ledger, upload, send, poll, record. `credits` grows by
/// what the provider charged (or may have: replays are counted too).
pub async fn send_job(rt: &Runtime, job: &Job, ctx: &SendContext, credits: &mut u64) -> Result<Outcome, JobError> {
    let p = &rt.pipeline;
    check_job(job)?;
    let media = job.media.as_ref().map(check_media).transpose()?;
    let recipient = resolve_recipient(rt, &parse_recipient(&job.to)?, ctx, credits).await?;
    let identity = media.as_ref().map(|m| m.identity.as_str());
    let payload = payload_hash(&recipient, &job.text, identity);
    let key = match &job.idempotency_key {
        Some(k) => check_key(k)?.to_string(),
        None => default_key(&p.name, &recipient, &job.text, identity),
    };
    let ledger: Option<LedgerEntry> = rt.store.ledger(&p.name, &key).map_err(|e| JobError::local(e.to_string()))?;
    // A key the provider refused for its payload (409) never sent anything here: another payload may take it.
    let ledger = ledger.filter(|e| {
        e.payload_hash == payload
            || e.stage == Stage::Recorded
            || e.last_error.as_deref() != Some("idempotency_conflict")
    });
    let (mut entry, resumed) = match ledger {
        Some(e) if e.payload_hash != payload => {
            return Err(JobError::input(
                "idempotency_conflict",
                format!(
                    "idempotency key `{key}` was already used in pipeline `{}` for a different message; resend the original message with it, or pass a new --idempotency-key",
                    p.name
                ),
            ))
        }
        Some(e) if e.stage == Stage::Recorded => {
            tracing::info!(pipeline = %p.name, idempotency_key = %key, message_id = ?e.message_id, "already sent and recorded; nothing to do");
            return Ok(Outcome::AlreadySent {
                message_id: e.message_id.unwrap_or_default(),
                recipient: e.recipient,
                key,
            });
        }
        Some(e) => {
            tracing::info!(pipeline = %p.name, idempotency_key = %key, attempts = e.attempts, last_error = ?e.last_error,
                "resuming a send job that did not finish; asking the provider again with the same idempotency key");
            (e, true)
        }
        None => {
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
            let e = LedgerEntry {
                stage: Stage::Prepared,
                payload_hash: payload,
                recipient: recipient.clone(),
                media_source: identity.map(str::to_string),
                media_id: None,
                media_url: None,
                message_id: None,
                sent_at: None,
                prepared_at_ms: now_ms,
                attempts: 0,
                last_error: None,
            };
            (e, false)
        }
    };
    entry.attempts += 1;
    // Durable before any write request: from here on a rerun knows this key may have reached the provider.
    commit_entry(rt, &key, &entry).await?;
    match deliver(rt, job, ctx, &recipient, &key, media.as_ref(), &mut entry, credits).await {
        Ok(done) => record(rt, job, &recipient, &key, entry, done, resumed).await,
        Err(e) => {
            if e.kind != FailKind::Local {
                entry.last_error = Some(e.code.clone());
                if let Err(ce) = commit_entry(rt, &key, &entry).await {
                    tracing::warn!(pipeline = %p.name, idempotency_key = %key, error = %ce, "could not note the failure in the ledger");
                }
            }
            Err(e)
        }
    }
}

/// Upload (once) and send; returns the provider's confirmed send.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    rt: &Runtime,
    job: &Job,
    ctx: &SendContext,
    recipient: &str,
    key: &str,
    media: Option<&CheckedMedia>,
    entry: &mut LedgerEntry,
    credits: &mut u64,
) -> Result<WriteDone, JobError> {
    let p = &rt.pipeline;
    let fail = |e: ProviderError| {
        if ctx.cancel.is_cancelled() {
            JobError::interrupted()
        } else {
            JobError::provider(&e, &p.account, key)
        }
    };
    if let (Some(m), None) = (media, &entry.media_id) {
        let mkey = media_key(key);
        tracing::info!(pipeline = %p.name, idempotency_key = %mkey, "uploading media");
        let done = write(&rt.client, p, ctx, WriteKind::Media, credits, || rt.client.upload_media(&m.upload, &mkey))
            .await
            .map_err(fail)?;
        tracing::info!(pipeline = %p.name, media_id = %done.id, "media uploaded");
        entry.media_id = Some(done.id);
        entry.media_url = done.url;
        commit_entry(rt, key, entry).await?;
    }
    tracing::info!(pipeline = %p.name, recipient, idempotency_key = %key, media_id = ?entry.media_id, "sending DM");
    let media_id = entry.media_id.clone();
    let done = write(&rt.client, p, ctx, WriteKind::DirectMessage, credits, || {
        rt.client.send_dm(recipient, &job.text, media_id.as_deref(), key)
    })
    .await
    .map_err(fail)?;
    if std::env::var_os(CRASH_AFTER_SEND_ENV).is_some_and(|v| v == "1") {
        // Test-only (see CRASH_AFTER_SEND_ENV): the provider has answered; nothing of it is written yet.
        tracing::warn!("{CRASH_AFTER_SEND_ENV}=1: aborting after the provider's answer, before the record (test hook)");
        std::process::abort();
    }
    Ok(done)
}

/// Writes the `dm_send` record and marks the ledger `recorded`, in one commit after the line's fsync.
async fn record(
    rt: &Runtime,
    job: &Job,
    recipient: &str,
    key: &str,
    mut entry: LedgerEntry,
    done: WriteDone,
    resumed: bool,
) -> Result<Outcome, JobError> {
    let p = &rt.pipeline;
    let sent_at = done.at.as_deref().and_then(normalize_time).unwrap_or_else(now_string);
    let rec = send_record(
        p,
        rt.client.send_endpoint(),
        recipient,
        &done.id,
        &job.text,
        entry.media_id.as_deref(),
        key,
        &sent_at,
    );
    let Some(rkey) = rec.key() else {
        return Err(JobError::local("the send record has no key".into()));
    };
    entry.stage = Stage::Recorded;
    entry.message_id = Some(done.id.clone());
    entry.sent_at = Some(sent_at);
    entry.last_error = None;
    // A line that reached the disk before a crash (reconciled into the seen set at start-up) is not written
    // again; only the ledger catches up.
    let on_disk = rt.store.is_seen(&p.name, &rkey).map_err(|e| JobError::local(e.to_string()))?;
    let mut commit = Commit { raw: vec![Store::ledger_entry(&p.name, key, &entry)], ..Commit::default() };
    let lines = if on_disk {
        Vec::new()
    } else {
        commit.seen.push((p.name.clone(), rkey));
        vec![rec.to_line()]
    };
    rt.handoff.write(Batch { lines, commit }).await.map_err(|e| JobError::local(e.to_string()))?;
    tracing::info!(pipeline = %p.name, recipient, message_id = %done.id, idempotency_key = %key, resumed, "DM sent and recorded");
    Ok(Outcome::Sent {
        message_id: done.id,
        recipient: recipient.to_string(),
        key: key.to_string(),
        media_id: entry.media_id,
        resumed,
    })
}

/// The `dm_send` record (SPEC section 4); `media_id`/`media_ids` only with media, `text` unless redacted.
#[allow(clippy::too_many_arguments)]
pub fn send_record(
    p: &Pipeline,
    endpoint: &str,
    recipient: &str,
    message_id: &str,
    text: &str,
    media_id: Option<&str>,
    key: &str,
    sent_at: &str,
) -> Record {
    Record {
        kind: Some(Kind::DmSend),
        provider: p.provider.name().to_string(),
        pipeline: p.name.clone(),
        account: p.account.clone(),
        conversation_user_id: Some(recipient.to_string()),
        // SPEC section 4: every record of a provider with conversation IDs carries it; a 1:1 send's is
        // "<smaller id>-<larger id>" of the two participants, for X API v2 and GetXAPI alike.
        conversation_id: (p.provider != crate::config::ProviderKind::Xquik)
            .then(|| crate::provider::x_api_v2::one_to_one_id(&p.account, recipient))
            .flatten(),
        message_id: Some(message_id.to_string()),
        send_status: Some("sent".into()),
        text: (!p.redact_text).then(|| text.to_string()),
        media_id: media_id.map(str::to_string),
        media_ids: media_id.map(|m| vec![m.to_string()]),
        idempotency_key: Some(key.to_string()),
        source_endpoint: endpoint.to_string(),
        sent_at: Some(sent_at.to_string()),
        ..Record::default()
    }
}

/// A recipient's numeric ID; `@username`s through the state's cache or a lookup (then cached).
async fn resolve_recipient(
    rt: &Runtime,
    to: &Recipient,
    ctx: &SendContext,
    credits: &mut u64,
) -> Result<String, JobError> {
    let name = match to {
        Recipient::Id(id) => return Ok(id.clone()),
        Recipient::Username(name) => name,
    };
    let provider = rt.pipeline.provider.name();
    if let Some(id) = rt.store.resolved_user(provider, name).map_err(|e| JobError::local(e.to_string()))? {
        return Ok(id);
    }
    let user = with_retry(&rt.pipeline.retry, &ctx.cancel, || rt.client.lookup_user(name)).await.map_err(|e| {
        if ctx.cancel.is_cancelled() {
            JobError::interrupted()
        } else {
            JobError::provider(&e, &rt.pipeline.account, "")
        }
    })?;
    *credits += LOOKUP_CREDITS;
    if !user.id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(JobError {
            kind: FailKind::Provider(ErrorClass::Malformed),
            code: "malformed_response".into(),
            detail: "the user lookup returned a non-numeric ID".into(),
        });
    }
    if user.can_dm == Some(false) {
        // A hint only (the docs say so); the send's answer decides, and a refusal there costs nothing.
        tracing::warn!(pipeline = %rt.pipeline.name, username = %name, user_id = %user.id, "user lookup says canDm=false; trying anyway");
    }
    tracing::info!(pipeline = %rt.pipeline.name, username = %name, user_id = %user.id, "resolved @username");
    let commit = Commit { raw: vec![Store::user_entry(provider, name, &user.id)], ..Commit::default() };
    rt.handoff.write(Batch { lines: Vec::new(), commit }).await.map_err(|e| JobError::local(e.to_string()))?;
    Ok(user.id)
}

/// One write to its end: rate limit, retries (same key), polling while pending, and one more ask with the same
/// key when the provider says a failed write is safe to retry. `post` makes the request; it must be repeatable.
async fn write<F, Fut>(
    client: &Client,
    p: &Pipeline,
    ctx: &SendContext,
    kind: WriteKind,
    credits: &mut u64,
    post: F,
) -> Result<WriteDone, ProviderError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<WriteState, ProviderError>>,
{
    let limiter = &*ctx.limiter(p);
    let cancel = &ctx.cancel;
    let post = &post;
    let endpoint = match kind {
        WriteKind::DirectMessage => client.send_endpoint(),
        WriteKind::Media => crate::provider::xquik::UPLOAD_MEDIA,
    };
    let mut asked_again = false;
    loop {
        let state = retry_write(p, cancel, || async move {
            tokio::select! {
                _ = limiter.acquire() => {}
                _ = cancel.cancelled() => return Err(interrupted_error(endpoint)),
            }
            post().await
        })
        .await?;
        *credits += write_credits(p);
        match poll(client, p, cancel, state, kind).await? {
            WriteState::Done(done) => return Ok(done),
            WriteState::Failed { code, safe_to_retry: true } if !asked_again => {
                tracing::warn!(endpoint, code = %code, "the provider says the write failed and is safe to retry; asking again with the same key");
                asked_again = true;
            }
            WriteState::Failed { code, safe_to_retry } => {
                let hint = if safe_to_retry {
                    "the provider says the write failed and nothing was sent; run the job again with a new --idempotency-key"
                } else {
                    "the provider says the write failed and it may have reached X; check the conversation before sending again"
                };
                return Err(ProviderError::new(ErrorClass::Conversation, endpoint, None, code, hint));
            }
            // `poll` returns only final states.
            WriteState::Pending { .. } => {
                return Err(ProviderError::new(
                    ErrorClass::Conversation,
                    endpoint,
                    None,
                    "write_unconfirmed",
                    "still pending",
                ))
            }
        }
    }
}

/// [`with_retry`], plus riding out rate limits: a 429 that outlasts the retry count is waited on again, for
/// up to [`RATE_LIMIT_BUDGET`]. Safe because every attempt carries the same idempotency key.
async fn retry_write<T, F, Fut>(p: &Pipeline, cancel: &CancellationToken, mut op: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let started = Instant::now();
    loop {
        match with_retry(&p.retry, cancel, &mut op).await {
            Err(e) if e.status == Some(429) && started.elapsed() < RATE_LIMIT_BUDGET && !cancel.is_cancelled() => {
                let wait = e.retry_after.unwrap_or(p.retry.max).min(RATE_LIMIT_BUDGET);
                tracing::warn!(pipeline = %p.name, endpoint = e.endpoint, wait_ms = wait.as_millis() as u64,
                    "still rate limited; waiting and asking again with the same idempotency key");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Polls a pending write until it is final (or [`POLL_DEADLINE`] passes).
async fn poll(
    client: &Client,
    p: &Pipeline,
    cancel: &CancellationToken,
    mut state: WriteState,
    kind: WriteKind,
) -> Result<WriteState, ProviderError> {
    let endpoint = crate::provider::xquik::WRITE_ACTION;
    let deadline = Instant::now() + POLL_DEADLINE;
    while let WriteState::Pending { action, after } = &state {
        if Instant::now() >= deadline {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                endpoint,
                None,
                "write_unconfirmed",
                "the provider has not confirmed the write yet; run the job again later: it asks about the same write and never sends twice",
            ));
        }
        tracing::debug!(action = %action, wait_ms = after.as_millis() as u64, "write pending; polling");
        tokio::select! {
            _ = tokio::time::sleep((*after).max(MIN_POLL_WAIT)) => {}
            _ = cancel.cancelled() => return Err(interrupted_error(endpoint)),
        }
        let action = action.clone();
        state = with_retry(&p.retry, cancel, || client.write_action(&action, kind)).await?;
    }
    Ok(state)
}

// ---------------------------------------------------------------------------------------------
// The commands

/// The pipeline a command names, or the only one.
pub fn pick<'a>(cfg: &'a Config, name: Option<&str>) -> Result<&'a Pipeline, ConfigError> {
    let names = || cfg.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    match name {
        Some(n) => cfg.pipelines.iter().find(|p| p.name == n).ok_or_else(|| {
            ConfigError(format!("no pipeline named `{n}` in {}; configured: {}", cfg.path.display(), names()))
        }),
        None if cfg.pipelines.len() == 1 => Ok(&cfg.pipelines[0]),
        None => Err(ConfigError(format!("several pipelines are configured ({}); choose one with --pipeline", names()))),
    }
}

/// Opens one pipeline for sending: its client, the state (taking the lock; exit 3 if another process has it)
/// and its writer (which recovers its files first).
fn open_runtime(cfg: &Config, p: &Pipeline) -> anyhow::Result<Runtime> {
    // Secrets first: a missing key should not leave a state directory behind.
    let client = Client::new(p)?;
    let store = Arc::new(Store::open(&cfg.state_dir, cfg.store_options())?);
    let (handoff, _recovery) = Handoff::open(store.clone(), &p.name, crate::app::sink_config(p))
        .map_err(|e| anyhow::anyhow!("pipeline `{}`: {e}", p.name))?;
    Ok(Runtime { pipeline: p.clone(), client, handoff, store })
}

/// `send`: one job or a batch, in this process.
pub async fn send_command(cfg: &Config, args: SendArgs) -> anyhow::Result<Exit> {
    send_prepared(cfg, &prepare_send(&args)?).await
}

/// Runs a prepared send in this process: opens the pipeline (taking the state lock), runs, closes.
pub async fn send_prepared(cfg: &Config, req: &SendRequest) -> anyhow::Result<Exit> {
    let p = pick(cfg, req.pipeline.as_deref())?;
    let rt = open_runtime(cfg, p)?;
    let cancel = CancellationToken::new();
    crate::app::stop_on_signal(
        cancel.clone(),
        "stopping after the request in flight (an unfinished job resumes with the same key next time)",
    );
    let ctx = SendContext::new(cancel);
    let exit = run_send(&rt, req, &ctx, &mut std::io::stdout(), &mut std::io::stderr()).await;
    rt.handoff.close().await;
    Ok(exit)
}

/// Runs a prepared send with an open pipeline, printing its report to `out` and errors to `err`; for the CLI
/// and for a daemon serving a forwarded `send` (which passes buffers and its own runtime and context).
pub async fn run_send(
    rt: &Runtime,
    req: &SendRequest,
    ctx: &SendContext,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Exit {
    if !req.batch {
        let Some(NumberedJob { job, .. }) = req.jobs.first() else {
            return Exit::Ok;
        };
        let mut credits = 0;
        let result = send_job(rt, job, ctx, &mut credits).await;
        return match result {
            Ok(o) => {
                let _ = writeln!(out, "{}", describe(&o));
                Exit::Ok
            }
            Err(e) => {
                let _ = writeln!(err, "error: send to {}: {e}", job.to.trim());
                match e.kind {
                    FailKind::Input => Exit::Config,
                    FailKind::Interrupted => Exit::Interrupted,
                    _ if e.fatal() => Exit::Auth,
                    _ => Exit::Failed,
                }
            }
        };
    }
    let (mut sent, mut already, mut failed, mut credits) = (0u64, 0u64, 0u64, 0u64);
    let mut stopped: Option<JobError> = None;
    for NumberedJob { n, job } in &req.jobs {
        if let Some(why) = &stopped {
            let _ = writeln!(out, "job {n}: not attempted ({})", why.code);
            continue;
        }
        if ctx.cancel.is_cancelled() {
            stopped = Some(JobError::interrupted());
            let _ = writeln!(out, "job {n}: not attempted (interrupted)");
            continue;
        }
        match send_job(rt, job, ctx, &mut credits).await {
            Ok(o) => {
                match o {
                    Outcome::Sent { .. } => sent += 1,
                    Outcome::AlreadySent { .. } => already += 1,
                }
                let _ = writeln!(out, "job {n}: {}", describe(&o));
            }
            Err(e) => {
                failed += 1;
                let _ = writeln!(out, "job {n}: failed: {e}");
                if e.fatal() || e.kind == FailKind::Interrupted {
                    stopped = Some(e);
                }
            }
        }
        let _ = out.flush();
    }
    let total = req.jobs.len();
    let skipped = total as u64 - sent - already - failed;
    let _ = writeln!(
        out,
        "summary: {total} jobs: {sent} sent, {already} already sent, {failed} failed{}; {credits} credits",
        if skipped > 0 { format!(", {skipped} not attempted") } else { String::new() }
    );
    match &stopped {
        Some(e) if e.kind == FailKind::Interrupted => {
            let _ = writeln!(
                err,
                "error: interrupted; run the same jobs file again to finish (sent jobs are not sent twice)"
            );
            Exit::Interrupted
        }
        Some(e) => {
            let _ = writeln!(err, "error: the batch stopped: {e}");
            Exit::Auth
        }
        None if failed > 0 => {
            let _ = writeln!(
                err,
                "error: {failed} of {total} jobs failed (see their lines); fix them and run the file again: sent jobs are not sent twice"
            );
            Exit::Failed
        }
        None => Exit::Ok,
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Sent { message_id, recipient, key, media_id, resumed } => format!(
            "sent {message_id} to {recipient} (idempotency key {key}{}{})",
            media_id.as_deref().map(|m| format!(", media {m}")).unwrap_or_default(),
            if *resumed { ", resumed with the same key" } else { "" }
        ),
        Outcome::AlreadySent { message_id, recipient, key } => {
            format!("already sent {message_id} to {recipient} (idempotency key {key}); nothing sent again")
        }
    }
}

/// `lookup`: a user by ID or @username. Reads no state, so it works beside a running daemon.
pub async fn lookup_command(cfg: &Config, args: LookupArgs) -> anyhow::Result<Exit> {
    let p = pick(cfg, args.pipeline.as_deref())?;
    let who = args.user.trim();
    let name = match parse_recipient(who) {
        Ok(Recipient::Id(id)) => id,
        Ok(Recipient::Username(u)) => u,
        Err(e) => return Err(ConfigError(e.detail).into()),
    };
    let client = Client::new(p)?;
    let cancel = CancellationToken::new();
    let user = match with_retry(&p.retry, &cancel, || client.lookup_user(&name)).await {
        Ok(u) => u,
        Err(e) => {
            let je = JobError::provider(&e, &p.account, "");
            eprintln!("error: lookup {who}: {je}");
            return Ok(if je.fatal() { Exit::Auth } else { Exit::Failed });
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &user)?;
        writeln!(out)?;
    } else {
        writeln!(out, "id        {}", user.id)?;
        writeln!(out, "username  {}", user.username)?;
        writeln!(out, "name      {}", user.name)?;
        if let Some(can) = user.can_dm {
            writeln!(out, "canDm     {can}")?;
        }
    }
    Ok(Exit::Ok)
}

/// `upload-media`: checks, uploads and prints the media ID. Reads no state.
pub async fn upload_command(cfg: &Config, args: UploadMediaArgs) -> anyhow::Result<Exit> {
    let p = pick(cfg, args.pipeline.as_deref())?;
    let cwd = std::env::current_dir()?;
    let src = MediaSource::parse(&args.source, &cwd).map_err(ConfigError)?;
    let media = check_media(&src).map_err(|e| ConfigError(e.to_string()))?;
    let key = match &args.idempotency_key {
        Some(k) => check_key(k).map_err(|e| ConfigError(e.to_string()))?.to_string(),
        None => format!("dmh-upload-{:032x}", fnv1a_128(&[b"upload1", p.name.as_bytes(), media.identity.as_bytes()])),
    };
    let client = Client::new(p)?;
    let cancel = CancellationToken::new();
    crate::app::stop_on_signal(
        cancel.clone(),
        "stopping after the request in flight (an unfinished job resumes with the same key next time)",
    );
    let ctx = SendContext::new(cancel);
    let mut credits = 0;
    let result =
        write(&client, p, &ctx, WriteKind::Media, &mut credits, || client.upload_media(&media.upload, &key)).await;
    match result {
        Ok(done) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "media_id         {}", done.id)?;
            if let Some(url) = &done.url {
                writeln!(out, "media_url        {url}")?;
            }
            writeln!(out, "idempotency_key  {key}")?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            let je = JobError::provider(&e, &p.account, &key);
            eprintln!("error: upload-media: {je}");
            Ok(if je.fatal() { Exit::Auth } else { Exit::Failed })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_the_reference_vectors() {
        assert_eq!(fnv1a_128(&[b""]), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a_128(&[b"a"]), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn default_keys_are_stable_valid_and_tell_jobs_apart() {
        let k = default_key("support", "44196397", "Thanks, fixed!", None);
        assert_eq!(k, default_key("support", "44196397", "Thanks, fixed!", None));
        assert!(k.starts_with("dmh-") && k.len() == 36, "{k}");
        assert!(check_key(&k).is_ok());
        let others = [
            default_key("sales", "44196397", "Thanks, fixed!", None),
            default_key("support", "44196398", "Thanks, fixed!", None),
            default_key("support", "44196397", "Thanks, fixed", None),
            default_key("support", "44196397", "Thanks, fixed!", Some("url:https://x.test/a.png")),
            default_key("support", "4419639", "7Thanks, fixed!", None),
        ];
        for o in &others {
            assert_ne!(&k, o);
        }
        assert!(!k.contains("Thanks"));
        assert_eq!(media_key(&k), format!("{k}-media"));
        let long = "k".repeat(255);
        assert!(check_key(&media_key(&long)).is_ok());
    }

    #[test]
    fn keys_follow_the_providers_pattern() {
        for good in ["a", "dmh-1", "!~", &"x".repeat(255)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "tab\there", "ünï", &"x".repeat(256)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recipients_are_ids_or_usernames() {
        assert_eq!(parse_recipient(" 44196397 ").unwrap(), Recipient::Id("44196397".into()));
        assert_eq!(parse_recipient("@dana_ops").unwrap(), Recipient::Username("dana_ops".into()));
        for bad in ["dana_ops", "@", "@way_too_long_username", "12a", "", "-5"] {
            assert!(parse_recipient(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_sources_are_https_urls_or_paths() {
        let base = Path::new("/jobs");
        assert_eq!(
            MediaSource::parse("https://cdn.test/a.png", base),
            Ok(MediaSource::Url("https://cdn.test/a.png".into()))
        );
        assert_eq!(MediaSource::parse("pics/a.png", base), Ok(MediaSource::File("/jobs/pics/a.png".into())));
        assert_eq!(MediaSource::parse("/abs/a.png", base), Ok(MediaSource::File("/abs/a.png".into())));
        assert!(MediaSource::parse("http://cdn.test/a.png", base).is_err());
        assert!(MediaSource::parse("ftp://cdn.test/a.png", base).is_err());
        assert!(MediaSource::parse("https:///a.png", base).is_err());
        assert!(MediaSource::parse("  ", base).is_err());
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn magic_bytes_name_the_type() {
        assert_eq!(MediaType::sniff(PNG), Some(MediaType::Png));
        assert_eq!(MediaType::sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some(MediaType::Jpeg));
        assert_eq!(MediaType::sniff(b"GIF89a\x01\0"), Some(MediaType::Gif));
        assert_eq!(MediaType::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(MediaType::Webp));
        assert_eq!(MediaType::sniff(b"\0\0\0\x1cftypavif\0\0\0\0"), Some(MediaType::Avif));
        assert_eq!(MediaType::sniff(b"\0\0\0\x18ftypisom\0\0\x02\0"), Some(MediaType::Mp4));
        assert_eq!(MediaType::sniff(b"\0\0\0\x18ftypheic\0\0\0\0"), None);
        assert_eq!(MediaType::sniff(b"\0\0\0\x14ftypqt  \0\0\0\0"), None);
        assert_eq!(MediaType::sniff(b"hello"), None);
        assert_eq!(MediaType::sniff(b""), None);
    }

    #[test]
    fn media_files_are_checked_by_name_content_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            MediaSource::File(p)
        };
        let ok = check_media(&file("pic.PNG", PNG)).unwrap();
        assert!(matches!(&ok.upload, Upload::File { name, mime: "image/png", .. } if name == "pic.PNG"));
        // Identity follows the content, not the folder.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let moved = check_media(&file("sub/pic.PNG", PNG)).unwrap();
        assert_eq!(ok.identity, moved.identity);
        let code = |src: MediaSource| check_media(&src).unwrap_err().code;
        assert_eq!(code(file("notes.txt", b"hello")), "unsupported_media");
        assert_eq!(code(file("fake.png", b"hello")), "unsupported_media");
        assert_eq!(code(file("photo.png", b"\xff\xd8\xff\xe0")), "media_type_mismatch");
        assert_eq!(code(file("empty.gif", b"")), "media_empty");
        assert_eq!(code(MediaSource::File(dir.path().join("missing.png"))), "media_unreadable");
        let big = dir.path().join("big.mp4");
        std::fs::File::create(&big).unwrap().set_len(MAX_MEDIA_BYTES + 1).unwrap();
        let e = check_media(&MediaSource::File(big)).unwrap_err();
        assert_eq!(e.code, "media_too_large");
        assert_eq!(e.kind, FailKind::Input);
    }

    #[test]
    fn media_urls_are_checked_by_extension() {
        let url = |u: &str| check_media(&MediaSource::Url(u.into()));
        assert!(url("https://cdn.test/a/b.webp?sig=1#x").is_ok());
        assert!(url("https://cdn.test/clip.MP4").is_ok());
        assert_eq!(url("https://cdn.test/a.bmp").unwrap_err().code, "unsupported_media");
        assert_eq!(url("https://cdn.test/noext").unwrap_err().code, "unsupported_media");
        assert_eq!(url("https://cdn.png").unwrap_err().code, "unsupported_media", "a host is not a file name");
    }

    #[test]
    fn job_files_parse_by_line_and_never_echo_text() {
        let text = "{\"to\":\"44196397\",\"text\":\"hello\"}\n\n{\"to\":\"@dana_ops\",\"text\":\"with pic\",\"media\":\"p.png\",\"idempotency_key\":\"k-2\"}\n";
        let jobs = parse_jobs(text, Path::new("/in")).unwrap();
        assert_eq!(jobs.iter().map(|j| j.n).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(jobs[1].job.media, Some(MediaSource::File("/in/p.png".into())));
        assert_eq!(jobs[1].job.idempotency_key.as_deref(), Some("k-2"));
        for (bad, what) in [
            ("{\"to\":\"1\",\"text\":\"secret words\",\"extra\":1}", "line 1"),
            ("{\"to\":1,\"text\":\"secret words\"}", "line 1"),
            ("{\"to\":\"1\",\"text\":\"secret words\"", "line 1"),
            ("{\"to\":\"nobody\",\"text\":\"secret words\"}", "invalid_recipient"),
            ("{\"to\":\"1\",\"text\":\"  \"}", "empty_text"),
            ("{\"to\":\"1\",\"text\":\"secret words\",\"idempotency_key\":\"a b\"}", "invalid_idempotency_key"),
            ("\n\n", "no jobs"),
        ] {
            let e = parse_jobs(bad, Path::new("/in")).unwrap_err();
            assert!(e.contains(what), "{e}");
            assert!(!e.contains("secret"), "the text leaked into: {e}");
        }
        let dbg = format!("{:?}", jobs[0].job);
        assert!(!dbg.contains("hello"), "{dbg}");
    }

    fn pipeline(redact: bool) -> Pipeline {
        let toml = format!(
            "[[pipelines]]\nname = \"support\"\nprovider = \"xquik\"\napi_key_env = \"K\"\naccount = \"acme_support\"\n\
             conversations = [\"1\"]\noutput_dir = \"out\"\nredact_text = {redact}\n"
        );
        crate::config::from_str(&toml, Path::new("p.toml"), Path::new("/")).unwrap().pipelines.remove(0)
    }

    #[test]
    fn send_records_have_the_spec_fields_in_the_spec_order() {
        let rec = send_record(
            &pipeline(false),
            "POST /x/dm/{userId}",
            "44196397",
            "1893726451029384192",
            "Thanks, fixed!",
            Some("1893726451023847424"),
            "dmh-k",
            "2026-11-23T13:00:00.000Z",
        );
        assert_eq!(
            rec.to_line(),
            r#"{"kind":"dm_send","provider":"xquik","pipeline":"support","account":"acme_support","conversation_user_id":"44196397","message_id":"1893726451029384192","send_status":"sent","text":"Thanks, fixed!","media_id":"1893726451023847424","media_ids":["1893726451023847424"],"idempotency_key":"dmh-k","source_endpoint":"POST /x/dm/{userId}","sent_at":"2026-11-23T13:00:00.000Z"}"#
        );
        let k = rec.key().unwrap();
        assert_eq!((k.kind, k.conversation.as_str(), k.id.as_str()), (Kind::DmSend, "44196397", "1893726451029384192"));
        let plain = send_record(&pipeline(true), "POST /x/dm/{userId}", "1", "2", "secret", None, "k", "t");
        let line = plain.to_line();
        assert!(!line.contains("media") && !line.contains("secret") && !line.contains("\"text\""), "{line}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_never_lets_more_than_max_writes_into_a_window() {
        let limiter = WriteLimiter::new(120, WRITE_WINDOW);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..300 {
            limiter.acquire().await;
            times.push(Instant::now() - start);
        }
        // The first 120 go at once; the next 120 a window later; the rest a window after that.
        assert_eq!(times[119], Duration::ZERO);
        assert_eq!(times[120], WRITE_WINDOW);
        assert_eq!(times[240], 2 * WRITE_WINDOW);
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + WRITE_WINDOW).count();
            assert!(in_window <= 120, "{in_window} writes in the window starting at {t:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_frees_slots_as_the_window_slides() {
        let limiter = WriteLimiter::new(2, Duration::from_secs(10));
        let start = Instant::now();
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10), "waits for the first write to leave the window");
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(14));
    }
}
