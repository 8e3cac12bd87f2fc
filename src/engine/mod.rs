//! The engine: what an open pipeline does. Sync passes ([`sync`]), outbound DMs ([`outbound`]), X API v2
//! deletes and group sends ([`manage`]), the cost policies they consult ([`poll`]), and how each
//! conversation stands ([`health`]: `status` and the conversations gauge).
//!
//! Everything here works on an [`OpenPipeline`] the host has opened and will close; the engine never
//! opens a state directory, reads the command line or decides an exit code. Its results are typed reports
//! that the command layer renders.

pub mod cursor_loop;
pub mod health;
pub mod manage;
pub mod outbound;
pub mod pace;
pub mod passes;
pub mod poll;
pub mod sync;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Concurrency, Pipeline, ReadRateLimit};
use crate::handoff::{Batch, Handoff, HandoffError};
use crate::provider::{with_retry, Client, ErrorClass, ProviderError, ReadBudget};
use crate::state::{Commit, StateError, Store};

/// One pipeline, open: its settings, its provider client, its writer (the only way its files and its part
/// of the state change), the shared state store, and the pace of its provider account. The daemon keeps it
/// for its whole life; a one-shot command opens it, runs, and closes it.
pub struct OpenPipeline {
    pub config: Pipeline,
    pub client: Client,
    pub handoff: Handoff,
    pub store: Arc<Store>,
    /// Shared with every pipeline of the same provider account.
    pub pace: Arc<pace::Pace>,
    /// Conversations synced at once: `max_concurrency`, or the pinned `concurrency`.
    pub conversations_at_once: usize,
    /// Which passes hold which conversations: a backfill beside the ticks never writes a conversation a
    /// tick writes.
    pub passes: passes::Passes,
}

impl OpenPipeline {
    /// Bundles an opened pipeline's parts; `max_concurrency` bounds its requests and conversations in flight.
    pub fn new(config: Pipeline, client: Client, handoff: Handoff, store: Arc<Store>, max_concurrency: usize) -> Self {
        let (max, pinned) = match config.concurrency {
            Concurrency::Auto => (max_concurrency, false),
            Concurrency::Fixed(n) => (n.min(max_concurrency), true),
        };
        // Pipelines that read as the same account share its budget.
        let account =
            format!("{}\u{0}{}\u{0}{}", config.provider.name(), config.base_url, config.account.to_ascii_lowercase());
        let budget = match config.read_rate_limit {
            ReadRateLimit::Documented => client.read_budget(),
            ReadRateLimit::Off => None,
            ReadRateLimit::Custom { requests, window } => Some(ReadBudget { requests, window }),
        };
        let pace = pace::Pace::of(&account, budget, max, pinned);
        OpenPipeline { config, client, handoff, store, pace, conversations_at_once: max, passes: Default::default() }
    }
}

/// Why a `@username` could not be turned into a user ID.
#[derive(Debug)]
pub enum UserError {
    Provider(ProviderError),
    /// The state or the writer failed.
    Local(String),
}

impl From<StateError> for UserError {
    fn from(e: StateError) -> Self {
        UserError::Local(e.to_string())
    }
}

impl From<HandoffError> for UserError {
    fn from(e: HandoffError) -> Self {
        UserError::Local(e.0)
    }
}

impl OpenPipeline {
    /// The numeric user ID of `@name` (without the `@`): from the state's cache, or one user lookup whose
    /// answer is cached for every later run and command. Returns the ID and whether the provider was asked
    /// (a lookup costs credits).
    pub async fn user_id(&self, name: &str, cancel: &CancellationToken) -> Result<(String, bool), UserError> {
        let provider = self.config.provider.name();
        if let Some(id) = self.store.resolved_user(provider, name)? {
            return Ok((id, false));
        }
        let user = with_retry(&self.config.retry, cancel, || self.client.lookup_user(name))
            .await
            .map_err(UserError::Provider)?;
        if !crate::ids::is_numeric_id(&user.id) {
            return Err(UserError::Provider(ProviderError::new(
                ErrorClass::Malformed,
                self.client.lookup_endpoint(),
                Some(200),
                "malformed_response",
                "the user lookup returned a non-numeric ID",
            )));
        }
        if user.can_dm == Some(false) {
            // A hint only (the docs say so); the send's answer decides, and a refusal there costs nothing.
            tracing::warn!(pipeline = %self.config.name, username = %name, user_id = %user.id, "user lookup says canDm=false");
        }
        tracing::info!(pipeline = %self.config.name, username = %name, user_id = %user.id, "resolved @username");
        let commit = Commit { raw: vec![Store::user_entry(provider, name, &user.id)?], ..Commit::default() };
        self.handoff.write(Batch { lines: Vec::new(), commit }).await?;
        Ok((user.id, true))
    }
}
