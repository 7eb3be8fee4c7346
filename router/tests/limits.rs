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

/// A node's session driven by hand over raw TCP (preamble, then u16-length-prefixed batches).
struct RawPeer {
    s: TcpStream,
    session: hypha_core::session::HeapSession,
    buf: Vec<u8>,
    t0: std::time::Instant,
}

impl RawPeer {
    async fn connect(addr: &str, id: u128) -> RawPeer {
        use hypha_core::session::{Config, HeapSession, Role};
        let s = half_open(addr).await;
        let cfg = Config::new(hypha_core::id::NodeId::from_u128(id));
        let t0 = std::time::Instant::now();
        let session = HeapSession::new(
            cfg,
            Role::Dialer,
            hypha_core::time::Instant::from_micros(0),
            7,
        );
        let mut p = RawPeer {
            s,
            session,
            buf: vec![0u8; 65_535],
            t0,
        };
        while !p.session.is_open() {
            p.flush(usize::MAX).await;
            p.read_one().await;
        }
        p.flush(usize::MAX).await;
        p
    }

    fn now(&self) -> hypha_core::time::Instant {
        hypha_core::time::Instant::from_micros(self.t0.elapsed().as_micros() as u64)
    }

    /// Writes up to `max` batches the session has queued.
    async fn flush(&mut self, max: usize) {
        for _ in 0..max {
            let now = self.now();
            let Some(n) = self.session.poll_transmit(now, &mut self.buf) else {
                return;
            };
            let mut framed = (n as u16).to_le_bytes().to_vec();
            framed.extend_from_slice(&self.buf[..n]);
            self.s.write_all(&framed).await.unwrap();
        }
    }

    /// Reads one batch and feeds it to the session; `false` at EOF.
    async fn read_one(&mut self) -> bool {
        let mut len = [0u8; 2];
        if tokio::time::timeout(T, self.s.read_exact(&mut len))
            .await
            .ok()
            .and_then(Result::ok)
            .is_none()
        {
            return false;
        }
        let mut batch = vec![0u8; usize::from(u16::from_le_bytes(len))];
        if self.s.read_exact(&mut batch).await.is_err() {
            return false;
        }
        let now = self.now();
        self.session.handle_input(now, &batch, &mut |_| {});
        true
    }

    /// Queues one reliable message of `size` bytes and writes only its first `pieces` batches.
    async fn start_big_message(&mut self, size: usize, pieces: usize) {
        use hypha_core::wire::{NetworkMessage, Priority, Push, RawBytes, SampleKind, WireKey};
        let payload = vec![3u8; size];
        let msg = NetworkMessage::Push(Push {
            key: WireKey::Name("big/partial"),
            kind: SampleKind::Put,
            payload: RawBytes(&payload),
            timestamp: None,
            encoding: None,
            attachment: None,
        });
        self.session.send(Priority::Background, true, &msg).unwrap();
        self.flush(pieces).await;
    }
}

#[tokio::test]
async fn partial_messages_share_one_node_wide_budget_and_give_it_back() {
    let mut c = common::node_config("tcp/127.0.0.1:0", &[]);
    c.limits.max_reassembly_bytes = 1 << 20;
    let a = hypha::open(c).await.unwrap();
    let addr = a.info().listening[0]
        .to_string()
        .trim_start_matches("tcp/")
        .to_string();
    // Two links each start a 4 MiB message and stop after ~640 KiB: the second pushes the
    // node past its 1 MiB budget, so its partial message is evicted and, its lane being
    // reliable, the link is closed with a reason.
    let mut one = RawPeer::connect(&addr, 0xa1).await;
    one.start_big_message(4 << 20, 10).await;
    let mut two = RawPeer::connect(&addr, 0xa2).await;
    two.start_big_message(4 << 20, 10).await;
    while two.read_one().await {}
    let events: Vec<_> = std::iter::from_fn(|| two.session.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            hypha_core::session::Event::Closed {
                reason: hypha_core::wire::CloseReason::TooLarge,
                by_peer: true
            }
        )),
        "{events:?}"
    );
    assert_eq!(a.info().reassembly_evicted, 1);
    // The first link goes: what it held returns to the budget, so a third link may hold as
    // much without anything evicted.
    drop(one);
    let mut three = RawPeer::connect(&addr, 0xa3).await;
    // Wait until the node has seen the first link go (it is no longer among its links).
    common::wait_until(T, async || {
        a.info()
            .links
            .iter()
            .all(|l| l.node != hypha_core::id::NodeId::from_u128(0xa1))
    })
    .await
    .unwrap();
    three.start_big_message(4 << 20, 10).await;
    // The third link is still up: a keep-alive exchange works and nothing more was evicted.
    let mut probe = RawPeer::connect(&addr, 0xa4).await;
    probe.start_big_message(64 << 10, 1).await;
    common::wait_until(T, async || a.info().links.len() >= 2)
        .await
        .unwrap();
    assert_eq!(a.info().reassembly_evicted, 1, "{:?}", a.info());
}

#[tokio::test]
async fn a_node_demanding_mutual_tls_refuses_plaintext_listeners_and_dials() {
    for (listen, connect) in [
        ("tcp/127.0.0.1:0", vec![]),
        ("quic/127.0.0.1:0", vec!["tcp/127.0.0.1:1".to_string()]),
    ] {
        let mut c = common::node_config(listen, &connect);
        c.tls.mutual = true;
        let err = hypha::open(c).await.unwrap_err().to_string();
        assert!(
            err.contains("plaintext") && err.contains("tls.mutual"),
            "{err}"
        );
    }
}

/// Issue 16: a key over `limits.max_key_len` is refused where it is made, naming the limit, on
/// every path that would send it (a neighbour would close the link on it), and nothing is sent.
#[tokio::test]
async fn a_key_over_max_key_len_is_refused_at_the_sender_on_every_path() {
    let mut ca = common::node_config("tcp/127.0.0.1:0", &[]);
    ca.limits.max_key_len = 32;
    let a = hypha::open(ca).await.unwrap();
    let ep = a.info().listening[0].to_string();
    // The neighbour holds the same cap: it would close the link on a longer key.
    let mut cb = common::node_config("tcp/127.0.0.1:0", &[ep]);
    cb.limits.max_key_len = 32;
    let b = hypha::open(cb).await.unwrap();
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let fits = format!("k/{}", "x".repeat(30));
    let long = format!("k/{}", "x".repeat(31));
    assert_eq!((fits.len(), long.len()), (32, 33));
    // Baseline: at the limit everything goes through.
    let sub = b.declare_subscriber("k/**").stream().unwrap();
    let p = a.declare_publisher(&fits).unwrap();
    assert!(p.wait_matching(T).await);
    a.put(&fits, "v").await.unwrap();
    let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&*s.key, fits.as_str());
    let _q = a.declare_queryable(&fits).stream().unwrap();
    let _t = a.liveliness().declare_token(&fits).unwrap();
    let named = |e: &dyn std::fmt::Display| {
        let e = e.to_string();
        assert!(
            e.contains("33 bytes is longer than limits.max_key_len (32 bytes)"),
            "{e}"
        );
    };
    // One byte more: refused on each path.
    let too_long = |e: &hypha::PublishError| {
        assert!(
            matches!(e, hypha::PublishError::KeyTooLong { len: 33, limit: 32 }),
            "{e}"
        );
        named(e);
    };
    too_long(&a.put(&long, "v").await.unwrap_err());
    too_long(&a.delete(&long).await.unwrap_err());
    too_long(&a.declare_publisher(&long).unwrap_err());
    let declare = |e: hypha::DeclareError| {
        assert!(
            matches!(e, hypha::DeclareError::KeyTooLong { len: 33, limit: 32 }),
            "{e}"
        );
        named(&e);
    };
    let wild = format!("k/*/{}", "x".repeat(29));
    assert_eq!(wild.len(), 33);
    declare(a.declare_subscriber(&long).stream().unwrap_err());
    declare(a.declare_subscriber(&wild).await.unwrap_err());
    declare(a.declare_queryable(&wild).stream().unwrap_err());
    declare(a.declare_queryable(&long).await.unwrap_err());
    declare(a.liveliness().declare_token(&long).unwrap_err());
    declare(a.liveliness().declare_subscriber(&wild).unwrap_err());
    let query = |e: hypha::api::query::QueryError| {
        assert!(
            matches!(
                e,
                hypha::api::query::QueryError::KeyTooLong { len: 33, limit: 32 }
            ),
            "{e}"
        );
        named(&e);
    };
    query(a.get(&long).send().await.unwrap_err());
    query(a.get(&format!("{wild}?p=1")).send().await.unwrap_err());
    // A reply on a key over the limit (to a wildcard query) is refused too; one within it goes.
    let q = b.declare_queryable("r/**").stream().unwrap();
    let rk = hypha::keyexpr::OwnedKeyExpr::new("r/**".to_string()).unwrap();
    assert!(a.wait_queryable(&rk, T).await);
    let mut replies = a.get("r/**").send().await.unwrap();
    let query = tokio::time::timeout(T, q.recv()).await.unwrap().unwrap();
    let over = format!("r/{}", "y".repeat(31));
    let e = query.reply(&over, "v").await.unwrap_err();
    assert!(
        matches!(
            e,
            hypha::api::query::ReplyError::KeyTooLong { len: 33, limit: 32 }
        ),
        "{e}"
    );
    named(&e);
    query.reply("r/ok", "v").await.unwrap();
    drop(query);
    let r = tokio::time::timeout(T, replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*r.result.unwrap().key, "r/ok");
    // Nothing reached the neighbour: the link is up, and it saw no over-long key.
    assert_eq!(a.info().links.len(), 1);
    a.put(&fits, "w").await.unwrap();
    let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!(s.payload_str(), Some("w"));
}

/// A lease outside the accepted range is refused by `open` as by the config file, naming the
/// field (the API took any value before).
#[tokio::test]
async fn a_lease_out_of_range_is_refused_by_open_too() {
    let mut c = common::node_config("tcp/127.0.0.1:0", &[]);
    c.lease_ms = 5;
    match hypha::open(c).await {
        Err(e) => assert!(e.to_string().contains("lease_ms"), "{e}"),
        Ok(_) => panic!("a 5 ms lease was accepted"),
    }
    let mut c = common::node_config("tcp/127.0.0.1:0", &[]);
    c.lease_ms = *hypha::config::LEASE_MS.start();
    assert!(hypha::open(c).await.is_ok());
}
