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
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
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

#[derive(Default)]
struct Recent {
    order: VecDeque<u32>,
    batch: HashMap<u32, u64>,
}

#[derive(Default)]
struct Inner {
    sources: HashMap<(NodeId, u32), Recent>,
    /// Last batch committed, last batch synced.
    durable_batch: u64,
    durable_waiters: usize,
}

/// Shared by the writer thread and the query tasks.
#[derive(Default)]
pub(super) struct Acks {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this (publisher, sn) is already stored (a duplicate).
    pub(super) fn seen(&self, s: &SampleSource) -> bool {
        self.lock()
            .sources
            .get(&(s.node, s.publisher))
            .is_some_and(|r| r.batch.contains_key(&s.sn))
    }

    /// The samples of batch `batch` are committed.
    pub(super) fn stored(&self, sources: &[SampleSource], batch: u64) {
        if sources.is_empty() {
            return;
        }
        let mut g = self.lock();
        for s in sources {
            if g.sources.len() >= MAX_SOURCES && !g.sources.contains_key(&(s.node, s.publisher)) {
                g.sources.clear();
            }
            let r = g.sources.entry((s.node, s.publisher)).or_default();
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
        self.notify.notify_waiters();
    }

    /// Everything up to batch `batch` is synced.
    pub(super) fn flushed(&self, batch: u64) {
        self.lock().durable_batch = batch;
        self.notify.notify_waiters();
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

    fn holds(&self, s: &SampleSource, level: Level) -> bool {
        let g = self.lock();
        let Some(batch) = g
            .sources
            .get(&(s.node, s.publisher))
            .and_then(|r| r.batch.get(&s.sn))
        else {
            return false;
        };
        level == Level::Received || *batch <= g.durable_batch
    }

    /// Waits until `s` is stored at `level`, until `deadline`. Returns whether it is.
    pub(super) async fn wait(&self, s: SampleSource, level: Level, deadline: Instant) -> bool {
        if level == Level::Durable {
            self.lock().durable_waiters += 1;
        }
        let done = loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.holds(&s, level) {
                break true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break self.holds(&s, level);
            }
        };
        if level == Level::Durable {
            let mut g = self.lock();
            g.durable_waiters = g.durable_waiters.saturating_sub(1);
        }
        done
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

    #[tokio::test]
    async fn received_then_durable_and_duplicates() {
        let a = Acks::default();
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(
            !a.wait(src(1), Level::Received, soon).await,
            "not stored yet"
        );
        assert!(!a.seen(&src(1)));
        a.stored(&[src(1), src(2)], 1);
        assert!(a.seen(&src(1)));
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(a.wait(src(1), Level::Received, soon).await);
        assert!(
            !a.wait(src(1), Level::Durable, soon).await,
            "not synced yet"
        );
        a.flushed(1);
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(a.wait(src(2), Level::Durable, soon).await);
        assert!(!a.durable_wanted());
        // Remembered for the last 4,096 numbers only.
        let many: Vec<SampleSource> = (10..10 + RECENT as u32).map(src).collect();
        a.stored(&many, 2);
        assert!(!a.seen(&src(1)));
        assert!(a.seen(&src(10)));
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_its_sample_is_stored() {
        let a = std::sync::Arc::new(Acks::default());
        let b = a.clone();
        let w = tokio::spawn(async move {
            let later = Instant::now() + std::time::Duration::from_secs(10);
            b.wait(src(5), Level::Durable, later).await
        });
        while !a.durable_wanted() {
            tokio::task::yield_now().await;
        }
        a.stored(&[src(5)], 7);
        a.flushed(7);
        assert!(w.await.unwrap());
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
