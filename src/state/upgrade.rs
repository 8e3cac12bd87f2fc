//! Bringing a state written by an earlier version to the current layout, on open.

use super::keys::{padded_id, stored_id, HISTORY_KINDS};
use super::{ConvState, StateError, Store, FORMAT};

impl Store {
    /// Rewrites a version-1 state (numeric IDs unpadded) to the current layout. Each chunk is one atomic
    /// batch and already-padded keys are left alone, so an interrupted upgrade simply continues next time.
    pub(super) fn upgrade(&self) -> Result<(), StateError> {
        match self.get_json::<u64>(b"v")? {
            Some(FORMAT) => return Ok(()),
            Some(v) => {
                return Err(StateError::Corrupt {
                    dir: self.dir.clone(),
                    key: "v".into(),
                    detail: format!("layout version {v} is from a newer dm-handoff; upgrade this one"),
                })
            }
            None => {}
        }
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        let mut upgraded = 0u64;
        for kv in self.db.scan_prefix([b's']) {
            let (k, _) = kv.map_err(self.db_err())?;
            let id_start = k.iter().rposition(|b| *b == 0).map_or(k.len(), |i| i + 1);
            let Ok(id) = std::str::from_utf8(&k[id_start..]) else { continue };
            let stored = stored_id(id);
            if stored == id {
                continue;
            }
            let mut new_key = k[..id_start].to_vec();
            new_key.extend_from_slice(stored.as_bytes());
            batch.remove(k);
            batch.insert(new_key, &[][..]);
            pending += 1;
            upgraded += 1;
            if pending == 10_000 {
                self.db.apply_batch(std::mem::take(&mut batch)).map_err(self.db_err())?;
                pending = 0;
            }
        }
        self.db.apply_batch(batch).map_err(self.db_err())?;
        // Version 1 had no covered_from. For a conversation whose backfill is done, every page at or below
        // hwm was committed, so its oldest exact history key starts a gap-free range; then fold it at once.
        let mut folded = 0;
        for kv in self.db.scan_prefix([b'c']) {
            let (k, v) = kv.map_err(self.db_err())?;
            let mut st: ConvState = serde_json::from_slice(&v).map_err(|e| self.corrupt(&k, e))?;
            let mut parts = k[2..].splitn(2, |b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            let (Some(pipeline), Some(conv)) = (parts.next(), parts.next()) else { continue };
            if !st.backfill_done || st.hwm.is_none() || st.covered_from.is_some() {
                continue;
            }
            let mut oldest = Vec::new();
            for kind in HISTORY_KINDS {
                let (from, to) = self.history_bounds(&pipeline, &conv, kind, 0, u64::MAX);
                if let Some(kv) = self.db.range(from..=to).next() {
                    oldest.extend(padded_id(&kv.map_err(self.db_err())?.0));
                }
            }
            let Some(oldest) = oldest.into_iter().min() else { continue };
            st.covered_from = Some(oldest.to_string());
            self.db.insert(&k, super::encode("a conversation", &st)?).map_err(self.db_err())?;
            folded += self.fold(&pipeline, &conv)?;
        }
        self.db.insert(b"v", super::encode("the layout version", &FORMAT)?).map_err(self.db_err())?;
        self.db.flush().map_err(self.db_err())?;
        if upgraded > 0 || folded > 0 {
            tracing::info!(dir = %self.dir.display(), keys = upgraded, folded, "state upgraded to layout {FORMAT}");
        }
        Ok(())
    }
}
