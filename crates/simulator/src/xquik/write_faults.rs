//! Xquik's side of write faults (SPEC 8.8): how each [`WriteFaultKind`] is worded on the send and
//! upload routes, and which durable write-action record it leaves behind.
//!
//! Xquik's contract: a write that reached a durable action (failed, expired, ambiguous) is filed
//! under its `Idempotency-Key`, so a replay with the same key returns that same action (and a
//! client must use a new key to try again); a refusal before dispatch (402, 403, 429, 503
//! `write_tracking_unavailable`, 502/424) files nothing, so the same key may be sent again.

use axum::http::header;
use axum::http::HeaderValue;
use axum::response::Response;
use serde_json::{json, Value};

use super::super::http::json;
use super::super::{content, SendStyle, WriteFault, WriteFaultKind};
use super::{
    dependency_failure, pending_record, pending_response, rate_limit_exceeded, record, with_location, write_err,
    write_tracking_unavailable, Completed, PendingWrite, Recovery, Writes,
};

const AMBIGUOUS: &str =
    "X may have completed the write, but Xquik could not confirm it. Verify the result before retrying.";
const FAILED: &str = "Write action failed unexpectedly. Contact support if this persists.";
const EXPIRED: &str = "X did not confirm the write before it expired. It may have been sent; verify before retrying.";

/// What a write route knows that the fault's wording needs.
pub(super) struct Ctx<'a> {
    pub(super) style: SendStyle,
    /// `xquik-api-contract: 2026-04-29` was sent.
    pub(super) contract: bool,
    /// `send_dm` or `upload_media`.
    pub(super) action: &'a str,
    pub(super) hash: &'a str,
    pub(super) payload: Value,
    pub(super) account: &'a str,
    pub(super) target: Option<&'a str>,
    pub(super) credits: u64,
    pub(super) key: Option<&'a str>,
}

/// Answers a write that a fault refuses: nothing is sent. `failed_safe` and
/// `server_error_not_sent` (`x_write_failed`) leave a failed write action filed under the key.
pub(super) fn refuse(writes: &mut Writes, f: &WriteFault, c: Ctx<'_>) -> Response {
    use WriteFaultKind::*;
    let secs = f.retry_after_secs.max(1);
    match f.kind {
        RateLimited => rate_limit_exceeded(secs),
        XRateLimited => x_throttled("x_rate_limited", "Rate limited by X. Wait before retrying.", secs),
        XDailyLimit => x_throttled("x_daily_limit", "X daily limit reached for this account. Try again later.", secs),
        NoSubscription => write_err(
            402,
            "no_subscription",
            "An active subscription is required for write actions. Subscribe to continue.",
            Recovery::Blocked,
        ),
        InsufficientCredits => write_err(
            402,
            "insufficient_credits",
            "Insufficient credits. Top up or subscribe to continue.",
            Recovery::Blocked,
        ),
        AccountRestricted => write_err(
            403,
            "account_restricted",
            "X account is restricted (locked, suspended, or recovering). Resolve it on X, then try again.",
            Recovery::Blocked,
        ),
        AccountNeedsReauth => write_err(
            403,
            "account_needs_reauth",
            "X account needs re-authentication. Re-add the account.",
            Recovery::Blocked,
        ),
        DependencyError => dependency_failure(true, c.contract),
        WriteTrackingUnavailable => write_tracking_unavailable(secs),
        // Nothing was dispatched, and Xquik knows it: a durable `failed` action, safe to retry with a
        // new key.
        ServerErrorNotSent | FailedSafe if c.style == SendStyle::WriteAction => {
            writes.seq += 1;
            let id = (100_000 + writes.seq).to_string();
            let at_ms = content::BASE_END_MS + 40 * 86_400_000 + writes.seq * 1_000;
            let base = record(
                &id,
                Completed {
                    action: c.action,
                    hash: c.hash,
                    payload: c.payload,
                    account: c.account,
                    target: c.target,
                    result: Value::Null,
                    at_ms,
                    credits: c.credits,
                    compat: json!({}),
                },
            );
            let failed = failed_record(&base, "failed", "x_write_failed", FAILED, false);
            if f.kind == ServerErrorNotSent {
                file(writes, &id, failed.clone(), c.key, c.hash);
                action_error(500, "x_write_failed", FAILED, Recovery::RetryNewKey, &failed)
            } else {
                answer(settle(writes, &id, failed, f, c.key, c.hash))
            }
        }
        // The legacy contract has no durable actions: just the error.
        _ => write_err(500, "x_write_failed", FAILED, Recovery::Retry { after_secs: None }),
    }
}

/// X throttled the account (429 `x_rate_limited` / `x_daily_limit`): nothing was sent.
fn x_throttled(code: &str, message: &str, secs: u64) -> Response {
    let resp = write_err(429, code, message, Recovery::Retry { after_secs: Some(secs) });
    let mut resp = merge(resp, json!({ "retryAfter": secs }));
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// How a performed write action is filed and answered.
pub(super) enum Filed {
    /// 200 with this terminal record (success, or failed / expired by a fault).
    Final(Value),
    /// 202 `pending_confirmation` with this record and `Retry-After`.
    Pending(Value, u64),
    /// 500 `x_write_ambiguous` about this failed record.
    Ambiguous(Value),
}

/// Files a performed write action (the write is in the world) under its id and key, settled as
/// the fault says: `server_error` and `failed_unsafe` leave it `failed` (`x_write_ambiguous`),
/// `expired` leaves it `expired`, anything else leaves `done` (the success record), pending first
/// when `pending` says so.
pub(super) fn file_performed(
    writes: &mut Writes,
    id: &str,
    done: Value,
    fault: Option<&WriteFault>,
    pending: impl FnOnce() -> Option<(u32, u64)>,
    c: &Ctx<'_>,
) -> Filed {
    match fault.map(|f| f.kind) {
        Some(WriteFaultKind::ServerError) => {
            let rec = failed_record(&done, "failed", "x_write_ambiguous", AMBIGUOUS, true);
            file(writes, id, rec.clone(), c.key, c.hash);
            Filed::Ambiguous(rec)
        }
        Some(WriteFaultKind::FailedUnsafe) => {
            let rec = failed_record(&done, "failed", "x_write_ambiguous", AMBIGUOUS, true);
            settle(writes, id, rec, fault.unwrap_or(&WriteFault::new(WriteFaultKind::FailedUnsafe)), c.key, c.hash)
        }
        Some(WriteFaultKind::Expired) => {
            let rec = failed_record(&done, "expired", "expired", EXPIRED, true);
            settle(writes, id, rec, fault.unwrap_or(&WriteFault::new(WriteFaultKind::Expired)), c.key, c.hash)
        }
        _ => match pending() {
            Some((polls, retry_after)) => {
                let p = pending_record(&done, retry_after);
                writes.pending.insert(id.to_string(), PendingWrite { polls_left: polls, retry_after, done });
                file(writes, id, p.clone(), c.key, c.hash);
                Filed::Pending(p, retry_after)
            }
            None => {
                file(writes, id, done.clone(), c.key, c.hash);
                Filed::Final(done)
            }
        },
    }
}

/// Whether a performed write is charged: not when its action ends failed or expired.
pub(super) fn charged(fault: Option<&WriteFault>) -> bool {
    !matches!(
        fault.map(|f| f.kind),
        Some(WriteFaultKind::ServerError | WriteFaultKind::FailedUnsafe | WriteFaultKind::Expired)
    )
}

/// The legacy contract's answer to a performed write whose fault settles it otherwise: 500
/// `x_write_ambiguous` (there is no action to read).
pub(super) fn legacy_performed(fault: Option<&WriteFault>) -> Option<Response> {
    (!charged(fault)).then(|| write_err(500, "x_write_ambiguous", AMBIGUOUS, Recovery::Verify))
}

/// The answer for a filed action.
pub(super) fn answer(filed: Filed) -> Response {
    match filed {
        Filed::Final(v) => with_location(json(200, &v), &v),
        Filed::Pending(v, secs) => pending_response(&v, secs),
        Filed::Ambiguous(v) => action_error(500, "x_write_ambiguous", AMBIGUOUS, Recovery::Verify, &v),
    }
}

/// The body of a filed answer, for the neutral spoilers (a garbled or cut copy of it).
pub(super) fn status_and_body(filed: &Filed) -> (u16, &Value) {
    match filed {
        Filed::Final(v) => (200, v),
        Filed::Pending(v, _) => (202, v),
        Filed::Ambiguous(v) => (500, v),
    }
}

/// `no_data`: a success that says nothing more.
pub(super) fn no_data() -> Response {
    json(200, &json!({ "success": true }))
}

/// A terminal record settled at once (`polls` 0), or a 202 first that settles after `polls`
/// status polls.
fn settle(writes: &mut Writes, id: &str, rec: Value, f: &WriteFault, key: Option<&str>, hash: &str) -> Filed {
    if f.polls == 0 {
        file(writes, id, rec.clone(), key, hash);
        return Filed::Final(rec);
    }
    let retry_after = f.retry_after_secs;
    let mut p = pending_record(&rec, retry_after);
    if rec.get("sendDispatched") == Some(&Value::Bool(false)) {
        // Not dispatched yet: accepted, not waiting for X's confirmation.
        if let Some(obj) = p.as_object_mut() {
            obj.insert("status".into(), json!("accepted"));
            obj.remove("error");
            obj.remove("message");
        }
    }
    writes.pending.insert(id.to_string(), PendingWrite { polls_left: f.polls, retry_after, done: rec });
    file(writes, id, p.clone(), key, hash);
    Filed::Pending(p, retry_after)
}

/// Files a record under its id, and under the key so that a replay returns it.
fn file(writes: &mut Writes, id: &str, rec: Value, key: Option<&str>, hash: &str) {
    if let Some(k) = key {
        writes.by_key.insert(k.to_string(), (hash.to_string(), rec.clone()));
    }
    writes.by_id.insert(id.to_string(), rec);
}

/// A write-error answer about a filed action: the error fields plus its id and status URL.
fn action_error(status: u16, code: &str, message: &str, recovery: Recovery, rec: &Value) -> Response {
    let extra = json!({ "writeActionId": rec["id"], "statusUrl": rec["statusUrl"] });
    with_location(merge(write_err(status, code, message, recovery), extra), rec)
}

/// Adds fields to a write-error answer's body.
fn merge(resp: Response, extra: Value) -> Response {
    let status = resp.status().as_u16();
    let mut body = resp.extensions().get::<super::ErrorBody>().map(|b| b.0.clone()).unwrap_or_else(|| json!({}));
    if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    let mut out = json(status, &body);
    *out.headers_mut() = resp.headers().clone();
    out.extensions_mut().insert(super::ErrorBody(body));
    out
}

/// The `failed` or `expired` form of a write-action record: terminal, not charged, no result.
/// `dispatched` false: nothing reached X, so it is safe to retry with a new key; true: it may
/// have, so the client must verify first.
pub(super) fn failed_record(base: &Value, status: &str, code: &str, message: &str, dispatched: bool) -> Value {
    let mut v = base.clone();
    let planned = base.pointer("/billing/plannedCredits").cloned().unwrap_or(Value::Null);
    let next = if dispatched {
        json!({ "type": "verify_result" })
    } else {
        json!({ "type": "retry", "requiresNewIdempotencyKey": true })
    };
    if let Some(obj) = v.as_object_mut() {
        for k in ["messageId", "mediaId", "mediaUrl", "confirmedAt"] {
            obj.remove(k);
        }
        if !dispatched {
            obj.remove("sendDispatchedAt");
        }
        for (k, val) in [
            ("status", json!(status)),
            ("terminal", json!(true)),
            ("success", json!(false)),
            ("result", Value::Null),
            ("charged", json!(false)),
            ("chargedCredits", json!("0")),
            (
                "billing",
                json!({ "status": "not_charged", "charged": false, "plannedCredits": planned, "chargedCredits": "0" }),
            ),
            ("retryable", json!(!dispatched)),
            ("safeToRetry", json!(!dispatched)),
            ("sendDispatched", json!(dispatched)),
            ("pollAfterMs", Value::Null),
            ("nextAction", next),
            ("error", json!(code)),
            ("message", json!(message)),
        ] {
            obj.insert(k.to_string(), val);
        }
    }
    v
}
