//! OAuth 2.0 user tokens for X API v2 (SPEC 8.1): the pieces of the authorization-code flow with PKCE
//! (`dm-handoff auth` drives them), the token endpoint client, and [`TokenSource`], which hands every
//! request of a pipeline a live access token and renews it.
//!
//! The token lifecycle:
//! 1. `auth` (or `auth --refresh-token-file`) gets a first pair from the token endpoint and stores it in the
//!    pipeline's token file ([`crate::state::tokens`]).
//! 2. A [`TokenSource`] reads the file when the pipeline's client is built. Every request asks it for the
//!    bearer to send ([`TokenSource::bearer`]); once less than a fifth of the access token's lifetime is left,
//!    that call renews it first. A request answered 401 asks it once more ([`TokenSource::unauthorized`]),
//!    which renews unless another caller already has, and the request is sent once again.
//! 3. A renewal runs with the source's mutex held (one at a time per pipeline: the conversations, the
//!    daemon's runs and the sends of a pipeline share its client and so this source) and the token file's
//!    lock held (one at a time across processes). Under both it re-reads the file first: a pair stored by
//!    `auth` or by another process since is taken as it is. Otherwise the refresh token is spent at the
//!    token endpoint, and the new pair is saved (fsynced and renamed into place) *before* its access token
//!    is handed to anyone, because X has already invalidated the old refresh token.
//! 4. A refused refresh (`invalid_grant`: the app was revoked, or the refresh token was spent by a process
//!    that died before saving its successor) is an account-level error, [`ErrorClass::Fatal`], whose hint
//!    names `dm-handoff auth --pipeline P`. The source then fails fast without asking X again, but re-reads the
//!    file on every call, so a daemon picks up the pair a later `auth` stores without a restart.
//!
//! Tokens never reach a log, an error or `Debug` output: headers carrying them are marked sensitive, the
//! token endpoint's error is reduced to its `error` code, and [`Tokens`] redacts itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ErrorClass, ProviderError};
use crate::config::{ConfigError, OAuthConfig, Pipeline};
use crate::state::tokens::{TokenFile, TokenFileError, TokenLock, Tokens};

/// The token endpoint's route template, for errors and logs.
pub const TOKEN_ENDPOINT: &str = "POST /2/oauth2/token";

/// **Test-only hook**, compiled into debug builds only: when this variable is `1`, a refresh aborts the
/// process right after the token endpoint answered and before the new pair is saved: the window in which
/// X has invalidated the old refresh token and the new one exists nowhere else. The integration tests use
/// it to show that the next start says exactly which command fixes it.
#[cfg(debug_assertions)]
pub const CRASH_AFTER_REFRESH_ENV: &str = "DM_HANDOFF_TEST_CRASH_AFTER_REFRESH";

/// The command that gets a pipeline new tokens, as every error that needs it names it.
pub fn auth_command(pipeline: &str) -> String {
    format!("dm-handoff auth --pipeline {pipeline}")
}

/// A PKCE pair (RFC 7636, S256): the verifier stays here, the challenge goes into the authorize URL.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    /// A fresh verifier of 64 unreserved characters from the thread's CSPRNG, and its S256 challenge.
    pub fn new() -> Pkce {
        let verifier = random_text(64);
        let challenge = s256(&verifier);
        Pkce { verifier, challenge }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// `BASE64URL(SHA256(verifier))`, unpadded: PKCE's S256 transform.
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `n` characters of RFC 7636's unreserved set from the thread's CSPRNG (for verifiers and `state`).
pub fn random_text(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut rng = rand::thread_rng();
    (0..n).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// The authorize URL the user opens: code flow, the app's client ID and redirect URI, the scopes, `state`
/// and the S256 challenge.
pub fn authorize_url(cfg: &OAuthConfig, state: &str, challenge: &str) -> Result<String, ConfigError> {
    let mut url = reqwest::Url::parse(&cfg.authorize_url)
        .map_err(|_| ConfigError(format!("oauth_authorize_url `{}` is not a URL", cfg.authorize_url)))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("redirect_uri", &cfg.redirect_uri)
        .append_pair("scope", &cfg.scopes)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url.to_string())
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 2.3.1 encodes the Basic credentials
/// so before joining them).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The token endpoint of one app: the authorization-code and refresh-token grants, form-encoded, the client
/// authenticated with HTTP Basic (confidential) or by `client_id` in the form (public).
pub struct TokenClient {
    http: super::util::Http,
    url: String,
    client_id: String,
    /// `Basic …` for a confidential client, marked sensitive.
    basic: Option<HeaderValue>,
}

/// A token endpoint answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
}

/// X's token error shape, `{"error","error_description"}`; only `error` is kept (the description is never
/// echoed).
#[derive(Default, Deserialize)]
struct TokenErrorBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl TokenClient {
    /// The token client of a pipeline with `oauth`; reads the client secret of a confidential client.
    pub fn new(p: &Pipeline, cfg: &OAuthConfig) -> Result<TokenClient, ConfigError> {
        let basic = match &cfg.client_secret {
            None => None,
            Some(source) => {
                let secret = source.read(&p.name, "OAuth client secret")?;
                let pair = format!("{}:{}", form_encode(&cfg.client_id), form_encode(&secret));
                let text = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
                let mut v = HeaderValue::from_str(&text).map_err(|_| {
                    ConfigError(format!("pipeline `{}`: the OAuth client secret cannot be sent in a header", p.name))
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(TokenClient {
            http: super::util::http_client(p, HeaderMap::new())?,
            url: cfg.token_url.clone(),
            client_id: cfg.client_id.clone(),
            basic,
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) for a token pair.
    pub async fn exchange_code(&self, code: &str, verifier: &str, redirect_uri: &str) -> Result<Tokens, ProviderError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        self.request(&form, None).await
    }

    /// Spends a refresh token for a new pair (X rotates the refresh token: the old one is dead after this).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, ProviderError> {
        self.request(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)], Some(refresh_token)).await
    }

    async fn request(&self, form: &[(&str, &str)], old_refresh: Option<&str>) -> Result<Tokens, ProviderError> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(&self.url);
        match &self.basic {
            Some(b) => req = req.secret_header(AUTHORIZATION, b.clone()),
            None => fields.push(("client_id", &self.client_id)),
        }
        let resp = req.form(&fields).send().await.map_err(|e| ProviderError::transport(TOKEN_ENDPOINT, &e))?;
        let status = resp.status().as_u16();
        let retry_after = super::util::retry_after_header(resp.headers());
        let body = resp.bytes().await.map_err(|e| ProviderError::transport(TOKEN_ENDPOINT, &e))?;
        if !(200..300).contains(&status) {
            return Err(token_error(status, &body, retry_after));
        }
        let a: TokenAnswer = serde_json::from_slice(&body).map_err(|e| ProviderError::bad_json(TOKEN_ENDPOINT, &e))?;
        if a.access_token.is_empty() || HeaderValue::from_str(&a.access_token).is_err() {
            return Err(ProviderError::malformed(TOKEN_ENDPOINT, "the answer has no usable access_token"));
        }
        let expires_in = match a.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        // X says 7,200 s; an answer without it is taken at that.
        .unwrap_or(7_200);
        // OAuth 2.0 lets a server keep the refresh token; X rotates it, so a new one normally comes back.
        let refresh_token = a.refresh_token.filter(|r| !r.is_empty()).or_else(|| old_refresh.map(str::to_string));
        Ok(Tokens::issued(
            &self.client_id,
            a.access_token,
            refresh_token,
            Duration::from_secs(expires_in.max(1)),
            a.scope.unwrap_or_default(),
        ))
    }
}

/// Classifies a token endpoint refusal. A refused grant or client is [`ErrorClass::Fatal`] with the
/// `error` code (never the description); a rate limit or an outage is transient.
fn token_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> ProviderError {
    let parsed: TokenErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed
        .error
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .filter(|c| !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .map(str::to_string)
        .unwrap_or_else(|| format!("http_{status}"));
    let (class, hint) = match status {
        429 | 500 | 502..=504 => (ErrorClass::Transient, "the token endpoint is busy or unavailable; will retry"),
        _ => (ErrorClass::Fatal, "X refused the token request"),
    };
    ProviderError {
        retry_after: if class == ErrorClass::Transient { retry_after } else { None },
        ..ProviderError::new(class, TOKEN_ENDPOINT, Some(status), code, hint)
    }
}

/// A bearer token as a request sends it: the sensitive header value, and which access token it is (to tell
/// whether a 401 is about the current one).
#[derive(Clone)]
pub struct Bearer {
    pub header: HeaderValue,
    access_token: String,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

fn bearer_of(t: &Tokens) -> Result<Bearer, ProviderError> {
    let mut header = HeaderValue::from_str(&format!("Bearer {}", t.access_token)).map_err(|_| {
        ProviderError::new(
            ErrorClass::Fatal,
            TOKEN_ENDPOINT,
            None,
            "bad_token",
            "the stored access token cannot be sent",
        )
    })?;
    header.set_sensitive(true);
    Ok(Bearer { header, access_token: t.access_token.clone() })
}

/// What a source holds between requests.
struct Held {
    tokens: Tokens,
    /// Set after a refused refresh: the error every call returns until the token file holds another pair.
    dead: Option<ProviderError>,
    /// After an early renewal failed transiently, the next one waits until this Unix ms (the token still
    /// works meanwhile), so an unavailable token endpoint is not asked again before every request.
    renew_not_before_ms: u64,
}

/// How long an early renewal that failed transiently waits before it is tried again.
const RENEW_BACKOFF_MS: u64 = 5_000;

/// The live access token of one pipeline, renewed before it expires and after a 401 (see the module docs).
pub struct TokenSource {
    pipeline: String,
    client_id: String,
    file: TokenFile,
    client: TokenClient,
    held: tokio::sync::Mutex<Held>,
}

impl TokenSource {
    /// Reads the pipeline's stored pair. No pair (never authorized) is a config error naming `auth`.
    pub fn open(p: &Pipeline, cfg: &OAuthConfig) -> Result<TokenSource, ConfigError> {
        let file = TokenFile::new(cfg.token_file.clone());
        let tokens = file.load().map_err(|e| file_error(&p.name, &e))?;
        if tokens.client_id != cfg.client_id {
            return Err(ConfigError(format!(
                "pipeline `{}`: the stored tokens were issued to another oauth_client_id; run `{}` to authorize this app",
                p.name,
                auth_command(&p.name)
            )));
        }
        Ok(TokenSource {
            pipeline: p.name.clone(),
            client_id: cfg.client_id.clone(),
            file,
            client: TokenClient::new(p, cfg)?,
            held: tokio::sync::Mutex::new(Held { tokens, dead: None, renew_not_before_ms: 0 }),
        })
    }

    /// The bearer to send now, renewed first when less than a fifth of its lifetime is left. A renewal that
    /// fails transiently while the token is still valid is logged and the current token used.
    pub async fn bearer(&self) -> Result<Bearer, ProviderError> {
        let mut held = self.held.lock().await;
        self.revive(&mut held)?;
        let now = now_ms();
        let expired = held.tokens.expired(now);
        if held.tokens.due_for_renewal(now) && (expired || now >= held.renew_not_before_ms) {
            match self.renew(&mut held, None).await {
                Ok(()) => {}
                Err(e) if e.class == ErrorClass::Transient && !held.tokens.expired(now_ms()) => {
                    held.renew_not_before_ms = now_ms().saturating_add(RENEW_BACKOFF_MS);
                    tracing::warn!(pipeline = %self.pipeline, code = %e.code, "renewing the access token failed for now; using the current one while it lasts");
                }
                Err(e) => return Err(e),
            }
        }
        bearer_of(&held.tokens)
    }

    /// After X answered 401 to a request sent with `used`: the bearer to send it with once more. Renews
    /// unless the current token is already another one (a concurrent caller renewed it).
    pub async fn unauthorized(&self, used: &Bearer) -> Result<Bearer, ProviderError> {
        let mut held = self.held.lock().await;
        self.revive(&mut held)?;
        if held.tokens.access_token == used.access_token {
            tracing::info!(pipeline = %self.pipeline, "X answered 401; renewing the access token once");
            self.renew(&mut held, Some(&used.access_token)).await?;
        }
        bearer_of(&held.tokens)
    }

    /// The error of a request X refused (401) with a token renewed for it: the app's access was revoked or
    /// its scopes no longer suffice, which only authorizing again fixes.
    pub fn still_unauthorized(&self, e: ProviderError) -> ProviderError {
        ProviderError {
            hint: format!(
                "X refused a freshly renewed access token (the app's access was revoked?); run `{}` to authorize again",
                auth_command(&self.pipeline)
            ),
            ..e
        }
    }

    /// After a refused refresh, a token file that now holds another pair (`auth` ran) brings the source
    /// back; otherwise the refusal stands.
    fn revive(&self, held: &mut Held) -> Result<(), ProviderError> {
        let Some(dead) = &held.dead else { return Ok(()) };
        match self.file.load() {
            Ok(t) if t != held.tokens && t.client_id == self.client_id => {
                tracing::info!(pipeline = %self.pipeline, "new tokens in the token file; resuming");
                held.tokens = t;
                held.dead = None;
                Ok(())
            }
            _ => Err(dead.clone()),
        }
    }

    /// Renews under the token file's lock. `rejected`: the access token X just refused, which a pair read
    /// back from the file must not be.
    async fn renew(&self, held: &mut Held, rejected: Option<&str>) -> Result<(), ProviderError> {
        let file = self.file.clone();
        let lock = tokio::task::spawn_blocking(move || file.lock())
            .await
            .map_err(|e| local_error(format!("taking the token file's lock: {e}")))?
            .map_err(|e| local_error(e.to_string()))?;
        // Another process (`auth`, a one-shot command) may have stored a newer pair since we read ours.
        match self.file.load() {
            Ok(t) if t != held.tokens && t.client_id == self.client_id => {
                let usable = !t.due_for_renewal(now_ms()) && rejected != Some(t.access_token.as_str());
                held.tokens = t;
                if usable {
                    tracing::info!(pipeline = %self.pipeline, "took the tokens another process stored");
                    return Ok(());
                }
            }
            Ok(_) | Err(TokenFileError::Missing(_)) => {}
            Err(e) => return Err(local_error(e.to_string())),
        }
        let Some(refresh_token) = held.tokens.refresh_token.clone() else {
            return Err(self.refused(
                "no_refresh_token",
                None,
                "the access token expired and no refresh token is held (oauth_scopes needs offline.access)",
            ));
        };
        let fresh = match self.client.refresh(&refresh_token).await {
            Ok(t) => t,
            Err(e) if e.class == ErrorClass::Fatal => {
                let err = self.refused(
                    &e.code,
                    e.status,
                    "X refused the refresh token (the app was revoked, or the token was spent elsewhere)",
                );
                held.dead = Some(err.clone());
                tracing::error!(pipeline = %self.pipeline, code = %e.code, "the access token cannot be renewed");
                return Err(err);
            }
            Err(e) => return Err(e),
        };
        #[cfg(debug_assertions)]
        if std::env::var_os(CRASH_AFTER_REFRESH_ENV).is_some_and(|v| v == "1") {
            tracing::warn!("test hook: aborting after the token endpoint's answer, before the new pair is saved");
            std::process::abort();
        }
        self.save(fresh.clone(), lock).await?;
        held.tokens = fresh;
        tracing::info!(pipeline = %self.pipeline, expires_at_ms = held.tokens.expires_at_ms, "access token renewed and stored");
        Ok(())
    }

    /// Saves a pair durably (the lock is held until it is), retrying a failed write a few times: the old
    /// refresh token is already spent, so this pair is the only way on.
    async fn save(&self, tokens: Tokens, lock: TokenLock) -> Result<(), ProviderError> {
        let file = self.file.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let mut last = None;
            for attempt in 0..3u64 {
                match file.save(&tokens, &lock) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
            }
            Err(last.map(|e| e.to_string()).unwrap_or_default())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        saved.map_err(|e| {
            ProviderError::new(
                ErrorClass::Fatal,
                TOKEN_ENDPOINT,
                None,
                "token_store_failed",
                format!(
                    "the renewed tokens could not be stored ({e}); fix the state folder, then run `{}`",
                    auth_command(&self.pipeline)
                ),
            )
        })
    }

    /// The account-level error of a refused renewal, naming the command that fixes it.
    fn refused(&self, code: &str, status: Option<u16>, why: &str) -> ProviderError {
        ProviderError::new(
            ErrorClass::Fatal,
            TOKEN_ENDPOINT,
            status,
            code,
            format!("{why}; run `{}` to authorize again", auth_command(&self.pipeline)),
        )
    }
}

fn local_error(detail: String) -> ProviderError {
    ProviderError::new(ErrorClass::Transient, TOKEN_ENDPOINT, None, "token_file", detail)
}

/// A token file problem as the config error a command reports before it starts.
pub fn file_error(pipeline: &str, e: &TokenFileError) -> ConfigError {
    match e {
        TokenFileError::Missing(path) => ConfigError(format!(
            "pipeline `{pipeline}` has no OAuth tokens yet ({} is missing); run `{}` once",
            path.display(),
            auth_command(pipeline)
        )),
        // The fix is in the message (`chmod 600`, a regular file); new tokens would not help.
        TokenFileError::Refused { .. } => ConfigError(format!("pipeline `{pipeline}`: {e}")),
        other => {
            ConfigError(format!("pipeline `{pipeline}`: {other}; run `{}` to store new tokens", auth_command(pipeline)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let p = Pkce::new();
        assert_eq!(p.verifier.len(), 64);
        assert_eq!(p.challenge, s256(&p.verifier));
        assert_ne!(Pkce::new().verifier, p.verifier, "fresh each time");
    }

    #[test]
    fn token_errors_keep_the_code_only() {
        let e =
            token_error(400, br#"{"error":"invalid_grant","error_description":"token tok_LEAK was invalid"}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "invalid_grant"));
        assert!(!e.to_string().contains("LEAK"));
        let e = token_error(503, b"<html>", Some(Duration::from_secs(1)));
        assert_eq!(
            (e.class, e.code.as_str(), e.retry_after),
            (ErrorClass::Transient, "http_503", Some(Duration::from_secs(1)))
        );
        let e = token_error(400, br#"{"error":"Nope <script>"}"#, None);
        assert_eq!(e.code, "http_400");
    }

    #[test]
    fn form_encoding_of_basic_credentials() {
        assert_eq!(form_encode("abc-_.*09"), "abc-_.*09");
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }
}
