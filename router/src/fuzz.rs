//! The router layer's fuzz entry (feature `fuzzing`, used by `router/fuzz`; not an API).
//!
//! [`node_input`] runs what a link's reader does with a neighbour's bytes once the session is
//! open, minus sockets and tokio: every network message decoded from the input is converted as
//! the face converts it (`runtime::face::convert_msg`, with the link's key and source ids) and
//! handed to the node core (`net::Node::handle_message`), a sample is routed as the hot path
//! routes it (`Node::route`), a `Routed` message is unwrapped or passed on as the runtime does,
//! on a fake clock. The node has local declarations and a query of its own and a second
//! neighbour, so that what arrives is matched, forwarded and answered. When the node closes
//! the fuzzed face (or the input ends) every face goes down, and nothing of theirs may remain.

use crate::acl::Principal;
use crate::net::{Action, Cmd, FaceKind, Lane, Msg, Node, NodeConfig, QueryParams};
use crate::runtime::face::{Incoming, PeerIds, convert_msg, routed_ids};
use bytes::Bytes;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::time::{Duration, Instant};
use hypha_core::wire::{Consolidation, Mode, NetworkMessage, QueryTarget};
use std::sync::Arc;

/// The neighbour whose bytes the input is.
const FUZZED: u64 = 1;
/// A well-behaved client below the node, so that what the fuzzed face sends is forwarded.
const CLIENT: u64 = 2;

/// What one input did (so that a test can tell seeds that reach the node from noise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Network messages decoded and handed on.
    pub messages: usize,
    /// Actions the node asked for.
    pub actions: usize,
    /// The node closed the neighbour's face.
    pub closed: bool,
}

/// Feeds `data` to a node as a neighbour's messages after a handshake. Layout: byte 0 picks
/// the node's mode, byte 1 the neighbour's mode (bits 0-6), and who dialled (bit 7); bit 6
/// puts the messages on the query lane instead of the control lane; the rest is a sequence of
/// network messages as a frame carries them (decoding stops at the first error, where the
/// session would close the link). Panics only if the node breaks an invariant.
pub fn node_input(data: &[u8]) -> Outcome {
    let mode = |b: u8| match b % 3 {
        0 => Mode::Peer,
        1 => Mode::Client,
        _ => Mode::Router,
    };
    let mut outcome = Outcome::default();
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else {
        return outcome;
    };
    let lane = if b & 0x40 != 0 {
        Lane::QUERY
    } else {
        Lane::CONTROL
    };
    let me = NodeId::from_u128(0x10);
    let them = NodeId::from_u128(0x20);
    let mut node = Node::new(NodeConfig::new(me, mode(a)));
    let mut now = Instant::from_micros(1_000_000);
    node.set_locators(now, Arc::from("tcp/10.0.0.1:7447"));
    let key = |k: &str| OwnedKeyExpr::new(k.to_string()).ok();
    let mut next = 1;
    let mut local = |cmd: fn(u64, OwnedKeyExpr) -> Cmd, k: &str| {
        if let Some(k) = key(k) {
            next += 1;
            node.handle_local(now, cmd(next, k));
        }
    };
    local(|id, key| Cmd::Subscribe { id, key }, "**");
    local(
        |id, key| Cmd::Queryable {
            id,
            key,
            complete: true,
        },
        "a/**",
    );
    local(|id, key| Cmd::Token { id, key }, "a/token");
    local(|id, key| Cmd::LivelinessSubscribe { id, key }, "**");
    local(|id, key| Cmd::Publisher { id, key }, "a/b");
    let Some(all) = key("**") else {
        return outcome;
    };
    let query = node.next_query_id();
    node.handle_local(
        now,
        Cmd::Query {
            id: query,
            params: QueryParams {
                key: all,
                parameters: Arc::from(""),
                target: QueryTarget::All,
                consolidation: Consolidation::None,
                timeout: Duration::from_secs(1),
                payload: None,
                attachment: None,
            },
        },
    );
    node.handle_face_up_as(
        now,
        CLIENT,
        FaceKind::Client,
        NodeId::from_u128(0x30),
        false,
        Principal::anonymous(),
    );
    let up = node.handle_face_up_as(
        now,
        FUZZED,
        FaceKind::of(mode(b)),
        them,
        b & 0x80 != 0,
        Principal::anonymous(),
    );
    let mut open = up && !drain(&mut node, now, &mut outcome);
    let mut ids = PeerIds::default();
    let mut rest = &data[2..];
    let batch = Bytes::copy_from_slice(rest);
    while open && !rest.is_empty() {
        let Ok((msg, tail)) = NetworkMessage::take(rest) else {
            break;
        };
        rest = tail;
        outcome.messages += 1;
        now += Duration::from_millis(1);
        let mut out = Vec::new();
        convert_msg(msg, lane, &batch, &mut ids, &mut out, &mut Vec::new());
        for m in out {
            handle(&mut node, now, FUZZED, m);
        }
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        open = !drain(&mut node, now, &mut outcome);
    }
    outcome.closed = !open && up;
    // Past every deadline, then every face goes: nothing of theirs may stay.
    now += Duration::from_secs(120);
    node.handle_timeout(now);
    node.handle_face_down(now, FUZZED);
    node.handle_face_down(now, CLIENT);
    drain(&mut node, now, &mut outcome);
    assert!(node.faces().is_empty(), "faces left: {:?}", node.faces());
    let remote: Vec<_> = node
        .declarations()
        .into_iter()
        .filter(|d| d.2.is_some())
        .collect();
    assert!(remote.is_empty(), "declarations of gone faces: {remote:?}");
    outcome
}

/// What the runtime does with one converted message from `face`.
fn handle(node: &mut Node, now: Instant, face: u64, m: Incoming) {
    match m {
        Incoming::Msg(msg) => node.handle_message(now, face, *msg),
        Incoming::Sample { key, .. } => {
            let _ = node.route(Some(face), &key);
        }
        Incoming::Gossip(id, mode, endpoints) => {
            let eps: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
            let locators = Arc::from(eps.join(","));
            node.handle_message(
                now,
                face,
                Msg::Gossip {
                    node: id,
                    mode,
                    locators,
                },
            );
        }
        Incoming::Routed(r) => {
            if r.dst != NodeId::from_u128(0x10) {
                match r.hops <= 1 {
                    true => node.routed_dropped(true),
                    false => match node.next_hop_face(&r.dst) {
                        Some(_) => node.routed_transit(),
                        None => node.routed_dropped(false),
                    },
                }
                return;
            }
            let Some(pair) = node.pair_face(&r.src) else {
                return;
            };
            let Ok(msg) = NetworkMessage::decode(&r.body) else {
                return;
            };
            if matches!(
                msg,
                NetworkMessage::Routed(_)
                    | NetworkMessage::LinkState(_)
                    | NetworkMessage::Auth(_)
                    | NetworkMessage::Gossip(_)
            ) {
                return;
            }
            let mut ids = routed_ids(r.origin, &msg);
            let mut out = Vec::new();
            convert_msg(msg, r.lane, &r.body, &mut ids, &mut out, &mut Vec::new());
            for m in out {
                if matches!(m, Incoming::Msg(_) | Incoming::Sample { .. }) {
                    handle(node, now, pair, m);
                }
            }
        }
        Incoming::Auth(_) | Incoming::Other(_) => {}
    }
}

/// Drains the node's actions, answering queries handed to the local queryable and taking
/// down faces it closes; true if it closed the fuzzed face.
fn drain(node: &mut Node, now: Instant, outcome: &mut Outcome) -> bool {
    let mut closed = false;
    let mut rounds = 0;
    loop {
        let mut replies = Vec::new();
        while let Some(a) = node.poll_action() {
            outcome.actions += 1;
            match a {
                Action::Query { query, key, .. } => replies.push((query, key)),
                Action::Close { face, .. } => {
                    closed |= face == FUZZED;
                    node.handle_face_down(now, face);
                }
                _ => {}
            }
        }
        if replies.is_empty() || rounds > 16 {
            return closed;
        }
        rounds += 1;
        for (query, key) in replies {
            let sample = crate::sample::Sample {
                key: Arc::from(key.as_str()),
                payload: Bytes::from_static(b"v"),
                kind: hypha_core::wire::SampleKind::Put,
                timestamp: None,
                encoding: None,
                attachment: None,
                source: None,
            };
            node.handle_local(
                now,
                Cmd::Reply {
                    query,
                    result: Ok(sample),
                },
            );
            node.handle_local(now, Cmd::ReplyFinal { query });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypha_core::wire::{
        Cancel, Declare, Gossip, LinkState, Push, RawBytes, ReplyBody, Request, Response,
        ResponseFinal, Routed, SampleKind, WireKey,
    };

    fn push(key: &str) -> Push<'_> {
        Push {
            key: WireKey::Name(key),
            kind: SampleKind::Put,
            payload: RawBytes(b"v"),
            timestamp: None,
            encoding: Some("text/plain"),
            attachment: None,
        }
    }

    /// One message of every kind a neighbour sends, for each mode of the node and of the
    /// neighbour: the fuzzer's starting corpus (written to `router/fuzz/seeds/` when
    /// `HYPHA_FUZZ_WRITE_SEEDS` is set).
    fn seeds() -> Vec<Vec<u8>> {
        let them = NodeId::from_u128(0x20);
        let me = NodeId::from_u128(0x10);
        let mut link = [0u8; 20];
        let n = LinkState::write_links([(me, 10)], &mut link).unwrap();
        let mut inner = [0u8; 256];
        let inner_len = NetworkMessage::Push(push("a/routed"))
            .encode(&mut inner)
            .unwrap();
        let messages = [
            NetworkMessage::Gossip(Gossip {
                node_id: them,
                mode: Mode::Peer,
                locators: "tcp/10.0.0.2:7447",
            }),
            NetworkMessage::Declare(Declare::KeyExpr { id: 1, key: "a/b" }),
            NetworkMessage::Declare(Declare::Subscriber {
                id: 1,
                key: WireKey::Name("a/**"),
            }),
            NetworkMessage::Declare(Declare::Queryable {
                id: 2,
                key: WireKey::Id(1),
                complete: true,
            }),
            NetworkMessage::Declare(Declare::Token {
                id: 3,
                key: WireKey::Name("a/t"),
            }),
            NetworkMessage::Declare(Declare::Interest {
                id: 4,
                key: None,
                flags: 0xff,
            }),
            NetworkMessage::Declare(Declare::Source {
                id: 1,
                node: them,
                publisher: 1,
            }),
            NetworkMessage::Push(push("a/c")),
            NetworkMessage::Request(Request {
                id: 5,
                key: WireKey::Name("a/**"),
                parameters: "",
                target: QueryTarget::All,
                consolidation: Consolidation::None,
                timeout_ms: 1000,
                payload: None,
                encoding: None,
                attachment: None,
            }),
            NetworkMessage::Response(Response {
                request_id: 1,
                body: ReplyBody::Sample(push("a/r")),
            }),
            NetworkMessage::ResponseFinal(ResponseFinal { request_id: 1 }),
            NetworkMessage::LinkState(LinkState {
                router: them,
                epoch: 1,
                seq: 1,
                site: "",
                flags: 0,
                links: RawBytes(&link[..n]),
                locators: "tcp/10.0.0.2:7447",
            }),
            NetworkMessage::Routed(Routed {
                src: them,
                dst: me,
                hops: 4,
                origin: None,
                body: RawBytes(&inner[..inner_len]),
            }),
            NetworkMessage::Cancel(Cancel { request_id: 5 }),
            NetworkMessage::Declare(Declare::UndeclareSubscriber { id: 1 }),
            NetworkMessage::Declare(Declare::InterestFinal { id: 4 }),
        ];
        let mut body = Vec::new();
        for m in &messages {
            let mut buf = [0u8; 512];
            let len = m.encode(&mut buf).unwrap();
            body.extend_from_slice(&buf[..len]);
        }
        let mut out = Vec::new();
        for a in 0..3u8 {
            for b in [0u8, 1, 2, 0x80, 0x81, 0x82, 0x42] {
                let mut input = vec![a, b];
                input.extend_from_slice(&body);
                out.push(input);
            }
        }
        out
    }

    #[test]
    fn seeds_reach_the_node_with_every_message() {
        let seeds = seeds();
        for (i, input) in seeds.iter().enumerate() {
            let o = node_input(input);
            // Every message decodes and is handled (no face is closed by them), and the node
            // answers (declarations to the client, deliveries, replies, gossip).
            assert!(
                o.messages == 16 && !o.closed && o.actions > 10,
                "seed {i}: {o:?}"
            );
        }
        if let Ok(dir) = std::env::var("HYPHA_FUZZ_WRITE_SEEDS") {
            for (i, input) in seeds.iter().enumerate() {
                std::fs::write(
                    std::path::Path::new(&dir).join(format!("seed-{i:02}")),
                    input,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn decoding_stops_at_the_first_malformed_message() {
        let mut input = vec![0u8, 0];
        let mut buf = [0u8; 64];
        let n = NetworkMessage::Declare(Declare::KeyExpr { id: 1, key: "a" })
            .encode(&mut buf)
            .unwrap();
        input.extend_from_slice(&buf[..n]);
        assert_eq!(node_input(&input).messages, 1);
        // An unknown tag after it: what follows is never read (the session closes there).
        input.extend_from_slice(&[0x7f, 0x01]);
        input.extend_from_slice(&buf[..n]);
        assert_eq!(node_input(&input).messages, 1);
        assert_eq!(node_input(&[0]), Outcome::default());
    }

    /// Every input kept under `router/fuzz/regressions/` (crashes the fuzzer found, fixed)
    /// and `router/fuzz/seeds/` goes through the same function in the ordinary test run.
    #[test]
    fn the_fuzzers_regressions_and_seeds_replay_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                node_input(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no inputs under {}", root.display());
    }
}
