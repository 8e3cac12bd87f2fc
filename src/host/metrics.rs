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

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
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

/// Serves the endpoint until `stop` fires.
pub(super) async fn serve(listener: TcpListener, source: Arc<dyn Source>, stop: CancellationToken) {
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(source);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
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
