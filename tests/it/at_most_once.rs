//! SPEC 8.8 (issue 16): a DM is sent at most once. Against every provider, the simulator performs the write
//! and then loses or spoils the answer (`Faults::write_faults`); the real binary must make exactly one POST,
//! then either record the message found in the conversation (`send_status: confirmed_by_history`) or print
//! `outcome unknown` (exit 1); running the same job again must not POST again, and `--resend-unknown` sends
//! once more. Xquik's failed-but-safe write action is made again under a new idempotency key.

use dm_handoff_simulator::{
    CursorStyle, Faults, SimConfig, SimProvider, SimWriteAction, Stats, WriteFault, WriteFaultKind,
};
use serde_json::Value;

use crate::support::*;

const PEER: &str = "8800001";

/// The route template of a 1:1 send, as the simulator books it.
fn send_route(provider: Provider) -> &'static str {
    match provider {
        Provider::Xquik => "POST /x/dm/{userId}",
        Provider::XApiV2 => "POST /2/dm_conversations/with/{participant_id}/messages",
        Provider::GetXApi => "POST /twitter/dm/send",
    }
}

fn sim_provider(provider: Provider) -> SimProvider {
    match provider {
        Provider::Xquik => SimProvider::Xquik,
        Provider::XApiV2 => SimProvider::XApiV2,
        Provider::GetXApi => SimProvider::GetXApi,
    }
}

fn routed(stats: &Stats, route: &str) -> u64 {
    stats.by_route.get(route).copied().unwrap_or(0)
}

/// A world with one short conversation and the given write faults.
fn world(seed: u64, write_faults: Vec<WriteFault>) -> SimConfig {
    let mut cfg = sim_config(seed, vec![conv(PEER, 4, CursorStyle::MaxId)]);
    cfg.faults = Faults { write_faults, ..Faults::default() };
    cfg
}

/// Timeouts short enough that a `slow` answer times out, retries fast.
const FAST: &str = "request_timeout = \"2s\"\nretry_base = \"10ms\"\nretry_max = \"200ms\"";

fn send_records(fx: &Fixture) -> Vec<Value> {
    records_of_kind(&fx.records(), "dm_send").into_iter().cloned().collect()
}

/// The messages with `text` in the simulator's conversation: what the recipient actually got.
fn delivered(fx: &Fixture, text: &str) -> usize {
    fx.sim.sim.messages(PEER).iter().filter(|m| m.text.as_deref() == Some(text)).count()
}

/// Lost answers after the provider acted: one POST, then the message found by reading the conversation back.
async fn a_lost_answer_is_read_back_and_never_sent_again(provider: Provider, kind: WriteFaultKind, seed: u64) {
    let fault = WriteFault::new(kind).provider(sim_provider(provider)).action(SimWriteAction::Send).delay_secs(5);
    let fx = Fixture::new_for(provider, world(seed, vec![fault]), FAST).await;
    let text = format!("Your refund is on its way zq{seed}");
    let args = ["send", "--to", PEER, "--text", &text];
    let out = fx.cmd(&args).run().await;
    // Every write is performed (a second POST would be too, its fault spent); a slow answer the client gave
    // up on is never booked by route, so the writes are what counts here.
    assert_eq!(fx.sim.sim.writes().len(), 1, "{provider:?} {kind:?}: exactly one POST\n{out}");
    if kind != WriteFaultKind::Slow {
        assert_eq!(routed(&fx.sim.sim.stats(), send_route(provider)), 1, "{provider:?} {kind:?}: one POST\n{out}");
    }
    assert_eq!(delivered(&fx, &text), 1, "the recipient got it once");
    out.expect_code(0);
    assert!(out.stdout.contains("confirmed by history"), "{out}");
    let records = send_records(&fx);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(str_field(r, "send_status"), Some("confirmed_by_history"));
    let truth = fx.sim.sim.messages(PEER).into_iter().find(|m| m.text.as_deref() == Some(text.as_str())).unwrap();
    assert_eq!(str_field(r, "message_id"), Some(truth.id.as_str()), "the message the conversation shows");
    assert_eq!(str_field(r, "sent_at"), Some(truth.created_at.as_str()), "sent when the provider says");

    // The same job again: recorded, so nothing is asked of the provider.
    let out = fx.cmd(&args).run().await;
    out.expect_code(0);
    assert!(out.stdout.starts_with("already sent"), "{out}");
    assert_eq!(fx.sim.sim.writes().len(), 1, "no second POST");
    assert_eq!(send_records(&fx).len(), 1);
    // A sync writes the message once more as history (dm_message), never a second dm_send.
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}

macro_rules! lost_answer_cases {
    ($($name:ident: $provider:expr, $kind:expr, $seed:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            a_lost_answer_is_read_back_and_never_sent_again($provider, $kind, $seed).await;
        }
    )*};
}

lost_answer_cases! {
    xquik_dropped_connection: Provider::Xquik, WriteFaultKind::Drop, 8801;
    xquik_garbled_200: Provider::Xquik, WriteFaultKind::Garble, 8802;
    xquik_200_without_the_message_id: Provider::Xquik, WriteFaultKind::NoData, 8803;
    xquik_ambiguous_500: Provider::Xquik, WriteFaultKind::ServerError, 8804;
    xquik_body_cut_short: Provider::Xquik, WriteFaultKind::Cut, 8805;
    xquik_timeout: Provider::Xquik, WriteFaultKind::Slow, 8806;
    x_api_v2_201_without_data: Provider::XApiV2, WriteFaultKind::NoData, 8811;
    x_api_v2_dropped_connection: Provider::XApiV2, WriteFaultKind::Drop, 8812;
    x_api_v2_503_after_sending: Provider::XApiV2, WriteFaultKind::ServerError, 8813;
    x_api_v2_garbled_201: Provider::XApiV2, WriteFaultKind::Garble, 8814;
    x_api_v2_timeout: Provider::XApiV2, WriteFaultKind::Slow, 8815;
    getxapi_success_without_data: Provider::GetXApi, WriteFaultKind::NoData, 8821;
    getxapi_dropped_connection: Provider::GetXApi, WriteFaultKind::Drop, 8822;
    getxapi_502_after_sending: Provider::GetXApi, WriteFaultKind::ServerError, 8823;
    getxapi_body_cut_short: Provider::GetXApi, WriteFaultKind::Cut, 8824;
}

/// A 5xx the provider did not act on looks the same as one it did: the job is `outcome unknown`, the rerun
/// only looks, and `--resend-unknown` sends once more.
async fn an_unknown_outcome_waits_for_resend_unknown(provider: Provider, seed: u64) {
    let fault = WriteFault::new(WriteFaultKind::ServerErrorNotSent).provider(sim_provider(provider)).times(1);
    let fx = Fixture::new_for(provider, world(seed, vec![fault]), FAST).await;
    let text = format!("Did this reach you? zq{seed}");
    let args = ["send", "--to", PEER, "--text", &text];
    let out = fx.cmd(&args).run().await;
    out.expect_code(1);
    assert_eq!(out.error_lines().len(), 1, "{out}");
    assert!(out.stderr.contains("outcome unknown") && out.stderr.contains("--resend-unknown"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), send_route(provider)), 1, "one POST");
    assert_eq!(delivered(&fx, &text), 0);
    assert!(send_records(&fx).is_empty());

    // Again, as is: it reads the conversation, finds nothing, and does not send.
    let before = fx.sim.sim.stats();
    let out = fx.cmd(&args).run().await;
    out.expect_code(1);
    assert!(out.stderr.contains("outcome unknown"), "{out}");
    let after = fx.sim.sim.stats();
    assert_eq!(routed(&after, send_route(provider)), 1, "no POST without --resend-unknown");
    assert!(after.requests > before.requests, "it looked at the conversation");

    // Asked to: one more POST, recorded as sent.
    let mut resend = args.to_vec();
    resend.push("--resend-unknown");
    let out = fx.cmd(&resend).run().await;
    out.expect_code(0);
    assert_eq!(routed(&fx.sim.sim.stats(), send_route(provider)), 2);
    assert_eq!(delivered(&fx, &text), 1);
    let records = send_records(&fx);
    assert_eq!(records.len(), 1);
    assert_eq!(str_field(&records[0], "send_status"), Some("sent"));
    let out = fx.cmd(&resend).run().await;
    out.expect_code(0);
    assert!(out.stdout.starts_with("already sent"), "recorded is final, --resend-unknown or not\n{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), send_route(provider)), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_v2_unknown_outcome_needs_resend_unknown() {
    an_unknown_outcome_waits_for_resend_unknown(Provider::XApiV2, 8831).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getxapi_unknown_outcome_needs_resend_unknown() {
    an_unknown_outcome_waits_for_resend_unknown(Provider::GetXApi, 8832).await;
}

/// Xquik: the answer is lost and the conversation cannot be read either (every history page is malformed):
/// outcome unknown, and a rerun only looks; once the conversation reads again, it confirms the send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xquik_unknown_outcome_is_confirmed_once_the_conversation_reads_again() {
    let mut cfg = world(8833, vec![WriteFault::new(WriteFaultKind::ServerError).times(1)]);
    cfg.faults.malformed = 1.0;
    let fx = Fixture::new_for(Provider::Xquik, cfg, FAST).await;
    let text = "Tracking lost zq8833";
    let args = ["send", "--to", PEER, "--text", text, "--resend-unknown"];
    let out = fx.cmd(&args[..5]).run().await;
    out.expect_code(1);
    assert!(out.stderr.contains("outcome unknown") && out.stderr.contains("could not be read"), "{out}");
    // Even --resend-unknown does not send what it cannot look for.
    let out = fx.cmd(&args).run().await;
    out.expect_code(1);
    assert_eq!(routed(&fx.sim.sim.stats(), "POST /x/dm/{userId}"), 1, "one POST");
    fx.sim.sim.set_faults(Faults::default());
    let out = fx.cmd(&args).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("confirmed by history"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), "POST /x/dm/{userId}"), 1, "still one POST");
    assert_eq!(delivered(&fx, text), 1);
    assert_eq!(str_field(&send_records(&fx)[0], "send_status"), Some("confirmed_by_history"));
}

/// Xquik's contract: a failed write action with `safeToRetry: true` sent nothing, and a reused key returns
/// that same failed action, so the write is made again under a new key, once, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xquik_safe_to_retry_failures_are_made_again_under_a_new_key() {
    for (seed, kind) in [(8841, WriteFaultKind::FailedSafe), (8842, WriteFaultKind::ServerErrorNotSent)] {
        let fault = WriteFault::new(kind).action(SimWriteAction::Send).times(1);
        let fx = Fixture::new_for(Provider::Xquik, world(seed, vec![fault]), FAST).await;
        let text = format!("Second key wins zq{seed}");
        let out = fx.cmd(&["send", "--to", PEER, "--text", &text]).run().await;
        out.expect_code(0);
        let stats = fx.sim.sim.stats();
        assert_eq!(routed(&stats, "POST /x/dm/{userId}"), 2, "{kind:?}: asked twice\n{out}");
        // Only the second ask was performed (the first failed before dispatch), under a key of its own: the
        // original key would have been answered with the original, failed action.
        let performed = fx.sim.sim.writes();
        assert_eq!(performed.len(), 1, "{performed:?}");
        let second_key = performed[0].idempotency_key.clone().expect("Xquik writes carry a key");
        assert_eq!(delivered(&fx, &text), 1);
        let records = send_records(&fx);
        assert_eq!(records.len(), 1);
        let job_key = str_field(&records[0], "idempotency_key").expect("the record names the job's key");
        assert_ne!(second_key, job_key, "a new key for the second ask");
        assert!(second_key.starts_with(job_key), "derived from the job's key: {second_key}");
    }
}

/// Answers that prove nothing was done are retried; refusals are not; neither leaves anything unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_and_refusals_are_final() {
    let faults = vec![
        WriteFault::new(WriteFaultKind::RateLimited).retry_after_secs(0).times(2),
        WriteFault::new(WriteFaultKind::AccountRestricted).peer("8800002").times(1),
    ];
    let mut cfg = world(8851, faults);
    cfg.conversations.push(conv("8800002", 2, CursorStyle::MaxId));
    let fx = Fixture::new_for(Provider::Xquik, cfg, FAST).await;
    let out = fx.cmd(&["send", "--to", PEER, "--text", "After the wait zq8851"]).run().await;
    out.expect_code(0);
    assert_eq!(routed(&fx.sim.sim.stats(), "POST /x/dm/{userId}"), 3, "two 429s, then the send");
    let out = fx.cmd(&["send", "--to", "8800002", "--text", "Refused zq8851"]).run().await;
    out.expect_code(4);
    assert!(out.stderr.contains("account_restricted") && !out.stderr.contains("outcome unknown"), "{out}");
    // A refusal proves nothing was sent: the same job may run again once the account is fixed.
    fx.cmd(&["send", "--to", "8800002", "--text", "Refused zq8851"]).run().await.expect_code(0);
    assert_eq!(delivered(&fx, "After the wait zq8851"), 1);
}

/// A batch reports each job and goes on past an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_unknown_jobs_and_goes_on() {
    let fault = WriteFault::new(WriteFaultKind::ServerErrorNotSent).peer("8800002").times(1);
    let mut cfg = world(8861, vec![fault]);
    cfg.conversations.push(conv("8800002", 2, CursorStyle::MaxId));
    cfg.conversations.push(conv("8800003", 2, CursorStyle::MaxId));
    let fx = Fixture::new_for(Provider::XApiV2, cfg, FAST).await;
    let jobs = fx.dir.path().join("jobs.jsonl");
    let lines: Vec<String> = ["8800001", "8800002", "8800003"]
        .iter()
        .map(|to| serde_json::json!({"to": to, "text": format!("Batch note for {to}")}).to_string())
        .collect();
    std::fs::write(&jobs, lines.join("\n")).unwrap();
    let out = fx.cmd(&["send", "--jobs", jobs.to_str().unwrap()]).run().await;
    out.expect_code(1);
    assert!(out.stdout.contains("job 2: failed: outcome_unknown"), "{out}");
    assert!(out.stdout.contains("job 3: sent"), "the batch went on\n{out}");
    assert!(out.stdout.contains("1 failed (1 outcome unknown)"), "{out}");
    assert_eq!(send_records(&fx).len(), 2);
    // The same file again sends nothing: two recorded, one unknown and not found.
    let before = routed(&fx.sim.sim.stats(), send_route(Provider::XApiV2));
    let out = fx.cmd(&["send", "--jobs", jobs.to_str().unwrap()]).run().await;
    out.expect_code(1);
    assert_eq!(routed(&fx.sim.sim.stats(), send_route(Provider::XApiV2)), before);
}

/// X API v2 group sends follow the same rule, with their own ledger entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_v2_group_sends_are_sent_at_most_once() {
    let faults = vec![
        WriteFault::new(WriteFaultKind::NoData).action(SimWriteAction::CreateGroup).times(1),
        WriteFault::new(WriteFaultKind::Drop).action(SimWriteAction::Send).times(1),
    ];
    let fx = Fixture::new_for(Provider::XApiV2, world(8871, faults), FAST).await;
    let create =
        ["group-send", "--participant", "944480690", "--participant", "906948460078698496", "--text", "hi all"];
    let out = fx.cmd(&create).run().await;
    out.expect_code(1);
    assert!(out.stderr.contains("outcome unknown") && out.stderr.contains("group"), "{out}");
    let stats = fx.sim.sim.stats();
    assert_eq!(routed(&stats, "POST /2/dm_conversations"), 1, "one group made");
    fx.cmd(&create).run().await.expect_code(1);
    assert_eq!(routed(&fx.sim.sim.stats(), "POST /2/dm_conversations"), 1, "not made again on its own");

    // Into an existing conversation: the lost answer is read back from it.
    let group = fx.sim.sim.writes().into_iter().find(|w| w.action == SimWriteAction::CreateGroup).unwrap();
    let group_id = group.result_id.unwrap();
    let into = ["group-send", "--conversation", &format!("conv:{group_id}"), "--text", "second"];
    let out = fx.cmd(&into).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("confirmed by history"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), "POST /2/dm_conversations/{dm_conversation_id}/messages"), 1);
    let out = fx.cmd(&into).run().await;
    out.expect_code(0);
    assert!(out.stdout.starts_with("already sent"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), "POST /2/dm_conversations/{dm_conversation_id}/messages"), 1);
    let records = send_records(&fx);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(str_field(&records[0], "send_status"), Some("confirmed_by_history"));
    assert_eq!(str_field(&records[0], "conversation_id"), Some(group_id.as_str()));
}

/// A delete whose answer was lost is looked up: X no longer shows the event, so it was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_v2_a_lost_delete_answer_is_looked_up() {
    let faults = vec![WriteFault::new(WriteFaultKind::Drop).action(SimWriteAction::Delete).times(1)];
    let mut cfg = world(8881, faults);
    // The newest spec's field list: the lookup must fall back like history does.
    cfg.x_strict_fields = true;
    let fx = Fixture::new_for(Provider::XApiV2, cfg, FAST).await;
    let id = fx.sim.sim.messages(PEER)[0].id.clone();
    let out = fx.cmd(&["delete", "--message-id", &id]).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("recorded as dm_delete"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), "DELETE /2/dm_events/{event_id}"), 1);
    assert_eq!(fx.sim.sim.deleted_events(), vec![id.clone()]);
    assert_eq!(records_of_kind(&fx.records(), "dm_delete").len(), 1);
}

/// The process dies between the provider's answer and the record, on a provider without idempotency keys:
/// the rerun reads the conversation back instead of sending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_v2_a_crash_after_the_answer_is_confirmed_by_history_not_resent() {
    let fx = Fixture::new_for(Provider::XApiV2, world(8891, Vec::new()), FAST).await;
    let args = ["send", "--to", PEER, "--text", "Survives a crash zq8891"];
    let out = fx.cmd(&args).env("DM_HANDOFF_TEST_CRASH_AFTER_SEND", "1").run().await;
    assert!(killed_by(&out.status, libc::SIGABRT), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), send_route(Provider::XApiV2)), 1);
    let out = fx.cmd(&args).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("confirmed by history"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), send_route(Provider::XApiV2)), 1, "not sent again");
    assert_eq!(delivered(&fx, "Survives a crash zq8891"), 1);
}
