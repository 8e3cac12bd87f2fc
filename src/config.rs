//! Configuration: the raw `pipelines.toml` as serde sees it, and the validated [`Config`] the engine uses.
//!
//! Raw structs deny unknown keys and carry `const fn default_*` defaults; [`validate`] turns them into a
//! [`Config`] in one step and is the only place that resolves paths. Secrets are *not* read here: a
//! pipeline only names where its key lives ([`KeySource`]); [`KeySource::read`] is called by the commands
//! that talk to a provider, so `check` can run without secrets present.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Cap on sled's page cache, in bytes.
    #[serde(default = "default_state_cache_bytes")]
    state_cache_bytes: u64,
    /// Newest history IDs per conversation kept as exact seen keys; 0 = never fold.
    #[serde(default = "default_seen_window")]
    seen_window: u64,
    /// Conversations synced at once across all pipelines.
    #[serde(default = "default_max_concurrency")]
    max_concurrency: usize,
    /// How long `run` may take to stop after SIGTERM.
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout: String,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    provider: Option<ProviderKind>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    auth_token_env: Option<String>,
    auth_token_file: Option<PathBuf>,
    account: Option<String>,
    #[serde(default)]
    conversations: Vec<String>,
    #[serde(default = "default_schedule")]
    schedule: String,
    output_dir: Option<PathBuf>,
    #[serde(default = "default_file_name")]
    file_name: String,
    #[serde(default = "default_rotate_max_bytes")]
    rotate_max_bytes: u64,
    #[serde(default = "default_rotate_max_age")]
    rotate_max_age: String,
    #[serde(default)]
    compress: crate::sink::Compression,
    #[serde(default = "default_true")]
    backfill: bool,
    #[serde(default)]
    backfill_max_pages_per_run: u64,
    #[serde(default)]
    max_credits_per_run: u64,
    #[serde(default)]
    max_credits_per_day: u64,
    #[serde(default = "default_adaptive_poll_max")]
    adaptive_poll_max: String,
    #[serde(default)]
    redact_text: bool,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_request_timeout")]
    request_timeout: String,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default = "default_retry_base")]
    retry_base: String,
    #[serde(default = "default_retry_max")]
    retry_max: String,
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
    16
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
const fn default_concurrency() -> usize {
    4
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
    pub pipelines: Vec<Pipeline>,
}

impl Config {
    /// How to open the state database.
    pub fn store_options(&self) -> crate::state::StoreOptions {
        crate::state::StoreOptions { cache_bytes: self.state_cache_bytes, seen_window: self.seen_window }
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
                let full = match (path.is_relative(), std::env::var_os("CREDENTIALS_DIRECTORY")) {
                    (true, Some(dir)) => Path::new(&dir).join(path),
                    _ => path.clone(),
                };
                match std::fs::read_to_string(&full) {
                    Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                    Ok(_) => err(format!(
                        "pipeline `{pipeline}`: the {what} file {} is empty; put the key in it",
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
                Err(format!("`{s}` is not a valid @username"))
            };
        }
        if let Some(id) = s.strip_prefix("conv:") {
            if provider == ProviderKind::Xquik {
                return Err(format!(
                    "`{s}`: provider xquik has no conversation IDs; list the peer's user ID or @username"
                ));
            }
            let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '-');
            return if ok {
                Ok(ConversationRef::ConversationId(id.to_string()))
            } else {
                Err(format!("`{s}` is not a valid conversation ID"))
            };
        }
        if !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_digit()) {
            Ok(ConversationRef::Peer(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is neither a numeric user ID nor an @username{}",
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

/// Retry and timeout policy toward a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
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
    pub api_key: KeySource,
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
    pub concurrency: usize,
    pub retry: RetryPolicy,
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
    validate(raw, path, base)
}

fn parse_duration(key: &str, v: &str, what: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|_| {
        ConfigError(format!("{what}: `{key} = \"{v}\"` is not a duration; write it like \"30s\", \"5m\" or \"1h\""))
    })
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn validate(raw: RawConfig, path: &Path, base: &Path) -> Result<Config, ConfigError> {
    let file = path.display();
    let resolve = |p: &Path| normalize(&base.join(p));
    if raw.max_concurrency == 0 {
        return err(format!("config {file}: max_concurrency must be at least 1"));
    }
    let shutdown_timeout = parse_duration("shutdown_timeout", &raw.shutdown_timeout, &format!("config {file}"))?;
    if raw.pipelines.is_empty() {
        return err(format!(
            "config {file}: no [[pipelines]] defined; add at least one (see the annotated pipelines.toml)"
        ));
    }
    let mut names = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    let mut pipelines = Vec::new();
    for (i, rp) in raw.pipelines.into_iter().enumerate() {
        let at = format!("config {file}: pipelines[{i}]");
        let name = match rp.name {
            Some(n) if is_name(&n) => n,
            Some(n) => return err(format!("{at}: name `{n}` must be 1-64 letters, digits, `-` or `_`; rename it")),
            None => return err(format!("{at}: missing key `name`; give the pipeline a unique name")),
        };
        let at = format!("config {file}: pipeline `{name}`");
        if !names.insert(name.clone()) {
            return err(format!("{at}: the name is used twice; pipeline names must be unique"));
        }
        let Some(provider) = rp.provider else {
            return err(format!("{at}: missing key `provider`; set it to xquik, x-api-v2 or getxapi"));
        };
        let base_url = rp.base_url.unwrap_or_else(|| provider.default_base_url().to_string());
        let base_url = base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return err(format!(
                    "{at}: base_url `{base_url}` is not an http(s) URL; write it like \"https://xquik.com/api/v1\""
                ))
            }
        }
        let api_key = match (rp.api_key_env, rp.api_key_file) {
            (Some(_), Some(_)) => {
                return err(format!("{at}: set api_key_env or api_key_file, not both"));
            }
            (Some(v), None) if looks_like_secret(&v) => {
                return err(format!(
                    "{at}: api_key_env holds what looks like a key; put the key in an environment variable and name the variable here (like XQUIK_API_KEY)"
                ))
            }
            (Some(v), None) if is_env_name(&v) => KeySource::Env(v),
            (Some(v), None) => {
                return err(format!("{at}: api_key_env must name an environment variable (like XQUIK_API_KEY), not `{v}`"))
            }
            (None, Some(p)) => KeySource::File(key_file(p, base)),
            (None, None) => {
                return err(format!(
                    "{at}: missing key `api_key_env`; name the environment variable that holds the API key"
                ))
            }
        };
        let auth_token = match (provider, rp.auth_token_env, rp.auth_token_file) {
            (ProviderKind::GetXApi, Some(v), None) if is_env_name(&v) => Some(KeySource::Env(v)),
            (ProviderKind::GetXApi, None, Some(p)) => Some(KeySource::File(key_file(p, base))),
            (ProviderKind::GetXApi, None, None) => {
                return err(format!(
                    "{at}: provider getxapi needs `auth_token_env` (or auth_token_file) naming the account's auth_token"
                ))
            }
            (ProviderKind::GetXApi, _, _) => {
                return err(format!(
                    "{at}: set one of auth_token_env (an environment variable name) or auth_token_file"
                ))
            }
            (_, None, None) => None,
            (p, _, _) => return err(format!("{at}: auth_token_env/auth_token_file are only for getxapi, not {p}")),
        };
        let account = match rp.account {
            Some(a) if !a.trim().is_empty() => a.trim().trim_start_matches('@').to_string(),
            _ => {
                return err(format!(
                    "{at}: missing key `account`; set the connected sender account ({})",
                    if provider == ProviderKind::Xquik { "its handle" } else { "its numeric user ID" }
                ))
            }
        };
        if provider != ProviderKind::Xquik && !account.chars().all(|c| c.is_ascii_digit()) {
            return err(format!("{at}: provider {provider} needs `account` as the numeric user ID, not `{account}`"));
        }
        let mut conversations = Vec::new();
        let mut seen = BTreeSet::new();
        for c in &rp.conversations {
            let conv =
                ConversationRef::parse(c, provider).map_err(|m| ConfigError(format!("{at}: conversations: {m}")))?;
            if !seen.insert(conv.to_string()) {
                return err(format!("{at}: conversations lists `{conv}` twice; remove one"));
            }
            conversations.push(conv);
        }
        // Parsed by the same scheduler `run` uses, so `check` accepts exactly what the daemon can run.
        let fields = rp.schedule.split_whitespace().count();
        if !(6..=7).contains(&fields)
            || tokio_cron_scheduler::Job::new_async(rp.schedule.as_str(), |_, _| Box::pin(async {})).is_err()
        {
            return err(format!(
                "{at}: schedule `{}` must be cron with seconds (6 fields), like \"*/30 * * * * *\"",
                rp.schedule
            ));
        }
        let output_dir = resolve(&rp.output_dir.unwrap_or_else(|| PathBuf::from("out").join(&name)));
        if !outputs.insert(output_dir.clone()) {
            return err(format!(
                "{at}: output_dir {} is already used by another pipeline; give each pipeline its own",
                output_dir.display()
            ));
        }
        if !rp.file_name.ends_with(".jsonl")
            || rp.file_name.len() <= ".jsonl".len()
            || rp.file_name.contains('/')
            || rp.file_name[..rp.file_name.len() - 6].contains('.')
        {
            return err(format!(
                "{at}: file_name `{}` must be a plain name ending in .jsonl with no other dot, like \"xquik-dm-handoff.jsonl\"",
                rp.file_name
            ));
        }
        if rp.rotate_max_bytes < 1024 {
            return err(format!("{at}: rotate_max_bytes must be at least 1024"));
        }
        let rotate_max_age = match rp.rotate_max_age.trim() {
            "0" | "" | "never" => None,
            v => Some(parse_duration("rotate_max_age", v, &at)?),
        };
        let adaptive_poll_max = match rp.adaptive_poll_max.trim() {
            "0" | "" | "off" => Duration::ZERO,
            v => parse_duration("adaptive_poll_max", v, &at)?,
        };
        if rp.concurrency == 0 {
            return err(format!("{at}: concurrency must be at least 1"));
        }
        let retry = RetryPolicy {
            request_timeout: parse_duration("request_timeout", &rp.request_timeout, &at)?,
            max_retries: rp.max_retries,
            base: parse_duration("retry_base", &rp.retry_base, &at)?,
            max: parse_duration("retry_max", &rp.retry_max, &at)?,
        };
        if retry.request_timeout.is_zero() {
            return err(format!("{at}: request_timeout must be more than 0"));
        }
        pipelines.push(Pipeline {
            name,
            provider,
            base_url,
            api_key,
            auth_token,
            account,
            conversations,
            schedule: rp.schedule,
            output_dir,
            file_name: rp.file_name,
            rotate_max_bytes: rp.rotate_max_bytes,
            rotate_max_age,
            compress: rp.compress,
            backfill: rp.backfill,
            backfill_max_pages_per_run: rp.backfill_max_pages_per_run,
            max_credits_per_run: rp.max_credits_per_run,
            max_credits_per_day: rp.max_credits_per_day,
            adaptive_poll_max,
            redact_text: rp.redact_text,
            concurrency: rp.concurrency,
            retry,
        });
    }
    Ok(Config {
        path: path.to_path_buf(),
        state_dir: resolve(&raw.state_dir),
        state_cache_bytes: raw.state_cache_bytes,
        seen_window: raw.seen_window,
        max_concurrency: raw.max_concurrency,
        shutdown_timeout,
        pipelines,
    })
}

fn key_file(p: PathBuf, base: &Path) -> PathBuf {
    // Relative credential names stay relative when systemd provides a credentials folder; see KeySource::read.
    if p.is_relative() && std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
        p
    } else {
        normalize(&base.join(p))
    }
}

fn is_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Keys pasted where a variable name belongs must not be echoed back into logs or terminals.
fn looks_like_secret(v: &str) -> bool {
    v.starts_with("xq_") || v.starts_with("get-x-api") || v.len() > 40
}

fn is_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "state"

[[pipelines]]
name = "support"
provider = "xquik"
base_url = "http://127.0.0.1:8787/api/v1"
api_key_env = "XQUIK_API_KEY"
account = "acme_support"
conversations = ["44196397", "1234567890"]
schedule = "*/30 * * * * *"
output_dir = "out/support"
rotate_max_bytes = 67108864
"#;

    fn check(text: &str) -> Result<Config, ConfigError> {
        from_str(text, Path::new("/etc/dm/pipelines.toml"), Path::new("/etc/dm"))
    }

    fn check_err(text: &str) -> String {
        check(text).expect_err("config should be rejected").0
    }

    /// The annotated pipelines.toml documents keys as `# key = default`: with every one of them switched on
    /// (but one key source per pipeline) it must still be a valid config, so no documented key is stale.
    #[test]
    fn every_key_the_annotated_file_documents_is_a_real_key() {
        let annotated = include_str!("../pipelines.toml");
        let mut text = String::new();
        let mut documented = 0;
        for line in annotated.lines() {
            let body = line.strip_prefix("# ").unwrap_or(line);
            let key = body
                .split_once(" = ")
                .map(|(k, _)| k)
                .filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            match key {
                // Alternatives to api_key_env: a pipeline takes one.
                Some("api_key_file" | "auth_token_env") => text.push_str(line),
                Some(k) if !k.is_empty() => {
                    documented += 1;
                    text.push_str(body);
                }
                _ => text.push_str(line),
            }
            text.push('\n');
        }
        assert!(documented >= 25, "only {documented} keys found; did the annotation format change?");
        let cfg = check(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.seen_window, 16);
        assert_eq!(cfg.state_cache_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn minimal_spec_form_is_accepted_with_paths_from_the_config_folder() {
        let cfg = check(MINIMAL).unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/etc/dm/state"));
        let p = &cfg.pipelines[0];
        assert_eq!(p.output_dir, PathBuf::from("/etc/dm/out/support"));
        assert_eq!(p.api_key, KeySource::Env("XQUIK_API_KEY".into()));
        assert_eq!(
            p.conversations,
            vec![ConversationRef::Peer("44196397".into()), ConversationRef::Peer("1234567890".into())]
        );
        assert_eq!(p.base_url, "http://127.0.0.1:8787/api/v1");
        assert_eq!(p.file_name, "xquik-dm-handoff.jsonl");
        assert!(p.backfill);
        assert_eq!(p.rotate_max_age, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let e = check_err(&MINIMAL.replace("rotate_max_bytes", "rotate_max_byte"));
        assert!(e.contains("rotate_max_byte") && e.contains("line 12"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn missing_required_keys_say_which() {
        assert!(check_err(&MINIMAL.replace("api_key_env = \"XQUIK_API_KEY\"\n", "")).contains("api_key_env"));
        assert!(check_err(&MINIMAL.replace("account = \"acme_support\"\n", "")).contains("`account`"));
        assert!(check_err(&MINIMAL.replace("provider = \"xquik\"\n", "")).contains("`provider`"));
        assert!(check_err("state_dir = \"s\"\n").contains("no [[pipelines]]"));
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(check_err(&MINIMAL.replace("\"xquik\"", "\"myspace\"")).contains("line"));
        assert!(check_err(&MINIMAL.replace("\"*/30 * * * * *\"", "\"*/5 * * * *\"")).contains("6 fields"));
        assert!(check_err(&MINIMAL.replace("\"44196397\"", "\"not-an-id\"")).contains("not-an-id"));
        assert!(check_err(&MINIMAL.replace("\"1234567890\"", "\"44196397\"")).contains("twice"));
        assert!(check_err(&MINIMAL.replace("http://127.0.0.1:8787/api/v1", "ftp://x")).contains("base_url"));
        assert!(check_err(&MINIMAL.replace("\"44196397\"", "\"conv:1-2\"")).contains("no conversation IDs"));
    }

    #[test]
    fn compress_takes_zstd_gzip_or_none() {
        use crate::sink::Compression;
        assert_eq!(check(MINIMAL).unwrap().pipelines[0].compress, Compression::None);
        for (value, want) in [("zstd", Compression::Zstd), ("gzip", Compression::Gzip), ("none", Compression::None)] {
            let cfg = check(&format!("{MINIMAL}compress = \"{value}\"\n")).unwrap();
            assert_eq!(cfg.pipelines[0].compress, want);
        }
        let e = check_err(&format!("{MINIMAL}compress = \"lz4\"\n"));
        assert!(e.contains("lz4") && e.contains("zstd") && e.contains("line 14"), "{e}");
    }

    #[test]
    fn a_key_value_in_api_key_env_is_not_echoed() {
        let e = check_err(&MINIMAL.replace("\"XQUIK_API_KEY\"", "\"xq_0123456789abcdef\""));
        assert!(!e.contains("xq_0123456789abcdef"), "{e}");
    }

    #[test]
    fn two_pipelines_may_not_share_an_output_dir_or_name() {
        let two = format!(
            "{MINIMAL}\n{}",
            &MINIMAL[MINIMAL.find("[[pipelines]]").unwrap()..].replace("\"support\"", "\"sales\"")
        );
        assert!(check_err(&two).contains("already used"));
        let same = format!(
            "{MINIMAL}\n{}",
            &MINIMAL[MINIMAL.find("[[pipelines]]").unwrap()..].replace("out/support", "out/sales")
        );
        assert!(check_err(&same).contains("used twice"));
    }

    #[test]
    fn usernames_and_conversation_ids() {
        let t = MINIMAL
            .replace("provider = \"xquik\"", "provider = \"x-api-v2\"")
            .replace("acme_support", "987654321")
            .replace("\"1234567890\"", "\"@dana_ops\", \"conv:111-222\"");
        let cfg = check(&t).unwrap();
        assert_eq!(cfg.pipelines[0].conversations[1], ConversationRef::Username("dana_ops".into()));
        assert_eq!(cfg.pipelines[0].conversations[2], ConversationRef::ConversationId("111-222".into()));
    }

    #[test]
    fn getxapi_needs_an_auth_token_source() {
        let t = MINIMAL.replace("\"xquik\"", "\"getxapi\"").replace("acme_support", "987654321");
        assert!(check_err(&t).contains("auth_token_env"));
        let ok = t.replace(
            "api_key_env = \"XQUIK_API_KEY\"",
            "api_key_env = \"GETXAPI_KEY\"\nauth_token_env = \"GETXAPI_AUTH\"",
        );
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn key_source_errors_name_the_variable_not_a_value() {
        let e = KeySource::Env("DM_HANDOFF_TEST_SURELY_UNSET".into()).read("p", "API key").unwrap_err().0;
        assert!(e.contains("DM_HANDOFF_TEST_SURELY_UNSET"));
    }
}
