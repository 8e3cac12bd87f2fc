//! Reading a provider's answer as a hostile one could send it: no redirect is followed (a 3xx is an error
//! that names where it pointed, and nothing is sent there), a body is read as a stream and refused once it
//! passes `max_response_bytes` (a 100 MB body never sits in memory), and the JSON text is repaired where
//! serde would reject a whole page for one bad string: an unpaired UTF-16 surrogate escape (`"\ud800"`) or a
//! byte that is not UTF-8 becomes U+FFFD, so the text around it is kept. The repair works in place (an
//! escape is replaced by one of the same length), so nothing holds a second copy of a page.

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;

use super::error::{ErrorClass, ProviderError};

/// Error bodies are read only to classify them: this much is enough, the rest is not read.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// A response whose status is not a redirect, with its body read within bounds.
#[derive(Debug)]
pub struct Received {
    pub status: u16,
    pub headers: HeaderMap,
    /// The whole body of a 2xx (repaired, see the module doc); at most `MAX_ERROR_BODY` (64 KiB) of any other.
    pub body: Bytes,
}

/// Reads `resp`. A 3xx is an error naming the status and the host it points to; a 2xx body longer than
/// `max` bytes is an error for this page (nothing of it is kept); a body cut short is a dropped connection.
pub async fn receive(mut resp: reqwest::Response, endpoint: &'static str, max: u64) -> Result<Received, ProviderError> {
    let status = resp.status().as_u16();
    if (300..400).contains(&status) {
        return Err(redirect(endpoint, status, &resp));
    }
    let ok = (200..300).contains(&status);
    let limit = if ok { max } else { max.min(MAX_ERROR_BODY) };
    if ok && resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large(endpoint, status, max));
    }
    let headers = resp.headers().clone();
    let capacity = resp.content_length().unwrap_or(8 * 1024).min(limit);
    let mut buf = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(|e| ProviderError::transport(endpoint, &e))? {
        let room = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(buf.len());
        if chunk.len() > room {
            if ok {
                return Err(too_large(endpoint, status, max));
            }
            // An error body is only classified: its first bytes are as good as all of it.
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Received { status, headers, body: repair(buf) })
}

/// A 3xx: not followed. The error names the status and the target host (never its path or query, which
/// could carry anything), so the user can fix `base_url`.
fn redirect(endpoint: &'static str, status: u16, resp: &reqwest::Response) -> ProviderError {
    let target = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|loc| resp.url().join(loc).ok())
        .and_then(|u| {
            let host = u.host_str()?.chars().take(253).collect::<String>();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        });
    let hint = match target {
        Some(host) => format!(
            "the provider redirected to host {host}; redirects are not followed, so no key, token or body was sent \
             there; set base_url to the URL the provider documents"
        ),
        None => "the provider answered with a redirect without a usable Location; redirects are not followed; \
                 check base_url"
            .to_string(),
    };
    ProviderError::new(ErrorClass::Conversation, endpoint, Some(status), "redirect", hint)
}

fn too_large(endpoint: &'static str, status: u16, max: u64) -> ProviderError {
    ProviderError::new(
        ErrorClass::Conversation,
        endpoint,
        Some(status),
        "response_too_large",
        format!(
            "the response body is larger than max_response_bytes ({max} bytes); the page was refused and nothing \
             of it written; raise max_response_bytes if the provider's pages really are this large"
        ),
    )
}

/// Makes a body serde can read without losing the page over one string: bytes that are not UTF-8 become
/// U+FFFD (a copy, only then), and unpaired surrogate escapes become `\uFFFD` (in place).
fn repair(mut buf: BytesMut) -> Bytes {
    if std::str::from_utf8(&buf).is_err() {
        buf = BytesMut::from(String::from_utf8_lossy(&buf).as_bytes());
    }
    repair_surrogates(&mut buf);
    buf.freeze()
}

/// Replaces every `\uD800`–`\uDFFF` escape that is not half of a high-low pair with `\uFFFD`, in place. A
/// backslash always starts an escape in valid JSON (only strings have them), and an escaped backslash is
/// skipped as a whole, so `\\ud800` (a backslash, then the text `ud800`) is left alone.
pub fn repair_surrogates(buf: &mut [u8]) -> usize {
    let mut fixed = 0;
    let mut i = 0;
    while i < buf.len() {
        // Most bodies have few escapes: jump from backslash to backslash (a SIMD search), not byte by byte.
        match memchr::memchr(b'\\', &buf[i..]) {
            Some(at) => i += at,
            None => break,
        }
        match unit_at(buf, i) {
            Some(0xD800..=0xDBFF) => {
                if matches!(unit_at(buf, i + 6), Some(0xDC00..=0xDFFF)) {
                    i += 12;
                } else {
                    buf[i + 2..i + 6].copy_from_slice(b"FFFD");
                    fixed += 1;
                    i += 6;
                }
            }
            Some(0xDC00..=0xDFFF) => {
                buf[i + 2..i + 6].copy_from_slice(b"FFFD");
                fixed += 1;
                i += 6;
            }
            Some(_) => i += 6,
            // Any other escape is two bytes (`\"`, `\\`, `\n`, …).
            None => i += 2,
        }
    }
    fixed
}

/// The UTF-16 code unit of a `\uXXXX` escape starting at `at`, if one does.
fn unit_at(buf: &[u8], at: usize) -> Option<u16> {
    let esc = buf.get(at..at + 6)?;
    if esc[0] != b'\\' || esc[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&esc[2..]).ok()?;
    u16::from_str_radix(hex, 16).ok().filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        repair_surrogates(&mut b);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn lone_surrogates_become_replacement_characters_and_pairs_stay() {
        assert_eq!(fixed(r#"{"text":"a\ud800b"}"#), r#"{"text":"a\uFFFDb"}"#);
        assert_eq!(fixed(r#"{"text":"\udc00"}"#), r#"{"text":"\uFFFD"}"#);
        assert_eq!(fixed(r#"{"text":"\ud83d\ude00"}"#), r#"{"text":"\ud83d\ude00"}"#, "a pair is an emoji");
        assert_eq!(fixed(r#"{"text":"\ud83d\ud83d\ude00"}"#), r#"{"text":"\uFFFD\ud83d\ude00"}"#);
        assert_eq!(fixed(r#"{"text":"\ud800\u0041"}"#), r#"{"text":"\uFFFD\u0041"}"#);
        assert_eq!(fixed(r#"{"text":"end\ud800"}"#), r#"{"text":"end\uFFFD"}"#);
        // An escaped backslash followed by the letters u d 8 0 0 is not an escape.
        assert_eq!(fixed(r#"{"text":"\\ud800"}"#), r#"{"text":"\\ud800"}"#);
        assert_eq!(fixed(r#"{"text":"\\\ud800"}"#), r#"{"text":"\\\uFFFD"}"#);
        assert_eq!(fixed(r#"{"t":"\"\n\u00e9"}"#), r#"{"t":"\"\n\u00e9"}"#);
        // Truncated or odd escapes are left for serde to judge.
        assert_eq!(fixed(r#""\ud8"#), r#""\ud8"#);
        assert_eq!(fixed(r#""\u+800""#), r#""\u+800""#);
    }

    #[test]
    fn a_repaired_body_parses_and_keeps_the_text() {
        let body = repair(BytesMut::from(&br#"{"text":"hi \ud800 there"}"#[..]));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["text"], "hi \u{FFFD} there");
        let body = repair(BytesMut::from(&b"{\"text\":\"bad \xff byte\"}"[..]));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["text"], "bad \u{FFFD} byte");
    }
}
