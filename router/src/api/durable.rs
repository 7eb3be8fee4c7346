//! Durable consumers, the subscriber's side (issue 17): `declare_subscriber(k).durable("name")`.
//!
//! A durable subscriber's position is kept by a storage holding its key, so it survives a
//! restart of either side: after a restart it receives what it had not acknowledged, and
//! nothing it had. Each sample is acknowledged by the application ([`Delivered::ack`]); one
//! not acknowledged within the consumer's `ack_wait` is delivered again (its
//! [`Delivered::deliveries`] says how often), at most `max_deliver` times, after which the
//! storage publishes it on the dead-letter key. Several subscribers with the same name (in
//! one process or many) form a **work-queue group**: each sample goes to one of them.
//!
//! How: the subscriber chooses one storage (the lowest store id among the complete queryables
//! of its key that answer a probe, so every member of a group chooses the same), pulls
//! batches from it with queries (`_consume=NAME`, long-polling up to 1 s), and sends its
//! acknowledgements in batches on a task of their own (`storage/consumer.rs` has the storage's
//! side). Delivery is at least once: a sample whose acknowledgement was lost, or that was
//! pending when the storage restarted, comes again; the subscriber drops a redelivery of a
//! sample it has already acknowledged (the last 65,536), and counts it.

use super::Sample;
use super::query::{Consolidation, QueryTarget};
use crate::runtime::Runtime;
use bytes::Bytes;
use hypha_core::hlc::Timestamp;
use hypha_core::keyexpr::{KeyExprError, OwnedKeyExpr};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Where a new consumer starts (ignored once it exists: its position is the storage's).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Start {
    /// Everything the storage holds (the default).
    #[default]
    All,
    /// Only what is stored after the consumer is created.
    New,
    /// From a time expression: `now(-10m)`, an RFC 3339 time.
    At(String),
}

/// Settings of a durable subscriber ([`crate::SubscriberBuilder::durable`]).
pub struct DurableBuilder {
    rt: Arc<Runtime>,
    key: Result<OwnedKeyExpr, KeyExprError>,
    name: String,
    ack_wait: Duration,
    max_deliver: u32,
    dead: Option<String>,
    max_pending: usize,
    start: Start,
    probe_wait: Duration,
}

/// Why a durable subscriber could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The key expression is invalid.
    #[error("invalid key expression: {0}")]
    KeyExpr(#[from] KeyExprError),
    /// No storage holding the whole key expression answered within the wait.
    #[error("no storage holds {key} (a durable subscriber needs one holding its whole key)")]
    NoStorage {
        /// The key expression.
        key: String,
    },
    /// The storage refused the consumer (a bad setting, a name taken by another key).
    #[error("the storage refused consumer {name:?}: {reason}")]
    Refused {
        /// The consumer's name.
        name: String,
        /// Its words.
        reason: String,
    },
    /// The name is empty or longer than 128 bytes.
    #[error("a consumer name has 1 to 128 bytes")]
    Name,
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

impl DurableBuilder {
    pub(crate) fn new(
        rt: Arc<Runtime>,
        key: Result<OwnedKeyExpr, KeyExprError>,
        name: &str,
    ) -> Self {
        DurableBuilder {
            rt,
            key,
            name: name.to_string(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 0,
            dead: None,
            max_pending: 1000,
            start: Start::All,
            probe_wait: Duration::from_secs(5),
        }
    }

    /// How long a delivered sample waits for its acknowledgement before it is delivered
    /// again (default 30 s).
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Deliveries of one sample at most (default 0: no bound).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
        self
    }

    /// Where a sample that reached `max_deliver` is published (its attachment names the
    /// original key and timestamp); without one it is dropped and counted by the storage.
    pub fn dead_letter(mut self, key: &str) -> Self {
        self.dead = Some(key.to_string());
        self
    }

    /// Samples delivered and not yet acknowledged, at most (default 1,000; per member).
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.clamp(1, crate::storage::consumer::MAX_PULL);
        self
    }

    /// Where a new consumer starts.
    pub fn start(mut self, s: Start) -> Self {
        self.start = s;
        self
    }

    /// How long to look for a storage holding the key (default 5 s).
    pub fn storage_wait(mut self, d: Duration) -> Self {
        self.probe_wait = d;
        self
    }

    /// Finds the storage, creates (or joins) the consumer, and starts pulling.
    pub async fn declare(self) -> Result<DurableSubscriber, DurableError> {
        let key = self.key?;
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(DurableError::Name);
        }
        if self.rt.is_closed() {
            return Err(DurableError::Closed);
        }
        let storage = probe(&self.rt, &key, &self.name, self.probe_wait)
            .await
            .ok_or_else(|| DurableError::NoStorage {
                key: key.to_string(),
            })?;
        let mut member = [0u8; 8];
        let _ = getrandom::fill(&mut member);
        let member = u64::from_le_bytes(member);
        let mut params = format!(
            "_consume={};_storage={storage};_member={};_ack_wait={};_max_deliver={}",
            self.name,
            member,
            self.ack_wait.as_millis(),
            self.max_deliver,
        );
        if let Some(d) = &self.dead {
            params.push_str(&format!(";_dead={d}"));
        }
        match &self.start {
            Start::All => {}
            Start::New => params.push_str(";_start=new"),
            Start::At(t) => params.push_str(&format!(";_start={t}")),
        }
        let stats = Arc::new(DurableStats::default());
        let (tx, rx) = mpsc::channel(self.max_pending);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(self.max_pending));
        let recent = Arc::new(std::sync::Mutex::new(Recent::default()));
        let puller = Puller {
            rt: self.rt.clone(),
            selector: format!("{key}?{params}"),
            permits: permits.clone(),
            max: self.max_pending,
            tx,
            ack_tx: ack_tx.clone(),
            stats: stats.clone(),
            recent: recent.clone(),
        };
        // The first pull creates the consumer: its refusal is the declaration's error.
        let first = puller.pull(0).await;
        if let Err(reason) = first {
            return Err(DurableError::Refused {
                name: self.name,
                reason,
            });
        }
        let (done_tx, done_rx) = tokio::sync::watch::channel(0u64);
        let acker = Acker {
            rt: self.rt.clone(),
            selector: format!("{key}?_consume={};_storage={storage};_ack=1", self.name),
            rx: ack_rx,
            stats: stats.clone(),
            done: done_tx,
        };
        let tasks = vec![tokio::spawn(puller.run()), tokio::spawn(acker.run())];
        Ok(DurableSubscriber {
            rx: tokio::sync::Mutex::new(rx),
            stats,
            done: done_rx,
            tasks,
            release: Some((
                self.rt.clone(),
                format!(
                    "{key}?_consume={};_storage={storage};_member={member};_release=1",
                    self.name
                ),
            )),
            name: self.name,
            storage,
        })
    }
}

impl std::future::IntoFuture for DurableBuilder {
    type Output = Result<DurableSubscriber, DurableError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.declare())
    }
}

/// Asks the complete queryables of `key` whether they serve consumers; the lowest store id
/// among those that do.
async fn probe(
    rt: &Arc<Runtime>,
    key: &OwnedKeyExpr,
    name: &str,
    wait: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let replies =
            super::query::GetBuilder::new(rt.clone(), &format!("{key}?_consume={name};_probe=1"))
                .target(QueryTarget::AllComplete)
                .consolidation(Consolidation::None)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?
                .collect()
                .await;
        let best = replies
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .filter(|s| s.attachment.as_deref() == Some(b"consumer"))
            .filter_map(|s| s.payload_str().map(str::to_string))
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .min();
        if best.is_some() || tokio::time::Instant::now() >= deadline {
            return best;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counters of a durable subscriber.
#[derive(Debug, Default)]
pub struct DurableStats {
    /// Samples delivered to the application.
    pub received: AtomicU64,
    /// Of them, deliveries after the first (ack timeouts, restarts).
    pub redelivered: AtomicU64,
    /// Redeliveries of samples already acknowledged here (dropped, acknowledged again).
    pub duplicates: AtomicU64,
    /// Acknowledgements the storage has confirmed (on disk).
    pub acked: AtomicU64,
    /// Failed pulls and acknowledgements (retried).
    pub errors: AtomicU64,
    /// Acknowledgements given (by the application, and again for duplicates).
    pub given: AtomicU64,
}

/// The samples acknowledged lately (to drop their redeliveries).
#[derive(Default)]
struct Recent {
    set: HashSet<Timestamp>,
    order: VecDeque<Timestamp>,
}

const RECENT: usize = 65_536;

impl Recent {
    fn add(&mut self, t: Timestamp) {
        if self.set.insert(t) {
            self.order.push_back(t);
            if self.order.len() > RECENT
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// One sample delivered to a durable subscriber; acknowledge it with [`ack`](Self::ack).
/// Dropping it unacknowledged leaves it to be delivered again after the consumer's
/// `ack_wait`.
pub struct Delivered {
    /// The sample (its timestamp names it).
    pub sample: Sample,
    /// How many times it has been delivered (1 the first time).
    pub deliveries: u32,
    ack_tx: mpsc::UnboundedSender<Timestamp>,
    recent: Arc<std::sync::Mutex<Recent>>,
    stats: Arc<DurableStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Delivered({}, {})", self.sample.key, self.deliveries)
    }
}

impl Delivered {
    /// Acknowledges the sample: it will not be delivered again. Sent in the background,
    /// batched with others; [`DurableSubscriber::flush`] waits until the storage has them.
    pub fn ack(self) {
        if let Some(t) = self.sample.timestamp {
            self.recent.lock().unwrap_or_else(|p| p.into_inner()).add(t);
            self.stats.given.fetch_add(1, Ordering::Relaxed);
            let _ = self.ack_tx.send(t);
        }
    }
}

/// A durable subscriber (see the module docs). Dropping it stops pulling; what it was
/// delivered and did not acknowledge goes again after `ack_wait`.
pub struct DurableSubscriber {
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivered>>,
    stats: Arc<DurableStats>,
    done: tokio::sync::watch::Receiver<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the storage, when dropped, to hand what this member holds to the others.
    release: Option<(Arc<Runtime>, String)>,
    name: String,
    storage: String,
}

impl std::fmt::Debug for DurableSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DurableSubscriber({} at {})", self.name, self.storage)
    }
}

impl Drop for DurableSubscriber {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // What it was handed and did not acknowledge goes to the next pull at once (a
        // process that dies without this waits for `ack_wait`). Needs a runtime.
        if let (Some(release), Ok(h)) = (self.release_msg(), tokio::runtime::Handle::try_current())
        {
            h.spawn(release);
        }
    }
}

impl DurableSubscriber {
    /// Stops pulling and hands what this member holds unacknowledged to the other members
    /// (or to the next subscriber of its name) at once, rather than after `ack_wait` (which
    /// is what a dropped subscriber's samples wait when the release cannot be sent).
    pub async fn close(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(release) = self.release_msg() {
            release.await;
        }
    }

    /// The release message: what this member holds goes to the next pull; what never
    /// reached the application (still buffered here) does not count as a delivery.
    fn release_msg(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (rt, sel) = self.release.take()?;
        if rt.is_closed() {
            return None;
        }
        let mut unseen: Vec<Timestamp> = Vec::new();
        if let Ok(mut rx) = self.rx.try_lock() {
            rx.close();
            while let Ok(d) = rx.try_recv() {
                unseen.extend(d.sample.timestamp);
            }
        }
        let payload = postcard::to_allocvec(&unseen).unwrap_or_default();
        Some(async move {
            if let Ok(r) = super::query::GetBuilder::new(rt, &sel)
                .target(QueryTarget::AllComplete)
                .consolidation(Consolidation::None)
                .timeout(Duration::from_secs(2))
                .payload(payload)
                .send()
                .await
            {
                let _ = r.collect().await;
            }
        })
    }

    /// The next sample.
    pub async fn recv(&self) -> Option<Delivered> {
        self.rx.lock().await.recv().await
    }

    /// Its counters.
    pub fn stats(&self) -> &DurableStats {
        &self.stats
    }

    /// The id of the storage that keeps its position (its store's id, the same after a
    /// restart of the storage).
    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// Waits until every acknowledgement given so far is confirmed by the storage (on
    /// disk), at most `timeout`; whether they are.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let want = self.given();
        let mut done = self.done.clone();
        tokio::time::timeout(timeout, done.wait_for(|n| *n >= want))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn given(&self) -> u64 {
        self.stats.given.load(Ordering::Relaxed)
    }
}

struct Puller {
    rt: Arc<Runtime>,
    selector: String,
    permits: Arc<Semaphore>,
    max: usize,
    tx: mpsc::Sender<Delivered>,
    ack_tx: mpsc::UnboundedSender<Timestamp>,
    stats: Arc<DurableStats>,
    recent: Arc<std::sync::Mutex<Recent>>,
}

impl Puller {
    async fn run(self) {
        let mut failures = 0u32;
        loop {
            // Wait for room, then ask for as much as there is.
            let Ok(p) = self.permits.clone().acquire_owned().await else {
                return;
            };
            drop(p);
            let room = self.permits.available_permits().clamp(1, self.max);
            match self.pull(room).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!("durable subscriber {}: pull failed: {e}", self.selector);
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10))))
                        .await;
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }

    /// One pull of up to `n` samples (0: only create the consumer, wait for nothing).
    async fn pull(&self, n: usize) -> Result<(), String> {
        let wait = if n == 0 { 0 } else { 1000 };
        let sel = format!("{};_max={};_wait={wait}", self.selector, n.max(1));
        let mut replies = super::query::GetBuilder::new(self.rt.clone(), &sel)
            .target(QueryTarget::AllComplete)
            .consolidation(Consolidation::None)
            .timeout(Duration::from_millis(wait + 5000))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut ended = false;
        while let Some(r) = replies.recv().await {
            let s = match r.result {
                Ok(s) => s,
                Err(e) => return Err(String::from_utf8_lossy(&e.payload).into_owned()),
            };
            let Some(att) = s.attachment.clone() else {
                continue;
            };
            if att.as_ref() == b"end" {
                ended = true;
                continue;
            }
            let deliveries = std::str::from_utf8(&att)
                .ok()
                .and_then(|a| a.strip_prefix("d="))
                .and_then(|d| d.parse::<u32>().ok())
                .unwrap_or(1);
            let Some(t) = s.timestamp else { continue };
            if self
                .recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set
                .contains(&t)
            {
                // Acknowledged here already (that acknowledgement was lost): again.
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.stats.given.fetch_add(1, Ordering::Relaxed);
                let _ = self.ack_tx.send(t);
                continue;
            }
            if deliveries > 1 {
                self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return Ok(());
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let mut sample = s;
            sample.attachment = None;
            let d = Delivered {
                sample,
                deliveries,
                ack_tx: self.ack_tx.clone(),
                recent: self.recent.clone(),
                stats: self.stats.clone(),
                _permit: permit,
            };
            if self.tx.send(d).await.is_err() {
                return Ok(());
            }
        }
        if ended {
            Ok(())
        } else {
            Err("the consumer's storage did not answer".into())
        }
    }
}

struct Acker {
    rt: Arc<Runtime>,
    selector: String,
    rx: mpsc::UnboundedReceiver<Timestamp>,
    stats: Arc<DurableStats>,
    done: tokio::sync::watch::Sender<u64>,
}

impl Acker {
    async fn run(mut self) {
        let mut batch: Vec<Timestamp> = Vec::new();
        let mut confirmed = 0u64;
        let mut failures = 0u32;
        loop {
            if batch.is_empty() {
                match self.rx.recv().await {
                    Some(t) => batch.push(t),
                    None => return,
                }
            }
            while batch.len() < crate::storage::consumer::MAX_ACKS {
                match self.rx.try_recv() {
                    Ok(t) => batch.push(t),
                    Err(_) => break,
                }
            }
            let payload = match postcard::to_allocvec(&batch) {
                Ok(p) => Bytes::from(p),
                Err(_) => return,
            };
            let ok = match super::query::GetBuilder::new(self.rt.clone(), &self.selector)
                .target(QueryTarget::AllComplete)
                .consolidation(Consolidation::None)
                .timeout(Duration::from_secs(5))
                .payload(payload)
                .send()
                .await
            {
                Ok(r) => {
                    let replies = r.collect().await;
                    match replies.iter().find_map(|r| r.result.as_ref().err()) {
                        Some(e) => Err(String::from_utf8_lossy(&e.payload).into_owned()),
                        None if replies.iter().any(|r| {
                            r.result
                                .as_ref()
                                .is_ok_and(|s| s.attachment.as_deref() == Some(b"acked"))
                        }) =>
                        {
                            Ok(())
                        }
                        None => Err("the consumer's storage did not answer".into()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match ok {
                Ok(()) => {
                    failures = 0;
                    confirmed += batch.len() as u64;
                    self.stats
                        .acked
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.done.send_replace(confirmed);
                    batch.clear();
                }
                Err(e) => {
                    failures += 1;
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(
                            "durable subscriber: acknowledgement of {} samples failed (retrying): {e}",
                            batch.len()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10))))
                        .await;
                }
            }
        }
    }
}
