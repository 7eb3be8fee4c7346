//! Every transport on real sockets: connect, both directions, large and many batches, remote
//! close, port 0, garbage from a peer, and TLS verification.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use bytes::Bytes;
use hypha_transports::{
    ConnectError, Endpoint, Link, LinkError, LinkRecv, LinkSend, TlsConfig, connect, listen,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// Header byte of a reliable frame on the Data lane (kind 5, lane 5, R).
const RELIABLE: u8 = 0x6d;
/// Header byte of a best-effort frame on the RealTime lane (kind 5, lane 1).
const BEST_EFFORT: u8 = 0x0d;

fn batch(header: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut b = vec![header];
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend(
        (0..len.saturating_sub(5)).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8),
    );
    b.truncate(len.max(5));
    b
}

fn seq_of(b: &Bytes) -> u32 {
    u32::from_le_bytes([b[1], b[2], b[3], b[4]])
}

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("deadline passed")
}

async fn pair(text: &str, server: &TlsConfig, client: &TlsConfig) -> (Link, Link) {
    let ep: Endpoint = text.parse().unwrap();
    let mut l = listen(&ep, server).await.unwrap();
    let bound = l.local_endpoint().clone();
    if let Some(port) = bound.socket_addr().map(|a| a.port()) {
        assert_ne!(port, 0, "listener reports the port it really bound");
    }
    let (dialed, accepted) =
        within(async { tokio::join!(connect(&bound, client), l.accept()) }).await;
    let dialed = dialed.unwrap();
    let mut accepted = accepted.unwrap();
    // UDP links appear on the listener with the first datagram.
    if dialed.info.protocol == hypha_transports::Protocol::Udp {
        unreachable!("udp pairs are built by udp_pair")
    }
    assert!(accepted.info.mtu > 0);
    let _ = &mut accepted;
    (dialed, accepted)
}

/// Both directions, a maximal batch, then many batches in order.
async fn exchange(a: &mut Link, b: &mut Link, header: u8, max: usize) {
    within(async {
        a.tx.send(&batch(header, 1, 40)).await.unwrap();
        assert_eq!(seq_of(&b.rx.recv().await.unwrap()), 1);
        b.tx.send(&batch(header, 2, 40)).await.unwrap();
        assert_eq!(seq_of(&a.rx.recv().await.unwrap()), 2);
        let big = batch(header, 3, max);
        a.tx.send(&big).await.unwrap();
        assert_eq!(b.rx.recv().await.unwrap(), big);
        let n = 10_000u32;
        let send = async {
            for i in 0..n {
                a.tx.send(&batch(header, 100 + i, 64 + (i as usize % 200)))
                    .await
                    .unwrap();
            }
        };
        let recv = async {
            for i in 0..n {
                let got = b.rx.recv().await.unwrap();
                assert_eq!(seq_of(&got), 100 + i);
                assert_eq!(got.len(), 64 + (i as usize % 200));
            }
        };
        tokio::join!(send, recv);
    })
    .await;
}

async fn remote_close(mut a: Link, mut b: Link) {
    a.tx.close().await;
    drop(a);
    let r = within(b.rx.recv()).await;
    assert!(matches!(r, Err(LinkError::Closed)), "{r:?}");
    // Sending on a link the peer closed fails (possibly after what the OS buffered).
    let mut failed = false;
    for i in 0..1000 {
        if b.tx.send(&batch(RELIABLE, i, 1000)).await.is_err() {
            failed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    let _ = failed; // TCP may buffer silently; the receive side is the contract.
}

#[tokio::test]
async fn tcp_link() {
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("tcp/127.0.0.1:0", &tls, &tls).await;
    exchange(&mut a, &mut b, RELIABLE, 65_535).await;
    remote_close(a, b).await;
}

#[tokio::test]
async fn tcp_ipv6_link() {
    let no_ipv6 = std::net::TcpListener::bind("[::1]:0")
        .err()
        .map(|e| format!("no IPv6 loopback on this machine ([::1]:0: {e})"));
    if !common::require_or_skip(no_ipv6) {
        return;
    }
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("tcp/[::1]:0", &tls, &tls).await;
    exchange(&mut a, &mut b, RELIABLE, 1000).await;
}

#[tokio::test]
async fn unix_link() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("unix/{}", dir.path().join("h.sock").display());
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair(&text, &tls, &tls).await;
    exchange(&mut a, &mut b, RELIABLE, 65_535).await;
    remote_close(a, b).await;
}

#[tokio::test]
async fn mem_link() {
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("mem/links-test", &tls, &tls).await;
    exchange(&mut a, &mut b, RELIABLE, 65_535).await;
    remote_close(a, b).await;
    assert!(matches!(
        connect(&"mem/nobody".parse().unwrap(), &tls).await,
        Err(ConnectError::NoListener(_))
    ));
}

#[tokio::test]
async fn quic_link() {
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("quic/127.0.0.1:0", &tls, &tls).await;
    assert!(a.info.reliable);
    exchange(&mut a, &mut b, RELIABLE, 65_535).await;
    // Best-effort batches travel as datagrams; a large one falls back to its lane's stream.
    within(async {
        a.tx.send(&batch(BEST_EFFORT, 7, 200)).await.unwrap();
        assert_eq!(seq_of(&b.rx.recv().await.unwrap()), 7);
        let big = batch(BEST_EFFORT, 8, 60_000);
        a.tx.send(&big).await.unwrap();
        assert_eq!(b.rx.recv().await.unwrap(), big);
    })
    .await;
    remote_close(a, b).await;
}

#[tokio::test]
async fn tls_over_tcp_link() {
    // Self-signed (no CA): encrypted, unauthenticated, no direct writes (TLS buffers records).
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("tls/127.0.0.1:0", &tls, &tls).await;
    assert!(a.info.reliable && a.info.peer_certificate.is_none());
    assert!(!a.tx.can_try_send());
    exchange(&mut a, &mut b, RELIABLE, 65_535).await;
    exchange(&mut b, &mut a, RELIABLE, 100).await;
    remote_close(a, b).await;
}

#[tokio::test]
async fn quic_bulk_lane_does_not_block_realtime_lane() {
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("quic/127.0.0.1:0", &tls, &tls).await;
    // 0x7d: reliable Background lane; 0x4d: reliable RealTime lane.
    within(async {
        let bulk = batch(0x7d, 0, 60_000);
        for _ in 0..50 {
            a.tx.send(&bulk).await.unwrap();
        }
        a.tx.send(&batch(0x4d, 999, 100)).await.unwrap();
        // The real-time batch arrives before the whole 3 MB of bulk has been read.
        let mut bulk_before = 0;
        loop {
            let got = b.rx.recv().await.unwrap();
            if got[0] == 0x4d {
                break;
            }
            bulk_before += 1;
        }
        assert!(
            bulk_before < 50,
            "real-time batch waited for all {bulk_before} bulk batches"
        );
    })
    .await;
}

#[tokio::test]
async fn udp_link() {
    let ep: Endpoint = "udp/127.0.0.1:0".parse().unwrap();
    let tls = TlsConfig::default();
    let mut l = listen(&ep, &tls).await.unwrap();
    let bound = l.local_endpoint().clone();
    assert_ne!(bound.socket_addr().unwrap().port(), 0);
    let mut a = connect(&bound, &tls).await.unwrap();
    assert!(!a.info.reliable);
    within(async {
        a.tx.send(&batch(BEST_EFFORT, 1, 40)).await.unwrap();
        let mut b = l.accept().await.unwrap();
        assert_eq!(seq_of(&b.rx.recv().await.unwrap()), 1);
        b.tx.send(&batch(BEST_EFFORT, 2, 40)).await.unwrap();
        assert_eq!(seq_of(&a.rx.recv().await.unwrap()), 2);
        let big = batch(BEST_EFFORT, 3, a.info.mtu);
        a.tx.send(&big).await.unwrap();
        assert_eq!(b.rx.recv().await.unwrap(), big);
        // Many datagrams, read concurrently: loopback delivers them (best effort: allow 5%).
        let n = 2_000u32;
        let send = async {
            for i in 0..n {
                a.tx.send(&batch(BEST_EFFORT, 100 + i, 200)).await.unwrap();
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            a.tx.close().await;
        };
        let recv = async {
            let mut got = 0u32;
            let mut last = 0;
            while let Ok(d) = b.rx.recv().await {
                assert!(seq_of(&d) > last, "datagrams out of order on loopback");
                last = seq_of(&d);
                got += 1;
            }
            got
        };
        let ((), got) = tokio::join!(send, recv);
        assert!(got >= n * 95 / 100, "received {got} of {n}");
    })
    .await;
}

#[tokio::test]
async fn tcp_garbage_is_refused_and_the_listener_keeps_serving() {
    let tls = TlsConfig::default();
    let mut l = listen(&"tcp/127.0.0.1:0".parse().unwrap(), &tls)
        .await
        .unwrap();
    let addr = l.local_endpoint().socket_addr().unwrap();
    within(async {
        // Not a Hypha peer: an HTTP request. The listener drops it after reading the preamble.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink).await;
        assert_eq!(&sink[..], b"HYPHA/1\n", "only the preamble, then close");
        // A real peer still gets through.
        let ep = l.local_endpoint().clone();
        let (a, b) = tokio::join!(connect(&ep, &tls), l.accept());
        a.unwrap();
        let mut b = b.unwrap();
        // A peer that sends a valid preamble then a zero-length batch: the link errors out.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"HYPHA/1\n\x00\x00").await.unwrap();
        let mut c = l.accept().await.unwrap();
        assert!(matches!(c.rx.recv().await, Err(LinkError::BadLength(0))));
        drop(b.rx.recv());
        let _ = &mut b;
    })
    .await;
}

#[tokio::test]
async fn quic_ignores_garbage_datagrams() {
    let tls = TlsConfig::default();
    let mut l = listen(&"quic/127.0.0.1:0".parse().unwrap(), &tls)
        .await
        .unwrap();
    let addr = l.local_endpoint().socket_addr().unwrap();
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i * 7 % 1400)).map(|j| (j * i) as u8).collect();
        raw.send_to(&junk, addr).await.unwrap();
    }
    let ep = l.local_endpoint().clone();
    let (a, b) = within(async { tokio::join!(connect(&ep, &tls), l.accept()) }).await;
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    within(async {
        a.tx.send(&batch(RELIABLE, 5, 10)).await.unwrap();
        assert_eq!(seq_of(&b.rx.recv().await.unwrap()), 5);
    })
    .await;
}

#[tokio::test]
async fn connect_to_nothing_fails_with_a_clear_error() {
    let tls = TlsConfig::default();
    // Bind then drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = connect(&format!("tcp/127.0.0.1:{port}").parse().unwrap(), &tls)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot connect to tcp/127.0.0.1"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = connect(
        &format!("unix/{}", dir.path().join("none").display())
            .parse()
            .unwrap(),
        &tls,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Io { .. }), "{err}");
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::path::{Path, PathBuf};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes ca.pem, NAME.pem and NAME.key into `dir` and returns the config using them.
    fn node(dir: &Path, ca: &Ca, trust: &Ca, name: &str, mutual: bool) -> TlsConfig {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let w = |f: &str, s: &str| -> PathBuf {
            let p = dir.join(f);
            std::fs::write(&p, s).unwrap();
            p
        };
        TlsConfig {
            ca: Some(w(&format!("{name}-ca.pem"), &trust.pem)),
            cert: Some(w(&format!("{name}.pem"), &cert.pem())),
            key: Some(w(&format!("{name}.key"), &key.serialize_pem())),
            mutual,
        }
    }

    #[tokio::test]
    async fn peers_signed_by_the_ca_connect() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca("ca1");
        let server = node(dir.path(), &ca1, &ca1, "server", true);
        let client = node(dir.path(), &ca1, &ca1, "client", false);
        let (mut a, mut b) = pair("quic/127.0.0.1:0", &server, &client).await;
        exchange(&mut a, &mut b, RELIABLE, 1000).await;
    }

    #[tokio::test]
    async fn a_server_not_signed_by_our_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, ca2) = (ca("ca1"), ca("ca2"));
        let server = node(dir.path(), &ca2, &ca2, "server", false);
        let client = node(dir.path(), &ca1, &ca1, "client", false);
        let mut l = listen(&"quic/127.0.0.1:0".parse().unwrap(), &server)
            .await
            .unwrap();
        let ep = l.local_endpoint().clone();
        let r = within(connect(&ep, &client)).await;
        let err = r.unwrap_err();
        assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        drop(l.accept());
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_without_a_trusted_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, ca2) = (ca("ca1"), ca("ca2"));
        let server = node(dir.path(), &ca1, &ca1, "server", true);
        // The client trusts ca1 (so it accepts the server) but its own cert is from ca2.
        let client = node(dir.path(), &ca2, &ca1, "client", false);
        let mut l = listen(&"quic/127.0.0.1:0".parse().unwrap(), &server)
            .await
            .unwrap();
        let ep = l.local_endpoint().clone();
        let dialed = within(async {
            let c = connect(&ep, &client).await;
            match c {
                // TLS 1.3: the client may finish before the server checks its certificate;
                // then the first read sees the refusal.
                Ok(mut link) => link.rx.recv().await.map(|_| ()),
                Err(e) => Err(LinkError::Quic(e.to_string())),
            }
        })
        .await;
        assert!(
            dialed.is_err(),
            "client with an untrusted certificate got through"
        );
        // And the listener never yielded that link.
        let none = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(none.is_err(), "listener yielded a refused link");
    }

    #[tokio::test]
    async fn bad_tls_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsConfig {
            cert: Some(dir.path().join("nope.pem")),
            key: Some(dir.path().join("nope.key")),
            ..Default::default()
        };
        let err = listen(&"quic/127.0.0.1:0".parse().unwrap(), &missing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let half = TlsConfig {
            cert: Some(dir.path().join("a.pem")),
            ..Default::default()
        };
        let err = listen(&"quic/127.0.0.1:0".parse().unwrap(), &half)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
    }
}

/// Header byte of a reliable frame on the Background lane (kind 5, lane 7, R).
const BULK: u8 = 0x7d;
/// Header byte of a reliable frame on the RealTime lane (kind 5, lane 1, R).
const REALTIME: u8 = 0x4d;

/// QUIC lanes never block each other: with the bulk lane's stream full (the receiver reads
/// nothing, so QUIC flow control stops it), a real-time batch is still written at once and is
/// the first batch the receiver is handed; then every bulk batch arrives, in order.
#[tokio::test]
async fn quic_full_bulk_lane_does_not_hold_back_realtime() {
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("quic/127.0.0.1:0", &tls, &tls).await;
    let mut sent = 0u32;
    within(async {
        // Fill the bulk lane until its stream stops taking more (flow control: 8 MiB).
        while a.tx.blocked_lanes() & 1 << 7 == 0 {
            sent += 1;
            assert!(sent < 2_000, "the bulk lane never filled");
            a.tx.send(&batch(BULK, sent, 65_535)).await.unwrap();
        }
    })
    .await;
    assert_eq!(
        a.tx.blocked_lanes(),
        1 << 7,
        "only the bulk lane is blocked"
    );
    // The real-time batch goes out although the bulk lane is stuck.
    tokio::time::timeout(Duration::from_secs(5), a.tx.send(&batch(REALTIME, 0, 64)))
        .await
        .expect("a real-time batch waited behind a full bulk lane")
        .unwrap();
    // The receiver is handed it before the bulk batches that arrived first.
    let first = within(async {
        loop {
            let got = b.rx.recv().await.unwrap();
            if got[0] == REALTIME || seq_of(&got) > 16 {
                break got;
            }
            // At most the bulk batches already queued when the real-time one arrived.
        }
    })
    .await;
    assert_eq!(
        first[0], REALTIME,
        "the real-time batch came after 16 bulk batches"
    );
    // Then all bulk batches, in order, while the sender finishes what it held.
    let mut next = 1;
    let (mut tx, mut rx) = (a.tx, b.rx);
    let reader = async {
        while next <= sent {
            let got = rx.recv().await.unwrap();
            if got[0] == BULK {
                assert_eq!(seq_of(&got), next, "bulk batches in order");
                next += 1;
            }
        }
    };
    within(async { tokio::join!(reader, async { tx.progress().await.unwrap() }) }).await;
    assert_eq!(tx.blocked_lanes(), 0);
}

/// A QUIC link's `Close` comes out of the receiver after every batch its peer sent before it,
/// on every lane: the sender finishes its lanes' streams before the `Close` goes (on the
/// control stream), and the receiver hands the `Close` out only once no stream has a batch
/// left, though the batches were all received (and sat in quinn's buffers) before it read any.
#[tokio::test]
async fn quic_close_comes_after_every_batch_sent_before_it() {
    let tls = TlsConfig::default();
    let (mut a, mut b) = pair("quic/127.0.0.1:0", &tls, &tls).await;
    const BULKS: u32 = 150;
    const URGENT: u32 = 100;
    within(async {
        for i in 0..BULKS {
            a.tx.send(&batch(BULK, i, 30_000)).await.unwrap();
            if i < URGENT {
                a.tx.send(&batch(REALTIME, i, 200)).await.unwrap();
            }
        }
        a.tx.send(&[3, 0]).await.unwrap();
        let (mut bulk, mut urgent) = (0, 0);
        loop {
            let got = b.rx.recv().await.unwrap();
            match got[0] {
                BULK => {
                    assert_eq!(seq_of(&got), bulk, "bulk in order");
                    bulk += 1;
                }
                REALTIME => {
                    assert_eq!(seq_of(&got), urgent, "real-time in order");
                    urgent += 1;
                }
                3 => break,
                other => panic!("unexpected batch header {other:#x}"),
            }
        }
        assert_eq!(
            (bulk, urgent),
            (BULKS, URGENT),
            "the Close overtook batches sent before it"
        );
    })
    .await;
}

/// A QUIC pair whose dialer lives on a current-thread runtime of its own (`a_rt`), run only
/// while the test blocks on it; the listener side on a multi-thread runtime that runs all along.
fn quic_pair_on_two_runtimes() -> (
    tokio::runtime::Runtime,
    tokio::runtime::Runtime,
    Link,
    Link,
    hypha_transports::Listener,
) {
    let a_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tls = TlsConfig::default();
    let mut l = b_rt
        .block_on(listen(&"quic/127.0.0.1:0".parse().unwrap(), &tls))
        .unwrap();
    let bound = l.local_endpoint().clone();
    let accepted = b_rt.spawn(async move {
        let b = l.accept().await;
        (b, l)
    });
    let (a, b, l) = a_rt.block_on(async {
        let a = within(connect(&bound, &tls)).await.unwrap();
        let (b, l) = within(accepted).await.unwrap();
        (a, b.unwrap(), l)
    });
    (a_rt, b_rt, a, b, l)
}

#[test]
fn quic_try_send_sends_from_the_callers_thread() {
    let (a_rt, b_rt, mut a, mut b, _l) = quic_pair_on_two_runtimes();
    assert!(a.tx.can_try_send());
    // The dialer's runtime is not running now: no task of it can send. The batch reaches the
    // peer only if `try_send` had the connection's driver send it on this thread.
    assert!(a.tx.try_send(&batch(REALTIME, 1, 64)).unwrap());
    assert!(a.tx.try_send(&batch(RELIABLE, 2, 1000)).unwrap());
    let got = b_rt.block_on(async {
        let first = tokio::time::timeout(Duration::from_secs(5), b.rx.recv()).await;
        let second = tokio::time::timeout(Duration::from_secs(5), b.rx.recv()).await;
        (first, second)
    });
    let (Ok(Ok(first)), Ok(Ok(second))) = got else {
        panic!("a batch written with try_send was not sent until its runtime ran: {got:?}");
    };
    // Two lanes, two streams: they may arrive in either order.
    let mut got = [first, second];
    got.sort_by_key(seq_of);
    assert_eq!((seq_of(&got[0]), seq_of(&got[1])), (1, 2));
    assert_eq!(got[1].len(), 1000);
    drop(a_rt);
}

#[test]
fn quic_try_send_past_the_window_keeps_every_batch_in_order() {
    let (a_rt, b_rt, mut a, mut b, _l) = quic_pair_on_two_runtimes();
    // Write 64 KiB batches on the bulk lane without ever running the dialer's runtime, until
    // the stream takes no more (the peer's 8 MiB stream window): the last one is kept in part.
    let mut sent = 0u32;
    loop {
        sent += 1;
        assert!(sent < 2_000, "the bulk lane never filled");
        if !a.tx.try_send(&batch(BULK, sent, 65_535)).unwrap() {
            break;
        }
    }
    assert!(a.tx.has_pending());
    assert_eq!(
        a.tx.blocked_lanes(),
        1 << 7,
        "only the bulk lane is blocked"
    );
    // A batch for another lane while it is blocked is written at once, and one for the blocked
    // lane is kept after what it holds.
    assert!(a.tx.try_send(&batch(REALTIME, 0, 64)).unwrap());
    assert!(!a.tx.try_send(&batch(BULK, sent + 1, 100)).unwrap());
    let last = sent + 1;
    // Then the writer's part: wait for the lane, while the receiver reads everything.
    let reader = b_rt.spawn(async move {
        let mut next = 1;
        let mut realtime = false;
        while next <= last {
            let got = b.rx.recv().await.unwrap();
            if got[0] == REALTIME {
                realtime = true;
                continue;
            }
            assert_eq!(seq_of(&got), next, "bulk batches in order, none lost");
            let len = if next == last { 100 } else { 65_535 };
            assert_eq!(got.len(), len);
            next += 1;
        }
        realtime
    });
    let realtime = a_rt.block_on(async {
        within(async {
            while a.tx.has_pending() {
                a.tx.progress().await.unwrap();
            }
        })
        .await;
        within(reader).await.unwrap()
    });
    assert!(realtime, "the real-time batch arrived");
    assert_eq!(a.tx.blocked_lanes(), 0);
}

#[test]
fn quic_try_send_keeps_a_close_for_the_writer() {
    let (a_rt, b_rt, mut a, mut b, _l) = quic_pair_on_two_runtimes();
    assert!(a.tx.try_send(&batch(RELIABLE, 1, 64)).unwrap());
    // A `Close` (kind 3) waits for the other lanes: `try_send` keeps it, `flush` sends it.
    let close = vec![0x03, 0, 0, 0, 0];
    assert!(!a.tx.try_send(&close).unwrap());
    assert!(a.tx.has_pending());
    a_rt.block_on(within(a.tx.flush())).unwrap();
    assert!(!a.tx.has_pending());
    let (first, second) = b_rt.block_on(within(async {
        (b.rx.recv().await.unwrap(), b.rx.recv().await.unwrap())
    }));
    assert_eq!(seq_of(&first), 1);
    assert_eq!(&second[..], &close[..]);
}
