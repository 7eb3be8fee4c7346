//! Bounds on what an unauthenticated host can make a node hold.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::T;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw TCP connection that sends Hypha's preamble and reads the node's, then stops: a
/// half-open link that never handshakes.
async fn half_open(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"HYPHA/1\n").await.unwrap();
    let mut pre = [0u8; 8];
    tokio::time::timeout(T, s.read_exact(&mut pre))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pre, b"HYPHA/1\n");
    s
}

#[tokio::test]
async fn half_open_links_are_bounded_per_source_and_their_places_come_back() {
    let mut c = common::node_config("tcp/127.0.0.1:0", &[]);
    c.limits.max_handshaking_per_source = 4;
    let a = hypha::open(c).await.unwrap();
    let ep = a.info().listening[0].to_string();
    let addr = ep.trim_start_matches("tcp/").to_string();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(half_open(&addr).await);
    }
    // The fifth from the same address is closed at once, and counted.
    let mut fifth = half_open(&addr).await;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(T, fifth.read(&mut b))
        .await
        .expect("the fifth half-open link was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the fifth link should see EOF");
    assert!(a.info().refused_handshaking >= 1);
    // Meanwhile a real node from the same address cannot get in either; once the half-open
    // links go, their places come back and it does.
    drop(held);
    let b = hypha::open(common::node_config("tcp/127.0.0.1:0", &[ep]))
        .await
        .unwrap();
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
}
