//! Writes that fail the ways the providers' do (SPEC 8.8), and the log of writes that were
//! performed, so a test can check "sent at most once" against what really happened.
//!
//! A [`WriteFault`] is queued in [`Faults::write_faults`](super::Faults::write_faults). The next
//! write it matches (provider, action, peer) takes it. Some kinds refuse the write (nothing is
//! sent: a 429, a 402, a 5xx before dispatch); the others perform it (the message is in the
//! conversation, the group exists, the event is deleted, the media is stored) and then lose or
//! spoil the answer. Which kinds exist and what each provider answers is documented on
//! [`WriteFaultKind`]; the provider modules shape the provider-specific answers, this module the
//! neutral ones (no answer, a cut body, a garbled body, a late answer).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::faults;
use super::{lock, Simulator};

/// How many performed writes [`Simulator::writes`](super::Simulator::writes) keeps; older ones
/// fall off (a benchmark may send far more than a test looks at).
pub(crate) const WRITE_LOG_CAPACITY: usize = 100_000;

/// The three simulated providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SimProvider {
    #[serde(rename = "xquik")]
    Xquik,
    #[serde(rename = "x_api_v2")]
    XApiV2,
    #[serde(rename = "getxapi")]
    GetXApi,
}

/// What a write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimWriteAction {
    /// A DM: Xquik `POST /x/dm/{userId}`, X API v2 `POST /2/dm_conversations/with/{id}/messages`
    /// and `POST /2/dm_conversations/{id}/messages`, GetXAPI `POST /twitter/dm/send`.
    Send,
    /// Xquik `POST /x/media`, X API v2 `POST /2/media/upload`.
    Upload,
    /// X API v2 `DELETE /2/dm_events/{event_id}`.
    Delete,
    /// X API v2 `POST /2/dm_conversations` (a new group with its first message).
    CreateGroup,
}

/// How a write fails. Kinds marked "performed" do the write first; the others send nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteFaultKind {
    // -- Every provider; performed, then the answer is lost or spoiled.
    /// Performed; the connection is closed without any response bytes.
    Drop,
    /// Performed; the success status and headers arrive, then the body is cut short.
    Cut,
    /// Performed; the success status with a body that is not valid JSON.
    Garble,
    /// Performed; a success without the id: Xquik 200 `{"success":true}`, X API v2 201 `{}`
    /// (200 `{}` for deletes and uploads), GetXAPI 200 `{"status":"success","msg":"DM sent successfully"}`.
    NoData,
    /// Performed; the normal answer comes after [`WriteFault::delay_secs`] (past a client's
    /// timeout).
    #[serde(alias = "timeout")]
    Slow,
    /// Performed; then a 5xx: Xquik 500 `x_write_ambiguous` (the write action is `failed`,
    /// `safeToRetry: false`), X API v2 503 problem, GetXAPI 502.
    #[serde(alias = "x_write_ambiguous")]
    ServerError,
    // -- Every provider; nothing is sent.
    /// Not performed; a 5xx: Xquik 500 `x_write_failed` (the write action is `failed`,
    /// `safeToRetry: true`), X API v2 500 `internal-error` problem, GetXAPI 500.
    #[serde(alias = "x_write_failed")]
    ServerErrorNotSent,
    /// Not performed; the provider's 429: Xquik `rate_limit_exceeded` with `Retry-After`, X API v2
    /// with `x-rate-limit-*` headers, GetXAPI `retry_after` in the body.
    RateLimited,
    // -- Xquik only; nothing is sent.
    /// 402 `no_subscription`.
    NoSubscription,
    /// 402 `insufficient_credits`.
    InsufficientCredits,
    /// 403 `account_restricted`.
    AccountRestricted,
    /// 403 `account_needs_reauth`.
    AccountNeedsReauth,
    /// 502 `x_api_unavailable`; 424 with a structured `error` when the request opted in with
    /// `xquik-api-contract: 2026-04-29`.
    DependencyError,
    /// 503 `write_tracking_unavailable` with `Retry-After`.
    WriteTrackingUnavailable,
    /// 429 `x_rate_limited` (X throttled the account) with `retryAfter` and `Retry-After`.
    XRateLimited,
    /// 429 `x_daily_limit` with `retryAfter` and `Retry-After`.
    XDailyLimit,
    /// The write action ends `failed` with `safeToRetry: true` and `sendDispatched: false`: a
    /// final 200, or a 202 first when [`WriteFault::polls`] > 0.
    FailedSafe,
    // -- Xquik only; performed.
    /// The write action ends `failed` with `safeToRetry: false` (`x_write_ambiguous`,
    /// `sendDispatched: true`): the message may have gone, and it has.
    FailedUnsafe,
    /// The write action ends `expired` (`sendDispatched: true`, never confirmed).
    Expired,
}

impl WriteFaultKind {
    /// Whether the write happens before the answer goes wrong.
    pub fn performs(self) -> bool {
        use WriteFaultKind::*;
        matches!(self, Drop | Cut | Garble | NoData | Slow | ServerError | FailedUnsafe | Expired)
    }

    /// Whether this provider has the failure; others' writes pass such an entry by.
    pub fn applies_to(self, provider: SimProvider) -> bool {
        use WriteFaultKind::*;
        match self {
            Drop | Cut | Garble | NoData | Slow | ServerError | ServerErrorNotSent | RateLimited => true,
            NoSubscription
            | InsufficientCredits
            | AccountRestricted
            | AccountNeedsReauth
            | DependencyError
            | WriteTrackingUnavailable
            | XRateLimited
            | XDailyLimit
            | FailedSafe
            | FailedUnsafe
            | Expired => provider == SimProvider::Xquik,
        }
    }

    /// The snake_case name, as in scenarios and in [`Stats::write_faults`](super::Stats::write_faults).
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

/// One queued write failure. Only `kind` is required in a scenario or `PUT /_sim/faults`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFault {
    pub kind: WriteFaultKind,
    /// Only this provider's writes (default: any provider the kind applies to).
    #[serde(default)]
    pub provider: Option<SimProvider>,
    /// Only this kind of write (default: any).
    #[serde(default)]
    pub action: Option<SimWriteAction>,
    /// Only writes to this target: the recipient's user ID for a 1:1 send, the group's
    /// conversation ID for a group send, the event ID for a delete. Uploads and new groups have
    /// no target, so an entry with a peer never matches them.
    #[serde(default)]
    pub peer: Option<String>,
    /// How many matching writes get it (default 1); 0 means every matching write, for good.
    #[serde(default = "one")]
    pub times: u32,
    /// `slow`: seconds before the answer (default 30).
    #[serde(default = "thirty")]
    pub delay_secs: u64,
    /// 429 and 503 kinds: seconds in `Retry-After` / `retryAfter` / `retry_after` (default 1;
    /// at least 1 where the provider sends the header). With `polls`: the `Retry-After` of each
    /// 202 (0 lets a test poll at once).
    #[serde(default = "one_u64")]
    pub retry_after_secs: u64,
    /// `failed_safe`, `failed_unsafe`, `expired`: answer 202 `pending_confirmation` and settle
    /// only after this many status polls (default 0: the final answer at once).
    #[serde(default)]
    pub polls: u32,
}

fn one() -> u32 {
    1
}

fn one_u64() -> u64 {
    1
}

fn thirty() -> u64 {
    30
}

impl WriteFault {
    /// The next matching write (any provider, action and peer) fails this way, once.
    pub fn new(kind: WriteFaultKind) -> WriteFault {
        WriteFault {
            kind,
            provider: None,
            action: None,
            peer: None,
            times: 1,
            delay_secs: 30,
            retry_after_secs: 1,
            polls: 0,
        }
    }

    pub fn provider(mut self, p: SimProvider) -> WriteFault {
        self.provider = Some(p);
        self
    }

    pub fn action(mut self, a: SimWriteAction) -> WriteFault {
        self.action = Some(a);
        self
    }

    pub fn peer(mut self, peer: &str) -> WriteFault {
        self.peer = Some(peer.to_string());
        self
    }

    /// 0: every matching write.
    pub fn times(mut self, n: u32) -> WriteFault {
        self.times = n;
        self
    }

    pub fn delay_secs(mut self, secs: u64) -> WriteFault {
        self.delay_secs = secs;
        self
    }

    pub fn retry_after_secs(mut self, secs: u64) -> WriteFault {
        self.retry_after_secs = secs;
        self
    }

    pub fn polls(mut self, n: u32) -> WriteFault {
        self.polls = n;
        self
    }

    fn matches(&self, w: &WriteTarget<'_>) -> bool {
        self.kind.applies_to(w.provider)
            && self.provider.is_none_or(|p| p == w.provider)
            && self.action.is_none_or(|a| a == w.action)
            && self.peer.as_deref().is_none_or(|p| w.target.is_some_and(|t| t == p.trim()))
    }
}

/// The write a route is about to do, as write faults match it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteTarget<'a> {
    pub(crate) provider: SimProvider,
    pub(crate) action: SimWriteAction,
    pub(crate) target: Option<&'a str>,
}

/// Takes the first queued fault that matches `w`, counting it down (an entry of `times: 0` stays).
pub(crate) fn take(queue: &mut Vec<WriteFault>, w: &WriteTarget<'_>) -> Option<WriteFault> {
    let i = queue.iter().position(|f| f.matches(w))?;
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
    /// The write fault, if any, for the write a route is about to do; booked in the stats.
    pub(crate) fn take_write_fault(
        &self,
        provider: SimProvider,
        action: SimWriteAction,
        target: Option<&str>,
    ) -> Option<WriteFault> {
        let f = self.inner.faults.take_write(&WriteTarget { provider, action, target })?;
        self.inner.stats.write_fault(&f.kind.name());
        Some(f)
    }

    /// Books a performed write.
    pub(crate) fn log_write(&self, w: SimWrite) {
        self.inner.writes.push(w);
    }
}

/// One write the simulator performed (a refused write is not one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimWrite {
    /// 1, 2, 3… in the order the writes happened.
    pub seq: u64,
    pub provider: SimProvider,
    /// The route template, as in [`Stats::by_route`](super::Stats::by_route).
    pub route: String,
    pub action: SimWriteAction,
    /// The recipient's user ID (1:1 send), group conversation ID (group send), event ID (delete).
    pub target: Option<String>,
    /// Xquik's `account` as sent (normalized: no `@`, lower case).
    pub account: Option<String>,
    /// Xquik's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The DM text (sends and new groups).
    pub text: Option<String>,
    /// What the write made: the message or event ID, the media ID, the new group's conversation ID,
    /// the deleted event's ID.
    pub result_id: Option<String>,
    /// The write fault that spoiled its answer, if any.
    pub fault: Option<WriteFaultKind>,
}

impl SimWrite {
    /// A write with only its provider and action set; the log assigns `seq`.
    pub(crate) fn performed(provider: SimProvider, action: SimWriteAction) -> SimWrite {
        SimWrite {
            seq: 0,
            provider,
            route: String::new(),
            action,
            target: None,
            account: None,
            idempotency_key: None,
            text: None,
            result_id: None,
            fault: None,
        }
    }
}

/// The performed writes, oldest first, bounded.
#[derive(Default)]
pub(crate) struct WriteLog {
    inner: Mutex<(u64, VecDeque<SimWrite>)>,
}

impl WriteLog {
    /// Books a write; its `seq` is assigned here.
    pub(crate) fn push(&self, mut w: SimWrite) {
        let mut g = lock(&self.inner);
        g.0 += 1;
        w.seq = g.0;
        if g.1.len() == WRITE_LOG_CAPACITY {
            g.1.pop_front();
        }
        g.1.push_back(w);
    }

    pub(crate) fn snapshot(&self) -> Vec<SimWrite> {
        lock(&self.inner).1.iter().cloned().collect()
    }
}

/// A response that makes hyper close the connection before writing a byte: a body whose first
/// poll fails. Hyper encodes the head into its buffer but only flushes it after the body has
/// yielded something, so nothing reaches the client. Tagged so the books record status 0.
pub(crate) fn no_answer() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated lost answer",
        ))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.extensions_mut().insert(NoAnswer);
    resp
}

/// Marks a response that was never sent, for the books.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoAnswer;

/// The success status with the first half of the body: not valid JSON.
pub(crate) fn garbled(status: u16, body: &[u8]) -> Response {
    // Cut on a char boundary so the garbage is still text; a JSON value this short cannot parse.
    let text = String::from_utf8_lossy(body);
    let mut cut = (text.len() / 2).max(1).min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], text[..cut].to_string()).into_response()
}

/// The success status and headers, then the connection is aborted halfway through the body.
pub(crate) fn cut(status: u16, body: Vec<u8>) -> Response {
    let mut resp = faults::dropped(body, "application/json; charset=utf-8");
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp
}

/// The answer to a performed write: `normal` unless a fault spoils it. The neutral kinds are
/// handled here; `shaped` gives the provider's own (no data, 5xx, failed records) or `None` to
/// answer normally. Awaits only for `slow`, with no lock held by the caller.
pub(crate) async fn answer(
    fault: Option<&WriteFault>,
    status: u16,
    body: &serde_json::Value,
    normal: Response,
    shaped: impl FnOnce(WriteFaultKind) -> Option<Response>,
) -> Response {
    let Some(f) = fault else {
        return normal;
    };
    tracing::debug!(kind = ?f.kind, "simulator: spoiling the answer of a performed write");
    let bytes = || serde_json::to_vec(body).unwrap_or_default();
    match f.kind {
        WriteFaultKind::Drop => no_answer(),
        WriteFaultKind::Cut => cut(status, bytes()),
        WriteFaultKind::Garble => garbled(status, &bytes()),
        WriteFaultKind::Slow => {
            tokio::time::sleep(Duration::from_secs(f.delay_secs)).await;
            normal
        }
        other => shaped(other).unwrap_or(normal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(provider: SimProvider, action: SimWriteAction, t: Option<&str>) -> WriteTarget<'_> {
        WriteTarget { provider, action, target: t }
    }

    #[test]
    fn queue_matches_in_order_and_counts_down() {
        let mut q = vec![
            WriteFault::new(WriteFaultKind::NoSubscription),
            WriteFault::new(WriteFaultKind::Drop).action(SimWriteAction::Send).peer("42").times(2),
            WriteFault::new(WriteFaultKind::Garble).times(0),
        ];
        let x_send = target(SimProvider::XApiV2, SimWriteAction::Send, Some("42"));
        // The Xquik-only entry is passed by for X API v2.
        assert_eq!(take(&mut q, &x_send).map(|f| f.kind), Some(WriteFaultKind::Drop));
        assert_eq!(take(&mut q, &x_send).map(|f| f.kind), Some(WriteFaultKind::Drop));
        assert_eq!(take(&mut q, &x_send).map(|f| f.kind), Some(WriteFaultKind::Garble));
        assert_eq!(take(&mut q, &x_send).map(|f| f.kind), Some(WriteFaultKind::Garble), "times 0 stays");
        let upload = target(SimProvider::Xquik, SimWriteAction::Upload, None);
        assert_eq!(take(&mut q, &upload).map(|f| f.kind), Some(WriteFaultKind::NoSubscription));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn peers_never_match_targetless_writes() {
        let mut q = vec![WriteFault::new(WriteFaultKind::Drop).peer("42")];
        assert!(take(&mut q, &target(SimProvider::Xquik, SimWriteAction::Upload, None)).is_none());
        assert!(take(&mut q, &target(SimProvider::Xquik, SimWriteAction::Send, Some("43"))).is_none());
        assert!(take(&mut q, &target(SimProvider::Xquik, SimWriteAction::Send, Some("42"))).is_some());
    }

    #[test]
    fn serde_needs_only_the_kind_and_knows_the_aliases() {
        let f: WriteFault = serde_json::from_str(r#"{"kind":"x_write_ambiguous"}"#).expect("alias");
        assert_eq!(f, WriteFault::new(WriteFaultKind::ServerError));
        let f: WriteFault =
            serde_json::from_str(r#"{"kind":"timeout","provider":"x_api_v2","action":"create_group","times":0}"#)
                .expect("full");
        assert_eq!(
            f,
            WriteFault::new(WriteFaultKind::Slow)
                .provider(SimProvider::XApiV2)
                .action(SimWriteAction::CreateGroup)
                .times(0)
        );
        assert!(serde_json::from_str::<WriteFault>(r#"{"times":1}"#).is_err(), "kind is required");
        assert!(serde_json::from_str::<WriteFault>(r#"{"kind":"drop","oops":1}"#).is_err());
        assert_eq!(WriteFaultKind::XDailyLimit.name(), "x_daily_limit");
        assert_eq!(WriteFaultKind::ServerErrorNotSent.name(), "server_error_not_sent");
    }

    #[test]
    fn garbled_bodies_do_not_parse() {
        for body in [&br#"{"data":{"dm_event_id":"1"}}"#[..], br#"{"a":"\u00e9\u00e9\u00e9"}"#, b"{}"] {
            let resp = garbled(201, body);
            assert_eq!(resp.status(), 201);
        }
        let text = String::from_utf8_lossy(br#"{"data":{"dm_event_id":"1"}}"#).into_owned();
        assert!(serde_json::from_str::<serde_json::Value>(&text[..text.len() / 2]).is_err());
    }
}
