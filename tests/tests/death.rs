//! A node that dies without a goodbye (SIGKILL) is noticed within the default lease (3 s)
//! on every transport: its liveliness token disappears for a watcher on another process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, listening_endpoint};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);
/// The default lease (3 s) plus the keep-alive and timer slack.
const DETECTED_WITHIN: Duration = Duration::from_millis(3_500);

async fn death_is_seen_within_the_lease(proto: &str) -> Duration {
    let listen = format!("{proto}/127.0.0.1:0");
    let mut holder = Proc::spawn(
        "holder",
        hypha_tests::cli(
            CLI,
            &["peer", "--listen", &listen, "--token", "alive/holder"],
        ),
    )
    .unwrap();
    let ready = holder
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    let mut watcher = Proc::spawn(
        "watcher",
        hypha_tests::cli(
            CLI,
            &[
                "peer",
                "--listen",
                &listen,
                "--connect",
                &ep,
                "--liveliness",
                "alive/*",
            ],
        ),
    )
    .unwrap();
    watcher
        .wait_json(T, |v| v["event"] == "alive" && v["key"] == "alive/holder")
        .await
        .unwrap();
    let t0 = Instant::now();
    holder.signal("KILL").unwrap();
    watcher
        .wait_json(T, |v| v["event"] == "gone" && v["key"] == "alive/holder")
        .await
        .unwrap();
    let took = t0.elapsed();
    eprintln!("{proto}: death seen after {took:?}");
    took
}

#[tokio::test]
async fn a_killed_node_is_noticed_within_the_lease_over_tcp() {
    let took = death_is_seen_within_the_lease("tcp").await;
    assert!(took <= DETECTED_WITHIN, "{took:?}");
}

#[tokio::test]
async fn a_killed_node_is_noticed_within_the_lease_over_quic() {
    let took = death_is_seen_within_the_lease("quic").await;
    assert!(took <= DETECTED_WITHIN, "{took:?}");
}

#[tokio::test]
async fn a_killed_node_is_noticed_within_the_lease_over_udp() {
    let took = death_is_seen_within_the_lease("udp").await;
    assert!(took <= DETECTED_WITHIN, "{took:?}");
}
