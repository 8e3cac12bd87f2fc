//! The benchmark's reference: a plain fetch loop over the same Xquik history pages dm-handoff syncs, with a
//! fixed number of requests in flight, that parses each page only for its cursor and writes nothing. Every
//! speed figure in `bench/run.py` is reported as a ratio to this loop measured in the same run, so a busy
//! machine slows both alike.
//!
//! Usage: `raw_fetch BASE_URL ACCOUNT CONCURRENCY PEER…` (peers also from stdin, one per line, when the
//! only peer given is `-`). Prints one JSON object: wall seconds, CPU seconds, requests, items, 429s.
//! Build with `cargo build --release --example raw_fetch`.
//!
//! With `RAW_DURABLE_DIR` set it is the *durable floor* instead: the least work the product's contract asks
//! for, done as plainly as possible, so the bench can say how much of dm-handoff's cost is that work and how
//! much is its own. Every item is parsed (borrowing from the body), one JSON record per item is serialized
//! into a buffer, and one writer thread appends whatever pages are queued to one file, `fdatasync`s it and
//! commits one sled batch (a key per page) with a flush. Fetches never wait for the writer. It keeps no seen
//! set, no rotation, no metrics, no conversation state beyond that key, so it is a floor, not a product.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;

/// What the loop reads of a page: the cursor, and how many items it held (counted, never kept).
#[derive(Deserialize)]
struct Page {
    messages: Vec<IgnoredAny>,
    #[serde(default)]
    has_next_page: bool,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// The fields of an Xquik message the floor serializes, borrowed from the body where no escape forces a copy.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, rename = "senderId")]
    sender_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, rename = "receiverId")]
    receiver_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, rename = "createdAt")]
    created_at: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, rename = "mediaUrl")]
    media_url: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FullPage<'a> {
    #[serde(borrow)]
    messages: Vec<Item<'a>>,
}

/// A record of about the size and shape of dm-handoff's `dm_message` line.
#[derive(serde::Serialize)]
struct Record<'a> {
    kind: &'static str,
    provider: &'static str,
    pipeline: &'static str,
    account: &'a str,
    conversation_user_id: &'a str,
    message_id: &'a str,
    sender_id: Option<&'a str>,
    receiver_id: Option<&'a str>,
    created_at: Option<&'a str>,
    text: Option<&'a str>,
    media_url: Option<&'a str>,
    source_endpoint: &'static str,
    synced_at: &'a str,
}

/// One page for the writer: its lines, and the key its commit stores.
struct Written {
    lines: Vec<u8>,
    key: String,
    cursor: String,
}

/// Serializes every item of a page into lines, as the durable floor must.
fn lines_of(body: &[u8], account: &str, peer: &str) -> Result<Vec<u8>, String> {
    let page: FullPage<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(body.len() * 3 / 2);
    for m in &page.messages {
        let r = Record {
            kind: "dm_message",
            provider: "xquik",
            pipeline: "bench",
            account,
            conversation_user_id: peer,
            message_id: &m.id,
            sender_id: m.sender_id.as_deref(),
            receiver_id: m.receiver_id.as_deref(),
            created_at: m.created_at.as_deref(),
            text: m.text.as_deref(),
            media_url: m.media_url.as_deref(),
            source_endpoint: "GET /x/dm/{userId}/history",
            synced_at: "2026-12-03T00:00:00.000Z",
        };
        serde_json::to_writer(&mut out, &r).map_err(|e| e.to_string())?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The floor's writer: groups what is queued, appends it, fdatasyncs, commits a sled batch and flushes.
fn writer(dir: std::path::PathBuf, rx: std::sync::mpsc::Receiver<Written>) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("floor.jsonl"))
        .map_err(|e| e.to_string())?;
    let db = sled::Config::new().path(dir.join("state")).cache_capacity(16 << 20).open().map_err(|e| e.to_string())?;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let mut batch = sled::Batch::default();
        for w in &group {
            file.write_all(&w.lines).map_err(|e| e.to_string())?;
            batch.insert(w.key.as_bytes(), w.cursor.as_bytes());
        }
        file.sync_data().map_err(|e| e.to_string())?;
        db.apply_batch(batch).map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    items: AtomicU64,
    throttled: AtomicU64,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

async fn walk(
    http: &reqwest::Client,
    base: &str,
    account: &str,
    peer: &str,
    counts: &Counts,
    durable: Option<&std::sync::mpsc::Sender<Written>>,
) -> Result<(), String> {
    let mut cursor: Option<String> = None;
    loop {
        let mut req = http.get(format!("{base}/x/dm/{peer}/history")).query(&[("account", account)]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c.as_str())]);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let status = resp.status().as_u16();
        if status == 429 {
            // The provider's window is full: wait as it asks, like any client must.
            counts.throttled.fetch_add(1, Ordering::Relaxed);
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status} for {peer}"));
        }
        let page: Page = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        counts.items.fetch_add(page.messages.len() as u64, Ordering::Relaxed);
        if let Some(tx) = durable {
            let lines = lines_of(&body, account, peer)?;
            let cursor = page.next_cursor.clone().unwrap_or_default();
            tx.send(Written { lines, key: format!("c\0{peer}"), cursor }).map_err(|e| e.to_string())?;
        }
        match page.next_cursor.filter(|c| page.has_next_page && !c.is_empty()) {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: raw_fetch BASE_URL ACCOUNT CONCURRENCY PEER…");
        std::process::exit(2);
    }
    let (base, account) = (args[0].trim_end_matches('/').to_string(), args[1].clone());
    let concurrency: usize = args[2].parse().expect("CONCURRENCY is a number");
    let peers: Vec<String> = if args[3] == "-" {
        std::io::stdin().lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).collect()
    } else {
        args[3..].to_vec()
    };
    let key = std::env::var("BENCH_KEY").unwrap_or_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", reqwest::header::HeaderValue::from_str(&key).expect("a header value"));
    let http = reqwest::Client::builder().default_headers(headers).build().expect("an HTTP client");
    let counts = Arc::new(Counts::default());
    let (tx, writer_thread) = match std::env::var_os("RAW_DURABLE_DIR") {
        Some(dir) => {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx), Some(std::thread::spawn(move || writer(dir.into(), rx))))
        }
        None => (None, None),
    };
    let queue = Arc::new(std::sync::Mutex::new(peers.into_iter()));
    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, base, account, counts, queue, tx) =
            (http.clone(), base.clone(), account.clone(), counts.clone(), queue.clone(), tx.clone());
        tasks.spawn(async move {
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some(peer) = next else { return Ok::<(), String>(()) };
                walk(&http, &base, &account, &peer, &counts, tx.as_ref()).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.expect("a fetch task") {
            eprintln!("raw_fetch: {e}");
            std::process::exit(1);
        }
    }
    // The floor is done when its last page is durable.
    drop(tx);
    if let Some(Err(e)) = writer_thread.map(|t| t.join().expect("the writer thread")) {
        eprintln!("raw_fetch: {e}");
        std::process::exit(1);
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "concurrency": concurrency,
            "wall_s": wall,
            "cpu_s": cpu_seconds() - cpu0,
            "requests": counts.requests.load(Ordering::Relaxed),
            "items": counts.items.load(Ordering::Relaxed),
            "throttled": counts.throttled.load(Ordering::Relaxed),
        })
    );
}
