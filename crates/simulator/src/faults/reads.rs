//! Read faults: the documented ways a history or inbox read fails on a cursor (busy, gone,
//! invalid) or on the server (a 500), queued like write faults and taken by the next read they
//! match. Deterministic by design: they draw nothing from the random stream.
//!
//! Each provider words the answer its own way (see [`ReadFaultKind`]); this module only matches
//! and counts them down.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::json;
use crate::writes::SimProvider;
use crate::Simulator;

/// How a read fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFaultKind {
    /// The cursor is in use for now: 409 with `Retry-After` (Xquik `coverage_cursor_unavailable`;
    /// X API v2 and GetXAPI a bare 409 with the header). The same cursor works afterwards.
    CursorBusy,
    /// The cursor finished, expired or was superseded: 410 without `Retry-After` (Xquik
    /// `coverage_cursor_gone`). Pagination must restart without a cursor.
    CursorGone,
    /// The cursor is not valid: 400 (Xquik `invalid_coverage_cursor`; X API v2 an invalid-request
    /// problem whose `errors[]` names `pagination_token`; GetXAPI `{"error":"Invalid cursor"}`).
    CursorInvalid,
    /// A 500 (Xquik `internal_error`, X API v2 `internal-error` problem, GetXAPI a bare 500).
    ServerError,
}

impl ReadFaultKind {
    /// The cursor kinds only match reads that carry a cursor.
    pub fn needs_cursor(self) -> bool {
        !matches!(self, ReadFaultKind::ServerError)
    }

    /// The snake_case name, as in [`Stats::read_faults`](crate::Stats::read_faults).
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

/// One queued read failure. Only `kind` is required in a scenario or `PUT /_sim/faults`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFault {
    pub kind: ReadFaultKind,
    /// Only this provider's reads (default: any).
    #[serde(default)]
    pub provider: Option<SimProvider>,
    /// Only reads of the 1:1 conversation with this peer (user ID); an inbox read has no peer, so
    /// an entry with a peer never matches it.
    #[serde(default)]
    pub peer: Option<String>,
    /// How many matching reads get it (default 1); 0 means every matching read, for good.
    #[serde(default = "one")]
    pub times: u32,
    /// `cursor_busy`: seconds in `Retry-After` (default 1, at least 1).
    #[serde(default = "one_u64")]
    pub retry_after_secs: u64,
}

fn one() -> u32 {
    1
}

fn one_u64() -> u64 {
    1
}

impl ReadFault {
    /// The next matching read (any provider and peer) fails this way, once.
    pub fn new(kind: ReadFaultKind) -> ReadFault {
        ReadFault { kind, provider: None, peer: None, times: 1, retry_after_secs: 1 }
    }

    fn matches(&self, provider: SimProvider, peer: Option<&str>, has_cursor: bool) -> bool {
        (!self.kind.needs_cursor() || has_cursor)
            && self.provider.is_none_or(|p| p == provider)
            && self.peer.as_deref().is_none_or(|want| peer.is_some_and(|p| p.trim() == want.trim()))
    }
}

/// Takes the first queued read fault that matches this read, counting its `times` down.
pub(crate) fn take(
    queue: &mut Vec<ReadFault>,
    provider: SimProvider,
    peer: Option<&str>,
    has_cursor: bool,
) -> Option<ReadFault> {
    let i = queue.iter().position(|f| f.matches(provider, peer, has_cursor))?;
    let f = queue[i].clone();
    match queue[i].times {
        0 => {}
        1 => {
            queue.remove(i);
        }
        _ => queue[i].times -= 1,
    }
    Some(f)
}

impl Simulator {
    /// The read fault, if any, for the read a route is about to answer; booked in the stats.
    pub(crate) fn take_read_fault(
        &self,
        provider: SimProvider,
        peer: Option<&str>,
        has_cursor: bool,
    ) -> Option<Response> {
        let f = self.inner.faults.take_read(provider, peer, has_cursor)?;
        self.inner.stats.read_fault(&f.kind.name());
        tracing::debug!(?provider, kind = ?f.kind, "simulator: injecting a read fault");
        Some(answer(provider, &f))
    }
}

/// The provider's answer for a read fault.
fn answer(provider: SimProvider, f: &ReadFault) -> Response {
    use ReadFaultKind::*;
    let (status, body) = match (provider, f.kind) {
        (SimProvider::Xquik, CursorBusy) => (
            409,
            json!({"error": "coverage_cursor_unavailable", "message": "Cursor busy. Retry after the indicated delay."}),
        ),
        (SimProvider::Xquik, CursorGone) => (
            410,
            json!({"error": "coverage_cursor_gone", "message": "Cursor finished, expired, or superseded. Restart pagination without cursor."}),
        ),
        (SimProvider::Xquik, CursorInvalid) => {
            (400, json!({"error": "invalid_coverage_cursor", "message": "The cursor is not valid."}))
        }
        (SimProvider::Xquik, ServerError) => (500, json!({"error": "internal_error", "message": "Internal error."})),
        (SimProvider::XApiV2, CursorInvalid) => (
            400,
            // X's shape for a rejected query parameter: the problem, plus `errors[]` naming it.
            json!({
                "errors": [{
                    "parameters": {"pagination_token": ["(rejected)"]},
                    "message": "The `pagination_token` query parameter value [(rejected)] is not valid"
                }],
                "title": "Invalid Request",
                "detail": "One or more parameters to your request was invalid.",
                "type": "https://api.x.com/2/problems/invalid-request"
            }),
        ),
        (SimProvider::XApiV2, ServerError) => (
            500,
            json!({"title": "Internal Server Error", "detail": "Internal Server Error", "type": "https://api.x.com/2/problems/internal-error", "status": 500}),
        ),
        (SimProvider::XApiV2, CursorBusy) => {
            (409, json!({"title": "Conflict", "detail": "Try again later.", "type": "about:blank", "status": 409}))
        }
        (SimProvider::XApiV2, CursorGone) => {
            (410, json!({"title": "Gone", "detail": "The cursor is gone.", "type": "about:blank", "status": 410}))
        }
        (SimProvider::GetXApi, CursorBusy) => (409, json!({"error": "Cursor busy, retry later"})),
        (SimProvider::GetXApi, CursorGone) => (410, json!({"error": "Cursor expired"})),
        (SimProvider::GetXApi, CursorInvalid) => (400, json!({"error": "Invalid cursor"})),
        (SimProvider::GetXApi, ServerError) => (500, json!({"error": "Internal Server Error"})),
    };
    let mut resp = json(status, &body);
    if provider == SimProvider::XApiV2 {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    }
    if f.kind == CursorBusy {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(f.retry_after_secs.max(1)));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_faults_wait_for_a_cursor_and_count_down() {
        let mut q = vec![
            ReadFault { times: 2, peer: Some("7".into()), ..ReadFault::new(ReadFaultKind::CursorGone) },
            ReadFault { provider: Some(SimProvider::XApiV2), ..ReadFault::new(ReadFaultKind::ServerError) },
        ];
        assert_eq!(take(&mut q, SimProvider::Xquik, Some("7"), false), None, "no cursor, and not X API v2");
        assert_eq!(take(&mut q, SimProvider::Xquik, Some("8"), true), None, "another peer");
        for _ in 0..2 {
            assert_eq!(
                take(&mut q, SimProvider::Xquik, Some("7"), true).map(|f| f.kind),
                Some(ReadFaultKind::CursorGone)
            );
        }
        assert_eq!(take(&mut q, SimProvider::Xquik, Some("7"), true), None);
        assert_eq!(take(&mut q, SimProvider::XApiV2, None, false).map(|f| f.kind), Some(ReadFaultKind::ServerError));
        assert!(q.is_empty());
    }
}
