//! X API v2's side of write faults (SPEC 8.8): how a [`WriteFaultKind`] is worded on the send,
//! new-group, delete and upload routes. The refusals send nothing; the rest come after the write.

use axum::response::Response;
use serde_json::{json, Value};

use super::super::faults::Early;
use super::super::http::json;
use super::super::writes;
use super::super::{SimProvider, SimWriteAction, Simulator, WriteFault, WriteFaultKind};
use super::{early, problem, PROBLEMS};

/// The fault for the write a route is about to do, and the refusal to answer instead when the
/// fault sends nothing.
pub(super) fn take(
    sim: &Simulator,
    action: SimWriteAction,
    target: Option<&str>,
) -> Result<Option<WriteFault>, Response> {
    let fault = sim.take_write_fault(SimProvider::XApiV2, action, target);
    match fault {
        Some(f) if !f.kind.performs() => {
            tracing::debug!(kind = ?f.kind, ?action, "simulator: refusing an X API v2 write");
            Err(refuse(&f))
        }
        other => Ok(other),
    }
}

fn refuse(f: &WriteFault) -> Response {
    match f.kind {
        // The legacy 429 X documents, with its headers (the window says when it resets).
        WriteFaultKind::RateLimited => early(Early::RateLimited { retry_after: f.retry_after_secs }, None),
        _ => problem(
            500,
            &format!("{PROBLEMS}internal-error"),
            "Internal Server Error",
            "Something went wrong. Please try again later.",
        ),
    }
}

/// The answer to a performed write: `status` with `body`, unless the fault spoils it.
pub(super) async fn answer(fault: Option<WriteFault>, status: u16, body: Value) -> Response {
    let normal = json(status, &body);
    writes::answer(fault.as_ref(), status, &body, normal, |kind| match kind {
        WriteFaultKind::NoData => Some(json(status, &json!({}))),
        WriteFaultKind::ServerError => Some(problem(503, "about:blank", "Service Unavailable", "Service Unavailable")),
        _ => None,
    })
    .await
}
