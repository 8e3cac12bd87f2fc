//! The keys of SPEC 8.1 and 8.2 that only some providers take: OAuth 2.0 user tokens that renew themselves
//! (`oauth_*`, X API v2) and whole-inbox sync (`inbox`, `inbox_tabs`). Validated here, in one step from
//! the raw file, so `validate` only calls in.

use std::path::{Path, PathBuf};

use super::{err, ConfigError, KeySource, ProviderKind};

/// `oauth_redirect_uri` when not set: a loopback callback `dm-handoff auth` listens on.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8976/callback";
/// `oauth_authorize_url` when not set.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://x.com/i/oauth2/authorize";
/// `oauth_token_url` when not set.
pub const DEFAULT_TOKEN_URL: &str = "https://api.x.com/2/oauth2/token";
/// `oauth_scopes` when not set: reading and sending DMs, uploading media, and `offline.access` for the
/// refresh token that lets the pipeline renew its own access token.
pub const DEFAULT_SCOPES: &str = "dm.read dm.write tweet.read users.read offline.access media.write";
/// The GetXAPI inbox tabs `inbox_tabs` may name.
pub const INBOX_TABS: [&str; 3] = ["all", "requests", "hidden"];

/// How an `x-api-v2` pipeline with `oauth_client_id` gets its user tokens (SPEC 8.1). The tokens themselves
/// are never here: they live in [`OAuthConfig::token_file`], written by `dm-handoff auth` and by each
/// refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthConfig {
    /// The app's OAuth 2.0 client ID (not a secret).
    pub client_id: String,
    /// A confidential client's secret (sent with HTTP Basic); None for a public client.
    pub client_secret: Option<KeySource>,
    /// The loopback callback registered for the app, which `auth` serves.
    pub redirect_uri: String,
    pub authorize_url: String,
    pub token_url: String,
    /// Space-separated, as the authorize request sends them.
    pub scopes: String,
    /// `<state_dir>/tokens/<pipeline>.json`: the pipeline's token file (owner-only).
    pub token_file: PathBuf,
}

/// The raw `oauth_*` keys of one pipeline.
pub(super) struct RawOAuth {
    pub(super) client_id: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_secret_file: Option<PathBuf>,
    pub(super) redirect_uri: Option<String>,
    pub(super) authorize_url: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) scopes: Option<String>,
}

impl RawOAuth {
    fn any_set(&self) -> bool {
        self.client_secret_env.is_some()
            || self.client_secret_file.is_some()
            || self.redirect_uri.is_some()
            || self.authorize_url.is_some()
            || self.token_url.is_some()
            || self.scopes.is_some()
    }
}

/// Validates a pipeline's `oauth_*` keys: None when `oauth_client_id` is not set (and no other `oauth_*`
/// key either). `at` starts every message; `key_file` resolves a secret file's path like `api_key_file`'s.
pub(super) fn validate(
    raw: RawOAuth,
    provider: ProviderKind,
    name: &str,
    state_dir: &Path,
    at: &str,
    key_file: impl Fn(PathBuf) -> PathBuf,
) -> Result<Option<OAuthConfig>, ConfigError> {
    let Some(client_id) = raw.client_id.clone() else {
        if raw.any_set() {
            return err(format!("{at}: the oauth_* keys need `oauth_client_id` (the app's OAuth 2.0 client ID)"));
        }
        return Ok(None);
    };
    if provider != ProviderKind::XApiV2 {
        return err(format!(
            "{at}: oauth_client_id is for provider x-api-v2 (OAuth 2.0 user tokens), not {provider}; remove it"
        ));
    }
    let client_id = client_id.trim().to_string();
    if client_id.is_empty() || client_id.len() > 128 || !client_id.bytes().all(|b| b.is_ascii_graphic()) {
        return err(format!("{at}: oauth_client_id must be the app's client ID (printable, no spaces)"));
    }
    let client_secret = match (raw.client_secret_env, raw.client_secret_file) {
        (Some(_), Some(_)) => {
            return err(format!("{at}: set oauth_client_secret_env or oauth_client_secret_file, not both"))
        }
        (Some(v), None) if super::validate::is_env_name(&v) => Some(KeySource::Env(v)),
        (Some(_), None) => {
            // Never echoed: it may be the secret itself, pasted where the variable's name belongs.
            return err(format!(
                "{at}: oauth_client_secret_env must name an environment variable (like X_CLIENT_SECRET) that holds the secret"
            ));
        }
        (None, Some(p)) => Some(KeySource::File(key_file(p))),
        (None, None) => None,
    };
    let redirect_uri = raw.redirect_uri.unwrap_or_else(|| DEFAULT_REDIRECT_URI.to_string());
    if let Err(why) = loopback_callback(&redirect_uri) {
        return err(format!("{at}: oauth_redirect_uri `{redirect_uri}` {why}"));
    }
    let url = |key: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
        let v = v.unwrap_or_else(|| default.to_string());
        match reqwest::Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none() => Ok(v),
            _ => err(format!("{at}: {key} `{v}` is not an http(s) URL without a query; the default is {default}")),
        }
    };
    let authorize_url = url("oauth_authorize_url", raw.authorize_url, DEFAULT_AUTHORIZE_URL)?;
    let token_url = url("oauth_token_url", raw.token_url, DEFAULT_TOKEN_URL)?;
    let scopes = raw.scopes.unwrap_or_else(|| DEFAULT_SCOPES.to_string());
    let scopes: Vec<&str> = scopes.split_whitespace().collect();
    if scopes.is_empty() || scopes.iter().any(|s| !s.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'))
    {
        return err(format!("{at}: oauth_scopes must be space-separated scope names like \"{DEFAULT_SCOPES}\""));
    }
    if !scopes.contains(&"offline.access") {
        tracing::warn!(pipeline = %name, "oauth_scopes has no offline.access: X issues no refresh token, so the pipeline stops when its access token expires (two hours)");
    }
    Ok(Some(OAuthConfig {
        client_id,
        client_secret,
        redirect_uri,
        authorize_url,
        token_url,
        scopes: scopes.join(" "),
        token_file: token_file(state_dir, name),
    }))
}

/// The token file of a pipeline: `<state_dir>/tokens/<pipeline>.json`.
pub fn token_file(state_dir: &Path, pipeline: &str) -> PathBuf {
    state_dir.join("tokens").join(format!("{pipeline}.json"))
}

/// Whether a redirect URI is one `auth` can serve: plain `http` on a loopback address (the code comes back
/// over it, so it must not leave the machine), no fragment. Err says why not.
pub fn loopback_callback(uri: &str) -> Result<reqwest::Url, &'static str> {
    let u = reqwest::Url::parse(uri).map_err(|_| "is not a URL; the default is http://127.0.0.1:8976/callback")?;
    if u.scheme() != "http" {
        return Err("must be an http:// loopback URL (like http://127.0.0.1:8976/callback)");
    }
    let host = u.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err("must be on a loopback address (127.0.0.1, [::1] or localhost): dm-handoff auth listens there");
    }
    if u.fragment().is_some() || !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry a fragment or credentials");
    }
    Ok(u)
}

/// Validates `inbox` and `inbox_tabs` (SPEC 8.2): only X API v2 and GetXAPI have an inbox route, and only
/// GetXAPI has tabs. Returns the tabs to walk (`["all"]` by default).
pub(super) fn inbox(
    provider: ProviderKind,
    inbox: bool,
    tabs: Option<Vec<String>>,
    at: &str,
) -> Result<Vec<String>, ConfigError> {
    if inbox && provider == ProviderKind::Xquik {
        return err(format!(
            "{at}: inbox = true is not possible with provider xquik: Xquik has no inbox route; list the conversations instead (or use x-api-v2 or getxapi)"
        ));
    }
    let Some(tabs) = tabs else { return Ok(vec!["all".to_string()]) };
    if provider != ProviderKind::GetXApi {
        return err(format!("{at}: inbox_tabs is for provider getxapi only; remove it"));
    }
    let mut out: Vec<String> = Vec::new();
    for t in tabs {
        if !INBOX_TABS.contains(&t.as_str()) {
            return err(format!("{at}: inbox_tabs: `{t}` is not a tab; use \"all\", \"requests\" or \"hidden\""));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return err(format!("{at}: inbox_tabs is empty; leave it out for [\"all\"]"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{from_str, ConfigError, KeySource};
    use super::*;

    const X: &str =
        "state_dir = \"st\"\n[[pipelines]]\nname = \"x\"\nprovider = \"x-api-v2\"\naccount = \"987654321\"\n";

    fn check(text: &str) -> Result<crate::config::Config, ConfigError> {
        from_str(text, Path::new("/etc/dm/pipelines.toml"), Path::new("/etc/dm"))
    }

    fn err_of(text: &str) -> String {
        check(text).expect_err("refused").0
    }

    #[test]
    fn oauth_defaults_and_no_api_key_needed() {
        let cfg = check(&format!("{X}oauth_client_id = \"abc123\"\ninbox = true\n")).unwrap();
        let p = &cfg.pipelines[0];
        assert_eq!(p.api_key, None);
        assert!(p.inbox);
        let o = p.oauth.as_ref().unwrap();
        assert_eq!(o.redirect_uri, DEFAULT_REDIRECT_URI);
        assert_eq!(o.authorize_url, DEFAULT_AUTHORIZE_URL);
        assert_eq!(o.token_url, DEFAULT_TOKEN_URL);
        assert_eq!(o.scopes, DEFAULT_SCOPES);
        assert_eq!(o.client_secret, None);
        assert_eq!(o.token_file, Path::new("/etc/dm/st/tokens/x.json"));
        let secret = check(&format!("{X}oauth_client_id = \"abc\"\noauth_client_secret_env = \"X_SECRET\"\n")).unwrap();
        assert_eq!(secret.pipelines[0].oauth.as_ref().unwrap().client_secret, Some(KeySource::Env("X_SECRET".into())));
    }

    #[test]
    fn oauth_mistakes_are_explained() {
        let both = err_of(&format!("{X}oauth_client_id = \"a\"\napi_key_env = \"X_TOKEN\"\n"));
        assert!(both.contains("manages its own tokens"), "{both}");
        let missing = err_of(X);
        assert!(missing.contains("api_key_env") && missing.contains("oauth_client_id"), "{missing}");
        let orphan = err_of(&format!("{X}api_key_env = \"T\"\noauth_scopes = \"dm.read\"\n"));
        assert!(orphan.contains("need `oauth_client_id`"), "{orphan}");
        let xquik =
            err_of(&(X.replace("x-api-v2", "xquik").replace("987654321", "acme") + "oauth_client_id = \"a\"\n"));
        assert!(xquik.contains("is for provider x-api-v2"), "{xquik}");
        let remote = err_of(&format!("{X}oauth_client_id = \"a\"\noauth_redirect_uri = \"https://example.com/cb\"\n"));
        assert!(remote.contains("loopback"), "{remote}");
        let leaked =
            err_of(&format!("{X}oauth_client_id = \"a\"\noauth_client_secret_env = \"s3cr3t-value-pasted\"\n"));
        assert!(!leaked.contains("s3cr3t"), "a pasted secret is not echoed: {leaked}");
        for ok in ["http://localhost:9000/cb", "http://[::1]:8976/callback", "http://127.0.0.1/callback"] {
            assert!(loopback_callback(ok).is_ok(), "{ok}");
        }
        assert!(loopback_callback("http://10.0.0.1:8976/cb").is_err());
    }

    #[test]
    fn inbox_is_refused_for_xquik_and_tabs_are_getxapi_only() {
        let x = X.replace("x-api-v2", "xquik").replace("987654321", "acme") + "api_key_env = \"K\"\ninbox = true\n";
        let e = err_of(&x);
        assert!(e.contains("inbox = true") && e.contains("Xquik has no inbox route"), "{e}");
        let tabs = err_of(&format!("{X}api_key_env = \"T\"\ninbox_tabs = [\"all\"]\n"));
        assert!(tabs.contains("getxapi only"), "{tabs}");
        let g = X.replace("x-api-v2", "getxapi") + "api_key_env = \"K\"\nauth_token_env = \"A\"\ninbox = true\n";
        assert_eq!(check(&g).unwrap().pipelines[0].inbox_tabs, ["all"]);
        let two = check(&format!("{g}inbox_tabs = [\"requests\", \"all\", \"requests\"]\n")).unwrap();
        assert_eq!(two.pipelines[0].inbox_tabs, ["requests", "all"]);
        assert!(err_of(&format!("{g}inbox_tabs = [\"spam\"]\n")).contains("not a tab"));
    }
}
