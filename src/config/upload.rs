//! The upload keys of a pipeline (SPEC 9.2): `upload_url` and the keys that only mean something beside it.
//! Credentials are never config keys: the object store reads its provider's standard environment variables.

use std::path::PathBuf;

use super::{err, shown::short, ConfigError};

/// Which object store an `upload_url` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadScheme {
    /// `s3://bucket/prefix`: Amazon S3 or an S3-compatible server (`upload_endpoint`).
    S3,
    /// `gs://bucket/prefix`: Google Cloud Storage.
    Gcs,
    /// `az://container/prefix`: Azure Blob Storage.
    Azure,
    /// `file:///absolute/folder`: a local or mounted folder.
    File,
}

/// A validated upload target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadConfig {
    /// The URL as written, for messages (it holds no secret: userinfo is refused).
    pub url: String,
    pub scheme: UploadScheme,
    /// The bucket or container; for `file:///`, the folder.
    pub bucket: String,
    /// The key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// An S3-compatible server's URL (moto, MinIO, R2, …) instead of AWS's.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Whether plain `http://` endpoints are allowed (default false).
    pub allow_http: bool,
    /// Remove a local segment once its manifest's upload is confirmed.
    pub delete_local: bool,
}

impl UploadConfig {
    /// The folder of a `file:///` target.
    pub fn folder(&self) -> Option<PathBuf> {
        (self.scheme == UploadScheme::File).then(|| PathBuf::from(&self.bucket))
    }
}

/// The upload keys as written.
pub(super) struct RawUpload {
    pub(super) url: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) allow_http: Option<bool>,
    pub(super) delete_local: Option<bool>,
}

const SCHEMES: &str = "s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///folder";

pub(super) fn validate(at: &str, raw: RawUpload) -> Result<Option<UploadConfig>, ConfigError> {
    let Some(url) = raw.url else {
        let stray = [
            ("upload_endpoint", raw.endpoint.is_some()),
            ("upload_region", raw.region.is_some()),
            ("upload_allow_http", raw.allow_http.is_some()),
            ("upload_delete_local", raw.delete_local.is_some()),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return err(format!("{at}: {key} is set but upload_url is not; set upload_url or remove {key}"));
        }
        return Ok(None);
    };
    let shown = short(&url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return err(format!("{at}: upload_url `{shown}` is not a URL; use {SCHEMES}"));
    };
    let scheme = match scheme {
        "s3" => UploadScheme::S3,
        "gs" => UploadScheme::Gcs,
        "az" => UploadScheme::Azure,
        "file" => UploadScheme::File,
        other => return err(format!("{at}: upload_url scheme `{}` is not supported; use {SCHEMES}", short(other))),
    };
    if rest.contains(['?', '#']) {
        return err(format!("{at}: upload_url `{shown}` has a query or fragment; give the bucket and prefix only"));
    }
    let (bucket, prefix) = if scheme == UploadScheme::File {
        if !rest.starts_with('/') || rest.len() < 2 {
            return err(format!(
                "{at}: upload_url `{shown}` must name an absolute folder, like \"file:///srv/dm-handoff\""
            ));
        }
        (rest.trim_end_matches('/').to_string(), String::new())
    } else {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return err(format!(
                "{at}: upload_url names credentials or a port; put the bucket only there, credentials in the \
                 provider's environment variables and a server in upload_endpoint"
            ));
        }
        if bucket.is_empty() {
            return err(format!("{at}: upload_url `{shown}` names no bucket, like \"s3://my-bucket/dm-handoff\""));
        }
        (bucket.to_string(), prefix.trim_matches('/').to_string())
    };
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return err(format!("{at}: upload_url `{shown}`: the prefix may not hold `.`, `..` or an empty part"));
    }
    let allow_http = raw.allow_http.unwrap_or(false);
    if (raw.endpoint.is_some() || raw.region.is_some()) && scheme != UploadScheme::S3 {
        return err(format!("{at}: upload_endpoint and upload_region apply to s3:// only; remove them"));
    }
    if let Some(e) = &raw.endpoint {
        let http = e.starts_with("http://");
        if !http && !e.starts_with("https://") {
            return err(format!("{at}: upload_endpoint `{}` must be an http(s):// URL", short(e)));
        }
        if http && !allow_http {
            return err(format!(
                "{at}: upload_endpoint `{}` is plain http; use https or set upload_allow_http = true",
                short(e)
            ));
        }
    }
    Ok(Some(UploadConfig {
        url,
        scheme,
        bucket,
        prefix,
        endpoint: raw.endpoint.map(|e| e.trim_end_matches('/').to_string()),
        region: raw.region,
        allow_http,
        delete_local: raw.delete_local.unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawUpload {
        RawUpload { url: Some(url.into()), endpoint: None, region: None, allow_http: None, delete_local: None }
    }

    #[test]
    fn urls_name_a_store_a_bucket_and_a_prefix() {
        let u = validate("p", raw("s3://b/fleet/a/")).unwrap().unwrap();
        assert_eq!((u.scheme, u.bucket.as_str(), u.prefix.as_str()), (UploadScheme::S3, "b", "fleet/a"));
        let u = validate("p", raw("gs://b")).unwrap().unwrap();
        assert_eq!((u.scheme, u.prefix.as_str()), (UploadScheme::Gcs, ""));
        assert_eq!(validate("p", raw("az://c/x")).unwrap().unwrap().scheme, UploadScheme::Azure);
        let u = validate("p", raw("file:///srv/b/")).unwrap().unwrap();
        assert_eq!(u.folder(), Some(PathBuf::from("/srv/b")));
    }

    #[test]
    fn bad_urls_and_stray_keys_are_one_clear_line() {
        let e = validate("p", raw("ftp://b/x")).unwrap_err().0;
        assert!(e.contains("scheme `ftp` is not supported") && e.contains("s3://"), "{e}");
        assert!(validate("p", raw("s3:///x")).unwrap_err().0.contains("names no bucket"));
        assert!(validate("p", raw("s3://key:secret@b/x")).unwrap_err().0.contains("credentials"));
        assert!(!validate("p", raw("s3://key:secret@b/x")).unwrap_err().0.contains("secret"));
        assert!(validate("p", raw("file://rel")).unwrap_err().0.contains("absolute"));
        let mut r = raw("s3://b");
        r.endpoint = Some("http://127.0.0.1:5000".into());
        assert!(validate("p", r).unwrap_err().0.contains("upload_allow_http"));
        let stray =
            RawUpload { url: None, endpoint: None, region: Some("x".into()), allow_http: None, delete_local: None };
        assert!(validate("p", stray).unwrap_err().0.contains("upload_region is set but upload_url is not"));
    }
}
