//! The benchmark's reference: a plain fetch loop over the same Xquik history pages dm-handoff syncs, with a
//! fixed number of requests in flight, that parses each page only for its cursor and writes nothing. Every
//! speed figure in `bench/run.py` is reported as a ratio to this loop measured in the same run, so a busy
//! machine slows both alike.
//!
//! Usage: `raw_fetch BASE_URL ACCOUNT CONCURRENCY PEER…` (peers also from stdin, one per line, when the
//! only peer given is `-`). Prints one JSON object: wall seconds, CPU seconds, requests, items, 429s.
//! Build with `cargo build --release --example raw_fetch`.

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

async fn walk(http: &reqwest::Client, base: &str, account: &str, peer: &str, counts: &Counts) -> Result<(), String> {
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
    let queue = Arc::new(std::sync::Mutex::new(peers.into_iter()));
    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, base, account, counts, queue) =
            (http.clone(), base.clone(), account.clone(), counts.clone(), queue.clone());
        tasks.spawn(async move {
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some(peer) = next else { return Ok::<(), String>(()) };
                walk(&http, &base, &account, &peer, &counts).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.expect("a fetch task") {
            eprintln!("raw_fetch: {e}");
            std::process::exit(1);
        }
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
