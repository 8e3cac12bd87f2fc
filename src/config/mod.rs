//! Configuration: the raw `pipelines.toml` as serde sees it, and the validated [`Config`] the engine uses.
//!
//! Raw structs deny unknown keys and carry `const fn default_*` defaults; `validate` turns them into a
//! [`Config`] in one step and is the only place that resolves paths. Secrets are *not* read here: a
//! pipeline only names where its key lives ([`KeySource`]); [`KeySource::read`] is called by the commands
//! that talk to a provider, so `check` can run without secrets present.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod oauth;
mod raw;
mod secret_file;
pub mod shown;
mod upload;
mod validate;

pub use oauth::{loopback_callback, token_file, OAuthConfig, DEFAULT_SCOPES};
pub use secret_file::{read_secret_file, SecretFileError, SecretOrigin};
pub use upload::{UploadConfig, UploadScheme};

use raw::RawConfig;

/// A config problem, already phrased as the one line a user sees: where, what, and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Which provider API a pipeline speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ProviderKind {
    #[serde(rename = "xquik")]
    Xquik,
    #[serde(rename = "x-api-v2")]
    XApiV2,
    #[serde(rename = "getxapi")]
    GetXApi,
}

impl ProviderKind {
    /// The name used in config files and in every record's `provider` field.
    pub const fn name(self) -> &'static str {
        match self {
            ProviderKind::Xquik => "xquik",
            ProviderKind::XApiV2 => "x-api-v2",
            ProviderKind::GetXApi => "getxapi",
        }
    }

    /// Whether the provider names conversations by an ID of its own (1:1: `"<smaller>-<larger>"` of the two
    /// user IDs), which every record of its pipelines carries.
    pub const fn has_conversation_ids(self) -> bool {
        !matches!(self, ProviderKind::Xquik)
    }

    /// The public base URL used when `base_url` is not set.
    pub const fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Xquik => "https://xquik.com/api/v1",
            ProviderKind::XApiV2 => "https://api.x.com",
            ProviderKind::GetXApi => "https://api.getxapi.com",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The file as written by the user. Every key not listed here is an error.
/// The validated configuration. Paths are absolute or relative to the process's working directory.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the config came from, for messages.
    pub path: PathBuf,
    /// The sled database, the lock file and the control socket live here.
    pub state_dir: PathBuf,
    /// Bounds sled's memory use; sled's own default is 1 GiB, far more than we need.
    pub state_cache_bytes: u64,
    /// Newest history IDs per conversation the seen set keeps exactly (see `state::Store::fold`).
    pub seen_window: u64,
    /// Global cap on conversations synced at once, so many pipelines cannot overload the machine.
    pub max_concurrency: usize,
    /// The bound on a clean stop of `run`.
    pub shutdown_timeout: Duration,
    /// Where `run` serves Prometheus metrics (`GET /metrics`) and `GET /healthz`; None = off (the default).
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub pipelines: Vec<Pipeline>,
}

impl Config {
    /// The pipeline `--pipeline NAME` names, or the only one configured.
    pub fn pipeline(&self, name: Option<&str>) -> Result<&Pipeline, ConfigError> {
        match name {
            Some(n) => self.pipelines.iter().find(|p| p.name == n).ok_or_else(|| self.unknown(n)),
            None if self.pipelines.len() == 1 => Ok(&self.pipelines[0]),
            None => Err(ConfigError(format!(
                "several pipelines are configured ({}); choose one with --pipeline",
                self.names()
            ))),
        }
    }

    /// The pipelines a repeatable `--pipeline NAME` selects (all of them when none is named).
    pub fn select(&self, names: &[String]) -> Result<Vec<&Pipeline>, ConfigError> {
        if let Some(n) = names.iter().find(|n| !self.pipelines.iter().any(|p| &&p.name == n)) {
            return Err(self.unknown(n));
        }
        Ok(self.pipelines.iter().filter(|p| names.is_empty() || names.contains(&p.name)).collect())
    }

    fn names(&self) -> String {
        self.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn unknown(&self, name: &str) -> ConfigError {
        ConfigError(format!(
            "no pipeline named `{}` in {}; configured: {}",
            shown::short(name),
            self.path.display(),
            self.names()
        ))
    }
}

/// Where a secret comes from. The config never holds the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    /// A file; relative names are looked up in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential`) when
    /// that is set, else relative to the config's folder.
    File(PathBuf),
}

impl KeySource {
    /// Reads the secret. The error names the variable or file and the fix, never the value.
    pub fn read(&self, pipeline: &str, what: &str) -> Result<String, ConfigError> {
        match self {
            KeySource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => err(format!(
                    "pipeline `{pipeline}`: the {what} is missing: environment variable {var} is not set; \
                     export {var}=<your key> or set {}",
                    if what == "auth_token" { "auth_token_file" } else { "api_key_file" }
                )),
            },
            KeySource::File(path) => {
                let (full, origin) = match (path.is_relative(), std::env::var_os("CREDENTIALS_DIRECTORY")) {
                    (true, Some(dir)) => (Path::new(&dir).join(path), SecretOrigin::Credential),
                    _ => (path.clone(), SecretOrigin::Plain),
                };
                match read_secret_file(&full, origin).map(String::from_utf8) {
                    Ok(Ok(v)) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                    Ok(Ok(_)) => err(format!(
                        "pipeline `{pipeline}`: the {what} file {} is empty; put the key in it",
                        full.display()
                    )),
                    Ok(Err(_)) => err(format!(
                        "pipeline `{pipeline}`: the {what} file {} is not text; put the key in it",
                        full.display()
                    )),
                    Err(e @ SecretFileError::Refused(_)) => err(format!(
                        "pipeline `{pipeline}`: refusing the {what} file {}: {e}",
                        full.display()
                    )),
                    Err(e) => err(format!(
                        "pipeline `{pipeline}`: cannot read the {what} file {}: {e}; check the path and its permissions",
                        full.display()
                    )),
                }
            }
        }
    }

    /// How to name this source in messages ("$XQUIK_API_KEY", "file /run/credentials/x").
    pub fn describe(&self) -> String {
        match self {
            KeySource::Env(v) => format!("${v}"),
            KeySource::File(p) => format!("file {}", p.display()),
        }
    }
}

/// One configured conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationRef {
    /// A peer's numeric user ID.
    Peer(String),
    /// A peer's `@username`, resolved to an ID through user lookup.
    Username(String),
    /// A provider conversation ID (`conv:` prefix; X API v2 and GetXAPI only).
    ConversationId(String),
}

impl ConversationRef {
    fn parse(s: &str, provider: ProviderKind) -> Result<ConversationRef, String> {
        let s = s.trim();
        if let Some(user) = s.strip_prefix('@') {
            let ok =
                !user.is_empty() && user.len() <= 15 && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            return if ok {
                Ok(ConversationRef::Username(user.to_string()))
            } else {
                Err(format!("`{}` is not a valid @username", shown::short(s)))
            };
        }
        if let Some(id) = s.strip_prefix("conv:") {
            if provider == ProviderKind::Xquik {
                return Err(format!(
                    "`{}`: provider xquik has no conversation IDs; list the peer's user ID or @username",
                    shown::short(s)
                ));
            }
            let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '-');
            return if ok {
                Ok(ConversationRef::ConversationId(id.to_string()))
            } else {
                Err(format!("`{}` is not a valid conversation ID", shown::short(s)))
            };
        }
        if crate::ids::is_numeric_id(s) {
            Ok(ConversationRef::Peer(s.to_string()))
        } else {
            Err(format!(
                "`{}` is neither a numeric user ID nor an @username{}",
                shown::short(s),
                if provider == ProviderKind::Xquik { "" } else { " nor conv:<id>" }
            ))
        }
    }
}

impl fmt::Display for ConversationRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationRef::Peer(id) => f.write_str(id),
            ConversationRef::Username(u) => write!(f, "@{u}"),
            ConversationRef::ConversationId(c) => write!(f, "conv:{c}"),
        }
    }
}

/// How many of a pipeline's history requests may be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// As many as fill the provider's documented budget without drawing 429s (`engine::pace`), bounded by
    /// `max_concurrency`.
    Auto,
    /// Exactly this many at most, pinned.
    Fixed(usize),
}

/// The read budget a pipeline paces its history requests to, per account (`read_rate_limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRateLimit {
    /// The provider's documented budget (Xquik: 300 reads per second; X API v2 and GetXAPI: none fixed,
    /// X's announced windows are followed by the adapter).
    Documented,
    /// No rate gate of our own: only the in-flight limit and the provider's 429s pace the reads.
    Off,
    /// At most `requests` in any `window` (an account on a plan with other limits).
    Custom { requests: u32, window: Duration },
}

/// Retry and timeout policy toward a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The pipeline whose requests these are: `provider::with_retry` counts its retries under this name.
    pub pipeline: String,
    /// One request's whole time, connect to last byte.
    pub request_timeout: Duration,
    /// Attempts after the first, for transient failures only.
    pub max_retries: u32,
    /// First backoff; doubles each attempt, with jitter.
    pub base: Duration,
    /// Cap on one backoff and on an honoured `Retry-After`... within reason (see provider::retry).
    pub max: Duration,
}

/// One validated pipeline. Compared on reload to find the pipelines that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    /// Unique; in every record and every state key.
    pub name: String,
    pub provider: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    /// Where the API key (or X API v2 access token) is; None when the pipeline manages its own OAuth 2.0
    /// tokens (`oauth`).
    pub api_key: Option<KeySource>,
    /// GetXAPI's account `auth_token`; required there, refused elsewhere.
    pub auth_token: Option<KeySource>,
    pub account: String,
    pub conversations: Vec<ConversationRef>,
    /// Cron with seconds, as tokio-cron-scheduler takes it.
    pub schedule: String,
    pub output_dir: PathBuf,
    /// The active file's name; closed segments are named from its stem.
    pub file_name: String,
    pub rotate_max_bytes: u64,
    pub rotate_max_age: Option<Duration>,
    /// How closed segments are stored: `none` (`.jsonl`), `zstd` (`.jsonl.zst`) or `gzip` (`.jsonl.gz`).
    pub compress: crate::sink::Compression,
    /// Whether `sync` also walks older history (the `backfill` command always may).
    pub backfill: bool,
    /// 0 = no limit.
    pub backfill_max_pages_per_run: u64,
    /// 0 = no limit. Provider credits one run of this pipeline may spend (head pass and backfill).
    pub max_credits_per_run: u64,
    /// 0 = no limit. Provider credits this pipeline may spend per UTC day; polling pauses when spent.
    pub max_credits_per_day: u64,
    /// The longest the daemon leaves a quiet conversation unpolled; zero polls every conversation every tick.
    pub adaptive_poll_max: Duration,
    /// Leave `text` out of records, for warehouses that must not hold DM bodies.
    pub redact_text: bool,
    /// Conversations of this pipeline synced at once.
    pub concurrency: Concurrency,
    /// The read budget history requests are paced to.
    pub read_rate_limit: ReadRateLimit,
    pub retry: RetryPolicy,
    /// The largest response body read from the provider; a larger page is refused.
    pub max_response_bytes: u64,
    /// Pages in a row that add nothing new before a pass stops with `cursor_loop`; 0 = no limit.
    pub max_empty_pages: u32,
    /// X API v2 user tokens that renew themselves (SPEC 8.1); None: a static key in `api_key`.
    pub oauth: Option<OAuthConfig>,
    /// Sync every conversation of the account, not only `conversations` (SPEC 8.2).
    pub inbox: bool,
    /// GetXAPI: the `dm/list` tabs the inbox walks (`["all"]` unless `inbox_tabs` says otherwise).
    pub inbox_tabs: Vec<String>,
    /// Where closed segments and their manifests are uploaded (SPEC 9.2); None: they stay local only.
    pub upload: Option<UploadConfig>,
}

impl Pipeline {
    /// The API key's source, or the error a command that needs one reports (a pipeline with `oauth` has
    /// tokens instead).
    pub fn key_source(&self) -> Result<&KeySource, ConfigError> {
        self.api_key.as_ref().ok_or_else(|| {
            ConfigError(format!("pipeline `{}`: no api_key_env or api_key_file is set; set one", self.name))
        })
    }
}

/// Reads and validates a config file. Relative paths inside it are taken from the file's folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!("cannot read config {}: {e}; pass --config PATH or create pipelines.toml", path.display()))
    })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    from_str(&text, path, base)
}

/// Parses and validates config text; `base` is the folder relative paths are resolved against.
pub fn from_str(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(" line {}", text[..s.start.min(text.len())].lines().count().max(1)))
            .unwrap_or_default();
        // toml's own message can span lines; one line is what we promise.
        let msg = e.message().replace('\n', " ");
        ConfigError(format!(
            "config {}{line}: {msg}; fix that key (see the annotated pipelines.toml for every key)",
            path.display()
        ))
    })?;
    validate::validate(raw, path, base)
}

#[cfg(test)]
mod tests;
