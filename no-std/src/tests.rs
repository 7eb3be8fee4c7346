//! The device node against hypha-core's std session (the one every std node runs per link), in
//! memory, on a fake clock: bytes cross as they would on a serial line, framed both ways.

extern crate std;

use super::*;
use hypha_core::framing::{self, Deframer};
use hypha_core::session::{self, HeapSession, Received, Role};
use hypha_core::wire::{
    self, Declare, NetworkMessage, Priority, Push, RawBytes, ReplyBody, Request, Response,
    ResponseFinal, WireKey,
};
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

const MTU: usize = 256;
type Dev<'b> = Node<'b, 4, 2, 2, 4>;

/// What the std side received, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Decl(String),
    Put(String, Vec<u8>),
    Request(u32, String),
    Reply(u32, String, Vec<u8>),
    Final(u32),
    InterestFinal(u32),
    Other(String),
}

/// What the device reported, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Connected,
    Disconnected(CloseReason, bool),
    Sample(u32, String, Vec<u8>),
    Query(u32, u8, String, String),
    Reply(u32, String, Vec<u8>),
    ReplyErr(u32),
    ReplyEnd(u32),
}

fn owned(e: Event<'_>) -> Ev {
    match e {
        Event::Connected => Ev::Connected,
        Event::Disconnected { reason, by_peer } => Ev::Disconnected(reason, by_peer),
        Event::Sample {
            subs, key, payload, ..
        } => Ev::Sample(subs.0, key.to_string(), payload.to_vec()),
        Event::Query {
            id,
            qable,
            key,
            params,
        } => Ev::Query(id.0, qable.0, key.to_string(), params.to_string()),
        Event::Reply { get, key, payload } => Ev::Reply(get.0, key.to_string(), payload.to_vec()),
        Event::ReplyErr { get, .. } => Ev::ReplyErr(get.0),
        Event::ReplyEnd { get } => Ev::ReplyEnd(get.0),
    }
}

fn record(r: &Received<'_, '_>) -> Got {
    let name = |k: WireKey<'_>| r.resolve(k).unwrap_or("?").to_string();
    match r.msg {
        NetworkMessage::Put(p) => Got::Put(name(WireKey::Id(p.key_id)), p.payload.to_vec()),
        NetworkMessage::Push(p) => Got::Put(name(p.key), p.payload.0.to_vec()),
        NetworkMessage::Declare(Declare::KeyExpr { key, .. }) => Got::Decl(format!("key {key}")),
        NetworkMessage::Declare(Declare::Subscriber { key, .. }) => {
            Got::Decl(format!("sub {}", name(key)))
        }
        NetworkMessage::Declare(Declare::Queryable { key, .. }) => {
            Got::Decl(format!("qable {}", name(key)))
        }
        NetworkMessage::Declare(Declare::Token { key, .. }) => {
            Got::Decl(format!("token {}", name(key)))
        }
        NetworkMessage::Declare(Declare::InterestFinal { id }) => Got::InterestFinal(id),
        NetworkMessage::Request(q) => Got::Request(q.id, name(q.key)),
        NetworkMessage::Response(Response {
            request_id,
            body: ReplyBody::Sample(p),
        }) => Got::Reply(request_id, name(p.key), p.payload.0.to_vec()),
        NetworkMessage::ResponseFinal(f) => Got::Final(f.request_id),
        other => Got::Other(format!("{other:?}")),
    }
}

/// The std end: a listener session behind the same framing.
struct Std {
    s: HeapSession,
    rx: Deframer<Vec<u8>>,
    got: Vec<Got>,
    closed: Vec<session::Event>,
    established: bool,
}

impl Std {
    fn new(now: Instant) -> Self {
        let mut cfg = session::Config::new(hypha_core::id::NodeId::from_u128(0xABC));
        cfg.mode = wire::Mode::Router;
        cfg.lease = Duration::from_secs(3);
        cfg.handshake_timeout = Duration::from_secs(3);
        Std {
            s: HeapSession::new(cfg, Role::Listener, now, 42),
            rx: Deframer::new(vec![0u8; framing::deframer_len(65_535)]),
            got: Vec::new(),
            closed: Vec::new(),
            established: false,
        }
    }

    fn input(&mut self, now: Instant, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (used, frame) = self.rx.push(bytes);
            bytes = &bytes[used..];
            if let Some(n) = frame {
                let got = &mut self.got;
                self.s
                    .handle_input(now, self.rx.frame(n), &mut |r| got.push(record(r)));
            }
        }
        while let Some(e) = self.s.poll_event() {
            match e {
                session::Event::Established { .. } => self.established = true,
                e @ session::Event::Closed { .. } => self.closed.push(e),
            }
        }
    }

    /// Everything the std side has to send, framed.
    fn output(&mut self, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_535];
        while let Some(n) = self.s.poll_transmit(now, &mut buf) {
            let mut f = vec![0u8; framing::encoded_len(n)];
            let m = framing::encode(&buf[..n], &mut f).unwrap();
            out.extend_from_slice(&f[..m]);
        }
        out
    }

    fn send(&mut self, msg: &NetworkMessage<'_>) {
        self.s.send(Priority::Data, true, msg).unwrap();
    }
}

/// Feeds `bytes` to the device, draining events whenever it stops.
fn feed(dev: &mut Dev<'_>, now: Instant, mut bytes: &[u8], evs: &mut Vec<Ev>) {
    loop {
        let used = dev.handle_rx(now, bytes);
        bytes = &bytes[used..];
        while let Some(e) = dev.poll_event() {
            evs.push(owned(e));
        }
        if bytes.is_empty() {
            break;
        }
    }
}

/// Shuttles bytes both ways until both ends are quiet; returns the device's events.
fn pump(dev: &mut Dev<'_>, std: &mut Std, now: Instant) -> Vec<Ev> {
    let mut evs = Vec::new();
    for _ in 0..20 {
        let mut moved = false;
        while let Some(b) = dev.poll_transmit(now) {
            let b = b.to_vec();
            std.input(now, &b);
            moved = true;
        }
        let out = std.output(now);
        if !out.is_empty() {
            feed(dev, now, &out, &mut evs);
            moved = true;
        }
        while let Some(e) = dev.poll_event() {
            evs.push(owned(e));
        }
        if !moved {
            break;
        }
    }
    evs
}

fn ms(n: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(n)
}

struct Bufs {
    rx: [u8; rx_buffer_len(MTU)],
    tx: [u8; tx_buffer_len(MTU)],
}

impl Bufs {
    fn new() -> Self {
        Bufs {
            rx: [0; rx_buffer_len(MTU)],
            tx: [0; tx_buffer_len(MTU)],
        }
    }
}

fn device(b: &mut Bufs) -> Dev<'_> {
    let mut cfg = Config::new(hypha_core::id::NodeId::from_u128(0xD0));
    cfg.seed = 5;
    let mut d = Dev::new(cfg, &mut b.rx, &mut b.tx);
    d.declare_publisher("device/temp").unwrap();
    d.declare_subscriber("ctl/**").unwrap();
    d.declare_queryable("device/info").unwrap();
    d.declare_token("device/alive").unwrap();
    d
}

fn decls() -> Vec<Got> {
    vec![
        Got::Decl("key device/temp".into()),
        Got::Decl("sub ctl/**".into()),
        Got::Decl("qable device/info".into()),
        Got::Decl("token device/alive".into()),
    ]
}

#[test]
fn handshake_declares_everything_once() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    let evs = pump(&mut dev, &mut std, ms(0));
    assert_eq!(evs, [Ev::Connected]);
    assert!(std.established && dev.is_connected());
    let peer = std.s.peer().unwrap();
    assert_eq!(peer.mode, wire::Mode::Client);
    assert_eq!(
        std.s.batch_size(),
        MTU,
        "the device's MTU bounds the std side's batches"
    );
    assert_eq!(std.got, decls());
    assert_eq!(dev.framing().errors(), 0);
    assert_eq!(std.rx.stats().errors(), 0);
}

#[test]
fn init_is_resent_until_accepted() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    assert!(dev.poll_transmit(ms(0)).is_some(), "Init");
    assert!(dev.poll_transmit(ms(0)).is_none());
    assert_eq!(dev.poll_timeout(), ms(250));
    assert!(dev.poll_transmit(ms(100)).is_none());
    let again = dev.poll_transmit(ms(250)).unwrap().to_vec();
    // The std side only hears the second one (the first was lost on the line).
    let mut std = Std::new(ms(250));
    std.input(ms(250), &again);
    let evs = pump(&mut dev, &mut std, ms(251));
    assert_eq!(evs, [Ev::Connected]);
    assert_eq!(std.got, decls());
}

#[test]
fn pub_sub_query_and_get_cross_the_line() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    std.got.clear();

    // put on a declared key id
    for i in 0..10u8 {
        dev.put(KeyId(0), &[b'0' + i]).unwrap();
        pump(&mut dev, &mut std, ms(1));
    }
    let puts: Vec<Got> = (0..10u8)
        .map(|i| Got::Put("device/temp".into(), vec![b'0' + i]))
        .collect();
    assert_eq!(std.got, puts);
    std.got.clear();

    // a sample from the std side, on a key id it declares (as a router does)
    std.send(&NetworkMessage::Declare(Declare::KeyExpr {
        id: 77,
        key: "ctl/exit",
    }));
    std.send(&NetworkMessage::Put(wire::Put {
        key_id: 77,
        payload: b"3",
    }));
    std.send(&NetworkMessage::Push(Push {
        key: WireKey::Name("ctl/led"),
        kind: SampleKind::Put,
        payload: RawBytes(b"on"),
        timestamp: None,
        encoding: None,
        attachment: None,
    }));
    let evs = pump(&mut dev, &mut std, ms(2));
    assert_eq!(
        evs,
        [
            Ev::Sample(1, "ctl/exit".into(), b"3".to_vec()),
            Ev::Sample(1, "ctl/led".into(), b"on".to_vec()),
        ]
    );

    // a query to the device's queryable
    let req = |id, key| {
        NetworkMessage::Request(Request {
            id,
            key: WireKey::Name(key),
            parameters: "x=1",
            target: wire::QueryTarget::BestMatching,
            consolidation: wire::Consolidation::Auto,
            timeout_ms: 1000,
            payload: None,
            encoding: None,
            attachment: None,
        })
    };
    std.send(&req(9, "device/info"));
    // and one nothing here answers: the device ends it at once
    std.send(&req(10, "other/thing"));
    let evs = pump(&mut dev, &mut std, ms(3));
    assert_eq!(evs, [Ev::Query(9, 0, "device/info".into(), "x=1".into())]);
    dev.reply(QueryId(9), "device/info", b"hypha-nostd")
        .unwrap();
    dev.reply_final(QueryId(9)).unwrap();
    pump(&mut dev, &mut std, ms(4));
    assert_eq!(
        std.got,
        [
            Got::Final(10),
            Got::Reply(9, "device/info".into(), b"hypha-nostd".to_vec()),
            Got::Final(9),
        ]
    );
    std.got.clear();

    // a get from the device
    let g = dev.get(ms(5), "host/config", "", 1000).unwrap();
    pump(&mut dev, &mut std, ms(5));
    assert_eq!(std.got, [Got::Request(g.0, "host/config".into())]);
    std.send(&NetworkMessage::Response(Response {
        request_id: g.0,
        body: ReplyBody::Sample(Push {
            key: WireKey::Name("host/config"),
            kind: SampleKind::Put,
            payload: RawBytes(b"rate=10"),
            timestamp: None,
            encoding: None,
            attachment: None,
        }),
    }));
    std.send(&NetworkMessage::ResponseFinal(ResponseFinal {
        request_id: g.0,
    }));
    let evs = pump(&mut dev, &mut std, ms(6));
    assert_eq!(
        evs,
        [
            Ev::Reply(g.0, "host/config".into(), b"rate=10".to_vec()),
            Ev::ReplyEnd(g.0)
        ]
    );
    assert_eq!(dev.framing().errors() + std.rx.stats().errors(), 0);
    assert!(std.closed.is_empty());
}

#[test]
fn a_get_nobody_finishes_ends_at_its_deadline() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    let g = dev.get(ms(10), "host/x", "", 500).unwrap();
    pump(&mut dev, &mut std, ms(10));
    assert!(dev.poll_timeout() <= ms(510));
    let evs = pump(&mut dev, &mut std, ms(509));
    assert!(evs.is_empty());
    let evs = pump(&mut dev, &mut std, ms(510));
    assert_eq!(evs, [Ev::ReplyEnd(g.0)]);
}

#[test]
fn back_pressure_is_would_block_and_nothing_is_lost() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    std.got.clear();
    let payload = [0x5Au8; 40];
    let mut accepted = 0;
    let mut blocked = 0;
    for _ in 0..100 {
        match dev.put(KeyId(0), &payload) {
            Ok(()) => accepted += 1,
            Err(Error::WouldBlock) => {
                blocked += 1;
                // Drain to the line, then the put goes through.
                pump(&mut dev, &mut std, ms(1));
                dev.put(KeyId(0), &payload).unwrap();
                accepted += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    pump(&mut dev, &mut std, ms(1));
    assert!(
        blocked > 10,
        "a 256-byte batch holds a handful of 40-byte puts: {blocked}"
    );
    assert_eq!(accepted, 100);
    assert_eq!(
        std.got.len(),
        100,
        "every accepted put reached the std side"
    );
    assert!(
        std.got
            .iter()
            .all(|g| *g == Got::Put("device/temp".into(), payload.to_vec()))
    );
    // Larger than any batch: refused outright, not WouldBlock forever.
    assert_eq!(dev.put(KeyId(0), &[1u8; 300]), Err(Error::TooLarge));
    // Not connected: refused.
    let mut b2 = Bufs::new();
    let mut fresh = device(&mut b2);
    assert_eq!(fresh.put(KeyId(0), b"x"), Err(Error::NotConnected));
}

#[test]
fn keepalives_hold_the_lease_and_silence_expires_it() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    // Both sides idle for 10 s, stepping their timers: keep-alives keep the link up.
    let mut t = 0;
    while t < 10_000 {
        t += 100;
        std.s.handle_timeout(ms(t));
        let evs = pump(&mut dev, &mut std, ms(t));
        assert!(evs.is_empty(), "{t}: {evs:?}");
    }
    assert!(dev.stats().tx_keepalives >= 10 && std.closed.is_empty());
    // The std side goes silent (it died): the device notices within the lease and re-inits.
    let mut evs = Vec::new();
    let mut first_init_at = None;
    for step in 1..=40u64 {
        let now = ms(t + step * 100);
        if let Some(b) = dev.poll_transmit(now) {
            if b.len() > 20 && first_init_at.is_none() && !dev.is_connected() {
                first_init_at = Some(step * 100);
            }
        }
        while let Some(e) = dev.poll_event() {
            evs.push(owned(e));
        }
    }
    assert_eq!(evs, [Ev::Disconnected(CloseReason::LeaseExpired, false)]);
    assert!(
        first_init_at.is_some_and(|d| d <= 3_000 + 250 + 100),
        "{first_init_at:?}"
    );
}

#[test]
fn a_rebooted_device_makes_the_std_side_drop_the_old_session() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    drop(dev);
    // Reboot: a fresh node on the same line.
    let mut b2 = Bufs::new();
    let mut dev = device(&mut b2);
    let init = dev.poll_transmit(ms(500)).unwrap().to_vec();
    std.input(ms(500), &init);
    assert!(
        matches!(
            std.closed.as_slice(),
            [session::Event::Closed { by_peer: false, .. }]
        ),
        "{:?}",
        std.closed
    );
    // The std runtime then opens a new session on the line (as face.rs does after a link
    // closes); the device's next Init opens it and every declaration is replayed.
    let mut std2 = Std::new(ms(600));
    let evs = pump(&mut dev, &mut std2, ms(750));
    assert_eq!(evs, [Ev::Connected]);
    assert_eq!(std2.got, decls());
}

#[test]
fn a_close_from_the_std_side_reconnects_and_replays() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    std.s.close(CloseReason::Shutdown);
    let evs = pump(&mut dev, &mut std, ms(10));
    assert_eq!(evs, [Ev::Disconnected(CloseReason::Shutdown, true)]);
    assert!(!dev.is_connected());
    // Its first Init went to the closed session; the next one, an init interval later,
    // reaches the new one.
    let mut std2 = Std::new(ms(20));
    assert!(pump(&mut dev, &mut std2, ms(20)).is_empty());
    let evs = pump(&mut dev, &mut std2, ms(260));
    assert_eq!(evs, [Ev::Connected]);
    assert_eq!(std2.got, decls());
    assert_eq!(dev.stats().connects, 2);
}

#[test]
fn line_noise_between_frames_is_counted_and_the_session_survives() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    // Junk, a frame with a flipped byte, and an over-long run, then a real sample.
    let mut noise = vec![0x13u8, 0x37, 0x00];
    let mut bad = vec![0u8; framing::encoded_len(5)];
    let n = framing::encode(b"bogus", &mut bad).unwrap();
    bad.truncate(n);
    bad[3] ^= 0x40;
    noise.extend_from_slice(&bad);
    noise.extend_from_slice(&[0x77; 400]);
    noise.push(0);
    let mut evs = Vec::new();
    feed(&mut dev, ms(1), &noise, &mut evs);
    std.send(&NetworkMessage::Push(Push {
        key: WireKey::Name("ctl/a"),
        kind: SampleKind::Put,
        payload: RawBytes(b"1"),
        timestamp: None,
        encoding: None,
        attachment: None,
    }));
    evs.extend(pump(&mut dev, &mut std, ms(2)));
    assert_eq!(evs, [Ev::Sample(1, "ctl/a".into(), b"1".to_vec())]);
    let f = dev.framing();
    assert_eq!((f.cobs_errors + f.crc_errors, f.overflows), (2, 1), "{f:?}");
    assert!(dev.is_connected() && std.closed.is_empty());
}

#[test]
fn remote_key_table_evicts_oldest_and_counts() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    pump(&mut dev, &mut std, ms(0));
    let keys = ["ctl/a", "ctl/b", "ctl/c", "ctl/d", "ctl/e"];
    for (i, k) in keys.iter().enumerate() {
        std.send(&NetworkMessage::Declare(Declare::KeyExpr {
            id: 100 + i as u32,
            key: k,
        }));
    }
    std.send(&NetworkMessage::Put(wire::Put {
        key_id: 104,
        payload: b"e",
    }));
    // The first binding was evicted: its sample is counted, not delivered with a wrong key.
    std.send(&NetworkMessage::Put(wire::Put {
        key_id: 100,
        payload: b"a",
    }));
    let evs = pump(&mut dev, &mut std, ms(1));
    assert_eq!(evs, [Ev::Sample(1, "ctl/e".into(), b"e".to_vec())]);
    assert_eq!(dev.stats().keys_evicted, 1);
    assert_eq!(dev.stats().rx_unknown_key, 1);
}

#[test]
fn bad_keys_and_capacities_are_errors() {
    let mut b = Bufs::new();
    let mut d: Node<'_, 1, 1, 1, 1> = Node::new(
        Config::new(hypha_core::id::NodeId::from_u128(1)),
        &mut b.rx,
        &mut b.tx,
    );
    assert_eq!(d.declare_subscriber("a//b"), Err(Error::InvalidKey));
    d.declare_subscriber("a/*").unwrap();
    assert_eq!(d.declare_subscriber("b"), Err(Error::Full));
    assert_eq!(d.put(KeyId(3), b"x"), Err(Error::InvalidKey));
    let mut small = [0u8; 10];
    let mut tx = [0u8; 10];
    let mut s: Node<'_> = Node::new(
        Config::new(hypha_core::id::NodeId::from_u128(1)),
        &mut small,
        &mut tx,
    );
    assert!(s.poll_transmit(ms(0)).is_none());
    assert_eq!(s.reply_final(QueryId(1)), Err(Error::BufferTooSmall));
}

proptest::proptest! {
    /// Whatever arrives on the line, the device never panics, consumes every byte, and still
    /// talks to a std session afterwards.
    #[test]
    fn arbitrary_line_input_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..8)) {
        let mut b = Bufs::new();
        let mut dev = device(&mut b);
        let mut std = Std::new(ms(0));
        pump(&mut dev, &mut std, ms(0));
        let mut evs = Vec::new();
        for c in &chunks {
            feed(&mut dev, ms(1), c, &mut evs);
            let _ = dev.poll_transmit(ms(1));
        }
        // Whatever state that left, a fresh std session gets the device back.
        let mut t = 2;
        let mut std2 = Std::new(ms(t));
        while !std2.established && t < 20_000 {
            t += 50;
            let _ = pump(&mut dev, &mut std2, ms(t));
            if !std2.closed.is_empty() {
                std2 = Std::new(ms(t));
            }
        }
        proptest::prop_assert!(std2.established, "{evs:?}");
    }
}

/// Datagrams both ways, unframed: every batch is one datagram, as on a `udp/` link.
fn pump_datagrams(dev: &mut Dev<'_>, std: &mut Std, now: Instant) -> Vec<Ev> {
    let mut evs = Vec::new();
    let mut buf = vec![0u8; 65_535];
    for _ in 0..20 {
        let mut moved = false;
        while let Some(b) = dev.poll_transmit_datagram(now) {
            let got = &mut std.got;
            std.s.handle_input(now, b, &mut |r| got.push(record(r)));
            moved = true;
        }
        while let Some(e) = std.s.poll_event() {
            if let session::Event::Established { .. } = e {
                std.established = true;
            }
        }
        while let Some(n) = std.s.poll_transmit(now, &mut buf) {
            while !dev.handle_datagram(now, &buf[..n]) {
                while let Some(e) = dev.poll_event() {
                    evs.push(owned(e));
                }
            }
            moved = true;
        }
        while let Some(e) = dev.poll_event() {
            evs.push(owned(e));
        }
        if !moved {
            break;
        }
    }
    evs
}

#[test]
fn datagrams_carry_the_session_unframed() {
    let mut b = Bufs::new();
    let mut dev = device(&mut b);
    let mut std = Std::new(ms(0));
    assert_eq!(pump_datagrams(&mut dev, &mut std, ms(0)), [Ev::Connected]);
    assert!(std.established && dev.is_connected());
    assert_eq!(std.got, decls());
    std.got.clear();
    for i in 0..10u8 {
        dev.put(KeyId(0), &[b'0' + i]).unwrap();
        pump_datagrams(&mut dev, &mut std, ms(1));
    }
    let puts: Vec<Got> = (0..10u8)
        .map(|i| Got::Put("device/temp".into(), vec![b'0' + i]))
        .collect();
    assert_eq!(std.got, puts);
    std.send(&NetworkMessage::Push(Push {
        key: WireKey::Name("ctl/led"),
        kind: SampleKind::Put,
        payload: RawBytes(b"on"),
        timestamp: None,
        encoding: None,
        attachment: None,
    }));
    let evs = pump_datagrams(&mut dev, &mut std, ms(2));
    assert_eq!(evs, [Ev::Sample(1, "ctl/led".into(), b"on".to_vec())]);
    // Keep-alives go as datagrams too, and hold the lease.
    let ka = dev.poll_transmit_datagram(ms(800)).unwrap().to_vec();
    assert!(!ka.is_empty() && ka.len() < 8, "{ka:?}");
    // A datagram larger than the receive buffer is dropped and counted, not a panic.
    assert!(dev.handle_datagram(ms(801), &vec![0x55; rx_buffer_len(MTU) + 1]));
    assert_eq!(dev.framing().overflows, 1);
    assert!(dev.is_connected());
    // A damaged frame in a datagram is a malformed batch: the session ends (and starts again).
    assert!(dev.handle_datagram(ms(802), &[0x05, 0xFF, 0xFF, 0xFF]));
    assert_eq!(dev.stats().rx_malformed, 1);
    assert!(!dev.is_connected());
    assert_eq!(dev.framing().crc_errors + dev.framing().cobs_errors, 0);
}
