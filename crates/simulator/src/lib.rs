//! The built-in simulator of the provider HTTP APIs, for integration tests, benchmarks, demos
//! and users' own loader tests.
//!
//! It behaves like the real Xquik API, quirks included (undisclosed page sizes, shuffled pages,
//! opaque `+/=` cursors, offset cursors that shift when messages arrive, omitted optional
//! fields, two send contracts), deterministically from a seed, and injects faults on demand.
//!
//! # Layout
//! - `mod.rs` (this file): configuration, the public [`Simulator`] handle, serving.
//! - `world`: the conversations every provider serves; messages generated lazily.
//! - `content`: deterministic hashing, snowflake ids, timestamps and message texts.
//! - `clock`: dates everything added after start after everything else, so IDs grow account-wide.
//! - `inbox`: all of the account's conversations, as the whole-inbox routes read them.
//! - `cursor`: the opaque, tamper-evident cursor codec.
//! - `faults`: which requests fail, and the provider-neutral fault bodies.
//! - `stats`: request and credit books.
//! - `http`: request ids, slow-down, latency and booking middleware shared by providers.
//! - `pace`: speed realism: the `latency_ms` delay and Xquik's fixed rate-limit windows.
//! - `writes`: write faults (writes that are performed and then lose their answer, or refused the
//!   providers' ways) and the log of performed writes. Each provider words them in its own
//!   `write_faults` submodule.
//! - `xquik`: the Xquik routes under `/api/v1`. Another provider is another such module.
//! - `x_api_v2`: the official X API v2 routes under `/2/` (rate-limit windows, a 30-day horizon,
//!   problem+json errors), the group conversations (`x_api_v2/groups`), the whole-inbox stream
//!   `GET /2/dm_events` (`x_api_v2/inbox`) and OAuth 2.0 with PKCE (`x_api_v2/oauth`).
//! - `getxapi`: the GetXAPI routes under `/twitter/` (POST bodies with `auth_token`), the inbox
//!   `POST /twitter/dm/list` among them (`getxapi/inbox`).
//! - `admin`: the `/_sim/` control API for tests that run the simulator out of process.
//!
//! Invariant: nothing here panics on client input, and no lock is held across an `.await`.

mod admin;
mod clock;
mod content;
mod cursor;
mod faults;
mod getxapi;
mod http;
mod inbox;
mod pace;
mod stats;
mod world;
mod writes;
mod x_api_v2;
mod xquik;

pub use faults::reads::{ReadFault, ReadFaultKind};
pub use writes::{SimProvider, SimWrite, SimWriteAction, WriteFault, WriteFaultKind};
pub use x_api_v2::{OAuthStats, OAuthTokens, SimEvent, SimGroup, SimOAuthClient};

/// A raw HTTP/1.1 client for tests that must see exactly what goes over the wire.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a simulated world is made of; loadable from a scenario file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Drives every random choice, so a run can be repeated exactly.
    pub seed: u64,
    /// The conversations the account has. Defaults to the [`default_scenario`] ones.
    pub conversations: Vec<SimConversation>,
    /// Peers not listed: `None` serves an empty conversation; `Some(n)` a generated one of `n`
    /// messages (how benchmarks get thousands of conversations without listing them).
    pub unknown_peer_size: Option<usize>,
    /// Inclusive range each conversation's fixed, undisclosed page size is drawn from.
    pub page_size: (usize, usize),
    /// `Some(k)`: requests must present `k` (`x-api-key`, `Xquik-Api-Key` or
    /// `Authorization: Bearer k`) or get 401.
    pub api_key: Option<String>,
    /// `Some(h)`: only this connected account exists; others get 404 `account_not_found`.
    pub account: Option<String>,
    /// Initial faults; change them at run time with [`Simulator::set_faults`].
    pub faults: Faults,
    // -- Speed toward the provider (SPEC 8.7).
    /// `[min, max]`: every provider answer (not `/_sim/`) waits a uniform random time in this
    /// range, in milliseconds, drawn from the seeded stream. `None` (the default): no delay.
    pub latency_ms: Option<(u64, u64)>,
    /// Xquik's read window per Xquik account (API key) as `[requests, window_secs]`: GET/HEAD
    /// requests beyond it in one aligned fixed window get 429 `rate_limit_exceeded` with
    /// `Retry-After` = seconds until the window resets. Default `[300, 1]`, the documented one;
    /// `None` (`null`) turns it off.
    pub xquik_rate_limit: Option<(u32, u64)>,
    /// Xquik's write window (POST/PUT/PATCH), likewise. Default `[120, 60]`; `None` turns it off.
    pub xquik_write_limit: Option<(u32, u64)>,
    /// New messages arriving during a pass.
    pub growth: Growth,
    /// Which send contract the DM and media routes answer with.
    pub send_style: SendStyle,
    /// X API v2 rate limit as (requests, window seconds) per user, for DM reads and for DM sends
    /// each (other route families get 20 times as many). `None`: no limit and no `x-rate-limit-*`
    /// headers. Default (15, 900), the real one; tests scale it down.
    #[serde(default = "default_x_rate_limit")]
    pub x_rate_limit: Option<(u32, u64)>,
    /// X API v2 serves only events this many days older than a conversation's newest one or
    /// younger (the real API keeps 30 days). `None` serves all of history.
    #[serde(default)]
    pub x_history_days: Option<u64>,
    /// X API v2 refuses `sender_id` and `participant_ids` in `dm_event.fields` with a 400, as the
    /// v2.167 spec's enum reads (clients must fall back to the expansions).
    #[serde(default)]
    pub x_strict_fields: bool,
    /// X API v2 pages give `created_at` as Unix milliseconds (a number) instead of RFC 3339: a
    /// client must read every time form (SPEC 8.3) on every route, the inbox stream's included.
    #[serde(default)]
    pub x_created_at_epoch_ms: bool,
    /// Group conversations (X API v2 and GetXAPI), with join and leave events.
    #[serde(default)]
    pub groups: Vec<SimGroup>,
    /// `Some(t)`: GetXAPI DM requests must carry this `auth_token` or get 401.
    #[serde(default)]
    pub getxapi_auth_token: Option<String>,

    // OAuth 2.0 user tokens (SPEC 8.1) and the whole-inbox routes (SPEC 8.2).
    /// OAuth 2.0 apps the authorize and token endpoints know. Empty: any `client_id` is accepted,
    /// with any absolute http(s) redirect URI, authenticating either as a public client or with
    /// HTTP Basic and any secret (so the demo works without a registered app).
    #[serde(default)]
    pub oauth_clients: Vec<SimOAuthClient>,
    /// `Some(n)`: access tokens live `n` seconds and the X API v2 routes accept only live tokens
    /// from the token endpoint, not `api_key`. `None`: tokens say and live 7,200 s (X's two hours),
    /// and `api_key` is accepted as before.
    #[serde(default)]
    pub x_token_lifetime_secs: Option<u64>,
    /// How long an authorization code can be exchanged, in seconds (default 30).
    #[serde(default = "default_code_lifetime")]
    pub oauth_code_lifetime_secs: u64,
    /// Conversations GetXAPI's `dm/list` shows in the `requests` tab instead of `all`: 1:1
    /// conversations by the peer's user ID or their `"<a>-<b>"` ID, groups by conversation ID.
    #[serde(default)]
    pub getxapi_request_conversations: Vec<String>,
    /// Likewise for the `hidden` tab (a conversation in both lists is in `requests`).
    #[serde(default)]
    pub getxapi_hidden_conversations: Vec<String>,
}

fn default_code_lifetime() -> u64 {
    30
}

fn default_x_rate_limit() -> Option<(u32, u64)> {
    Some((15, 900))
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 7,
            conversations: default_conversations(),
            unknown_peer_size: None,
            page_size: (18, 30),
            api_key: None,
            account: None,
            faults: Faults::default(),
            latency_ms: None,
            xquik_rate_limit: Some((300, 1)),
            xquik_write_limit: Some((120, 60)),
            growth: Growth::default(),
            send_style: SendStyle::default(),
            x_rate_limit: default_x_rate_limit(),
            x_history_days: None,
            x_strict_fields: false,
            x_created_at_epoch_ms: false,
            groups: Vec::new(),
            getxapi_auth_token: None,
            oauth_clients: Vec::new(),
            x_token_lifetime_secs: None,
            oauth_code_lifetime_secs: default_code_lifetime(),
            getxapi_request_conversations: Vec::new(),
            getxapi_hidden_conversations: Vec::new(),
        }
    }
}

/// One conversation between the account and a peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConversation {
    /// Numeric X user id of the other participant.
    pub peer_id: String,
    /// For user lookups by name; defaults to `user{peer_id}`.
    pub username: Option<String>,
    /// How many messages exist before anything grows.
    pub messages: usize,
    /// What this conversation's cursors mean.
    pub cursor_style: CursorStyle,
    /// Returned as `canDm` by the user lookup when set.
    pub can_dm: Option<bool>,
}

/// What a conversation's `next_cursor` encodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorStyle {
    /// "Messages with id below X": stable when new messages arrive.
    #[serde(alias = "MaxId", alias = "maxid")]
    MaxId,
    /// "Skip the first K of the newest-first list as it is now": pages shift and overlap when
    /// new messages arrive, so clients must dedupe.
    #[default]
    #[serde(alias = "Offset")]
    Offset,
}

/// The two documented Xquik send contracts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendStyle {
    /// Until ~May 2026: `200 {"messageId","success":true}`, no idempotency key.
    #[serde(alias = "Legacy")]
    Legacy,
    /// Aug 2026: a durable write-action record; `Idempotency-Key` required.
    #[default]
    #[serde(alias = "WriteAction", alias = "writeaction")]
    WriteAction,
}

/// Injected failures. Probabilities are per request, drawn from the seeded stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability of a 429 `rate_limit_exceeded` with `Retry-After`.
    pub rate_limit: f64,
    /// Seconds in `Retry-After` and `retryAfter` (default 1).
    pub retry_after_secs: u64,
    /// Probability of a 502 `x_api_unavailable` or a 503 (they alternate).
    pub server_error: f64,
    /// Probability (history only) of a 200 whose body is cut short by aborting the connection.
    pub drop: f64,
    /// Probability (history only) of a 200 whose body is not the documented JSON (invalid JSON,
    /// wrong shape, HTML, in rotation). Nothing is consumed or charged.
    pub malformed: f64,
    /// Every response is delayed this long.
    pub slow_ms: u64,
    /// The next `storm` requests all get 429; counts down.
    pub storm: u64,
    /// History of these peers is refused (Xquik 403 `dm_not_permitted`, X API v2 403
    /// not-authorized-for-resource, GetXAPI 403) and so are sends to them (Xquik 422
    /// `x_dm_not_allowed`, as its send contract words it; X API v2 and GetXAPI 403).
    pub forbidden_peers: Vec<String>,
    /// Sends to these peers are refused (Xquik 422 `x_dm_not_allowed`, X API v2 and GetXAPI 403);
    /// their history reads normally.
    pub dm_not_allowed_peers: Vec<String>,
    /// Probability that a write-action send answers 202 `pending_confirmation` (with `Location`
    /// and `Retry-After`) instead of a final 200; the client must poll the write action.
    pub pending_sends: f64,
    /// Write-action sends to these peers always answer 202 `pending_confirmation` first.
    pub pending_peers: Vec<String>,
    /// Status polls a pending send takes to become `success` (at least 1).
    pub pending_polls: u32,
    /// Seconds in the `Retry-After` of a pending answer (0 lets tests poll at once).
    pub pending_retry_after_secs: u64,
    /// Writes that fail the ways the providers' do (SPEC 8.8), in order: each upcoming write takes
    /// the first entry it matches, which counts down its `times`. See [`WriteFault`] and
    /// [`WriteFaultKind`].
    pub write_faults: Vec<WriteFault>,
    /// Reads that fail on their cursor or with a 500, the ways each provider documents: each
    /// upcoming history or inbox read takes the first entry it matches, which counts down its
    /// `times`. See [`ReadFault`] and [`ReadFaultKind`].
    pub read_faults: Vec<ReadFault>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            rate_limit: 0.0,
            retry_after_secs: 1,
            server_error: 0.0,
            drop: 0.0,
            malformed: 0.0,
            slow_ms: 0,
            storm: 0,
            forbidden_peers: Vec::new(),
            dm_not_allowed_peers: Vec::new(),
            pending_sends: 0.0,
            pending_peers: Vec::new(),
            pending_polls: 1,
            pending_retry_after_secs: 1,
            write_faults: Vec::new(),
            read_faults: Vec::new(),
        }
    }
}

/// New messages arriving while clients page.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Growth {
    /// Before each history request for a conversation, the probability that one new (newest)
    /// message arrives in it.
    pub per_request: f64,
    /// The most messages growth adds in total, across the simulator (0 = no limit).
    pub max_new: usize,
}

/// One message as the world holds it: the ground truth tests compare against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimMessage {
    pub id: String,
    pub sender_id: String,
    pub receiver_id: String,
    /// Always set here, even when the wire omits it (`created_at_omitted`).
    pub created_at: String,
    pub text: Option<String>,
    pub media_url: Option<String>,
    /// Whether the provider leaves `createdAt` out for this message.
    pub created_at_omitted: bool,
}

/// Counters since the simulator started. Admin requests are not counted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// By route template, e.g. `GET /x/dm/{userId}/history`; unknown routes as
    /// `GET (unmatched)`.
    pub by_route: BTreeMap<String, u64>,
    /// By status; 0 counts answers never sent (a `drop` write fault).
    pub by_status: BTreeMap<u16, u64>,
    /// 1 per history message returned, 1 per user lookup, 10 per send or upload.
    pub credits: u64,
    pub messages_served: u64,
    pub sends: u64,
    pub uploads: u64,
    /// The most recent requests (at most 10,000), oldest first.
    pub log: Vec<RequestLog>,
    /// 429s served because a rate-limit window was spent (Xquik's and X API v2's; injected
    /// `storm` and `rate_limit` faults are not counted here).
    pub rate_limited: u64,
    /// The same by window family: `xquik_read`, `xquik_write`, `x_api_v2_dm_read`,
    /// `x_api_v2_dm_write`, `x_api_v2_delete`, `x_api_v2_media`, `x_api_v2_users`.
    pub rate_limited_by_family: BTreeMap<String, u64>,
    /// Write faults injected, by [`WriteFaultKind`] name.
    pub write_faults: BTreeMap<String, u64>,
    /// Read faults injected, by [`ReadFaultKind`] name.
    #[serde(default)]
    pub read_faults: BTreeMap<String, u64>,
    /// The most provider requests in progress at once (latency included).
    pub peak_in_flight: u64,
    /// The most provider requests answered within one second (seconds aligned to the start).
    pub peak_requests_per_second: u64,
}

/// One booked request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    /// The raw query string as received ("" when there is none).
    pub query: String,
    /// 0 when no answer was sent at all (a `drop` write fault).
    pub status: u16,
    pub api_key_ok: bool,
}

/// The scenario `dm-handoff demo` and `simulate` use without a scenario file.
pub fn default_scenario() -> SimConfig {
    SimConfig::default()
}

fn default_conversations() -> Vec<SimConversation> {
    let conv = |peer: &str, name: &str, n: usize, style: CursorStyle, can_dm: Option<bool>| SimConversation {
        peer_id: peer.to_string(),
        username: Some(name.to_string()),
        messages: n,
        cursor_style: style,
        can_dm,
    };
    vec![
        conv("44196397", "acme_customer", 240, CursorStyle::Offset, None),
        conv("1234567890", "dana_ops", 35, CursorStyle::MaxId, Some(true)),
        conv("783214", "quiet_lead", 0, CursorStyle::Offset, None),
        conv("2244994945", "partner_team", 640, CursorStyle::Offset, None),
    ]
}

/// A running (or embeddable) simulator. Cheap to clone: all clones share one world and one set
/// of books.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SimConfig,
    world: world::World,
    faults: faults::FaultEngine,
    stats: stats::StatsBook,
    xquik: xquik::XquikState,
    x_api: x_api_v2::XState,
    getxapi: getxapi::GetXState,
    pace: pace::Pace,
    writes: writes::WriteLog,
    request_seq: AtomicU64,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Simulator {
        let world = world::World::new(&cfg);
        let faults = faults::FaultEngine::new(cfg.seed, cfg.faults.clone());
        let xquik = xquik::XquikState::new(cfg.seed);
        let x_api = x_api_v2::XState::new(&cfg, world.clock());
        let pace = pace::Pace::new(&cfg);
        Simulator {
            inner: Arc::new(Inner {
                cfg,
                world,
                faults,
                stats: stats::StatsBook::default(),
                xquik,
                x_api,
                getxapi: getxapi::GetXState::default(),
                pace,
                writes: writes::WriteLog::default(),
                request_seq: AtomicU64::new(0),
            }),
        }
    }

    /// All routes (providers and `/_sim/` admin), for embedding in another server.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .merge(x_api_v2::routes(self.clone()))
            .merge(getxapi::routes(self.clone()))
            .merge(xquik::routes(self.clone()))
            .nest("/_sim", admin::routes(self.clone()))
            .layer(axum::middleware::from_fn_with_state(self.clone(), http::request_id))
    }

    /// Serves on `listener` until `shutdown` resolves, then drains open connections.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }

    /// Binds `127.0.0.1:0` and serves in a background task until [`SimHandle::shutdown`] (or
    /// until the handle is dropped).
    pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let sim = Simulator::new(cfg);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sim.clone().serve(listener, async move {
            // A dropped sender also means "stop".
            let _ = rx.await;
        }));
        Ok(SimHandle { addr, sim, stop: Some(tx), task: Some(task) })
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// Adds `n` new newest messages from the peer's side or the account's (seeded); returns their
    /// ids, oldest first. Unknown peers get a conversation; a non-numeric id adds nothing.
    pub fn add_messages(&self, peer_id: &str, n: usize) -> Vec<String> {
        let Some(peer) = world::parse_peer(peer_id.trim()) else {
            return Vec::new();
        };
        let conv = self.inner.world.find_or_create(peer);
        self.inner.world.append_generated(&conv, n).into_iter().map(|id| id.to_string()).collect()
    }

    /// Replaces the faults (a storm count starts over); the random stream carries on.
    pub fn set_faults(&self, f: Faults) {
        self.inner.faults.set(f);
    }

    /// The faults in force, with the storm count as it is now.
    pub fn faults(&self) -> Faults {
        self.inner.faults.get()
    }

    /// Ground truth, newest first, including grown and sent messages. Sender and receiver ids
    /// are those of the configured account, or else of the account the latest request named.
    pub fn messages(&self, peer_id: &str) -> Vec<SimMessage> {
        self.messages_for(peer_id, &self.inner.world.truth_account())
    }

    /// Ground truth as seen by a given account handle.
    pub fn messages_for(&self, peer_id: &str, account: &str) -> Vec<SimMessage> {
        match world::parse_peer(peer_id.trim()) {
            Some(peer) => self.inner.world.truth(peer, account),
            None => Vec::new(),
        }
    }

    /// The writes performed so far (the most recent 100,000), oldest first: what really reached
    /// the world, whatever answer the client got. Also `GET /_sim/writes`.
    pub fn writes(&self) -> Vec<SimWrite> {
        self.inner.writes.snapshot()
    }

    /// The numeric X user id the simulator derives for an account handle.
    pub fn account_id(handle: &str) -> String {
        content::account_id(handle).to_string()
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    fn next_request_seq(&self) -> u64 {
        self.inner.request_seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// A simulator serving on loopback in a background task.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Simulator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl SimHandle {
    /// `http://{addr}/api/v1`, the Xquik base URL to give a client.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// `http://{addr}`, the X API v2 and GetXAPI base URL to give a client (their paths start at
    /// `/2/` and `/twitter/`).
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, drains for up to five seconds, then aborts what is left.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the books and the world
/// stay usable, which matters more in a test double than strict poisoning.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scenario_matches_the_brief() {
        let cfg = default_scenario();
        assert_eq!(cfg.seed, 7);
        assert_eq!(cfg.page_size, (18, 30));
        assert_eq!(cfg.send_style, SendStyle::WriteAction);
        assert_eq!(cfg.faults.retry_after_secs, 1);
        let peers: Vec<_> =
            cfg.conversations.iter().map(|c| (c.peer_id.as_str(), c.messages, c.cursor_style)).collect();
        assert_eq!(
            peers,
            [
                ("44196397", 240, CursorStyle::Offset),
                ("1234567890", 35, CursorStyle::MaxId),
                ("783214", 0, CursorStyle::Offset),
                ("2244994945", 640, CursorStyle::Offset),
            ]
        );
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_fields() {
        let cfg = default_scenario();
        let text = serde_json::to_string(&cfg).expect("serialize");
        let back: SimConfig = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back.conversations.len(), 4);
        let partial: SimConfig = serde_json::from_str(
            r#"{"seed":3,"send_style":"Legacy","conversations":[{"peer_id":"9","messages":2,"cursor_style":"MaxId"}]}"#,
        )
        .expect("partial config");
        assert_eq!(partial.seed, 3);
        assert_eq!(partial.send_style, SendStyle::Legacy);
        assert_eq!(partial.conversations[0].cursor_style, CursorStyle::MaxId);
        assert_eq!(partial.page_size, (18, 30));
        assert!(serde_json::from_str::<SimConfig>(r#"{"sede":3}"#).is_err());
        assert!(serde_json::from_str::<Faults>(r#"{"storm":2,"oops":1}"#).is_err());
    }

    #[test]
    fn the_example_scenario_loads() {
        let cfg: SimConfig =
            serde_json::from_str(include_str!("../../../examples/simulator-scenario.json")).expect("example scenario");
        assert_eq!(cfg.xquik_rate_limit, Some((300, 1)));
        assert_eq!(cfg.faults.write_faults.len(), 1);
    }

    #[test]
    fn ground_truth_and_add_messages() {
        let sim = Simulator::new(default_scenario());
        let before = sim.messages("1234567890");
        assert_eq!(before.len(), 35);
        let ids = sim.add_messages("1234567890", 2);
        let after = sim.messages("1234567890");
        assert_eq!(after.len(), 37);
        assert_eq!(after[0].id, ids[1]);
        assert_eq!(after[1].id, ids[0]);
        assert!(sim.messages("999").is_empty());
        assert!(sim.add_messages("not-a-number", 3).is_empty());
        let newest_first = after.windows(2).all(|w| w[0].id.parse::<u64>().ok() > w[1].id.parse::<u64>().ok());
        assert!(newest_first);
    }
}
