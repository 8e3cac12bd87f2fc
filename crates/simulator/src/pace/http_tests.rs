//! Speed realism over the wire: Xquik's fixed windows per account and the `latency_ms` delay.

use std::time::{Duration, Instant};

use serde_json::json;

use super::super::testkit::{get, send};
use super::super::{SimConfig, Simulator};

const HISTORY: &str = "/api/v1/x/dm/783214/history?account=acme";

#[tokio::test]
async fn xquik_windows_answer_429_until_the_window_resets() {
    let h = Simulator::spawn(SimConfig {
        xquik_rate_limit: Some((3, 60)),
        xquik_write_limit: Some((2, 60)),
        ..SimConfig::default()
    })
    .await
    .expect("spawn");
    let as_key = |key: &'static str| [("x-api-key", key)];
    for _ in 0..3 {
        assert_eq!(send(h.addr, "GET", HISTORY, &as_key("acct-a"), b"").await.status, 200);
    }
    let r = send(h.addr, "GET", "/api/v1/x/users/783214", &as_key("acct-a"), b"").await;
    assert_eq!(r.status, 429, "every read route counts");
    let wait: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        r.json(),
        json!({ "error": "rate_limit_exceeded", "message": "Too many requests. Try again later.", "retryAfter": wait })
    );
    // Another Xquik account has its own window; a write counts in the write window.
    assert_eq!(send(h.addr, "GET", HISTORY, &as_key("acct-b"), b"").await.status, 200);
    let dm = |key: &'static str| {
        let body = serde_json::to_vec(&json!({ "account": "acme", "text": key })).expect("json");
        async move {
            let headers = [("x-api-key", "acct-a"), ("Content-Type", "application/json"), ("Idempotency-Key", key)];
            send(h.addr, "POST", "/api/v1/x/dm/783214", &headers, &body).await
        }
    };
    assert_eq!(dm("w1").await.status, 200);
    assert_eq!(dm("w2").await.status, 200);
    let r = dm("w3").await;
    assert_eq!((r.status, r.json()["error"].clone()), (429, json!("rate_limit_exceeded")));
    assert_eq!(h.sim.messages("783214").len(), 2, "the throttled send sent nothing");
    let s = h.sim.stats();
    assert_eq!(s.rate_limited, 2);
    assert_eq!(s.rate_limited_by_family.get("xquik_read"), Some(&1));
    assert_eq!(s.rate_limited_by_family.get("xquik_write"), Some(&1));
    assert_eq!(s.by_status.get(&429), Some(&2));
    h.shutdown().await;
}

#[test]
fn scenario_keys_parse_and_null_turns_the_windows_off() {
    let cfg: SimConfig =
        serde_json::from_str(r#"{"latency_ms":[5,20],"xquik_rate_limit":[50,2],"xquik_write_limit":null}"#)
            .expect("cfg");
    assert_eq!((cfg.latency_ms, cfg.xquik_rate_limit, cfg.xquik_write_limit), (Some((5, 20)), Some((50, 2)), None));
    let cfg: SimConfig = serde_json::from_str(r#"{"xquik_rate_limit":null}"#).expect("cfg");
    assert_eq!((cfg.xquik_rate_limit, cfg.xquik_write_limit), (None, Some((120, 60))));
    let cfg: SimConfig = serde_json::from_str("{}").expect("cfg");
    assert_eq!((cfg.latency_ms, cfg.xquik_rate_limit), (None, Some((300, 1))));
}

#[tokio::test]
async fn latency_delays_provider_answers_but_not_the_admin_api() {
    let h =
        Simulator::spawn(SimConfig { latency_ms: Some((1_500, 1_500)), ..SimConfig::default() }).await.expect("spawn");
    let started = Instant::now();
    assert_eq!(get(h.addr, "/_sim/stats").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1_000), "the admin API answers at once");
    let started = Instant::now();
    assert_eq!(get(h.addr, HISTORY).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_delayed_requests_wait_side_by_side() {
    let h =
        Simulator::spawn(SimConfig { latency_ms: Some((100, 200)), xquik_rate_limit: None, ..SimConfig::default() })
            .await
            .expect("spawn");
    let addr = h.addr;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..320 {
        tasks.spawn(async move { get(addr, HISTORY).await.status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    // One after another they would take 30 s or more; side by side, a fraction of that even on a
    // busy machine.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let s = h.sim.stats();
    assert_eq!(s.requests, 320);
    assert!(s.peak_in_flight >= 20, "{}", s.peak_in_flight);
    assert!(s.peak_requests_per_second >= 20, "{}", s.peak_requests_per_second);
    h.shutdown().await;
}
