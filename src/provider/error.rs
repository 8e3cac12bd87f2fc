//! What went wrong with a provider, as the engine needs to know it: an [`ErrorClass`] to branch on, and for
//! the user the endpoint, status, the provider's error code and what to do. Never a response body, message
//! text or a secret.

use std::time::Duration;

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
    /// The provider no longer accepts the cursor the request carried (expired, superseded, invalid): the
    /// pass may restart once without it, and the seen set absorbs the overlap. Each adapter sets this from
    /// its own codes; a request without a cursor that gets it is an ordinary [`ErrorClass::Conversation`].
    pub cursor_rejected: bool,
}

impl ProviderError {
    pub fn new(
        class: ErrorClass,
        endpoint: &'static str,
        status: Option<u16>,
        code: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ProviderError {
            class,
            endpoint,
            status,
            code: code.into(),
            hint: hint.into(),
            retry_after: None,
            cursor_rejected: false,
        }
    }

    /// The provider refused the request's cursor; see [`ProviderError::cursor_rejected`].
    pub fn rejected_cursor(endpoint: &'static str, status: u16, code: impl Into<String>) -> Self {
        ProviderError {
            cursor_rejected: true,
            ..ProviderError::new(
                ErrorClass::Conversation,
                endpoint,
                Some(status),
                code,
                "the provider no longer accepts this cursor (expired, superseded or invalid); the pass restarts once \
                 without it, and what it already wrote is skipped",
            )
        }
    }

    /// Whether a route template is a GET read: a 5xx there is retried, and a 409 does not mean a reused
    /// idempotency key. (GetXAPI reads with POST; its adapter names its read routes itself.)
    pub fn is_read(endpoint: &str) -> bool {
        endpoint.starts_with("GET ")
    }

    /// A 200 whose body is not the documented JSON; `hint` says what was wrong, never a value from it.
    pub fn malformed(endpoint: &'static str, hint: impl Into<String>) -> Self {
        ProviderError::new(ErrorClass::Malformed, endpoint, Some(200), "malformed_response", hint)
    }

    /// A body serde could not read as the documented JSON. Only serde's category is kept: its message can
    /// quote a value from the body (message text).
    pub fn bad_json(endpoint: &'static str, e: &serde_json::Error) -> Self {
        let what = match e.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated",
        };
        ProviderError::malformed(endpoint, format!("the body is not the documented JSON ({what})"))
    }

    /// What happened, without our hint: the endpoint, the status and the code (for messages where the hint,
    /// written for reads, would mislead).
    pub fn cause(&self) -> String {
        match self.status {
            Some(s) => format!("{}: HTTP {s} {}", self.endpoint, self.code),
            None => format!("{}: {}", self.endpoint, self.code),
        }
    }

    /// A transport failure from reqwest, classified without leaking the URL's query or any header.
    pub fn transport(endpoint: &'static str, e: &reqwest::Error) -> Self {
        // A connection that was never made comes first, also when it timed out: a write's request was then
        // never written, which is what makes retrying it safe (SPEC 8.8).
        let (code, hint) = if e.is_connect() {
            ("connect_failed", "cannot connect to the provider; check base_url and the network")
        } else if e.is_timeout() {
            ("timeout", "the request timed out; will retry (raise request_timeout if this persists)")
        } else if e.is_body() || e.is_decode() {
            ("connection_dropped", "the response was cut short")
        } else {
            ("request_failed", "the connection failed")
        };
        ProviderError::new(ErrorClass::Transient, endpoint, None, code, hint)
    }
}
