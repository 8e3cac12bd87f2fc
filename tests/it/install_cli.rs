//! SPEC section 9.5 (issue 26): `--version`, `completions`, `man`, and `--json` on every command whose
//! output a program reads: each prints one JSON object on stdout with its key fields, errors included.

use dm_handoff_simulator::CursorStyle;
use serde_json::Value;

use crate::support::*;

/// The one JSON object a `--json` run printed on stdout.
fn json_of(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e})\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_completions_and_the_man_page_come_from_the_binary() {
    let out = Cmd::new(&["--version"]).run().await;
    out.expect_code(0);
    assert!(out.stdout.starts_with(&format!("dm-handoff {}", env!("CARGO_PKG_VERSION"))), "{out}");
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef dm-handoff"), ("fish", "complete -c dm-handoff")]
    {
        let out = Cmd::new(&["completions", shell]).run().await;
        out.expect_code(0);
        assert!(out.stdout.contains(marker), "{shell}: {marker:?}\n{out}");
        assert!(out.stdout.contains("upload-media"), "{shell} completes the commands\n{out}");
    }
    let out = Cmd::new(&["man"]).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains(".TH dm-handoff 1") && out.stdout.contains(".SH SYNOPSIS"), "roff\n{out}");
    // A command with nothing for a program to read refuses --json in one line.
    let out = Cmd::new(&["man", "--json"]).run().await;
    out.expect_code(2);
    assert!(out.stderr.starts_with("error: --json"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_command_prints_one_json_object() {
    let peer = "9260001";
    let fx = Fixture::new(sim_config(926, vec![conv(peer, 5, CursorStyle::MaxId)]), "").await;

    let v = json_of(fx.cmd(&["check", "--json"]).run().await.expect_code(0));
    assert_eq!(v["valid"], true);
    assert_eq!(v["pipelines"][0]["name"], PIPELINE);
    assert_eq!(v["pipelines"][0]["conversations"][0], peer);
    assert_eq!(v["pipelines"][0]["api_key_present"], true);
    let v = json_of(fx.cmd(&["check", "--json"]).key(None).run().await.expect_code(0));
    assert_eq!(v["pipelines"][0]["api_key_present"], false, "check says the key is missing, and passes");

    let v = json_of(fx.cmd(&["sync", "--json"]).run().await.expect_code(0));
    assert_eq!((v["ok"].clone(), v["exit"].clone()), (Value::Bool(true), Value::from(0)), "{v}");
    assert_eq!(v["pipelines"][0]["pipeline"], PIPELINE);
    assert_eq!(v["pipelines"][0]["written"], 5, "{v}");
    assert_eq!(v["pipelines"][0]["conversations"][0]["conversation"], peer);
    assert_eq!(fx.records().len(), 5, "what the JSON says is what was written");

    let v = json_of(fx.cmd(&["backfill", "--json"]).run().await.expect_code(0));
    assert_eq!(v["pipelines"][0]["written"], 0, "nothing older: {v}");

    let v = json_of(fx.cmd(&["verify", "--json"]).run().await.expect_code(0));
    assert_eq!(v["ok"], true);
    assert_eq!(v["pipelines"][0]["records"], 5, "{v}");
    assert_eq!(v["pipelines"][0]["problems"], 0);

    let v = json_of(fx.cmd(&["status", "--json"]).run().await.expect_code(0));
    assert!(v["pipelines"].is_array(), "{v}");
    let v = json_of(fx.cmd(&["schema", "--json"]).run().await.expect_code(0));
    assert!(v.is_object(), "{v}");

    let out = fx.cmd(&["send", "--json", "--to", peer, "--text", "hello zqinstall01"]).run().await;
    let v = json_of(out.expect_code(0));
    assert_eq!(v["status"], "sent", "{v}");
    assert_eq!(v["recipient"], peer);
    assert!(v["message_id"].is_string() && v["idempotency_key"].is_string(), "{v}");
    assert!(!out.all().contains("zqinstall01"), "no text in the output\n{out}");
    let v =
        json_of(fx.cmd(&["send", "--json", "--to", peer, "--text", "hello zqinstall01"]).run().await.expect_code(0));
    assert_eq!(v["status"], "already_sent", "{v}");

    let v = json_of(fx.cmd(&["lookup", "--json", peer]).run().await.expect_code(0));
    assert_eq!(v["id"], peer, "{v}");

    // A failure is an object too, with the exit code, beside the `error:` line on stderr.
    let out = fx.cmd(&["upload-media", "--json", "missing.png"]).run().await;
    let v = json_of(out.expect_code(2));
    assert_eq!((v["ok"].clone(), v["exit"].clone()), (Value::Bool(false), Value::from(2)), "{v}");
    assert!(out.stderr.starts_with("error: "), "{out}");
    let out = fx.cmd(&["sync", "--json", "--pipeline", "nope"]).run().await;
    let v = json_of(out.expect_code(2));
    assert!(v["error"].as_str().is_some_and(|e| e.contains("nope")), "{v}");
}
