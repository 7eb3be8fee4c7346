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
