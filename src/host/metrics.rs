//! The daemon's metrics endpoint (`metrics_listen`, SPEC 8.5): `GET /metrics` and `GET /healthz` over
//! HTTP/1, on axum, the HTTP stack the simulator already serves on.
//!
//! - `/metrics`: the process registry ([`crate::metrics::global`]), after the gauges that are read from the
//!   state at scrape time are brought up to date ([`Source::refresh`]). Prometheus text format 0.0.4, or
//!   OpenMetrics when the scraper asks for it in `Accept` (Prometheus does).
//! - `/healthz`: `200 ok` while the schedule runs; `503` with a one-line reason while any pipeline's last
//!   run stopped on an account-level provider error (a rejected key, billing), or while the daemon stops.
//!
//! Neither ever carries a conversation ID, a username or message text: the registry's labels cannot, and
//! the health reason names pipelines only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the endpoint asks of the daemon.
pub(super) trait Source: Send + Sync + 'static {
    /// Brings the gauges computed from the state (conversations by state) up to date. Runs on a blocking
    /// thread: it reads the state.
    fn refresh(&self);
    /// None while healthy; else why not, in one line naming no conversation.
    fn unhealthy(&self) -> Option<String>;
}

/// Binds `metrics_listen` before the daemon says it is ready, so a taken port is one clear start-up error.
pub(super) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("metrics_listen {addr}: cannot listen there; choose a free address and port, or remove metrics_listen")
    })
}

/// Most connections served at once; one more is closed at accept. A Prometheus server holds one, a few
/// scrapers a few; the cap keeps a flood of connections from any local user from taking the file
/// descriptors the writer needs (under systemd's 1,024 soft limit, an EMFILE on reopening the active file).
const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send a complete request head, counted again while a kept-alive
/// connection waits for its next request: a half-open or silent connection is closed after this. Scrapers
/// send the head at once, and reconnect when a kept-alive connection was closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the endpoint until `stop` fires: HTTP/1 on hyper's connection builder (axum's `serve` has no
/// header-read timeout and no connection cap), the axum router as the service.
pub(super) async fn serve(listener: TcpListener, source: Arc<dyn Source>, stop: CancellationToken) {
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(source);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let header_timeout = super::control::listener_timeout(HEADER_TIMEOUT);
    let mut conns = JoinSet::new();
    // When the cap last said so: a flood warns once a minute, not per connection.
    let mut full: Option<Instant> = None;
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning on a listener that stays ready.
                    tracing::warn!(error = %e, "the metrics endpoint could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            if full.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                full = Some(Instant::now());
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "too many open metrics connections; closing new ones until some end"
                );
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    // Finish a response in flight, then close; bounded like a silent client.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(header_timeout, conn).await;
                }
            }
            drop(permit);
        });
    }
    conns.abort_all();
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(source): State<Arc<dyn Source>>, headers: HeaderMap) -> Response {
    let refreshed = tokio::task::spawn_blocking({
        let source = source.clone();
        move || source.refresh()
    })
    .await;
    if let Err(e) = refreshed {
        tracing::warn!(error = %e, "refreshing the conversation gauges failed; serving the last values");
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let registry = crate::metrics::global();
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], registry.encode_openmetrics()).into_response()
    } else {
        let text = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
        ([(header::CONTENT_TYPE, text)], registry.encode_text()).into_response()
    }
}

async fn healthz(State(source): State<Arc<dyn Source>>) -> (StatusCode, String) {
    match source.unhealthy() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")),
    }
}
