//! One write to its end: the account's write limit, retries, polling a write the provider has not confirmed.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::limiter::SendContext;
use crate::config::Pipeline;
use crate::provider::{with_retry, Client, ErrorClass, ProviderError, WriteDone, WriteKind, WriteState};

/// How long a rate-limited write keeps being retried (same key) before its job fails.
pub const RATE_LIMIT_BUDGET: Duration = Duration::from_secs(15 * 60);
/// How long a write the provider has not confirmed is polled before its job gives up. The ledger stays
/// `prepared`, so running the job again asks about the same write.
const POLL_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// The shortest wait between two polls, however eager the provider's hint.
const MIN_POLL_WAIT: Duration = Duration::from_millis(50);

/// One write to its end: rate limit, retries (same key), polling while pending, and one more ask with the same
/// key when the provider says a failed write is safe to retry. `post` makes the request; it must be repeatable.
pub(super) async fn write<F, Fut>(
    client: &Client,
    p: &Pipeline,
    ctx: &SendContext,
    kind: WriteKind,
    credits: &mut u64,
    post: F,
) -> Result<WriteDone, ProviderError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<WriteState, ProviderError>>,
{
    let limiter = ctx.limiter(p, client.write_limit());
    let limiter = limiter.as_deref();
    let cancel = &ctx.cancel;
    let post = &post;
    let endpoint = match kind {
        WriteKind::DirectMessage => client.send_endpoint(),
        WriteKind::Media => client.upload_endpoint(),
    };
    let mut asked_again = false;
    loop {
        let state = retry_write(p, cancel, || async move {
            tokio::select! {
                _ = async { if let Some(l) = limiter { l.acquire().await } } => {}
                _ = cancel.cancelled() => return Err(interrupted_error(endpoint)),
            }
            post().await
        })
        .await?;
        *credits += client.write_credits();
        match poll(client, p, cancel, state, kind).await? {
            WriteState::Done(done) => return Ok(done),
            WriteState::Failed { code, safe_to_retry: true } if !asked_again => {
                tracing::warn!(endpoint, code = %code, "the provider says the write failed and is safe to retry; asking again with the same key");
                asked_again = true;
            }
            WriteState::Failed { code, safe_to_retry } => {
                let hint = if safe_to_retry {
                    "the provider says the write failed and nothing was sent; run the job again with a new --idempotency-key"
                } else {
                    "the provider says the write failed and it may have reached X; check the conversation before sending again"
                };
                return Err(ProviderError::new(ErrorClass::Conversation, endpoint, None, code, hint));
            }
            // `poll` returns only final states.
            WriteState::Pending { .. } => {
                return Err(ProviderError::new(
                    ErrorClass::Conversation,
                    endpoint,
                    None,
                    "write_unconfirmed",
                    "still pending",
                ))
            }
        }
    }
}

/// [`with_retry`], plus riding out rate limits: a 429 that outlasts the retry count is waited on again, for
/// up to [`RATE_LIMIT_BUDGET`]. Safe because every attempt carries the same idempotency key.
async fn retry_write<T, F, Fut>(p: &Pipeline, cancel: &CancellationToken, mut op: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let started = Instant::now();
    loop {
        match with_retry(&p.retry, cancel, &mut op).await {
            Err(e) if e.status == Some(429) && started.elapsed() < RATE_LIMIT_BUDGET && !cancel.is_cancelled() => {
                let wait = e.retry_after.unwrap_or(p.retry.max).min(RATE_LIMIT_BUDGET);
                tracing::warn!(pipeline = %p.name, endpoint = e.endpoint, wait_ms = wait.as_millis() as u64,
                    "still rate limited; waiting and asking again with the same idempotency key");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Polls a pending write until it is final (or [`POLL_DEADLINE`] passes).
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
                "the provider has not confirmed the write yet; run the job again later: it asks about the same write and never sends twice",
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
