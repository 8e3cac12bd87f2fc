//! Closed segments to object storage, exactly once (SPEC 9.2): deterministic keys, create-only puts, and
//! the upload ledger in the state.
//!
//! Keys are `<prefix>/<pipeline>/dt=<YYYY-MM-DD of the close>/<file name>`, the day read from the stamp
//! in the segment's name, so a retry, a restart or a second host's upload of the same file lands on the
//! same key. Every put is create-only (`PutMode::Create`, `If-None-Match: *` on S3): an object already
//! under the key with the same SHA-256 counts as uploaded, one with other content is a [`BucketError::
//! Conflict`] and is never overwritten. A segment goes up before its manifest, and a manifest is put
//! only once its segment is confirmed, so a manifest in the bucket always names a complete segment.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

use crate::config::{UploadConfig, UploadScheme};
use crate::sink::{classify, read_manifest, Entry};
use crate::state::{StateError, Store, Uploaded};

/// Test hook: the name of a step at which the process kills itself with SIGKILL, so the integration tests
/// can stop an upload at a deterministic point (`before_put`, `after_segment_put`, `after_segment`,
/// `after_manifest_put`, `after_manifest`). Not documented for users.
const KILL_AT_ENV: &str = "DM_HANDOFF_TEST_KILL_AT";

fn kill_point(step: &str) {
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == step) {
        // SIGKILL, not abort or exit: nothing of ours runs after it, like a power loss or an OOM kill.
        // SAFETY: kill(2) on our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Why an upload stopped. Messages name keys and files, never their content.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The bucket already holds other content under a final key; it is left as it is.
    #[error(
        "{key}: the bucket already holds a different object (SHA-256 {found}, ours {ours}); it is not overwritten"
    )]
    Conflict {
        /// The object's key.
        key: String,
        /// SHA-256 of the object found.
        found: String,
        /// SHA-256 of the local file.
        ours: String,
    },
    /// The object store refused or failed a request.
    #[error("{key}: {source}")]
    Store {
        /// The object's key.
        key: String,
        /// What the store said.
        source: object_store::Error,
    },
    /// A local file could not be read.
    #[error("{path}: {message}")]
    Local {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A bucket (any `object_store` backend) and the key prefix inside it.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// What one pass over a pipeline's closed segments did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Segments whose segment and manifest are now both confirmed (this pass or before).
    pub segments_done: u64,
    /// Objects put by this pass (segments and manifests).
    pub objects_put: u64,
    /// Bytes put by this pass.
    pub bytes_put: u64,
    /// Objects found already in the bucket with our content.
    pub already_there: u64,
}

impl Bucket {
    /// The bucket a pipeline's upload keys name. Credentials come from the store's standard environment
    /// variables (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_NAME`, …);
    /// nothing is contacted until the first request.
    pub fn open(u: &UploadConfig) -> Result<Bucket, BucketError> {
        let fail = |source| BucketError::Store { key: u.url.clone(), source };
        // A few quick retries, not object_store's three minutes: a pass that fails keeps its backlog and
        // the next pass (the daemon's timer, the next run) retries, so a one-shot sync does not hang.
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(20),
            ..object_store::RetryConfig::default()
        };
        let store: Arc<dyn ObjectStore> = match u.scheme {
            UploadScheme::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&u.bucket)
                    .with_allow_http(u.allow_http)
                    .with_retry(retry);
                if let Some(e) = &u.endpoint {
                    // S3-compatible servers (moto, MinIO) serve buckets as paths, not as host names.
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                if let Some(r) = &u.region {
                    b = b.with_region(r);
                }
                Arc::new(b.build().map_err(fail)?)
            }
            UploadScheme::Gcs => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&u.bucket)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            ),
            UploadScheme::Azure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(&u.bucket)
                    .with_allow_http(u.allow_http)
                    .with_retry(retry)
                    .build()
                    .map_err(fail)?,
            ),
            UploadScheme::File => {
                let dir = Path::new(&u.bucket);
                std::fs::create_dir_all(dir)
                    .map_err(|e| BucketError::Local { path: u.bucket.clone(), message: e.to_string() })?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(fail)?)
            }
        };
        Ok(Bucket::new(store, &u.prefix))
    }

    /// The store, for `verify --remote`.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix under which a pipeline's objects live (`<prefix>/<pipeline>/`).
    pub fn pipeline_prefix(&self, pipeline: &str) -> String {
        if self.prefix.is_empty() {
            format!("{pipeline}/")
        } else {
            format!("{}/{pipeline}/", self.prefix)
        }
    }

    /// A bucket over an object store; `prefix` may be empty.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Bucket {
        Bucket { store, prefix: prefix.trim_matches('/').to_string() }
    }

    /// The key of a pipeline's closed segment or manifest; `None` for a name that is not one of the
    /// closed files of `stem` (the active file above all: it is never uploaded).
    pub fn key(&self, pipeline: &str, stem: &str, file: &str) -> Option<String> {
        if matches!(classify(stem, file)?, Entry::Temp) {
            return None;
        }
        let stamp = file.strip_prefix(stem)?.strip_prefix('.')?.split('.').next()?;
        let (date, _) = stamp.split_once('T')?;
        let (year, md) = date.split_at(date.len().checked_sub(4)?);
        let day = format!("{year}-{}-{}", &md[..2], &md[2..]);
        let mut key = String::new();
        if !self.prefix.is_empty() {
            key.push_str(&self.prefix);
            key.push('/');
        }
        key.push_str(&format!("{pipeline}/dt={day}/{file}"));
        Some(key)
    }

    /// Puts `body` under `key` only if no object is there. Ok(true): created; Ok(false): an object with
    /// the same SHA-256 was there already.
    pub async fn put_once(&self, key: &str, body: Bytes, sha256: &str) -> Result<bool, BucketError> {
        let location = Key::from(key);
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let err = |source| BucketError::Store { key: key.to_string(), source };
        match self.store.put_opts(&location, PutPayload::from(body), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                let found = self.store.get(&location).await.map_err(err)?.bytes().await.map_err(err)?;
                let found = hex_sha256(&found);
                if found == sha256 {
                    Ok(false)
                } else {
                    Err(BucketError::Conflict { key: key.to_string(), found, ours: sha256.to_string() })
                }
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Uploads every closed segment of a pipeline that has a manifest and is not in the ledger yet:
    /// the segment, then its manifest, each recorded in the ledger once the bucket confirmed it. With
    /// `delete_local` a segment's local file is removed once its manifest is confirmed (the manifest
    /// stays, as the record of what was shipped). Stops at the first error; what was confirmed stays
    /// recorded, so the next pass goes on from there.
    pub async fn drain(
        &self,
        state: &Store,
        pipeline: &str,
        dir: &Path,
        file_name: &str,
        delete_local: bool,
    ) -> Result<Drained, BucketError> {
        let stem = crate::sink::stem(file_name);
        let mut out = Drained::default();
        for manifest_file in manifests(dir, stem)? {
            let manifest_path = dir.join(&manifest_file);
            let manifest = read_manifest(&manifest_path)
                .map_err(|message| BucketError::Local { path: manifest_path.display().to_string(), message })?;
            if state.uploaded(pipeline, &manifest_file)?.is_some() {
                out.segments_done += 1;
                // A kill between the manifest's record and the removal leaves the segment: remove it now.
                if delete_local {
                    remove(&dir.join(&manifest.segment))?;
                }
                continue;
            }
            if state.uploaded(pipeline, &manifest.segment)?.is_none() {
                let path = dir.join(&manifest.segment);
                let body = read(&path)?;
                let sha = hex_sha256(&body);
                if sha != manifest.sha256 {
                    return Err(BucketError::Local {
                        path: path.display().to_string(),
                        message: "its SHA-256 differs from its manifest's; not uploaded (run `verify`)".into(),
                    });
                }
                kill_point("before_put");
                self.put_recorded(state, pipeline, stem, &manifest.segment, body, sha, &mut out, "segment").await?;
                kill_point("after_segment");
            }
            let body = read(&manifest_path)?;
            let sha = hex_sha256(&body);
            self.put_recorded(state, pipeline, stem, &manifest_file, body, sha, &mut out, "manifest").await?;
            kill_point("after_manifest");
            out.segments_done += 1;
            if delete_local {
                remove(&dir.join(&manifest.segment))?;
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_recorded(
        &self,
        state: &Store,
        pipeline: &str,
        stem: &str,
        file: &str,
        body: Bytes,
        sha256: String,
        out: &mut Drained,
        what: &str,
    ) -> Result<(), BucketError> {
        let key = self.key(pipeline, stem, file).ok_or_else(|| BucketError::Local {
            path: file.to_string(),
            message: "not a closed segment's file name".into(),
        })?;
        let bytes = body.len() as u64;
        if self.put_once(&key, body, &sha256).await? {
            out.objects_put += 1;
            out.bytes_put += bytes;
        } else {
            out.already_there += 1;
        }
        kill_point(&format!("after_{what}_put"));
        let at_ms = crate::time::unix_ms(std::time::SystemTime::now());
        state.record_upload(pipeline, file, &Uploaded { key, bytes, sha256, at_ms })?;
        Ok(())
    }
}

/// The manifests in a pipeline's output folder, oldest generation first.
fn manifests(dir: &Path, stem: &str) -> Result<Vec<String>, BucketError> {
    let local = |e: std::io::Error| BucketError::Local { path: dir.display().to_string(), message: e.to_string() };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(local)? {
        let name = entry.map_err(local)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(Entry::Manifest { seq, .. }) = classify(stem, name) {
            found.push((seq, name.to_string()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, n)| n).collect())
}

/// How many closed segments of a pipeline wait for upload: manifests on disk the ledger has not
/// recorded (a manifest is recorded last, so a segment counts until both of its objects are confirmed).
pub fn backlog(state: &Store, pipeline: &str, dir: &Path, file_name: &str) -> Result<u64, BucketError> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut n = 0;
    for m in manifests(dir, crate::sink::stem(file_name))? {
        if state.uploaded(pipeline, &m)?.is_none() {
            n += 1;
        }
    }
    Ok(n)
}

fn remove(path: &Path) -> Result<(), BucketError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BucketError::Local { path: path.display().to_string(), message: e.to_string() }),
    }
}

fn read(path: &Path) -> Result<Bytes, BucketError> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| BucketError::Local { path: path.display().to_string(), message: e.to_string() })
}

pub(crate) fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

mod remote;

pub use remote::RemoteReport;

#[cfg(test)]
mod tests;
