//! One write to its end, at most once (SPEC 8.8): the account's write limit, waiting out what proves nothing
//! was done, polling a write the provider has not confirmed, and telling a refusal from an unknown outcome.
//!
//! The rule, for every write of every provider (send, group send, delete, upload): the request is made again
//! only after an answer that proves the provider did not act on it:
//! - a 429 (or a spent rate-limit window the adapter paced before sending), waited out for up to
//!   [`RATE_LIMIT_BUDGET`];
//! - a connection that could not be made, so the request was never written;
//! - an Xquik write action `failed` with `safeToRetry: true`, which is made again under a **new**
//!   idempotency key (a reused key returns the original, failed action: Xquik's contract).
//!
//! A 4xx refusal ends the write as [`Written::Refused`]: nothing was done, and nothing is retried. Every other
//! outcome once the request may have been written (a 2xx we cannot read, a timeout or a dropped connection
//! while waiting for the answer, a 5xx, an action that failed after dispatch or expired) is
//! [`Written::Unknown`]: the caller records that in its ledger and reads the conversation back instead of
//! asking again.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::limiter::SendContext;
use crate::config::Pipeline;
use crate::provider::{
    backoff, with_retry, Client, ErrorClass, ProviderError, WriteDone, WriteKind, WriteState, PACING,
};

/// How long a rate-limited write keeps being retried (same key) before its job fails as refused.
pub const RATE_LIMIT_BUDGET: Duration = Duration::from_secs(15 * 60);
/// How long a write the provider has not confirmed is polled before its outcome counts as unknown.
const POLL_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// The shortest wait between two polls, however eager the provider's hint.
const MIN_POLL_WAIT: Duration = Duration::from_millis(50);
/// How many times a write the provider failed with `safeToRetry` is made again under a new key.
const NEW_KEY_ATTEMPTS: u32 = 2;

/// What one write came to; `T` is what a done write gives back.
#[derive(Debug)]
pub enum Written<T = WriteDone> {
    Done(T),
    /// The provider did not act (a 4xx, rate limits or connection failures beyond their budget, a failure
    /// it says was never dispatched): nothing was done, and doing it again later is safe.
    Refused(ProviderError),
    /// The request may have reached the provider and its result is not known.
    Unknown(ProviderError),
}

/// How an error of a write request bears on whether the provider acted.
enum Verdict {
    /// It did not; waiting and asking again is safe.
    Retry,
    /// It did not, and asking again unchanged would be refused again.
    Refused,
    /// It may have.
    Unknown,
}

fn verdict(e: &ProviderError, cancelled: bool) -> Verdict {
    match (e.status, e.code.as_str()) {
        (Some(429), _) | (None, PACING) if !cancelled => Verdict::Retry,
        (Some(429), _) | (None, PACING) => Verdict::Refused,
        // The connection was never made, so the request was never written.
        (None, "connect_failed") if !cancelled => Verdict::Retry,
        (None, "connect_failed" | "interrupted") => Verdict::Refused,
        (Some(s), _) if (400..500).contains(&s) => Verdict::Refused,
        _ => Verdict::Unknown,
    }
}

/// The key a write is made again under after the provider failed it as safe to retry: a reused key would
/// return the original, failed action. Derived, so a run that dies after switching finds the same one again
/// (and gets that action's answer back) instead of making a third.
pub fn retry_key(key: &str, n: u32) -> String {
    let suffix = format!("~r{n}");
    if key.len() + suffix.len() <= 255 {
        format!("{key}{suffix}")
    } else {
        format!("dmh-retry-{:032x}{suffix}", super::keys::fnv1a_128(&[key.as_bytes()]))
    }
}

/// One write to its end. `post` makes the request under the idempotency key it is given (providers without
/// keys ignore it); `credits` grows by what the provider may have charged (a refusal costs nothing).
pub async fn write<F, Fut>(
    client: &Client,
    p: &Pipeline,
    ctx: &SendContext,
    kind: WriteKind,
    key: &str,
    credits: &mut u64,
    post: F,
) -> Written
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<WriteState, ProviderError>>,
{
    let mut key = key.to_string();
    let mut new_keys = 0;
    loop {
        let endpoint = match kind {
            WriteKind::DirectMessage => client.send_endpoint(),
            WriteKind::Media => client.upload_endpoint(),
        };
        let state = match attempt(client, p, ctx, endpoint, &key, &post).await {
            Written::Done(state) => state,
            Written::Refused(e) => return Written::Refused(e),
            Written::Unknown(e) => return Written::Unknown(e),
        };
        *credits += client.write_credits();
        match poll(client, p, &ctx.cancel, state, kind).await {
            Ok(WriteState::Done(done)) => return Written::Done(done),
            Ok(WriteState::Failed { code, safe_to_retry: true, .. }) if new_keys < NEW_KEY_ATTEMPTS => {
                new_keys += 1;
                key = retry_key(&key, new_keys);
                tracing::warn!(code = %code, idempotency_key = %key, "the provider failed the write as safe to retry; making it again under a new idempotency key");
            }
            Ok(WriteState::Failed { code, safe_to_retry, dispatched }) => {
                let endpoint = client.write_status_endpoint(kind);
                return if safe_to_retry || dispatched == Some(false) {
                    Written::Refused(ProviderError::new(
                        ErrorClass::Conversation,
                        endpoint,
                        None,
                        code,
                        "the provider failed the write before sending anything; run the job again later",
                    ))
                } else {
                    Written::Unknown(ProviderError::new(
                        ErrorClass::Conversation,
                        endpoint,
                        None,
                        code,
                        "the provider failed or expired the write after it may have reached X",
                    ))
                };
            }
            // `poll` returns only final states.
            Ok(WriteState::Pending { .. }) => {
                return Written::Unknown(ProviderError::new(
                    ErrorClass::Conversation,
                    client.write_status_endpoint(kind),
                    None,
                    "write_unconfirmed",
                    "still pending",
                ))
            }
            Err(e) => return Written::Unknown(e),
        }
    }
}

/// Makes a write request until it gets an answer that says what happened, waiting out what proves nothing
/// was done (429s, a spent window, a connection never made). Writes without a lifecycle of their own (X API
/// v2 group sends and deletes) use this directly; `write` adds polling and new keys on top.
pub async fn attempt<T, F, Fut>(
    client: &Client,
    p: &Pipeline,
    ctx: &SendContext,
    endpoint: &'static str,
    key: &str,
    post: &F,
) -> Written<T>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let limiter = ctx.limiter(p, client.write_limit());
    let started = Instant::now();
    let mut connect_failures = 0;
    loop {
        if let Some(l) = &limiter {
            tokio::select! {
                _ = l.acquire() => {}
                _ = ctx.cancel.cancelled() => return Written::Refused(interrupted_error(endpoint)),
            }
        }
        if ctx.cancel.is_cancelled() {
            return Written::Refused(interrupted_error(endpoint));
        }
        let e = match post(key.to_string()).await {
            Ok(done) => return Written::Done(done),
            Err(e) => e,
        };
        let cancelled = ctx.cancel.is_cancelled();
        let wait = match verdict(&e, cancelled) {
            Verdict::Refused => return Written::Refused(e),
            Verdict::Unknown => return Written::Unknown(e),
            Verdict::Retry if e.status == Some(429) || e.code == PACING => {
                if started.elapsed() >= RATE_LIMIT_BUDGET {
                    return Written::Refused(e);
                }
                e.retry_after.unwrap_or(p.retry.max).min(RATE_LIMIT_BUDGET)
            }
            Verdict::Retry => {
                connect_failures += 1;
                if connect_failures > p.retry.max_retries {
                    return Written::Refused(e);
                }
                backoff(&p.retry, connect_failures - 1, None, rand::random())
            }
        };
        tracing::warn!(pipeline = %p.name, endpoint = e.endpoint, code = %e.code, wait_ms = wait.as_millis() as u64,
            "the provider did not act on the write; waiting and making it again");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.cancel.cancelled() => return Written::Refused(e),
        }
    }
}

/// Polls a pending write until it is final (or [`POLL_DEADLINE`] passes: then the outcome is unknown).
async fn poll(
    client: &Client,
    p: &Pipeline,
    cancel: &CancellationToken,
    mut state: WriteState,
    kind: WriteKind,
) -> Result<WriteState, ProviderError> {
    let endpoint = client.write_status_endpoint(kind);
    let deadline = Instant::now() + POLL_DEADLINE;
    while let WriteState::Pending { action, after } = &state {
        if Instant::now() >= deadline {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                endpoint,
                None,
                "write_unconfirmed",
                "the provider has not confirmed the write",
            ));
        }
        tracing::debug!(action = %action, wait_ms = after.as_millis() as u64, "write pending; polling");
        tokio::select! {
            _ = tokio::time::sleep((*after).max(MIN_POLL_WAIT)) => {}
            _ = cancel.cancelled() => return Err(interrupted_error(endpoint)),
        }
        let action = action.clone();
        state = with_retry(&p.retry, cancel, || client.write_action(&action, kind)).await?;
    }
    Ok(state)
}

fn interrupted_error(endpoint: &'static str) -> ProviderError {
    ProviderError::new(ErrorClass::Conversation, endpoint, None, "interrupted", "stopped by a signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(status: Option<u16>, code: &str) -> ProviderError {
        ProviderError::new(ErrorClass::Transient, "POST /t", status, code, "h")
    }

    #[test]
    fn only_answers_that_prove_nothing_was_done_are_retried() {
        let retried = |err: &ProviderError| matches!(verdict(err, false), Verdict::Retry);
        let unknown = |err: &ProviderError| matches!(verdict(err, false), Verdict::Unknown);
        let refused = |err: &ProviderError| matches!(verdict(err, false), Verdict::Refused);
        assert!(retried(&e(Some(429), "rate_limit_exceeded")) && retried(&e(None, PACING)));
        assert!(retried(&e(None, "connect_failed")), "the request was never written");
        for s in [400, 401, 402, 403, 404, 409, 422] {
            assert!(refused(&e(Some(s), "x")), "{s}");
        }
        for err in [
            e(Some(500), "x_write_ambiguous"),
            e(Some(502), "x_api_unavailable"),
            e(Some(503), "write_tracking_unavailable"),
            e(Some(504), "http_504"),
            e(Some(201), "malformed_response"),
            e(None, "timeout"),
            e(None, "connection_dropped"),
            e(None, "request_failed"),
        ] {
            assert!(unknown(&err), "{err}");
        }
        // A stop signal turns "wait and retry" into "not done".
        assert!(matches!(verdict(&e(Some(429), "x"), true), Verdict::Refused));
    }

    #[test]
    fn retry_keys_are_new_stable_and_valid() {
        assert_eq!(retry_key("dmh-abc", 1), "dmh-abc~r1");
        assert_eq!(retry_key("dmh-abc", 1), retry_key("dmh-abc", 1));
        assert_ne!(retry_key("dmh-abc", 1), retry_key("dmh-abc", 2));
        let long = "k".repeat(255);
        let k = retry_key(&long, 2);
        assert!(k.len() <= 255 && super::super::keys::check_key(&k).is_ok(), "{k}");
    }
}
