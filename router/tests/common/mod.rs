//! Helpers shared by the router's integration tests.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a subset; a failed unwrap fails the test

use hypha::{Config, Session};
use std::time::Duration;

/// The deadline of every wait in these tests.
pub const T: Duration = Duration::from_secs(10);

/// A node listening on `listen`, dialling `connect`, mDNS off.
pub fn node_config(listen: &str, connect: &[String]) -> Config {
    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec![listen.parse().unwrap()];
    c.connect = connect.iter().map(|s| s.parse().unwrap()).collect();
    c
}

/// Two nodes on loopback over `proto` (tcp, quic), linked.
pub async fn pair(proto: &str) -> (Session, Session) {
    let a = hypha::open(node_config(&format!("{proto}/127.0.0.1:0"), &[]))
        .await
        .unwrap();
    let ep = a.info().listening[0].to_string();
    let b = hypha::open(node_config(&format!("{proto}/127.0.0.1:0"), &[ep]))
        .await
        .unwrap();
    assert!(
        a.wait_peers(1, T).await && b.wait_peers(1, T).await,
        "no link"
    );
    (a, b)
}

/// Polls `condition` until it holds, for at most `timeout`: `Err` if it never did.
///
/// Only for state that no event announces (a storage counter, retention); where there is an
/// event (a sample, `wait_matching`, `wait_peers`), wait for it instead.
pub async fn wait_until(
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(timeout, async {
        let mut pause = Duration::from_millis(1);
        while !condition().await {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    })
    .await
}

pub mod pki;
pub mod proxy;
