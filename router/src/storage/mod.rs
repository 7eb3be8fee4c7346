//! Storages: a subscriber plus a queryable on a key expression, backed by a [`Backend`].
//!
//! A storage keeps the latest value of every key (last writer wins by timestamp, deletes kept as
//! tombstones for `tombstone_ttl`) **and** every sample in a time-indexed history with retention
//! by age and/or count, so that late joiners can replay what they missed:
//!
//! - `get("fleet/**")` answers the latest values (tombstones are not returned);
//! - `get("fleet/**?_time=[now(-10m)..]")` answers every sample of the window, in timestamp
//!   order (`limit=N` caps the count).
//!
//! Samples that arrive without a timestamp are stamped by the storage's node.
//!
//! **Durability** (sled, the default backend): sled writes its log to disk every `flush_ms`
//! (100 ms by default) and on shutdown; a sample acknowledged more than `flush_ms` before a crash
//! is on disk. The restart test (`tests/tests/storage_restart.rs`) kills a storage with SIGKILL in
//! the middle of a write stream and checks exactly that.

mod backend;
pub mod timeexpr;

pub use backend::{Backend, MemoryBackend, SledBackend, StorageError, StoredSample, Summary};

use crate::api::query::Query;
use crate::{Sample, Session};
use bytes::Bytes;
use hypha_core::hlc::Ntp64;
use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
use hypha_core::wire::SampleKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Which backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// In memory (lost on exit).
    Memory,
    /// sled, in this directory.
    Sled(PathBuf),
}

/// A storage's settings.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// What it stores.
    pub key: OwnedKeyExpr,
    /// Where.
    pub backend: BackendKind,
    /// Drop history older than this.
    pub retain_age: Option<Duration>,
    /// Keep at most this many samples of history.
    pub retain_count: Option<usize>,
    /// How long deletes are remembered (so an older put cannot resurrect a key).
    pub tombstone_ttl: Duration,
    /// sled flush interval.
    pub flush_ms: u64,
}

impl StorageConfig {
    /// Defaults: sled in `hypha-data/<key>`, history kept for a day, tombstones for an hour,
    /// 100 ms flushes.
    pub fn new(key: OwnedKeyExpr) -> Self {
        let dir: String = key
            .as_str()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        StorageConfig {
            backend: BackendKind::Sled(PathBuf::from("hypha-data").join(dir)),
            key,
            retain_age: Some(Duration::from_secs(86_400)),
            retain_count: None,
            tombstone_ttl: Duration::from_secs(3_600),
            flush_ms: 100,
        }
    }
}

/// Counters of a running storage.
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Samples stored.
    pub stored: AtomicU64,
    /// Queries answered.
    pub queries: AtomicU64,
    /// Samples sent in replies.
    pub replied: AtomicU64,
    /// Backend errors.
    pub errors: AtomicU64,
    // ----- admin space (issue 14): the backend's `Summary`, refreshed by the storage task ----
    /// Keys whose latest value is a put.
    pub keys: AtomicU64,
    /// Samples in the history.
    pub samples: AtomicU64,
    /// Payload bytes in the history.
    pub bytes: AtomicU64,
    /// The oldest sample's time (NTP64), 0 when the history is empty.
    pub oldest: AtomicU64,
}

impl StorageStats {
    fn publish(&self, s: Summary) {
        self.keys.store(s.keys, Ordering::Relaxed);
        self.samples.store(s.samples, Ordering::Relaxed);
        self.bytes.store(s.bytes, Ordering::Relaxed);
        self.oldest
            .store(s.oldest.map_or(0, |t| t.time.0), Ordering::Relaxed);
    }
}

/// A running storage. Dropping it stops it (after flushing).
pub struct Storage {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<StorageStats>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({:?})", self.stats)
    }
}

impl Storage {
    /// Stops the storage and waits for its final flush.
    pub async fn close(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn ntp(us: i64) -> Ntp64 {
    Ntp64::from_unix_micros(us.max(0) as u64)
}

/// Starts a storage on `session`.
pub async fn start(session: &Session, cfg: StorageConfig) -> Result<Storage, StorageError> {
    let mut backend: Box<dyn Backend> = match &cfg.backend {
        BackendKind::Memory => Box::new(MemoryBackend::new()),
        BackendKind::Sled(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Config(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
            Box::new(SledBackend::open(dir, cfg.flush_ms)?)
        }
    };
    let (tx, mut samples) = mpsc::unbounded_channel::<Sample>();
    let sub = session
        .declare_subscriber(cfg.key.as_str())
        .callback(move |s| {
            let _ = tx.send(s);
        })?;
    let queryable = session
        .declare_queryable(cfg.key.as_str())
        .complete(true)
        .stream()?;
    let stats = Arc::new(StorageStats::default());
    stats.publish(backend.summary());
    let backend_name = match &cfg.backend {
        BackendKind::Memory => "memory".to_string(),
        BackendKind::Sled(dir) => format!("sled:{}", dir.display()),
    };
    let timers = session.register_storage(cfg.key.clone(), backend_name, &stats);
    let st = stats.clone();
    let session = session.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
    tracing::info!(key = %cfg.key, backend = ?cfg.backend, samples = backend.history_len(), "storage started");
    let task = tokio::spawn(async move {
        let _sub = sub;
        let mut retention = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some(s) = samples.recv() => {
                    let timestamp = s.timestamp.unwrap_or_else(|| session.new_timestamp());
                    let stored = StoredSample {
                        key: s.key.to_string(),
                        kind: s.kind,
                        payload: s.payload.to_vec(),
                        timestamp,
                        encoding: s.encoding.as_deref().map(str::to_string),
                    };
                    let t0 = std::time::Instant::now();
                    let r = backend.store(&stored);
                    if let Some(t) = &timers {
                        t.write.observe(t0.elapsed().as_secs_f64());
                    }
                    match r {
                        Ok(_) => {
                            st.stored.fetch_add(1, Ordering::Relaxed);
                            st.publish(backend.summary());
                        }
                        Err(e) => {
                            st.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("storage {}: cannot store: {e}", cfg.key);
                        }
                    }
                }
                Some(q) = queryable.recv() => {
                    st.queries.fetch_add(1, Ordering::Relaxed);
                    let t0 = std::time::Instant::now();
                    let replay = q.parameter("_time").is_some();
                    let outcome = lookup(&*backend, &q);
                    respond(q, outcome, &st).await;
                    if let (true, Some(t)) = (replay, &timers) {
                        t.replay.observe(t0.elapsed().as_secs_f64());
                    }
                }
                _ = retention.tick() => {
                    let now = timeexpr::now_us();
                    let before = cfg.retain_age.map(|a| ntp(now - a.as_micros() as i64));
                    let tomb = ntp(now - cfg.tombstone_ttl.as_micros() as i64);
                    if let Err(e) = backend.prune(before, cfg.retain_count, Some(tomb)) {
                        tracing::warn!("storage {}: retention failed: {e}", cfg.key);
                    }
                    st.publish(backend.summary());
                }
                _ = &mut stop_rx => break,
            }
        }
        if let Err(e) = backend.flush() {
            tracing::error!("storage {}: final flush failed: {e}", cfg.key);
        }
    });
    Ok(Storage {
        stop: Some(stop_tx),
        task: Some(task),
        stats,
    })
}

fn to_sample(s: StoredSample) -> Sample {
    Sample {
        key: Arc::from(s.key.as_str()),
        payload: Bytes::from(s.payload),
        kind: s.kind,
        timestamp: Some(s.timestamp),
        encoding: s.encoding.map(|e| Arc::from(e.as_str())),
        attachment: None,
        source: None,
    }
}

/// What to answer a query with: samples, or an error message for the querier.
fn lookup(backend: &dyn Backend, q: &Query) -> Result<Vec<StoredSample>, String> {
    let key: OwnedKeyExpr = q.key_expr().into();
    let k: KeyExpr<'_> = key.as_keyexpr();
    let limit = match q.parameter("limit").map(str::parse::<usize>) {
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err("invalid limit: expected a number".into()),
        None => usize::MAX,
    };
    let result = match q.parameter("_time") {
        Some(range) => {
            let (from, to) =
                timeexpr::parse_range(range, timeexpr::now_us()).map_err(|e| e.to_string())?;
            backend.history(&k, ntp(from), ntp(to), limit)
        }
        None => backend.latest(&k).map(|v| {
            v.into_iter()
                .filter(|s| s.kind == SampleKind::Put)
                .take(limit)
                .collect()
        }),
    };
    result.map_err(|e| format!("storage error: {e}"))
}

async fn respond(q: Query, outcome: Result<Vec<StoredSample>, String>, st: &StorageStats) {
    match outcome {
        Ok(samples) => {
            for s in samples {
                if q.reply_sample(to_sample(s)).await.is_err() {
                    return; // the querier is gone
                }
                st.replied.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => {
            st.errors.fetch_add(1, Ordering::Relaxed);
            let _ = q.reply_err(e).await;
        }
    }
}
