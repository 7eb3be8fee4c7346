//! Durable consumers, the storage's side (issue 17): a named position in the history that the
//! storage keeps for its consumers, per-sample acknowledgements, redelivery after an ack
//! timeout, a bound on deliveries with a dead-letter key, and work-queue groups (several
//! members pulling under one name share the samples: each is handed to one member at a time).
//!
//! Nothing new on the wire: a consumer *pulls* with a query on its key expression,
//! `key?_consume=NAME;_storage=ID;_member=M;_max=N;_wait=MS[;config]`, and the storage answers
//! with up to `N` samples it has handed to that member (each with its delivery count in the
//! attachment, `d=K`), then an end marker (attachment `end`), waiting up to `_wait` for new
//! samples when it has none. Acknowledgements are a query `key?_consume=NAME;_storage=ID;_ack=1`
//! whose payload lists the acknowledged samples' timestamps (postcard); the storage answers once
//! the consumer's new position is on disk (written and synced), so an acknowledged sample is
//! never delivered again, even after a crash of the storage.
//!
//! A sample is named by its timestamp (unique per node, and the history's order). Per consumer
//! the storage keeps `done`: every matching sample at or before it is acknowledged, `acked`:
//! those acknowledged after `done`, and, in memory only, `pending`: handed out, not yet
//! acknowledged (member, deadline, deliveries). Every sample in `(done, scanned]` is acked or
//! pending; `done` moves up to just before the oldest pending one. After a restart of the
//! storage `pending` is empty and the scan starts again at `done`, skipping `acked`: what was
//! pending is delivered again (at-least-once, counted as a redelivery by the consumer).

use super::{Shared, lock};
use crate::Session;
use crate::api::Sample;
use crate::api::query::Query;
use bytes::Bytes;
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::id::NodeId;
use hypha_core::keyexpr::OwnedKeyExpr;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Most samples a pull may ask for.
pub const MAX_PULL: usize = 4096;
/// Most samples handed out and not yet acknowledged, per consumer (all members together;
/// each member asks for no more than its own `max_pending` allows).
pub const MAX_PENDING: usize = 65_536;
/// Most acknowledged samples kept above `done` (behind a slow pending one); beyond it no new
/// samples are handed out until `done` moves (redeliveries go on).
const MAX_ACKED: usize = 262_144;
/// Most timestamps one acknowledgement may carry.
pub const MAX_ACKS: usize = 65_536;
/// Most consumers per storage.
const MAX_CONSUMERS: usize = 1024;
/// Longest a pull waits for new samples.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Longest name.
const MAX_NAME: usize = 128;
/// Records looked at per page when scanning for new samples.
const SCAN: usize = 4096;

/// A consumer's settings (from its pulls; the latest pull's win, but not its key or start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    /// How long a handed-out sample waits for its acknowledgement before it is delivered
    /// again (to any member).
    pub ack_wait_ms: u64,
    /// Deliveries of one sample at most (0: no bound); after the last one it goes to `dead`
    /// (or is dropped, counted, if there is none) and counts as acknowledged.
    pub max_deliver: u32,
    /// Where samples that reached `max_deliver` are published.
    pub dead: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            ack_wait_ms: 30_000,
            max_deliver: 0,
            dead: None,
        }
    }
}

/// Counters of one consumer (`@/<id>/storages/**` shows them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerCounts {
    /// Deliveries (first ones and redeliveries).
    pub delivered: u64,
    /// Deliveries after the first (ack timeouts, restarts).
    pub redelivered: u64,
    /// Samples acknowledged.
    pub acked: u64,
    /// Samples that reached `max_deliver` and went to the dead-letter key.
    pub dead_lettered: u64,
    /// Samples that reached `max_deliver` with no dead-letter key (dropped).
    pub dropped: u64,
}

/// A consumer as its storage sees it ([`crate::storage::Storage::consumers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// The key expression it follows.
    pub key: String,
    /// Its counters.
    pub counts: ConsumerCounts,
    /// Samples handed out and not acknowledged (in memory: 0 after a restart).
    pub pending: usize,
    /// Samples acknowledged after `position` (behind an unacknowledged one).
    pub acked_ahead: usize,
    /// Every sample at or before this one is acknowledged (`None`: from the start).
    pub position: Option<Timestamp>,
}

/// What is kept on disk per consumer.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u8,
    name: String,
    key: String,
    done: Option<Timestamp>,
    acked: Vec<Timestamp>,
    config: ConsumerConfig,
    counts: ConsumerCounts,
}

struct Pending {
    member: u64,
    deadline: Instant,
    deliveries: u32,
}

struct Consumer {
    key: OwnedKeyExpr,
    config: ConsumerConfig,
    done: Option<Timestamp>,
    acked: BTreeSet<Timestamp>,
    pending: BTreeMap<Timestamp, Pending>,
    /// Every matching sample at or before it has been handed out at least once (or was
    /// acknowledged already).
    scanned: Option<Timestamp>,
    counts: ConsumerCounts,
    /// Changes that need writing, and the last one written (a write covers every change made
    /// before it, so concurrent acknowledgements share one sync: group commit).
    version: u64,
    written: u64,
}

impl Consumer {
    fn saved(&self, name: &str) -> Saved {
        Saved {
            version: 1,
            name: name.to_string(),
            key: self.key.to_string(),
            done: self.done,
            acked: self.acked.iter().copied().collect(),
            config: self.config.clone(),
            counts: self.counts,
        }
    }

    /// Whether `t` is acknowledged (at or before `done`, or in `acked`).
    fn is_acked(&self, t: &Timestamp) -> bool {
        self.done.is_some_and(|d| *t <= d) || self.acked.contains(t)
    }

    /// Moves `done` as far as the acknowledgements allow: every sample in `(done, scanned]`
    /// is acked or pending, so all before the oldest pending one (or up to `scanned` when
    /// none is) is acked.
    fn advance(&mut self) {
        let Some(scanned) = self.scanned else { return };
        let bound = match self.pending.keys().next() {
            Some(first) => self.acked.range(..*first).next_back().copied(),
            None => Some(scanned),
        };
        let Some(b) = bound.map(|b| b.min(scanned)) else {
            return;
        };
        if self.done.is_some_and(|d| b <= d) {
            return;
        }
        self.done = Some(b);
        self.acked = self.acked.split_off(&next_after(b));
    }
}

/// The smallest timestamp after `t` (for `BTreeSet::split_off`).
fn next_after(t: Timestamp) -> Timestamp {
    let mut id = t.id.0;
    for b in id.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Timestamp {
                time: t.time,
                id: NodeId(id),
            };
        }
    }
    Timestamp {
        time: Ntp64(t.time.0.saturating_add(1)),
        id: NodeId([0; 16]),
    }
}

/// A storage's consumers.
pub(crate) struct Consumers {
    dir: Option<PathBuf>,
    /// This store's id (kept in `<dir>/id`, so the same after a restart): consumers name the
    /// storage they pull from with it.
    id: String,
    map: Mutex<HashMap<String, Consumer>>,
    /// The writer's batch number: a pull with nothing to hand out waits for it to move.
    batches: tokio::sync::watch::Receiver<u64>,
    /// Pending deliveries timing out: a waiting pull wakes for the earliest.
    changed: tokio::sync::Notify,
    /// One file write at a time.
    writing: Mutex<()>,
    errors: AtomicU64,
}

/// Where a storage's consumer files go: `<data dir>/consumers/`.
pub(super) fn dir_of(data: &Path) -> PathBuf {
    data.join("consumers")
}

fn file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.bin", hex::encode(name.as_bytes())))
}

fn bad(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Consumers {
    /// Loads the consumers kept in `dir` (none in memory).
    pub(super) fn open(
        dir: Option<PathBuf>,
        batches: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Self, super::StorageError> {
        let mut map = HashMap::new();
        let mut fresh = [0u8; 16];
        let _ = getrandom::fill(&mut fresh);
        let mut id = hex::encode(fresh);
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(|e| {
                super::StorageError::Config(format!("cannot create {}: {e}", d.display()))
            })?;
            let idf = d.join("id");
            match std::fs::read_to_string(&idf) {
                Ok(s)
                    if s.trim().len() == 32 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    id = s.trim().to_string();
                }
                Ok(_) => {
                    return Err(super::StorageError::Open {
                        path: idf,
                        reason: "not a store id (32 hex digits)".into(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::write(&idf, &id)
                        .and_then(|()| std::fs::File::open(&idf)?.sync_all())
                        .map_err(|e| {
                            super::StorageError::Config(format!(
                                "cannot write {}: {e}",
                                idf.display()
                            ))
                        })?;
                }
                Err(e) => {
                    return Err(super::StorageError::Open {
                        path: idf,
                        reason: e.to_string(),
                    });
                }
            }
            let entries = std::fs::read_dir(d).map_err(|e| {
                super::StorageError::Config(format!("cannot read {}: {e}", d.display()))
            })?;
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "bin") {
                    continue;
                }
                let saved: Saved = std::fs::read(&p)
                    .map_err(bad)
                    .and_then(|b| postcard::from_bytes(&b).map_err(bad))
                    .map_err(|e| super::StorageError::Open {
                        path: p.clone(),
                        reason: format!("consumer state does not decode: {e}"),
                    })?;
                let key = OwnedKeyExpr::autocanonize(saved.key.clone()).map_err(|e| {
                    super::StorageError::Open {
                        path: p.clone(),
                        reason: format!("consumer key: {e}"),
                    }
                })?;
                map.insert(
                    saved.name,
                    Consumer {
                        key,
                        config: saved.config,
                        done: saved.done,
                        acked: saved.acked.into_iter().collect(),
                        pending: BTreeMap::new(),
                        scanned: saved.done,
                        counts: saved.counts,
                        version: 0,
                        written: 0,
                    },
                );
            }
        }
        Ok(Consumers {
            id,
            dir,
            map: Mutex::new(map),
            batches,
            changed: tokio::sync::Notify::new(),
            writing: Mutex::new(()),
            errors: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Consumer>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest position any consumer still needs (retention keeps what comes after):
    /// `None` when there are no consumers.
    pub(super) fn floor(&self) -> Option<Ntp64> {
        self.lock()
            .values()
            .map(|c| c.done.map_or(Ntp64(0), |d| d.time))
            .min()
    }

    /// Every consumer, by name.
    pub(crate) fn list(&self) -> Vec<ConsumerInfo> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(n, c)| ConsumerInfo {
                name: n.clone(),
                key: c.key.to_string(),
                counts: c.counts,
                pending: c.pending.len(),
                acked_ahead: c.acked.len(),
                position: c.done,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Records a change of `name` that must reach the disk; returns the version to pass to
    /// [`save`](Self::save).
    fn touch(c: &mut Consumer) -> u64 {
        c.version += 1;
        c.version
    }

    /// Makes `name`'s state at `version` (or later) durable: written to a temporary file,
    /// synced, renamed over the old one, directory synced. Writes are one at a time, and a
    /// write that finds its version already written returns at once.
    fn save(&self, name: &str, version: u64) -> Result<(), String> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, v) = {
            let g = self.lock();
            let Some(c) = g.get(name) else {
                return Ok(());
            };
            if c.written >= version {
                return Ok(());
            }
            (
                postcard::to_allocvec(&c.saved(name)).map_err(bad)?,
                c.version,
            )
        };
        let path = file_of(dir, name);
        let tmp = path.with_extension("tmp");
        let r = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "cannot save consumer {name:?} in {}: {e}",
                path.display()
            ));
        }
        if let Some(c) = self.lock().get_mut(name) {
            c.written = c.written.max(v);
        }
        Ok(())
    }

    /// [`save`](Self::save) off the async threads.
    async fn save_async(self: &Arc<Self>, name: &str, version: u64) -> Result<(), String> {
        let this = self.clone();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || this.save(&n, version))
            .await
            .map_err(bad)?
    }

    /// Answers one `_consume` query.
    pub(super) async fn answer(
        self: &Arc<Self>,
        q: &Query,
        name: &str,
        backend: &Shared,
        session: &Session,
    ) {
        if q.parameter("_storage").is_some_and(|id| id != self.id) {
            return; // another storage's consumer
        }
        let r = if q.parameter("_probe").is_some() {
            reply_probe(q, &self.id).await;
            Ok(())
        } else if q.parameter("_ack").is_some() {
            self.ack(q, name).await
        } else if q.parameter("_release").is_some() {
            // A member leaving: what it holds unacknowledged goes to the next pull now rather
            // than after `ack_wait`.
            let member = q.parameter("_member").map_or(Ok(0), |v| num(v, "_member"));
            let unseen: Vec<Timestamp> = q
                .payload()
                .and_then(|p| postcard::from_bytes(p).ok())
                .unwrap_or_default();
            match member {
                Ok(m) => {
                    self.release_member(name, m, &unseen);
                    reply_word(q, "released").await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            self.pull(q, name, backend, session).await
        };
        if let Err(e) = r {
            let _ = q.reply_err(e).await;
        }
    }

    /// Creates the consumer on its first pull; checks the key of later ones, takes their
    /// config.
    /// Returns the version to write when it created the consumer (its start must reach the
    /// disk before the first delivery), `None` otherwise.
    fn ensure(&self, q: &Query, name: &str) -> Result<Option<u64>, String> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!(
                "a consumer name has 1 to {MAX_NAME} bytes, not {}",
                name.len()
            ));
        }
        let mut config = ConsumerConfig::default();
        if let Some(v) = q.parameter("_ack_wait") {
            config.ack_wait_ms = num(v, "_ack_wait")?.clamp(10, 86_400_000);
        }
        if let Some(v) = q.parameter("_max_deliver") {
            config.max_deliver = u32::try_from(num(v, "_max_deliver")?).unwrap_or(u32::MAX);
        }
        if let Some(v) = q.parameter("_dead") {
            let k = OwnedKeyExpr::autocanonize(v.to_string())
                .map_err(|e| format!("invalid _dead key {v:?}: {e}"))?;
            if k.as_keyexpr().is_wild() {
                return Err(format!("_dead must be a concrete key, not {v:?}"));
            }
            config.dead = Some(k.to_string());
        }
        let key: OwnedKeyExpr = q.key_expr().into();
        let mut g = self.lock();
        if let Some(c) = g.get_mut(name) {
            if c.key != key {
                return Err(format!(
                    "consumer {name:?} follows {}, not {key} (names are per storage)",
                    c.key
                ));
            }
            c.config = config;
            return Ok(None);
        }
        if g.len() >= MAX_CONSUMERS {
            return Err(format!(
                "this storage has {MAX_CONSUMERS} consumers already"
            ));
        }
        let done = match q.parameter("_start").unwrap_or("all") {
            "all" => None,
            "new" => Some(Timestamp {
                time: Ntp64::from_unix_micros(super::timeexpr::now_us().max(0) as u64),
                id: NodeId([0xff; 16]),
            }),
            t => {
                let us = super::timeexpr::parse_instant_us(t, super::timeexpr::now_us())
                    .map_err(|e| format!("invalid _start {t:?}: {e}"))?;
                Some(Timestamp {
                    time: Ntp64::from_unix_micros(us.max(0) as u64),
                    id: NodeId([0; 16]),
                })
            }
        };
        let mut c = Consumer {
            key,
            config,
            done,
            acked: BTreeSet::new(),
            pending: BTreeMap::new(),
            scanned: done,
            counts: ConsumerCounts::default(),
            version: 0,
            written: 0,
        };
        let v = Self::touch(&mut c);
        g.insert(name.to_string(), c);
        Ok(Some(v))
    }

    async fn pull(
        self: &Arc<Self>,
        q: &Query,
        name: &str,
        backend: &Shared,
        session: &Session,
    ) -> Result<(), String> {
        let member = q
            .parameter("_member")
            .map_or(Ok(0), |v| num(v, "_member"))?;
        let max = q
            .parameter("_max")
            .map_or(Ok(1), |v| num(v, "_max"))?
            .clamp(1, MAX_PULL as u64) as usize;
        let wait = q
            .parameter("_wait")
            .map_or(Ok(0), |v| num(v, "_wait"))
            .map(Duration::from_millis)?
            .min(MAX_WAIT);
        // Checked under the lock on every pull; only a new consumer's start is written (off
        // the async threads), so that a restart does not move it.
        if let Some(v) = self.ensure(q, name)? {
            self.save_async(name, v).await?;
        }
        let deadline = Instant::now() + wait;
        let mut batches = self.batches.clone();
        loop {
            batches.borrow_and_update();
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (out, next_timeout) = self.hand_out(name, member, max, backend, session).await?;
            if !out.is_empty() {
                let mut left: Vec<Timestamp> = out.iter().map(|(s, _)| s.timestamp).collect();
                left.reverse();
                for (s, d) in out {
                    let mut s = super::to_sample(s);
                    s.attachment = Some(Bytes::from(format!("d={d}")));
                    if q.reply_sample(s).await.is_err() {
                        // The member is gone: what it was not sent goes to the next pull.
                        self.release(name, &left);
                        return Ok(());
                    }
                    left.pop();
                }
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let until = next_timeout.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = batches.changed() => {}
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        reply_word(q, "end").await;
        Ok(())
    }

    /// Hands up to `max` samples to `member`: timed-out ones first, then new ones. Returns
    /// them with their delivery counts, and when the next pending delivery times out.
    async fn hand_out(
        self: &Arc<Self>,
        name: &str,
        member: u64,
        max: usize,
        backend: &Shared,
        session: &Session,
    ) -> Result<(Vec<(super::StoredSample, u32)>, Option<Instant>), String> {
        let now = Instant::now();
        let (again, dead, room, from, key, ack_wait, dead_key) = {
            let mut g = self.lock();
            let c = g
                .get_mut(name)
                .ok_or_else(|| format!("no consumer {name:?}"))?;
            let ack_wait = Duration::from_millis(c.config.ack_wait_ms);
            let mut again = Vec::new();
            let mut dead = Vec::new();
            let expired: Vec<Timestamp> = c
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(t, _)| *t)
                .take(max)
                .collect();
            for t in expired {
                let Some(p) = c.pending.get_mut(&t) else {
                    continue;
                };
                if c.config.max_deliver > 0 && p.deliveries >= c.config.max_deliver {
                    c.pending.remove(&t);
                    c.acked.insert(t);
                    dead.push(t);
                } else {
                    p.deliveries += 1;
                    p.member = member;
                    p.deadline = now + ack_wait;
                    again.push((t, p.deliveries));
                }
            }
            let room = if c.acked.len() >= MAX_ACKED {
                0
            } else {
                // A member asks for no more than it has room for (its own `max_pending`);
                // the storage bounds the total.
                (max - again.len()).min(MAX_PENDING.saturating_sub(c.pending.len()))
            };
            (
                again,
                dead,
                room,
                c.scanned,
                c.key.clone(),
                ack_wait,
                c.config.dead.clone(),
            )
        };
        // Read what is needed: the samples to deliver again or dead-letter, and new ones.
        let b = backend.clone();
        let wanted: Vec<Timestamp> = again
            .iter()
            .map(|(t, _)| *t)
            .chain(dead.iter().copied())
            .collect();
        let this = self.clone();
        let name2 = name.to_string();
        let (old, fresh, seen_to) = tokio::task::spawn_blocking(move || {
            let store = lock(&b);
            let mut old = HashMap::new();
            for t in wanted {
                let page = store
                    .history_page(&key.as_keyexpr(), None, t.time, t.time, 64, 64)
                    .map_err(bad)?;
                if let Some(s) = page.samples.into_iter().find(|s| s.timestamp == t) {
                    old.insert(t, s);
                }
            }
            let mut fresh = Vec::new();
            // The last sample looked at and either taken or skipped as already handled.
            let mut seen_to: Option<Timestamp> = None;
            if room > 0 {
                let skip = |s: &super::StoredSample| {
                    from.is_some_and(|f| s.timestamp <= f) || {
                        let g = this.lock();
                        g.get(&name2).is_some_and(|c| {
                            c.acked.contains(&s.timestamp) || c.pending.contains_key(&s.timestamp)
                        })
                    }
                };
                let mut after: Option<Vec<u8>> = None;
                let start = from.map_or(Ntp64(0), |f| f.time);
                for _ in 0..8 {
                    let page = store
                        .history_page(
                            &key.as_keyexpr(),
                            after.as_deref(),
                            start,
                            Ntp64(u64::MAX),
                            room - fresh.len() + 16,
                            SCAN,
                        )
                        .map_err(bad)?;
                    for s in page.samples {
                        if fresh.len() >= room {
                            break;
                        }
                        seen_to = Some(s.timestamp);
                        if !skip(&s) {
                            fresh.push(s);
                        }
                    }
                    match page.next {
                        Some(n) if fresh.len() < room => after = Some(n),
                        _ => break,
                    }
                }
            }
            Ok::<_, String>((old, fresh, seen_to))
        })
        .await
        .map_err(bad)??;
        // Record the new deliveries.
        let mut out = Vec::new();
        let (contended, dirty, next, dead_samples) = {
            let mut g = self.lock();
            let c = g
                .get_mut(name)
                .ok_or_else(|| format!("no consumer {name:?}"))?;
            for (t, d) in again {
                match old.get(&t) {
                    Some(s) if c.pending.contains_key(&t) => {
                        c.counts.delivered += 1;
                        if d > 1 {
                            c.counts.redelivered += 1;
                        }
                        out.push((s.clone(), d));
                    }
                    Some(_) => {} // acknowledged meanwhile
                    None => {
                        // Retention removed it: nothing to deliver; counts as done.
                        c.pending.remove(&t);
                        c.acked.insert(t);
                    }
                }
            }
            let mut dead_samples = Vec::new();
            for t in &dead {
                match (&dead_key, old.get(t)) {
                    (Some(_), Some(s)) => {
                        c.counts.dead_lettered += 1;
                        dead_samples.push(s.clone());
                    }
                    _ => c.counts.dropped += 1,
                }
            }
            let mut contended = false;
            for s in fresh {
                let t = s.timestamp;
                if c.is_acked(&t) || c.pending.contains_key(&t) {
                    // Another member's pull took it meanwhile: look again at once.
                    contended = true;
                    continue;
                }
                c.pending.insert(
                    t,
                    Pending {
                        member,
                        deadline: now + ack_wait,
                        deliveries: 1,
                    },
                );
                if c.scanned.is_none_or(|x| t > x) {
                    c.scanned = Some(t);
                }
                c.counts.delivered += 1;
                out.push((s, 1));
            }
            if let Some(t) = seen_to
                && c.scanned.is_none_or(|x| t > x)
            {
                c.scanned = Some(t);
            }
            let dirty = if dead.is_empty() {
                None
            } else {
                c.advance();
                Some(Self::touch(c))
            };
            let next = c.pending.values().map(|p| p.deadline).min();
            (contended, dirty, next, dead_samples)
        };
        if contended {
            self.changed.notify_waiters();
        }
        if !dead.is_empty() {
            if let Some(k) = dead_key {
                for s in dead_samples {
                    tracing::warn!(
                        consumer = name,
                        key = %s.key,
                        "sample reached its delivery bound: published on {k}"
                    );
                    let _ = session
                        .declare_publisher(&k)
                        .map_err(bad)?
                        .put(s.payload.clone())
                        .attachment(format!("{} {}", s.key, s.timestamp))
                        .await;
                }
            } else {
                tracing::warn!(
                    consumer = name,
                    n = dead.len(),
                    "samples reached their delivery bound and no dead-letter key is set: dropped"
                );
            }
        }
        if let Some(v) = dirty {
            self.save_async(name, v).await?;
        }
        Ok((out, next))
    }

    /// Hands `samples` (pending, not sent) to the next pull.
    fn release(&self, name: &str, samples: &[Timestamp]) {
        if let Some(c) = self.lock().get_mut(name) {
            let now = Instant::now();
            for t in samples {
                if let Some(p) = c.pending.get_mut(t) {
                    p.deadline = now;
                    p.deliveries = p.deliveries.saturating_sub(1);
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Hands everything `member` holds to the next pull; those it never showed its
    /// application (`unseen`) do not count as a delivery.
    fn release_member(&self, name: &str, member: u64, unseen: &[Timestamp]) {
        if let Some(c) = self.lock().get_mut(name) {
            let now = Instant::now();
            for p in c.pending.values_mut().filter(|p| p.member == member) {
                p.deadline = now;
            }
            for t in unseen.iter().take(MAX_ACKS) {
                if let Some(p) = c.pending.get_mut(t).filter(|p| p.member == member) {
                    p.deliveries = p.deliveries.saturating_sub(1);
                }
            }
        }
        self.changed.notify_waiters();
    }

    async fn ack(self: &Arc<Self>, q: &Query, name: &str) -> Result<(), String> {
        let list: Vec<Timestamp> = match q.payload() {
            Some(p) => postcard::from_bytes(p).map_err(|e| format!("bad acknowledgement: {e}"))?,
            None => Vec::new(),
        };
        if list.len() > MAX_ACKS {
            return Err(format!(
                "an acknowledgement carries at most {MAX_ACKS} samples, not {}",
                list.len()
            ));
        }
        let v = {
            let mut g = self.lock();
            let c = g
                .get_mut(name)
                .ok_or_else(|| format!("no consumer {name:?} on this storage"))?;
            for t in list {
                if c.is_acked(&t) {
                    continue;
                }
                c.pending.remove(&t);
                c.acked.insert(t);
                c.counts.acked += 1;
            }
            c.advance();
            Self::touch(c)
        };
        self.changed.notify_waiters();
        self.save_async(name, v).await?;
        reply_word(q, "acked").await;
        Ok(())
    }
}

/// Answers a probe: this storage serves consumers, and its id.
async fn reply_probe(q: &Query, id: &str) {
    reply_marker(q, Bytes::from(id.to_string()), "consumer").await;
}

fn num(v: &str, what: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| format!("invalid {what} {v:?}: expected a number"))
}

async fn reply_word(q: &Query, word: &'static str) {
    reply_marker(q, Bytes::new(), word).await;
}

/// A reply that is no stored sample: `payload`, with `word` as its attachment, on the query's
/// key expression.
async fn reply_marker(q: &Query, payload: Bytes, word: &'static str) {
    let key = q.key_expr().as_str().to_string();
    let _ = q
        .reply_sample(Sample {
            key: Arc::from(key.as_str()),
            payload,
            kind: crate::api::SampleKind::Put,
            timestamp: None,
            encoding: None,
            attachment: Some(Bytes::from_static(word.as_bytes())),
            source: None,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(t: u64) -> Timestamp {
        Timestamp {
            time: Ntp64(t),
            id: NodeId([1; 16]),
        }
    }

    fn consumer() -> Consumer {
        Consumer {
            key: OwnedKeyExpr::autocanonize("a/**".to_string()).unwrap(),
            config: ConsumerConfig::default(),
            done: None,
            acked: BTreeSet::new(),
            pending: BTreeMap::new(),
            scanned: None,
            counts: ConsumerCounts::default(),
            version: 0,
            written: 0,
        }
    }

    fn pend(c: &mut Consumer, t: u64) {
        c.pending.insert(
            ts(t),
            Pending {
                member: 0,
                deadline: Instant::now(),
                deliveries: 1,
            },
        );
        c.scanned = Some(c.scanned.map_or(ts(t), |s| s.max(ts(t))));
    }

    fn ack(c: &mut Consumer, t: u64) {
        c.pending.remove(&ts(t));
        c.acked.insert(ts(t));
        c.advance();
    }

    #[test]
    fn the_position_moves_up_to_the_oldest_unacknowledged_sample() {
        let mut c = consumer();
        for t in 1..=5 {
            pend(&mut c, t);
        }
        ack(&mut c, 2);
        ack(&mut c, 3);
        assert_eq!(c.done, None, "1 is still pending");
        assert!(c.is_acked(&ts(2)) && !c.is_acked(&ts(1)));
        ack(&mut c, 1);
        assert_eq!(c.done, Some(ts(3)));
        assert_eq!(c.acked.len(), 0, "acks at or before done are folded in");
        ack(&mut c, 5);
        assert_eq!(c.done, Some(ts(3)), "4 pending");
        ack(&mut c, 4);
        assert_eq!(c.done, Some(ts(5)));
        assert!(c.acked.is_empty() && c.pending.is_empty());
    }

    #[test]
    fn acknowledgements_beyond_the_scan_do_not_move_the_position() {
        // After a restart the scan starts again at `done`: an ack for a later sample (handed
        // out before the restart) is kept, but does not jump over samples not looked at.
        let mut c = consumer();
        c.done = Some(ts(10));
        c.scanned = Some(ts(10));
        c.acked.insert(ts(20));
        c.advance();
        assert_eq!(c.done, Some(ts(10)));
        assert!(c.is_acked(&ts(20)) && !c.is_acked(&ts(15)));
    }

    #[test]
    fn next_after_orders_just_above() {
        let t = ts(7);
        assert!(next_after(t) > t);
        let top = Timestamp {
            time: Ntp64(7),
            id: NodeId([0xff; 16]),
        };
        assert_eq!(next_after(top).time, Ntp64(8));
        assert!(next_after(top) > top);
    }
}
