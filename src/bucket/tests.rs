use std::collections::BTreeMap;
use std::path::Path;

use object_store::local::LocalFileSystem;

use super::*;
use crate::sink::{Manifest, SCHEMA_VERSION};
use crate::state::StoreOptions;

const SEG: &str = "dm.20260102T030405Z.000001.jsonl";
const MAN: &str = "dm.20260102T030405Z.000001.manifest.json";

/// A closed segment with its manifest, as the finisher leaves them.
fn closed_segment(dir: &Path, body: &[u8]) {
    std::fs::write(dir.join(SEG), body).unwrap();
    let m = Manifest {
        segment: SEG.into(),
        records: 1,
        bytes: body.len() as u64,
        sha256: hex_sha256(body),
        kinds: BTreeMap::new(),
        first_created_at: None,
        last_created_at: None,
        schema_version: SCHEMA_VERSION,
    };
    std::fs::write(dir.join(MAN), serde_json::to_vec(&m).unwrap()).unwrap();
}

struct World {
    out: tempfile::TempDir,
    root: tempfile::TempDir,
    state_dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            out: tempfile::tempdir().unwrap(),
            root: tempfile::tempdir().unwrap(),
            state_dir: tempfile::tempdir().unwrap(),
        };
        closed_segment(w.out.path(), b"{\"kind\":\"dm_message\"}\n");
        w
    }
    fn bucket(&self) -> Bucket {
        Bucket::new(Arc::new(LocalFileSystem::new_with_prefix(self.root.path()).unwrap()), "fleet/a")
    }
    fn object(&self, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join("fleet/a/p/dt=2026-01-02").join(file)).ok()
    }
}

#[test]
fn keys_are_the_prefix_pipeline_close_day_and_name() {
    let b = Bucket::new(Arc::new(LocalFileSystem::new()), "/fleet/a/");
    assert_eq!(b.key("p", "dm", SEG).as_deref(), Some("fleet/a/p/dt=2026-01-02/dm.20260102T030405Z.000001.jsonl"));
    assert_eq!(
        b.key("p", "dm", MAN).as_deref(),
        Some("fleet/a/p/dt=2026-01-02/dm.20260102T030405Z.000001.manifest.json")
    );
    // A compressed segment keeps its extension in its key.
    assert_eq!(
        b.key("p", "dm", "dm.20260102T030405Z.000002.jsonl.zst").as_deref(),
        Some("fleet/a/p/dt=2026-01-02/dm.20260102T030405Z.000002.jsonl.zst")
    );
    // The active file and temporaries have no key: they are never uploaded.
    assert_eq!(b.key("p", "dm", "dm.jsonl"), None);
    assert_eq!(b.key("p", "dm", &format!(".{SEG}.tmp")), None);
    let bare = Bucket::new(Arc::new(LocalFileSystem::new()), "");
    assert_eq!(bare.key("p", "dm", SEG).as_deref(), Some("p/dt=2026-01-02/dm.20260102T030405Z.000001.jsonl"));
}

#[tokio::test]
async fn segment_then_manifest_once_and_a_lost_ledger_finds_them_there() {
    let w = World::new();
    let state = Store::open(w.state_dir.path(), StoreOptions::default()).unwrap();
    let first = w.bucket().drain(&state, "p", w.out.path(), "dm.jsonl", false).await.unwrap();
    assert_eq!((first.segments_done, first.objects_put, first.already_there), (1, 2, 0));
    assert_eq!(w.object(SEG).unwrap(), std::fs::read(w.out.path().join(SEG)).unwrap());
    assert_eq!(w.object(MAN).unwrap(), std::fs::read(w.out.path().join(MAN)).unwrap());
    let ledger = state.uploaded("p", SEG).unwrap().unwrap();
    assert_eq!(ledger.key, "fleet/a/p/dt=2026-01-02/dm.20260102T030405Z.000001.jsonl");

    let again = w.bucket().drain(&state, "p", w.out.path(), "dm.jsonl", false).await.unwrap();
    assert_eq!((again.segments_done, again.objects_put, again.already_there), (1, 0, 0));
    drop(state);

    // A state without the ledger (a crash between the put and the record): same content counts as uploaded.
    let fresh = tempfile::tempdir().unwrap();
    let state = Store::open(fresh.path(), StoreOptions::default()).unwrap();
    let lost = w.bucket().drain(&state, "p", w.out.path(), "dm.jsonl", false).await.unwrap();
    assert_eq!((lost.segments_done, lost.objects_put, lost.already_there), (1, 0, 2));
}

#[tokio::test]
async fn other_content_under_the_key_is_refused_and_kept() {
    let w = World::new();
    let theirs = w.root.path().join("fleet/a/p/dt=2026-01-02");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join(SEG), b"someone else's\n").unwrap();
    let state = Store::open(w.state_dir.path(), StoreOptions::default()).unwrap();
    let err = w.bucket().drain(&state, "p", w.out.path(), "dm.jsonl", false).await.unwrap_err();
    assert!(matches!(err, BucketError::Conflict { .. }), "{err}");
    assert!(!err.to_string().contains("dm_message"), "no content in the message: {err}");
    assert_eq!(w.object(SEG).unwrap(), b"someone else's\n");
    assert_eq!(w.object(MAN), None, "no manifest for a segment that is not ours");
    assert_eq!(state.uploaded("p", SEG).unwrap(), None);
}

#[tokio::test]
async fn delete_local_removes_the_segment_after_its_manifest_and_keeps_the_manifest() {
    let w = World::new();
    let state = Store::open(w.state_dir.path(), StoreOptions::default()).unwrap();
    let done = w.bucket().drain(&state, "p", w.out.path(), "dm.jsonl", true).await.unwrap();
    assert_eq!(done.segments_done, 1);
    assert!(!w.out.path().join(SEG).exists());
    assert!(w.out.path().join(MAN).exists());
    assert!(w.object(SEG).is_some() && w.object(MAN).is_some());
    // The next pass is satisfied by the ledger; the missing local segment is no error.
    assert_eq!(w.bucket().drain(&state, "p", w.out.path(), "dm.jsonl", true).await.unwrap().segments_done, 1);
}
