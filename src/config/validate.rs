//! From the raw file to the validated [`Config`] in one step: every check, every default resolved, every
//! path made absolute. The only place that resolves paths.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConcurrency, RawConfig, RawRateLimit};
use super::shown::{short, url};
use super::{
    err, Concurrency, Config, ConfigError, ConversationRef, KeySource, Pipeline, ProviderKind, ReadRateLimit,
    RetryPolicy,
};

/// The smallest `max_response_bytes`: below this, ordinary pages would be refused.
const MIN_RESPONSE_BYTES: u64 = 64 * 1024;

pub(super) fn parse_duration(key: &str, v: &str, what: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|_| {
        ConfigError(format!(
            "{what}: `{key} = \"{}\"` is not a duration; write it like \"30s\", \"5m\" or \"1h\"",
            short(v)
        ))
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

pub(super) fn validate(raw: RawConfig, path: &Path, base: &Path) -> Result<Config, ConfigError> {
    let file = path.display();
    let resolve = |p: &Path| normalize(&base.join(p));
    if raw.max_concurrency == 0 {
        return err(format!("config {file}: max_concurrency must be at least 1"));
    }
    let shutdown_timeout = parse_duration("shutdown_timeout", &raw.shutdown_timeout, &format!("config {file}"))?;
    let metrics_listen = match raw.metrics_listen.as_deref().map(str::trim) {
        None => None,
        Some(v) => Some(v.parse::<std::net::SocketAddr>().map_err(|_| {
            ConfigError(format!(
                "config {file}: metrics_listen `{v}` is not an IP address and port; write it like \"127.0.0.1:9464\""
            ))
        })?),
    };
    if raw.pipelines.is_empty() {
        return err(format!(
            "config {file}: no [[pipelines]] defined; add at least one (see the annotated pipelines.toml)"
        ));
    }
    let state_dir = resolve(&raw.state_dir);
    let mut names = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    let mut pipelines = Vec::new();
    for (i, rp) in raw.pipelines.into_iter().enumerate() {
        let at = format!("config {file}: pipelines[{i}]");
        let name = match rp.name {
            Some(n) if is_name(&n) => n,
            Some(n) => {
                return err(format!("{at}: name `{}` must be 1-64 letters, digits, `-` or `_`; rename it", short(&n)))
            }
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
                    "{at}: base_url `{}` is not an http(s) URL; write it like \"https://xquik.com/api/v1\"",
                    url(&base_url)
                ))
            }
        }
        let raw_oauth = super::oauth::RawOAuth {
            client_id: rp.oauth_client_id,
            client_secret_env: rp.oauth_client_secret_env,
            client_secret_file: rp.oauth_client_secret_file,
            redirect_uri: rp.oauth_redirect_uri,
            authorize_url: rp.oauth_authorize_url,
            token_url: rp.oauth_token_url,
            scopes: rp.oauth_scopes,
        };
        let oauth = super::oauth::validate(raw_oauth, provider, &name, &state_dir, &at, |p| key_file(p, base))?;
        let inbox_tabs = super::oauth::inbox(provider, rp.inbox, rp.inbox_tabs, &at)?;
        let api_key = match (rp.api_key_env, rp.api_key_file) {
            (Some(_), _) | (_, Some(_)) if oauth.is_some() => {
                return err(format!(
                    "{at}: with oauth_client_id the pipeline manages its own tokens; remove api_key_env / api_key_file"
                ));
            }
            (None, None) if oauth.is_some() => None,
            (Some(_), Some(_)) => {
                return err(format!("{at}: set api_key_env or api_key_file, not both"));
            }
            (Some(v), None) if looks_like_secret(&v) => {
                return err(format!(
                    "{at}: api_key_env holds what looks like a key; put the key in an environment variable and name the variable here (like XQUIK_API_KEY)"
                ))
            }
            (Some(v), None) if is_env_name(&v) => Some(KeySource::Env(v)),
            (Some(v), None) => {
                return err(format!(
                    "{at}: api_key_env must name an environment variable (like XQUIK_API_KEY), not `{}`",
                    short(&v)
                ))
            }
            (None, Some(p)) => Some(KeySource::File(key_file(p, base))),
            (None, None) => {
                return err(format!(
                    "{at}: missing key `api_key_env`; name the environment variable that holds the API key{}",
                    if provider == ProviderKind::XApiV2 {
                        " (or set oauth_client_id to let the pipeline manage its own tokens)"
                    } else {
                        ""
                    }
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
        if let Some(c) = super::shown::first_invisible(&account) {
            return err(format!(
                "{at}: `account` contains {c}, a control or text-direction character that would be written into \
                 every record; write the account's plain handle or ID"
            ));
        }
        if provider != ProviderKind::Xquik && !account.chars().all(|c| c.is_ascii_digit()) {
            return err(format!(
                "{at}: provider {provider} needs `account` as the numeric user ID, not `{}`",
                short(&account)
            ));
        }
        let mut conversations = Vec::new();
        let mut seen = BTreeSet::new();
        for c in &rp.conversations {
            let conv =
                ConversationRef::parse(c, provider).map_err(|m| ConfigError(format!("{at}: conversations: {m}")))?;
            if !seen.insert(conv.to_string()) {
                return err(format!("{at}: conversations lists `{}` twice; remove one", short(&conv.to_string())));
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
                short(&rp.schedule)
            ));
        }
        let output_dir = resolve(&rp.output_dir.unwrap_or_else(|| PathBuf::from("out").join(&name)));
        // Compared as the folder they really are, whatever the spelling: symlinks and `..` resolved.
        if !outputs.insert(real_path(&output_dir)) {
            return err(format!(
                "{at}: output_dir {} is already used by another pipeline (the same folder, perhaps through a symlink); give each pipeline its own",
                output_dir.display()
            ));
        }
        if let Some(c) = super::shown::first_invisible(&rp.file_name) {
            return err(format!("{at}: `file_name` contains {c}, a control or text-direction character; rename it"));
        }
        if !rp.file_name.ends_with(".jsonl")
            || rp.file_name.len() <= ".jsonl".len()
            || rp.file_name.contains('/')
            || rp.file_name[..rp.file_name.len() - 6].contains('.')
        {
            return err(format!(
                "{at}: file_name `{}` must be a plain name ending in .jsonl with no other dot, like \"xquik-dm-handoff.jsonl\"",
                short(&rp.file_name)
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
        let concurrency = match rp.concurrency {
            RawConcurrency::Default => Concurrency::Auto,
            RawConcurrency::Word(w) if w == "auto" => Concurrency::Auto,
            RawConcurrency::Number(n) if n >= 1 => Concurrency::Fixed(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => return err(format!("{at}: concurrency must be \"auto\" or a number of at least 1")),
        };
        let read_rate_limit = match rp.read_rate_limit {
            RawRateLimit::Default => ReadRateLimit::Documented,
            RawRateLimit::Word(w) if w == "documented" => ReadRateLimit::Documented,
            RawRateLimit::Word(w) if w == "off" => ReadRateLimit::Off,
            RawRateLimit::Pair(p)
                if p.len() == 2
                    && p[0] >= 1.0
                    && p[0].fract() == 0.0
                    && p[0] <= f64::from(u32::MAX)
                    && p[1] > 0.0
                    && p[1] <= 86_400.0 =>
            {
                ReadRateLimit::Custom { requests: p[0] as u32, window: Duration::from_secs_f64(p[1]) }
            }
            _ => {
                return err(format!(
                    "{at}: read_rate_limit must be \"documented\", \"off\" or [requests, seconds], like [300, 1]"
                ))
            }
        };
        let retry = RetryPolicy {
            pipeline: name.clone(),
            request_timeout: parse_duration("request_timeout", &rp.request_timeout, &at)?,
            max_retries: rp.max_retries,
            base: parse_duration("retry_base", &rp.retry_base, &at)?,
            max: parse_duration("retry_max", &rp.retry_max, &at)?,
        };
        if retry.request_timeout.is_zero() {
            return err(format!("{at}: request_timeout must be more than 0"));
        }
        if rp.max_response_bytes < MIN_RESPONSE_BYTES {
            return err(format!("{at}: max_response_bytes must be at least {MIN_RESPONSE_BYTES} (64 KiB)"));
        }
        let upload = super::upload::validate(
            &at,
            super::upload::RawUpload {
                url: rp.upload_url,
                endpoint: rp.upload_endpoint,
                region: rp.upload_region,
                allow_http: rp.upload_allow_http,
                delete_local: rp.upload_delete_local,
            },
        )?;
        pipelines.push(Pipeline {
            upload,
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
            concurrency,
            read_rate_limit,
            retry,
            oauth,
            inbox: rp.inbox,
            inbox_tabs,
            max_response_bytes: rp.max_response_bytes,
            max_empty_pages: rp.max_empty_pages,
        });
    }
    let state_dir = resolve(&raw.state_dir);
    check_folders(&file.to_string(), &state_dir, &pipelines)?;
    check_shared_pace(&file.to_string(), &pipelines)?;
    Ok(Config {
        path: path.to_path_buf(),
        state_dir,
        state_cache_bytes: raw.state_cache_bytes,
        seen_window: raw.seen_window,
        max_concurrency: raw.max_concurrency,
        shutdown_timeout,
        metrics_listen,
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

pub(super) fn is_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Folders that would make dm-handoff write where it must not: a state directory or output folder that is
/// a file, an output folder that is `/`, or one that is the state directory, inside it or around it (by any
/// spelling or symlink).
fn check_folders(file: &str, state_dir: &Path, pipelines: &[Pipeline]) -> Result<(), ConfigError> {
    if let Ok(m) = std::fs::metadata(state_dir) {
        if !m.is_dir() {
            return err(format!(
                "config {file}: state_dir {} is a file, not a folder; point state_dir at a folder (it is created if missing)",
                state_dir.display()
            ));
        }
    }
    let state = real_path(state_dir);
    for p in pipelines {
        let at = format!("config {file}: pipeline `{}`", p.name);
        let out = real_path(&p.output_dir);
        if out.parent().is_none() {
            return err(format!(
                "{at}: output_dir {} is the root folder; give the pipeline a folder of its own, like \"out/{}\"",
                p.output_dir.display(),
                p.name
            ));
        }
        let relation = if out == state {
            Some("is the state_dir")
        } else if out.starts_with(&state) {
            Some("is inside the state_dir")
        } else if state.starts_with(&out) {
            Some("contains the state_dir")
        } else {
            None
        };
        if let Some(relation) = relation {
            return err(format!(
                "{at}: output_dir {} {relation} ({}); loaders must never see the state database: keep the two apart, like state_dir = \"state\" and output_dir = \"out/{}\"",
                p.output_dir.display(),
                state_dir.display(),
                p.name
            ));
        }
        if let Ok(m) = std::fs::metadata(&p.output_dir) {
            if !m.is_dir() {
                return err(format!(
                    "{at}: output_dir {} is a file, not a folder; point output_dir at a folder (it is created if missing)",
                    p.output_dir.display()
                ));
            }
        }
    }
    Ok(())
}

/// Pipelines that read as one account share its read pace (`engine::pace`), which is built from the first
/// one opened: two that disagree on `read_rate_limit` would get whichever came first. Refused instead.
fn check_shared_pace(file: &str, pipelines: &[Pipeline]) -> Result<(), ConfigError> {
    let shown = |r: &super::ReadRateLimit| match r {
        super::ReadRateLimit::Documented => "\"documented\"".to_string(),
        super::ReadRateLimit::Off => "\"off\"".to_string(),
        super::ReadRateLimit::Custom { requests, window } => format!("[{requests}, {}]", window.as_secs_f64()),
    };
    let mut first: std::collections::HashMap<(&str, &str, String), &Pipeline> = std::collections::HashMap::new();
    for p in pipelines {
        let account = (p.provider.name(), p.base_url.as_str(), p.account.to_ascii_lowercase());
        match first.get(&account) {
            Some(q) if q.read_rate_limit != p.read_rate_limit => {
                return err(format!(
                    "config {file}: pipelines `{}` and `{}` read as the same {} account but set different \
                     read_rate_limit ({} and {}); they share one read budget, so give both the same read_rate_limit",
                    q.name,
                    p.name,
                    p.provider.name(),
                    shown(&q.read_rate_limit),
                    shown(&p.read_rate_limit)
                ));
            }
            Some(_) => {}
            None => {
                first.insert(account, p);
            }
        }
    }
    Ok(())
}

/// The folder a path really names: its longest existing ancestor with symlinks resolved, plus the rest
/// (which does not exist yet, so cannot be a symlink). Two spellings of one folder give the same result.
fn real_path(p: &Path) -> PathBuf {
    let absolute = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return normalize(&absolute),
        }
    }
}
