//! Unit tests of config parsing and validation.

use super::*;

const MINIMAL: &str = r#"
state_dir = "state"

[[pipelines]]
name = "support"
provider = "xquik"
base_url = "http://127.0.0.1:8787/api/v1"
api_key_env = "XQUIK_API_KEY"
account = "acme_support"
conversations = ["44196397", "1234567890"]
schedule = "*/30 * * * * *"
output_dir = "out/support"
rotate_max_bytes = 67108864
"#;

fn check(text: &str) -> Result<Config, ConfigError> {
    from_str(text, Path::new("/etc/dm/pipelines.toml"), Path::new("/etc/dm"))
}

fn check_err(text: &str) -> String {
    check(text).expect_err("config should be rejected").0
}

/// The annotated pipelines.toml documents keys as `# key = default`: with every one of them switched on
/// (but one key source per pipeline) it must still be a valid config, so no documented key is stale.
#[test]
fn every_key_the_annotated_file_documents_is_a_real_key() {
    let annotated = include_str!("../../pipelines.toml");
    let mut text = String::new();
    let mut documented = 0;
    for line in annotated.lines() {
        let body = line.strip_prefix("# ").unwrap_or(line);
        let key =
            body.split_once(" = ").map(|(k, _)| k).filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        match key {
            // Alternatives to api_key_env: a pipeline takes one.
            Some("api_key_file" | "auth_token_env" | "oauth_client_secret_file") => text.push_str(line),
            Some(k) if !k.is_empty() => {
                documented += 1;
                text.push_str(body);
            }
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    assert!(documented >= 25, "only {documented} keys found; did the annotation format change?");
    let cfg = check(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.seen_window, 16);
    assert_eq!(cfg.state_cache_bytes, 16 * 1024 * 1024);
    assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn metrics_listen_is_off_by_default_and_must_be_an_address_and_port() {
    assert_eq!(check(MINIMAL).unwrap().metrics_listen, None);
    let on = check(&format!("metrics_listen = \"[::1]:9464\"\n{MINIMAL}")).unwrap();
    assert_eq!(on.metrics_listen, Some("[::1]:9464".parse().unwrap()));
    for bad in ["localhost:9464", "127.0.0.1", ":9464", "127.0.0.1:99999"] {
        let e = check_err(&format!("metrics_listen = \"{bad}\"\n{MINIMAL}"));
        assert!(e.contains("metrics_listen") && e.contains("127.0.0.1:9464"), "{bad}: {e}");
    }
}

#[test]
fn minimal_spec_form_is_accepted_with_paths_from_the_config_folder() {
    let cfg = check(MINIMAL).unwrap();
    assert_eq!(cfg.state_dir, PathBuf::from("/etc/dm/state"));
    let p = &cfg.pipelines[0];
    assert_eq!(p.output_dir, PathBuf::from("/etc/dm/out/support"));
    assert_eq!(p.api_key, Some(KeySource::Env("XQUIK_API_KEY".into())));
    assert_eq!(
        p.conversations,
        vec![ConversationRef::Peer("44196397".into()), ConversationRef::Peer("1234567890".into())]
    );
    assert_eq!(p.base_url, "http://127.0.0.1:8787/api/v1");
    assert_eq!(p.file_name, "xquik-dm-handoff.jsonl");
    assert!(p.backfill);
    assert_eq!(p.rotate_max_age, Some(Duration::from_secs(3600)));
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let e = check_err(&MINIMAL.replace("rotate_max_bytes", "rotate_max_byte"));
    assert!(e.contains("rotate_max_byte") && e.contains("line 12"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn missing_required_keys_say_which() {
    assert!(check_err(&MINIMAL.replace("api_key_env = \"XQUIK_API_KEY\"\n", "")).contains("api_key_env"));
    assert!(check_err(&MINIMAL.replace("account = \"acme_support\"\n", "")).contains("`account`"));
    assert!(check_err(&MINIMAL.replace("provider = \"xquik\"\n", "")).contains("`provider`"));
    assert!(check_err("state_dir = \"s\"\n").contains("no [[pipelines]]"));
}

#[test]
fn bad_values_are_explained() {
    assert!(check_err(&MINIMAL.replace("\"xquik\"", "\"myspace\"")).contains("line"));
    assert!(check_err(&MINIMAL.replace("\"*/30 * * * * *\"", "\"*/5 * * * *\"")).contains("6 fields"));
    assert!(check_err(&MINIMAL.replace("\"44196397\"", "\"not-an-id\"")).contains("not-an-id"));
    assert!(check_err(&MINIMAL.replace("\"1234567890\"", "\"44196397\"")).contains("twice"));
    assert!(check_err(&MINIMAL.replace("http://127.0.0.1:8787/api/v1", "ftp://x")).contains("base_url"));
    assert!(check_err(&MINIMAL.replace("\"44196397\"", "\"conv:1-2\"")).contains("no conversation IDs"));
}

#[test]
fn read_rate_limit_is_documented_off_or_a_pair() {
    assert_eq!(check(MINIMAL).unwrap().pipelines[0].read_rate_limit, ReadRateLimit::Documented);
    let rate = |v: &str| check(&format!("{MINIMAL}read_rate_limit = {v}\n")).map(|c| c.pipelines[0].read_rate_limit);
    assert_eq!(rate("\"off\"").unwrap(), ReadRateLimit::Off);
    assert_eq!(rate("\"documented\"").unwrap(), ReadRateLimit::Documented);
    assert_eq!(
        rate("[600, 1.5]").unwrap(),
        ReadRateLimit::Custom { requests: 600, window: Duration::from_millis(1500) }
    );
    for bad in ["[0, 1]", "[300]", "[1.5, 1]", "[300, 0]", "\"fast\"", "true"] {
        let e = rate(bad).expect_err(bad).0;
        assert!(e.contains("read_rate_limit") && e.contains("[requests, seconds]"), "{bad}: {e}");
    }
    let e = check_err(&format!("{MINIMAL}concurrency = true\n"));
    assert!(e.contains("concurrency must be"), "{e}");
}

#[test]
fn compress_takes_zstd_gzip_or_none() {
    use crate::sink::Compression;
    assert_eq!(check(MINIMAL).unwrap().pipelines[0].compress, Compression::None);
    for (value, want) in [("zstd", Compression::Zstd), ("gzip", Compression::Gzip), ("none", Compression::None)] {
        let cfg = check(&format!("{MINIMAL}compress = \"{value}\"\n")).unwrap();
        assert_eq!(cfg.pipelines[0].compress, want);
    }
    let e = check_err(&format!("{MINIMAL}compress = \"lz4\"\n"));
    assert!(e.contains("lz4") && e.contains("zstd") && e.contains("line 14"), "{e}");
}

#[test]
fn a_key_value_in_api_key_env_is_not_echoed() {
    let e = check_err(&MINIMAL.replace("\"XQUIK_API_KEY\"", "\"xq_0123456789abcdef\""));
    assert!(!e.contains("xq_0123456789abcdef"), "{e}");
}

#[test]
fn two_pipelines_may_not_share_an_output_dir_or_name() {
    let two = format!(
        "{MINIMAL}\n{}",
        &MINIMAL[MINIMAL.find("[[pipelines]]").unwrap()..].replace("\"support\"", "\"sales\"")
    );
    assert!(check_err(&two).contains("already used"));
    let same = format!(
        "{MINIMAL}\n{}",
        &MINIMAL[MINIMAL.find("[[pipelines]]").unwrap()..].replace("out/support", "out/sales")
    );
    assert!(check_err(&same).contains("used twice"));
}

#[test]
fn usernames_and_conversation_ids() {
    let t = MINIMAL
        .replace("provider = \"xquik\"", "provider = \"x-api-v2\"")
        .replace("acme_support", "987654321")
        .replace("\"1234567890\"", "\"@dana_ops\", \"conv:111-222\"");
    let cfg = check(&t).unwrap();
    assert_eq!(cfg.pipelines[0].conversations[1], ConversationRef::Username("dana_ops".into()));
    assert_eq!(cfg.pipelines[0].conversations[2], ConversationRef::ConversationId("111-222".into()));
}

#[test]
fn getxapi_needs_an_auth_token_source() {
    let t = MINIMAL.replace("\"xquik\"", "\"getxapi\"").replace("acme_support", "987654321");
    assert!(check_err(&t).contains("auth_token_env"));
    let ok = t
        .replace("api_key_env = \"XQUIK_API_KEY\"", "api_key_env = \"GETXAPI_KEY\"\nauth_token_env = \"GETXAPI_AUTH\"");
    assert!(check(&ok).is_ok());
}

#[test]
fn key_source_errors_name_the_variable_not_a_value() {
    let e = KeySource::Env("DM_HANDOFF_TEST_SURELY_UNSET".into()).read("p", "API key").unwrap_err().0;
    assert!(e.contains("DM_HANDOFF_TEST_SURELY_UNSET"));
}
