//! Prometheus metrics (SPEC section 8.5): the process's one registry, its series, and the handles that the
//! code doing the work moves. A leaf: it names nothing of this crate, so the provider layer, the pipeline
//! writer and the engine can all hold handles; only the daemon serves the registry (`host::metrics`).
//! One-shot commands move the same series, at the same cost, and nobody reads them.
//!
//! Where each series moves, and why there:
//!
//! | series | moved by |
//! |---|---|
//! | `records_written`, `credits_spent`, `segments_closed`, `newest_record_created_timestamp`, `last_run_success_timestamp` | the pipeline writer (`handoff`), after the state commit that covers them succeeded: a metric never counts a record that was not delivered, and agrees with `status` |
//! | `requests` | the provider's HTTP client ([`RequestMetrics`]), once per exchange that got an answer (its status) or none (`error`) |
//! | `retries` | `provider::with_retry`, once per retry it decides on |
//! | `run_duration` | the sync engine, at the end of every run of a pipeline |
//! | `conversations` | the daemon, from the state, at every scrape |
//!
//! Label values are pipeline names, provider names, record kinds, HTTP statuses and the fixed words of
//! [`RetryReason`] and [`ConversationCounts`]: never a conversation ID, a username or message text, which
//! could not be bounded and must not leave the machine this way (SPEC section 7).
//!
//! The writer's hot path (one call per group commit, not per record) resolves its counters once per
//! pipeline: [`PipelineMetrics`] holds them, so a group commit costs a few atomic adds.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Every series name starts with this (and `_`).
pub const PREFIX: &str = "dm_handoff";

/// Bucket bounds of `run_duration_seconds`: a quiet poll takes tens of milliseconds, a first backfill hours.
const RUN_BUCKETS: [f64; 16] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0];

/// A timestamp gauge: Unix seconds, with the milliseconds the state keeps.
type TimeGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pipeline: Arc<str>,
    kind: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    pipeline: Arc<str>,
    provider: &'static str,
    status: Status,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    pipeline: Arc<str>,
    reason: RetryReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pipeline: Arc<str>,
    state: &'static str,
}

/// The `status` label of a request: the HTTP status, or `error` when no answer came.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Status(Option<u16>);

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self.0 {
            Some(status) => write!(encoder, "{status}"),
            None => encoder.write_str("error"),
        }
    }
}

/// Why a provider request is being retried: the `reason` label of `retries_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RetryReason {
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx (502/503/504).
    ServerError,
    /// The request timed out.
    Timeout,
    /// No answer: the connection failed or dropped, or the body was cut short.
    Connection,
    /// A 2xx whose body is not the documented JSON.
    Malformed,
    /// No request was sent: the provider's rate-limit window is spent (X API v2), so this waits for its reset.
    Pacing,
    /// Any other transient answer (424, for example).
    Other,
}

impl RetryReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryReason::RateLimited => "429",
            RetryReason::ServerError => "5xx",
            RetryReason::Timeout => "timeout",
            RetryReason::Connection => "connection",
            RetryReason::Malformed => "malformed",
            RetryReason::Pacing => "pacing",
            RetryReason::Other => "other",
        }
    }
}

impl EncodeLabelValue for RetryReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// How many of a pipeline's configured conversations are in each state; each is counted in exactly one.
/// The engine decides which (`engine::health`); this is only what the gauge shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversationCounts {
    pub ok: u64,
    pub failed: u64,
    pub backfilling: u64,
    pub paused: u64,
}

impl ConversationCounts {
    /// The `state` label values, in a fixed order.
    pub const STATES: [&'static str; 4] = ["ok", "failed", "backfilling", "paused"];

    fn values(&self) -> [u64; 4] {
        [self.ok, self.failed, self.backfilling, self.paused]
    }
}

/// The series themselves. Each `Family` shares its map behind an `Arc`, so handles hold clones.
#[derive(Clone)]
struct Families {
    records: Family<KindLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    credits: Family<PipelineLabels, Counter>,
    run_duration: Family<PipelineLabels, Histogram, fn() -> Histogram>,
    last_success: Family<PipelineLabels, TimeGauge>,
    newest_created: Family<PipelineLabels, TimeGauge>,
    conversations: Family<StateLabels, Gauge>,
    segments: Family<PipelineLabels, Counter>,
    upload_backlog: Family<PipelineLabels, Gauge>,
    uploaded_bytes: Family<PipelineLabels, Counter>,
    upload_errors: Family<PipelineLabels, Counter>,
}

/// A registry of every dm-handoff series. The process uses [`global`]; tests make their own.
pub struct Metrics {
    registry: Registry,
    families: Families,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn run_histogram() -> Histogram {
    Histogram::new(RUN_BUCKETS)
}

impl Metrics {
    pub fn new() -> Metrics {
        let families = Families {
            records: Family::default(),
            requests: Family::default(),
            retries: Family::default(),
            credits: Family::default(),
            run_duration: Family::new_with_constructor(run_histogram as fn() -> Histogram),
            last_success: Family::default(),
            newest_created: Family::default(),
            conversations: Family::default(),
            segments: Family::default(),
            upload_backlog: Family::default(),
            uploaded_bytes: Family::default(),
            upload_errors: Family::default(),
        };
        let mut registry = Registry::with_prefix(PREFIX);
        let f = &families;
        registry.register(
            "records_written",
            "Records appended to the handoff files and committed in the state, by record kind",
            f.records.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests to the provider, by status (the HTTP status, or error when no answer came)",
            f.requests.clone(),
        );
        registry.register("retries", "Provider requests retried, by reason", f.retries.clone());
        registry.register(
            "credits_spent",
            "Provider credits of the history pages committed in the state (what the daily budget counts)",
            f.credits.clone(),
        );
        registry.register_with_unit(
            "run_duration",
            "How long each run of a pipeline took, successful or not",
            Unit::Seconds,
            f.run_duration.clone(),
        );
        registry.register_with_unit(
            "last_run_success_timestamp",
            "When the pipeline's last successful run ended (no conversation failed); absent if none ever did",
            Unit::Seconds,
            f.last_success.clone(),
        );
        registry.register_with_unit(
            "newest_record_created_timestamp",
            "created_at of the newest message or event record in the pipeline's files; absent while there is none",
            Unit::Seconds,
            f.newest_created.clone(),
        );
        registry.register(
            "conversations",
            "Configured conversations by state: failed (its last run failed), paused (daily credit budget spent), \
             backfilling (older history still to fetch), ok",
            f.conversations.clone(),
        );
        registry.register(
            "segments_closed",
            "Handoff segments closed (rotated) and committed in the state",
            f.segments.clone(),
        );
        registry.register(
            "upload_backlog_segments",
            "Closed segments whose segment or manifest is not confirmed in the bucket yet (upload_url)",
            f.upload_backlog.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Bytes of segments and manifests put in the bucket (create-only puts that succeeded)",
            f.uploaded_bytes.clone(),
        );
        registry.register(
            "upload_errors",
            "Upload passes that stopped on an error (the store failed, or held other content under a key)",
            f.upload_errors.clone(),
        );
        registry.register(
            "build",
            "The dm-handoff version serving these metrics",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry, families }
    }

    /// The registry in the Prometheus text format 0.0.4 (`promtool check metrics` reads this).
    pub fn encode_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the encoder only reports fmt errors from its writer.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the OpenMetrics text format, which Prometheus asks for first.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handle a pipeline's writer keeps. Creates the pipeline's counters (at 0) and its run histogram,
    /// so they are scraped from the start and `rate()` sees the first increment.
    pub fn pipeline(&self, name: &str) -> PipelineMetrics {
        let labels = PipelineLabels { pipeline: name.into() };
        let f = &self.families;
        drop(f.run_duration.get_or_create(&labels));
        PipelineMetrics {
            credits: f.credits.get_or_create_owned(&labels),
            segments: f.segments.get_or_create_owned(&labels),
            families: f.clone(),
            kinds: Vec::new(),
            labels,
        }
    }

    /// The handle a provider client counts its requests with.
    pub fn requests(&self, pipeline: &str, provider: &'static str) -> RequestMetrics {
        RequestMetrics { pipeline: pipeline.into(), provider, family: self.families.requests.clone() }
    }

    /// Counts one retry of a provider request.
    pub fn retried(&self, pipeline: &str, reason: RetryReason) {
        self.families.retries.get_or_create(&ReasonLabels { pipeline: pipeline.into(), reason }).inc();
    }

    /// Records how long one run of a pipeline took.
    pub fn run_finished(&self, pipeline: &str, took: Duration) {
        self.families
            .run_duration
            .get_or_create(&PipelineLabels { pipeline: pipeline.into() })
            .observe(took.as_secs_f64());
    }

    /// Sets the pipeline's conversations by state.
    pub fn set_conversations(&self, pipeline: &str, counts: ConversationCounts) {
        let pipeline: Arc<str> = pipeline.into();
        for (state, n) in ConversationCounts::STATES.into_iter().zip(counts.values()) {
            let labels = StateLabels { pipeline: pipeline.clone(), state };
            self.families.conversations.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets how many closed segments of a pipeline wait for upload.
    pub fn upload_backlog(&self, pipeline: &str, segments: u64) {
        let labels = PipelineLabels { pipeline: pipeline.into() };
        self.families.upload_backlog.get_or_create(&labels).set(i64::try_from(segments).unwrap_or(i64::MAX));
    }

    /// Counts bytes put in the bucket (0 still creates the series, so `rate()` sees the first increment).
    pub fn uploaded(&self, pipeline: &str, bytes: u64) {
        let labels = PipelineLabels { pipeline: pipeline.into() };
        self.families.uploaded_bytes.get_or_create(&labels).inc_by(bytes);
        drop(self.families.upload_errors.get_or_create(&labels));
    }

    /// Counts one upload pass that stopped on an error.
    pub fn upload_failed(&self, pipeline: &str) {
        let labels = PipelineLabels { pipeline: pipeline.into() };
        self.families.upload_errors.get_or_create(&labels).inc();
        drop(self.families.uploaded_bytes.get_or_create(&labels));
    }

    /// Drops a pipeline's gauges and run histogram when it stops being run (removed by a reload, or about to
    /// be restarted, which restores them): a removed pipeline must not look stale or failed forever. Its
    /// counters stay, as counters do; they simply stop moving.
    pub fn forget_pipeline(&self, name: &str) {
        let labels = PipelineLabels { pipeline: name.into() };
        let f = &self.families;
        f.last_success.remove(&labels);
        f.newest_created.remove(&labels);
        f.run_duration.remove(&labels);
        f.upload_backlog.remove(&labels);
        for state in ConversationCounts::STATES {
            f.conversations.remove(&StateLabels { pipeline: labels.pipeline.clone(), state });
        }
    }
}

/// The process's registry.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// Unix seconds (with milliseconds) of a time; 0 for a time before 1970, which nothing here produces.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// What a pipeline's writer moves after each successful commit. Owned by the writer thread.
pub struct PipelineMetrics {
    labels: PipelineLabels,
    families: Families,
    credits: Counter,
    segments: Counter,
    /// Record counters by kind, resolved on first use (a pipeline writes two or three kinds).
    kinds: Vec<(Box<str>, Counter)>,
}

impl PipelineMetrics {
    /// Adds `n` committed records of `kind`.
    pub fn records(&mut self, kind: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some((_, c)) = self.kinds.iter().find(|(k, _)| &**k == kind) {
            c.inc_by(n);
            return;
        }
        let labels = KindLabels { pipeline: self.labels.pipeline.clone(), kind: kind.into() };
        let counter = self.families.records.get_or_create_owned(&labels);
        counter.inc_by(n);
        self.kinds.push((kind.into(), counter));
    }

    /// Adds credits of committed pages.
    pub fn credits(&self, n: u64) {
        if n > 0 {
            self.credits.inc_by(n);
        }
    }

    /// Adds segments closed and committed.
    pub fn segments_closed(&self, n: u64) {
        if n > 0 {
            self.segments.inc_by(n);
        }
    }

    /// Sets the `created_at` of the newest history record in the files.
    pub fn newest_record_created(&self, at: SystemTime) {
        self.families.newest_created.get_or_create(&self.labels).set(unix_seconds(at));
    }

    /// Sets when the last successful run ended.
    pub fn last_run_success(&self, at: SystemTime) {
        self.families.last_success.get_or_create(&self.labels).set(unix_seconds(at));
    }
}

/// A pipeline's request counter, held by its provider client.
#[derive(Clone)]
pub struct RequestMetrics {
    pipeline: Arc<str>,
    provider: &'static str,
    family: Family<RequestLabels, Counter>,
}

impl RequestMetrics {
    /// Counts one exchange: the status that came back, or None when no answer did.
    pub fn exchange(&self, status: Option<u16>) {
        let labels = RequestLabels { pipeline: self.pipeline.clone(), provider: self.provider, status: Status(status) };
        self.family.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line `name{labels} value` in the text format, if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_spec_series_is_there_with_its_type_and_labels() {
        let m = Metrics::new();
        let mut p = m.pipeline("support");
        p.records("dm_message", 3);
        p.credits(40);
        p.segments_closed(1);
        p.newest_record_created(UNIX_EPOCH + Duration::from_millis(1_771_927_200_123));
        p.last_run_success(UNIX_EPOCH + Duration::from_secs(1_771_927_300));
        m.requests("support", "xquik").exchange(Some(200));
        m.retried("support", RetryReason::RateLimited);
        m.run_finished("support", Duration::from_millis(700));
        m.set_conversations("support", ConversationCounts { ok: 2, failed: 1, backfilling: 0, paused: 0 });
        let text = m.encode_text();
        for (name, kind) in [
            ("dm_handoff_records_written_total", "counter"),
            ("dm_handoff_requests_total", "counter"),
            ("dm_handoff_retries_total", "counter"),
            ("dm_handoff_credits_spent_total", "counter"),
            ("dm_handoff_run_duration_seconds", "histogram"),
            ("dm_handoff_last_run_success_timestamp_seconds", "gauge"),
            ("dm_handoff_newest_record_created_timestamp_seconds", "gauge"),
            ("dm_handoff_conversations", "gauge"),
            ("dm_handoff_segments_closed_total", "counter"),
            ("dm_handoff_build_info", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind} missing:\n{text}");
        }
        let at = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no sample {s}:\n{text}"));
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="support",kind="dm_message"}"#), 3.0);
        assert_eq!(at(r#"dm_handoff_requests_total{pipeline="support",provider="xquik",status="200"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_retries_total{pipeline="support",reason="429"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_credits_spent_total{pipeline="support"}"#), 40.0);
        assert_eq!(at(r#"dm_handoff_segments_closed_total{pipeline="support"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_run_duration_seconds_count{pipeline="support"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_run_duration_seconds_bucket{pipeline="support",le="1"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_newest_record_created_timestamp_seconds{pipeline="support"}"#), 1_771_927_200.123);
        assert_eq!(at(r#"dm_handoff_last_run_success_timestamp_seconds{pipeline="support"}"#), 1_771_927_300.0);
        assert_eq!(at(r#"dm_handoff_conversations{pipeline="support",state="failed"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_conversations{pipeline="support",state="paused"}"#), 0.0);
        assert_eq!(at(&format!(r#"dm_handoff_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), 1.0);
        // OpenMetrics names the same series, and ends as that format requires.
        let om = m.encode_openmetrics();
        assert!(om.contains("dm_handoff_records_written_total{pipeline=\"support\",kind=\"dm_message\"} 3\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn upload_series_per_pipeline() {
        let m = Metrics::new();
        m.upload_backlog("support", 3);
        m.uploaded("support", 0);
        let text = m.encode_text();
        assert!(text.contains("# TYPE dm_handoff_upload_backlog_segments gauge"), "{text}");
        assert!(text.contains("# TYPE dm_handoff_uploaded_bytes_total counter"), "{text}");
        assert!(text.contains("# TYPE dm_handoff_upload_errors_total counter"), "{text}");
        assert_eq!(sample(&text, r#"dm_handoff_upload_errors_total{pipeline="support"}"#), Some(0.0));
        m.uploaded("support", 1234);
        m.upload_failed("support");
        m.upload_backlog("support", 1);
        let text = m.encode_text();
        assert_eq!(sample(&text, r#"dm_handoff_upload_backlog_segments{pipeline="support"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"dm_handoff_uploaded_bytes_total{pipeline="support"}"#), Some(1234.0));
        assert_eq!(sample(&text, r#"dm_handoff_upload_errors_total{pipeline="support"}"#), Some(1.0));
        m.forget_pipeline("support");
        assert_eq!(sample(&m.encode_text(), r#"dm_handoff_upload_backlog_segments{pipeline="support"}"#), None);
    }

    #[test]
    fn counters_start_at_zero_and_timestamps_only_once_known() {
        let m = Metrics::new();
        let _p = m.pipeline("quiet");
        let text = m.encode_text();
        assert_eq!(sample(&text, r#"dm_handoff_credits_spent_total{pipeline="quiet"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"dm_handoff_segments_closed_total{pipeline="quiet"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"dm_handoff_run_duration_seconds_count{pipeline="quiet"}"#), Some(0.0));
        assert!(!text.contains("last_run_success_timestamp_seconds{"), "never succeeded: no sample\n{text}");
        assert!(!text.contains("newest_record_created_timestamp_seconds{"), "no record yet: no sample\n{text}");
    }

    #[test]
    fn kinds_and_statuses_are_counted_apart_and_no_answer_is_error() {
        let m = Metrics::new();
        let mut p = m.pipeline("a");
        p.records("dm_message", 2);
        p.records("dm_send", 1);
        p.records("dm_message", 5);
        p.records("dm_event", 0);
        let r = m.requests("a", "x-api-v2");
        for s in [Some(200), Some(429), None, Some(200)] {
            r.exchange(s);
        }
        let text = m.encode_text();
        let at = |s: &str| sample(&text, s);
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="a",kind="dm_message"}"#), Some(7.0));
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="a",kind="dm_send"}"#), Some(1.0));
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="a",kind="dm_event"}"#), None, "nothing added");
        assert_eq!(at(r#"dm_handoff_requests_total{pipeline="a",provider="x-api-v2",status="200"}"#), Some(2.0));
        assert_eq!(at(r#"dm_handoff_requests_total{pipeline="a",provider="x-api-v2",status="429"}"#), Some(1.0));
        assert_eq!(at(r#"dm_handoff_requests_total{pipeline="a",provider="x-api-v2",status="error"}"#), Some(1.0));
    }

    #[test]
    fn a_forgotten_pipeline_leaves_no_gauge_and_counters_carry_on_after_a_restart() {
        let m = Metrics::new();
        let p = m.pipeline("gone");
        p.credits(5);
        p.last_run_success(SystemTime::now());
        p.newest_record_created(SystemTime::now());
        m.run_finished("gone", Duration::from_secs(1));
        m.set_conversations("gone", ConversationCounts { failed: 2, ..Default::default() });
        m.forget_pipeline("gone");
        let text = m.encode_text();
        for series in ["last_run_success", "newest_record_created", "conversations{", "run_duration_seconds_count"] {
            assert!(!text.lines().any(|l| l.contains(series) && l.contains("\"gone\"")), "{series} left:\n{text}");
        }
        // Restarted (a reload that changed it): the same counter goes on from where it was.
        m.pipeline("gone").credits(1);
        assert_eq!(sample(&m.encode_text(), r#"dm_handoff_credits_spent_total{pipeline="gone"}"#), Some(6.0));
    }
}
