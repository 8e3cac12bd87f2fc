//! What the adapters share beyond errors and retries: the HTTP client they are built on (which counts every
//! exchange in the metrics), reading a 2xx body or handing the failure to the adapter's own classifier,
//! headers that carry a secret, multipart parts, and IDs that arrive as strings or numbers. Nothing here
//! knows a provider's routes or error codes.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;

use super::error::{ErrorClass, ProviderError};
use crate::config::Pipeline;
use crate::metrics::RequestMetrics;

/// The HTTP client every adapter uses: one per pipeline, so connections are reused across pages. Redirects
/// are never followed: a provider that answers 3xx could otherwise send the key header (and a POST body
/// with a token) to any host; [`super::body::receive`] turns a 3xx into an error naming the target host.
pub fn http_client(p: &Pipeline, headers: HeaderMap) -> Result<Http, crate::config::ConfigError> {
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("dm-handoff/", env!("CARGO_PKG_VERSION")))
        .timeout(p.retry.request_timeout)
        .connect_timeout(p.retry.request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| crate::config::ConfigError(format!("pipeline `{}`: cannot set up HTTP: {e}", p.name)))?;
    Ok(Http { client, requests: crate::metrics::global().requests(&p.name, p.provider.name()) })
}

/// A pipeline's HTTP client: reqwest's, and the pipeline's request counter. Requests built from it count
/// themselves when sent ([`Request::send`]), so every exchange with a provider is in
/// `dm_handoff_requests_total` without any call site having to remember it.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    requests: RequestMetrics,
}

impl Http {
    pub fn get(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(self.client.get(url))
    }

    pub fn post(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(self.client.post(url))
    }

    pub fn delete(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(self.client.delete(url))
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> Request {
        Request { builder, requests: self.requests.clone() }
    }
}

/// A request being built: reqwest's builder, passed through, plus where to count it.
pub struct Request {
    builder: reqwest::RequestBuilder,
    requests: RequestMetrics,
}

impl Request {
    pub fn query<T: serde::Serialize + ?Sized>(self, query: &T) -> Request {
        Request { builder: self.builder.query(query), ..self }
    }

    pub fn header(self, name: &'static str, value: &str) -> Request {
        Request { builder: self.builder.header(name, value), ..self }
    }

    /// A header whose value is a secret (a bearer token); the value stays marked sensitive.
    pub fn secret_header(self, name: reqwest::header::HeaderName, value: reqwest::header::HeaderValue) -> Request {
        Request { builder: self.builder.header(name, value), ..self }
    }

    pub fn form<T: serde::Serialize + ?Sized>(self, body: &T) -> Request {
        Request { builder: self.builder.form(body), ..self }
    }

    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Request {
        Request { builder: self.builder.json(body), ..self }
    }

    pub fn multipart(self, form: reqwest::multipart::Form) -> Request {
        Request { builder: self.builder.multipart(form), ..self }
    }

    /// Sends it, and counts the exchange by the status of the answer, or as `error` when none came. An
    /// answer whose body is then cut short still counts under its status: the provider did answer.
    pub async fn send(self) -> reqwest::Result<reqwest::Response> {
        let result = self.builder.send().await;
        self.requests.exchange(result.as_ref().ok().map(|r| r.status().as_u16()));
        result
    }
}

/// Sends a request and returns the body of a 2xx (at most `max_body` bytes, see [`super::body`]); a 3xx
/// is refused, anything else goes to the provider's `classify` with the status, the body and the
/// `Retry-After` header (seconds). A body cut short is a dropped connection: transient, never a
/// half-parsed page.
pub async fn send_classified(
    req: Request,
    endpoint: &'static str,
    max_body: u64,
    classify: fn(&'static str, u16, &[u8], Option<Duration>) -> ProviderError,
) -> Result<bytes::Bytes, ProviderError> {
    let resp = req.send().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
    let answer = super::body::receive(resp, endpoint, max_body).await?;
    if (200..300).contains(&answer.status) {
        return Ok(answer.body);
    }
    Err(classify(endpoint, answer.status, &answer.body, retry_after_header(&answer.headers)))
}

/// A `Retry-After` header in seconds (the only form our providers send).
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Default headers carrying a pipeline's secret (`x-api-key: K` or `Authorization: Bearer K`), marked
/// sensitive so Debug output redacts it and no log at any level can print it. `what` names the secret
/// in the error, which never contains its value.
pub fn secret_headers(
    p: &Pipeline,
    name: reqwest::header::HeaderName,
    value: &str,
    what: &str,
) -> Result<reqwest::header::HeaderMap, crate::config::ConfigError> {
    let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
        crate::config::ConfigError(format!(
            "pipeline `{}`: the {what} in {} has characters an HTTP header cannot carry; check it",
            p.name,
            p.api_key.as_ref().map(|k| k.describe()).unwrap_or_else(|| "the token file".into())
        ))
    })?;
    v.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(name, v);
    Ok(headers)
}

/// A file as a multipart part, for the uploads of providers that take the file itself.
pub fn file_part(
    endpoint: &'static str,
    name: &str,
    mime: &str,
    bytes: &[u8],
) -> Result<reqwest::multipart::Part, ProviderError> {
    reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()).mime_str(mime).map_err(|_| {
        ProviderError::new(
            ErrorClass::Conversation,
            endpoint,
            None,
            "invalid_media_type",
            "the media type cannot be sent",
        )
    })
}

/// An ID that may arrive as a JSON string or number; always kept as a string.
#[derive(Debug)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    /// A string or a non-negative integer. Read by `TextOrNumber`: an `#[serde(untagged)]` enum would buffer
    /// each ID into serde's `Content` and copy it again (three IDs a message: 5% of a backfill's parse).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber { any_number: false }).map(Id)
    }
}

/// A JSON string or number as text, by one serde visitor: integers as they are; with `any_number`, also
/// negative and fractional numbers, as `{:.3}` (a fraction to the millisecond).
struct TextOrNumber {
    any_number: bool,
}

impl serde::de::Visitor<'_> for TextOrNumber {
    type Value = String;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.any_number { "a string or a number" } else { "a string or a non-negative integer" })
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        if !self.any_number {
            return Err(E::invalid_type(serde::de::Unexpected::Signed(v), &self));
        }
        // As f64, the way the untagged form this replaces read it.
        self.visit_f64(v as f64)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        if !self.any_number {
            return Err(E::invalid_type(serde::de::Unexpected::Float(v), &self));
        }
        Ok(format!("{v:.3}"))
    }
}

impl Id {
    /// Whether the ID is one we can key records by (see [`crate::ids::is_safe_id`]).
    pub fn is_safe(&self) -> bool {
        crate::ids::is_safe_id(&self.0)
    }
}

/// A timestamp that may arrive as a string or as a JSON number (epoch seconds or milliseconds); kept as
/// text for [`crate::record::normalize_time`].
#[derive(Debug)]
pub struct TimeText(pub String);

impl<'de> Deserialize<'de> for TimeText {
    /// A string, or any number kept as text (see `TextOrNumber`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber { any_number: true }).map(TimeText)
    }
}

/// One item of a page into the adapter's wire type, or why not, in words that quote nothing from it. Pages
/// are read item by item so that one bad item becomes a `dm_unparsed` record instead of failing its page.
pub fn parse_item<T: serde::de::DeserializeOwned>(raw: &serde_json::value::RawValue) -> Result<T, String> {
    if !raw.get().starts_with('{') {
        return Err("the item is not a JSON object".to_string());
    }
    serde_json::from_str(raw.get()).map_err(|e| item_error(&e))
}

/// serde's message about an item, without the values it quotes (a string value could be message text) and
/// without its position.
pub fn item_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
    // serde quotes string values with Debug escaping ("…\"…"); drop everything between the quotes.
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in msg.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, _, '"') => {
                if !quoted {
                    out.push_str("\"…\"");
                }
                quoted = !quoted;
            }
            (false, _, c) => out.push(c),
            (true, false, _) => {}
        }
    }
    format!("the item does not match the documented shape: {}", crate::config::shown::short(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wire {
        id: Id,
        n: u64,
    }

    fn reason(json: &str) -> String {
        let raw = serde_json::value::RawValue::from_string(json.to_string()).unwrap();
        parse_item::<Wire>(&raw).unwrap_err()
    }

    #[test]
    fn item_errors_name_the_problem_and_quote_nothing() {
        assert!(reason(r#"{"n":1}"#).ends_with("missing field `id`"), "{}", reason(r#"{"n":1}"#));
        let r = reason(r#"{"id":"1","n":"my \"secret\" text"}"#);
        assert!(!r.contains("secret") && r.contains("invalid type"), "{r}");
        assert_eq!(reason("5"), "the item is not a JSON object");
        assert_eq!(reason(r#""secret""#), "the item is not a JSON object");
    }

    #[test]
    fn times_arrive_as_strings_or_numbers() {
        let t: TimeText = serde_json::from_str("1771927200000").unwrap();
        assert_eq!(t.0, "1771927200000");
        let t: TimeText = serde_json::from_str(r#""2026-02-24T10:00:00Z""#).unwrap();
        assert_eq!(t.0, "2026-02-24T10:00:00Z");
        let t: TimeText = serde_json::from_str("1771927200.5").unwrap();
        assert_eq!(t.0, "1771927200.500");
    }
}
