//! `auth`: the arguments as an [`AuthRequest`], and the words around it: what `check` and `status` say about
//! a pipeline's tokens, the lines `auth` prints, and the page the browser shows after the callback. The
//! flow itself (the listener, the exchange, the store) is the host's (`host::auth`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::AuthArgs;
use crate::config::{ConfigError, OAuthConfig, Pipeline};
use crate::state::tokens::{TokenFile, TokenFileError};
use crate::time::format_time;

/// An `auth` as the command line asked for it.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub pipeline: Option<String>,
    /// How long to wait for the browser's callback.
    pub timeout: Duration,
    /// `--refresh-token-file`: import this refresh token (`-`: standard input) instead of the browser flow.
    pub refresh_token_file: Option<PathBuf>,
}

/// Checks the arguments (without the network or the state).
pub fn prepare(args: &AuthArgs) -> Result<AuthRequest, ConfigError> {
    let timeout = humantime::parse_duration(args.timeout.trim())
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| ConfigError(format!("--timeout `{}` is not a duration like \"5m\" or \"90s\"", args.timeout)))?;
    Ok(AuthRequest { pipeline: args.pipeline.clone(), timeout, refresh_token_file: args.refresh_token_file.clone() })
}

/// The pipeline `auth` works on, and its OAuth settings; the error says what to set.
pub fn oauth_pipeline<'a>(
    cfg: &'a crate::config::Config,
    name: Option<&str>,
) -> Result<(&'a Pipeline, &'a OAuthConfig), ConfigError> {
    let p = cfg.pipeline(name)?;
    match &p.oauth {
        Some(o) => Ok((p, o)),
        None => Err(ConfigError(format!(
            "pipeline `{}` has no oauth_client_id: `auth` is for x-api-v2 pipelines that manage their own tokens; set oauth_client_id (see the README, \"X API v2\")",
            p.name
        ))),
    }
}

/// What is known about a pipeline's stored tokens, never the tokens.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenStatus {
    /// Whether a pair is stored at all.
    pub stored: bool,
    /// When the stored access token expires (RFC 3339), if one is stored.
    pub access_token_expires_at: Option<String>,
    pub expired: bool,
    /// Whether a refresh token is held (so the pipeline renews its own access token).
    pub refresh_token_held: bool,
    /// Set when the token file cannot be read; one line, no token.
    pub problem: Option<String>,
}

/// Reads a pipeline's token file for `status` and `check`.
pub fn token_status(o: &OAuthConfig) -> TokenStatus {
    let none = TokenStatus {
        stored: false,
        access_token_expires_at: None,
        expired: false,
        refresh_token_held: false,
        problem: None,
    };
    match TokenFile::new(o.token_file.clone()).load() {
        Ok(t) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            TokenStatus {
                stored: true,
                access_token_expires_at: Some(format_time(UNIX_EPOCH + Duration::from_millis(t.expires_at_ms))),
                expired: t.expired(now),
                refresh_token_held: t.refresh_token.is_some(),
                problem: (t.client_id != o.client_id).then(|| "issued to another oauth_client_id".to_string()),
            }
        }
        Err(TokenFileError::Missing(_)) => none,
        Err(e) => TokenStatus { problem: Some(e.to_string()), ..none },
    }
}

/// The one-line description of a pipeline's tokens, as `status` and `check` print it.
pub fn describe(p: &Pipeline, s: &TokenStatus) -> String {
    if let Some(problem) = &s.problem {
        return format!("UNUSABLE ({problem}): run `dm-handoff auth --pipeline {}`", p.name);
    }
    let Some(at) = &s.access_token_expires_at else {
        return format!("none yet: run `dm-handoff auth --pipeline {}` once", p.name);
    };
    let expiry = if s.expired { format!("expired {at}") } else { format!("expires {at}") };
    let refresh = if s.refresh_token_held {
        "refresh token held (renews itself)".to_string()
    } else {
        format!("NO refresh token: run `dm-handoff auth --pipeline {}` with offline.access in oauth_scopes", p.name)
    };
    format!("access token {expiry}, {refresh}")
}

/// `check`'s lines about a pipeline's OAuth settings and stored tokens.
pub fn check_lines(p: &Pipeline, o: &OAuthConfig) -> String {
    let mut out = String::new();
    let client = match &o.client_secret {
        Some(s) => format!("confidential client {} (secret in {})", o.client_id, s.describe()),
        None => format!("public client {}", o.client_id),
    };
    let _ = writeln!(out, "  oauth         {client}, redirect {}", o.redirect_uri);
    let _ = writeln!(out, "  scopes        {}", o.scopes);
    let _ = writeln!(out, "  tokens        {}", describe(p, &token_status(o)));
    out
}

/// What `auth` tells the user on standard error before the authorize URL (which goes alone to stdout).
pub fn instructions(p: &Pipeline, o: &OAuthConfig, timeout: Duration) -> String {
    format!(
        "Open the URL below in a browser logged in as the account of pipeline `{}` and approve the app.\n\
         Waiting for X to redirect to {} (for up to {}).\n",
        p.name,
        o.redirect_uri,
        humantime::format_duration(timeout)
    )
}

/// The line `auth` prints once the tokens are stored.
pub fn stored_line(p: &Pipeline, s: &TokenStatus) -> String {
    format!("pipeline `{}`: tokens stored ({})\n", p.name, describe(p, s))
}

/// The page the browser shows after the callback: `ok` or not, and a sentence. No token, no code.
pub fn callback_page(ok: bool, sentence: &str) -> String {
    let (title, colour) =
        if ok { ("dm-handoff is authorized", "#1a7f37") } else { ("dm-handoff: not authorized", "#cf222e") };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto\">\
         <h1 style=\"color:{colour}\">{title}</h1><p>{}</p></body></html>",
        html_escape(sentence)
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_the_page_escapes() {
        let args = |t: &str| AuthArgs { pipeline: None, timeout: t.into(), refresh_token_file: None };
        assert_eq!(prepare(&args("90s")).unwrap().timeout, Duration::from_secs(90));
        assert!(prepare(&args("soon")).is_err() && prepare(&args("0s")).is_err());
        let page = callback_page(false, "a <b> & c");
        assert!(page.contains("a &lt;b&gt; &amp; c") && page.contains("not authorized"), "{page}");
    }
}
