//! No shared fate: a subscriber that stops reading (its process is frozen with SIGSTOP) does not
//! slow delivery to a subscriber that keeps reading; what is dropped for the frozen one is
//! counted on its link.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::{Config, CongestionControl, LinkSummary, Session};
use hypha_tests::{Proc, wait_until};
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

/// The publisher's link to the node whose id prints as `node`.
fn link(publisher: &Session, node: &str) -> LinkSummary {
    let info = publisher.info();
    info.links
        .into_iter()
        .find(|l| l.node.to_string() == node)
        .unwrap_or_else(|| panic!("no link to {node}"))
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
    let reader_id = reader.id().to_string();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let _sub = reader
        .declare_subscriber("iso/**")
        .callback(move |_| {
            g.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    let p = publisher
        .declare_publisher("iso/data")
        .unwrap()
        .congestion_control(CongestionControl::Drop);
    assert!(p.wait_matching(T).await);
    let n = 20_000;
    // Every sample queued for the reader reaches it (a reliable link): waits until the reader
    // has received as many as its link counted as sent, the publisher's own count.
    let delivered = async || {
        let want = link(&publisher, &reader_id).sent;
        wait_until(T, async || got.load(Ordering::Relaxed) >= want)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the reader received {} of the {want} samples sent to it",
                    got.load(Ordering::Relaxed)
                )
            });
        got.load(Ordering::Relaxed)
    };

    // Baseline: the reader alone. It must receive (nearly) everything, or the comparison below
    // means nothing.
    burst(&p, n).await;
    assert!(p.flush(T).await);
    let alone = delivered().await;
    assert!(
        alone >= n * 9 / 10,
        "baseline: the reader alone received {alone} of {n} (dropped for it: {})",
        link(&publisher, &reader_id).dropped
    );

    // A second subscriber in another process, frozen: it never reads again.
    let mut frozen = Proc::spawn("frozen", {
        let mut c = Command::new(CLI);
        c.args(["peer", "--no-mdns", "--sub", "iso/**"])
            .args(["--listen", "tcp/127.0.0.1:0"])
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
    // The probes have reached the reader too: count from here.
    let before = delivered().await;

    burst(&p, n).await;
    let with_frozen = delivered().await - before;
    let frozen_link = link(&publisher, &frozen_id);
    let reader_link = link(&publisher, &reader_id);
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
    let sent_before = reader_link.sent;
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
    assert_eq!(link(&publisher, &reader_id).sent, sent_before + 5);
    assert_eq!(
        delivered().await,
        before + 5,
        "the reader got every blocking sample"
    );
    assert_eq!(link(&publisher, &frozen_id).dropped, dropped_before + 5);
    frozen.signal("CONT").unwrap();
}
