//! The control socket: how `status`, `sync`, `backfill` (and `send`) reach a running daemon.
//!
//! The daemon listens on `<state_dir>/control.sock` (mode 0600: only the owner may drive it). A client
//! sends one JSON [`Request`] line and reads one JSON [`Response`] line. The daemon does the work itself,
//! so sled stays single-owner and records land in the same files, and answers with the text the command
//! would have printed plus its exit code; the client prints it as is. That keeps the output of a command
//! identical whether or not a daemon is running.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket inside the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line accepted; requests are small, this only bounds a misbehaving client.
const MAX_LINE: u64 = 1024 * 1024;

/// What a client asks the daemon to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status {
        json: bool,
    },
    Sync {
        pipelines: Vec<String>,
        conversations: Vec<String>,
    },
    Backfill {
        pipelines: Vec<String>,
        conversations: Vec<String>,
        since: Option<String>,
        max_pages: Option<u64>,
    },
    /// An outbound command's arguments, as the CLI parsed them (see `outbound`).
    Send {
        args: serde_json::Value,
    },
    /// A checked `delete` or `group-send` (see `manage`).
    Manage {
        args: serde_json::Value,
    },
}

/// The daemon's answer: what to print and how to exit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
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
pub async fn call(state_dir: &Path, req: &Request) -> io::Result<Option<Response>> {
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
pub async fn read_request(stream: &mut UnixStream) -> io::Result<Request> {
    let (read, _) = stream.split();
    let mut reader = BufReader::new(read).take(MAX_LINE);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad control request: {e}")))
}

/// Writes the answer to an accepted connection.
pub async fn write_response(stream: &mut UnixStream, resp: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_round_trips_and_the_socket_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let req = read_request(&mut s).await.unwrap();
            assert_eq!(req, Request::Sync { pipelines: vec!["p".into()], conversations: vec![] });
            write_response(&mut s, &Response { exit: 1, stdout: "out\n".into(), stderr: "err\n".into() })
                .await
                .unwrap();
        });
        let resp = call(dir.path(), &Request::Sync { pipelines: vec!["p".into()], conversations: vec![] })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.exit, 1);
        assert_eq!(resp.stdout, "out\n");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn no_daemon_means_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(call(dir.path(), &Request::Status { json: true }).await.unwrap(), None);
        // A stale socket file (nobody listening) is also "no daemon".
        drop(bind(dir.path()).unwrap());
        assert_eq!(call(dir.path(), &Request::Status { json: true }).await.unwrap(), None);
    }
}
