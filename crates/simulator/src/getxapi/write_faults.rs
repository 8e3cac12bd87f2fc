//! GetXAPI's side of write faults (SPEC 8.8) on `POST /twitter/dm/send`: its free-text error
//! bodies, a 429 that says the wait only in the body, and a success without `data`.

use axum::response::Response;
use serde_json::{json, Value};

use super::super::http::json;
use super::super::writes;
use super::super::{SimProvider, SimWriteAction, Simulator, WriteFault, WriteFaultKind};

/// The fault for a send to `peer`, or the refusal to answer instead when it sends nothing.
pub(super) fn take(sim: &Simulator, peer: Option<&str>) -> Result<Option<WriteFault>, Response> {
    match sim.take_write_fault(SimProvider::GetXApi, SimWriteAction::Send, peer) {
        Some(f) if !f.kind.performs() => {
            tracing::debug!(kind = ?f.kind, "simulator: refusing a GetXAPI send");
            Err(match f.kind {
                WriteFaultKind::RateLimited => json(
                    429,
                    &json!({ "error": "Too Many Requests", "twitter_error_code": 88, "retry_after": f.retry_after_secs }),
                ),
                _ => json(500, &json!({ "error": "Internal server error" })),
            })
        }
        other => Ok(other),
    }
}

/// The 200 answer to a performed send, unless the fault spoils it.
pub(super) async fn answer(fault: Option<WriteFault>, body: Value) -> Response {
    let normal = json(200, &body);
    writes::answer(fault.as_ref(), 200, &body, normal, |kind| match kind {
        WriteFaultKind::NoData => Some(json(200, &json!({ "status": "success", "msg": "DM sent successfully" }))),
        WriteFaultKind::ServerError => Some(json(502, &json!({ "error": "Bad Gateway" }))),
        _ => None,
    })
    .await
}
