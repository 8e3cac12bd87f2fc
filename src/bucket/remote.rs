//! `verify --remote`: what the bucket holds for a pipeline, against its local manifests.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::TryStreamExt as _;
use object_store::path::Path as Key;
use object_store::ObjectStoreExt as _;

use super::{hex_sha256, manifests, Bucket, BucketError};
use crate::sink::read_manifest;

/// What the bucket check of one pipeline found: one line per problem.
#[derive(Debug, Default)]
pub struct RemoteReport {
    /// Objects under the pipeline's prefix.
    pub objects: u64,
    pub problems: Vec<String>,
}

impl Bucket {
    /// Checks the bucket against a pipeline's local manifests: each manifest and its segment are there
    /// under their keys, the segment with the manifest's size and SHA-256 and the manifest with the local
    /// file's; no file name appears under two keys; no object under the pipeline's prefix is one that no
    /// manifest names. Reads files and the bucket only.
    pub async fn verify_remote(
        &self,
        pipeline: &str,
        dir: &Path,
        file_name: &str,
    ) -> Result<RemoteReport, BucketError> {
        let prefix = self.pipeline_prefix(pipeline);
        let store_err = |source| BucketError::Store { key: prefix.clone(), source };
        let listed: Vec<_> =
            self.store.list(Some(&Key::from(prefix.as_str()))).try_collect().await.map_err(store_err)?;
        let mut report = RemoteReport { objects: listed.len() as u64, ..RemoteReport::default() };
        let mut sizes = BTreeMap::new();
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in &listed {
            let key = o.location.to_string();
            let name = key.rsplit('/').next().unwrap_or(&key).to_string();
            names.entry(name).or_default().push(key.clone());
            sizes.insert(key, o.size);
        }
        for (name, keys) in &names {
            if keys.len() > 1 {
                report.problems.push(format!("{name} is in the bucket {} times: {}", keys.len(), keys.join(", ")));
            }
        }
        let stem = crate::sink::stem(file_name);
        let mut named = std::collections::BTreeSet::new();
        let local = if dir.exists() { manifests(dir, stem)? } else { Vec::new() };
        for manifest_file in local {
            let path = dir.join(&manifest_file);
            let manifest = read_manifest(&path)
                .map_err(|message| BucketError::Local { path: path.display().to_string(), message })?;
            let local_sha = hex_sha256(&super::read(&path)?);
            for (file, bytes, sha) in [
                (&manifest.segment, Some(manifest.bytes), manifest.sha256.as_str()),
                (&manifest_file, None, local_sha.as_str()),
            ] {
                let Some(key) = self.key(pipeline, stem, file) else { continue };
                named.insert(key.clone());
                let Some(&size) = sizes.get(&key) else {
                    report.problems.push(format!("{key}: not in the bucket (run `dm-handoff upload`)"));
                    continue;
                };
                if bytes.is_some_and(|b| b != size) {
                    report
                        .problems
                        .push(format!("{key}: {size} bytes in the bucket, the manifest says {}", manifest.bytes));
                    continue;
                }
                let location = Key::from(key.as_str());
                let err = |source| BucketError::Store { key: key.clone(), source };
                let body = self.store.get(&location).await.map_err(err)?.bytes().await.map_err(err)?;
                let found = hex_sha256(&body);
                if found != sha {
                    report.problems.push(format!("{key}: SHA-256 {found} in the bucket, {sha} expected"));
                }
            }
        }
        for key in sizes.keys() {
            if !named.contains(key) {
                report.problems.push(format!("{key}: in the bucket but named by no local manifest"));
            }
        }
        Ok(report)
    }
}
