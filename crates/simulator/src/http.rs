//! HTTP plumbing shared by every simulated provider: JSON answers, request ids, the slow-down
//! fault and the stats layer that books each request under its route template.
//!
//! Providers tag their responses with a [`RouteTag`]; this module never looks at bodies.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::content::mix2;
use super::writes::NoAnswer;
use super::{RequestLog, Simulator};

/// Set by a provider on every response so the stats layer knows the route template (e.g.
/// `GET /x/dm/{userId}/history`) and whether the caller's key was accepted.
#[derive(Clone, Debug)]
pub(crate) struct RouteTag {
    pub(crate) route: String,
    pub(crate) key_ok: bool,
}

/// A JSON answer with the given status.
pub(crate) fn json<T: Serialize + ?Sized>(status: u16, body: &T) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], bytes).into_response()
}

/// Gives every response an `X-Request-Id`, derived from the seed and a counter so runs repeat.
pub(crate) async fn request_id(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    let n = sim.next_request_seq();
    let mut resp = next.run(req).await;
    let id = format!("req_{:016x}", mix2(sim.inner.cfg.seed ^ 0x0072_6571, n));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().entry("x-request-id").or_insert(v);
    }
    resp
}

/// Applies `slow_ms` and `latency_ms`, then books the request under the route its provider
/// tagged it with (status 0 for an answer a write fault never sent).
pub(crate) async fn book(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    let _in_flight = sim.inner.stats.enter();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    if let Some(delay) = sim.inner.faults.slow() {
        tokio::time::sleep(delay).await;
    }
    if let Some(delay) = sim.inner.pace.latency() {
        tokio::time::sleep(delay).await;
    }
    let resp = next.run(req).await;
    let (route, key_ok) = match resp.extensions().get::<RouteTag>() {
        Some(t) => (t.route.clone(), t.key_ok),
        None => (format!("{method} (unmatched)"), false),
    };
    let status = if resp.extensions().get::<NoAnswer>().is_some() { 0 } else { resp.status().as_u16() };
    sim.inner.stats.record(route, RequestLog { method, path, query, status, api_key_ok: key_ok });
    resp
}
