//! The control socket's framing: how a command reaches a running daemon.
//!
//! The daemon listens on `<state_dir>/control.sock` (mode 0600: only the owner may drive it). A client
//! sends one JSON line (a [`crate::commands::Request`]) and reads one JSON line (a
//! [`crate::commands::Report`]). What the lines mean is the command layer's; this module only frames,
//! bounds and carries them.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// File name of the socket inside the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line accepted; requests are small, this only bounds a misbehaving client.
const MAX_LINE: u64 = 1024 * 1024;

/// Most control connections served at once; one more is closed at accept. A real client sends its line at
/// once and a long `backfill` holds one connection, so 64 is far above use, and far below the 1,024-file
/// soft limit a flood of idle connections would otherwise exhaust (the writer then cannot reopen a file).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send its request line. A real client writes it right after
/// connecting; an idle connection past this is answered with an error and closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Test builds only: shortens every listener's idle bound (this one, the metrics endpoint's header read,
/// the OAuth callback's) to this many milliseconds, so the integration tests can watch idle connections
/// being closed without waiting the production bound.
#[cfg(debug_assertions)]
pub const LISTENER_TIMEOUT_ENV: &str = "DM_HANDOFF_TEST_LISTENER_TIMEOUT_MS";

/// `default`, or in a test build the override of [`LISTENER_TIMEOUT_ENV`].
pub(super) fn listener_timeout(default: Duration) -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(LISTENER_TIMEOUT_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_millis(ms);
    }
    default
}

/// The socket path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Binds the socket, replacing a stale file. Only call while holding the state lock: then no other
/// daemon can be listening on it.
pub fn bind(state_dir: &Path) -> io::Result<UnixListener> {
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Sends a request to a running daemon. `Ok(None)` when no daemon listens (no socket, or a stale one).
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(state_dir: &Path, req: &Req) -> io::Result<Option<Resp>> {
    let mut stream = match UnixStream::connect(socket_path(state_dir)).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await?;
    let mut reader = BufReader::new(stream).take(64 * MAX_LINE);
    let mut answer = String::new();
    reader.read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the control connection without answering",
        ));
    }
    serde_json::from_str(&answer).map(Some).map_err(io::Error::other)
}

/// Reads one request from an accepted connection, within the request timeout and until `stop` fires (a
/// daemon that stops does not wait for a client that never writes).
pub async fn read_request<Req: DeserializeOwned>(stream: &mut UnixStream, stop: &CancellationToken) -> io::Result<Req> {
    let (read, _) = stream.split();
    let mut reader = BufReader::new(read).take(MAX_LINE);
    let mut line = String::new();
    tokio::select! {
        read = tokio::time::timeout(listener_timeout(REQUEST_TIMEOUT), reader.read_line(&mut line)) => match read {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no control request within the timeout")),
        },
        _ = stop.cancelled() => return Err(io::Error::new(io::ErrorKind::Interrupted, "the daemon is stopping")),
    };
    serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad control request: {e}")))
}

/// Writes the answer to an accepted connection.
pub async fn write_response<Resp: Serialize>(stream: &mut UnixStream, resp: &Resp) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ask {
        what: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Answer {
        code: i32,
        text: String,
    }

    #[tokio::test]
    async fn a_request_round_trips_and_the_socket_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let req: Ask = read_request(&mut s, &CancellationToken::new()).await.unwrap();
            assert_eq!(req, Ask { what: "sync".into() });
            write_response(&mut s, &Answer { code: 1, text: "out\n".into() }).await.unwrap();
        });
        let resp: Answer = call(dir.path(), &Ask { what: "sync".into() }).await.unwrap().unwrap();
        assert_eq!(resp, Answer { code: 1, text: "out\n".into() });
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_and_a_stop_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let _silent = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let e = read_request::<Ask>(&mut s, &CancellationToken::new()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let stop = CancellationToken::new();
        stop.cancel();
        let e = read_request::<Ask>(&mut s, &stop).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    }

    #[tokio::test]
    async fn no_daemon_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let ask = Ask { what: "status".into() };
        assert_eq!(call::<_, Answer>(dir.path(), &ask).await.unwrap(), None);
        // A stale socket file (nobody listening) is also "no daemon".
        drop(bind(dir.path()).unwrap());
        assert_eq!(call::<_, Answer>(dir.path(), &ask).await.unwrap(), None);
    }
}
