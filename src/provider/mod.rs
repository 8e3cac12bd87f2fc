//! Provider APIs behind one interface: the only code that speaks HTTP to a provider.
//!
//! Each provider module turns its wire format into [`Page`]s of [`Item`]s and its failures into a
//! [`ProviderError`] whose [`ErrorClass`] is all the sync engine branches on. Retrying is shared:
//! [`with_retry`] repeats what is transient, with capped jittered backoff that honours the provider's
//! `Retry-After`, and never repeats anything else. The engine holds a [`Client`], an enum over the
//! adapters, so adding a provider never touches the engine.

pub mod getxapi;
pub mod x_api_v2;
pub mod xquik;

#[cfg(test)]
mod sim_tests;

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::{Pipeline, ProviderKind, RetryPolicy};
use crate::record::{Conversation, Item};

/// One page of history, newest page first; order within `items` is whatever the provider sent.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// The cursor of the next (older) page, exactly as received; None at the end of history.
    pub next_cursor: Option<String>,
    /// Provider credits this page cost.
    pub credits: u64,
}

/// A user as user lookup returns it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub name: String,
    #[serde(rename = "canDm", skip_serializing_if = "Option::is_none")]
    pub can_dm: Option<bool>,
}

/// What the engine does with a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Rate limits, 502/503/504, timeouts, dropped connections: retry after a wait.
    Transient,
    /// A 200 whose body is not the documented JSON: retried a little, then the conversation fails.
    Malformed,
    /// Only this conversation cannot go on (403 `dm_not_permitted`, 404, 422, most 400s).
    Conversation,
    /// Nothing of this provider key / account can go on (401, 402, account-level 403/404).
    Fatal,
}

/// A provider failure: class for the engine, status and code for the user, and what to do about it.
/// Never carries message text, response bodies or secrets.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{endpoint}: {}{code}: {hint}", status.map(|s| format!("HTTP {s} ")).unwrap_or_default())]
pub struct ProviderError {
    pub class: ErrorClass,
    /// Route template, e.g. `GET /x/dm/{userId}/history`.
    pub endpoint: &'static str,
    pub status: Option<u16>,
    /// The provider's error code (`dm_not_permitted`) or ours (`timeout`, `malformed_response`).
    pub code: String,
    /// What it means and what to do.
    pub hint: String,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(
        class: ErrorClass,
        endpoint: &'static str,
        status: Option<u16>,
        code: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ProviderError { class, endpoint, status, code: code.into(), hint: hint.into(), retry_after: None }
    }

    /// A 200 whose body is not the documented JSON; `hint` says what was wrong, never a value from it.
    pub fn malformed(endpoint: &'static str, hint: impl Into<String>) -> Self {
        ProviderError::new(ErrorClass::Malformed, endpoint, Some(200), "malformed_response", hint)
    }

    /// A transport failure from reqwest, classified without leaking the URL's query or any header.
    pub fn transport(endpoint: &'static str, e: &reqwest::Error) -> Self {
        let (code, hint) = if e.is_timeout() {
            ("timeout", "the request timed out; will retry (raise request_timeout if this persists)")
        } else if e.is_connect() {
            ("connect_failed", "cannot connect to the provider; check base_url and the network")
        } else if e.is_body() || e.is_decode() {
            ("connection_dropped", "the response was cut short")
        } else {
            ("request_failed", "the connection failed")
        };
        ProviderError::new(ErrorClass::Transient, endpoint, None, code, hint)
    }
}

/// Sends a request and returns the body of a 2xx; anything else goes to the provider's `classify`
/// with the status, the body and the `Retry-After` header (seconds). A body cut short is a dropped
/// connection: transient, never a half-parsed page.
pub(crate) async fn send_classified(
    req: reqwest::RequestBuilder,
    endpoint: &'static str,
    classify: fn(&'static str, u16, &[u8], Option<Duration>) -> ProviderError,
) -> Result<bytes::Bytes, ProviderError> {
    let resp = req.send().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
    let status = resp.status().as_u16();
    let retry_after = retry_after_header(resp.headers());
    let body = resp.bytes().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(classify(endpoint, status, &body, retry_after))
}

/// A `Retry-After` header in seconds (the only form our providers send).
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Default headers carrying a pipeline's secret (`x-api-key: K` or `Authorization: Bearer K`), marked
/// sensitive so Debug output redacts it and no log at any level can print it. `what` names the secret
/// in the error, which never contains its value.
pub(crate) fn secret_headers(
    p: &Pipeline,
    name: reqwest::header::HeaderName,
    value: &str,
    what: &str,
) -> Result<reqwest::header::HeaderMap, crate::config::ConfigError> {
    let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        crate::config::ConfigError(format!(
            "pipeline `{}`: the {what} in {} has characters an HTTP header cannot carry; check it",
            p.name,
            p.api_key.describe()
        ))
    })?;
    v.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(name, v);
    Ok(headers)
}

/// A file as a multipart part, for the uploads of providers that take the file itself.
pub(crate) fn file_part(
    endpoint: &'static str,
    name: &str,
    mime: &str,
    bytes: &[u8],
) -> Result<reqwest::multipart::Part, ProviderError> {
    reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()).mime_str(mime).map_err(|_| {
        ProviderError::new(
            ErrorClass::Conversation,
            endpoint,
            None,
            "invalid_media_type",
            "the media type cannot be sent",
        )
    })
}

/// Longest `Retry-After` we honour as given; beyond it a run would look hung. Clamped, not ignored.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// The wait before retry number `attempt` (0-based). Pure; `jitter` in [0, 1) comes from the caller.
///
/// Exponential from `base`, capped at `max`, with "equal jitter" (half fixed, half random) so many
/// conversations retrying at once spread out. A provider's `Retry-After` is a floor, plus a little jitter.
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exp = policy.base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(policy.max);
    let computed = exp / 2 + exp.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
    match retry_after {
        Some(ra) => ra.min(MAX_RETRY_AFTER) + Duration::from_millis(50).mul_f64(jitter),
        None => computed,
    }
}

/// Malformed pages are retried at most this many times: a broken proxy can recover, a changed API cannot.
const MALFORMED_RETRIES: u32 = 2;

/// The code of a [`ErrorClass::Transient`] error an adapter returns *instead of* sending a request, because
/// the provider's rate-limit window is spent (X API v2): `retry_after` is the time until the window resets.
/// Waiting for a window is not a failure, so [`with_retry`] does not count it as an attempt.
pub const PACING: &str = "rate_limit_pacing";

/// Runs `op` until it succeeds, fails for good, or `cancel` fires (then the last error is returned).
pub async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut attempt = 0u32;
    let mut malformed = 0u32;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let paced = err.code == PACING && err.status.is_none();
        let retry = match err.class {
            ErrorClass::Transient => paced || attempt < policy.max_retries,
            ErrorClass::Malformed => {
                malformed += 1;
                malformed <= MALFORMED_RETRIES && attempt < policy.max_retries
            }
            ErrorClass::Conversation | ErrorClass::Fatal => false,
        };
        if !retry {
            return Err(err);
        }
        let wait = backoff(policy, attempt, err.retry_after, rand::thread_rng().gen());
        tracing::debug!(endpoint = err.endpoint, status = err.status, code = %err.code, attempt, wait_ms = wait.as_millis() as u64, "retrying");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(err),
        }
        if !paced {
            attempt += 1;
        }
    }
}

/// The provider adapters, as one type the engine can hold.
/// A digest of the pipeline's secrets as they read now. The daemon keeps it (never the secrets themselves
/// outside the client) and compares it on SIGHUP, so rewriting a key file and reloading rotates the key of a
/// pipeline whose config did not change.
pub fn secrets_digest(p: &Pipeline) -> Result<u64, crate::config::ConfigError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.api_key.read(&p.name, "API key")?.hash(&mut h);
    if let Some(token) = &p.auth_token {
        token.read(&p.name, "auth_token")?.hash(&mut h);
    }
    Ok(h.finish())
}

pub enum Client {
    Xquik(xquik::Xquik),
    XApiV2(x_api_v2::XApiV2),
    GetXApi(getxapi::GetXApi),
}

impl Client {
    /// Builds the adapter for a pipeline. Reads the pipeline's secrets; the error names where they should be.
    pub fn new(p: &Pipeline) -> Result<Client, crate::config::ConfigError> {
        match p.provider {
            ProviderKind::Xquik => {
                let key = p.api_key.read(&p.name, "API key")?;
                Ok(Client::Xquik(xquik::Xquik::new(p, &key)?))
            }
            ProviderKind::XApiV2 => {
                let token = p.api_key.read(&p.name, "access token")?;
                Ok(Client::XApiV2(x_api_v2::XApiV2::new(p, &token)?))
            }
            ProviderKind::GetXApi => {
                let key = p.api_key.read(&p.name, "API key")?;
                let source = p.auth_token.as_ref().ok_or_else(|| {
                    crate::config::ConfigError(format!("pipeline `{}`: provider getxapi needs auth_token_env", p.name))
                })?;
                let token = source.read(&p.name, "auth_token")?;
                Ok(Client::GetXApi(getxapi::GetXApi::new(p, &key, &token)?))
            }
        }
    }

    /// The route template of the history endpoint, for records and logs.
    pub fn history_endpoint(&self, conv: &Conversation) -> &'static str {
        match (self, conv) {
            (Client::Xquik(_), _) => xquik::HISTORY,
            (Client::XApiV2(_), Conversation::Peer { .. }) => x_api_v2::HISTORY_WITH,
            (Client::XApiV2(_), Conversation::Group { .. }) => x_api_v2::HISTORY_CONV,
            (Client::GetXApi(_), _) => getxapi::HISTORY,
        }
    }

    /// One history page (no retries; wrap in [`with_retry`]).
    pub async fn history(&self, conv: &Conversation, cursor: Option<&str>) -> Result<Page, ProviderError> {
        match self {
            Client::Xquik(c) => c.history(conv, cursor).await,
            Client::XApiV2(c) => c.history(conv, cursor).await,
            Client::GetXApi(c) => c.history(conv, cursor).await,
        }
    }

    /// Looks a user up by ID or username (no `@`).
    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        match self {
            Client::Xquik(c) => c.lookup_user(id_or_username).await,
            Client::XApiV2(c) => c.lookup_user(id_or_username).await,
            Client::GetXApi(c) => c.lookup_user(id_or_username).await,
        }
    }

    /// The account's own user ID, when the provider knows it without a lookup.
    pub fn account_user_id(&self) -> Option<&str> {
        match self {
            Client::Xquik(_) => None,
            // X API v2 and GetXAPI name the account by its numeric ID in the config.
            Client::XApiV2(c) => Some(c.account()),
            Client::GetXApi(c) => Some(c.account()),
        }
    }
}

/// What a write (a DM send or a media upload) has come to, as far as the provider says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Final: the DM or the media exists.
    Done(WriteDone),
    /// Accepted but not yet confirmed: ask again about `action` (the write-action ID) after `after`.
    Pending { action: String, after: Duration },
    /// Final failure. `safe_to_retry`: the provider says nothing was dispatched.
    Failed { code: String, safe_to_retry: bool },
}

/// A confirmed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteDone {
    /// The DM's message ID, or the upload's media ID.
    pub id: String,
    /// The public media URL of an upload, when the provider gives one.
    pub url: Option<String>,
    /// When the provider completed it, as the provider wrote it (unnormalized).
    pub at: Option<String>,
}

/// Which result a write-action status is read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    DirectMessage,
    Media,
}

/// Media to upload, already checked by the caller (type and size).
#[derive(Clone, Debug)]
pub enum Upload {
    /// A local file's bytes, sent as multipart.
    File { name: String, mime: &'static str, bytes: Vec<u8> },
    /// An HTTPS URL the provider fetches itself.
    Url(String),
}

/// Outbound writes: sends, uploads and write-action polls (no retries; wrap in [`with_retry`]).
/// Every write carries the caller's idempotency key, so repeating one never writes twice.
impl Client {
    /// The route template of the DM send endpoint, for records and logs.
    pub fn send_endpoint(&self) -> &'static str {
        match self {
            Client::Xquik(_) => xquik::SEND_DM,
            Client::XApiV2(_) => x_api_v2::SEND_WITH,
            Client::GetXApi(_) => getxapi::SEND_DM,
        }
    }

    /// Sends a DM to a numeric user ID, with at most one uploaded media ID.
    pub async fn send_dm(
        &self,
        to: &str,
        text: &str,
        media_id: Option<&str>,
        idempotency_key: &str,
    ) -> Result<WriteState, ProviderError> {
        match self {
            Client::Xquik(c) => c.send_dm(to, text, media_id, idempotency_key).await,
            // Neither takes an idempotency key: a send interrupted before its record can be sent twice.
            Client::XApiV2(c) => c.send_dm(to, text, media_id).await,
            Client::GetXApi(c) => c.send_dm(to, text, media_id).await,
        }
    }

    /// Uploads media for a DM attachment.
    pub async fn upload_media(&self, upload: &Upload, idempotency_key: &str) -> Result<WriteState, ProviderError> {
        match self {
            Client::Xquik(c) => c.upload_media(upload, idempotency_key).await,
            Client::XApiV2(c) => c.upload_media(upload).await,
            Client::GetXApi(c) => c.upload_media(upload).await,
        }
    }

    /// Asks where a pending write stands.
    pub async fn write_action(&self, action: &str, kind: WriteKind) -> Result<WriteState, ProviderError> {
        match self {
            Client::Xquik(c) => c.write_action(action, kind).await,
            Client::XApiV2(c) => c.write_action(action, kind).await,
            Client::GetXApi(c) => c.write_action(action, kind).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            request_timeout: Duration::from_secs(5),
            max_retries: 3,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = policy();
        assert_eq!(backoff(&p, 0, None, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&p, 0, None, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(&p, 3, None, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(&p, 30, None, 0.0), Duration::from_secs(1), "capped at max, halved by jitter floor");
        assert!(backoff(&p, 30, None, 0.99) <= Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_a_floor_and_is_clamped() {
        let p = policy();
        assert!(backoff(&p, 0, Some(Duration::from_secs(7)), 0.5) >= Duration::from_secs(7));
        assert!(backoff(&p, 0, Some(Duration::from_secs(86_400)), 0.0) <= MAX_RETRY_AFTER);
    }

    fn fail(class: ErrorClass) -> ProviderError {
        ProviderError {
            retry_after: Some(Duration::from_millis(1)),
            ..ProviderError::new(class, "GET /t", Some(503), "x", "y")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_is_retried_until_success_but_fatal_is_not() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let r: Result<u32, _> = with_retry(&policy(), &cancel, || {
            calls += 1;
            let c = calls;
            async move {
                if c < 3 {
                    Err(fail(ErrorClass::Transient))
                } else {
                    Ok(c)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        for class in [ErrorClass::Fatal, ErrorClass::Conversation] {
            let mut calls = 0;
            let r: Result<(), _> = with_retry(&policy(), &cancel, || {
                calls += 1;
                async move { Err(fail(class)) }
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls, 1, "{class:?} must never be retried");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let _ = with_retry::<(), _, _>(&policy(), &cancel, || {
            calls += 1;
            async { Err(fail(ErrorClass::Transient)) }
        })
        .await;
        assert_eq!(calls, 4, "one try plus max_retries");
        let mut calls = 0;
        let _ = with_retry::<(), _, _>(&policy(), &cancel, || {
            calls += 1;
            async { Err(fail(ErrorClass::Malformed)) }
        })
        .await;
        assert_eq!(calls, 1 + MALFORMED_RETRIES);
    }
}
