//! Durable consumers (issue 17), over real TCP links between two nodes: the position survives
//! a restart of the subscriber and of the storage, unacknowledged samples come again after
//! `ack_wait` and go to the dead-letter key after `max_deliver`, a work-queue group shares the
//! samples and takes over a departed member's, retention can follow the consumers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::api::durable::{DurableSubscriber, Start};
use hypha::storage::{self, BackendKind, Storage, StorageConfig};
use hypha::{CongestionControl, Session};
use hypha_core::keyexpr::OwnedKeyExpr;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;
use common::{T, wait_until};

fn scfg(key: &str, dir: &Path) -> StorageConfig {
    let mut c = StorageConfig::new(OwnedKeyExpr::new(key.to_string()).unwrap());
    c.backend = BackendKind::Redb(dir.to_path_buf());
    c.flush_ms = 10;
    c
}

/// Publishes `n` samples `p<i>` (i from `from`) on `key` and waits until the storage has them.
async fn publish(s: &Session, st: &Storage, key: &str, from: usize, n: usize) {
    let p = s.declare_publisher(key).unwrap();
    let p = p.congestion_control(CongestionControl::Block);
    assert!(p.wait_matching(T).await);
    let before = st.stats.stored.load(Ordering::Relaxed);
    for i in from..from + n {
        p.put(format!("p{i}")).await.unwrap();
    }
    let want = before + n as u64;
    wait_until(T, async || st.stats.stored.load(Ordering::Relaxed) >= want)
        .await
        .expect("stored");
}

/// Receives `n` samples, acknowledging each; returns their payloads.
async fn take(d: &DurableSubscriber, n: usize, ack: bool) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let x = tokio::time::timeout(T, d.recv())
            .await
            .expect("a delivery in time")
            .expect("open");
        out.push(x.sample.payload_str().unwrap().to_string());
        if ack {
            x.ack();
        }
    }
    out
}

/// Nothing more arrives within `d`.
async fn quiet(s: &DurableSubscriber, d: Duration) {
    if let Ok(Some(x)) = tokio::time::timeout(d, s.recv()).await {
        panic!(
            "unexpected delivery {:?} ({} deliveries)",
            x.sample.payload_str(),
            x.deliveries
        );
    }
}

fn names(from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("p{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscriber_resumes_after_its_last_acknowledgement() {
    let (a, b) = common::pair("tcp").await;
    let dir = tempfile::tempdir().unwrap();
    let mut st = storage::start(&a, scfg("dur/**", dir.path()))
        .await
        .unwrap();
    publish(&b, &st, "dur/k", 0, 50).await;

    // A new consumer starts with everything stored, in order.
    let d = b.declare_subscriber("dur/**").durable("c1").await.unwrap();
    assert_eq!(take(&d, 30, true).await, names(0, 30));
    assert!(d.flush(T).await, "acknowledgements confirmed");
    drop(d);

    // Back (a new subscriber with the same name): from the 31st, nothing twice.
    let d = b.declare_subscriber("dur/**").durable("c1").await.unwrap();
    assert_eq!(take(&d, 20, true).await, names(30, 20));
    // Live samples follow.
    publish(&b, &st, "dur/k", 50, 10).await;
    assert_eq!(take(&d, 10, true).await, names(50, 10));
    assert!(d.flush(T).await);
    quiet(&d, Duration::from_millis(300)).await;
    drop(d);

    // The storage restarts (same directory): the position survived it.
    st.close().await;
    st = storage::start(&a, scfg("dur/**", dir.path()))
        .await
        .unwrap();
    let info = st.consumers();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].name, "c1");
    assert_eq!(info[0].counts.acked, 60);
    publish(&b, &st, "dur/k", 60, 5).await;
    let d = b.declare_subscriber("dur/**").durable("c1").await.unwrap();
    assert_eq!(take(&d, 5, true).await, names(60, 5));
    quiet(&d, Duration::from_millis(300)).await;

    // Another name has a position of its own; `Start::New` skips what is stored.
    let fresh = b
        .declare_subscriber("dur/**")
        .durable("c2")
        .start(Start::New)
        .await
        .unwrap();
    publish(&b, &st, "dur/k", 65, 3).await;
    assert_eq!(take(&fresh, 3, true).await, names(65, 3));
    assert_eq!(take(&d, 3, true).await, names(65, 3));

    // A name is tied to its key.
    let e = b
        .declare_subscriber("dur/other/**")
        .durable("c1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("follows dur/**"), "{e}");
    // No storage holds the key.
    let e = b
        .declare_subscriber("nowhere/**")
        .durable("c1")
        .storage_wait(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no storage holds"), "{e}");
    st.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_samples_come_again_then_go_to_the_dead_letter_key() {
    let (a, b) = common::pair("tcp").await;
    let dir = tempfile::tempdir().unwrap();
    let st = storage::start(&a, scfg("red/**", dir.path()))
        .await
        .unwrap();
    let dead = a.declare_subscriber("dead/red").await.unwrap();
    publish(&b, &st, "red/k", 0, 3).await;
    let d = b
        .declare_subscriber("red/**")
        .durable("r")
        .ack_wait(Duration::from_millis(300))
        .max_deliver(3)
        .dead_letter("dead/red")
        .await
        .unwrap();
    // p0 and p2 acknowledged, p1 never: it comes back twice more, then goes to dead/red.
    let mut deliveries: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for _ in 0..5 {
        let x = tokio::time::timeout(T, d.recv()).await.unwrap().unwrap();
        let p = x.sample.payload_str().unwrap().to_string();
        deliveries.entry(p.clone()).or_default().push(x.deliveries);
        if p != "p1" {
            x.ack();
        }
    }
    assert_eq!(deliveries["p0"], [1]);
    assert_eq!(deliveries["p2"], [1]);
    assert_eq!(deliveries["p1"], [1, 2, 3]);
    let x = tokio::time::timeout(T, dead.recv()).await.unwrap().unwrap();
    assert_eq!(x.payload_str(), Some("p1"));
    let att = String::from_utf8(x.attachment.unwrap().to_vec()).unwrap();
    assert!(att.starts_with("red/k "), "{att}");
    quiet(&d, Duration::from_millis(800)).await;
    assert_eq!(d.stats().redelivered.load(Ordering::Relaxed), 2);
    let c = &st.consumers()[0];
    assert_eq!(c.counts.dead_lettered, 1);
    assert_eq!(c.counts.acked, 2);
    assert_eq!(c.pending, 0);
    // With every sample done, the position is the last one.
    assert!(d.flush(T).await);
    assert_eq!(c.acked_ahead, 0);
    // The admin space shows the consumer and its counters (from the other node).
    let a_id = a.info().id;
    let replies = b
        .get(&format!("@/{a_id}/storages/**"))
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let json: Vec<String> = replies
        .into_iter()
        .map(|r| r.result.unwrap().payload_str().unwrap().to_string())
        .collect();
    assert_eq!(json.len(), 1, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    let c = &v["consumers"][0];
    assert_eq!(c["name"], "r", "{v}");
    assert_eq!(c["key"], "red/**");
    assert_eq!(c["delivered"], 5);
    assert_eq!(c["redelivered"], 2);
    assert_eq!(c["acked"], 2);
    assert_eq!(c["dead_lettered"], 1);
    assert_eq!(c["pending"], 0);
    assert!(c["position"].is_string(), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_group_shares_the_samples_and_takes_over_a_departed_member() {
    let (a, b) = common::pair("tcp").await;
    let dir = tempfile::tempdir().unwrap();
    let st = storage::start(&a, scfg("wq/**", dir.path())).await.unwrap();
    publish(&b, &st, "wq/k", 0, 300).await;
    let group = |ack_wait: u64| {
        b.declare_subscriber("wq/**")
            .durable("workers")
            .ack_wait(Duration::from_millis(ack_wait))
            .max_pending(20)
    };
    // A long ack_wait: a sample comes again only because its member left (a shorter one
    // would also hand a slow member's buffered samples to another: at-least-once).
    let m1 = group(10_000).await.unwrap();
    let m2 = group(10_000).await.unwrap();
    // m3 is handed 20 samples and goes away without acknowledging them: they go to the
    // others at once (its drop releases them), not after ack_wait.
    let m3 = group(10_000).await.unwrap();
    let first = tokio::time::timeout(T, m3.recv()).await.unwrap().unwrap();
    drop(first);
    drop(m3);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut how: BTreeMap<String, Vec<(u8, u32)>> = BTreeMap::new();
    let (mut n1, mut n2) = (0, 0);
    let deadline = tokio::time::Instant::now() + T;
    while seen.len() < 300 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(x) = m1.recv() => {
                *seen.entry(x.sample.payload_str().unwrap().to_string()).or_default() += 1;
                n1 += 1;
                how.entry(x.sample.payload_str().unwrap().to_string()).or_default().push((1, x.deliveries));
                x.ack();
            }
            Some(x) = m2.recv() => {
                *seen.entry(x.sample.payload_str().unwrap().to_string()).or_default() += 1;
                n2 += 1;
                how.entry(x.sample.payload_str().unwrap().to_string()).or_default().push((2, x.deliveries));
                x.ack();
            }
        }
    }
    let want: BTreeSet<String> = names(0, 300).into_iter().collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(
        seen.values().all(|&n| n == 1),
        "a sample processed twice (member, deliveries): {:?}",
        how.iter().filter(|(_, n)| n.len() > 1).collect::<Vec<_>>()
    );
    assert!(n1 > 0 && n2 > 0, "both members worked: {n1} / {n2}");
    assert!(m1.flush(T).await && m2.flush(T).await);
    quiet(&m1, Duration::from_millis(700)).await;
    let c = &st.consumers()[0];
    assert_eq!(c.counts.acked, 300);
    assert!(
        c.counts.redelivered >= 1,
        "m3's samples went to the others: {:?}",
        c.counts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_can_follow_the_consumers() {
    let (a, b) = common::pair("tcp").await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = scfg("ret/**", dir.path());
    c.retain_until_acked = true;
    let st = storage::start(&a, c).await.unwrap();
    let d = b.declare_subscriber("ret/**").durable("q").await.unwrap();
    publish(&b, &st, "ret/k", 0, 100).await;
    assert_eq!(take(&d, 100, true).await, names(0, 100));
    assert!(d.flush(T).await);
    // Acknowledged by the only consumer: the history is dropped (retention runs each second).
    wait_until(Duration::from_secs(5), async || {
        st.stats.samples.load(Ordering::Relaxed) <= 1
    })
    .await
    .expect("history dropped once acknowledged");
    drop(d);

    // By bytes: at most about 1,000 payload bytes (samples of 100 B) are kept.
    let dir2 = tempfile::tempdir().unwrap();
    let mut c = scfg("bytes/**", dir2.path());
    c.retain_bytes = Some(1_000);
    let st2 = storage::start(&a, c).await.unwrap();
    let p = b.declare_publisher("bytes/k").unwrap();
    assert!(p.wait_matching(T).await);
    for _ in 0..50 {
        p.put(vec![7u8; 100]).await.unwrap();
    }
    wait_until(T, async || st2.stats.stored.load(Ordering::Relaxed) >= 50)
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), async || {
        st2.stats.bytes.load(Ordering::Relaxed) <= 1_000
    })
    .await
    .expect("history cut to the byte bound");
    assert!(st2.stats.samples.load(Ordering::Relaxed) >= 9);
}
