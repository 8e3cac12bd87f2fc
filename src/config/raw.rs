//! `pipelines.toml` as written: serde structs that deny unknown keys, with `const fn` defaults. Nothing here
//! is validated; [`super::validate`] turns these into the [`super::Config`] the rest of the program sees.

use std::path::PathBuf;

use serde::Deserialize;

use super::ProviderKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    /// Cap on sled's page cache, in bytes.
    #[serde(default = "default_state_cache_bytes")]
    pub(super) state_cache_bytes: u64,
    /// Newest history IDs per conversation kept as exact seen keys; 0 = never fold.
    #[serde(default = "default_seen_window")]
    pub(super) seen_window: u64,
    /// Conversations synced at once across all pipelines.
    #[serde(default = "default_max_concurrency")]
    pub(super) max_concurrency: usize,
    /// How long `run` may take to stop after SIGTERM.
    #[serde(default = "default_shutdown_timeout")]
    pub(super) shutdown_timeout: String,
    /// `host:port` where `run` serves `/metrics` and `/healthz`; None = not served.
    #[serde(default)]
    pub(super) metrics_listen: Option<String>,
    #[serde(default)]
    pub(super) pipelines: Vec<RawPipeline>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) name: Option<String>,
    pub(super) provider: Option<ProviderKind>,
    pub(super) base_url: Option<String>,
    pub(super) api_key_env: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) auth_token_env: Option<String>,
    pub(super) auth_token_file: Option<PathBuf>,
    pub(super) account: Option<String>,
    #[serde(default)]
    pub(super) conversations: Vec<String>,
    #[serde(default = "default_schedule")]
    pub(super) schedule: String,
    pub(super) output_dir: Option<PathBuf>,
    #[serde(default = "default_file_name")]
    pub(super) file_name: String,
    #[serde(default = "default_rotate_max_bytes")]
    pub(super) rotate_max_bytes: u64,
    #[serde(default = "default_rotate_max_age")]
    pub(super) rotate_max_age: String,
    #[serde(default)]
    pub(super) compress: crate::sink::Compression,
    #[serde(default = "default_true")]
    pub(super) backfill: bool,
    #[serde(default)]
    pub(super) backfill_max_pages_per_run: u64,
    #[serde(default)]
    pub(super) max_credits_per_run: u64,
    #[serde(default)]
    pub(super) max_credits_per_day: u64,
    #[serde(default = "default_adaptive_poll_max")]
    pub(super) adaptive_poll_max: String,
    #[serde(default)]
    pub(super) redact_text: bool,
    #[serde(default)]
    pub(super) concurrency: RawConcurrency,
    #[serde(default)]
    pub(super) read_rate_limit: RawRateLimit,
    #[serde(default = "default_request_timeout")]
    pub(super) request_timeout: String,
    #[serde(default = "default_max_retries")]
    pub(super) max_retries: u32,
    #[serde(default = "default_retry_base")]
    pub(super) retry_base: String,
    #[serde(default = "default_retry_max")]
    pub(super) retry_max: String,
    // SPEC 8.1 and 8.2 (validated in `oauth.rs`).
    pub(super) oauth_client_id: Option<String>,
    pub(super) oauth_client_secret_env: Option<String>,
    pub(super) oauth_client_secret_file: Option<PathBuf>,
    pub(super) oauth_redirect_uri: Option<String>,
    pub(super) oauth_authorize_url: Option<String>,
    pub(super) oauth_token_url: Option<String>,
    pub(super) oauth_scopes: Option<String>,
    #[serde(default)]
    pub(super) inbox: bool,
    pub(super) inbox_tabs: Option<Vec<String>>,
    #[serde(default = "default_max_response_bytes")]
    pub(super) max_response_bytes: u64,
    #[serde(default = "default_max_empty_pages")]
    pub(super) max_empty_pages: u32,
    // SPEC 9.2 (validated in `upload.rs`).
    pub(super) upload_url: Option<String>,
    pub(super) upload_endpoint: Option<String>,
    pub(super) upload_region: Option<String>,
    pub(super) upload_allow_http: Option<bool>,
    pub(super) upload_delete_local: Option<bool>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}
const fn default_state_cache_bytes() -> u64 {
    // Measured (bench/run.py, 10^6 messages): 8 MiB → 65 MiB peak RSS, 16 → 90, 64 → 163, at the same speed.
    16 * 1024 * 1024
}
const fn default_seen_window() -> u64 {
    16
}
const fn default_max_concurrency() -> usize {
    // Enough conversations in flight to fill Xquik's 300 reads per second at a few hundred milliseconds per
    // answer; each holds one page at most, so memory stays small.
    256
}
fn default_shutdown_timeout() -> String {
    "10s".into()
}
fn default_schedule() -> String {
    "0 */5 * * * *".into()
}
fn default_file_name() -> String {
    "xquik-dm-handoff.jsonl".into()
}
const fn default_rotate_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_rotate_max_age() -> String {
    "1h".into()
}
const fn default_true() -> bool {
    true
}
/// `concurrency = "auto"` (the default) or a number of requests in flight.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub(super) enum RawConcurrency {
    #[default]
    #[serde(skip)]
    Default,
    Number(i64),
    Word(String),
    /// Anything else, so validation can say what the key takes instead of serde's "did not match".
    Other(serde::de::IgnoredAny),
}
/// `read_rate_limit`: absent (the provider's documented budget), `"documented"`, `"off"`, or
/// `[requests, seconds]`.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRateLimit {
    #[default]
    #[serde(skip)]
    Default,
    Word(String),
    Pair(Vec<f64>),
    /// Anything else, so validation can say what the key takes instead of serde's "did not match".
    Other(serde::de::IgnoredAny),
}
fn default_adaptive_poll_max() -> String {
    "15m".into()
}
fn default_request_timeout() -> String {
    "30s".into()
}
const fn default_max_retries() -> u32 {
    8
}
fn default_retry_base() -> String {
    "500ms".into()
}
fn default_retry_max() -> String {
    "30s".into()
}
const fn default_max_response_bytes() -> u64 {
    // 32 MiB: far above any real page, far below what would hurt the machine.
    32 * 1024 * 1024
}
const fn default_max_empty_pages() -> u32 {
    3
}
