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
//! (100 ms by default) and on shutdown; a sample *stored* more than `flush_ms` before a crash
//! is on disk. The restart test (`tests/tests/storage_restart.rs`) kills a storage with SIGKILL in
//! the middle of a write stream and checks exactly that.
//!
//! **Bounded ingest and back-pressure** (issue 17): samples reach the storage through a bounded
//! queue (`queue` samples, 4,096 by default) drained by a writer thread of its own, in batches.
//! When the queue is full, the subscriber callback *waits* for room, up to `block_ms`: the
//! link (or local publisher) that delivered the sample is held meanwhile, so a remote publisher's
//! link fills and its `Block` publications slow down to the storage's pace (a `Drop` publisher
//! drops at its own link queue, counted there). If no room comes within `block_ms` the sample is
//! dropped and counted (`StorageStats::dropped`), and from then on samples are dropped without
//! waiting until the writer has drained the queue to half: a stuck disk never holds a link for
//! more than one `block_ms`. What sits in the queue is what a crash loses beyond the flush window:
//! at most `queue` samples.
//!
//! **Replay** streams: a `_time` query is answered page by page (at most 512 samples, 4,096 records
//! looked at, per page) in a task of its own; the backend is locked per page, so ingest goes on
//! between pages and a long replay never holds the whole window in memory.

pub(crate) mod ack;
mod backend;
pub mod consumer;
#[cfg(feature = "fjall")]
mod fjall_backend;
mod log_backend;
mod redb_backend;
pub mod timeexpr;

pub use backend::{
    Backend, HistoryPage, MemoryBackend, SledBackend, StorageError, StoredSample, Summary,
};
#[cfg(feature = "fjall")]
pub use fjall_backend::FjallBackend;
pub use log_backend::{DIR as LOG_DIR, LogBackend};
pub use redb_backend::{FILE as REDB_FILE, RedbBackend};

use crate::api::query::Query;
use crate::{Sample, Session};
use bytes::Bytes;
use hypha_core::hlc::Ntp64;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::wire::SampleKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// In memory (lost on exit).
    Memory,
    /// A segment log, in this directory (`log/`): the default.
    Log(PathBuf),
    /// redb, in this directory (file `store.redb`).
    Redb(PathBuf),
    /// sled, in this directory.
    Sled(PathBuf),
    /// fjall, in this directory (only in a build with the `fjall` feature; otherwise starting
    /// the storage is refused with [`StorageError::Config`]).
    Fjall(PathBuf),
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
    /// Keep at most about this many payload bytes of history (the oldest samples go first).
    pub retain_bytes: Option<u64>,
    /// Drop history as soon as every durable consumer of this storage has acknowledged it (a
    /// work queue); with no consumer, nothing is dropped for this reason.
    pub retain_until_acked: bool,
    /// How long deletes are remembered (so an older put cannot resurrect a key).
    pub tombstone_ttl: Duration,
    /// sled flush interval.
    pub flush_ms: u64,
    /// Samples waiting to be stored, at most (the ingest queue's bound).
    pub queue: usize,
    /// How long a full ingest queue holds the delivering link before the sample is dropped.
    pub block_ms: u64,
}

/// Default bound of a storage's ingest queue.
pub const DEFAULT_QUEUE: usize = 4096;
/// Default wait of a full ingest queue.
pub const DEFAULT_BLOCK_MS: u64 = 1000;

impl StorageConfig {
    /// Defaults: a segment log in `hypha-data/<key>`, history kept for a day, tombstones for an hour,
    /// 100 ms flushes, a queue of 4,096 samples that holds the link up to 1 s when full.
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
            backend: BackendKind::Log(PathBuf::from("hypha-data").join(dir)),
            key,
            retain_age: Some(Duration::from_secs(86_400)),
            retain_count: None,
            retain_bytes: None,
            retain_until_acked: false,
            tombstone_ttl: Duration::from_secs(3_600),
            flush_ms: 100,
            queue: DEFAULT_QUEUE,
            block_ms: DEFAULT_BLOCK_MS,
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
    /// Samples dropped because the ingest queue stayed full for `block_ms`, or was draining
    /// after that.
    pub dropped: AtomicU64,
    /// Samples that found the ingest queue full and waited (back-pressure applied).
    pub waited: AtomicU64,
    /// Samples in the ingest queue now.
    pub queued: AtomicU64,
    /// Batches written (one backend lock and, with group commit, one write each).
    pub batches: AtomicU64,
    /// Set while the ingest queue is shedding: a wait for room timed out, and samples are
    /// dropped without waiting until the writer has drained the queue to half.
    pub shedding: AtomicBool,
    /// Samples not stored because the same publisher's sample with the same sequence number
    /// was already (a retry, a duplicate delivery).
    pub duplicates: AtomicU64,
    /// `_ack` queries answered with an acknowledgement, and those that timed out.
    pub acks: AtomicU64,
    /// `_ack` queries whose sample was not stored (or synced) within their wait.
    pub ack_timeouts: AtomicU64,
    /// Set while writes fail (a full disk): one error line when it starts, one when it ends;
    /// the samples lost meanwhile are counted in `errors`.
    pub failing: AtomicBool,
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
    consumers: Arc<consumer::Consumers>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({:?})", self.stats)
    }
}

impl Storage {
    /// Its durable consumers.
    pub fn consumers(&self) -> Vec<consumer::ConsumerInfo> {
        self.consumers.list()
    }

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

/// The backend, shared by the writer thread and the query tasks (each holds it for one batch
/// or one page).
type Shared = Arc<Mutex<Box<dyn Backend>>>;

fn lock(b: &Shared) -> std::sync::MutexGuard<'_, Box<dyn Backend>> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most samples the writer stores under one lock.
const MAX_BATCH: usize = 512;
/// Most samples of a replay page, and records looked at for one.
const PAGE: usize = 512;
const PAGE_SCAN: usize = 4096;

/// The subscriber side of the ingest queue: waits for room (back-pressure) up to `block`, then
/// drops and counts.
struct Ingest {
    tx: flume::Sender<Sample>,
    block: Duration,
    stats: std::sync::Weak<StorageStats>,
    key: OwnedKeyExpr,
}

impl Ingest {
    fn offer(&self, s: Sample) {
        let s = match self.tx.try_send(s) {
            Ok(()) => return,
            Err(flume::TrySendError::Disconnected(_)) => return,
            Err(flume::TrySendError::Full(s)) => s,
        };
        // Weak: a route cache may keep the subscriber's callback a while after the storage
        // closed, and the admin space lists a storage while its stats live.
        let Some(stats) = self.stats.upgrade() else {
            return;
        };
        if stats.shedding.load(Ordering::Relaxed) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.waited.fetch_add(1, Ordering::Relaxed);
        // Only whether it timed out matters (the sample itself is dropped either way).
        let wait = || {
            self.tx
                .send_timeout(s, self.block)
                .map_err(|e| matches!(e, flume::SendTimeoutError::Timeout(_)))
        };
        // On a multi-thread runtime, hand this worker's other tasks to another worker while
        // this one waits (a current-thread runtime has no other worker: it just waits).
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let r = if multi {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        if r == Err(true) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !stats.shedding.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "storage {}: ingest queue full for {:?}: dropping samples until it drains \
                     (dropped so far: {})",
                    self.key,
                    self.block,
                    stats.dropped.load(Ordering::Relaxed)
                );
            }
        }
    }
}

fn create_dir(dir: &std::path::Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        StorageError::Config(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })
}

/// A directory that holds another engine's store is refused (opening it as this engine
/// would start empty and hide what it holds).
fn other_engine(
    dir: &std::path::Path,
    marker: &std::path::Path,
    engine: &str,
) -> Result<(), StorageError> {
    if marker.exists() {
        return Err(StorageError::Config(format!(
            "{} holds a {engine} store ({}): start the storage with --backend {engine}, or move the directory away",
            dir.display(),
            marker.display()
        )));
    }
    Ok(())
}

#[cfg(feature = "fjall")]
fn fjall_engine(dir: &std::path::Path, flush_ms: u64) -> Result<Box<dyn Backend>, StorageError> {
    Ok(Box::new(FjallBackend::open(dir, flush_ms)?))
}

#[cfg(not(feature = "fjall"))]
fn fjall_engine(_: &std::path::Path, _: u64) -> Result<Box<dyn Backend>, StorageError> {
    Err(StorageError::Config(
        "this build has no fjall engine: build hypha with `--features fjall`".into(),
    ))
}

/// Starts a storage on `session`.
pub async fn start(session: &Session, cfg: StorageConfig) -> Result<Storage, StorageError> {
    let backend: Box<dyn Backend> = match &cfg.backend {
        BackendKind::Memory => Box::new(MemoryBackend::new()),
        BackendKind::Sled(dir) => {
            create_dir(dir)?;
            Box::new(SledBackend::open(dir, cfg.flush_ms)?)
        }
        BackendKind::Log(dir) => {
            create_dir(dir)?;
            other_engine(dir, &dir.join(REDB_FILE), "redb")?;
            other_engine(dir, &dir.join("db"), "sled")?;
            Box::new(LogBackend::open(dir, cfg.flush_ms)?)
        }
        BackendKind::Redb(dir) => {
            create_dir(dir)?;
            other_engine(dir, &dir.join(LOG_DIR), "log")?;
            Box::new(RedbBackend::open(dir, cfg.flush_ms)?)
        }
        BackendKind::Fjall(dir) => {
            create_dir(dir)?;
            other_engine(dir, &dir.join(LOG_DIR), "log")?;
            other_engine(dir, &dir.join(REDB_FILE), "redb")?;
            fjall_engine(dir, cfg.flush_ms)?
        }
    };
    start_with(session, cfg, backend).await
}

/// Starts a storage on `session` over a backend of the caller's (`cfg.backend` only names it in
/// the admin space).
pub async fn start_with(
    session: &Session,
    cfg: StorageConfig,
    backend: Box<dyn Backend>,
) -> Result<Storage, StorageError> {
    if cfg.queue == 0 {
        return Err(StorageError::Config(
            "a storage's queue must hold at least one sample".into(),
        ));
    }
    let stats = Arc::new(StorageStats::default());
    stats.publish(backend.summary());
    let history_len = backend.history_len();
    let backend: Shared = Arc::new(Mutex::new(backend));
    let (tx, rx) = flume::bounded::<Sample>(cfg.queue);
    let ingest = Ingest {
        tx,
        block: Duration::from_millis(cfg.block_ms),
        stats: Arc::downgrade(&stats),
        key: cfg.key.clone(),
    };
    let sub = session
        .declare_subscriber(cfg.key.as_str())
        .callback(move |s| ingest.offer(s))?;
    let queryable = session
        .declare_queryable(cfg.key.as_str())
        .complete(true)
        .stream()?;
    let backend_name = match &cfg.backend {
        BackendKind::Memory => "memory".to_string(),
        BackendKind::Sled(dir) => format!("sled:{}", dir.display()),
        BackendKind::Log(dir) => format!("log:{}", dir.display()),
        BackendKind::Redb(dir) => format!("redb:{}", dir.display()),
        BackendKind::Fjall(dir) => format!("fjall:{}", dir.display()),
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(ack::Acks::default());
    let (batches_tx, batches_rx) = tokio::sync::watch::channel(0u64);
    let consumer_dir = match &cfg.backend {
        BackendKind::Memory => None,
        BackendKind::Log(d)
        | BackendKind::Redb(d)
        | BackendKind::Sled(d)
        | BackendKind::Fjall(d) => Some(consumer::dir_of(d)),
    };
    let consumers = Arc::new(consumer::Consumers::open(consumer_dir, batches_rx)?);
    let timers = session.register_storage(cfg.key.clone(), backend_name, &stats, &consumers);
    let writer = {
        let w = Writer {
            rx,
            backend: backend.clone(),
            stats: stats.clone(),
            stopping: stopping.clone(),
            session: session.clone(),
            timers: timers.clone(),
            cfg: cfg.clone(),
            acks: acks.clone(),
            batch_no: 0,
            batches: batches_tx,
            consumers: consumers.clone(),
        };
        std::thread::Builder::new()
            .name("hypha-storage".into())
            .spawn(move || w.run())
            .map_err(|e| StorageError::Config(format!("cannot start the writer thread: {e}")))?
    };
    let st = stats.clone();
    let sess = session.clone();
    let handle = consumers.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
    tracing::info!(key = %cfg.key, backend = ?cfg.backend, samples = history_len, queue = cfg.queue, "storage started");
    let task = tokio::spawn(async move {
        // Queries in progress (replays, waiting acknowledgements and consumer pulls): ended
        // when the storage stops, so that nothing holds the store open after `close`.
        let mut running = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                Some(_) = running.join_next(), if !running.is_empty() => {}
                Some(q) = queryable.recv() => {
                    let ctx = Ctx {
                        backend: backend.clone(),
                        st: st.clone(),
                        timers: timers.clone(),
                        acks: acks.clone(),
                        consumers: consumers.clone(),
                        session: sess.clone(),
                    };
                    running.spawn(answer(q, ctx));
                }
                _ = &mut stop_rx => break,
            }
        }
        running.abort_all();
        while running.join_next().await.is_some() {}
        // No new samples: the writer drains what is queued, flushes and ends.
        drop(sub);
        drop(queryable);
        stopping.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    });
    Ok(Storage {
        stop: Some(stop_tx),
        task: Some(task),
        stats,
        consumers: handle,
    })
}

/// The writer thread: drains the ingest queue in batches into the backend, runs retention.
struct Writer {
    rx: flume::Receiver<Sample>,
    backend: Shared,
    stats: Arc<StorageStats>,
    stopping: Arc<AtomicBool>,
    session: Session,
    timers: Option<crate::metrics::StorageTimers>,
    cfg: StorageConfig,
    acks: Arc<ack::Acks>,
    /// Batches committed so far (acks name the batch a sample was committed in).
    batch_no: u64,
    /// Tells waiting consumer pulls that a batch was committed.
    batches: tokio::sync::watch::Sender<u64>,
    consumers: Arc<consumer::Consumers>,
}

/// What the writer stores next: samples, and the publisher sources among them (for acks).
#[derive(Default)]
struct Batch {
    samples: Vec<StoredSample>,
    sources: Vec<crate::sample::SampleSource>,
    /// The same, to find a duplicate within the batch.
    sourced: rustc_hash::FxHashSet<crate::sample::SampleSource>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Batch::default();
        let mut incoming = Vec::new();
        let mut next_retention = Instant::now() + Duration::from_secs(1);
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(s) => {
                    incoming.push(s);
                    while incoming.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(s) => incoming.push(s),
                            Err(_) => break,
                        }
                    }
                    self.take_all(&mut incoming, &mut batch);
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            if !batch.samples.is_empty() {
                self.write(&mut batch);
            } else {
                self.flush_if_due();
            }
            let len = self.rx.len();
            if len <= self.cfg.queue / 2 && self.stats.shedding.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    "storage {}: ingest queue drained; {} samples dropped in all",
                    self.cfg.key,
                    self.stats.dropped.load(Ordering::Relaxed)
                );
            }
            self.stats.queued.store(len as u64, Ordering::Relaxed);
            if Instant::now() >= next_retention {
                next_retention = Instant::now() + Duration::from_secs(1);
                self.retention();
            }
        }
        // What is still queued (bounded) is stored before the final flush.
        incoming.extend(self.rx.try_iter());
        self.take_all(&mut incoming, &mut batch);
        if !batch.samples.is_empty() {
            self.write(&mut batch);
        }
        match lock(&self.backend).flush() {
            Ok(()) => self.acks.flushed(self.batch_no),
            Err(e) => tracing::error!("storage {}: final flush failed: {e}", self.cfg.key),
        }
    }

    /// Moves `incoming` into the batch, but for the samples whose (publisher, sequence number)
    /// is already stored or already in the batch (duplicates: counted, not stored twice). The
    /// table of stored ones is locked once for them all.
    fn take_all(&self, incoming: &mut Vec<Sample>, batch: &mut Batch) {
        let stored = self.acks.retain_unseen(incoming, |s| s.source.as_ref());
        let mut dups = stored;
        for s in incoming.drain(..) {
            if let Some(src) = s.source {
                if !batch.sourced.insert(src) {
                    dups += 1;
                    continue;
                }
                batch.sources.push(src);
            }
            self.take(s, batch);
        }
        if dups > 0 {
            self.stats.duplicates.fetch_add(dups, Ordering::Relaxed);
        }
    }

    fn take(&self, s: Sample, batch: &mut Batch) {
        batch.samples.push(StoredSample {
            key: s.key,
            kind: s.kind,
            payload: s.payload,
            timestamp: s.timestamp.unwrap_or_else(|| self.session.new_timestamp()),
            encoding: s.encoding,
        });
    }

    fn write(&mut self, batch: &mut Batch) {
        let t0 = Instant::now();
        let mut b = lock(&self.backend);
        let r = b.store_batch(&batch.samples);
        // Samples counted as stored before a failed write that the engine rolled back.
        let rolled_back = b.take_rolled_back();
        // Synced now if the interval has passed, or if a durable acknowledgement waits.
        let sync = r.is_ok() && (b.flush_due() || self.acks.durable_wanted());
        let flushed = if sync { b.flush() } else { Ok(()) };
        let summary = b.summary();
        drop(b);
        if let Some(t) = &self.timers {
            t.write.observe(t0.elapsed().as_secs_f64());
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.publish(summary);
        if rolled_back > 0 {
            let _ = self
                .stats
                .stored
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(rolled_back))
                });
            self.stats.errors.fetch_add(rolled_back, Ordering::Relaxed);
        }
        let n = batch.samples.len() as u64;
        batch.samples.clear();
        if r.is_ok() {
            // Counted before the acknowledgements go: an acked sample is in `stored`.
            self.stats.stored.fetch_add(n, Ordering::Relaxed);
            self.batch_no += 1;
            self.acks.stored(&batch.sources, self.batch_no);
            self.batches.send_replace(self.batch_no);
        }
        batch.sources.clear();
        batch.sourced.clear();
        let failed = match (r, flushed) {
            (Err(e), _) => {
                self.stats.errors.fetch_add(n, Ordering::Relaxed);
                Some(e)
            }
            (Ok(_), Err(e)) => Some(e), // stored, not synced
            (Ok(_), Ok(())) => None,
        };
        match failed {
            None => {
                if sync {
                    self.acks.flushed(self.batch_no);
                }
                if self.stats.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "storage {}: writing again ({} samples were not stored meanwhile)",
                        self.cfg.key,
                        self.stats.errors.load(Ordering::Relaxed)
                    );
                }
            }
            Some(e) => {
                // One line when writes start failing (a full disk fails every batch), not one
                // per batch; the counter says how many samples were lost.
                if !self.stats.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "storage {}: cannot store: {e}; samples are counted in `errors` until \
                         writes succeed again",
                        self.cfg.key
                    );
                }
            }
        }
    }

    /// Syncs when the backend's flush interval has passed (idle included).
    fn flush_if_due(&self) {
        let mut b = lock(&self.backend);
        if b.flush_due() || self.acks.durable_behind(self.batch_no) {
            match b.flush() {
                Ok(()) => self.acks.flushed(self.batch_no),
                Err(e) => {
                    if !self.stats.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!("storage {}: flush failed: {e}", self.cfg.key);
                    }
                }
            }
        }
    }

    fn retention(&self) {
        let now = timeexpr::now_us();
        let mut before = self.cfg.retain_age.map(|a| ntp(now - a.as_micros() as i64));
        if self.cfg.retain_until_acked
            && let Some(floor) = self.consumers.floor()
        {
            before = Some(before.map_or(floor, |b| b.max(floor)));
        }
        let tomb = ntp(now - self.cfg.tombstone_ttl.as_micros() as i64);
        let mut b = lock(&self.backend);
        let mut keep = self.cfg.retain_count;
        if let Some(max) = self.cfg.retain_bytes {
            let s = b.summary();
            if s.bytes > max && s.samples > 0 {
                // Drop the oldest samples, about as many as the excess holds on average.
                let avg = (s.bytes / s.samples).max(1);
                let over = (s.bytes - max).div_ceil(avg);
                let k = s.samples.saturating_sub(over) as usize;
                keep = Some(keep.map_or(k, |c| c.min(k)));
            }
        }
        if let Err(e) = b.prune(before, keep, Some(tomb)) {
            tracing::warn!("storage {}: retention failed: {e}", self.cfg.key);
        }
        self.stats.publish(b.summary());
    }
}

fn to_sample(s: StoredSample) -> Sample {
    Sample {
        key: s.key,
        payload: s.payload,
        kind: s.kind,
        timestamp: Some(s.timestamp),
        encoding: s.encoding,
        attachment: None,
        source: None,
    }
}

/// What a query asks for.
enum Plan {
    Latest {
        limit: usize,
    },
    History {
        from: Ntp64,
        to: Ntp64,
        limit: usize,
    },
}

fn plan(q: &Query) -> Result<Plan, String> {
    let limit = match q.parameter("limit").map(str::parse::<usize>) {
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err("invalid limit: expected a number".into()),
        None => usize::MAX,
    };
    Ok(match q.parameter("_time") {
        Some(range) => {
            let (from, to) =
                timeexpr::parse_range(range, timeexpr::now_us()).map_err(|e| e.to_string())?;
            Plan::History {
                from: ntp(from),
                to: ntp(to),
                limit,
            }
        }
        None => Plan::Latest { limit },
    })
}

/// Runs `f` on the backend off the async threads.
async fn with_backend<T: Send + 'static>(
    backend: &Shared,
    f: impl FnOnce(&dyn Backend) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, String> {
    let b = backend.clone();
    match tokio::task::spawn_blocking(move || f(&**lock(&b))).await {
        Ok(r) => r.map_err(|e| format!("storage error: {e}")),
        Err(e) => Err(format!("storage error: {e}")),
    }
}

/// What a query task needs of its storage.
struct Ctx {
    backend: Shared,
    st: Arc<StorageStats>,
    timers: Option<crate::metrics::StorageTimers>,
    acks: Arc<ack::Acks>,
    consumers: Arc<consumer::Consumers>,
    session: Session,
}

/// Answers one query: latest values at once, a history window page by page, an
/// acknowledgement once stored, a durable consumer's pull or acknowledgement.
async fn answer(q: Query, ctx: Ctx) {
    let Ctx {
        backend,
        st,
        timers,
        acks,
        consumers,
        session,
    } = ctx;
    st.queries.fetch_add(1, Ordering::Relaxed);
    if let Some(name) = q.parameter("_consume") {
        // A consumer is served by one storage (the one it chose among those holding its key:
        // `_storage` names it).
        let name = name.to_string();
        return consumers.answer(&q, &name, &backend, &session).await;
    }
    if let Some(v) = q.parameter("_acks") {
        return acknowledge(&q, v.to_string(), &st, &acks).await;
    }
    let t0 = Instant::now();
    let key: Arc<OwnedKeyExpr> = Arc::new(q.key_expr().into());
    let r = match plan(&q) {
        Err(e) => Err(e),
        Ok(Plan::Latest { limit }) => {
            let k = key.clone();
            match with_backend(&backend, move |b| b.latest(&k.as_keyexpr())).await {
                Ok(v) => {
                    let v = v
                        .into_iter()
                        .filter(|s| s.kind == SampleKind::Put)
                        .take(limit);
                    reply_all(&q, v, &st).await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Ok(Plan::History { from, to, limit }) => {
            let r = replay(&q, &backend, &st, key, from, to, limit).await;
            if let (Ok(()), Some(t)) = (&r, &timers) {
                t.replay.observe(t0.elapsed().as_secs_f64());
            }
            r
        }
    };
    if let Err(e) = r {
        st.errors.fetch_add(1, Ordering::Relaxed);
        let _ = q.reply_err(e).await;
    }
}

/// Most an `_ack` query waits for its sample (it may also arrive after the query).
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Answers `key?_acks=<node>.<publisher>[;_wait=MS][;_durable=1]` (payload: the postcard list
/// of sequence numbers) once those samples are stored (synced for `_durable`), or after `_wait`
/// ms (default and cap: 10 s) with those that are: one reply, the postcard list of the
/// sequence numbers held; an error reply when it holds none of them.
async fn acknowledge(q: &Query, v: String, st: &StorageStats, acks: &ack::Acks) {
    let parsed = ack::parse_publisher(&v).and_then(|(node, publisher)| {
        let sns: Vec<u32> = match q.payload() {
            Some(p) => {
                postcard::from_bytes(p).map_err(|e| format!("invalid _acks payload: {e}"))?
            }
            None => return Err("_acks without a list of sequence numbers".to_string()),
        };
        if sns.len() > ack::MAX_ASKED {
            return Err(format!(
                "at most {} sequence numbers per _acks, not {}",
                ack::MAX_ASKED,
                sns.len()
            ));
        }
        Ok((node, publisher, sns))
    });
    let (node, publisher, sns) = match parsed {
        Ok(x) => x,
        Err(e) => {
            st.errors.fetch_add(1, Ordering::Relaxed);
            let _ = q.reply_err(e).await;
            return;
        }
    };
    let level = if q.parameter("_durable").is_some() {
        ack::Level::Durable
    } else {
        ack::Level::Received
    };
    let wait = q
        .parameter("_wait")
        .and_then(|w| w.parse::<u64>().ok())
        .map_or(ACK_WAIT, Duration::from_millis)
        .min(ACK_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let held = acks.wait_all(node, publisher, &sns, level, deadline).await;
    st.acks.fetch_add(held.len() as u64, Ordering::Relaxed);
    st.ack_timeouts
        .fetch_add((sns.len() - held.len()) as u64, Ordering::Relaxed);
    if held.is_empty() {
        let _ = q
            .reply_err(format!(
                "{} sample(s) of {v} not {} within {wait:?}",
                sns.len(),
                if level == ack::Level::Durable {
                    "stored and synced"
                } else {
                    "stored"
                }
            ))
            .await;
        return;
    }
    let key = q.key_expr().as_str().to_string();
    let _ = q
        .reply_sample(Sample {
            key: Arc::from(key.as_str()),
            payload: Bytes::from(postcard::to_allocvec(&held).unwrap_or_default()),
            kind: SampleKind::Put,
            timestamp: None,
            encoding: None,
            attachment: None,
            source: None,
        })
        .await;
}

/// Streams a history window page by page (the next page is read while this one is sent);
/// `Ok` also when the querier went away.
async fn replay(
    q: &Query,
    backend: &Shared,
    st: &StorageStats,
    key: Arc<OwnedKeyExpr>,
    from: Ntp64,
    to: Ntp64,
    mut left: usize,
) -> Result<(), String> {
    let fetch = |after: Option<Vec<u8>>, n: usize| {
        let k = key.clone();
        let b = backend.clone();
        tokio::task::spawn_blocking(move || {
            lock(&b).history_page(&k.as_keyexpr(), after.as_deref(), from, to, n, PAGE_SCAN)
        })
    };
    let mut next = (left > 0).then(|| fetch(None, left.min(PAGE)));
    while let Some(pending) = next.take() {
        let page = pending
            .await
            .map_err(|e| format!("storage error: {e}"))?
            .map_err(|e| format!("storage error: {e}"))?;
        left -= page.samples.len().min(left);
        if let (true, Some(cursor)) = (left > 0, page.next) {
            next = Some(fetch(Some(cursor), left.min(PAGE)));
        }
        if !reply_all(q, page.samples.into_iter(), st).await {
            return Ok(());
        }
    }
    Ok(())
}

/// Replies with every sample, [`PAGE`] at a time (each group through the node at once, then
/// a wait for room); false when the querier is gone.
async fn reply_all(
    q: &Query,
    samples: impl Iterator<Item = StoredSample>,
    st: &StorageStats,
) -> bool {
    let mut samples = samples.map(to_sample).peekable();
    while samples.peek().is_some() {
        let group: Vec<Sample> = samples.by_ref().take(PAGE).collect();
        let n = group.len() as u64;
        if q.reply_samples(group).await.is_err() {
            return false;
        }
        st.replied.fetch_add(n, Ordering::Relaxed);
    }
    true
}
