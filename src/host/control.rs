//! The control socket's framing: how a command reaches a running daemon.
//!
//! The daemon listens on `<state_dir>/control.sock` (mode 0600: only the owner may drive it). A client
//! sends one JSON line (a [`crate::commands::Request`]) and reads one JSON line (a
//! [`crate::commands::Report`]). What the lines mean is the command layer's; this module only frames,
//! bounds and carries them.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket inside the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line accepted; requests are small, this only bounds a misbehaving client.
const MAX_LINE: u64 = 1024 * 1024;

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

/// Reads one request from an accepted connection.
pub async fn read_request<Req: DeserializeOwned>(stream: &mut UnixStream) -> io::Result<Req> {
    let (read, _) = stream.split();
    let mut reader = BufReader::new(read).take(MAX_LINE);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
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
            let req: Ask = read_request(&mut s).await.unwrap();
            assert_eq!(req, Ask { what: "sync".into() });
            write_response(&mut s, &Answer { code: 1, text: "out\n".into() }).await.unwrap();
        });
        let resp: Answer = call(dir.path(), &Ask { what: "sync".into() }).await.unwrap().unwrap();
        assert_eq!(resp, Answer { code: 1, text: "out\n".into() });
        server.await.unwrap();
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
