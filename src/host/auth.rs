//! `dm-handoff auth` (SPEC 8.1): the authorization-code flow with PKCE against X, or the import of a refresh
//! token, ending in a token pair stored in the pipeline's token file.
//!
//! The flow: listen on the redirect URI's loopback host and port first (so the browser cannot come back
//! before we are there), print the authorize URL alone on one line of stdout, answer each connection with
//! a small page until one brings back our `state` with a code (or an error from X, or `--timeout`), exchange
//! the code with the PKCE verifier, store the pair, exit 0.
//!
//! Beside a running daemon: `auth` never opens the state database, so it needs no state-directory lock and
//! is not forwarded to the daemon (a browser flow cannot run inside it). It writes only the token file,
//! atomically and under that file's own lock, and the daemon's token source reads the file again before
//! every renewal and, after a refused one, on every request: the daemon takes the new pair without a
//! restart.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::commands::auth::{self as words, AuthRequest};
use crate::commands::Report;
use crate::config::{loopback_callback, Config, ConfigError, OAuthConfig, Pipeline};
use crate::exit::Exit;
use crate::provider::oauth::{authorize_url, random_text, Pkce, TokenClient};
use crate::provider::{with_retry, ErrorClass, ProviderError};
use crate::state::tokens::{TokenFile, Tokens};

/// The most a callback request's head may be.
const MAX_REQUEST: usize = 16 * 1024;
/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections read at once; one more is closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// Runs `auth` and returns how the process exits.
pub(super) async fn run(cfg: &Config, req: AuthRequest) -> anyhow::Result<Exit> {
    let (p, o) = words::oauth_pipeline(cfg, req.pipeline.as_deref())?;
    let client = TokenClient::new(p, o)?;
    let got = match &req.refresh_token_file {
        Some(path) => import(p, &client, path).await?,
        None => browser(p, o, &client, req.timeout).await?,
    };
    let tokens = match got {
        Ok(t) => t,
        Err(report) => return Ok(report.print()),
    };
    let file = TokenFile::new(o.token_file.clone());
    tokio::task::spawn_blocking(move || {
        let lock = file.lock()?;
        file.save(&tokens, &lock)
    })
    .await
    .context("storing the tokens")?
    .with_context(|| format!("pipeline `{}`: storing the tokens", p.name))?;
    tracing::info!(pipeline = %p.name, file = %o.token_file.display(), "OAuth tokens stored");
    let status = words::token_status(o);
    let json = serde_json::json!({ "ok": true, "pipeline": p.name, "tokens": status });
    Ok(Report { stderr: words::stored_line(p, &status), json: Some(json), ..Report::default() }.print())
}

/// A refused exchange as the one line `auth` ends with: exit 4 when X refused the grant or the client,
/// 1 when it could not be asked.
fn refused(p: &Pipeline, what: &str, e: &ProviderError) -> Report {
    let exit = if e.class == ErrorClass::Fatal { Exit::Auth } else { Exit::Failed };
    Report::error(exit, format!("pipeline `{}`: {what}: {}", p.name, e.cause()))
}

/// `--refresh-token-file PATH|-`: reads the token and spends it once right away.
async fn import(p: &Pipeline, client: &TokenClient, path: &Path) -> anyhow::Result<Result<Tokens, Report>> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| ConfigError(format!("cannot read the refresh token from standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read --refresh-token-file {}: {e}", path.display())))?
    };
    let token = text.trim();
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "--refresh-token-file {}: expected one refresh token (printable, no spaces)",
            path.display()
        ))
        .into());
    }
    let cancel = CancellationToken::new();
    super::stop_on_signal(cancel.clone(), "stopping");
    match with_retry(&p.retry, &cancel, || client.refresh(token)).await {
        Ok(t) => Ok(Ok(t)),
        Err(e) => Ok(Err(refused(p, "X did not accept the refresh token", &e))),
    }
}

/// What one connection to the listener brought.
enum Callback {
    /// Not the callback (another path, a stray request, a wrong `state`): answered, keep waiting.
    Ignored,
    /// Our callback with a code.
    Code(String, TcpStream),
    /// Our callback, and X says the user did not authorize (its `error` code, sanitized).
    Denied(String, TcpStream),
}

/// The browser flow: listen, print the URL, wait for the callback, exchange the code.
async fn browser(
    p: &Pipeline,
    o: &OAuthConfig,
    client: &TokenClient,
    timeout: Duration,
) -> anyhow::Result<Result<Tokens, Report>> {
    let redirect = loopback_callback(&o.redirect_uri)
        .map_err(|why| ConfigError(format!("pipeline `{}`: oauth_redirect_uri {why}", p.name)))?;
    let host = redirect.host_str().unwrap_or("127.0.0.1");
    let bind = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1".to_string()
    } else {
        host.trim_start_matches('[').trim_end_matches(']').to_string()
    };
    let port = redirect.port_or_known_default().unwrap_or(80);
    let listener = TcpListener::bind((bind.as_str(), port)).await.with_context(|| {
        format!(
            "cannot listen on {host}:{port} for X's redirect; stop what uses that port, or register another loopback \
             port for the app and set oauth_redirect_uri to it"
        )
    })?;
    let pkce = Pkce::new();
    let state = random_text(32);
    let url = authorize_url(o, &state, &pkce.challenge)?;
    eprint!("{}", words::instructions(p, o, timeout));
    println!("{url}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let deadline = tokio::time::Instant::now() + timeout;
    // Every connection is read in its own task, so a silent or slow one (a port scanner, a browser's
    // preconnect) never delays the real redirect behind it; the cap bounds what a flood can hold open.
    let mut reading = tokio::task::JoinSet::new();
    let (path, state) = (std::sync::Arc::<str>::from(redirect.path()), std::sync::Arc::<str>::from(state.as_str()));
    let read_timeout = super::control::listener_timeout(READ_TIMEOUT);
    loop {
        let callback = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Err(Report::error(
                    Exit::Failed,
                    format!(
                        "pipeline `{}`: no redirect from X within {}; run `dm-handoff auth --pipeline {}` again and open the URL it prints",
                        p.name,
                        humantime::format_duration(timeout),
                        p.name
                    ),
                )))
            }
            Some(done) = reading.join_next() => match done {
                Ok(callback) => callback,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a connection on the callback listener failed");
                    continue;
                }
            },
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) if reading.len() < MAX_CONNECTIONS => {
                        let (path, state) = (path.clone(), state.clone());
                        reading.spawn(async move { read_callback(stream, &path, &state, read_timeout).await });
                    }
                    // Over the cap: closed at once (the real browser retries a refused connection).
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection on the callback listener failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
                continue;
            }
        };
        match callback {
            Callback::Ignored => continue,
            Callback::Denied(code, mut stream) => {
                let page = words::callback_page(
                    false,
                    "X says the app was not authorized. Run dm-handoff auth again to retry.",
                );
                respond(&mut stream, 200, &page).await;
                return Ok(Err(Report::error(
                    Exit::Auth,
                    format!("pipeline `{}`: X did not authorize the app ({code})", p.name),
                )));
            }
            Callback::Code(code, mut stream) => {
                let cancel = CancellationToken::new();
                let exchanged =
                    with_retry(&p.retry, &cancel, || client.exchange_code(&code, &pkce.verifier, &o.redirect_uri))
                        .await;
                let (ok, sentence) = match &exchanged {
                    Ok(_) => (true, format!("Pipeline {} can now read and send DMs; you can close this tab.", p.name)),
                    Err(_) => (false, "X did not exchange the code for tokens; see the terminal.".to_string()),
                };
                respond(&mut stream, if ok { 200 } else { 502 }, &words::callback_page(ok, &sentence)).await;
                return Ok(exchanged.map_err(|e| refused(p, "the code exchange failed", &e)));
            }
        }
    }
}

/// Reads one request head and decides what it is. Never logs the query (it holds the code).
async fn read_callback(mut stream: TcpStream, path: &str, state: &str, read_timeout: Duration) -> Callback {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(read_timeout, async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end);
            }
            if buf.len() > MAX_REQUEST {
                return None;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let Ok(Some(end)) = head else {
        respond(&mut stream, 400, &words::callback_page(false, "The request could not be read.")).await;
        return Callback::Ignored;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let Ok(url) = reqwest::Url::parse(&format!("http://callback{target}")) else {
        respond(&mut stream, 400, &words::callback_page(false, "The request could not be read.")).await;
        return Callback::Ignored;
    };
    if method != "GET" || url.path() != path {
        respond(&mut stream, 404, &words::callback_page(false, "Nothing here; this is dm-handoff's callback.")).await;
        return Callback::Ignored;
    }
    let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    if param("state").as_deref() != Some(state) {
        tracing::warn!("a callback with another `state` than this run's was refused; still waiting");
        let page = words::callback_page(
            false,
            "This link is not from the dm-handoff auth that is waiting. Open the URL it printed.",
        );
        respond(&mut stream, 400, &page).await;
        return Callback::Ignored;
    }
    if let Some(error) = param("error") {
        let code: String =
            error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect::<String>();
        return Callback::Denied(if code.is_empty() { "error".into() } else { code }, stream);
    }
    match param("code").filter(|c| !c.is_empty()) {
        Some(code) => Callback::Code(code, stream),
        None => {
            respond(&mut stream, 400, &words::callback_page(false, "The redirect carries no code.")).await;
            Callback::Ignored
        }
    }
}

/// Answers with a small HTML page and closes.
async fn respond(stream: &mut TcpStream, status: u16, page: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Bad Gateway",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        page.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(page.as_bytes()).await;
    let _ = stream.shutdown().await;
}
