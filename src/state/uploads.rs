//! The upload ledger (SPEC 9.2): one entry per object put in the bucket (`o` prefix, per pipeline and
//! local file name), written only after the bucket confirmed the object, so a restart knows what is
//! already there without listing the bucket.

use serde::{Deserialize, Serialize};

use super::keys::key;
use super::{encode, StateError, Store};

/// One object the bucket confirmed: under which key, how big, with which content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Uploaded {
    /// The object's key in the bucket (below the bucket, prefix included).
    pub key: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the object.
    pub sha256: String,
    /// Unix ms of the confirmation.
    pub at_ms: u64,
}

impl Store {
    /// What the ledger says about a pipeline's local file (a segment or a manifest), if it was uploaded.
    pub fn uploaded(&self, pipeline: &str, file: &str) -> Result<Option<Uploaded>, StateError> {
        let k = key(b'o', &[pipeline, file]);
        match self.db.get(&k).map_err(self.db_err())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| self.corrupt(&k, e))?)),
            None => Ok(None),
        }
    }

    /// Records a confirmed upload durably (flushed before it returns: the ledger is what a restart
    /// trusts).
    pub fn record_upload(&self, pipeline: &str, file: &str, u: &Uploaded) -> Result<(), StateError> {
        self.db.insert(key(b'o', &[pipeline, file]), encode("an upload", u)?).map_err(self.db_err())?;
        self.flush()
    }
}

impl Store {
    /// The last upload pass's error of a pipeline (`o` key with the pipeline alone), None after a clean
    /// one. The message names keys and files only.
    pub fn upload_error(&self, pipeline: &str) -> Result<Option<String>, StateError> {
        let k = key(b'o', &[pipeline]);
        Ok(self.db.get(&k).map_err(self.db_err())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets or clears a pipeline's last upload error.
    pub fn set_upload_error(&self, pipeline: &str, error: Option<&str>) -> Result<(), StateError> {
        let k = key(b'o', &[pipeline]);
        match error {
            Some(e) => self.db.insert(k, e.as_bytes()).map(drop),
            None => self.db.remove(k).map(drop),
        }
        .map_err(self.db_err())
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreOptions;
    use super::*;

    #[test]
    fn uploads_are_remembered_per_pipeline_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let u = Uploaded { key: "p/x/dt=2026-01-01/a.jsonl".into(), bytes: 3, sha256: "ab".into(), at_ms: 1 };
        assert_eq!(store.uploaded("x", "a.jsonl").unwrap(), None);
        store.record_upload("x", "a.jsonl", &u).unwrap();
        assert_eq!(store.uploaded("x", "a.jsonl").unwrap(), Some(u));
        assert_eq!(store.uploaded("y", "a.jsonl").unwrap(), None);
    }
}
