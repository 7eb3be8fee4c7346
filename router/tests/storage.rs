//! Storages in one process and across nodes: latest values, tombstones, history windows,
//! retention, and the late-joiner subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::api::query::QueryTarget;
use hypha::storage::{self, BackendKind, StorageConfig};
use hypha::{Config, SampleKind, Session};
use hypha_core::keyexpr::OwnedKeyExpr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;
use common::{T, wait_until};

fn cfg(connect: &[String]) -> Config {
    common::node_config("tcp/127.0.0.1:0", connect)
}

fn scfg(key: &str, backend: BackendKind) -> StorageConfig {
    let mut c = StorageConfig::new(OwnedKeyExpr::autocanonize(key.to_string()).unwrap());
    c.backend = backend;
    c
}

async fn values(s: &Session, selector: &str) -> Vec<(String, String)> {
    s.get(selector)
        .target(QueryTarget::All)
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await
        .into_iter()
        .map(|r| {
            let s = r.result.unwrap();
            (s.key.to_string(), s.payload_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Waits until `store` has taken in `n` samples in all (ingestion is asynchronous): after that,
/// its answers reflect every one of them.
async fn stored(store: &storage::Storage, n: u64) {
    wait_until(T, async || store.stats.stored.load(Ordering::Relaxed) >= n)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the storage took in {} samples, not {n}",
                store.stats.stored.load(Ordering::Relaxed)
            )
        });
}

async fn latest_and_tombstones(backend: BackendKind) {
    let a = hypha::open(cfg(&[])).await.unwrap();
    let b = hypha::open(cfg(&[a.info().listening[0].to_string()]))
        .await
        .unwrap();
    assert!(a.wait_peers(1, T).await);
    let store = storage::start(&a, scfg("fleet/**", backend)).await.unwrap();
    let p = b.declare_publisher("fleet/car1/speed").unwrap();
    assert!(p.wait_matching(T).await);
    p.put("10").await.unwrap();
    p.put("11").await.unwrap();
    b.put("fleet/car2/speed", "20").await.unwrap();
    stored(&store, 3).await;
    assert_eq!(
        values(&b, "fleet/**").await,
        [
            ("fleet/car1/speed".into(), "11".into()),
            ("fleet/car2/speed".into(), "20".into())
        ]
    );
    // Delete, then a late put carrying an older timestamp: the key stays deleted.
    let before_delete = b.new_timestamp();
    b.delete("fleet/car2/speed").await.unwrap();
    stored(&store, 4).await;
    assert_eq!(
        values(&b, "fleet/**").await,
        [("fleet/car1/speed".into(), "11".into())]
    );
    // Publish with the stale timestamp through the wire: simulate with a Sample replayed by a
    // queryable-less path — storages stamp samples without timestamps, so use a timestamping
    // session to send an explicitly old sample.
    let mut old_cfg = cfg(&[a.info().listening[0].to_string()]);
    old_cfg.timestamping = true;
    let c = hypha::open(old_cfg).await.unwrap();
    assert!(c.wait_peers(1, T).await);
    let pc = c.declare_publisher("fleet/car2/speed").unwrap();
    assert!(pc.wait_matching(T).await);
    pc.put("resurrected?")
        .timestamp(before_delete)
        .await
        .unwrap();
    // Only once the storage has taken the stale put in does its absence from the answer mean
    // something.
    stored(&store, 5).await;
    assert_eq!(
        values(&b, "fleet/**").await.len(),
        1,
        "an older put resurrected a deleted key"
    );
    // History has everything, in timestamp order.
    let hist = values(&b, "fleet/**?_time=[now(-1m)..]").await;
    let payloads: Vec<&str> = hist.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(payloads, ["10", "11", "20", "resurrected?", ""], "{hist:?}");
    let limited = values(&b, "fleet/**?_time=[now(-1m)..];limit=2").await;
    assert_eq!(limited.len(), 2);
    // A window that ends in the past is empty; a bad window is an error reply.
    assert!(values(&b, "fleet/**?_time=[..now(-1m)]").await.is_empty());
    let bad = b
        .get("fleet/**?_time=[yesterday..]")
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    assert!(bad[0].result.is_err());
    assert_eq!(store.stats.stored.load(Ordering::Relaxed), 5);
    store.close().await;
}

#[tokio::test]
async fn memory_storage_latest_tombstones_history() {
    latest_and_tombstones(BackendKind::Memory).await;
}

#[tokio::test]
async fn sled_storage_latest_tombstones_history() {
    let dir = tempfile::tempdir().unwrap();
    latest_and_tombstones(BackendKind::Sled(dir.path().join("db"))).await;
}

#[tokio::test]
async fn retention_by_count() {
    let a = hypha::open(cfg(&[])).await.unwrap();
    let mut c = scfg("r/**", BackendKind::Memory);
    c.retain_count = Some(5);
    let store = storage::start(&a, c).await.unwrap();
    for i in 0..20 {
        a.put("r/x", format!("{i}")).await.unwrap();
    }
    stored(&store, 20).await;
    // Retention runs on the storage's own timer, which announces nothing: poll the history.
    wait_until(T, async || values(&a, "r/**?_time=[..]").await.len() == 5)
        .await
        .expect("history not pruned to 5 samples");
    let h: Vec<String> = values(&a, "r/**?_time=[..]")
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(h, ["15", "16", "17", "18", "19"], "the newest 5 are kept");
}

/// A late joiner gets the history from the storage, then the live stream, with no gap and no
/// duplicate at the seam, while the publisher keeps publishing across it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_replays_then_continues_live() {
    let mut sc = cfg(&[]);
    sc.timestamping = true;
    let a = hypha::open(sc).await.unwrap();
    let ep = a.info().listening[0].to_string();
    let store = storage::start(&a, scfg("seq/**", BackendKind::Memory))
        .await
        .unwrap();
    let mut pc = cfg(std::slice::from_ref(&ep));
    pc.timestamping = true;
    let publisher_node = hypha::open(pc).await.unwrap();
    let p = publisher_node.declare_publisher("seq/n").unwrap();
    assert!(p.wait_matching(T).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let publishing = tokio::spawn(async move {
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            p.put(i.to_string()).await.unwrap();
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        i
    });
    // Some history first (the storage has taken in 100 samples), so the seam is crossed.
    stored(&store, 100).await;
    // The late joiner: its own node, asking for the last minute of history.
    let late = hypha::open(cfg(&[ep])).await.unwrap();
    assert!(late.wait_peers(2, T).await);
    let sub = late
        .declare_subscriber("seq/**")
        .history(Duration::from_secs(60))
        .stream()
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < 400 {
        let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
        assert_eq!(s.kind, SampleKind::Put);
        got.push(s.payload_str().unwrap().parse::<u64>().unwrap());
        assert!(Instant::now() < deadline);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publishing.await.unwrap();
    let expected: Vec<u64> = (0..got.len() as u64).collect();
    assert_eq!(
        got, expected,
        "gap or duplicate at the seam (published {published})"
    );
    // The replay says what it found: a storage, and the 100+ samples it held.
    let report = sub
        .history_done(T)
        .await
        .expect("the seam was never crossed");
    assert!(report.storage_found, "{report:?}");
    assert!(
        report.replies >= 100 && report.delivered >= 100,
        "{report:?}"
    );
}

/// A late joiner with no storage in reach is told so (not left with a silent empty replay),
/// and goes live anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_without_a_storage_is_told_so_and_goes_live() {
    let (a, b) = common::pair("tcp").await;
    let sub = b
        .declare_subscriber("nohist/**")
        .history(Duration::from_secs(60))
        .stream()
        .unwrap();
    let report = sub.history_done(T).await.expect("no report");
    assert_eq!(
        (report.storage_found, report.replies, report.delivered),
        (false, 0, 0),
        "{report:?}"
    );
    let p = a.declare_publisher("nohist/x").unwrap();
    assert!(p.ready(T).await);
    p.put("live").await.unwrap();
    let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!(s.payload_str(), Some("live"));
}

/// A damaged store never becomes a live-looking zombie: with 64 corrupted bytes at any of
/// several places in sled's data file, opening returns within the deadline, without a panic
/// escaping, either with the store or with an error naming the directory.
///
/// Known defect, not asserted: depending on where the bytes land, sled (0.34) may open and
/// silently drop the samples after the damage (one CI run: 1,999 of 2,000), or panic inside
/// its recovery (reported here as an error). Evidence for issue 17's engine choice.
#[test]
fn a_corrupt_store_opens_whole_or_fails_naming_its_directory() {
    use hypha::storage::{Backend, SledBackend, StorageError, StoredSample};
    let dir = tempfile::tempdir().unwrap();
    {
        let mut b = SledBackend::open(dir.path(), 10).unwrap();
        for i in 0..2000u64 {
            b.store(&StoredSample {
                key: format!("k/{}", i % 50).into(),
                kind: SampleKind::Put,
                payload: vec![7u8; 100].into(),
                timestamp: hypha_core::hlc::Timestamp {
                    time: hypha_core::hlc::Ntp64((1_700_000_000u64 << 32) + i),
                    id: hypha_core::id::NodeId::from_u128(1),
                },
                encoding: None,
            })
            .unwrap();
        }
    }
    let file = dir.path().join("db");
    let pristine = std::fs::read(&file).unwrap();
    let mut failed = 0;
    for at in [
        0,
        100,
        4096,
        65_536,
        pristine.len() / 2,
        pristine.len() - 200,
    ] {
        let mut bytes = pristine.clone();
        for b in &mut bytes[at..(at + 64).min(pristine.len())] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, &bytes).unwrap();
        let t0 = std::time::Instant::now();
        match SledBackend::open_within(dir.path(), 10, Duration::from_secs(10)) {
            Ok(b) => {
                let kept = b.summary().samples;
                assert!(kept <= 2000);
                if kept < 2000 {
                    eprintln!("corruption at {at}: sled opened with {kept} of 2000 samples");
                }
            }
            Err(e @ StorageError::Open { .. }) => {
                failed += 1;
                let text = e.to_string();
                assert!(text.contains(&dir.path().display().to_string()), "{text}");
            }
            Err(e) => panic!("corruption at {at}: {e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(12));
        std::fs::write(&file, &pristine).unwrap();
    }
    eprintln!("{failed} of 6 corruptions refused at open");
}

/// redb (the default): a damaged file opens with every sample readable, or is refused at open
/// naming the file, within a deadline; never a silent truncation, never a spin (issue 16).
#[test]
fn a_corrupt_redb_store_opens_whole_or_fails_naming_its_file() {
    use hypha::storage::{Backend, REDB_FILE, RedbBackend, StorageError, StoredSample};
    let dir = tempfile::tempdir().unwrap();
    let batch: Vec<StoredSample> = (0..2000u64)
        .map(|i| StoredSample {
            key: format!("k/{}", i % 50).into(),
            kind: SampleKind::Put,
            payload: vec![7u8; 100].into(),
            timestamp: hypha_core::hlc::Timestamp {
                time: hypha_core::hlc::Ntp64((1_700_000_000u64 << 32) + i),
                id: hypha_core::id::NodeId::from_u128(1),
            },
            encoding: None,
        })
        .collect();
    {
        let mut b = RedbBackend::open(dir.path(), 10).unwrap();
        for chunk in batch.chunks(100) {
            b.store_batch(chunk).unwrap();
        }
        b.flush().unwrap();
    }
    let file = dir.path().join(REDB_FILE);
    let pristine = std::fs::read(&file).unwrap();
    let (mut refused, mut whole) = (0, 0);
    for at in [
        0,
        100,
        4096,
        65_536,
        pristine.len() / 2,
        pristine.len() - 200,
    ] {
        let mut bytes = pristine.clone();
        for b in &mut bytes[at..(at + 64).min(pristine.len())] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, &bytes).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = RedbBackend::open(&path, 10).map(|b| {
                let all = b.history(
                    &hypha_core::keyexpr::KeyExpr::new("**").unwrap(),
                    hypha_core::hlc::Ntp64(0),
                    hypha_core::hlc::Ntp64(u64::MAX),
                    usize::MAX,
                );
                (b.history_len(), all.map(|v| v.len()))
            });
            let _ = tx.send(r);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok((n, Ok(read)))) => {
                assert_eq!((n, read), (2000, 2000), "corruption at {at}: opened short");
                whole += 1;
            }
            Ok(Ok((n, Err(e)))) => panic!("corruption at {at}: opened ({n}) but reads fail: {e}"),
            Ok(Err(e @ StorageError::Open { .. })) => {
                let text = e.to_string();
                assert!(text.contains(&file.display().to_string()), "{text}");
                refused += 1;
            }
            Ok(Err(e)) => panic!("corruption at {at}: {e}"),
            Err(_) => panic!("corruption at {at}: still opening after 20 s"),
        }
        std::fs::write(&file, &pristine).unwrap();
    }
    eprintln!("redb: {refused} of 6 corruptions refused at open, {whole} opened whole");
}
