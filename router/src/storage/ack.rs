//! Acknowledged writes, the storage's side (issue 17): which (publisher, sequence number) pairs
//! it has stored, and which of them are durable, so that an `_ack` query can be answered once
//! the sample is in, and a sample that arrives twice is stored once.
//!
//! The writer numbers its batches. A sample is *received* once its batch is committed, and
//! *durable* once a flush (fsync) has followed that batch. Per publisher the last 4,096
//! sequence numbers are remembered (older ones are forgotten: an ack for them times out, a
//! duplicate of them is stored again); at most 4,096 publishers are followed (more: the
//! table starts afresh).

use crate::sample::SampleSource;
use hypha_core::id::NodeId;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

const RECENT: usize = 4096;
const MAX_SOURCES: usize = 4096;

/// What an acknowledgement waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    /// Committed to the store (visible to queries; a crash can lose it within the flush window).
    Received,
    /// Committed and synced to disk.
    Durable,
}

/// One publisher's recent sequence numbers, and the acknowledgements waiting for it.
#[derive(Default)]
struct Recent {
    order: VecDeque<u32>,
    /// Sequence number → the batch it was committed in. Keys are capped per publisher
    /// (`RECENT`), so a hasher without flood resistance costs at most that many probes.
    batch: FxHashMap<u32, u64>,
    /// Woken when a batch holding one of this publisher's samples is committed: an
    /// acknowledgement waits on its own publisher, not on every commit of every publisher.
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    sources: FxHashMap<(NodeId, u32), Recent>,
    /// Last batch synced.
    durable_batch: u64,
    durable_waiters: usize,
}

impl Inner {
    fn holds(&self, node: NodeId, publisher: u32, sn: u32, level: Level) -> bool {
        let Some(batch) = self
            .sources
            .get(&(node, publisher))
            .and_then(|r| r.batch.get(&sn))
        else {
            return false;
        };
        level == Level::Received || *batch <= self.durable_batch
    }
}

/// Shared by the writer thread and the query tasks.
#[derive(Default)]
pub(super) struct Acks {
    inner: Mutex<Inner>,
    /// Woken by every sync (durable acknowledgements), and when the table starts afresh.
    flushed: Notify,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the items whose source (publisher, sn) is not already stored (one lock for all);
    /// how many were removed.
    pub(super) fn retain_unseen<T>(
        &self,
        items: &mut Vec<T>,
        source: impl Fn(&T) -> Option<&SampleSource>,
    ) -> u64 {
        let before = items.len();
        let g = self.lock();
        if g.sources.is_empty() {
            return 0;
        }
        items.retain(|t| {
            source(t).is_none_or(|s| {
                !g.sources
                    .get(&(s.node, s.publisher))
                    .is_some_and(|r| r.batch.contains_key(&s.sn))
            })
        });
        (before - items.len()) as u64
    }

    /// The samples of batch `batch` are committed.
    pub(super) fn stored(&self, sources: &[SampleSource], batch: u64) {
        if sources.is_empty() {
            return;
        }
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        let mut last = None;
        let mut g = self.lock();
        for s in sources {
            let id = (s.node, s.publisher);
            if g.sources.len() >= MAX_SOURCES && !g.sources.contains_key(&id) {
                // Starting afresh: whoever waits re-reads the table.
                wake.extend(g.sources.drain().map(|(_, r)| r.notify));
                self.flushed.notify_waiters();
                last = None;
            }
            let r = g.sources.entry(id).or_default();
            if last != Some(id) {
                last = Some(id);
                if !wake.iter().any(|n| Arc::ptr_eq(n, &r.notify)) {
                    wake.push(r.notify.clone());
                }
            }
            if r.batch.insert(s.sn, batch).is_none() {
                r.order.push_back(s.sn);
                if r.order.len() > RECENT
                    && let Some(old) = r.order.pop_front()
                {
                    r.batch.remove(&old);
                }
            }
        }
        drop(g);
        for n in wake {
            n.notify_waiters();
        }
    }

    /// Everything up to batch `batch` is synced.
    pub(super) fn flushed(&self, batch: u64) {
        self.lock().durable_batch = batch;
        self.flushed.notify_waiters();
    }

    /// Whether someone waits for a durable acknowledgement (the writer then syncs at once).
    pub(super) fn durable_wanted(&self) -> bool {
        self.lock().durable_waiters > 0
    }

    /// Whether someone waits for a durable acknowledgement while batches up to `batch` are
    /// not all synced (the idle writer then syncs: the sample may have come before the ask).
    pub(super) fn durable_behind(&self, batch: u64) -> bool {
        let g = self.lock();
        g.durable_waiters > 0 && g.durable_batch < batch
    }

    /// Waits until every one of `sns` of `publisher` at `node` is stored at `level`, or until
    /// `deadline`; returns those that are, in the order asked. One lock per wake-up for the
    /// whole list, and only this publisher's commits (and syncs) wake it.
    pub(super) async fn wait_all(
        &self,
        node: NodeId,
        publisher: u32,
        sns: &[u32],
        level: Level,
        deadline: Instant,
    ) -> Vec<u32> {
        let mut missing: Vec<u32> = {
            let mut g = self.lock();
            if level == Level::Durable {
                g.durable_waiters += 1;
            }
            sns.iter()
                .copied()
                .filter(|&sn| !g.holds(node, publisher, sn, level))
                .collect()
        };
        while !missing.is_empty() {
            // The publisher's notify is read afresh each round (the table may have started
            // afresh), and both waits are enabled before the table is read again, so a
            // commit in between is not missed.
            let notify = {
                let mut g = self.lock();
                let room =
                    g.sources.len() < MAX_SOURCES || g.sources.contains_key(&(node, publisher));
                room.then(|| {
                    g.sources
                        .entry((node, publisher))
                        .or_default()
                        .notify
                        .clone()
                })
            };
            let synced = self.flushed.notified();
            tokio::pin!(synced);
            synced.as_mut().enable();
            let mut committed = notify.as_ref().map(|n| Box::pin(n.notified()));
            if let Some(c) = committed.as_mut() {
                c.as_mut().enable();
            }
            {
                let g = self.lock();
                missing.retain(|&sn| !g.holds(node, publisher, sn, level));
            }
            if missing.is_empty() {
                break;
            }
            let woken = async {
                match committed {
                    Some(c) => tokio::select! { _ = c => {}, _ = synced => {} },
                    None => synced.await,
                }
            };
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                let g = self.lock();
                missing.retain(|&sn| !g.holds(node, publisher, sn, level));
                break;
            }
        }
        if level == Level::Durable {
            let mut g = self.lock();
            g.durable_waiters = g.durable_waiters.saturating_sub(1);
        }
        if missing.is_empty() {
            return sns.to_vec();
        }
        missing.sort_unstable();
        sns.iter()
            .copied()
            .filter(|sn| missing.binary_search(sn).is_err())
            .collect()
    }
}

/// Sequence numbers one `_acks` query may ask about, at most.
pub(crate) const MAX_ASKED: usize = 65_536;

/// Parses an `_acks` parameter: `<node id, 32 hex>.<publisher>`.
pub(super) fn parse_publisher(v: &str) -> Result<(NodeId, u32), String> {
    let mut it = v.split('.');
    let (Some(node), Some(publisher), None) = (it.next(), it.next(), it.next()) else {
        return Err(format!(
            "invalid _acks {v:?}: expected <node id>.<publisher>"
        ));
    };
    Ok((
        NodeId::parse(node).map_err(|e| format!("invalid _acks node id: {e}"))?,
        publisher
            .parse()
            .map_err(|_| format!("invalid _acks publisher {publisher:?}"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(sn: u32) -> SampleSource {
        SampleSource {
            node: NodeId::from_u128(9),
            publisher: 3,
            sn,
        }
    }

    /// Which of `sns` (publisher 3 of node 9) are held at `level`, waiting at most `ms`.
    async fn held(a: &Acks, sns: &[u32], level: Level, ms: u64) -> Vec<u32> {
        let until = Instant::now() + std::time::Duration::from_millis(ms);
        a.wait_all(NodeId::from_u128(9), 3, sns, level, until).await
    }

    fn seen(a: &Acks, sn: u32) -> bool {
        a.retain_unseen(&mut vec![src(sn)], |s| Some(s)) == 1
    }

    #[tokio::test]
    async fn received_then_durable_and_duplicates() {
        let a = Acks::default();
        assert!(
            held(&a, &[1], Level::Received, 20).await.is_empty(),
            "not stored yet"
        );
        assert!(!seen(&a, 1));
        a.stored(&[src(1), src(2)], 1);
        assert!(seen(&a, 1));
        assert_eq!(held(&a, &[1], Level::Received, 20).await, [1]);
        assert!(
            held(&a, &[1], Level::Durable, 20).await.is_empty(),
            "not synced yet"
        );
        a.flushed(1);
        assert_eq!(held(&a, &[2], Level::Durable, 20).await, [2]);
        assert!(!a.durable_wanted());
        // Remembered for the last 4,096 numbers only.
        let many: Vec<SampleSource> = (10..10 + RECENT as u32).map(src).collect();
        a.stored(&many, 2);
        assert!(!seen(&a, 1));
        assert!(seen(&a, 10));
        let mut mixed = vec![src(1), src(10), src(11), src(9)];
        assert_eq!(a.retain_unseen(&mut mixed, |s| Some(s)), 2);
        assert_eq!(mixed, [src(1), src(9)], "the unseen kept, in order");
    }

    #[tokio::test]
    async fn a_list_answers_with_what_is_held_in_the_order_asked() {
        let a = Acks::default();
        a.stored(&[src(7), src(3)], 1);
        assert_eq!(held(&a, &[9, 7, 5, 3], Level::Received, 20).await, [7, 3]);
        // Another publisher's samples are not this one's.
        let other = SampleSource {
            publisher: 4,
            ..src(9)
        };
        a.stored(&[other], 2);
        assert_eq!(held(&a, &[9], Level::Received, 20).await, Vec::<u32>::new());
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_each_commit_until_its_whole_list_is_in() {
        let a = std::sync::Arc::new(Acks::default());
        let b = a.clone();
        let w = tokio::spawn(async move { held(&b, &[1, 2, 3], Level::Received, 10_000).await });
        tokio::task::yield_now().await;
        a.stored(&[src(1)], 1);
        tokio::task::yield_now().await;
        a.stored(&[src(3), src(2)], 2);
        let t0 = std::time::Instant::now();
        assert_eq!(w.await.unwrap(), [1, 2, 3]);
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "woken, not timed out"
        );
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_its_sample_is_stored() {
        let a = std::sync::Arc::new(Acks::default());
        let b = a.clone();
        let w = tokio::spawn(async move { held(&b, &[5], Level::Durable, 10_000).await });
        while !a.durable_wanted() {
            tokio::task::yield_now().await;
        }
        a.stored(&[src(5)], 7);
        a.flushed(7);
        assert_eq!(w.await.unwrap(), [5]);
    }

    #[test]
    fn parameters_parse_and_bad_ones_are_errors() {
        let s = src(42);
        assert_eq!(
            parse_publisher(&format!("{}.{}", s.node, s.publisher)).unwrap(),
            (s.node, s.publisher)
        );
        for bad in [
            "",
            "x.1",
            "00000000000000000000000000000009",
            "a.b.c",
            "00000000000000000000000000000009.x",
        ] {
            assert!(parse_publisher(bad).is_err(), "{bad}");
        }
    }
}
