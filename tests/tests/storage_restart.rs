//! Durability: a storage (the segment log, the default, and sled) is killed with SIGKILL in the middle of a
//! write stream and restarted on the same data directory. It opens cleanly, and every sample published more than
//! the flush window (plus delivery slack) before the kill is there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::api::query::{Consolidation, QueryTarget};
use hypha::{Config, CongestionControl};
use hypha_tests::{Proc, free_port};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);
const FLUSH_MS: u64 = 100;
/// Time for a sample to travel from the publisher into the storage's backend.
const DELIVERY_SLACK_MS: u64 = 200;

fn storage(backend: &str, dir: &std::path::Path, ep: &str) -> Proc {
    let mut c = Command::new(CLI);
    c.args([
        "storage",
        "dur/**",
        "--backend",
        backend,
        "--no-mdns",
        "--listen",
        ep,
    ])
    .args(["--flush-ms", &FLUSH_MS.to_string(), "--data-dir"])
    .arg(dir);
    Proc::spawn("storage", c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_older_than_the_flush_window() {
    sigkill_mid_stream("log").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_sled() {
    sigkill_mid_stream("sled").await;
}

async fn sigkill_mid_stream(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    // `free_port` is racy, but justified here: the storage restarts on the same endpoint, which
    // the publisher keeps redialling.
    let ep = format!("tcp/127.0.0.1:{}", free_port());
    let mut st = storage(backend, &data, &ep);
    st.wait_json(T, |v| v["event"] == "ready").await.unwrap();

    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    c.connect = vec![ep.parse().unwrap()];
    let s = hypha::open(c).await.unwrap();
    let p = s
        .declare_publisher("dur/seq")
        .unwrap()
        .congestion_control(CongestionControl::Block);
    assert!(p.wait_matching(T).await);
    let t0 = Instant::now();
    let mut sent_at = Vec::new();
    let mut killed_at = None;
    for i in 0u64.. {
        if killed_at.is_none() && t0.elapsed() > Duration::from_millis(1500) {
            st.signal("KILL").unwrap();
            killed_at = Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_millis(1700) {
            break;
        }
        p.put(i.to_string()).await.unwrap();
        sent_at.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let killed_at = killed_at.unwrap();
    let _ = st.exit_code(T).await;
    drop(st);

    // Restart on the same directory: it must open cleanly and answer.
    let mut st = storage(backend, &data, &ep);
    st.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    assert!(
        s.wait_peers(1, T).await,
        "publisher did not reconnect to the restarted storage"
    );
    let key = hypha::keyexpr::OwnedKeyExpr::new("dur/seq".to_string()).unwrap();
    assert!(s.wait_queryable(&key, T).await);
    let replies = s
        .get("dur/**?_time=[..]")
        .target(QueryTarget::All)
        .consolidation(Consolidation::None)
        .timeout(T)
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let stored: HashSet<u64> = replies
        .iter()
        .filter_map(|r| r.result.as_ref().ok()?.payload_str()?.parse().ok())
        .collect();
    let window = Duration::from_millis(FLUSH_MS + DELIVERY_SLACK_MS);
    let must_have: Vec<u64> = sent_at
        .iter()
        .enumerate()
        .filter(|(_, t)| **t + window < killed_at)
        .map(|(i, _)| i as u64)
        .collect();
    let missing: Vec<u64> = must_have
        .iter()
        .copied()
        .filter(|i| !stored.contains(i))
        .collect();
    let sent_before_kill = sent_at.iter().filter(|t| **t < killed_at).count();
    eprintln!(
        "{backend}: sent {} before the kill, {} older than the {} ms window; stored after restart: {}; \
         missing from the guaranteed part: {}",
        sent_before_kill,
        must_have.len(),
        window.as_millis(),
        stored.len(),
        missing.len()
    );
    assert!(must_have.len() > 100, "too few samples to judge");
    assert!(
        missing.is_empty(),
        "lost acknowledged samples: {:?}",
        &missing[..missing.len().min(20)]
    );
}
