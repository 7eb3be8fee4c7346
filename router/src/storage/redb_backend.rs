//! The redb backend (the embedded default since issue 17): a single file, copy-on-write B-trees
//! with checksums, commits that are atomic and crash safe.
//!
//! Tables:
//!
//! ```text
//! history    [time u64 BE][node id 16 B]  ->  Rec { key id, kind, encoding, payload }
//! latest     key string                  ->  [time u64 BE][node id 16 B] Rec
//! keys       key string                  ->  key id (u32)
//! meta       "count" | "bytes" | "live"  ->  u64 (kept in the same commit as the samples)
//! ```
//!
//! The history record names its key by a small id, not by the key string (a store of 100 keys
//! spends 1 byte per sample on it). A sample's HLC timestamp is unique per node, so
//! `(time, node id)` identifies it: storing the same sample twice (a retry) overwrites it.
//!
//! **Durability.** A batch is one write transaction. It is committed durably (fsync,
//! `Durability::Immediate`) when `flush_ms` have passed since the last durable commit, and
//! otherwise without sync (`Durability::None`: visible to readers, rolled back by a crash to the
//! last durable commit); the storage's writer calls [`Backend::flush`] every `flush_ms` while
//! there are unsynced commits. So a sample stored more than `flush_ms` before a crash is on disk,
//! as with sled.

use super::backend::{
    Backend, HistoryPage, StorageError, StoredSample, Summary, SyncClock, literal_prefix, matches,
};
use bytes::Bytes;
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::id::NodeId;
use hypha_core::keyexpr::KeyExpr;
use hypha_core::wire::SampleKind;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HISTORY: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("history");
const LATEST: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("latest");
const KEYS: TableDefinition<'_, &str, u32> = TableDefinition::new("keys");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The file in a storage's directory.
pub const FILE: &str = "store.redb";

/// redb's page cache.
const CACHE_BYTES: usize = 16 << 20;

/// A stored record (postcard: varints, the payload borrowed when decoding).
#[derive(Serialize, Deserialize)]
struct Rec<'a> {
    key: u32,
    kind: SampleKind,
    #[serde(borrow)]
    encoding: Option<&'a str>,
    #[serde(borrow)]
    payload: &'a [u8],
}

fn ts_bytes(t: &Timestamp) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&t.time.0.to_be_bytes());
    k[8..].copy_from_slice(&t.id.0);
    k
}

fn ts_of(b: &[u8]) -> Result<Timestamp, StorageError> {
    let (Some(t), Some(id)) = (b.get(..8), b.get(8..24)) else {
        return Err(StorageError::Corrupt("short history key".into()));
    };
    let mut tb = [0u8; 8];
    tb.copy_from_slice(t);
    let mut ib = [0u8; 16];
    ib.copy_from_slice(id);
    Ok(Timestamp {
        time: Ntp64(u64::from_be_bytes(tb)),
        id: NodeId(ib),
    })
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

/// Samples in a redb file (`<dir>/store.redb`).
pub struct RedbBackend {
    db: Option<Database>,
    file: PathBuf,
    /// Key string -> id, and id -> key string.
    ids: HashMap<String, u32>,
    names: Vec<Arc<str>>,
    count: u64,
    bytes: u64,
    live: u64,
    /// Commits made without sync since the last durable one, and when that was.
    sync: SyncClock,
    /// Samples that a reopen after a failed write found missing (unsynced commits that redb
    /// rolled back), not yet reported to the writer.
    rolled_back: u64,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RedbBackend({}, {} samples)",
            self.file.display(),
            self.count
        )
    }
}

impl RedbBackend {
    /// Opens (or creates) `<dir>/store.redb`. A file that is not a redb store, or whose
    /// checksums do not hold, is [`StorageError::Open`] naming the file, and so is one that
    /// takes longer than 30 s to open or makes redb panic (redb 2.6 asserts on some damaged
    /// headers): the open runs in a thread of its own.
    pub fn open(dir: &Path, flush_ms: u64) -> Result<Self, StorageError> {
        let file = dir.join(FILE);
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.to_path_buf();
        let open_err = |reason: String| StorageError::Open {
            path: file.clone(),
            reason,
        };
        std::thread::Builder::new()
            .name("hypha-redb-open".into())
            .spawn(move || {
                let _ = tx.send(Self::open_now(&d, flush_ms));
            })
            .map_err(|e| open_err(format!("cannot start the opening thread: {e}")))?;
        let deadline = super::backend::OPEN_DEADLINE;
        match rx.recv_timeout(deadline) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(open_err(
                "redb panicked while reading it: the file is damaged".into(),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(open_err(format!(
                "still opening after {deadline:?}: the file is probably damaged"
            ))),
        }
    }

    fn open_now(dir: &Path, flush_ms: u64) -> Result<Self, StorageError> {
        let file = dir.join(FILE);
        let open_err = |reason: String| StorageError::Open {
            path: file.clone(),
            reason,
        };
        let mut db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
            .map_err(|e| open_err(e.to_string()))?;
        // Every page's checksum, at open: a damaged file is refused here, not found later.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                return Err(open_err(
                    "its checksums did not hold: redb repaired it, so samples after the \
                     damage may be gone; restart to use it as it is now"
                        .into(),
                ));
            }
            Err(e) => return Err(open_err(format!("integrity check failed: {e}"))),
        }
        let mut b = RedbBackend {
            db: Some(db),
            file: file.clone(),
            ids: HashMap::new(),
            names: Vec::new(),
            count: 0,
            bytes: 0,
            live: 0,
            sync: SyncClock::new(flush_ms),
            rolled_back: 0,
        };
        b.load().map_err(|e| open_err(e.to_string()))?;
        Ok(b)
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db
            .as_ref()
            .ok_or_else(|| StorageError::Config("the store is closed".into()))
    }

    /// Creates the tables and reads the key ids and counters.
    fn load(&mut self) -> Result<(), StorageError> {
        let db = self.db()?;
        let w = db.begin_write().map_err(corrupt)?;
        {
            w.open_table(HISTORY).map_err(corrupt)?;
            w.open_table(LATEST).map_err(corrupt)?;
            w.open_table(KEYS).map_err(corrupt)?;
            w.open_table(META).map_err(corrupt)?;
        }
        w.commit().map_err(corrupt)?;
        let r = db.begin_read().map_err(corrupt)?;
        let keys = r.open_table(KEYS).map_err(corrupt)?;
        let mut names: Vec<(u32, String)> = Vec::new();
        for kv in keys.iter().map_err(corrupt)? {
            let (k, v) = kv.map_err(corrupt)?;
            names.push((v.value(), k.value().to_string()));
        }
        let meta = r.open_table(META).map_err(corrupt)?;
        let get = |k: &str| -> Result<u64, StorageError> {
            Ok(meta.get(k).map_err(corrupt)?.map_or(0, |v| v.value()))
        };
        let (count, bytes, live) = (get("count")?, get("bytes")?, get("live")?);
        let history_len = r
            .open_table(HISTORY)
            .map_err(corrupt)?
            .len()
            .map_err(corrupt)?;
        if history_len != count {
            return Err(StorageError::Corrupt(format!(
                "the history holds {history_len} samples, its counter says {count}"
            )));
        }
        names.sort();
        self.names = vec![Arc::from(""); names.len()];
        for (id, name) in names {
            let slot = self
                .names
                .get_mut(id as usize)
                .ok_or_else(|| StorageError::Corrupt(format!("key id {id} out of range")))?;
            *slot = Arc::from(name.as_str());
            self.ids.insert(name, id);
        }
        (self.count, self.bytes, self.live) = (count, bytes, live);
        Ok(())
    }

    fn decode(&self, t: Timestamp, v: &[u8]) -> Result<StoredSample, StorageError> {
        let r: Rec<'_> = postcard::from_bytes(v).map_err(corrupt)?;
        let key = self
            .names
            .get(r.key as usize)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown key id {}", r.key)))?;
        Ok(StoredSample {
            key: key.clone(),
            kind: r.kind,
            payload: Bytes::copy_from_slice(r.payload),
            timestamp: t,
            encoding: r.encoding.map(Arc::from),
        })
    }

    fn decode_latest(&self, v: &[u8]) -> Result<StoredSample, StorageError> {
        let t = ts_of(v)?;
        self.decode(t, v.get(24..).unwrap_or_default())
    }

    /// Stores `batch` in one transaction.
    fn write_batch(&mut self, batch: &[StoredSample]) -> Result<usize, StorageError> {
        let durable = self.sync.interval_passed();
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| StorageError::Config("closed".into()))?;
        let mut w = db.begin_write().map_err(io_or_corrupt)?;
        w.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        let (mut count, mut bytes, mut live) = (self.count, self.bytes, self.live);
        let mut new_names: Vec<Arc<str>> = Vec::new();
        let mut changed = 0;
        {
            let mut history = w.open_table(HISTORY).map_err(io_or_corrupt)?;
            let mut latest = w.open_table(LATEST).map_err(io_or_corrupt)?;
            let mut keys = w.open_table(KEYS).map_err(io_or_corrupt)?;
            let mut rec = Vec::with_capacity(256);
            for s in batch {
                let id = match self.ids.get(&*s.key) {
                    Some(id) => *id,
                    None => {
                        let id = (self.names.len() + new_names.len()) as u32;
                        keys.insert(&*s.key, id).map_err(io_or_corrupt)?;
                        self.ids.insert(s.key.to_string(), id);
                        new_names.push(s.key.clone());
                        id
                    }
                };
                rec.clear();
                rec.extend_from_slice(&ts_bytes(&s.timestamp));
                let r = Rec {
                    key: id,
                    kind: s.kind,
                    encoding: s.encoding.as_deref(),
                    payload: &s.payload,
                };
                let enc = postcard::to_extend(&r, rec).map_err(corrupt)?;
                rec = enc;
                let hk = ts_bytes(&s.timestamp);
                let old = history
                    .insert(&hk[..], rec.get(24..).unwrap_or_default())
                    .map_err(io_or_corrupt)?;
                match old {
                    None => count += 1,
                    Some(old) => {
                        let p = postcard::from_bytes::<Rec<'_>>(old.value())
                            .map_or(0, |r| r.payload.len() as u64);
                        bytes = bytes.saturating_sub(p);
                    }
                }
                bytes += s.payload.len() as u64;
                let existing: Option<(Timestamp, SampleKind)> =
                    match latest.get(&*s.key).map_err(io_or_corrupt)? {
                        Some(v) => {
                            let b = v.value();
                            let r: Rec<'_> = postcard::from_bytes(b.get(24..).unwrap_or_default())
                                .map_err(corrupt)?;
                            Some((ts_of(b)?, r.kind))
                        }
                        None => None,
                    };
                let replace = existing.is_none_or(|(t, _)| s.timestamp > t);
                if replace {
                    let was_live = existing.is_some_and(|e| e.1 == SampleKind::Put);
                    let is_live = s.kind == SampleKind::Put;
                    match (was_live, is_live) {
                        (false, true) => live += 1,
                        (true, false) => live = live.saturating_sub(1),
                        _ => {}
                    }
                    latest.insert(&*s.key, &rec[..]).map_err(io_or_corrupt)?;
                    changed += 1;
                }
            }
            let mut meta = w.open_table(META).map_err(io_or_corrupt)?;
            meta.insert("count", count).map_err(io_or_corrupt)?;
            meta.insert("bytes", bytes).map_err(io_or_corrupt)?;
            meta.insert("live", live).map_err(io_or_corrupt)?;
        }
        match w.commit() {
            Ok(()) => {
                self.names.extend(new_names);
                (self.count, self.bytes, self.live) = (count, bytes, live);
                if durable {
                    self.sync.synced();
                } else {
                    self.sync.written();
                }
                Ok(changed)
            }
            Err(e) => {
                for n in new_names {
                    self.ids.remove(&*n);
                }
                Err(io_or_corrupt(e))
            }
        }
    }

    /// After an I/O error redb refuses every further operation: reopen the file (redb repairs
    /// it to its last commit).
    fn reopen(&mut self) -> Result<(), StorageError> {
        self.db = None;
        let before = self.count;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&self.file)
            .map_err(|e| StorageError::Open {
                path: self.file.clone(),
                reason: e.to_string(),
            })?;
        self.db = Some(db);
        self.ids.clear();
        self.names.clear();
        self.load()?;
        // A failed write leaves the file at its last durable commit: what was committed since
        // without a sync is gone. Said, and counted by the writer.
        if self.count < before {
            self.rolled_back += before - self.count;
            tracing::error!(
                "{}: {} samples committed since the last sync were rolled back by the failed write",
                self.file.display(),
                before - self.count
            );
        }
        // What the reopened file holds is what is on disk; the next commit is durable as
        // soon as the interval since the last sync has passed, as before the failure.
        self.sync.discarded();
        Ok(())
    }
}

/// redb's errors: I/O (a full disk) kept apart from corruption.
fn io_or_corrupt(e: impl Into<redb::Error>) -> StorageError {
    match e.into() {
        redb::Error::Io(e) => StorageError::Io(e),
        redb::Error::PreviousIo => StorageError::Io(std::io::Error::other(
            "an earlier write failed; reopening the store",
        )),
        e => StorageError::Corrupt(e.to_string()),
    }
}

impl Backend for RedbBackend {
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError> {
        Ok(self.store_batch(std::slice::from_ref(s))? > 0)
    }

    fn take_rolled_back(&mut self) -> u64 {
        std::mem::take(&mut self.rolled_back)
    }

    fn store_batch(&mut self, batch: &[StoredSample]) -> Result<usize, StorageError> {
        if self.db.is_none() {
            self.reopen()?;
        }
        match self.write_batch(batch) {
            Err(e @ StorageError::Io(_)) => {
                // The next batch reopens the file (the last commit is what it holds).
                self.db = None;
                Err(e)
            }
            r => r,
        }
    }

    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError> {
        let r = self.db()?.begin_read().map_err(io_or_corrupt)?;
        let t = r.open_table(LATEST).map_err(io_or_corrupt)?;
        if !key.is_wild() {
            return t
                .get(key.as_str())
                .map_err(io_or_corrupt)?
                .map(|v| self.decode_latest(v.value()))
                .into_iter()
                .collect();
        }
        let prefix = literal_prefix(key);
        let mut out = Vec::new();
        for kv in t.range(prefix.as_str()..).map_err(io_or_corrupt)? {
            let (k, v) = kv.map_err(io_or_corrupt)?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            if matches(key, k) {
                out.push(self.decode_latest(v.value())?);
            }
        }
        Ok(out)
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
        let r = self.db()?.begin_read().map_err(io_or_corrupt)?;
        let t = r.open_table(HISTORY).map_err(io_or_corrupt)?;
        let lo = from.0.to_be_bytes();
        let range = match after {
            Some(a) => t.range::<&[u8]>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => t.range::<&[u8]>(&lo[..]..),
        }
        .map_err(io_or_corrupt)?;
        let mut page = HistoryPage::default();
        let mut last: Option<Vec<u8>> = None;
        for (seen, kv) in range.enumerate() {
            let (k, v) = kv.map_err(io_or_corrupt)?;
            let ts = ts_of(k.value())?;
            if ts.time > to {
                return Ok(page);
            }
            if seen >= scan.max(1) || page.samples.len() >= limit {
                page.next = last;
                return Ok(page);
            }
            let s = self.decode(ts, v.value())?;
            if matches(key, &s.key) {
                page.samples.push(s);
            }
            last = Some(k.value().to_vec());
        }
        Ok(page)
    }

    fn prune(
        &mut self,
        before: Option<Ntp64>,
        keep: Option<usize>,
        tombstones_before: Option<Ntp64>,
    ) -> Result<usize, StorageError> {
        if self.db.is_none() {
            self.reopen()?;
        }
        let db = self.db()?;
        let w = db.begin_write().map_err(io_or_corrupt)?;
        let (mut count, mut bytes) = (self.count, self.bytes);
        let mut n = 0;
        {
            let mut history = w.open_table(HISTORY).map_err(io_or_corrupt)?;
            loop {
                let (k, p) = {
                    let Some((k, v)) = history.first().map_err(io_or_corrupt)? else {
                        break;
                    };
                    let p = postcard::from_bytes::<Rec<'_>>(v.value())
                        .map_or(0, |r| r.payload.len() as u64);
                    (k.value().to_vec(), p)
                };
                let old = before.is_some_and(|b| ts_of(&k).is_ok_and(|t| t.time < b));
                let over = keep.is_some_and(|keep| count > keep as u64);
                if !(old || over) {
                    break;
                }
                history.remove(&k[..]).map_err(io_or_corrupt)?;
                bytes = bytes.saturating_sub(p);
                count = count.saturating_sub(1);
                n += 1;
            }
            if let Some(t) = tombstones_before {
                let mut latest = w.open_table(LATEST).map_err(io_or_corrupt)?;
                let mut gone = Vec::new();
                for kv in latest.iter().map_err(io_or_corrupt)? {
                    let (k, v) = kv.map_err(io_or_corrupt)?;
                    let s = self.decode_latest(v.value())?;
                    if s.kind == SampleKind::Delete && s.timestamp.time < t {
                        gone.push(k.value().to_string());
                    }
                }
                for k in gone {
                    latest.remove(k.as_str()).map_err(io_or_corrupt)?;
                    n += 1;
                }
            }
            let mut meta = w.open_table(META).map_err(io_or_corrupt)?;
            meta.insert("count", count).map_err(io_or_corrupt)?;
            meta.insert("bytes", bytes).map_err(io_or_corrupt)?;
        }
        if n == 0 {
            w.abort().map_err(io_or_corrupt)?;
            return Ok(0);
        }
        w.commit().map_err(io_or_corrupt)?;
        self.sync.written();
        (self.count, self.bytes) = (count, bytes);
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if !self.sync.unsynced() {
            return Ok(());
        }
        if self.db.is_none() {
            self.reopen()?;
            return Ok(());
        }
        let db = self.db()?;
        let mut w = db.begin_write().map_err(io_or_corrupt)?;
        w.set_durability(Durability::Immediate);
        w.commit().map_err(io_or_corrupt)?;
        self.sync.synced();
        Ok(())
    }

    fn flush_due(&self) -> bool {
        self.sync.due()
    }

    fn history_len(&self) -> usize {
        self.count as usize
    }

    fn summary(&self) -> Summary {
        let oldest = self.db().ok().and_then(|db| {
            let r = db.begin_read().ok()?;
            let t = r.open_table(HISTORY).ok()?;
            let (k, _) = t.first().ok()??;
            ts_of(k.value()).ok()
        });
        Summary {
            keys: self.live,
            samples: self.count,
            bytes: self.bytes,
            oldest,
        }
    }
}
