//! A storage's bounded ingest (issue 17): a full queue holds the delivering link (back-pressure)
//! rather than growing, sheds and counts when it stays full, and replays in pages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::api::query::QueryTarget;
use hypha::storage::{
    self, Backend, BackendKind, HistoryPage, MemoryBackend, StorageConfig, StorageError,
    StoredSample, Summary,
};
use hypha::{CongestionControl, Session};
use hypha_core::hlc::Ntp64;
use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;
use common::{T, wait_until};

/// A memory backend whose writes wait while its gate is closed: a storage whose disk stalls.
struct Gated {
    inner: MemoryBackend,
    open: Arc<AtomicBool>,
}

impl Backend for Gated {
    fn store(&mut self, s: &StoredSample) -> Result<bool, StorageError> {
        // Bounded: a test that fails before opening the gate must report, not hang in the
        // runtime's drop waiting for this writer (it did once, under CI load).
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !self.open.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.store(s)
    }
    fn latest(&self, key: &KeyExpr<'_>) -> Result<Vec<StoredSample>, StorageError> {
        self.inner.latest(key)
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
        self.inner.history_page(key, after, from, to, limit, scan)
    }
    fn prune(
        &mut self,
        before: Option<Ntp64>,
        keep: Option<usize>,
        tombstones_before: Option<Ntp64>,
    ) -> Result<usize, StorageError> {
        self.inner.prune(before, keep, tombstones_before)
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn history_len(&self) -> usize {
        self.inner.history_len()
    }
    fn summary(&self) -> Summary {
        self.inner.summary()
    }
}

fn scfg(key: &str, queue: usize, block_ms: u64) -> StorageConfig {
    let mut c = StorageConfig::new(OwnedKeyExpr::autocanonize(key.to_string()).unwrap());
    c.backend = BackendKind::Memory;
    c.queue = queue;
    c.block_ms = block_ms;
    c
}

/// A storage on `a` behind a closed gate, and a `Block` publisher on `b` that sees it.
async fn gated(
    a: &Session,
    b: &Session,
    key: &str,
    queue: usize,
    block_ms: u64,
) -> (storage::Storage, Arc<AtomicBool>, hypha::Publisher) {
    let open = Arc::new(AtomicBool::new(false));
    let backend = Gated {
        inner: MemoryBackend::new(),
        open: open.clone(),
    };
    let st = storage::start_with(a, scfg(key, queue, block_ms), Box::new(backend))
        .await
        .unwrap();
    let p = b
        .declare_publisher(key)
        .unwrap()
        .congestion_control(CongestionControl::Block);
    assert!(
        p.wait_matching(T).await,
        "the publisher never saw the storage"
    );
    // Its queryable too (what answers an acknowledgement): the subscriber can be known first.
    let k = OwnedKeyExpr::new(key.to_string()).unwrap();
    assert!(b.wait_queryable(&k, T).await, "no storage queryable");
    (st, open, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ingest_queue_holds_the_link_and_loses_nothing() {
    let (a, b) = common::pair("tcp").await;
    let (st, open, p) = gated(&a, &b, "bp/k", 8, 30_000).await;
    for i in 0..200 {
        p.put(format!("{i}")).await.unwrap();
    }
    // The writer is stuck on its first sample and the queue is full: the next delivery waits
    // for room instead of queueing without bound or dropping.
    wait_until(T, async || st.stats.waited.load(Ordering::Relaxed) >= 1)
        .await
        .expect("no delivery ever waited for room");
    assert!(st.stats.queued.load(Ordering::Relaxed) <= 8);
    assert_eq!(st.stats.stored.load(Ordering::Relaxed), 0);
    open.store(true, Ordering::Relaxed);
    wait_until(T, async || st.stats.stored.load(Ordering::Relaxed) == 200)
        .await
        .unwrap_or_else(|_| panic!("stored {} of 200", st.stats.stored.load(Ordering::Relaxed)));
    assert_eq!(st.stats.dropped.load(Ordering::Relaxed), 0);
    assert!(st.stats.waited.load(Ordering::Relaxed) >= 1);
    st.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_that_stays_full_drops_counts_and_recovers() {
    let (a, b) = common::pair("tcp").await;
    let (st, open, p) = gated(&a, &b, "bp/k", 8, 100).await;
    for i in 0..200 {
        p.put(format!("{i}")).await.unwrap();
    }
    wait_until(T, async || st.stats.dropped.load(Ordering::Relaxed) >= 1)
        .await
        .expect("a queue full for longer than block_ms never dropped");
    assert!(st.stats.shedding.load(Ordering::Relaxed));
    assert!(st.stats.queued.load(Ordering::Relaxed) <= 8);
    open.store(true, Ordering::Relaxed);
    let all = async || {
        st.stats.stored.load(Ordering::Relaxed) + st.stats.dropped.load(Ordering::Relaxed) == 200
            && !st.stats.shedding.load(Ordering::Relaxed)
    };
    wait_until(T, all).await.unwrap_or_else(|_| {
        panic!(
            "stored {} + dropped {} of 200",
            st.stats.stored.load(Ordering::Relaxed),
            st.stats.dropped.load(Ordering::Relaxed)
        )
    });
    let stored = st.stats.stored.load(Ordering::Relaxed);
    // What was queued (and the sample the writer held) is stored, the rest counted.
    assert!(stored >= 8, "stored {stored}");
    let dropped = st.stats.dropped.load(Ordering::Relaxed);
    // Drained: a new sample is stored, not dropped.
    p.put("after").await.unwrap();
    wait_until(T, async || {
        st.stats.stored.load(Ordering::Relaxed) == stored + 1
    })
    .await
    .expect("a sample after the storage recovered was not stored");
    assert_eq!(st.stats.dropped.load(Ordering::Relaxed), dropped);
    // The admin space shows the counters.
    let replies = a
        .get("@/*/storages/**")
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let json: Vec<String> = replies
        .into_iter()
        .filter_map(|r| r.result.ok())
        .map(|s| s.payload_str().unwrap().to_string())
        .collect();
    assert!(
        json.iter()
            .any(|j| j.contains(&format!("\"dropped\":{dropped}"))),
        "{json:?}"
    );
    st.close().await;
}

/// A replay longer than a page, of a key that is rare in the history (pages that match nothing
/// go on), streams every sample in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_streams_in_pages() {
    let (a, b) = common::pair("tcp").await;
    let st = storage::start(&a, scfg("rp/**", 4096, 1000)).await.unwrap();
    let pa = a.declare_publisher("rp/a").unwrap();
    let pb = a.declare_publisher("rp/b").unwrap();
    let mut n = 0;
    for i in 0..10 {
        pa.put(format!("a{i}")).await.unwrap();
        n += 1;
    }
    for i in 0..6000 {
        pb.put(format!("b{i}")).await.unwrap();
        n += 1;
    }
    for i in 10..20 {
        pa.put(format!("a{i}")).await.unwrap();
        n += 1;
    }
    wait_until(T, async || st.stats.stored.load(Ordering::Relaxed) == n)
        .await
        .expect("not all stored");
    let get = async |sel: &str| -> Vec<String> {
        b.get(sel)
            .target(QueryTarget::All)
            .timeout(T)
            .send()
            .await
            .unwrap()
            .collect()
            .await
            .into_iter()
            .map(|r| r.result.unwrap().payload_str().unwrap().to_string())
            .collect()
    };
    let a_all = get("rp/a?_time=[..]").await;
    let want: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    assert_eq!(a_all, want);
    let all = get("rp/**?_time=[..]").await;
    assert_eq!(all.len() as u64, n);
    assert_eq!(all.first().map(String::as_str), Some("a0"));
    assert_eq!(all.last().map(String::as_str), Some("a19"));
    assert_eq!(all.get(10).map(String::as_str), Some("b0"));
    assert_eq!(all.get(6009).map(String::as_str), Some("b5999"));
    let limited = get("rp/b?_time=[..];limit=1000").await;
    assert_eq!(limited.len(), 1000);
    assert_eq!(limited.last().map(String::as_str), Some("b999"));
    st.close().await;
}

/// Acknowledged puts: `Durable` and `Received` return once the storage has the sample (synced
/// for `Durable`); no storage is an error; a storage that cannot store in time is an error and
/// a counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts() {
    use hypha::{Ack, PublishError};
    let (a, b) = common::pair("tcp").await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = scfg("ack/**", 4096, 1000);
    c.backend = BackendKind::Redb(dir.path().to_path_buf());
    c.flush_ms = 60_000; // only a durable ack makes it sync
    let st = storage::start(&a, c).await.unwrap();
    let p = b.declare_publisher("ack/k").unwrap();
    assert!(p.wait_matching(T).await);
    // The storage's queryable (what answers the acknowledgement) is known too.
    let k = OwnedKeyExpr::new("ack/k".to_string()).unwrap();
    assert!(b.wait_queryable(&k, T).await);
    let r = p.put("one").ack(Ack::Durable).await.unwrap();
    assert_eq!(r.acked, 1);
    // Acknowledged means stored: the storage answers with it at once.
    let replies = b
        .get("ack/k")
        .target(QueryTarget::All)
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let got: Vec<String> = replies
        .into_iter()
        .filter_map(|r| Some(r.result.ok()?.payload_str()?.to_string()))
        .collect();
    assert_eq!(got, ["one"]);
    for i in 0..20 {
        let r = p.put(format!("r{i}")).ack(Ack::Received).await.unwrap();
        assert_eq!(r.acked, 1);
    }
    assert_eq!(st.stats.acks.load(Ordering::Relaxed), 21);
    assert_eq!(st.stats.stored.load(Ordering::Relaxed), 21);
    // A publisher option: every put of it is acknowledged without asking each time.
    let pa = b.declare_publisher("ack/k2").unwrap().ack(Ack::Durable);
    assert!(pa.wait_matching(T).await);
    for i in 0..5 {
        assert_eq!(pa.put(format!("p{i}")).await.unwrap().acked, 1);
    }
    assert_eq!(pa.delete().await.unwrap().acked, 1);
    assert_eq!(st.stats.acks.load(Ordering::Relaxed), 27);
    // The plain publisher still does not ask.
    assert_eq!(p.put("plain").await.unwrap().acked, 0);
    wait_until(T, async || st.stats.stored.load(Ordering::Relaxed) == 28)
        .await
        .expect("stored");
    assert_eq!(st.stats.acks.load(Ordering::Relaxed), 27);
    // No storage holds the key.
    let lone = b.declare_publisher("elsewhere/k").unwrap();
    match lone.put("x").ack(Ack::Received).await {
        Err(PublishError::NoStorage(k)) => assert_eq!(k, "elsewhere/k"),
        other => panic!("expected NoStorage, got {other:?}"),
    }
    st.close().await;

    // A storage that cannot store within the wait: an error naming the sample, and a counter.
    let (st, open, p) = gated(&a, &b, "late/k", 8, 30_000).await;
    let t0 = std::time::Instant::now();
    match p
        .put("x")
        .ack(Ack::Received)
        .ack_timeout(Duration::from_millis(300))
        .await
    {
        Err(PublishError::NotAcknowledged(e)) => assert!(e.contains("not stored"), "{e}"),
        other => panic!("expected NotAcknowledged, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(st.stats.ack_timeouts.load(Ordering::Relaxed), 1);
    open.store(true, Ordering::Relaxed);
    st.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_in_flight_share_their_queries() {
    use hypha::Ack;
    let (a, b) = common::pair("tcp").await;
    let st = storage::start(&a, scfg("many/**", 4096, 1000))
        .await
        .unwrap();
    let p = Arc::new(b.declare_publisher("many/k").unwrap());
    assert!(p.wait_matching(T).await);
    let k = OwnedKeyExpr::new("many/k".to_string()).unwrap();
    assert!(b.wait_queryable(&k, T).await);
    let before = st.stats.queries.load(Ordering::Relaxed);
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let p = p.clone();
        puts.spawn(async move { p.put(format!("{i}")).ack(Ack::Received).await });
    }
    while let Some(r) = puts.join_next().await {
        assert_eq!(r.unwrap().unwrap().acked, 1);
    }
    assert_eq!(st.stats.acks.load(Ordering::Relaxed), 1000);
    // One acknowledgement query in flight per publisher, carrying what was queued when it
    // left: far fewer queries than puts.
    let queries = st.stats.queries.load(Ordering::Relaxed) - before;
    assert!(
        queries <= 100,
        "{queries} queries for 1,000 acknowledged puts"
    );
    st.close().await;
}

/// A replay larger than a link's backlog cap (65,536 messages) to a querier behind a slow link
/// (a 2 MB/s proxy): the storage's replies wait for room instead of piling up until the cap
/// closes the link, every sample arrives, and the storage goes on storing meanwhile. (Without
/// the wait, the storage had handed 65,536 replies to the link by the time ingest was done.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_a_slow_querier_waits_for_room_and_ingest_goes_on() {
    use common::proxy::{tcp_addr, throttled};
    const N: u64 = 100_000;
    let a = hypha::open(common::node_config("tcp/127.0.0.1:0", &[]))
        .await
        .unwrap();
    let mut c = scfg("rp/**", 4096, 1000);
    c.retain_count = None;
    let st = storage::start(&a, c).await.unwrap();
    let p = a.declare_publisher("rp/k").unwrap();
    for i in 0..N {
        p.put(format!("{i:032}")).await.unwrap();
    }
    wait_until(T, async || st.stats.stored.load(Ordering::Relaxed) == N)
        .await
        .expect("not all stored");
    let via = throttled(tcp_addr(&a), 2_000_000).await;
    let b = hypha::open(common::node_config(
        "tcp/127.0.0.1:0",
        &[format!("tcp/{via}")],
    ))
    .await
    .unwrap();
    assert!(b.wait_peers(1, T).await, "no link");
    let k = OwnedKeyExpr::new("rp/k".to_string()).unwrap();
    assert!(b.wait_queryable(&k, T).await);
    let mut replies = b
        .get("rp/**?_time=[..]")
        .target(QueryTarget::All)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    // The first replies are in: the replay is under way. Ingest goes on beside it.
    let mut got = 0u64;
    while got < 100 {
        assert!(replies.recv().await.unwrap().result.is_ok());
        got += 1;
    }
    let q = a.declare_publisher("rp/during").unwrap();
    for i in 0..1000 {
        q.put(format!("d{i}")).await.unwrap();
    }
    wait_until(T, async || {
        st.stats.stored.load(Ordering::Relaxed) == N + 1000
    })
    .await
    .expect("ingest stalled behind the replay");
    // Replies the storage had sent by the time ingest was done: the replay was under way.
    let at_ingest_done = st.stats.replied.load(Ordering::Relaxed);
    while let Some(r) = replies.recv().await {
        assert!(r.result.is_ok(), "an error reply: {:?}", r.result.err());
        got += 1;
    }
    assert!(got >= N, "{got} of {N} replayed: the link closed?");
    assert!(
        at_ingest_done < N / 2,
        "the storage had sent {at_ingest_done} of {got} replies when ingest finished: replies \
         outrun the slow link instead of waiting for room"
    );
    let i = a.info();
    assert_eq!(i.dropped_link_closed, 0, "{i:?}");
    st.close().await;
}
