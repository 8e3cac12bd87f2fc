//! The `/_sim/` control API, for tests that run the simulator as a separate process
//! (`dm-handoff simulate`): read the books, change faults (write faults included), add messages,
//! read ground truth and the writes performed.
//!
//! No auth, no faults, not booked in the stats: it is the test's side channel, not part of any
//! provider.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::http::json;
use super::world::parse_peer;
use super::{Faults, Simulator};

/// The most messages one admin call may add, so a typo cannot exhaust memory.
const MAX_ADD: usize = 10_000_000;

/// Routes relative to `/_sim` (the caller nests them).
pub(crate) fn routes(sim: Simulator) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/faults", put(set_faults).get(get_faults))
        .route("/writes", get(writes))
        .route("/conversations/{peer}/messages", get(messages).post(add_messages))
        .fallback(|| async { json(404, &json!({ "error": "not_found" })) })
        .with_state(sim.clone())
        .merge(super::x_api_v2::oauth::admin_routes(sim))
}

fn bad(message: &str) -> Response {
    json(400, &json!({ "error": "invalid_input", "message": message }))
}

async fn stats(State(sim): State<Simulator>) -> Response {
    json(200, &sim.stats())
}

/// The writes performed so far ([`Simulator::writes`]).
async fn writes(State(sim): State<Simulator>) -> Response {
    json(200, &sim.writes())
}

async fn get_faults(State(sim): State<Simulator>) -> Response {
    json(200, &sim.faults())
}

async fn set_faults(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    let Ok(body) = body else {
        return bad("body could not be read");
    };
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            sim.set_faults(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad(&format!("invalid faults: {e}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMessages {
    count: usize,
}

async fn add_messages(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(peer) = path.ok().and_then(|Path(p)| parse_peer(&p).map(|_| p)) else {
        return json(400, &json!({ "error": "invalid_user_id" }));
    };
    let Ok(body) = body else {
        return bad("body could not be read");
    };
    let add: AddMessages = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return bad(&format!("expected {{\"count\": n}}: {e}")),
    };
    if add.count > MAX_ADD {
        return bad("count is too large");
    }
    json(200, &json!({ "ids": sim.add_messages(&peer, add.count) }))
}

async fn messages(State(sim): State<Simulator>, path: Result<Path<String>, PathRejection>) -> Response {
    let Some(peer) = path.ok().and_then(|Path(p)| parse_peer(&p).map(|_| p)) else {
        return json(400, &json!({ "error": "invalid_user_id" }));
    };
    json(200, &sim.messages(&peer))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{get, send};
    use super::super::{SimConfig, SimMessage, Simulator, Stats};

    #[tokio::test]
    async fn admin_controls_the_simulator_without_being_counted() {
        let h = Simulator::spawn(SimConfig::default()).await.expect("spawn");
        let r = send(
            h.addr,
            "PUT",
            "/_sim/faults",
            &[("Content-Type", "application/json")],
            br#"{"storm":1,"retry_after_secs":3}"#,
        )
        .await;
        assert_eq!(r.status, 204);
        assert!(r.header("x-request-id").is_some());
        let r = get(h.addr, "/api/v1/x/dm/783214/history?account=acme").await;
        assert_eq!((r.status, r.header("retry-after")), (429, Some("3")));

        let r = send(h.addr, "PUT", "/_sim/faults", &[], br#"{"storms":1}"#).await;
        assert_eq!(r.status, 400);

        let r = send(
            h.addr,
            "POST",
            "/_sim/conversations/783214/messages",
            &[("Content-Type", "application/json")],
            br#"{"count":3}"#,
        )
        .await;
        assert_eq!(r.status, 200);
        let ids: Vec<String> = serde_json::from_value(r.json()["ids"].clone()).expect("ids are strings");
        assert_eq!(ids.len(), 3);

        let r = get(h.addr, "/_sim/conversations/783214/messages").await;
        let truth: Vec<SimMessage> = serde_json::from_slice(&r.body).expect("ground truth");
        assert_eq!(truth.len(), 3);
        assert_eq!(truth[0].id, ids[2]);

        let r = get(h.addr, "/api/v1/x/dm/783214/history?account=acme").await;
        assert_eq!(r.json()["messages"].as_array().map(Vec::len), Some(3));

        assert_eq!(get(h.addr, "/_sim/nothing").await.status, 404);
        assert_eq!(get(h.addr, "/_sim/conversations/x/messages").await.status, 400);

        let r = get(h.addr, "/_sim/stats").await;
        let stats: Stats = serde_json::from_slice(&r.body).expect("stats");
        assert_eq!(stats.requests, 2, "only the two history requests are booked");
        assert_eq!(stats.by_status.get(&429), Some(&1));
        assert_eq!(stats.credits, 3);
        h.shutdown().await;
    }
}
