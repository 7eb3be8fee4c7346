//! No shared fate: a subscriber that stops reading (its process is frozen with SIGSTOP) does not
//! slow delivery to a subscriber that keeps reading; what is dropped for the frozen one is
//! counted on its link.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::{Config, CongestionControl};
use hypha_tests::{Proc, free_port};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

fn cfg(listen: &str) -> Config {
    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec![listen.parse().unwrap()];
    c
}

/// The block bound of the default configuration.
fn publisher_block_ms() -> u64 {
    Config::default().queues.block_ms
}

/// Publishes `n` 1 KiB samples on `key` at a steady pace (10 per millisecond).
async fn burst(p: &hypha::Publisher, n: u64) {
    let payload = bytes::Bytes::from(vec![7u8; 1024]);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..n {
        if i % 10 == 0 {
            tick.tick().await;
        }
        p.put(payload.clone()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_subscriber_does_not_slow_the_others() {
    let publisher = hypha::open(cfg("tcp/127.0.0.1:0")).await.unwrap();
    let pub_ep = publisher.info().listening[0].to_string();
    // The reader: another node in this process, with its own link to the publisher.
    let mut rc = cfg("tcp/127.0.0.1:0");
    rc.connect = vec![pub_ep.parse().unwrap()];
    let reader = hypha::open(rc).await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let _sub = reader.declare_subscriber("iso/**").callback(move |_| {
        g.fetch_add(1, Ordering::Relaxed);
    });
    let p = publisher
        .declare_publisher("iso/data")
        .unwrap()
        .congestion_control(CongestionControl::Drop);
    assert!(p.wait_matching(T).await);
    let n = 20_000;

    // Baseline: the reader alone.
    burst(&p, n).await;
    assert!(p.flush(T).await);
    let wait_count = |want: u64| {
        let got = got.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while got.load(Ordering::Relaxed) < want && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            got.load(Ordering::Relaxed)
        }
    };
    let alone = wait_count(n).await;
    got.store(0, Ordering::Relaxed);

    // A second subscriber in another process, frozen: it never reads again.
    let port = free_port();
    let mut frozen = Proc::spawn("frozen", {
        let mut c = Command::new(CLI);
        c.args(["peer", "--no-mdns", "--sub", "iso/**", "--listen"])
            .arg(format!("tcp/127.0.0.1:{port}"))
            .args(["--connect", &pub_ep]);
        c
    })
    .unwrap();
    let ready = frozen
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    let frozen_id = ready["id"].as_str().unwrap().to_string();
    assert!(publisher.wait_peers(2, T).await);
    // Wait until its subscription has reached the publisher, then freeze it.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        p.put("probe").await.unwrap();
        if frozen.line(Duration::from_millis(100)).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "frozen subscriber never matched"
        );
    }
    frozen.signal("STOP").unwrap();
    got.store(0, Ordering::Relaxed);

    burst(&p, n).await;
    let with_frozen = wait_count(n).await;
    let info = publisher.info();
    let frozen_link = info
        .links
        .iter()
        .find(|l| l.node.to_string() == frozen_id)
        .unwrap();
    let reader_link = info.links.iter().find(|l| l.node == reader.id()).unwrap();
    eprintln!(
        "reader alone: {alone}/{n}; with a frozen peer: {with_frozen}/{n}; \
         dropped for the frozen peer: {}, for the reader: {}",
        frozen_link.dropped, reader_link.dropped
    );
    assert!(
        with_frozen as f64 >= 0.9 * alone as f64,
        "reader got {with_frozen} with a frozen peer vs {alone} alone"
    );
    assert!(
        frozen_link.dropped > 0,
        "nothing counted as dropped for the frozen peer"
    );

    // Block: a publisher waits for the congested destination, but only up to `queues.block_ms`
    // per sample, then drops for that destination alone (counted); the reader gets everything.
    let before = got.load(Ordering::Relaxed);
    let dropped_before = frozen_link.dropped;
    let blocking = publisher
        .declare_publisher("iso/block")
        .unwrap()
        .congestion_control(CongestionControl::Block);
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        blocking.put(vec![1u8; 1024]).await.unwrap();
    }
    let waited = t0.elapsed();
    let block_ms = publisher_block_ms();
    assert!(
        waited >= Duration::from_millis(block_ms * 5 * 9 / 10),
        "did not wait: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(block_ms * 5 * 5),
        "waited too long: {waited:?}"
    );
    assert_eq!(wait_count(before + 5).await, before + 5);
    let info = publisher.info();
    let frozen_link = info
        .links
        .iter()
        .find(|l| l.node.to_string() == frozen_id)
        .unwrap();
    assert_eq!(frozen_link.dropped, dropped_before + 5);
    frozen.signal("CONT").unwrap();
}
