//! Scenario tests: two sessions driven with a fake clock, no sockets, no sleeps.

extern crate std;
use super::*;
use crate::wire::{
    Close, Init, Push, Put, RawBytes, SampleKind, TransportMessage, encode_frame_header,
};
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

/// What a sink saw, owned.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Put {
        key: Option<String>,
        payload: Vec<u8>,
        priority: Priority,
    },
    Push {
        key: Option<String>,
        payload: Vec<u8>,
    },
    Other,
}

fn own(r: &Received<'_, '_>) -> Got {
    match r.msg {
        NetworkMessage::Put(p) => Got::Put {
            key: r.resolve_id(p.key_id).map(ToString::to_string),
            payload: p.payload.to_vec(),
            priority: r.priority,
        },
        NetworkMessage::Push(p) => Got::Push {
            key: r.resolve(p.key).map(ToString::to_string),
            payload: p.payload.0.to_vec(),
        },
        _ => Got::Other,
    }
}

struct Pair {
    a: HeapSession,
    b: HeapSession,
    now: Instant,
    got_a: Vec<Got>,
    got_b: Vec<Got>,
    events_a: Vec<Event>,
    events_b: Vec<Event>,
    batches_ab: usize,
}

fn cfg(id: u128) -> Config {
    Config::new(NodeId::from_u128(id))
}

impl Pair {
    fn new(ca: Config, cb: Config) -> Self {
        let now = Instant::from_millis(1_000);
        Pair {
            a: HeapSession::new(ca, Role::Dialer, now, 0xdead_beef),
            b: HeapSession::new(cb, Role::Listener, now, 0x1234_5678_9abc),
            now,
            got_a: Vec::new(),
            got_b: Vec::new(),
            events_a: Vec::new(),
            events_b: Vec::new(),
            batches_ab: 0,
        }
    }

    /// Shuttles batches both ways until both sides are quiet.
    fn drive(&mut self) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let mut moved = false;
            while let Some(n) = self.a.poll_transmit(self.now, &mut buf) {
                moved = true;
                self.batches_ab += 1;
                let got = &mut self.got_b;
                self.b
                    .handle_input(self.now, &buf[..n], &mut |r| got.push(own(r)));
            }
            while let Some(n) = self.b.poll_transmit(self.now, &mut buf) {
                moved = true;
                let got = &mut self.got_a;
                self.a
                    .handle_input(self.now, &buf[..n], &mut |r| got.push(own(r)));
            }
            while let Some(e) = self.a.poll_event() {
                self.events_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.events_b.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Advances the clock to the earliest timeout of either side and fires it.
    fn advance(&mut self, limit: Instant) -> bool {
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= limit => {
                self.now = self.now.max(t);
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
                true
            }
            _ => false,
        }
    }

    fn open() -> Self {
        let mut p = Pair::new(cfg(1), cfg(2));
        p.drive();
        assert!(p.a.is_open() && p.b.is_open());
        p.events_a.clear();
        p.events_b.clear();
        p
    }
}

#[test]
fn handshake_establishes_and_negotiates() {
    let mut ca = cfg(1);
    ca.batch_size = 1_500;
    ca.lease = Duration::from_secs(3);
    let mut cb = cfg(2);
    cb.mode = Mode::Router;
    let mut p = Pair::new(ca, cb);
    p.drive();
    assert_eq!(
        p.events_a,
        [Event::Established {
            peer: PeerInfo {
                node_id: NodeId::from_u128(2),
                mode: Mode::Router,
                lease: Duration::from_secs(10)
            },
            batch_size: 1_500
        }]
    );
    assert_eq!(
        p.events_b,
        [Event::Established {
            peer: PeerInfo {
                node_id: NodeId::from_u128(1),
                mode: Mode::Peer,
                lease: Duration::from_secs(3)
            },
            batch_size: 1_500
        }]
    );
    assert_eq!(p.a.batch_size(), 1_500);
    assert_eq!(p.b.batch_size(), 1_500);
    // Exactly Init and Open went from a to b.
    assert_eq!(p.batches_ab, 2);
}

#[test]
fn a_frame_overtaking_open_opens_the_listener() {
    // On a multi-stream link the dialer's first data frame may arrive before its Open.
    let now = Instant::ZERO;
    let mut a = HeapSession::new(cfg(1), Role::Dialer, now, 77);
    let mut b = HeapSession::new(cfg(2), Role::Listener, now, 88);
    let mut buf = vec![0u8; 65_535];
    let n = a.poll_transmit(now, &mut buf).unwrap(); // Init
    b.handle_input(now, &buf[..n], &mut |_| {});
    let n = b.poll_transmit(now, &mut buf).unwrap(); // Accept
    a.handle_input(now, &buf[..n], &mut |_| {});
    assert!(a.is_open() && !b.is_open());
    // The listener sends no data before it hears from the dialer again.
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: b"x",
    });
    assert_eq!(b.send(Priority::Data, true, &put), Err(SendError::NotOpen));
    let n = a.poll_transmit(now, &mut buf).unwrap();
    let open = buf[..n].to_vec();
    a.send(Priority::Data, true, &put).unwrap();
    let n = a.poll_transmit(now, &mut buf).unwrap();
    let mut got = 0;
    b.handle_input(now, &buf[..n], &mut |_| got += 1);
    assert_eq!(got, 1);
    assert!(b.is_open());
    b.handle_input(now, &open, &mut |_| got += 1);
    assert!(b.is_open(), "late Open is harmless");
}

#[test]
fn send_before_open_is_refused() {
    let mut p = Pair::new(cfg(1), cfg(2));
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: b"x",
    });
    assert_eq!(
        p.a.send(Priority::Data, true, &put),
        Err(SendError::NotOpen)
    );
    p.drive();
    assert_eq!(p.a.send(Priority::Data, true, &put), Ok(()));
}

#[test]
fn version_mismatch_is_refused_with_a_reason() {
    let now = Instant::ZERO;
    let mut b = HeapSession::new(cfg(2), Role::Listener, now, 1);
    let init = TransportMessage::Init(Init {
        version: PROTOCOL_VERSION + 1,
        node_id: NodeId::from_u128(1),
        mode: Mode::Peer,
        batch_size: 1000,
        sn_bits: 7,
        lease_ms: 1000,
        initial_sn: 0,
        acks: false,
    });
    let mut buf = [0u8; 256];
    let n = init.encode(&mut buf).unwrap();
    b.handle_input(now, &buf[..n], &mut |_| panic!("no message expected"));
    assert_eq!(
        b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::UnsupportedVersion,
            by_peer: false
        })
    );
    // The refusal goes out as a Close with the reason, then nothing more.
    let n = b.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(
        TransportMessage::decode(&buf[..n]).unwrap(),
        TransportMessage::Close(Close {
            reason: CloseReason::UnsupportedVersion,
            detail: "unsupported protocol version"
        })
    );
    assert!(b.is_closed());
    assert_eq!(b.poll_transmit(now, &mut buf), None);
    // The dialer learns why.
    let mut a = HeapSession::new(cfg(1), Role::Dialer, now, 1);
    let mut out = [0u8; 256];
    a.poll_transmit(now, &mut out).unwrap();
    a.handle_input(now, &buf[..n], &mut |_| {});
    assert_eq!(
        a.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::UnsupportedVersion,
            by_peer: true
        })
    );
    assert!(a.is_closed());
}

#[test]
fn link_to_self_is_refused() {
    let mut p = Pair::new(cfg(1), cfg(1));
    p.drive();
    assert!(p.a.is_closed() && p.b.is_closed());
    assert_eq!(
        p.events_b,
        [Event::Closed {
            reason: CloseReason::Refused,
            by_peer: false
        }]
    );
}

#[test]
fn keepalives_hold_the_lease_and_silence_expires_it() {
    let mut p = Pair::open();
    // Ten leases of idle time with both sides driven: keep-alives flow, nothing expires.
    let end = p.now + Duration::from_secs(100);
    while p.advance(end) {
        p.drive();
    }
    assert!(
        p.a.is_open() && p.b.is_open(),
        "{:?} {:?}",
        p.events_a,
        p.events_b
    );
    assert!(p.a.stats().keepalives_sent >= 30, "{:?}", p.a.stats());
    // Now b goes silent: a's lease on b expires after b's lease (10 s), not before.
    let silent_from = p.now;
    let t = p.a.poll_timeout().unwrap();
    let mut now = t;
    let mut buf = vec![0u8; 128];
    loop {
        p.a.handle_timeout(now);
        while p.a.poll_transmit(now, &mut buf).is_some() {}
        if p.a.is_closed() {
            break;
        }
        now = p.a.poll_timeout().unwrap();
    }
    assert!(now.saturating_since(silent_from) >= Duration::from_secs(10));
    assert!(now.saturating_since(silent_from) <= Duration::from_millis(10_001));
    assert_eq!(
        p.a.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::LeaseExpired,
            by_peer: false
        })
    );
}

#[test]
fn handshake_times_out() {
    let now = Instant::ZERO;
    let mut b = HeapSession::new(cfg(2), Role::Listener, now, 1);
    let t = b.poll_timeout().unwrap();
    assert_eq!(t, now + Duration::from_secs(10));
    b.handle_timeout(t);
    assert!(matches!(
        b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::LeaseExpired,
            ..
        })
    ));
}

#[test]
fn declared_key_ids_resolve_on_the_receiver() {
    let mut p = Pair::open();
    let id = p.a.declare_keyexpr("fleet/car1/speed").unwrap();
    p.a.send(
        Priority::Data,
        true,
        &NetworkMessage::Put(Put {
            key_id: id,
            payload: b"42",
        }),
    )
    .unwrap();
    p.drive();
    assert_eq!(
        p.got_b,
        [
            Got::Other,
            Got::Put {
                key: Some("fleet/car1/speed".into()),
                payload: b"42".to_vec(),
                priority: Priority::Data
            }
        ]
    );
    assert_eq!(p.b.remote_keys().get(id), Some("fleet/car1/speed"));
}

#[test]
fn remote_key_cap_closes_the_link() {
    let mut cb = cfg(2);
    cb.max_remote_keys = 3;
    let mut p = Pair::new(cfg(1), cb);
    p.drive();
    p.events_b.clear();
    for i in 0..4 {
        p.a.declare_keyexpr(&std::format!("k/{i}")).unwrap();
        p.drive();
    }
    assert_eq!(
        p.events_b,
        [Event::Closed {
            reason: CloseReason::TooLarge,
            by_peer: false
        }]
    );
    assert!(p.events_a.contains(&Event::Closed {
        reason: CloseReason::TooLarge,
        by_peer: true
    }));
}

#[test]
fn data_and_control_messages_are_counted_apart() {
    use crate::wire::{Declare, Routed};
    let mut p = Pair::open();
    let base = (*p.a.stats(), *p.b.stats());
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: b"x",
    });
    let decl = NetworkMessage::Declare(Declare::UndeclareSubscriber { id: 7 });
    let mut body = [0u8; 16];
    let n = put.encode(&mut body).unwrap();
    let routed = |body: &[u8]| {
        let r = Routed {
            src: crate::id::NodeId::from_u128(1),
            dst: crate::id::NodeId::from_u128(2),
            hops: 4,
            origin: None,
            body: RawBytes(body),
        };
        let mut out = vec![0u8; 64];
        let n = NetworkMessage::Routed(r).encode(&mut out).unwrap();
        out.truncate(n);
        out
    };
    let routed_put = routed(&body[..n]);
    let mut dbody = [0u8; 16];
    let dn = decl.encode(&mut dbody).unwrap();
    let routed_decl = routed(&dbody[..dn]);
    for m in [
        put,
        decl,
        NetworkMessage::decode(&routed_put).unwrap(),
        NetworkMessage::decode(&routed_decl).unwrap(),
    ] {
        p.a.send(Priority::Data, true, &m).unwrap();
    }
    p.drive();
    let (a, b) = (p.a.stats(), p.b.stats());
    assert_eq!(a.tx_messages - base.0.tx_messages, 4);
    assert_eq!(a.tx_data - base.0.tx_data, 2, "the put and the routed put");
    assert_eq!(b.rx_messages - base.1.rx_messages, 4);
    assert_eq!(b.rx_data - base.1.rx_data, 2);
}

#[test]
fn a_lone_message_goes_out_at_once_and_a_backlog_is_batched() {
    let mut p = Pair::open();
    let mut buf = vec![0u8; 65_535];
    p.a.send(
        Priority::Data,
        true,
        &NetworkMessage::Put(Put {
            key_id: 1,
            payload: b"x",
        }),
    )
    .unwrap();
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    assert!(n <= 4 + 1, "lone put frame is {n} bytes");
    p.b.handle_input(p.now, &buf[..n], &mut |_| {});
    assert_eq!(p.a.poll_transmit(p.now, &mut buf), None);
    // 1000 queued puts of 40 bytes go out in a handful of full batches.
    for i in 0..1000u32 {
        let payload = [i as u8; 40];
        p.a.send(
            Priority::Data,
            true,
            &NetworkMessage::Put(Put {
                key_id: 1,
                payload: &payload,
            }),
        )
        .unwrap();
    }
    let mut batches = 0;
    let mut got = 0;
    while let Some(n) = p.a.poll_transmit(p.now, &mut buf) {
        assert!(n <= 65_535);
        batches += 1;
        p.b.handle_input(p.now, &buf[..n], &mut |_| got += 1);
    }
    assert_eq!(got, 1000);
    assert!(batches <= 2, "{batches} batches for 1000 small puts");
}

#[test]
fn higher_priority_lanes_go_first() {
    let mut p = Pair::open();
    let bulk = vec![0u8; 60_000];
    for _ in 0..3 {
        p.a.send(
            Priority::Background,
            true,
            &NetworkMessage::Put(Put {
                key_id: 1,
                payload: &bulk,
            }),
        )
        .unwrap();
    }
    let mut buf = vec![0u8; 65_535];
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    let got = &mut p.got_b;
    p.b.handle_input(p.now, &buf[..n], &mut |r| got.push(own(r)));
    p.a.send(
        Priority::RealTime,
        false,
        &NetworkMessage::Put(Put {
            key_id: 1,
            payload: b"rt",
        }),
    )
    .unwrap();
    p.drive();
    let order: Vec<Priority> = p
        .got_b
        .iter()
        .filter_map(|g| match g {
            Got::Put { priority, .. } => Some(*priority),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            Priority::Background,
            Priority::RealTime,
            Priority::Background,
            Priority::Background
        ]
    );
}

#[test]
fn a_skipped_lane_waits_while_the_others_go() {
    let mut p = Pair::open();
    let bulk = vec![0u8; 60_000];
    let put = |payload| NetworkMessage::Put(Put { key_id: 1, payload });
    p.a.send(Priority::Background, true, &put(&bulk)).unwrap();
    p.a.send(Priority::Data, true, &put(b"data")).unwrap();
    let mut buf = vec![0u8; 65_535];
    let skip = 1 << Priority::Background.index();
    // The Data lane goes; the skipped Background lane hands out nothing.
    let n = p.a.poll_transmit_except(p.now, &mut buf, skip).unwrap();
    let got = &mut p.got_b;
    p.b.handle_input(p.now, &buf[..n], &mut |r| got.push(own(r)));
    assert_eq!(p.a.poll_transmit_except(p.now, &mut buf, skip), None);
    assert!(p.a.queued_bytes(Priority::Background) > 60_000);
    // Unskipped, it follows.
    p.drive();
    let order: Vec<(Priority, usize)> = p
        .got_b
        .iter()
        .filter_map(|g| match g {
            Got::Put {
                priority, payload, ..
            } => Some((*priority, payload.len())),
            _ => None,
        })
        .collect();
    assert_eq!(order, [(Priority::Data, 4), (Priority::Background, 60_000)]);
}

/// Issue 15: a RealTime message queued while a 1 MiB Background message is being fragmented
/// waits for at most the one fragment already handed out: every batch after it is the RealTime
/// frame, whenever it is queued, and no fragment exceeds the batch size. Then the bulk resumes
/// where it stopped and arrives whole.
#[test]
fn a_higher_lane_waits_at_most_one_fragment_of_bulk() {
    let mut p = Pair::new(cfg(1), cfg(2));
    p.drive();
    let payload = vec![3u8; 1 << 20];
    let bulk = NetworkMessage::Push(Push {
        key: crate::wire::WireKey::Name("bulk"),
        kind: SampleKind::Put,
        payload: RawBytes(&payload),
        timestamp: None,
        encoding: None,
        attachment: None,
    });
    p.a.send(Priority::Background, true, &bulk).unwrap();
    let lane = |b: &[u8]| Priority::from_bits(b[0] >> 3);
    let mut buf = vec![0u8; 65_535];
    let (mut fragments, mut pings) = (0, 0u8);
    while let Some(n) = p.a.poll_transmit(p.now, &mut buf) {
        assert!(n <= p.a.batch_size());
        assert_eq!(lane(&buf[..n]), Priority::Background);
        fragments += 1;
        p.b.handle_input(p.now, &buf[..n], &mut |r| p.got_b.push(own(r)));
        // A ping queued after any fragment goes out next, ahead of the rest of the bulk.
        if fragments % 3 == 1 {
            pings += 1;
            let ping = NetworkMessage::Put(Put {
                key_id: 1,
                payload: core::slice::from_ref(&pings),
            });
            p.a.send(Priority::RealTime, true, &ping).unwrap();
            let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
            assert_eq!(
                lane(&buf[..n]),
                Priority::RealTime,
                "after fragment {fragments}"
            );
            p.b.handle_input(p.now, &buf[..n], &mut |r| p.got_b.push(own(r)));
        }
    }
    assert!(fragments >= 16, "{fragments}");
    // Every ping arrived, in order, each before the bulk completed; the bulk arrived whole.
    let pings_got: Vec<u8> = p
        .got_b
        .iter()
        .filter_map(|g| match g {
            Got::Put { payload, .. } => payload.first().copied(),
            _ => None,
        })
        .collect();
    assert_eq!(pings_got, (1..=pings).collect::<Vec<u8>>());
    assert!(matches!(p.got_b.last(), Some(Got::Push { payload: got, .. }) if *got == payload));
    assert!(p.b.is_open());
}

#[test]
fn ten_mib_payload_is_fragmented_and_reassembled() {
    let mut ca = cfg(1);
    ca.lane_capacity = 1 << 20;
    let mut p = Pair::new(ca, cfg(2));
    p.drive();
    let payload: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let msg = NetworkMessage::Push(Push {
        key: crate::wire::WireKey::Name("big/blob"),
        kind: SampleKind::Put,
        payload: RawBytes(&payload),
        timestamp: None,
        encoding: None,
        attachment: None,
    });
    // Larger than the lane capacity, but accepted because the lane is empty.
    p.a.send(Priority::Background, true, &msg).unwrap();
    // The lane is now over capacity: more is refused until it drains.
    let small = NetworkMessage::Put(Put {
        key_id: 1,
        payload: b"after",
    });
    assert_eq!(
        p.a.send(Priority::Background, true, &small),
        Err(SendError::QueueFull)
    );
    // A higher lane is not stuck behind the bulk transfer.
    let mut buf = vec![0u8; 65_535];
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    p.b.handle_input(p.now, &buf[..n], &mut |_| {
        panic!("first fragment delivers nothing")
    });
    p.a.send(Priority::RealTime, true, &small).unwrap();
    p.drive();
    assert_eq!(p.got_b.len(), 2);
    assert!(matches!(&p.got_b[0], Got::Put { payload, .. } if payload == b"after"));
    assert_eq!(
        p.got_b[1],
        Got::Push {
            key: Some("big/blob".into()),
            payload
        }
    );
    assert!(p.a.stats().tx_fragments >= 160, "{:?}", p.a.stats());
    assert_eq!(p.b.stats().rx_reassembled, 1);
    assert!(p.b.is_open());
}

#[test]
fn a_partial_reassembly_can_be_evicted_for_a_node_wide_budget() {
    let mut p = Pair::new(cfg(1), cfg(2));
    p.drive();
    let payload = vec![7u8; 1 << 20];
    let push = || {
        NetworkMessage::Push(Push {
            key: crate::wire::WireKey::Name("big/blob"),
            kind: SampleKind::Put,
            payload: RawBytes(&payload),
            timestamp: None,
            encoding: None,
            attachment: None,
        })
    };
    // Best effort: three fragments in, then evicted: memory freed, counted, link still open.
    p.a.send(Priority::Background, false, &push()).unwrap();
    let mut buf = vec![0u8; 65_535];
    for _ in 0..3 {
        let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
        p.b.handle_input(p.now, &buf[..n], &mut |_| panic!("nothing is complete yet"));
    }
    let held = p.b.reassembly_held();
    assert!(held > 100_000, "{held}");
    assert_eq!(p.b.evict_partial(), held);
    assert_eq!(p.b.reassembly_held(), 0);
    assert_eq!(p.b.stats().rx_reassembly_evicted, 1);
    assert!(p.b.is_open());
    assert_eq!(p.b.evict_partial(), 0, "nothing left to evict");
    // Reliable: the message cannot be skipped, so evicting it closes the link, naming why.
    let mut p = Pair::new(cfg(1), cfg(2));
    p.drive();
    p.a.send(Priority::Background, true, &push()).unwrap();
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    p.b.handle_input(p.now, &buf[..n], &mut |_| panic!("nothing is complete yet"));
    assert!(p.b.evict_partial() > 0);
    assert!(matches!(
        p.b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::TooLarge,
            by_peer: false
        })
    ));
}

#[test]
fn reassembly_cap_is_enforced() {
    let mut cb = cfg(2);
    cb.max_message_size = 1 << 20;
    let mut p = Pair::new(cfg(1), cb);
    p.drive();
    p.events_b.clear();
    let payload = vec![1u8; 2 << 20];
    let msg = NetworkMessage::Push(Push {
        key: crate::wire::WireKey::Id(1),
        kind: SampleKind::Put,
        payload: RawBytes(&payload),
        timestamp: None,
        encoding: None,
        attachment: None,
    });
    p.a.send(Priority::Data, true, &msg).unwrap();
    p.drive();
    assert!(p.got_b.is_empty());
    assert_eq!(
        p.events_b,
        [Event::Closed {
            reason: CloseReason::TooLarge,
            by_peer: false
        }]
    );
    assert!(p.events_a.contains(&Event::Closed {
        reason: CloseReason::TooLarge,
        by_peer: true
    }));
    // The receiver stopped buffering at the cap: at most 1 MiB + one batch was ever accepted.
    assert!(p.b.stats().rx_bytes < (1 << 20) + 2 * 65_535);
}

#[test]
fn sending_more_than_max_message_size_is_refused() {
    let mut ca = cfg(1);
    ca.max_message_size = 1000;
    let mut p = Pair::new(ca, cfg(2));
    p.drive();
    let payload = [0u8; 2000];
    assert_eq!(
        p.a.send(
            Priority::Data,
            true,
            &NetworkMessage::Put(Put {
                key_id: 1,
                payload: &payload
            })
        ),
        Err(SendError::TooLarge)
    );
}

#[test]
fn full_lane_reports_queue_full_and_other_lanes_still_accept() {
    let mut ca = cfg(1);
    ca.lane_capacity = 1_000;
    let mut p = Pair::new(ca, cfg(2));
    p.drive();
    let payload = [0u8; 100];
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: &payload,
    });
    let mut accepted = 0;
    while p.a.send(Priority::Data, true, &put).is_ok() {
        accepted += 1;
        assert!(accepted < 100);
    }
    assert_eq!(
        p.a.send(Priority::Data, true, &put),
        Err(SendError::QueueFull)
    );
    assert!((8..=10).contains(&accepted), "{accepted}");
    assert_eq!(p.a.send(Priority::RealTime, true, &put), Ok(()));
    p.drive();
    assert_eq!(p.got_b.len(), accepted + 1);
    assert_eq!(p.a.send(Priority::Data, true, &put), Ok(()));
}

#[test]
fn malformed_input_closes_with_a_reason() {
    let mut p = Pair::open();
    p.b.handle_input(p.now, &[0xff, 0xff, 0xff], &mut |_| {
        panic!("nothing to deliver")
    });
    assert_eq!(
        p.b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Malformed,
            by_peer: false
        })
    );
    p.drive();
    assert!(p.events_a.contains(&Event::Closed {
        reason: CloseReason::Malformed,
        by_peer: true
    }));
    assert!(p.a.is_closed() && p.b.is_closed());
}

#[test]
fn malformed_network_message_inside_a_valid_frame_closes() {
    let mut p = Pair::open();
    // A frame on the right sequence number whose body has an unknown tag.
    let mut buf = [0u8; 32];
    let mut good = vec![0u8; 65_535];
    p.a.send(
        Priority::Data,
        true,
        &NetworkMessage::Put(Put {
            key_id: 1,
            payload: b"x",
        }),
    )
    .unwrap();
    let n = p.a.poll_transmit(p.now, &mut good).unwrap();
    let TransportMessage::Frame(f) = TransportMessage::decode(&good[..n]).unwrap() else {
        panic!()
    };
    let h = encode_frame_header(&mut buf, Priority::Data, true, f.sn).unwrap();
    buf[h] = 0x70;
    p.b.handle_input(p.now, &buf[..h + 1], &mut |_| {});
    assert_eq!(
        p.b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Malformed,
            by_peer: false
        })
    );
}

#[test]
fn duplicates_are_dropped_and_reliable_gaps_close() {
    let mut p = Pair::open();
    let mut buf = vec![0u8; 65_535];
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: b"x",
    });
    p.a.send(Priority::Data, true, &put).unwrap();
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    let first = buf[..n].to_vec();
    let mut got = 0;
    p.b.handle_input(p.now, &first, &mut |_| got += 1);
    p.b.handle_input(p.now, &first, &mut |_| got += 1);
    assert_eq!(got, 1);
    assert_eq!(p.b.stats().rx_duplicates, 1);
    // Skip one reliable frame: the next one reveals a gap.
    p.a.send(Priority::Data, true, &put).unwrap();
    p.a.poll_transmit(p.now, &mut buf).unwrap();
    p.a.send(Priority::Data, true, &put).unwrap();
    let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
    p.b.handle_input(p.now, &buf[..n], &mut |_| got += 1);
    assert_eq!(got, 1);
    assert_eq!(
        p.b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::SequenceGap,
            by_peer: false
        })
    );
}

#[test]
fn best_effort_gaps_are_counted_not_fatal() {
    let mut p = Pair::open();
    let mut buf = vec![0u8; 65_535];
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: b"x",
    });
    let mut got = 0;
    for i in 0..10 {
        p.a.send(Priority::RealTime, false, &put).unwrap();
        let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
        if i % 3 != 1 {
            p.b.handle_input(p.now, &buf[..n], &mut |_| got += 1);
        }
    }
    assert_eq!(got, 7);
    assert_eq!(p.b.stats().rx_lost, 3);
    assert!(p.b.is_open());
}

#[test]
fn lost_fragment_on_best_effort_lane_drops_only_that_message() {
    let mut p = Pair::open();
    let mut buf = vec![0u8; 65_535];
    let big = vec![5u8; 200_000];
    p.a.send(
        Priority::Data,
        false,
        &NetworkMessage::Put(Put {
            key_id: 1,
            payload: &big,
        }),
    )
    .unwrap();
    p.a.send(
        Priority::Data,
        false,
        &NetworkMessage::Put(Put {
            key_id: 1,
            payload: b"small",
        }),
    )
    .unwrap();
    let mut got = Vec::new();
    let mut i = 0;
    while let Some(n) = p.a.poll_transmit(p.now, &mut buf) {
        if i != 1 {
            p.b.handle_input(p.now, &buf[..n], &mut |r| got.push(own(r)));
        }
        i += 1;
    }
    assert_eq!(got.len(), 1);
    assert!(matches!(&got[0], Got::Put { payload, .. } if payload == b"small"));
    assert_eq!(p.b.stats().rx_reassembly_dropped, 1);
    assert!(p.b.is_open());
}

#[test]
fn orderly_close_reaches_the_peer() {
    let mut p = Pair::open();
    p.a.close(CloseReason::Shutdown);
    p.drive();
    assert_eq!(
        p.events_a,
        [Event::Closed {
            reason: CloseReason::Shutdown,
            by_peer: false
        }]
    );
    assert_eq!(
        p.events_b,
        [Event::Closed {
            reason: CloseReason::Shutdown,
            by_peer: true
        }]
    );
    assert_eq!(
        p.a.send(
            Priority::Data,
            true,
            &NetworkMessage::Put(Put {
                key_id: 1,
                payload: b""
            })
        ),
        Err(SendError::Closed)
    );
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn frames_before_the_handshake_are_unexpected() {
    let now = Instant::ZERO;
    let mut b = HeapSession::new(cfg(2), Role::Listener, now, 1);
    let mut buf = [0u8; 16];
    let n = encode_frame_header(&mut buf, Priority::Data, true, 0).unwrap();
    b.handle_input(now, &buf[..n], &mut |_| {});
    assert_eq!(
        b.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Unexpected,
            by_peer: false
        })
    );
}

#[test]
fn no_alloc_session_with_fixed_buffers() {
    type Small = Session<heapless::Vec<u8, 512>, FixedKeys<4, 32>>;
    let now = Instant::ZERO;
    let mut c = cfg(1);
    c.batch_size = 128;
    let mut a = Small::new(c, Role::Dialer, now, 3);
    let mut b = HeapSession::new(cfg(2), Role::Listener, now, 4);
    let mut buf = [0u8; 256];
    let mut got: Vec<Got> = Vec::new();
    for _ in 0..3 {
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            b.handle_input(now, &buf[..n], &mut |r| got.push(own(r)));
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            a.handle_input(now, &buf[..n], &mut |_| {});
        }
    }
    assert!(a.is_open() && b.is_open());
    assert_eq!(a.batch_size(), 128);
    let id = a.declare_keyexpr("dev/temp").unwrap();
    // 300 bytes: more than a batch, fragmented from the fixed queue.
    let payload = [9u8; 300];
    a.send(
        Priority::Data,
        true,
        &NetworkMessage::Put(Put {
            key_id: id,
            payload: &payload,
        }),
    )
    .unwrap();
    // More than the fixed storage holds is refused, not a panic.
    assert_eq!(
        a.send(
            Priority::Data,
            true,
            &NetworkMessage::Put(Put {
                key_id: id,
                payload: &[0; 600]
            })
        ),
        Err(SendError::QueueFull)
    );
    while let Some(n) = a.poll_transmit(now, &mut buf) {
        assert!(n <= 128);
        b.handle_input(now, &buf[..n], &mut |r| got.push(own(r)));
    }
    assert_eq!(
        got.last(),
        Some(&Got::Put {
            key: Some("dev/temp".to_string()),
            payload: payload.to_vec(),
            priority: Priority::Data
        })
    );
}

/// Issue 16: what was queued when a session closes (a lease expiring in a blackout) is counted
/// as discarded, and so is what a driver discards after its link broke.
#[test]
fn messages_queued_at_close_are_counted_as_discarded() {
    let mut p = Pair::open();
    let payload = [7u8; 100];
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: &payload,
    });
    // Two sent and delivered, then b goes silent (the blackout) while a queues 25 more on two
    // lanes; nothing of those is written.
    for _ in 0..2 {
        p.a.send(Priority::Data, true, &put).unwrap();
    }
    p.drive();
    assert_eq!(p.got_b.len(), 2);
    for i in 0..25 {
        let prio = if i % 2 == 0 {
            Priority::Data
        } else {
            Priority::RealTime
        };
        p.a.send(prio, i % 3 != 0, &put).unwrap();
    }
    assert_eq!(p.a.stats().tx_discarded, 0);
    while let Some(now) = p.a.expiry() {
        p.a.handle_timeout(now);
    }
    assert!(!p.a.is_open());
    assert_eq!(p.a.total_queued_bytes(), 0);
    assert_eq!(p.a.stats().tx_discarded, 25);
    // A link that broke without a close: the driver discards what is left, counted too.
    let mut q = Pair::open();
    for _ in 0..7 {
        q.a.send(Priority::Data, true, &put).unwrap();
    }
    assert_eq!(q.a.discard_queued(), 7);
    assert_eq!(q.a.stats().tx_discarded, 7);
    assert_eq!(q.a.discard_queued(), 0);
}

fn sample(payload: &[u8]) -> NetworkMessage<'_> {
    NetworkMessage::Put(Put { key_id: 1, payload })
}

impl Pair {
    /// Moves the clock by `step`, firing both sides' timers, and shuttles what they send.
    fn tick(&mut self, step: Duration) {
        self.now += step;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drive();
    }

    /// What `a` writes now, never delivered (a silent cut).
    fn a_writes_into_the_void(&mut self) -> usize {
        let mut buf = vec![0u8; 65_535];
        let mut n = 0;
        while self.a.poll_transmit(self.now, &mut buf).is_some() {
            n += 1;
        }
        n
    }
}

/// Issue 16: the receiver acknowledges reliable lanes after `ack_delay` (not per batch), by
/// message counts; best-effort lanes are not acknowledged.
#[test]
fn received_messages_are_acknowledged_after_the_delay() {
    let mut p = Pair::open();
    let payload = [1u8; 10];
    for _ in 0..3 {
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    }
    p.a.send(Priority::RealTime, false, &sample(&payload))
        .unwrap();
    p.a.declare_keyexpr("ack/k").unwrap();
    p.drive();
    assert_eq!(p.got_b.len(), 5);
    assert_eq!(p.a.unacknowledged(), (4, 3), "3 samples and a declaration");
    assert_eq!(
        p.b.stats().acks_sent,
        0,
        "an acknowledgement waits for its delay"
    );
    assert!(!p.b.wants_transmit());
    let due = p.now + Duration::from_millis(10);
    assert_eq!(p.b.ack_due(), Some(due));
    assert_eq!(p.b.poll_timeout(), Some(due));
    p.tick(Duration::from_millis(9));
    assert_eq!(p.b.stats().acks_sent, 0);
    p.tick(Duration::from_millis(1));
    assert_eq!(p.b.stats().acks_sent, 1);
    assert_eq!(p.a.stats().acks_received, 1);
    assert_eq!(p.a.unacknowledged(), (0, 0));
    assert_eq!(p.b.ack_due(), None, "nothing new to acknowledge");
    // Nothing arrives, nothing is acknowledged: a quiet link sends only keep-alives.
    for _ in 0..100 {
        p.tick(Duration::from_millis(10));
    }
    assert_eq!(p.b.stats().acks_sent, 1);
    // A busy receiver whose timers never fire (its driver always has input to read): input
    // that arrives once the delay has passed makes the acknowledgement due at once.
    let mut buf = vec![0u8; 65_535];
    for step in [0, 10] {
        p.now += Duration::from_millis(step);
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
        let n = p.a.poll_transmit(p.now, &mut buf).unwrap();
        p.b.handle_input(p.now, &buf[..n], &mut |_| {});
        assert_eq!(
            p.b.wants_transmit(),
            step == 10,
            "{step} ms after the first"
        );
    }
    p.drive();
    assert_eq!(p.b.stats().acks_sent, 2);
    assert_eq!(p.a.unacknowledged(), (0, 0));
}

/// Issue 16: a busy lane is acknowledged at most once per `ack_delay`, however many batches
/// arrive, and what is unacknowledged stays within about one delay of traffic.
#[test]
fn a_busy_lane_is_acknowledged_at_most_once_per_delay() {
    let mut p = Pair::open();
    let payload = [2u8; 10];
    let batches_before = p.batches_ab;
    let mut most_unacked = 0;
    // 2,000 samples over 200 ms, each in a batch of its own (one every 100 µs).
    for _ in 0..2_000 {
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
        p.tick(Duration::from_micros(100));
        most_unacked = most_unacked.max(p.a.unacknowledged().0);
    }
    assert_eq!(p.got_b.len(), 2_000);
    assert_eq!(p.batches_ab - batches_before, 2_000);
    let acks = p.b.stats().acks_sent;
    assert!(
        (19..=20).contains(&acks),
        "{acks} acknowledgements in 200 ms"
    );
    assert_eq!(p.a.stats().acks_received, acks);
    assert!(most_unacked <= 101, "{most_unacked}");
}

/// Issue 16: what was written and never acknowledged is counted when the lease expires (apart
/// from what was still queued), data apart from control, best effort not at all, and once.
#[test]
fn what_the_peer_never_acknowledged_is_counted_when_the_lease_expires() {
    let mut p = Pair::open();
    let payload = [3u8; 100];
    for _ in 0..5 {
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    }
    p.drive();
    p.tick(Duration::from_millis(10));
    assert_eq!(p.got_b.len(), 5);
    assert_eq!(p.a.unacknowledged(), (0, 0));
    // The cut: a writes 7 samples on two lanes, a declaration and 2 best-effort samples that
    // never arrive; then 3 more stay queued.
    for i in 0..7 {
        let prio = [Priority::Data, Priority::RealTime][i % 2];
        p.a.send(prio, true, &sample(&payload)).unwrap();
    }
    p.a.declare_keyexpr("cut/k").unwrap();
    for _ in 0..2 {
        p.a.send(Priority::DataLow, false, &sample(&payload))
            .unwrap();
    }
    assert!(p.a_writes_into_the_void() >= 4);
    for _ in 0..3 {
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    }
    assert_eq!(p.a.unacknowledged(), (8, 7));
    assert_eq!(
        p.a.stats().tx_unconfirmed,
        0,
        "counted only when the link ends"
    );
    while let Some(t) = p.a.expiry() {
        p.a.handle_timeout(t);
    }
    assert!(!p.a.is_open());
    let s = *p.a.stats();
    assert_eq!((s.tx_unconfirmed, s.tx_unconfirmed_data), (8, 7));
    assert_eq!(s.tx_discarded, 3);
    assert_eq!(p.a.discard_queued(), 0);
    assert_eq!(p.a.stats().tx_unconfirmed, 8, "counted once");
    // A link that broke (no close at all): the driver's discard counts it.
    let mut q = Pair::open();
    for _ in 0..4 {
        q.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    }
    q.a_writes_into_the_void();
    q.a.discard_queued();
    assert_eq!(q.a.stats().tx_unconfirmed_data, 4);
}

/// Issue 16: a peer that does not offer acknowledgements (the device node) gets none and has
/// nothing counted against it; either side may be the one.
#[test]
fn nothing_is_counted_against_a_peer_that_does_not_acknowledge() {
    for dialer_acks in [false, true] {
        let (mut ca, mut cb) = (cfg(1), cfg(2));
        ca.acks = dialer_acks;
        cb.acks = !dialer_acks;
        let mut p = Pair::new(ca, cb);
        p.drive();
        assert!(p.a.is_open() && p.b.is_open());
        let payload = [4u8; 10];
        for _ in 0..5 {
            p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
            p.b.send(Priority::Data, true, &sample(&payload)).unwrap();
        }
        for _ in 0..50 {
            p.tick(Duration::from_millis(10));
        }
        assert_eq!((p.got_a.len(), p.got_b.len()), (5, 5));
        for s in [p.a.stats(), p.b.stats()] {
            assert_eq!((s.acks_sent, s.acks_received), (0, 0), "{s:?}");
        }
        for _ in 0..7 {
            p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
        }
        p.a_writes_into_the_void();
        assert_eq!(p.a.unacknowledged(), (0, 0));
        while let Some(t) = p.a.expiry() {
            p.a.handle_timeout(t);
        }
        assert_eq!(p.a.stats().tx_unconfirmed, 0);
    }
}

/// Issue 16: a side that closes acknowledges first, so the other counts exactly what it wrote
/// after that (the closer reads nothing more); our own orderly close counts nothing.
#[test]
fn a_close_is_preceded_by_the_last_acknowledgement() {
    let mut p = Pair::open();
    let payload = [5u8; 10];
    for _ in 0..4 {
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    }
    p.drive();
    assert_eq!(p.b.stats().acks_sent, 0);
    p.b.close(CloseReason::Shutdown);
    // a writes 3 more before b's close reaches it: b ignores them.
    for _ in 0..3 {
        p.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    }
    p.drive();
    assert_eq!(p.got_b.len(), 4);
    assert_eq!(p.b.stats().acks_sent, 1);
    assert!(p.a.is_closed());
    let s = *p.a.stats();
    assert_eq!((s.acks_received, s.tx_unconfirmed_data), (1, 3));
    assert_eq!(p.b.stats().tx_unconfirmed, 0);
    // Our own close: what we wrote goes ahead of the `Close`.
    let mut q = Pair::open();
    q.a.send(Priority::Data, true, &sample(&payload)).unwrap();
    q.a_writes_into_the_void();
    q.a.close(CloseReason::Shutdown);
    q.a.discard_queued();
    assert_eq!(q.a.stats().tx_unconfirmed, 0);
}

/// Issue 16: an acknowledgement of more than was sent, or on a session that did not agree on
/// them, closes the link; a stale one is ignored.
#[test]
fn bogus_acknowledgements_close_the_link() {
    use crate::wire::{Acks, LaneAck};
    let mut buf = [0u8; 64];
    let mut acks = Acks::default();
    acks.lanes[Priority::Data.index()] = Some(LaneAck {
        messages: 2,
        data: 2,
    });
    let n = TransportMessage::Acks(acks).encode(&mut buf).unwrap();
    let mut p = Pair::open();
    p.a.send(Priority::Data, true, &sample(&[1])).unwrap();
    p.drive();
    p.a.handle_input(p.now, &buf[..n], &mut |_| {});
    assert_eq!(
        p.a.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Unexpected,
            by_peer: false
        })
    );
    let (mut ca, cb) = (cfg(1), cfg(2));
    ca.acks = false;
    let mut q = Pair::new(ca, cb);
    q.drive();
    q.a.handle_input(q.now, &buf[..n], &mut |_| {});
    assert!(!q.a.is_open());
    // Stale (behind what was acknowledged): ignored.
    let mut r = Pair::open();
    for _ in 0..3 {
        r.a.send(Priority::Data, true, &sample(&[1])).unwrap();
    }
    r.drive();
    r.tick(Duration::from_millis(10));
    assert_eq!(r.a.unacknowledged(), (0, 0));
    r.a.handle_input(r.now, &buf[..n], &mut |_| {});
    assert!(r.a.is_open());
    assert_eq!(r.a.unacknowledged(), (0, 0));
}
