//! A small hostile HTTP server on loopback, in place of a provider: every answer is scripted by the test
//! (redirects to another host, cursors that go round in a circle, endless empty pages, bodies of 100 MB,
//! items no adapter can read, `Retry-After: 999999`, answers held until the test lets them go). The
//! built-in simulator is the friendly provider; this one does what a broken or malicious one would.
//!
//! Raw HTTP/1.1 over tokio: one request per connection (`Connection: close`), which reqwest handles like
//! any server that does not keep connections alive. Every request is logged with its headers and body, so
//! a test can assert what reached which host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Req {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }

    /// Everything the request carried, for leak checks.
    pub fn all_text(&self) -> String {
        let headers: Vec<String> = self.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{} {}\n{}\n{}", self.method, self.target, headers.join("\n"), String::from_utf8_lossy(&self.body))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the server answers.
pub enum Reply {
    /// A whole answer.
    Full { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// A 200 sent with chunked encoding and no length: `head`, then `filler` until `total` bytes, then `tail`.
    Stream { head: Vec<u8>, filler: Vec<u8>, total: usize, tail: Vec<u8> },
    /// Waits until the gate opens, then answers with the inner reply.
    Held(Gate, Box<Reply>),
}

/// Holds answers back until the test opens it (for every answer waiting, and every later one).
#[derive(Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Reply {
    /// A 200 with a JSON body.
    pub fn json(body: &Value) -> Reply {
        Reply::Full { status: 200, headers: json_type(), body: body.to_string().into_bytes() }
    }

    /// A 200 with this exact body text (for JSON serde_json would not write, like a lone surrogate).
    pub fn raw_json(body: &str) -> Reply {
        Reply::Full { status: 200, headers: json_type(), body: body.as_bytes().to_vec() }
    }

    pub fn status(status: u16, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut h = json_type();
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Reply::Full { status, headers: h, body: body.to_string().into_bytes() }
    }
}

fn json_type() -> Vec<(String, String)> {
    vec![("Content-Type".into(), "application/json".into())]
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// A running hostile server.
pub struct Hostile {
    pub port: u16,
    log: Arc<Mutex<Vec<Req>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    /// Serves `handler` on 127.0.0.1 (a free port) until dropped.
    pub async fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the hostile server");
        let port = listener.local_addr().expect("local addr").port();
        let log: Arc<Mutex<Vec<Req>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let (log, handler) = (log.clone(), handler.clone());
                    tokio::spawn(async move {
                        let _ = serve(stream, &log, &handler).await;
                    });
                }
            })
        };
        Hostile { port, log, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn root(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, log: &Mutex<Vec<Req>>, handler: &Handler) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    let req = Req { method, target, headers, body };
    log.lock().unwrap().push(req.clone());
    let mut reply = handler(&req);
    let mut stream = reader.into_inner();
    loop {
        match reply {
            Reply::Held(gate, inner) => {
                gate.wait().await;
                reply = *inner;
            }
            Reply::Full { status, headers, body } => {
                let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
                for (k, v) in &headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                return stream.shutdown().await;
            }
            Reply::Stream { head, filler, total, tail } => {
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                    )
                    .await?;
                let chunk = |bytes: &[u8]| {
                    let mut c = format!("{:x}\r\n", bytes.len()).into_bytes();
                    c.extend_from_slice(bytes);
                    c.extend_from_slice(b"\r\n");
                    c
                };
                stream.write_all(&chunk(&head)).await?;
                let block: Vec<u8> = filler.iter().copied().cycle().take(64 * 1024).collect();
                let mut sent = head.len() + tail.len();
                while sent < total {
                    let n = block.len().min(total - sent);
                    // A client that gave up closes the connection: writing then fails, and we stop.
                    stream.write_all(&chunk(&block[..n])).await?;
                    sent += n;
                }
                stream.write_all(&chunk(&tail)).await?;
                stream.write_all(b"0\r\n\r\n").await?;
                return stream.shutdown().await;
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        429 => "Too Many Requests",
        _ => "Whatever",
    }
}

// ---------------------------------------------------------------------------------------------
// Provider pages

/// A snowflake ID for `2026-02-24T10:00:00Z` plus `n` milliseconds (so IDs order like their times).
pub fn snowflake(n: u64) -> String {
    const EPOCH_MS: u64 = 1_288_834_974_657;
    let ms = 1_771_927_200_000 + n - EPOCH_MS;
    (ms << 22).to_string()
}

/// An Xquik message from `sender` to `receiver`.
pub fn xquik_msg(id: &str, sender: &str, receiver: &str, text: &str) -> Value {
    json!({"id": id, "text": text, "senderId": sender, "receiverId": receiver})
}

/// An Xquik history page.
pub fn xquik_page(messages: Vec<Value>, next: Option<&str>) -> Value {
    json!({"messages": messages, "has_next_page": next.is_some(), "next_cursor": next.unwrap_or("")})
}

/// The peer of an Xquik history path `/api/v1/x/dm/{peer}/history`.
pub fn xquik_peer(req: &Req) -> Option<String> {
    let rest = req.path().strip_prefix("/api/v1/x/dm/")?;
    Some(rest.strip_suffix("/history")?.to_string())
}

/// Waits (polling) until `cond` holds, for at most `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "gave up after {secs} s waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
