//! fjall (an LSM tree with a write-ahead journal) behind [`Backend`], built with the `fjall`
//! feature. Issue 17 asked for it to be measured beside sled, redb and the segment log as a
//! candidate default; it is kept behind `--backend fjall` for that comparison (figures in
//! BENCHMARKS.md, "Storage engines").
//!
//! Two keyspaces, as in the redb and sled engines: `history` keyed by (time, node id, key)
//! holding the postcard sample, `latest` keyed by the key string. A batch is one fjall write
//! batch (one journal append); [`Backend::flush`] persists the journal with fsync
//! (`PersistMode::SyncAll`), at most every `flush_ms` unless a durable acknowledgement waits.

use super::backend::{
    Backend, HistoryPage, StorageError, StoredSample, Summary, SyncClock, decode, encode, hist_key,
    latest_matching, literal_prefix, page_of, range_start,
};
use hypha_core::hlc::Ntp64;
use hypha_core::keyexpr::KeyExpr;
use hypha_core::wire::SampleKind;
use std::collections::HashMap;
use std::path::Path;

/// The segment-log-style answer for anything fjall reports: its error text.
fn fj(e: fjall::Error) -> StorageError {
    match e {
        fjall::Error::Io(e) => StorageError::Io(e),
        e => StorageError::Corrupt(format!("fjall: {e}")),
    }
}

/// The fjall engine.
pub struct FjallBackend {
    db: fjall::Database,
    latest: fjall::Keyspace,
    history: fjall::Keyspace,
    count: usize,
    keys: u64,
    bytes: u64,
    sync: SyncClock,
}

impl std::fmt::Debug for FjallBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FjallBackend({} samples)", self.count)
    }
}

impl FjallBackend {
    /// Opens (or creates) the database in `dir`; synced at most every `flush_ms`.
    pub fn open(dir: &Path, flush_ms: u64) -> Result<Self, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir)?;
        let db = fjall::Database::builder(dir)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let latest = db
            .keyspace("latest", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| open_err(e.to_string()))?;
        let history = db
            .keyspace("history", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| open_err(e.to_string()))?;
        // One pass over each keyspace at open, as the sled engine does.
        let (mut count, mut bytes, mut keys) = (0, 0, 0);
        for g in history.iter() {
            let v = g.value().map_err(fj)?;
            count += 1;
            bytes += decode(&v)?.payload.len() as u64;
        }
        for g in latest.iter() {
            let v = g.value().map_err(fj)?;
            keys += u64::from(decode(&v)?.kind == SampleKind::Put);
        }
        Ok(FjallBackend {
            db,
            latest,
            history,
            count,
            keys,
            bytes,
            sync: SyncClock::new(flush_ms),
        })
    }

    fn latest_of(&self, key: &str) -> Result<Option<StoredSample>, StorageError> {
        self.latest
            .get(key)
            .map_err(fj)?
            .map(|v| decode(&v))
            .transpose()
    }
}

impl Backend for FjallBackend {
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError> {
        Ok(self.store_batch(std::slice::from_ref(s))? == 1)
    }

    fn store_batch(&mut self, batch: &[StoredSample]) -> Result<usize, StorageError> {
        let mut wb = self.db.batch();
        // The latest value of each key this batch touched, as it will be after the commit.
        let mut latest: HashMap<&str, Option<StoredSample>> = HashMap::new();
        let (mut count, mut bytes, mut keys, mut newer) = (0usize, 0u64, 0i64, 0usize);
        for s in batch {
            let hk = hist_key(s);
            if !self.history.contains_key(&hk).map_err(fj)? {
                count += 1;
            }
            bytes += s.payload.len() as u64;
            let v = encode(s)?;
            wb.insert(&self.history, hk, v.clone());
            let old = match latest.get(&*s.key) {
                Some(l) => l.clone(),
                None => self.latest_of(&s.key)?,
            };
            if old.as_ref().is_none_or(|o| s.timestamp > o.timestamp) {
                let live = |x: Option<&StoredSample>| {
                    i64::from(x.is_some_and(|x| x.kind == SampleKind::Put))
                };
                keys += live(Some(s)) - live(old.as_ref());
                wb.insert(&self.latest, s.key.as_bytes(), v);
                latest.insert(&*s.key, Some(s.clone()));
                newer += 1;
            } else {
                latest.insert(&*s.key, old);
            }
        }
        wb.commit().map_err(fj)?;
        self.count += count;
        self.bytes += bytes;
        self.keys = self.keys.saturating_add_signed(keys);
        self.sync.written();
        Ok(newer)
    }

    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError> {
        if !key.is_wild() {
            return self
                .latest_of(key.as_str())
                .map(|v| v.into_iter().collect());
        }
        latest_matching(
            key,
            self.latest
                .prefix(literal_prefix(key))
                .map(|g| g.into_inner().map_err(fj)),
        )
    }

    fn history_page(
        &self,
        key: &KeyExpr<'_>,
        after: Option<&[u8]>,
        from: Ntp64,
        to: Ntp64,
        limit: usize,
        scan: usize,
    ) -> Result<HistoryPage, StorageError> {
        let range = self
            .history
            .range::<Vec<u8>, _>((range_start(after, from), std::ops::Bound::Unbounded));
        let rows = range.map(|g| {
            let (k, v) = g.into_inner().map_err(fj)?;
            Ok((k, decode(&v)?))
        });
        page_of(rows, key, to, limit, scan)
    }

    fn prune(
        &mut self,
        before: Option<Ntp64>,
        keep: Option<usize>,
        tombstones_before: Option<Ntp64>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        let mut wb = self.db.batch();
        let mut count = self.count;
        for g in self.history.iter() {
            let (k, v) = g.into_inner().map_err(fj)?;
            let old =
                before.is_some_and(|b| k.get(..8).is_some_and(|t| t < &b.0.to_be_bytes()[..]));
            let over = keep.is_some_and(|keep| count > keep);
            if !(old || over) {
                break;
            }
            self.bytes = self
                .bytes
                .saturating_sub(decode(&v).map_or(0, |s| s.payload.len() as u64));
            wb.remove(&self.history, k);
            count = count.saturating_sub(1);
            n += 1;
        }
        if let Some(t) = tombstones_before {
            for g in self.latest.iter() {
                let (k, v) = g.into_inner().map_err(fj)?;
                let s = decode(&v)?;
                if s.kind == SampleKind::Delete && s.timestamp.time < t {
                    wb.remove(&self.latest, k);
                    n += 1;
                }
            }
        }
        wb.commit().map_err(fj)?;
        self.count = count;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if self.sync.unsynced() {
            self.db.persist(fjall::PersistMode::SyncAll).map_err(fj)?;
            self.sync.synced();
        }
        Ok(())
    }

    fn flush_due(&self) -> bool {
        self.sync.due()
    }

    fn history_len(&self) -> usize {
        self.count
    }

    fn summary(&self) -> Summary {
        let oldest = self
            .history
            .first_key_value()
            .and_then(|g| g.value().ok())
            .and_then(|v| decode(&v).ok())
            .map(|s| s.timestamp);
        Summary {
            keys: self.keys,
            samples: self.count as u64,
            bytes: self.bytes,
            oldest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypha_core::hlc::{Ntp64, Timestamp};
    use hypha_core::id::NodeId;

    /// A flipped byte inside the written part of fjall's journal: the store is refused, with
    /// the path, instead of read with a hole (issue 17's corruption probe).
    #[test]
    fn a_damaged_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = FjallBackend::open(dir.path(), 100).unwrap();
            let batch: Vec<StoredSample> = (0..20_000u64)
                .map(|i| StoredSample {
                    key: format!("k/{}", i % 100).into(),
                    kind: SampleKind::Put,
                    payload: vec![(i % 251) as u8; 64].into(),
                    timestamp: Timestamp {
                        time: Ntp64(i + 1),
                        id: NodeId::from_u128(1),
                    },
                    encoding: None,
                })
                .collect();
            for c in batch.chunks(512) {
                b.store_batch(c).unwrap();
            }
            b.flush().unwrap();
        }
        assert_eq!(
            FjallBackend::open(dir.path(), 100).unwrap().history_len(),
            20_000
        );
        // 20,000 samples of 64 B: the first ~2 MB of the (preallocated) journal are written.
        let jnl = dir.path().join("0.jnl");
        let mut data = std::fs::read(&jnl).unwrap();
        data[100_000] ^= 0xff;
        std::fs::write(&jnl, data).unwrap();
        match FjallBackend::open(dir.path(), 100) {
            Err(StorageError::Open { path, reason }) => {
                assert_eq!(path, dir.path());
                assert!(reason.contains("Checksum"), "{reason}");
            }
            Err(e) => panic!("refused, but not as Open: {e}"),
            Ok(b) => panic!("opened a damaged journal: {} samples", b.history_len()),
        }
    }
}
