//! GetXAPI sends that fail the ways GetXAPI's do (SPEC 8.8), over the wire.

use serde_json::{json, Value};

use super::super::testkit::try_send;
use super::super::{Faults, SimConfig, SimProvider, Simulator, WriteFault, WriteFaultKind};

const PEER: &str = "44196397";

#[tokio::test]
async fn sends_fail_in_getxapi_shapes_and_performed_ones_are_in_history() {
    let h = Simulator::spawn(SimConfig::default()).await.expect("spawn");
    use WriteFaultKind::*;
    h.sim.set_faults(Faults {
        write_faults: vec![
            WriteFault::new(RateLimited).retry_after_secs(86_400),
            WriteFault::new(ServerErrorNotSent),
            WriteFault::new(ServerError),
            WriteFault::new(NoData),
            WriteFault::new(Garble),
            WriteFault::new(Drop),
        ],
        ..Faults::default()
    });
    let dm = |text: &str| {
        let body = serde_json::to_vec(&json!({ "auth_token": "t", "recipient_id": PEER, "text": text })).expect("json");
        async move { try_send(h.addr, "POST", "/twitter/dm/send", &[("Content-Type", "application/json")], &body).await }
    };
    let copies = |text: &str| h.sim.messages(PEER).iter().filter(|m| m.text.as_deref() == Some(text)).count();

    let r = dm("throttled").await.expect("answer");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["retry_after"], 86_400);
    assert_eq!(r.json()["error"], "Too Many Requests");
    assert!(r.header("retry-after").is_none(), "GetXAPI says it in the body only");
    let r = dm("internal").await.expect("answer");
    assert_eq!((r.status, r.json()), (500, json!({ "error": "Internal server error" })));
    assert_eq!((copies("throttled"), copies("internal")), (0, 0));

    let r = dm("bad gateway").await.expect("answer");
    assert_eq!((r.status, r.json()), (502, json!({ "error": "Bad Gateway" })));
    let r = dm("no data").await.expect("answer");
    assert_eq!((r.status, r.json()), (200, json!({ "status": "success", "msg": "DM sent successfully" })));
    let r = dm("garbled").await.expect("answer");
    assert!(r.status == 200 && serde_json::from_slice::<Value>(&r.body).is_err());
    assert!(dm("dropped").await.is_none());
    for t in ["bad gateway", "no data", "garbled", "dropped"] {
        assert_eq!(copies(t), 1, "{t} was sent once");
    }
    let r = dm("fine").await.expect("answer");
    assert_eq!(r.json()["data"]["id"].as_str(), Some(h.sim.messages(PEER)[0].id.as_str()));
    let writes = h.sim.writes();
    assert_eq!(writes.len(), 5);
    assert!(writes.iter().all(|w| w.provider == SimProvider::GetXApi && w.route == super::SEND));
    assert_eq!(writes[4].fault, None);
    h.shutdown().await;
}
