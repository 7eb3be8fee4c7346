//! A TCP proxy that can cut a link silently: both sockets stay open and nothing moves, as in
//! a blackout (the far end sees no FIN or RST). Shared by `router/tests/blackout.rs` and the
//! CLI's exit-code test (`tests/tests/cli_exit.rs`, by path).

#![allow(clippy::unwrap_used, dead_code)] // tests: a failed unwrap is a failed test; each user takes a subset

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards bytes one way until `cut`; then holds both sockets open and moves nothing.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
        let n = match tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if cut.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The address of a node's first listener, which must be `tcp/` (what [`proxy`] forwards to).
pub fn tcp_addr(s: &hypha::Session) -> std::net::SocketAddr {
    s.info().listening[0]
        .to_string()
        .strip_prefix("tcp/")
        .unwrap()
        .parse()
        .unwrap()
}

/// A proxy to `target`; returns its address. New connections after the cut are dropped.
pub async fn proxy(target: std::net::SocketAddr, cut: Arc<AtomicBool>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            if cut.load(Ordering::Acquire) {
                continue;
            }
            let Ok(s) = TcpStream::connect(target).await else {
                continue;
            };
            let (cr, cw) = c.into_split();
            let (sr, sw) = s.into_split();
            tokio::spawn(pipe(cr, sw, cut.clone()));
            tokio::spawn(pipe(sr, cw, cut.clone()));
        }
    });
    addr
}

/// Forwards bytes one way at about `rate` bytes per second.
async fn slow_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
) {
    let mut buf = vec![0u8; 4 * 1024];
    let t0 = tokio::time::Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        sent += n as u64;
        tokio::time::sleep_until(t0 + Duration::from_micros(sent * 1_000_000 / rate)).await;
    }
}

/// A proxy to `target` that moves at most about `rate` bytes per second each way (a slow
/// link); returns its address.
pub async fn throttled(target: std::net::SocketAddr, rate: u64) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let Ok(s) = TcpStream::connect(target).await else {
                continue;
            };
            let (cr, cw) = c.into_split();
            let (sr, sw) = s.into_split();
            tokio::spawn(slow_pipe(cr, sw, rate));
            tokio::spawn(slow_pipe(sr, cw, rate));
        }
    });
    addr
}
