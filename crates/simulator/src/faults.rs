//! Fault injection: decides, from one seeded stream, which requests are throttled, fail, come
//! back malformed or are cut off mid-body, and builds the provider-neutral parts of those
//! responses (the cut-off body, the HTML error page).
//!
//! How a 429 or a 5xx is worded is each provider's business; this module only says *that* one
//! happens. Decisions are drawn in a fixed order (storm, rate limit, server error, then malformed
//! and drop) so that the same seed and request sequence always injects the same faults.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub(crate) mod reads;

use super::content::mix2;
use super::writes::{self, WriteTarget};
use super::{lock, Faults, WriteFault};

/// A fault that replaces the whole answer before the route does any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Early {
    /// 429 with this many seconds in `Retry-After`.
    RateLimited { retry_after: u64 },
    /// 502 or 503 (they alternate, so clients see both).
    Unavailable { status: u16, retry_after: u64 },
}

/// A fault that spoils a 200 answer of a read route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spoiled {
    /// Not the documented JSON; the variant rotates.
    Malformed(Malformed),
    /// The real body, cut short by aborting the connection.
    Dropped,
}

/// The three kinds of malformed 200 bodies, served in rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    InvalidJson,
    WrongShape,
    Html,
}

/// The fault configuration plus the seeded stream its probabilities are drawn from.
pub(crate) struct FaultEngine {
    state: Mutex<FaultState>,
}

struct FaultState {
    faults: Faults,
    rng: SmallRng,
    /// Alternates 502 and 503.
    unavailable_turn: u64,
    /// Rotates the malformed body kinds.
    malformed_turn: u64,
}

impl FaultEngine {
    pub(crate) fn new(seed: u64, faults: Faults) -> FaultEngine {
        FaultEngine {
            state: Mutex::new(FaultState {
                faults,
                rng: SmallRng::seed_from_u64(mix2(seed, 0x6661_756c_7473)),
                unavailable_turn: 0,
                malformed_turn: 0,
            }),
        }
    }

    /// Replaces the configuration; the random stream carries on, so a run stays reproducible.
    pub(crate) fn set(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    pub(crate) fn get(&self) -> Faults {
        lock(&self.state).faults.clone()
    }

    pub(crate) fn slow(&self) -> Option<Duration> {
        let ms = lock(&self.state).faults.slow_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Storm, then rate limit, then server error. A probability of 0 draws nothing, so turning a
    /// fault off does not shift the others' stream.
    pub(crate) fn early(&self) -> Option<Early> {
        let mut st = lock(&self.state);
        let retry_after = st.faults.retry_after_secs;
        if st.faults.storm > 0 {
            st.faults.storm -= 1;
            return Some(Early::RateLimited { retry_after });
        }
        if draw(&mut st, |f| f.rate_limit) {
            return Some(Early::RateLimited { retry_after });
        }
        if draw(&mut st, |f| f.server_error) {
            st.unavailable_turn += 1;
            let status = if st.unavailable_turn % 2 == 1 { 502 } else { 503 };
            return Some(Early::Unavailable { status, retry_after });
        }
        None
    }

    /// Malformed, then drop; only read routes that would answer 200 ask.
    pub(crate) fn spoil(&self) -> Option<Spoiled> {
        let mut st = lock(&self.state);
        if draw(&mut st, |f| f.malformed) {
            st.malformed_turn += 1;
            let kind = match st.malformed_turn % 3 {
                1 => Malformed::InvalidJson,
                2 => Malformed::WrongShape,
                _ => Malformed::Html,
            };
            return Some(Spoiled::Malformed(kind));
        }
        if draw(&mut st, |f| f.drop) {
            return Some(Spoiled::Dropped);
        }
        None
    }

    pub(crate) fn forbidden(&self, peer: &str) -> bool {
        lock(&self.state).faults.forbidden_peers.iter().any(|p| p.trim() == peer)
    }

    /// Whether a write-action send to `peer` answers 202 first, and if so how many polls it
    /// takes to confirm and the `Retry-After` to give. Listed peers draw nothing from the stream.
    pub(crate) fn pending(&self, peer: &str) -> Option<(u32, u64)> {
        let mut st = lock(&self.state);
        let listed = st.faults.pending_peers.iter().any(|p| p.trim() == peer);
        if listed || draw(&mut st, |f| f.pending_sends) {
            Some((st.faults.pending_polls.max(1), st.faults.pending_retry_after_secs))
        } else {
            None
        }
    }

    pub(crate) fn dm_not_allowed(&self, peer: &str) -> bool {
        lock(&self.state).faults.dm_not_allowed_peers.iter().any(|p| p.trim() == peer)
    }

    /// Takes the first queued write fault that matches this write (see `writes`). Draws nothing
    /// from the random stream: write faults are deterministic by design.
    pub(crate) fn take_write(&self, w: &WriteTarget<'_>) -> Option<WriteFault> {
        writes::take(&mut lock(&self.state).faults.write_faults, w)
    }

    /// Takes the first queued read fault that matches this read (see `reads`). Draws nothing from
    /// the random stream either.
    pub(crate) fn take_read(
        &self,
        provider: writes::SimProvider,
        peer: Option<&str>,
        has_cursor: bool,
    ) -> Option<reads::ReadFault> {
        reads::take(&mut lock(&self.state).faults.read_faults, provider, peer, has_cursor)
    }
}

fn draw(st: &mut FaultState, p: impl Fn(&Faults) -> f64) -> bool {
    let p = p(&st.faults);
    if p.is_nan() || p <= 0.0 {
        return false;
    }
    st.rng.gen::<f64>() < p
}

/// An HTML error page of the kind a CDN or proxy puts in front of an API, served with 200.
pub(crate) fn html_page() -> Response {
    let body = "<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head>\
                <body><h1>Checking your browser before accessing the site.</h1>\
                <p>This process is automatic. Your browser will redirect shortly.</p>\
                </body></html>\n";
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// A 200 whose `Content-Length` promises all of `full` but whose connection is aborted after
/// about half of it. The short pause lets the first half reach the socket before the abort, so
/// the client sees headers and a truncated body rather than no answer at all.
pub(crate) fn dropped(full: Vec<u8>, content_type: &'static str) -> Response {
    let len = full.len();
    let cut = (len / 2).clamp(1, len.saturating_sub(1).max(1));
    let full = Bytes::from(full);
    let first = full.slice(..cut.min(len));
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let first = first.clone();
        async move {
            match step {
                0 => Some((Ok::<Bytes, std::io::Error>(first), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Some((Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "simulated drop")), 2))
                }
                _ => None,
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len as u64));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_at_about_the_configured_rate() {
        let engine = FaultEngine::new(7, Faults { rate_limit: 0.2, server_error: 0.1, ..Faults::default() });
        let (mut limited, mut unavailable, mut statuses) = (0, 0, Vec::new());
        for _ in 0..10_000 {
            match engine.early() {
                Some(Early::RateLimited { retry_after }) => {
                    assert_eq!(retry_after, 1);
                    limited += 1;
                }
                Some(Early::Unavailable { status, .. }) => {
                    unavailable += 1;
                    statuses.push(status);
                }
                None => {}
            }
        }
        assert!((1800..2200).contains(&limited), "{limited}");
        // 10% of the 80% that were not throttled.
        assert!((650..950).contains(&unavailable), "{unavailable}");
        assert!(statuses.windows(2).all(|w| w[0] != w[1]), "502 and 503 alternate");
    }

    #[test]
    fn storm_counts_down_then_stops() {
        let engine = FaultEngine::new(1, Faults::default());
        engine.set(Faults { storm: 3, retry_after_secs: 9, ..Faults::default() });
        for _ in 0..3 {
            assert_eq!(engine.early(), Some(Early::RateLimited { retry_after: 9 }));
        }
        assert_eq!(engine.early(), None);
        assert_eq!(engine.get().storm, 0);
    }

    #[test]
    fn spoil_rotates_kinds_and_is_deterministic() {
        let run = || {
            let engine = FaultEngine::new(3, Faults { malformed: 0.3, drop: 0.3, ..Faults::default() });
            (0..300).map(|_| engine.spoil()).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let kinds: Vec<_> = a
            .iter()
            .filter_map(|s| match s {
                Some(Spoiled::Malformed(k)) => Some(*k),
                _ => None,
            })
            .collect();
        assert_eq!(&kinds[..3], &[Malformed::InvalidJson, Malformed::WrongShape, Malformed::Html]);
        let drops = a.iter().filter(|s| **s == Some(Spoiled::Dropped)).count();
        assert!((40..90).contains(&drops), "{drops}");
    }

    #[test]
    fn zero_probabilities_never_fire() {
        let engine = FaultEngine::new(1, Faults::default());
        assert!((0..1000).all(|_| engine.early().is_none() && engine.spoil().is_none()));
    }
}
