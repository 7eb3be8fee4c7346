//! Golden-byte tests (the wire contract), round trips, overhead and caps.

extern crate std;
use super::*;
use crate::hlc::{Ntp64, Timestamp};
use crate::id::NodeId;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

fn enc_t(m: &TransportMessage<'_>) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let n = m.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

fn enc_n(m: &NetworkMessage<'_>) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let n = m.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

/// Pins a transport message's bytes and checks they decode back to it.
fn golden_t(m: TransportMessage<'_>, bytes: &[u8]) {
    assert_eq!(enc_t(&m), bytes, "encoding of {m:?}");
    assert_eq!(TransportMessage::decode(bytes).unwrap(), m);
}

/// Pins a network message's bytes and checks they decode back to it.
fn golden_n(m: NetworkMessage<'_>, bytes: &[u8]) {
    assert_eq!(enc_n(&m), bytes, "encoding of {m:?}");
    assert_eq!(NetworkMessage::decode(bytes).unwrap(), m);
}

const ID1: NodeId = NodeId([0x11; 16]);
const ID2: NodeId = NodeId([0x22; 16]);

#[test]
fn golden_handshake() {
    let mut init = vec![0x00, 0x01];
    init.extend([0x11; 16]);
    init.extend([0x00, 0xff, 0xff, 0x03, 0x07, 0x90, 0x4e, 0x05]); // peer, 65535, 7 bits, 10 s, sn 5
    golden_t(
        TransportMessage::Init(Init {
            version: 1,
            node_id: ID1,
            mode: Mode::Peer,
            batch_size: 65_535,
            sn_bits: 7,
            lease_ms: 10_000,
            initial_sn: 5,
            acks: false,
        }),
        &init,
    );
    let mut accept = vec![0x01, 0x01];
    accept.extend([0x22; 16]);
    accept.extend([0x02, 0x80, 0x08, 0x10, 0xe8, 0x07, 0x2a]); // router, 1024, 16 bits, 1000 ms, sn 42
    golden_t(
        TransportMessage::Accept(Accept {
            version: 1,
            node_id: ID2,
            mode: Mode::Router,
            batch_size: 1024,
            sn_bits: 16,
            lease_ms: 1000,
            initial_sn: 42,
            acks: false,
        }),
        &accept,
    );
    golden_t(
        TransportMessage::Open(Open { initial_sn: 300 }),
        &[0x02, 0xac, 0x02],
    );
}

#[test]
fn golden_close_keepalive() {
    golden_t(
        TransportMessage::Close(Close {
            reason: CloseReason::UnsupportedVersion,
            detail: "v2",
        }),
        &[0x03, 0x01, 0x02, b'v', b'2'],
    );
    golden_t(
        TransportMessage::Close(Close {
            reason: CloseReason::Refused,
            detail: "",
        }),
        &[0x03, 0x08, 0x00],
    );
    golden_t(TransportMessage::KeepAlive, &[0x04]);
}

/// Issue 16: acknowledgements. The handshake offers them in the header's R bit (the body is
/// unchanged, so a device's `Init` without it reads as before), and `Acks` is a keep-alive with
/// the R bit and a body: a lane mask, then (messages, data) per lane in the mask.
#[test]
fn golden_acks() {
    let mut init = vec![0x40, 0x01];
    init.extend([0x11; 16]);
    init.extend([0x00, 0xff, 0xff, 0x03, 0x07, 0x90, 0x4e, 0x05]);
    golden_t(
        TransportMessage::Init(Init {
            version: 1,
            node_id: ID1,
            mode: Mode::Peer,
            batch_size: 65_535,
            sn_bits: 7,
            lease_ms: 10_000,
            initial_sn: 5,
            acks: true,
        }),
        &init,
    );
    let mut accept = vec![0x41, 0x01];
    accept.extend([0x22; 16]);
    accept.extend([0x02, 0x80, 0x08, 0x10, 0xe8, 0x07, 0x2a]);
    golden_t(
        TransportMessage::Accept(Accept {
            version: 1,
            node_id: ID2,
            mode: Mode::Router,
            batch_size: 1024,
            sn_bits: 16,
            lease_ms: 1000,
            initial_sn: 42,
            acks: true,
        }),
        &accept,
    );
    let mut a = Acks::default();
    a.lanes[0] = Some(LaneAck {
        messages: 1,
        data: 0,
    });
    a.lanes[5] = Some(LaneAck {
        messages: 300,
        data: 299,
    });
    golden_t(
        TransportMessage::Acks(a),
        &[0x44, 0x21, 0x01, 0x00, 0xac, 0x02, 0xab, 0x02],
    );
    golden_t(TransportMessage::Acks(Acks::default()), &[0x44, 0x00]);
    // Only the R bit, and only on Init, Accept and KeepAlive; a body that does not match its
    // mask is refused.
    for bad in [
        &[0x4c, 0x00][..],
        &[0x84, 0x00],
        &[0x42, 0x05],
        &[0x43, 0x00, 0x00],
        &[0x44],
        &[0x44, 0x01, 0x01],
        &[0x44, 0x01, 0x01, 0x00, 0x00],
    ] {
        assert!(TransportMessage::decode(bad).is_err(), "{bad:02x?}");
    }
}

#[test]
fn golden_frame_and_fragment() {
    // header: kind 5 | prio 5 << 3 | reliable 0x40 = 0x6d; sn 1; payload
    golden_t(
        TransportMessage::Frame(Frame {
            priority: Priority::Data,
            reliable: true,
            sn: 1,
            payload: &[0x01, 0x03, b'h', b'i'],
        }),
        &[0x6d, 0x01, 0x01, 0x03, b'h', b'i'],
    );
    // best-effort real-time lane: 0x05 | 1 << 3 = 0x0d
    golden_t(
        TransportMessage::Frame(Frame {
            priority: Priority::RealTime,
            reliable: false,
            sn: 128,
            payload: &[],
        }),
        &[0x0d, 0x80, 0x01],
    );
    // first fragment, more follow, control lane, reliable: 6 | 0 | 0x40 | 0x80 = 0xc6
    golden_t(
        TransportMessage::Fragment(Fragment {
            priority: Priority::Control,
            reliable: true,
            first: true,
            more: true,
            sn: 7,
            data: &[1, 2, 3],
        }),
        &[0xc6, 0x07, 1, 2, 3],
    );
    // last fragment, background best-effort: 7 | 7 << 3 = 0x3f
    golden_t(
        TransportMessage::Fragment(Fragment {
            priority: Priority::Background,
            reliable: false,
            first: false,
            more: false,
            sn: 8,
            data: &[4],
        }),
        &[0x3f, 0x08, 4],
    );
}

#[test]
fn golden_put_forms() {
    golden_n(
        NetworkMessage::Put(Put {
            key_id: 3,
            payload: b"abc",
        }),
        &[0x00, 0x03, 0x03, b'a', b'b', b'c'],
    );
    let mut buf = [0u8; 16];
    let n = NetworkMessage::Put(Put {
        key_id: 3,
        payload: b"abc",
    })
    .encode_last(&mut buf)
    .unwrap();
    assert_eq!(&buf[..n], &[0x01, 0x03, b'a', b'b', b'c']);
    assert_eq!(
        NetworkMessage::decode(&buf[..n]).unwrap(),
        NetworkMessage::Put(Put {
            key_id: 3,
            payload: b"abc"
        })
    );
    // In-place conversion agrees with encode_last.
    let mut full = enc_n(&NetworkMessage::Put(Put {
        key_id: 300,
        payload: &[9; 200],
    }));
    let mut last = [0u8; 300];
    let want = NetworkMessage::Put(Put {
        key_id: 300,
        payload: &[9; 200],
    })
    .encode_last(&mut last)
    .unwrap();
    let got = put_to_tail_form(&mut full);
    assert_eq!(&full[..got], &last[..want]);
}

#[test]
fn golden_push() {
    let ts = Timestamp {
        time: Ntp64(1),
        id: ID1,
    };
    let mut bytes = vec![0x02, 0x01, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x01, 0x01];
    bytes.extend([0x11; 16]);
    bytes.extend([0x01, 0x04, b't', b'e', b'x', b't', 0x01, 0x01, 0xaa]);
    golden_n(
        NetworkMessage::Push(Push {
            key: WireKey::Name("a/b"),
            kind: SampleKind::Delete,
            payload: RawBytes(&[]),
            timestamp: Some(ts),
            encoding: Some("text"),
            attachment: Some(RawBytes(&[0xaa])),
        }),
        &bytes,
    );
    golden_n(
        NetworkMessage::Push(Push {
            key: WireKey::Id(5),
            kind: SampleKind::Put,
            payload: RawBytes(b"x"),
            timestamp: None,
            encoding: None,
            attachment: None,
        }),
        &[0x02, 0x00, 0x05, 0x00, 0x01, b'x', 0x00, 0x00, 0x00],
    );
}

#[test]
fn golden_declarations() {
    golden_n(
        NetworkMessage::Declare(Declare::KeyExpr {
            id: 1,
            key: "fleet/car1/speed",
        }),
        &[
            0x03, 0x00, 0x01, 0x10, b'f', b'l', b'e', b'e', b't', b'/', b'c', b'a', b'r', b'1',
            b'/', b's', b'p', b'e', b'e', b'd',
        ],
    );
    golden_n(
        NetworkMessage::Declare(Declare::UndeclareKeyExpr { id: 1 }),
        &[0x03, 0x01, 0x01],
    );
    golden_n(
        NetworkMessage::Declare(Declare::Subscriber {
            id: 2,
            key: WireKey::Id(1),
        }),
        &[0x03, 0x02, 0x02, 0x00, 0x01],
    );
    golden_n(
        NetworkMessage::Declare(Declare::UndeclareSubscriber { id: 2 }),
        &[0x03, 0x03, 0x02],
    );
    golden_n(
        NetworkMessage::Declare(Declare::Queryable {
            id: 3,
            key: WireKey::Name("a/**"),
            complete: true,
        }),
        &[0x03, 0x04, 0x03, 0x01, 0x04, b'a', b'/', b'*', b'*', 0x01],
    );
    golden_n(
        NetworkMessage::Declare(Declare::UndeclareQueryable { id: 3 }),
        &[0x03, 0x05, 0x03],
    );
    golden_n(
        NetworkMessage::Declare(Declare::Token {
            id: 4,
            key: WireKey::Id(9),
        }),
        &[0x03, 0x06, 0x04, 0x00, 0x09],
    );
    golden_n(
        NetworkMessage::Declare(Declare::UndeclareToken { id: 4 }),
        &[0x03, 0x07, 0x04],
    );
    golden_n(
        NetworkMessage::Declare(Declare::Interest {
            id: 5,
            key: None,
            flags: interest::SUBSCRIBERS | interest::CURRENT | interest::FUTURE,
        }),
        &[0x03, 0x08, 0x05, 0x00, 0x19],
    );
    golden_n(
        NetworkMessage::Declare(Declare::InterestFinal { id: 5 }),
        &[0x03, 0x09, 0x05],
    );
    golden_n(
        NetworkMessage::Declare(Declare::UndeclareInterest { id: 5 }),
        &[0x03, 0x0a, 0x05],
    );
    let mut source = vec![0x03, 0x0b, 0x02];
    source.extend_from_slice(&[0; 15]);
    source.extend_from_slice(&[0x07, 0x2a]);
    golden_n(
        NetworkMessage::Declare(Declare::Source {
            id: 2,
            node: crate::id::NodeId::from_u128(7),
            publisher: 42,
        }),
        &source,
    );
}

#[test]
fn golden_sequenced_samples() {
    // Compact put with a source and sequence number: tag 8, key id, src, sn, len, payload.
    golden_n(
        NetworkMessage::PutSn(PutSn {
            key_id: 1,
            seq: Seq { src: 2, sn: 300 },
            payload: b"hi",
        }),
        &[0x08, 0x01, 0x02, 0xac, 0x02, 0x02, b'h', b'i'],
    );
    // Push with a source and sequence number: tag 9, src, sn, then the Push fields.
    golden_n(
        NetworkMessage::PushSn(PushSn {
            seq: Seq { src: 1, sn: 0 },
            push: Push {
                key: WireKey::Id(3),
                kind: SampleKind::Delete,
                payload: RawBytes(b""),
                timestamp: None,
                encoding: None,
                attachment: None,
            },
        }),
        &[0x09, 0x01, 0x00, 0x00, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00],
    );
}

#[test]
fn golden_query_and_replies() {
    golden_n(
        NetworkMessage::Request(Request {
            id: 7,
            key: WireKey::Name("a/*"),
            parameters: "limit=1",
            target: QueryTarget::All,
            consolidation: Consolidation::Latest,
            timeout_ms: 1000,
            payload: None,
            encoding: None,
            attachment: None,
        }),
        &[
            0x04, 0x07, 0x01, 0x03, b'a', b'/', b'*', 0x07, b'l', b'i', b'm', b'i', b't', b'=',
            b'1', 0x01, 0x03, 0xe8, 0x07, 0x00, 0x00, 0x00,
        ],
    );
    golden_n(
        NetworkMessage::Response(Response {
            request_id: 7,
            body: ReplyBody::Sample(Push {
                key: WireKey::Name("a/b"),
                kind: SampleKind::Put,
                payload: RawBytes(b"1"),
                timestamp: None,
                encoding: None,
                attachment: None,
            }),
        }),
        &[
            0x05, 0x07, 0x00, 0x01, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'1', 0x00, 0x00, 0x00,
        ],
    );
    golden_n(
        NetworkMessage::Response(Response {
            request_id: 7,
            body: ReplyBody::Err {
                payload: RawBytes(b"no"),
                encoding: None,
            },
        }),
        &[0x05, 0x07, 0x01, 0x02, b'n', b'o', 0x00],
    );
    golden_n(
        NetworkMessage::ResponseFinal(ResponseFinal { request_id: 7 }),
        &[0x06, 0x07],
    );
}

#[test]
fn golden_gossip() {
    let mut want = vec![0x07];
    want.extend([0x22; 16]);
    want.extend([0x02, 0x0f]);
    want.extend(b"tcp/[::]:7447,x");
    golden_n(
        NetworkMessage::Gossip(Gossip {
            node_id: ID2,
            mode: Mode::Router,
            locators: "tcp/[::]:7447,x",
        }),
        &want,
    );
    let long = "x".repeat(limits::MAX_LOCATORS_LEN + 1);
    let mut buf = vec![0u8; 8192];
    let n = NetworkMessage::Gossip(Gossip {
        node_id: ID2,
        mode: Mode::Peer,
        locators: &long,
    })
    .encode(&mut buf)
    .unwrap();
    let bytes = &buf[..n];
    assert!(matches!(
        NetworkMessage::decode(bytes),
        Err(DecodeError::TooLong {
            field: Field::Locators,
            ..
        })
    ));
}

#[test]
fn golden_denied() {
    // tag 10 | op 0 (Put) | key | principal | rule, strings as varint length + bytes.
    let mut want = vec![0x0a, 0x00, 0x03];
    want.extend(b"a/b");
    want.push(0x01);
    want.extend(b"r");
    want.push(0x07);
    want.extend(b"default");
    golden_n(
        NetworkMessage::Denied(Denied {
            op: AclOp::Put,
            key: "a/b",
            principal: "r",
            rule: "default",
        }),
        &want,
    );
    let mut buf = vec![0u8; 4096];
    let long = "x".repeat(limits::MAX_DETAIL_LEN + 1);
    let n = NetworkMessage::Denied(Denied {
        op: AclOp::TokenSub,
        key: "a/b",
        principal: &long,
        rule: "r",
    })
    .encode(&mut buf)
    .unwrap();
    assert!(matches!(
        NetworkMessage::decode(&buf[..n]),
        Err(DecodeError::TooLong {
            field: Field::Detail,
            ..
        })
    ));
    // An invalid key is refused on decode.
    let n = NetworkMessage::Denied(Denied {
        op: AclOp::Sub,
        key: "a//b",
        principal: "p",
        rule: "r",
    })
    .encode(&mut buf)
    .unwrap();
    assert!(NetworkMessage::decode(&buf[..n]).is_err());
}

#[test]
fn golden_cancel() {
    golden_n(
        NetworkMessage::Cancel(Cancel { request_id: 300 }),
        &[0x0c, 0xac, 0x02],
    );
}

#[test]
fn golden_link_state_and_routed() {
    let a = crate::id::NodeId([0xaa; 16]);
    let b = crate::id::NodeId([0xbb; 16]);
    let mut links = [0u8; 2 * LSA_LINK_LEN];
    let n = LinkState::write_links([(a, 20), (b, 300)], &mut links).unwrap();
    assert_eq!(n, 40);
    let ls = LinkState {
        router: b,
        epoch: 5,
        seq: 7,
        site: "A",
        flags: 3,
        links: RawBytes(&links),
        locators: "x",
    };
    let mut expect = vec![0x0d];
    expect.extend_from_slice(&[0xbb; 16]);
    expect.extend_from_slice(&[5, 7, 1, b'A', 3, 40]);
    expect.extend_from_slice(&links);
    expect.extend_from_slice(&[1, b'x']);
    golden_n(NetworkMessage::LinkState(ls), &expect);
    assert_eq!(ls.links().collect::<Vec<_>>(), vec![(a, 20), (b, 300)]);
    // Too many neighbours, a ragged list or a long site name are refused on decode.
    let mut buf = vec![0u8; 4096];
    let many = vec![0u8; (MAX_LSA_LINKS + 1) * LSA_LINK_LEN];
    for bad in [
        LinkState {
            links: RawBytes(&many),
            ..ls
        },
        LinkState {
            links: RawBytes(&links[..39]),
            ..ls
        },
        LinkState {
            site: core::str::from_utf8(&[b'x'; MAX_SITE_LEN + 1]).unwrap(),
            ..ls
        },
    ] {
        let n = NetworkMessage::LinkState(bad).encode(&mut buf).unwrap();
        assert!(NetworkMessage::decode(&buf[..n]).is_err());
    }
    let r = Routed {
        src: a,
        dst: b,
        hops: 16,
        origin: None,
        body: RawBytes(&[0x0c, 0xac, 0x02]),
    };
    let mut expect = vec![0x0e];
    expect.extend_from_slice(&[0xaa; 16]);
    expect.extend_from_slice(&[0xbb; 16]);
    expect.extend_from_slice(&[16, 0, 3, 0x0c, 0xac, 0x02]);
    golden_n(NetworkMessage::Routed(r), &expect);
}

#[test]
fn golden_auth() {
    golden_n(
        NetworkMessage::Auth(Auth {
            token: RawBytes(b"tok"),
        }),
        &[0x0b, 0x03, b't', b'o', b'k'],
    );
    let long = vec![1u8; MAX_TOKEN_LEN + 1];
    let mut buf = vec![0u8; 1024];
    let n = NetworkMessage::Auth(Auth {
        token: RawBytes(&long),
    })
    .encode(&mut buf)
    .unwrap();
    assert!(NetworkMessage::decode(&buf[..n]).is_err());
}

#[test]
fn golden_scouting() {
    let m = ScoutMessage::Scout {
        version: 1,
        what: 5,
        from: None,
    };
    let mut buf = [0u8; 128];
    let n = m.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x00, 0x01, 0x05, 0x00]);
    assert_eq!(ScoutMessage::decode(&buf[..n]).unwrap(), m);
    let h = ScoutMessage::Hello {
        version: 1,
        node_id: ID2,
        mode: Mode::Peer,
        locators: "tcp/1.2.3.4:5,quic/[::1]:6",
    };
    let n = h.encode(&mut buf).unwrap();
    let mut want = vec![0x01, 0x01];
    want.extend([0x22; 16]);
    want.extend([0x00, 26]);
    want.extend(b"tcp/1.2.3.4:5,quic/[::1]:6");
    assert_eq!(&buf[..n], &want[..]);
    let back = ScoutMessage::decode(&buf[..n]).unwrap();
    assert_eq!(back, h);
    assert_eq!(
        back.locators().collect::<Vec<_>>(),
        ["tcp/1.2.3.4:5", "quic/[::1]:6"]
    );
}

/// The overhead target: a put of an 8-byte payload on a declared key id inside a frame costs at
/// most 4 bytes beyond the payload (Zenoh: 5).
#[test]
fn put_overhead_in_frame() {
    let payload = [7u8; 8];
    let put = NetworkMessage::Put(Put {
        key_id: 1,
        payload: &payload,
    });
    let mut body = [0u8; 64];
    let n = put.encode_last(&mut body).unwrap();
    let frame = TransportMessage::Frame(Frame {
        priority: Priority::Data,
        reliable: true,
        sn: 1,
        payload: &body[..n],
    });
    let alone = enc_t(&frame).len() - payload.len();
    // A second put in the same frame (the first then keeps its length prefix).
    let marginal = enc_n(&put).len() - payload.len();
    std::println!(
        "wire overhead, 8-byte put on declared key id: {alone} bytes for a lone put in its own \
         frame (header + sn + tag + key id), {marginal} bytes per additional put in a batch"
    );
    assert!(alone <= 4, "lone put costs {alone} bytes");
    assert!(marginal <= 4, "batched put costs {marginal} bytes");
}

#[test]
fn decode_rejects_bad_input_with_reasons() {
    assert_eq!(TransportMessage::decode(&[]), Err(DecodeError::Truncated));
    // Reserved header bits on a keep-alive.
    assert_eq!(
        TransportMessage::decode(&[0x0c]),
        Err(DecodeError::ReservedBits(0x0c))
    );
    // "more" flag on a frame.
    assert_eq!(
        TransportMessage::decode(&[0x85, 0x00]),
        Err(DecodeError::ReservedBits(0x85))
    );
    assert_eq!(
        TransportMessage::decode(&[0x04, 0x00]),
        Err(DecodeError::TrailingBytes(1))
    );
    assert_eq!(
        TransportMessage::decode(&[0x00, 0x01]),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        TransportMessage::decode(&[0x05, 0xff, 0xff]),
        Err(DecodeError::Truncated)
    );
    let big = vec![0x04; limits::MAX_BATCH_SIZE + 1];
    assert!(matches!(
        TransportMessage::decode(&big),
        Err(DecodeError::TooLong {
            field: Field::Batch,
            ..
        })
    ));
    assert_eq!(
        NetworkMessage::decode(&[0x7f]),
        Err(DecodeError::UnknownTag(0x7f))
    );
    // Put whose length runs past the input.
    assert_eq!(
        NetworkMessage::decode(&[0x00, 0x01, 0x05, 1, 2]),
        Err(DecodeError::Truncated)
    );
    // Invalid key expression in a declaration.
    assert!(matches!(
        NetworkMessage::decode(&[0x03, 0x00, 0x01, 0x03, b'a', b'/', b'/']),
        Err(DecodeError::KeyExpr(_))
    ));
    // Key expression over the cap.
    let long: std::string::String = "a/".repeat(600) + "a";
    let msg = NetworkMessage::Declare(Declare::KeyExpr { id: 1, key: &long });
    let mut buf = vec![0u8; 2048];
    let n = msg.encode(&mut buf).unwrap();
    assert!(matches!(
        NetworkMessage::decode(&buf[..n]),
        Err(DecodeError::TooLong {
            field: Field::KeyExpr,
            ..
        })
    ));
    // Invalid UTF-8 in a string field.
    assert_eq!(
        NetworkMessage::decode(&[0x03, 0x00, 0x01, 0x01, 0xff]),
        Err(DecodeError::Malformed)
    );
    // Encoding into a short buffer is an error, not a panic.
    let mut tiny = [0u8; 3];
    assert_eq!(
        NetworkMessage::Put(Put {
            key_id: 1,
            payload: b"hello"
        })
        .encode(&mut tiny),
        Err(EncodeError::BufferTooSmall)
    );
}

fn key_strategy() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        "a/b",
        "fleet/car1/speed",
        "fleet/*/speed",
        "fleet/**",
        "@x/y",
    ])
}

fn wire_key() -> impl Strategy<Value = WireKey<'static>> {
    prop_oneof![
        any::<u32>().prop_map(WireKey::Id),
        key_strategy().prop_map(WireKey::Name)
    ]
}

fn push_strategy(payload: &'static [u8]) -> impl Strategy<Value = Push<'static>> {
    (
        wire_key(),
        any::<bool>(),
        0..payload.len(),
        prop::option::of((any::<u64>(), any::<u128>())),
        prop::option::of(prop::sample::select(vec![
            "text/plain",
            "application/json",
            "",
        ])),
        prop::option::of(0..payload.len()),
    )
        .prop_map(move |(key, del, n, ts, encoding, att)| Push {
            key,
            kind: if del {
                SampleKind::Delete
            } else {
                SampleKind::Put
            },
            payload: RawBytes(&payload[..n]),
            timestamp: ts.map(|(t, id)| Timestamp {
                time: Ntp64(t),
                id: NodeId::from_u128(id),
            }),
            encoding,
            attachment: att.map(|n| RawBytes(&payload[n..])),
        })
}

static PAYLOAD: [u8; 300] = {
    let mut p = [0u8; 300];
    let mut i = 0;
    while i < 300 {
        p[i] = (i * 7) as u8;
        i += 1;
    }
    p
};

fn network_message() -> impl Strategy<Value = NetworkMessage<'static>> {
    prop_oneof![
        (any::<u32>(), 0..PAYLOAD.len()).prop_map(|(key_id, n)| NetworkMessage::Put(Put {
            key_id,
            payload: &PAYLOAD[..n]
        })),
        push_strategy(&PAYLOAD).prop_map(NetworkMessage::Push),
        (any::<u32>(), any::<u32>(), any::<u32>(), 0..PAYLOAD.len()).prop_map(
            |(key_id, src, sn, n)| NetworkMessage::PutSn(PutSn {
                key_id,
                seq: Seq { src, sn },
                payload: &PAYLOAD[..n]
            })
        ),
        (any::<u32>(), any::<u32>(), push_strategy(&PAYLOAD)).prop_map(|(src, sn, push)| {
            NetworkMessage::PushSn(PushSn {
                seq: Seq { src, sn },
                push,
            })
        }),
        (any::<u32>(), key_strategy())
            .prop_map(|(id, key)| NetworkMessage::Declare(Declare::KeyExpr { id, key })),
        (any::<u32>(), wire_key(), any::<bool>()).prop_map(|(id, key, complete)| {
            NetworkMessage::Declare(Declare::Queryable { id, key, complete })
        }),
        (any::<u32>(), prop::option::of(wire_key()), any::<u8>()).prop_map(|(id, key, flags)| {
            NetworkMessage::Declare(Declare::Interest { id, key, flags })
        }),
        (any::<u32>(), wire_key(), any::<u32>(), 0..3u8, 0..4u8).prop_map(
            |(id, key, timeout_ms, t, c)| NetworkMessage::Request(Request {
                id,
                key,
                parameters: "_time=[now(-10m)..];limit=100",
                target: [
                    QueryTarget::BestMatching,
                    QueryTarget::All,
                    QueryTarget::AllComplete
                ][t as usize],
                consolidation: [
                    Consolidation::Auto,
                    Consolidation::None,
                    Consolidation::Monotonic,
                    Consolidation::Latest
                ][c as usize],
                timeout_ms,
                payload: Some(RawBytes(b"q")),
                encoding: None,
                attachment: None,
            })
        ),
        (any::<u32>(), push_strategy(&PAYLOAD)).prop_map(|(request_id, p)| {
            NetworkMessage::Response(Response {
                request_id,
                body: ReplyBody::Sample(p),
            })
        }),
        any::<u32>()
            .prop_map(|request_id| NetworkMessage::ResponseFinal(ResponseFinal { request_id })),
    ]
}

proptest! {
    #[test]
    fn network_messages_round_trip(msgs in prop::collection::vec(network_message(), 1..8)) {
        // Back to back in one frame body, the last one in tail form.
        let mut body = vec![0u8; 16 * 1024];
        let mut pos = 0;
        for (i, m) in msgs.iter().enumerate() {
            pos += if i + 1 == msgs.len() {
                m.encode_last(&mut body[pos..]).unwrap()
            } else {
                m.encode(&mut body[pos..]).unwrap()
            };
        }
        let frame = Frame { priority: Priority::Data, reliable: true, sn: 9, payload: &body[..pos] };
        let decoded: Vec<_> = frame.messages().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(&decoded, &msgs);
        // Re-encoding each decoded message reproduces its bytes.
        for m in &decoded {
            let a = enc_n(m);
            prop_assert_eq!(NetworkMessage::decode(&a).unwrap(), *m);
        }
    }

    #[test]
    fn transport_messages_round_trip(
        sn in any::<u32>(),
        prio in 0u8..8,
        reliable in any::<bool>(),
        first in any::<bool>(),
        more in any::<bool>(),
        n in 0usize..300,
    ) {
        let priority = Priority::from_bits(prio);
        for m in [
            TransportMessage::Frame(Frame { priority, reliable, sn, payload: &PAYLOAD[..n] }),
            TransportMessage::Fragment(Fragment {
                priority, reliable, first, more, sn, data: &PAYLOAD[..n],
            }),
            TransportMessage::Open(Open { initial_sn: sn }),
        ] {
            let bytes = enc_t(&m);
            prop_assert_eq!(TransportMessage::decode(&bytes).unwrap(), m);
        }
    }

    /// Issue 16: acknowledgements of any lanes and counts, and a handshake offering them.
    #[test]
    fn acks_round_trip(
        counts in prop::collection::vec(prop::option::of((any::<u32>(), any::<u32>())), 8),
        acks in any::<bool>(),
        sn in any::<u32>(),
    ) {
        let mut a = Acks::default();
        for (lane, c) in a.lanes.iter_mut().zip(&counts) {
            *lane = c.map(|(messages, data)| LaneAck { messages, data });
        }
        let init = Init {
            version: 1, node_id: ID1, mode: Mode::Client, batch_size: 1024, sn_bits: 7,
            lease_ms: 3000, initial_sn: sn, acks,
        };
        let accept = Accept {
            version: 1, node_id: ID2, mode: Mode::Router, batch_size: 1024, sn_bits: 7,
            lease_ms: 3000, initial_sn: sn, acks,
        };
        for m in [
            TransportMessage::Acks(a),
            TransportMessage::Init(init),
            TransportMessage::Accept(accept),
        ] {
            let bytes = enc_t(&m);
            prop_assert_eq!(TransportMessage::decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = TransportMessage::decode(&bytes);
        let _ = ScoutMessage::decode(&bytes);
        for m in Messages::new(&bytes) {
            if m.is_err() { break; }
        }
    }
}

proptest! {
    /// The session queues compact puts as a prefix from `encode_put_prefix` or
    /// `encode_put_sn_prefix` followed by the payload: the same bytes as `encode`.
    #[test]
    fn compact_put_prefixes_match_encode(key_id: u32, src: u32, sn: u32, n in 0..PAYLOAD.len()) {
        let payload = &PAYLOAD[..n];
        let mut full = vec![0u8; 400];
        let mut head = [0u8; 25];
        let m = NetworkMessage::Put(Put { key_id, payload });
        let len = m.encode(&mut full).unwrap();
        let h = encode_put_prefix(&mut head, key_id, n).unwrap();
        let want = [&head[..h], payload].concat();
        prop_assert_eq!(&full[..len], want.as_slice());
        let seq = Seq { src, sn };
        let m = NetworkMessage::PutSn(PutSn { key_id, seq, payload });
        let len = m.encode(&mut full).unwrap();
        let h = encode_put_sn_prefix(&mut head, key_id, seq, n).unwrap();
        let want = [&head[..h], payload].concat();
        prop_assert_eq!(&full[..len], want.as_slice());
    }
}
