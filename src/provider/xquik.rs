//! The Xquik adapter: `GET /x/dm/{userId}/history` and `GET /x/users/{id}` (PROVIDERS.md section 1).
//!
//! Parsing is tolerant where the docs and the live API may differ (camelCase or snake_case fields, IDs as
//! strings or numbers, `error` as a string or an object, `next_cursor` as "" or null) and strict where
//! guessing would lose data (a page without `messages`, or `has_next_page` with no cursor, is malformed).
//! The cursor is sent back exactly as received; reqwest's query encoding handles `+`, `/` and `=`.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;

use super::{ErrorClass, Page, ProviderError, User};
use crate::config::Pipeline;
use crate::record::{Conversation, Item};

/// Route templates, as they appear in records and logs.
pub const HISTORY: &str = "GET /x/dm/{userId}/history";
pub const USER: &str = "GET /x/users/{id}";

/// A configured Xquik client for one pipeline.
pub struct Xquik {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `https://xquik.com/api/v1`.
    base: String,
    /// The connected account's handle, sent as `account`.
    account: String,
}

impl Xquik {
    pub fn new(p: &Pipeline, api_key: &str) -> Result<Xquik, crate::config::ConfigError> {
        let mut key = HeaderValue::from_str(api_key).map_err(|_| {
            crate::config::ConfigError(format!(
                "pipeline `{}`: the API key in {} has characters an HTTP header cannot carry; check it",
                p.name,
                p.api_key.describe()
            ))
        })?;
        // Sensitive headers are redacted from Debug output, so no log at any level can print the key.
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key);
        Ok(Xquik {
            http: http_client(p, headers)?,
            base: p.base_url.clone(),
            account: p.account.clone(),
        })
    }

    pub async fn history(
        &self,
        conv: &Conversation,
        cursor: Option<&str>,
    ) -> Result<Page, ProviderError> {
        let peer = conv.key();
        let url = format!("{}/x/dm/{peer}/history", self.base);
        let mut req = self
            .http
            .get(url)
            .query(&[("account", self.account.as_str())]);
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]);
        }
        let body = send(req, HISTORY).await?;
        let page: HistoryBody =
            serde_json::from_slice(&body).map_err(|e| malformed(HISTORY, &e))?;
        let next_cursor = page.next_cursor.filter(|c| !c.is_empty());
        if page.has_next_page && next_cursor.is_none() {
            return Err(ProviderError::new(
                ErrorClass::Malformed,
                HISTORY,
                Some(200),
                "malformed_response",
                "has_next_page is true but next_cursor is empty",
            ));
        }
        let mut items = Vec::with_capacity(page.messages.len());
        for m in page.messages {
            if !valid_id(&m.id) || !valid_id(&m.sender_id) || !valid_id(&m.receiver_id) {
                return Err(ProviderError::new(
                    ErrorClass::Malformed,
                    HISTORY,
                    Some(200),
                    "malformed_response",
                    "a message has an invalid id",
                ));
            }
            items.push(Item {
                id: m.id.0,
                sender_id: Some(m.sender_id.0),
                receiver_id: Some(m.receiver_id.0),
                created_at: m.created_at,
                text: m.text,
                media_url: m.media_url,
                ..Item::default()
            });
        }
        Ok(Page {
            credits: items.len() as u64,
            items,
            next_cursor: if page.has_next_page {
                next_cursor
            } else {
                None
            },
        })
    }

    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        let url = format!(
            "{}/x/users/{}",
            self.base,
            id_or_username.trim_start_matches('@')
        );
        let body = send(self.http.get(url), USER).await?;
        let u: UserBody = serde_json::from_slice(&body).map_err(|e| malformed(USER, &e))?;
        if !valid_id(&u.id) {
            return Err(ProviderError::new(
                ErrorClass::Malformed,
                USER,
                Some(200),
                "malformed_response",
                "the user has an invalid id",
            ));
        }
        Ok(User {
            id: u.id.0,
            username: u.username,
            name: u.name,
            can_dm: u.can_dm,
        })
    }
}

/// The HTTP client every adapter uses: one per pipeline, so connections are reused across pages.
pub(crate) fn http_client(
    p: &Pipeline,
    headers: HeaderMap,
) -> Result<reqwest::Client, crate::config::ConfigError> {
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("dm-handoff/", env!("CARGO_PKG_VERSION")))
        .timeout(p.retry.request_timeout)
        .connect_timeout(p.retry.request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| {
            crate::config::ConfigError(format!("pipeline `{}`: cannot set up HTTP: {e}", p.name))
        })
}

/// Sends a request and returns the body of a 2xx, or the classified error.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    endpoint: &'static str,
) -> Result<bytes::Bytes, ProviderError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::transport(endpoint, &e))?;
    let status = resp.status().as_u16();
    let retry_after_header = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // A body cut short is a dropped connection: transient, never a half-parsed page.
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProviderError::transport(endpoint, &e))?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(classify(endpoint, status, &body, retry_after_header))
}

/// Maps an Xquik error response to its class and a hint, per PROVIDERS.md and SPEC section 5.
pub(crate) fn classify(
    endpoint: &'static str,
    status: u16,
    body: &[u8],
    retry_after_header: Option<Duration>,
) -> ProviderError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed
        .error
        .as_ref()
        .map(ErrorField::code)
        .unwrap_or_default();
    let code = if code.is_empty() {
        format!("http_{status}")
    } else {
        code
    };
    let retry_after = retry_after_header
        .or(parsed.retry_after.map(Duration::from_secs))
        .or(parsed.retry_after_ms.map(Duration::from_millis));
    use ErrorClass::*;
    let (class, hint) = match (status, code.as_str()) {
        (429, _) => (Transient, "rate limited; waiting as the provider asks"),
        (502..=504, _) | (424, _) => (Transient, "the provider or X is unavailable; will retry"),
        (401, _) => (Fatal, "the API key was rejected; check the key in the pipeline's api_key_env / api_key_file"),
        (402, _) => (Fatal, "billing: subscribe or top up credits, then run again"),
        (403, "account_needs_reauth") => (Fatal, "reconnect the sender account in the Xquik dashboard"),
        (403, "account_restricted") => (Fatal, "the sender account is restricted by X; use another account"),
        (403, "dm_not_permitted") => {
            (Conversation, "the account is not a participant of this conversation or its session expired; use a participant account or reconnect it")
        }
        (403, _) => (Conversation, "forbidden for this conversation"),
        (404, "account_not_found") => (Fatal, "the `account` is not connected to this API key; fix `account` in the config"),
        (400, "account_required") => (Fatal, "set `account` to the connected sender handle"),
        (400, "invalid_user_id") => (Conversation, "the conversation must be a numeric user ID; fix the conversations list"),
        (404, "user_not_found") => (Conversation, "no such user"),
        (409, _) => (Conversation, "the idempotency key was used with a different payload; use a new key"),
        (422, "x_dm_not_allowed") => {
            (Conversation, "the recipient does not accept DMs from this account; use another permitted account or ask the recipient to allow messages")
        }
        (422, _) => (Conversation, "X rejected the request; check the recipient, account state and content"),
        (400, _) => (Conversation, "the provider rejected the request"),
        (404, _) => (Conversation, "not found"),
        _ => (Conversation, "unexpected response from the provider"),
    };
    ProviderError {
        retry_after: if class == Transient {
            retry_after
        } else {
            None
        },
        ..ProviderError::new(class, endpoint, Some(status), code, hint)
    }
}

fn malformed(endpoint: &'static str, e: &serde_json::Error) -> ProviderError {
    // serde's message names the field or position, never the value of a string.
    ProviderError::new(
        ErrorClass::Malformed,
        endpoint,
        Some(200),
        "malformed_response",
        format!(
            "the body is not the documented JSON ({})",
            e.classify_name()
        ),
    )
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// IDs become sled key parts and file names' neighbours: keep them to a safe alphabet.
fn valid_id(id: &Id) -> bool {
    !id.0.is_empty()
        && id.0.len() <= 64
        && id
            .0
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An ID that may arrive as a JSON string or number; always kept as a string.
#[derive(Debug)]
pub(crate) struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::S(s) => Id(s),
            Raw::N(n) => Id(n.to_string()),
        })
    }
}

#[derive(Deserialize)]
struct HistoryBody {
    messages: Vec<WireMessage>,
    #[serde(alias = "hasNextPage")]
    has_next_page: bool,
    #[serde(default, alias = "nextCursor")]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    id: Id,
    #[serde(default)]
    text: Option<String>,
    #[serde(alias = "sender_id")]
    #[serde(rename = "senderId")]
    sender_id: Id,
    #[serde(alias = "receiver_id")]
    #[serde(rename = "receiverId")]
    receiver_id: Id,
    #[serde(default, rename = "createdAt", alias = "created_at")]
    created_at: Option<String>,
    #[serde(default, rename = "mediaUrl", alias = "media_url")]
    media_url: Option<String>,
}

#[derive(Deserialize)]
struct UserBody {
    id: Id,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "canDm", alias = "can_dm")]
    can_dm: Option<bool>,
}

#[derive(Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorField>,
    #[serde(default, rename = "retryAfter", alias = "retry_after")]
    retry_after: Option<u64>,
    #[serde(default, rename = "retryAfterMs", alias = "retry_after_ms")]
    retry_after_ms: Option<u64>,
}

/// `error` is a code string by default and an object with the `xquik-api-contract` header.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Code(String),
    Object {
        #[serde(default)]
        code: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
    },
}

impl ErrorField {
    fn code(&self) -> String {
        let raw = match self {
            ErrorField::Code(c) => c.clone(),
            ErrorField::Object { code, kind } => {
                code.clone().or_else(|| kind.clone()).unwrap_or_default()
            }
        };
        // Codes are snake_case identifiers; anything else (a sentence) is not echoed, to keep errors one short line.
        if raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            raw
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_shapes_are_read() {
        let e = classify(
            HISTORY,
            403,
            br#"{"error":"dm_not_permitted","message":"m"}"#,
            None,
        );
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Conversation, "dm_not_permitted")
        );
        let e = classify(
            HISTORY,
            401,
            br#"{"error":{"message":"m","type":"authentication_error","code":"unauthenticated"}}"#,
            None,
        );
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "unauthenticated")
        );
        let e = classify(HISTORY, 503, b"<html>oops</html>", None);
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Transient, "http_503")
        );
    }

    #[test]
    fn retry_after_comes_from_header_or_body() {
        let e = classify(
            HISTORY,
            429,
            br#"{"error":"rate_limit_exceeded","retryAfter":7}"#,
            None,
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let e = classify(
            HISTORY,
            429,
            br#"{"error":"rate_limit_exceeded","retryAfter":7}"#,
            Some(Duration::from_secs(2)),
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        let e = classify(HISTORY, 429, br#"{"error":"x","retryAfterMs":1500}"#, None);
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn never_retried_codes_are_not_transient() {
        for s in [400, 401, 402, 403, 404, 409, 422] {
            assert_ne!(
                classify(HISTORY, s, b"{}", None).class,
                ErrorClass::Transient,
                "{s}"
            );
        }
        for s in [429, 502, 503, 504] {
            assert_eq!(
                classify(HISTORY, s, b"{}", None).class,
                ErrorClass::Transient,
                "{s}"
            );
        }
    }

    #[test]
    fn history_body_variants_parse() {
        let b: HistoryBody = serde_json::from_str(r#"{"messages":[{"id":1,"senderId":"2","receiverId":3}],"has_next_page":false,"next_cursor":null}"#).unwrap();
        assert_eq!(b.messages[0].id.0, "1");
        assert_eq!(b.messages[0].receiver_id.0, "3");
        let b: HistoryBody = serde_json::from_str(r#"{"messages":[{"id":"1","sender_id":"2","receiver_id":"3","created_at":"x"}],"has_next_page":true,"next_cursor":"a+b/c="}"#).unwrap();
        assert_eq!(b.next_cursor.as_deref(), Some("a+b/c="));
        assert!(serde_json::from_str::<HistoryBody>(r#"{"data":[]}"#).is_err());
    }
}
