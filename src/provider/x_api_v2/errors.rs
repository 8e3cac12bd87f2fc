//! X API v2 errors, problem+json or the legacy `{"errors":[{code,message}]}`, mapped to the shared
//! [`ErrorClass`]es (SPEC section 5). Bodies are read to classify, never echoed.

use std::time::Duration;

use serde::Deserialize;

use crate::provider::{ErrorClass, ProviderError};

/// The code of a 400 that rejected one of the fields or expansions we asked for.
pub(super) const UNKNOWN_FIELD: &str = "unknown_field";

/// Maps an X API v2 error (problem+json or legacy `errors[]`) to its class, per SPEC section 5.
pub(crate) fn classify(
    endpoint: &'static str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ProviderError {
    let p = ProblemBody::parse(body);
    // X's 401 is a bare `about:blank` problem; name it like the other providers' code for it.
    let fallback = if status == 401 { "unauthenticated".to_string() } else { format!("http_{status}") };
    let code = p.code().unwrap_or(fallback);
    let read = ProviderError::is_read(endpoint);
    if read && (status == 410 || (status == 400 && p.names_pagination_token())) {
        // A `pagination_token` X does not accept (expired, or from another query): restart without it.
        return ProviderError::rejected_cursor(endpoint, status, code);
    }
    use ErrorClass::*;
    let (class, code, hint) = match status {
        409 if read && retry_after.is_some() => (Transient, code, "X asked us to try again later"),
        500..=599 if read => (Transient, code, "X failed to answer; will retry"),
        429 => (Transient, code, "rate limited by X; waiting until the window resets"),
        502..=504 => (Transient, code, "X is unavailable; will retry"),
        401 => (Fatal, code, "X rejected the access token (expired or revoked); put a fresh OAuth 2.0 user token in the pipeline's api_key_env / api_key_file"),
        403 if p.about_credentials() => (Fatal, code, "the token or app may not do this: it needs the dm.read, dm.write, tweet.read and users.read scopes (media.write to upload) and DM access for the app"),
        403 => (Conversation, code, "X does not let this account read or message this conversation"),
        404 => (Conversation, code, "not found: the conversation or event does not exist for this account, or is older than 30 days"),
        400 if p.names_a_field() => (Conversation, UNKNOWN_FIELD.to_string(), "X rejected a requested field"),
        400 => (Conversation, code, "X rejected the request"),
        _ => (Conversation, code, "unexpected response from X"),
    };
    ProviderError {
        retry_after: if class == Transient { retry_after } else { None },
        ..ProviderError::new(class, endpoint, Some(status), code, hint)
    }
}

/// The parts of either error shape we read. `detail`, `title` and `message` are only searched for a few
/// words to classify; they never reach an error message or a log.
#[derive(Default, Deserialize)]
pub(super) struct ProblemBody {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) title: Option<String>,
    #[serde(default)]
    pub(super) detail: Option<String>,
    #[serde(default)]
    pub(super) errors: Vec<LegacyError>,
}

#[derive(Default, Deserialize)]
pub(super) struct LegacyError {
    #[serde(default)]
    pub(super) code: Option<i64>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) detail: Option<String>,
    #[serde(default)]
    pub(super) parameter: Option<String>,
    /// X's legacy-style list of the rejected query parameters: `{"pagination_token": ["…"]}`.
    #[serde(default)]
    pub(super) parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ProblemBody {
    pub(super) fn parse(body: &[u8]) -> ProblemBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// `not_authorized_for_resource` from a problem type URI, or `x_88` from a legacy code.
    pub(super) fn code(&self) -> Option<String> {
        let from_type = |t: &str| {
            let last = t.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            (last != "about:blank"
                && !last.is_empty()
                && last.len() <= 64
                && last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .then(|| last.replace('-', "_"))
        };
        self.kind
            .as_deref()
            .and_then(from_type)
            .or_else(|| self.errors.iter().find_map(|e| e.kind.as_deref().and_then(from_type)))
            .or_else(|| self.errors.iter().find_map(|e| e.code).map(|c| format!("x_{c}")))
    }

    pub(super) fn texts(&self) -> impl Iterator<Item = String> + '_ {
        [self.title.as_deref(), self.detail.as_deref(), self.kind.as_deref()]
            .into_iter()
            .chain(
                self.errors.iter().flat_map(|e| {
                    [e.message.as_deref(), e.detail.as_deref(), e.kind.as_deref(), e.parameter.as_deref()]
                }),
            )
            .flatten()
            .map(str::to_ascii_lowercase)
    }

    /// A 403 about the token, its scopes or the app's access, rather than about this conversation.
    pub(super) fn about_credentials(&self) -> bool {
        const CODES: [i64; 5] = [32, 89, 220, 261, 453];
        self.errors.iter().any(|e| e.code.is_some_and(|c| CODES.contains(&c)))
            || self.texts().any(|t| {
                [
                    "scope",
                    "token",
                    "oauth",
                    "authenticat",
                    "client-forbidden",
                    "unsupported-authentication",
                    "access level",
                    "client application",
                ]
                .iter()
                .any(|w| t.contains(w))
            })
    }

    /// A 400 that names `pagination_token` as the parameter it rejected (in `errors[].parameters`, or the
    /// problem's `parameter`).
    pub(super) fn names_pagination_token(&self) -> bool {
        self.errors.iter().any(|e| {
            e.parameters.as_ref().is_some_and(|m| m.contains_key("pagination_token"))
                || e.parameter.as_deref() == Some("pagination_token")
        }) || self.texts().any(|t| t.contains("pagination_token"))
    }

    /// A 400 that names one of the fields or expansions we asked for.
    pub(super) fn names_a_field(&self) -> bool {
        self.texts().any(|t| {
            t.contains("dm_event.fields")
                || t.contains("sender_id")
                || t.contains("participant_ids")
                || t.contains("expansions")
        })
    }
}
