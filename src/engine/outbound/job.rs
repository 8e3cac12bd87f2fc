//! A send job: to whom, what, with which media, under which key; and what can be checked about one
//! before anything is opened or spent.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::check_key;
use super::JobError;

/// One send: to whom, what, with which media, under which key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// A numeric X user ID or `@username`.
    pub to: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaSource>,
    /// None: [`super::keys::default_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text is what must never reach a log line.
        f.debug_struct("Job")
            .field("to", &self.to)
            .field("text", &format_args!("<{} chars>", self.text.chars().count()))
            .field("media", &self.media)
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

/// Where a job's media comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSource {
    /// A local file (absolute once the request is prepared).
    File(PathBuf),
    /// An `https://` URL the provider downloads.
    Url(String),
}

impl MediaSource {
    /// Reads a `--media` value or a job's `media`: an `https://` URL, or a path taken from `base`.
    pub fn parse(s: &str, base: &Path) -> Result<MediaSource, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("media is empty; give a file path or an https:// URL".into());
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") {
            let rest = &s[8..];
            if rest.is_empty() || rest.starts_with('/') || s.contains(char::is_whitespace) {
                return Err("media URL is not a valid https:// URL".into());
            }
            return Ok(MediaSource::Url(s.to_string()));
        }
        if lower.contains("://") {
            return Err("media URLs must use https://; download the file and give its path instead".into());
        }
        Ok(MediaSource::File(base.join(s)))
    }
}

/// What can be checked about a job without the network or the files.
pub fn check_job(job: &Job) -> Result<(), JobError> {
    parse_recipient(&job.to)?;
    if job.text.trim().is_empty() {
        return Err(JobError::input("empty_text", "the message text is empty; X needs some text".into()));
    }
    if let Some(k) = &job.idempotency_key {
        check_key(k)?;
    }
    Ok(())
}

/// A recipient as given: an ID, or a username to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    Id(String),
    Username(String),
}

pub fn parse_recipient(to: &str) -> Result<Recipient, JobError> {
    let to = to.trim();
    if let Some(name) = to.strip_prefix('@') {
        if !name.is_empty() && name.len() <= 15 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Ok(Recipient::Username(name.to_string()));
        }
    } else if crate::ids::is_numeric_id(to) {
        return Ok(Recipient::Id(to.to_string()));
    }
    Err(JobError::input("invalid_recipient", format!("`{to}` is not a numeric user ID or @username")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_ids_or_usernames() {
        assert_eq!(parse_recipient(" 44196397 ").unwrap(), Recipient::Id("44196397".into()));
        assert_eq!(parse_recipient("@dana_ops").unwrap(), Recipient::Username("dana_ops".into()));
        for bad in ["dana_ops", "@", "@way_too_long_username", "12a", "", "-5"] {
            assert!(parse_recipient(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_sources_are_https_urls_or_paths() {
        let base = Path::new("/jobs");
        assert_eq!(
            MediaSource::parse("https://cdn.test/a.png", base),
            Ok(MediaSource::Url("https://cdn.test/a.png".into()))
        );
        assert_eq!(MediaSource::parse("pics/a.png", base), Ok(MediaSource::File("/jobs/pics/a.png".into())));
        assert_eq!(MediaSource::parse("/abs/a.png", base), Ok(MediaSource::File("/abs/a.png".into())));
        assert!(MediaSource::parse("http://cdn.test/a.png", base).is_err());
        assert!(MediaSource::parse("ftp://cdn.test/a.png", base).is_err());
        assert!(MediaSource::parse("https:///a.png", base).is_err());
        assert!(MediaSource::parse("  ", base).is_err());
    }
}
