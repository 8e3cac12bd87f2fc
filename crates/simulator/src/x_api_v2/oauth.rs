//! OAuth 2.0 user tokens for the X API v2 routes, the way X issues them (SPEC 8.1): the
//! authorization-code flow with PKCE (`GET /i/oauth2/authorize`, approved at once, no login page),
//! the token endpoint (`POST /2/oauth2/token`, form-encoded, `authorization_code` and
//! `refresh_token` grants), single-use codes and single-use refresh tokens, confidential clients on
//! HTTP Basic and public ones with `client_id` in the form, and errors in X's
//! `{"error","error_description"}` shape.
//!
//! Token checks on the `/2/` routes: with [`SimConfig::x_token_lifetime_secs`] set, only live access
//! tokens from the token endpoint pass (the static `api_key` no longer does), each for the scopes it
//! was granted. Without it the static key works as before and issued tokens pass as well, so a
//! scenario that shares `api_key` with Xquik still serves an OAuth client.
//!
//! Time runs on [`Clock`]: tokio's clock (which tests may pause) plus an offset that the admin hooks
//! push forward, so tests can expire codes and tokens without waiting and wall-clock runs still work.
//!
//! [`SimConfig::x_token_lifetime_secs`]: crate::SimConfig::x_token_lifetime_secs

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::super::content::mix2;
use super::super::http::{json, RouteTag};
use super::super::{lock, SimConfig, Simulator};
use super::{problem, Bucket};

const AUTHORIZE: &str = "GET /i/oauth2/authorize";
const TOKEN: &str = "POST /2/oauth2/token";

/// X's access tokens live two hours; issued tokens say so when no lifetime is configured.
const DEFAULT_LIFETIME_SECS: u64 = 7_200;
/// Above this many access tokens, expired ones are forgotten (they then count as unknown, not
/// expired, in the 401 counters).
const KEEP_ACCESS_TOKENS: usize = 10_000;
/// Every scope X's authorize endpoint knows.
const SCOPES: [&str; 22] = [
    "block.read",
    "block.write",
    "bookmark.read",
    "bookmark.write",
    "dm.read",
    "dm.write",
    "follows.read",
    "follows.write",
    "like.read",
    "like.write",
    "list.read",
    "list.write",
    "media.write",
    "mute.read",
    "mute.write",
    "offline.access",
    "space.read",
    "tweet.moderate.write",
    "tweet.read",
    "tweet.write",
    "users.email",
    "users.read",
];
/// What the refresh grant needs.
const OFFLINE: &str = "offline.access";
/// The rate-limit windows of issued tokens are keyed by the user, not the token, as X counts them:
/// a refresh must not hand a client a fresh window. The simulator has one user.
const USER_WINDOW: &str = "oauth2-user";

/// One OAuth 2.0 app registered with the simulated X (scenario key `oauth_clients`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimOAuthClient {
    pub client_id: String,
    /// `Some`: a confidential client, which authenticates to the token endpoint with HTTP Basic
    /// `client_id:client_secret`. `None`: a public client, which sends `client_id` in the form.
    pub client_secret: Option<String>,
    /// The redirect URIs the authorize endpoint accepts, compared exactly.
    pub redirect_uris: Vec<String>,
}

/// Counters of the OAuth endpoints and of token checks on the `/2/` routes, since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthStats {
    /// Requests to `GET /i/oauth2/authorize`, refused ones included.
    pub authorize_requests: u64,
    /// Authorization codes handed out (one per approved authorize request).
    pub codes_issued: u64,
    /// Token endpoint requests by `grant_type` as sent (`(none)` when missing), refused ones included.
    pub token_requests: BTreeMap<String, u64>,
    /// Token endpoint answers with a token pair (both grants).
    pub tokens_issued: u64,
    /// Successful `refresh_token` grants.
    pub refreshes: u64,
    /// Refused token endpoint requests by OAuth error code (`invalid_request`, `invalid_grant`,
    /// `invalid_client`, `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`, and
    /// `temporarily_unavailable` for failures injected with `fail_token_requests`).
    pub token_errors: BTreeMap<String, u64>,
    /// `/2/` requests refused with 401 because their access token had expired.
    pub expired_token_401s: u64,
    /// `/2/` requests refused with 401 for a token that is neither a live issued one nor the static key.
    pub unknown_token_401s: u64,
    /// `/2/` requests refused with 403 because the token lacks a scope the route needs.
    pub missing_scope_403s: u64,
    /// Access tokens that are live now.
    pub live_access_tokens: u64,
    /// Refresh tokens that can be used now.
    pub live_refresh_tokens: u64,
}

/// A token pair as the token endpoint answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthTokens {
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: u64,
    pub access_token: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// Only when `offline.access` was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// tokio's clock plus an offset the tests push forward.
struct Clock {
    base: tokio::time::Instant,
    offset_ms: AtomicU64,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        elapsed.saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// What a code or token grants: which client, which scopes (in the order asked for).
#[derive(Clone, Debug)]
struct Grant {
    client_id: String,
    scope: Vec<String>,
}

struct Code {
    grant: Grant,
    redirect_uri: String,
    challenge: String,
    expires_at: u64,
}

struct Access {
    grant: Grant,
    expires_at: u64,
}

struct Books {
    rng: SmallRng,
    codes: HashMap<String, Code>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Grant>,
    stats: OAuthStats,
    /// Injected failures of the token endpoint: how many are left, and their status.
    failures: (u32, u16),
}

/// The simulated authorization server.
pub(crate) struct OAuth {
    clients: Vec<SimOAuthClient>,
    /// Whether only issued tokens pass (a lifetime is configured).
    strict: bool,
    lifetime_secs: u64,
    code_lifetime_ms: u64,
    clock: Clock,
    books: Mutex<Books>,
}

/// What a token check decided, before the response is built (outside the lock).
enum Check {
    Pass(String),
    Expired,
    Unknown,
    MissingScopes(Vec<&'static str>),
}

impl OAuth {
    pub(crate) fn new(cfg: &SimConfig) -> OAuth {
        OAuth {
            clients: cfg.oauth_clients.clone(),
            strict: cfg.x_token_lifetime_secs.is_some(),
            lifetime_secs: cfg.x_token_lifetime_secs.unwrap_or(DEFAULT_LIFETIME_SECS).max(1),
            code_lifetime_ms: cfg.oauth_code_lifetime_secs.max(1).saturating_mul(1_000),
            clock: Clock { base: tokio::time::Instant::now(), offset_ms: AtomicU64::new(0) },
            books: Mutex::new(Books {
                rng: SmallRng::seed_from_u64(mix2(cfg.seed, 0x6f61_7574_6832)),
                codes: HashMap::new(),
                access: HashMap::new(),
                refresh: HashMap::new(),
                stats: OAuthStats::default(),
                failures: (0, 503),
            }),
        }
    }

    /// Decides whether a bearer token may call a route of `bucket`; on success, the key of the
    /// rate-limit window it counts against.
    fn check(&self, token: &str, api_key: Option<&str>, bucket: Bucket) -> Check {
        let now = self.clock.now_ms();
        let mut b = lock(&self.books);
        let found = b.access.get(token).map(|a| (a.expires_at > now, missing_scopes(&a.grant.scope, bucket)));
        match found {
            Some((true, missing)) if missing.is_empty() => Check::Pass(USER_WINDOW.to_string()),
            Some((true, missing)) => {
                b.stats.missing_scope_403s += 1;
                Check::MissingScopes(missing)
            }
            // Without a configured lifetime the static key (or, with none, any token) still passes.
            _ if !self.strict && api_key.is_none_or(|k| k == token) => Check::Pass(token.to_string()),
            Some((false, _)) => {
                b.stats.expired_token_401s += 1;
                Check::Expired
            }
            None => {
                b.stats.unknown_token_401s += 1;
                Check::Unknown
            }
        }
    }

    /// A client by ID: a registered one, or with none registered any ID as a client that may
    /// authenticate either way.
    fn client(&self, client_id: &str) -> Option<SimOAuthClient> {
        if self.clients.is_empty() {
            return (!client_id.is_empty())
                .then(|| SimOAuthClient { client_id: client_id.to_string(), ..Default::default() });
        }
        self.clients.iter().find(|c| c.client_id == client_id).cloned()
    }

    /// Whether the authorize endpoint accepts this redirect URI for the client.
    fn redirect_ok(&self, client: &SimOAuthClient, uri: &str) -> bool {
        if self.clients.is_empty() {
            let rest = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("https://"));
            return rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) && !uri.contains('#');
        }
        client.redirect_uris.iter().any(|r| r == uri)
    }

    /// Issues an access token, and a refresh token when `offline.access` was granted.
    fn issue(&self, b: &mut Books, grant: Grant) -> OAuthTokens {
        let now = self.clock.now_ms();
        if b.access.len() >= KEEP_ACCESS_TOKENS {
            b.access.retain(|_, a| a.expires_at > now);
        }
        let access_token = mint(&mut b.rng, "at", 0);
        let refresh_token = grant.scope.iter().any(|s| s == OFFLINE).then(|| mint(&mut b.rng, "rt", 1));
        let scope = grant.scope.join(" ");
        if let Some(r) = &refresh_token {
            b.refresh.insert(r.clone(), grant.clone());
        }
        let expires_at = now.saturating_add(self.lifetime_secs.saturating_mul(1_000));
        b.access.insert(access_token.clone(), Access { grant, expires_at });
        OAuthTokens { token_type: "bearer".into(), expires_in: self.lifetime_secs, access_token, scope, refresh_token }
    }
}

/// The scopes X requires for each route family (its OpenAPI's `OAuth2UserToken` lists) that
/// `granted` lacks.
fn missing_scopes(granted: &[String], bucket: Bucket) -> Vec<&'static str> {
    let needed: &[&'static str] = match bucket {
        Bucket::DmRead => &["dm.read", "tweet.read", "users.read"],
        Bucket::DmWrite => &["dm.write", "tweet.read", "users.read"],
        Bucket::Delete => &["dm.read", "dm.write"],
        Bucket::Media => &["media.write"],
        Bucket::Users => &["tweet.read", "users.read"],
    };
    needed.iter().copied().filter(|n| !granted.iter().any(|g| g == n)).collect()
}

/// A token shaped like X's (unpadded base64 of 43 random characters, the issue time in Unix ms and
/// a kind: `at` access, `rt` refresh, `ac` code), so clients that size or log tokens see what X
/// sends. Random from the seeded stream; not guessable by a client, not meant to be secret.
fn mint(rng: &mut SmallRng, kind: &str, flag: u8) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let random: String = (0..43).map(|_| ALPHABET[rng.gen_range(0..64)] as char).collect();
    let issued = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    STANDARD_NO_PAD.encode(format!("{random}:{issued}:1:{flag}:{kind}:1"))
}

/// The PKCE S256 transform: base64url, no padding, of the verifier's SHA-256.
pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A code verifier or challenge as RFC 7636 allows: 43 to 128 unreserved characters.
fn pkce_text_ok(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The token check the `/2/` routes' guard runs first: `Ok` with the rate-limit window key, or the
/// 401/403 to answer.
#[allow(clippy::result_large_err)]
pub(super) fn admit(sim: &Simulator, token: &str, bucket: Bucket) -> Result<String, Response> {
    match sim.inner.x_api.oauth.check(token, sim.inner.cfg.api_key.as_deref(), bucket) {
        Check::Pass(window) => Ok(window),
        Check::Expired | Check::Unknown => Err(problem(401, "about:blank", "Unauthorized", "Unauthorized")),
        Check::MissingScopes(missing) => Err(problem(
            403,
            "about:blank",
            "Forbidden",
            &format!("The access token lacks the scopes this endpoint requires: {}.", missing.join(", ")),
        )),
    }
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/i/oauth2/authorize", get(authorize)).route("/2/oauth2/token", post(token))
}

fn tagged(mut resp: Response, route: &str, ok: bool) -> Response {
    resp.extensions_mut().insert(RouteTag { route: route.to_string(), key_ok: ok });
    resp
}

// ---------------------------------------------------------------------------------------------
// GET /i/oauth2/authorize

/// The page X shows when an authorize request is wrong: no redirect, since the redirect URI
/// itself may be what is wrong.
fn error_page(reason: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>X / Error</title></head><body>\
         <h1>Something went wrong</h1><p>{}</p></body></html>\n",
        reason.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query or form pairs as a map, refusing a parameter given twice (RFC 6749 3.1, 3.2).
fn single(pairs: Vec<(String, String)>) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if map.contains_key(&k) {
            return Err(format!("The parameter [{k}] was given more than once."));
        }
        map.insert(k, v);
    }
    Ok(map)
}

async fn authorize(
    State(sim): State<Simulator>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let o = &sim.inner.x_api.oauth;
    lock(&o.books).stats.authorize_requests += 1;
    let q = match query.map_err(|_| "The query string is invalid.".to_string()).and_then(|Query(p)| single(p)) {
        Ok(q) => q,
        Err(reason) => return tagged(error_page(&reason), AUTHORIZE, false),
    };
    match approve(o, &q) {
        Ok(location) => {
            let mut resp = StatusCode::FOUND.into_response();
            match HeaderValue::from_str(&location) {
                Ok(v) => {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                Err(_) => return tagged(error_page("The redirect_uri is invalid."), AUTHORIZE, false),
            }
            tagged(resp, AUTHORIZE, true)
        }
        Err(reason) => tagged(error_page(reason), AUTHORIZE, false),
    }
}

/// Checks an authorize request and, the user approving at once, issues a code; returns where to
/// redirect.
fn approve(o: &OAuth, q: &HashMap<String, String>) -> Result<String, &'static str> {
    let param = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client = param("client_id").and_then(|id| o.client(id)).ok_or("The client_id is missing or unknown.")?;
    let redirect_uri = param("redirect_uri")
        .filter(|r| o.redirect_ok(&client, r))
        .ok_or("The redirect_uri is missing or not registered for this app.")?;
    if param("response_type") != Some("code") {
        return Err("The response_type must be code.");
    }
    let scope: Vec<String> =
        param("scope").unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
    if scope.is_empty() || scope.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return Err("The scope is missing or names an unknown scope.");
    }
    let state =
        param("state").filter(|s| s.len() <= 500).ok_or("The state is missing or longer than 500 characters.")?;
    let challenge =
        param("code_challenge").filter(|c| pkce_text_ok(c)).ok_or("The code_challenge is missing or malformed.")?;
    if param("code_challenge_method") != Some("S256") {
        return Err("The code_challenge_method must be S256.");
    }
    let mut b = lock(&o.books);
    let code = mint(&mut b.rng, "ac", 1);
    let now = o.clock.now_ms();
    let expires_at = now.saturating_add(o.code_lifetime_ms);
    // Codes nobody exchanged are dropped once stale, so the map stays small.
    b.codes.retain(|_, c| c.expires_at > now);
    b.codes.insert(
        code.clone(),
        Code {
            grant: Grant { client_id: client.client_id, scope },
            redirect_uri: redirect_uri.to_string(),
            challenge: challenge.to_string(),
            expires_at,
        },
    );
    b.stats.codes_issued += 1;
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    Ok(format!("{redirect_uri}{sep}code={}&state={}", encode(&code), encode(state)))
}

// ---------------------------------------------------------------------------------------------
// POST /2/oauth2/token

/// A refused token request.
struct TokenError {
    status: u16,
    error: &'static str,
    description: String,
    /// 401s for a client that used (or should have used) HTTP Basic say how to authenticate.
    challenge: bool,
}

fn refuse(error: &'static str, description: impl Into<String>) -> TokenError {
    let status = match error {
        "invalid_client" | "unauthorized_client" => 401,
        "temporarily_unavailable" => 503,
        _ => 400,
    };
    TokenError { status, error, description: description.into(), challenge: status == 401 }
}

fn missing(name: &str) -> TokenError {
    refuse("invalid_request", format!("Missing required parameter [{name}]."))
}

/// `Authorization: Basic base64(client_id:client_secret)`: `None` without one, `Err` when malformed.
fn basic(headers: &HeaderMap) -> Result<Option<(String, String)>, TokenError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || refuse("invalid_client", "Client authentication failed.");
    let text = value.to_str().map_err(|_| bad())?;
    let Some((scheme, creds)) = text.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(creds.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((id.to_string(), secret.to_string())))
}

/// Whether a Basic credential part names `want`: RFC 6749 2.3.1 form-encodes each part before
/// joining them, which many clients skip; X's own IDs and secrets read the same either way.
fn basic_part_is(given: &str, want: &str) -> bool {
    given == want || form_decode(given).is_some_and(|d| d == want)
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

async fn token(State(sim): State<Simulator>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let o = &sim.inner.x_api.oauth;
    let form = read_form(&headers, body);
    let grant_type = form.as_ref().ok().and_then(|f| f.get("grant_type").cloned()).unwrap_or_else(|| "(none)".into());
    let outcome = {
        let mut b = lock(&o.books);
        *b.stats.token_requests.entry(grant_type).or_default() += 1;
        let outcome = if b.failures.0 > 0 {
            b.failures.0 -= 1;
            let status = b.failures.1;
            Err(TokenError { status, ..refuse("temporarily_unavailable", "The service is temporarily unavailable.") })
        } else {
            form.and_then(|f| exchange(o, &mut b, &headers, &f))
        };
        match &outcome {
            Ok(_) => b.stats.tokens_issued += 1,
            Err(e) => *b.stats.token_errors.entry(e.error.to_string()).or_default() += 1,
        }
        outcome
    };
    let resp = match outcome {
        Ok(tokens) => {
            let mut resp = json(200, &tokens);
            let h = resp.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            return tagged(resp, TOKEN, true);
        }
        Err(e) => {
            let mut resp = json(e.status, &json!({ "error": e.error, "error_description": e.description }));
            let h = resp.headers_mut();
            if e.challenge {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"api.x.com\""));
            }
            if matches!(e.status, 429 | 503) {
                h.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
    };
    tagged(resp, TOKEN, false)
}

fn read_form(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<HashMap<String, String>, TokenError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(refuse("invalid_request", "The body must be application/x-www-form-urlencoded."));
    }
    let body = body.map_err(|_| refuse("invalid_request", "The request body could not be read."))?;
    let pairs = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .map_err(|_| refuse("invalid_request", "The request body is not valid form data."))?;
    single(pairs).map_err(|d| refuse("invalid_request", d))
}

/// Authenticates the client and runs the grant. Called with the books locked: a code or refresh
/// token is taken and its successor issued in one step, so two concurrent refreshes with the same
/// token cannot both succeed.
fn exchange(
    o: &OAuth,
    b: &mut Books,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<OAuthTokens, TokenError> {
    let param = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let grant_type = param("grant_type").ok_or_else(|| missing("grant_type"))?;
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return Err(refuse("unsupported_grant_type", format!("The grant_type [{grant_type}] is not supported.")));
    }
    let client_id = authenticate(o, headers, param("client_id"))?;
    let now = o.clock.now_ms();
    let grant = if grant_type == "authorization_code" {
        let code = param("code").ok_or_else(|| missing("code"))?;
        let redirect_uri = param("redirect_uri").ok_or_else(|| missing("redirect_uri"))?;
        let verifier = param("code_verifier").ok_or_else(|| missing("code_verifier"))?;
        if !pkce_text_ok(verifier) {
            return Err(refuse("invalid_request", "The code_verifier must be 43 to 128 unreserved characters."));
        }
        // A code is spent by the first exchange that names it, failed or not, as RFC 6749 4.1.2
        // has it; a verifier cannot be guessed twice.
        let bad = || refuse("invalid_grant", "Value passed for the authorization code was invalid.");
        let c = b.codes.remove(code).ok_or_else(bad)?;
        if c.expires_at <= now || c.grant.client_id != client_id {
            return Err(bad());
        }
        if c.redirect_uri != redirect_uri {
            return Err(refuse("invalid_grant", "The redirect_uri does not match the authorization request."));
        }
        if s256(verifier) != c.challenge {
            return Err(refuse("invalid_grant", "The code_verifier does not match the code_challenge."));
        }
        c.grant
    } else {
        let token = param("refresh_token").ok_or_else(|| missing("refresh_token"))?;
        let bad = || refuse("invalid_grant", "Value passed for the token was invalid.");
        let g = b.refresh.get(token).ok_or_else(bad)?;
        if g.client_id != client_id {
            return Err(bad());
        }
        let mut grant = g.clone();
        if let Some(asked) = param("scope") {
            let asked: Vec<String> = asked.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
            if asked.iter().any(|s| !grant.scope.contains(s)) {
                return Err(refuse("invalid_scope", "The scope asks for more than the refresh token grants."));
            }
            grant.scope = asked;
        }
        // Single use: the old refresh token dies with this answer. The old access token lives on
        // until it expires, as on X.
        b.refresh.remove(token);
        b.stats.refreshes += 1;
        grant
    };
    Ok(o.issue(b, grant))
}

/// Which client is asking: a confidential one must use HTTP Basic with its secret, a public one
/// sends `client_id` in the form. With no clients registered, any ID passes either way.
fn authenticate(o: &OAuth, headers: &HeaderMap, form_id: Option<&str>) -> Result<String, TokenError> {
    let basic = basic(headers)?.map(|(id, secret)| {
        // The ID as sent when that is a known one, else decoded.
        let id = if o.client(&id).is_some() { id } else { form_decode(&id).unwrap_or(id) };
        (id, secret)
    });
    if let (Some((id, _)), Some(f)) = (&basic, form_id) {
        if id != f {
            return Err(refuse(
                "invalid_request",
                "The client_id in the form does not match the Authorization header.",
            ));
        }
    }
    let id = basic.as_ref().map(|(id, _)| id.as_str()).or(form_id).ok_or_else(|| missing("client_id"))?;
    let client = o.client(id).ok_or_else(|| refuse("invalid_client", "Client authentication failed."))?;
    if o.clients.is_empty() {
        return Ok(client.client_id);
    }
    match (&client.client_secret, &basic) {
        (Some(secret), Some((_, given))) if basic_part_is(given, secret) => Ok(client.client_id),
        (Some(_), Some(_)) => Err(refuse("invalid_client", "Client authentication failed.")),
        (Some(_), None) => Err(refuse("unauthorized_client", "Missing valid authorization header")),
        // Some libraries send a public client's ID over Basic with an empty secret.
        (None, Some((_, given))) if !given.is_empty() => {
            Err(refuse("invalid_client", "A public client has no secret to authenticate with."))
        }
        (None, _) => Ok(client.client_id),
    }
}

// ---------------------------------------------------------------------------------------------
// Test hooks: `Simulator` methods and `/_sim/oauth/...`

impl Simulator {
    /// The OAuth counters, with the live token counts as they are now.
    pub fn oauth_stats(&self) -> OAuthStats {
        let o = &self.inner.x_api.oauth;
        let now = o.clock.now_ms();
        let b = lock(&o.books);
        let mut s = b.stats.clone();
        s.live_access_tokens = b.access.values().filter(|a| a.expires_at > now).count() as u64;
        s.live_refresh_tokens = b.refresh.len() as u64;
        s
    }

    /// Revokes the refresh tokens of one client (`None`: of every client), as when a user revokes
    /// the app: the next refresh gets `invalid_grant`. Access tokens live on until they expire.
    /// Returns how many were revoked.
    pub fn revoke_refresh_tokens(&self, client_id: Option<&str>) -> usize {
        let mut b = lock(&self.inner.x_api.oauth.books);
        let before = b.refresh.len();
        b.refresh.retain(|_, g| client_id.is_some_and(|c| c != g.client_id));
        before - b.refresh.len()
    }

    /// Expires every live access token now (refresh tokens stay usable). Returns how many.
    pub fn expire_access_tokens(&self) -> usize {
        let o = &self.inner.x_api.oauth;
        let now = o.clock.now_ms();
        let mut b = lock(&o.books);
        let mut n = 0;
        for a in b.access.values_mut().filter(|a| a.expires_at > now) {
            a.expires_at = now;
            n += 1;
        }
        n
    }

    /// Moves the OAuth clock forward: codes and access tokens age by `by` at once.
    pub fn advance_oauth_clock(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let offset = &self.inner.x_api.oauth.clock.offset_ms;
        let _ = offset.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| Some(o.saturating_add(ms)));
    }

    /// The next `count` token endpoint requests fail with `status` (429, 500, 502 or 503; others
    /// become 503) and `{"error":"temporarily_unavailable"}`, before any check. 0 clears.
    pub fn fail_token_requests(&self, count: u32, status: u16) {
        let status = if matches!(status, 429 | 500 | 502 | 503) { status } else { 503 };
        lock(&self.inner.x_api.oauth.books).failures = (count, status);
    }

    /// Issues a token pair as if `client_id` had completed the authorization flow for `scope`
    /// (space-separated; `offline.access` brings a refresh token), for tests that need a refresh
    /// token without a browser. Counted in no endpoint counter.
    pub fn issue_oauth_tokens(&self, client_id: &str, scope: &str) -> OAuthTokens {
        let o = &self.inner.x_api.oauth;
        let scope = scope.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
        let mut b = lock(&o.books);
        o.issue(&mut b, Grant { client_id: client_id.to_string(), scope })
    }
}

/// Routes relative to `/_sim`.
pub(crate) fn admin_routes(sim: Simulator) -> Router {
    Router::new()
        .route("/oauth/stats", get(|State(sim): State<Simulator>| async move { json(200, &sim.oauth_stats()) }))
        .route("/oauth/revoke", post(admin_revoke))
        .route(
            "/oauth/expire",
            post(|State(sim): State<Simulator>| async move { json(200, &json!({ "expired": sim.expire_access_tokens() })) }),
        )
        .route("/oauth/advance", post(admin_advance))
        .route("/oauth/fail", post(admin_fail))
        .route("/oauth/issue", post(admin_issue))
        .with_state(sim)
}

fn admin_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>, empty: &str) -> Result<T, Response> {
    let bad = |m: String| json(400, &json!({ "error": "invalid_input", "message": m }));
    let body = body.map_err(|_| bad("body could not be read".into()))?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { empty.as_bytes() } else { &body };
    serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    client_id: Option<String>,
}

async fn admin_revoke(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    match admin_body::<Revoke>(body, "{}") {
        Ok(r) => json(200, &json!({ "revoked": sim.revoke_refresh_tokens(r.client_id.as_deref()) })),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    secs: u64,
}

async fn admin_advance(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    match admin_body::<Advance>(body, "") {
        Ok(a) => {
            sim.advance_oauth_clock(Duration::from_secs(a.secs));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fail {
    count: u32,
    #[serde(default = "default_fail_status")]
    status: u16,
}

fn default_fail_status() -> u16 {
    503
}

async fn admin_fail(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    match admin_body::<Fail>(body, "") {
        Ok(f) => {
            sim.fail_token_requests(f.count, f.status);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Issue {
    client_id: String,
    scope: String,
}

async fn admin_issue(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    match admin_body::<Issue>(body, "") {
        Ok(i) => json(200, &sim.issue_oauth_tokens(&i.client_id, &i.scope)),
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests;
