//! The storage `Backend` trait and its two implementations: memory and sled.
//!
//! A backend keeps two things: the **latest** sample per key (last writer wins by timestamp,
//! deletes kept as tombstones so that a late, older put cannot resurrect a deleted key), and the
//! **history**: every sample, indexed by timestamp, for replay. It is synchronous and knows
//! nothing of tokio.

use bytes::Bytes;
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::keyexpr::KeyExpr;
use hypha_core::wire::SampleKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A stored sample. Every stored sample has a timestamp (the storage stamps those that arrive
/// without one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSample {
    /// Its key (shared with the sample it came from, and among the samples a log reads).
    pub key: Arc<str>,
    /// Put or delete (a tombstone).
    pub kind: SampleKind,
    /// Its payload (shared: ingest stores the received bytes without a copy, and the log's
    /// replay hands out slices of what it read).
    pub payload: Bytes,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Its encoding.
    pub encoding: Option<Arc<str>>,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The sled database failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode (corruption).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The disk refused a write (full, or failing): nothing of the batch was stored.
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The store on disk could not be opened: corrupt, unreadable, or still opening after
    /// the deadline (a damaged log can keep sled recovering forever).
    #[error(
        "cannot open the store in {path}: {reason} (move the directory away to start empty, or restore it from a backup)"
    )]
    Open {
        /// The store's directory.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The node refused a declaration.
    #[error(transparent)]
    Declare(#[from] crate::DeclareError),
}

/// Where samples are kept.
pub trait Backend: Send {
    /// Records `s` in the history, and as the latest value of its key unless a newer sample (or
    /// tombstone) is already there. Returns whether the latest value changed.
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError>;
    /// Stores a batch (one transaction where the engine has them: group commit). Returns how
    /// many latest values changed. On `Err` nothing of the batch may have been stored.
    fn store_batch(&mut self, batch: &[StoredSample]) -> Result<usize, StorageError> {
        let mut changed = 0;
        for s in batch {
            changed += usize::from(self.store(s)?);
        }
        Ok(changed)
    }
    /// The latest sample of every key matching `key`, tombstones included, in key order.
    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError>;
    /// One page of a history scan: samples matching `key` with a timestamp in `[from, to]`, in
    /// timestamp order, starting after the record `after` (a cursor from a previous page; `None`
    /// starts at `from`), at most `limit` of them, looking at most at `scan` records. The page's
    /// `next` is the cursor to continue from, `None` when the window is exhausted. A storage
    /// answers a replay page by page, so that it never holds the whole window in memory and
    /// ingest goes on between pages.
    fn history_page(
        &self,
        key: &KeyExpr<'_>,
        after: Option<&[u8]>,
        from: Ntp64,
        to: Ntp64,
        limit: usize,
        scan: usize,
    ) -> Result<HistoryPage, StorageError>;
    /// Samples matching `key` with a timestamp in `[from, to]`, in timestamp order, at most
    /// `limit` (all pages of [`history_page`](Self::history_page) collected: for tests and small
    /// windows).
    fn history(
        &self,
        key: &KeyExpr<'_>,
        from: Ntp64,
        to: Ntp64,
        limit: usize,
    ) -> Result<Vec<StoredSample>, StorageError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while out.len() < limit {
            let page =
                self.history_page(key, after.as_deref(), from, to, limit - out.len(), 4096)?;
            out.extend(page.samples);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(out)
    }
    /// Drops history older than `before` and beyond the newest `keep` samples, and tombstones
    /// older than `tombstones_before`. Returns how many records were dropped.
    fn prune(
        &mut self,
        before: Option<Ntp64>,
        keep: Option<usize>,
        tombstones_before: Option<Ntp64>,
    ) -> Result<usize, StorageError>;
    /// Makes everything stored so far durable (no-op in memory).
    fn flush(&mut self) -> Result<(), StorageError>;
    /// Whether the storage's writer should call [`flush`](Self::flush) now (an engine that
    /// does not sync on its own timer says so once its flush interval has passed).
    fn flush_due(&self) -> bool {
        false
    }
    /// Samples in the history.
    fn history_len(&self) -> usize;
    /// Samples the store reported as stored that it has lost since (an engine that rolls
    /// back unsynced commits when it recovers from a failed write); reported once.
    fn take_rolled_back(&mut self) -> u64 {
        0
    }
    /// What the admin space shows of this store (kept up to date by the backend, so cheap).
    fn summary(&self) -> Summary {
        Summary {
            samples: self.history_len() as u64,
            ..Summary::default()
        }
    }
}

/// One page of a history scan ([`Backend::history_page`]).
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// The matching samples of this page, in timestamp order.
    pub samples: Vec<StoredSample>,
    /// Where the next page starts (exclusive), `None` when the window is exhausted.
    pub next: Option<Vec<u8>>,
}

/// A backend's contents in numbers (`@/<id>/storages/**`, issue 14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Keys whose latest value is a put (tombstones not counted).
    pub keys: u64,
    /// Samples in the history.
    pub samples: u64,
    /// Payload bytes in the history.
    pub bytes: u64,
    /// The oldest sample's timestamp in the history.
    pub oldest: Option<Timestamp>,
}

/// How the live-key count changes when `new` replaces `old` as a key's latest value.
fn live_delta(old: Option<&StoredSample>, new: &StoredSample) -> i64 {
    let live = |s: Option<&StoredSample>| i64::from(s.is_some_and(|s| s.kind == SampleKind::Put));
    live(Some(new)) - live(old)
}

/// History index: time, then node id, then key (the same event stored twice is one record).
pub(super) fn hist_key(s: &StoredSample) -> Vec<u8> {
    let mut k = Vec::with_capacity(24 + s.key.len());
    k.extend_from_slice(&s.timestamp.time.0.to_be_bytes());
    k.extend_from_slice(&s.timestamp.id.0);
    k.extend_from_slice(s.key.as_bytes());
    k
}

pub(super) fn matches(key: &KeyExpr<'_>, k: &str) -> bool {
    KeyExpr::new(k).is_ok_and(|k| key.intersects(&k))
}

/// The literal prefix of a key expression before its first wildcard chunk (for range scans).
pub(super) fn literal_prefix(key: &KeyExpr<'_>) -> String {
    let mut p = String::new();
    for c in key.chunks() {
        if c.contains('*') {
            break;
        }
        p.push_str(c);
        p.push('/');
    }
    p
}

/// Where a history range starts: after the page cursor, or at `from`.
pub(super) fn range_start(after: Option<&[u8]>, from: Ntp64) -> std::ops::Bound<Vec<u8>> {
    match after {
        Some(a) => std::ops::Bound::Excluded(a.to_vec()),
        None => std::ops::Bound::Included(from.0.to_be_bytes().to_vec()),
    }
}

/// A page of history from rows (history key, sample) in key order, for the engines that keep
/// the history in one ordered table keyed by [`hist_key`] (sled, fjall): samples up to `to`
/// that match `key`, at most `limit` of them and `scan` rows looked at, and the cursor of the
/// next page when it stopped early.
pub(super) fn page_of<K: AsRef<[u8]>>(
    rows: impl Iterator<Item = Result<(K, StoredSample), StorageError>>,
    key: &KeyExpr<'_>,
    to: Ntp64,
    limit: usize,
    scan: usize,
) -> Result<HistoryPage, StorageError> {
    let mut page = HistoryPage::default();
    let mut last: Option<K> = None;
    for (seen, row) in rows.enumerate() {
        let (k, s) = row?;
        if s.timestamp.time > to {
            return Ok(page);
        }
        if seen >= scan.max(1) || page.samples.len() >= limit {
            page.next = last.map(|l| l.as_ref().to_vec());
            return Ok(page);
        }
        if matches(key, &s.key) {
            page.samples.push(s);
        }
        last = Some(k);
    }
    Ok(page)
}

fn newer(candidate: &StoredSample, existing: Option<&StoredSample>) -> bool {
    existing.is_none_or(|e| candidate.timestamp > e.timestamp)
}

/// Everything in memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    latest: BTreeMap<String, StoredSample>,
    history: BTreeMap<Vec<u8>, StoredSample>,
    /// Keys whose latest value is a put.
    keys: u64,
    /// Payload bytes in `history`.
    bytes: u64,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemoryBackend {
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError> {
        if let Some(old) = self.history.insert(hist_key(s), s.clone()) {
            self.bytes = self.bytes.saturating_sub(old.payload.len() as u64);
        }
        self.bytes += s.payload.len() as u64;
        if newer(s, self.latest.get(&*s.key)) {
            let d = live_delta(self.latest.get(&*s.key), s);
            self.keys = self.keys.saturating_add_signed(d);
            self.latest.insert(s.key.to_string(), s.clone());
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError> {
        if !key.is_wild() {
            return Ok(self.latest.get(key.as_str()).cloned().into_iter().collect());
        }
        let prefix = literal_prefix(key);
        Ok(self
            .latest
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix) || prefix.is_empty())
            .filter(|(k, _)| matches(key, k))
            .map(|(_, v)| v.clone())
            .collect())
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
        use std::ops::Bound;
        let lo = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(from.0.to_be_bytes().to_vec()),
        };
        let mut page = HistoryPage::default();
        let mut last: Option<&Vec<u8>> = None;
        let range = self.history.range::<Vec<u8>, _>((lo, Bound::Unbounded));
        for (seen, (k, v)) in range.enumerate() {
            if v.timestamp.time > to {
                return Ok(page);
            }
            if seen >= scan.max(1) || page.samples.len() >= limit {
                page.next = last.cloned();
                return Ok(page);
            }
            if matches(key, &v.key) {
                page.samples.push(v.clone());
            }
            last = Some(k);
        }
        Ok(page)
    }

    fn prune(
        &mut self,
        before: Option<Ntp64>,
        keep: Option<usize>,
        tombstones_before: Option<Ntp64>,
    ) -> Result<usize, StorageError> {
        let mut n = 0;
        if let Some(b) = before {
            let lo = b.0.to_be_bytes().to_vec();
            let kept = self.history.split_off(&lo);
            n += self.history.len();
            let gone: u64 = self.history.values().map(|s| s.payload.len() as u64).sum();
            self.bytes = self.bytes.saturating_sub(gone);
            self.history = kept;
        }
        if let Some(keep) = keep {
            while self.history.len() > keep {
                if let Some((_, s)) = self.history.pop_first() {
                    self.bytes = self.bytes.saturating_sub(s.payload.len() as u64);
                }
                n += 1;
            }
        }
        if let Some(t) = tombstones_before {
            let before_len = self.latest.len();
            self.latest
                .retain(|_, v| !(v.kind == SampleKind::Delete && v.timestamp.time < t));
            n += before_len - self.latest.len();
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn history_len(&self) -> usize {
        self.history.len()
    }

    fn summary(&self) -> Summary {
        Summary {
            keys: self.keys,
            samples: self.history.len() as u64,
            bytes: self.bytes,
            oldest: self.history.values().next().map(|s| s.timestamp),
        }
    }
}

/// Samples in a sled database (trees `latest` and `history`).
pub struct SledBackend {
    db: sled::Db,
    latest: sled::Tree,
    history: sled::Tree,
    count: usize,
    /// Keys whose latest value is a put.
    keys: u64,
    /// Payload bytes in `history`.
    bytes: u64,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SledBackend({} samples)", self.count)
    }
}

pub(super) fn encode(s: &StoredSample) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(super) fn decode(v: &[u8]) -> Result<StoredSample, StorageError> {
    postcard::from_bytes(v).map_err(|e| StorageError::Corrupt(e.to_string()))
}

/// The decoded latest values among `rows` (key, encoded sample: a prefix scan of an engine's
/// latest table) whose key matches `key`.
pub(super) fn latest_matching<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    key: &KeyExpr<'_>,
    rows: impl Iterator<Item = Result<(K, V), StorageError>>,
) -> Result<Vec<StoredSample>, StorageError> {
    let mut out = Vec::new();
    for kv in rows {
        let (k, v) = kv?;
        if matches(key, &String::from_utf8_lossy(k.as_ref())) {
            out.push(decode(v.as_ref())?);
        }
    }
    Ok(out)
}

/// When an engine's writes since its last sync are due to be synced: `flush_ms` after that
/// sync (the log, redb and fjall sync on the storage writer's call, not on a timer of their own).
#[derive(Debug)]
pub(super) struct SyncClock {
    every: std::time::Duration,
    last: std::time::Instant,
    unsynced: bool,
}

impl SyncClock {
    pub(super) fn new(flush_ms: u64) -> Self {
        SyncClock {
            every: std::time::Duration::from_millis(flush_ms.max(1)),
            last: std::time::Instant::now(),
            unsynced: false,
        }
    }

    /// Something was written and is not synced yet.
    pub(super) fn written(&mut self) {
        self.unsynced = true;
    }

    /// Everything written is synced.
    pub(super) fn synced(&mut self) {
        self.unsynced = false;
        self.last = std::time::Instant::now();
    }

    /// Nothing written is left unsynced (the engine dropped it), and the interval since the
    /// last sync keeps running: the next write is due as before.
    pub(super) fn discarded(&mut self) {
        self.unsynced = false;
    }

    /// Whether something written is not synced.
    pub(super) fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Whether the interval since the last sync has passed (whatever was written).
    pub(super) fn interval_passed(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Whether a sync is due: something unsynced, and the interval passed.
    pub(super) fn due(&self) -> bool {
        self.unsynced && self.interval_passed()
    }
}

/// sled's page cache.
const SLED_CACHE_BYTES: u64 = 8 << 20;

/// How long opening a sled store may take before it is reported as damaged.
pub(super) const OPEN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl SledBackend {
    /// Opens (or creates) the database in `dir`; sled writes its log to disk every `flush_ms`.
    pub fn open(dir: &Path, flush_ms: u64) -> Result<Self, StorageError> {
        Self::open_within(dir, flush_ms, OPEN_DEADLINE)
    }

    /// [`open`](Self::open), giving up after `deadline` with [`StorageError::Open`] (the
    /// opening thread is left to finish or spin on its own: sled offers no way to stop it).
    pub fn open_within(
        dir: &Path,
        flush_ms: u64,
        deadline: std::time::Duration,
    ) -> Result<Self, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.to_path_buf();
        std::thread::Builder::new()
            .name("hypha-sled-open".into())
            .spawn(move || {
                let _ = tx.send(Self::open_now(&path, flush_ms));
            })
            .map_err(|e| open_err(format!("cannot start the opening thread: {e}")))?;
        match rx.recv_timeout(deadline) {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(StorageError::Sled(e))) => Err(open_err(e.to_string())),
            Ok(Err(StorageError::Corrupt(e))) => Err(open_err(format!("corrupt record: {e}"))),
            Ok(Err(e)) => Err(e),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(open_err(
                "sled panicked while reading it: the data is damaged".into(),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(open_err(format!(
                "still opening after {deadline:?}: the log is probably damaged"
            ))),
        }
    }

    fn open_now(dir: &Path, flush_ms: u64) -> Result<Self, StorageError> {
        let config = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(flush_ms.max(1)))
            // sled's page cache defaults to 1 GiB; a storage's working set is the tail of its
            // history and the latest values, so a small cache bounds its memory (issue 17).
            .cache_capacity(SLED_CACHE_BYTES);
        // A store closed a moment ago in this process may still be locked by sled's flusher
        // thread, which lets go of the file on its own time: wait for it briefly (sled's own
        // tests block on the lock for this reason) instead of failing the reopen.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r?,
            }
        };
        let latest = db.open_tree("latest")?;
        let history = db.open_tree("history")?;
        // One pass over each tree at open; the counts are kept up to date from then on.
        let (mut count, mut bytes, mut keys) = (0, 0, 0);
        for kv in history.iter() {
            let (_, v) = kv?;
            count += 1;
            bytes += decode(&v)?.payload.len() as u64;
        }
        for kv in latest.iter() {
            let (_, v) = kv?;
            keys += u64::from(decode(&v)?.kind == SampleKind::Put);
        }
        Ok(SledBackend {
            db,
            latest,
            history,
            count,
            keys,
            bytes,
        })
    }
}

impl Backend for SledBackend {
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError> {
        let v = encode(s)?;
        match self.history.insert(hist_key(s), v.as_slice())? {
            None => self.count += 1,
            Some(old) => {
                let old = decode(&old)?.payload.len() as u64;
                self.bytes = self.bytes.saturating_sub(old);
            }
        }
        self.bytes += s.payload.len() as u64;
        let existing = self
            .latest
            .get(s.key.as_bytes())?
            .map(|v| decode(&v))
            .transpose()?;
        if newer(s, existing.as_ref()) {
            let d = live_delta(existing.as_ref(), s);
            self.keys = self.keys.saturating_add_signed(d);
            self.latest.insert(s.key.as_bytes(), v)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError> {
        if !key.is_wild() {
            return self
                .latest
                .get(key.as_str())?
                .map(|v| decode(&v))
                .into_iter()
                .collect();
        }
        latest_matching(
            key,
            self.latest
                .scan_prefix(literal_prefix(key).as_bytes())
                .map(|kv| kv.map_err(StorageError::from)),
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
        let rows = range.map(|kv| {
            let (k, v) = kv?;
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
        loop {
            let Some((k, _)) = self.history.first()? else {
                break;
            };
            let old =
                before.is_some_and(|b| k.get(..8).is_some_and(|t| t < &b.0.to_be_bytes()[..]));
            let over = keep.is_some_and(|keep| self.count > keep);
            if !(old || over) {
                break;
            }
            if let Some(old) = self.history.remove(k)? {
                let old = decode(&old).map_or(0, |s| s.payload.len() as u64);
                self.bytes = self.bytes.saturating_sub(old);
            }
            self.count = self.count.saturating_sub(1);
            n += 1;
        }
        if let Some(t) = tombstones_before {
            for kv in self.latest.iter() {
                let (k, v) = kv?;
                let s = decode(&v)?;
                if s.kind == SampleKind::Delete && s.timestamp.time < t {
                    self.latest.remove(k)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }

    fn history_len(&self) -> usize {
        self.count
    }

    fn summary(&self) -> Summary {
        let oldest = self
            .history
            .first()
            .ok()
            .flatten()
            .and_then(|(_, v)| decode(&v).ok())
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
    use hypha_core::id::NodeId;

    fn s(key: &str, kind: SampleKind, t: u64, payload: &str) -> StoredSample {
        StoredSample {
            key: key.into(),
            kind,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            timestamp: Timestamp {
                time: Ntp64(t),
                id: NodeId::from_u128(1),
            },
            encoding: None,
        }
    }

    fn exercise(b: &mut dyn Backend) {
        use SampleKind::*;
        assert!(b.store(&s("a/1", Put, 10, "x")).unwrap());
        assert!(b.store(&s("a/2", Put, 11, "y")).unwrap());
        // An older put does not replace a newer value.
        assert!(!b.store(&s("a/1", Put, 5, "old")).unwrap());
        // A delete is kept as a tombstone; a late older put cannot resurrect the key.
        assert!(b.store(&s("a/2", Delete, 20, "")).unwrap());
        assert!(!b.store(&s("a/2", Put, 15, "late")).unwrap());
        let k = KeyExpr::new("a/*").unwrap();
        let latest = b.latest(&k).unwrap();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0].payload, b"x"[..]);
        assert_eq!(latest[1].kind, Delete);
        assert_eq!(
            b.latest(&KeyExpr::new("a/1").unwrap()).unwrap()[0].payload,
            b"x"[..]
        );
        // History keeps everything, in time order.
        let h = b
            .history(&k, Ntp64(0), Ntp64(u64::MAX), usize::MAX)
            .unwrap();
        let times: Vec<u64> = h.iter().map(|s| s.timestamp.time.0).collect();
        assert_eq!(times, [5, 10, 11, 15, 20]);
        let w = b.history(&k, Ntp64(10), Ntp64(15), usize::MAX).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(
            b.history(&k, Ntp64(0), Ntp64(u64::MAX), 2).unwrap().len(),
            2
        );
        assert_eq!(
            b.history(&KeyExpr::new("a/1").unwrap(), Ntp64(0), Ntp64(99), 9)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(b.history_len(), 5);
        // Paging: one record looked at per page, then two samples per page, give the same
        // samples as one scan; a window's end stops the pages.
        for (limit, scan) in [(1, 1), (2, 9), (9, 2)] {
            let mut paged = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            let mut pages = 0;
            loop {
                let p = b
                    .history_page(&k, after.as_deref(), Ntp64(0), Ntp64(15), limit, scan)
                    .unwrap();
                assert!(p.samples.len() <= limit);
                paged.extend(p.samples);
                pages += 1;
                match p.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let times: Vec<u64> = paged.iter().map(|s| s.timestamp.time.0).collect();
            assert_eq!(times, [5, 10, 11, 15], "limit {limit} scan {scan}");
            assert!(
                pages >= 4 / limit.min(scan),
                "limit {limit} scan {scan}: {pages} pages"
            );
        }
        let sum = b.summary();
        // a/1 live, a/2 deleted; payloads x, y, old, late, "" = 1 + 1 + 3 + 4 + 0 bytes.
        assert_eq!((sum.keys, sum.samples, sum.bytes), (1, 5, 9));
        assert_eq!(sum.oldest.map(|t| t.time.0), Some(5));
        // Retention by age, then by count; old tombstones expire.
        assert_eq!(b.prune(Some(Ntp64(11)), None, None).unwrap(), 2);
        assert_eq!(b.prune(None, Some(2), None).unwrap(), 1);
        assert_eq!(b.history_len(), 2);
        let sum = b.summary();
        // Left: 15 "late", 20 "" (a tombstone).
        assert_eq!((sum.keys, sum.samples, sum.bytes), (1, 2, 4));
        assert_eq!(sum.oldest.map(|t| t.time.0), Some(15));
        assert_eq!(b.prune(None, None, Some(Ntp64(21))).unwrap(), 1);
        assert_eq!(b.latest(&k).unwrap().len(), 1);
    }

    #[test]
    fn memory_backend() {
        exercise(&mut MemoryBackend::new());
    }

    type Open = fn(&Path) -> Box<dyn Backend>;

    /// What every engine on disk does: [`exercise`], then after a reopen the same history and
    /// latest values; a batch stored twice (a retry) is stored once. Returns the reopened engine.
    fn exercise_reopen_and_retry(open: Open, dir: &Path) -> Box<dyn Backend> {
        {
            let mut b = open(dir);
            exercise(b.as_mut());
            b.flush().unwrap();
        }
        let mut b = open(dir);
        assert_eq!(b.history_len(), 2);
        assert_eq!(b.summary().bytes, 4);
        let latest = b.latest(&KeyExpr::new("a/**").unwrap()).unwrap();
        assert_eq!(latest[0].payload, b"x"[..]);
        let batch = [
            s("b/1", SampleKind::Put, 30, "p"),
            s("b/2", SampleKind::Put, 31, "q"),
        ];
        assert_eq!(b.store_batch(&batch).unwrap(), 2);
        assert_eq!(
            b.store_batch(&batch).unwrap(),
            0,
            "a retry is not stored twice"
        );
        assert_eq!(b.history_len(), 4);
        assert_eq!(b.summary().keys, 3);
        b
    }

    #[test]
    fn redb_backend_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open: Open = |d| Box::new(crate::storage::RedbBackend::open(d, 100).unwrap());
        exercise_reopen_and_retry(open, dir.path());
    }

    #[test]
    fn log_backend_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open: Open = |d| Box::new(crate::storage::LogBackend::open(d, 100).unwrap());
        let b = exercise_reopen_and_retry(open, dir.path());
        assert_eq!(b.summary().oldest.map(|t| t.time.0), Some(15));
    }

    #[test]
    fn sled_backend_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open: Open = |d| Box::new(SledBackend::open(d, 100).unwrap());
        exercise_reopen_and_retry(open, dir.path());
    }

    #[cfg(feature = "fjall")]
    #[test]
    fn fjall_backend_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open: Open = |d| Box::new(crate::storage::FjallBackend::open(d, 100).unwrap());
        exercise_reopen_and_retry(open, dir.path());
    }
}
