//! One link to a neighbour: its session state machine and its two driver tasks.
//!
//! The reader task receives batches, feeds them to the session and dispatches what they carry;
//! the writer task drains the session's lane queues into batches and writes them, and runs the
//! session's timers. Publishers enqueue directly into the session (a short lock), so whatever
//! accumulates while the writer is busy goes out together in the next batch, and a lone message
//! goes out at once. Reader and writer are separate tasks so that a link blocked on writing
//! never stops reading (no deadlock when both sides' socket buffers are full).

use super::Runtime;
use crate::net::{Decl, FaceId, Lane, Msg, Request};
use crate::sample::{ErrorReply, Sample, SampleSource};
use bytes::Bytes;
use hypha_core::hlc::Timestamp;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::session::{
    Config as SessionConfig, Event, HeapSession, PeerInfo, Received, Role, SendError,
};
use hypha_core::wire::{
    CloseReason, Declare, NetworkMessage, Push, Put, RawBytes, SampleKind, WireKey,
};
use hypha_transports::{Link, LinkInfo, LinkRecv, LinkRx, LinkSend, LinkTx};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;

/// Most messages (declarations, queries, replies) waiting for room on a full lane before the
/// link is closed: such messages are never dropped, so a neighbour that stops reading must not
/// make them pile up without end.
const MAX_BACKLOG: usize = 65_536;

struct FaceState {
    session: HeapSession,
    /// Key ids we declared on this link, per key and lane (a declaration travels on the lane
    /// that uses it, so it can never be overtaken by its first use on a multi-stream link).
    /// (Keyed by this node's own keys and publishers, never by a peer's: a fast hash is safe.)
    key_ids: rustc_hash::FxHashMap<(Arc<str>, u8), u32>,
    /// Source ids we declared on this link, per (node, publisher) and lane (same reason).
    src_ids: rustc_hash::FxHashMap<(NodeId, u32, u8), u32>,
    next_src: u32,
}

/// Most sources (publishers) a neighbour may declare on one link; more are ignored (their
/// samples arrive without a sequence number).
const MAX_SOURCES: usize = 65_536;

/// What a reader knows of the peer's declarations: key ids and source ids.
#[derive(Default)]
pub(crate) struct PeerIds {
    keys: HashMap<u32, Arc<str>>,
    sources: HashMap<u32, (NodeId, u32)>,
    /// The last key and source looked up: a batch of puts from one publisher names the same
    /// ones thousands of times, and a hash lookup each was a tenth of an 8-byte-put receiver's
    /// time. Cleared whenever either map changes.
    last_key: Option<(u32, Arc<str>)>,
    last_source: Option<(u32, (NodeId, u32))>,
}

impl PeerIds {
    fn source(&mut self, seq: hypha_core::wire::Seq) -> Option<SampleSource> {
        let (node, publisher) = match self.last_source {
            Some((id, v)) if id == seq.src => v,
            _ => {
                let v = *self.sources.get(&seq.src)?;
                self.last_source = Some((seq.src, v));
                v
            }
        };
        Some(SampleSource {
            node,
            publisher,
            sn: seq.sn,
        })
    }

    fn key(&mut self, id: u32) -> Option<Arc<str>> {
        match &self.last_key {
            Some((i, k)) if *i == id => Some(k.clone()),
            _ => {
                let k = self.keys.get(&id)?.clone();
                self.last_key = Some((id, k.clone()));
                Some(k)
            }
        }
    }

    fn set_key(&mut self, id: u32, key: Option<Arc<str>>) {
        self.last_key = None;
        match key {
            Some(k) => self.keys.insert(id, k),
            None => self.keys.remove(&id),
        };
    }

    fn set_source(&mut self, id: u32, v: (NodeId, u32)) {
        self.last_source = None;
        self.sources.insert(id, v);
    }
}

/// A link to a neighbour.
pub(crate) struct Face {
    pub id: FaceId,
    pub info: LinkInfo,
    pub role: Role,
    peer: OnceLock<PeerInfo>,
    state: Mutex<FaceState>,
    /// Wakes the writer: something was queued, or the session changed state.
    wake: Notify,
    /// Fired when the writer has drained queues: whoever waits for an emptier link (replies,
    /// `flush`) looks again.
    pub space: Notify,
    /// Blocked publishers waiting for room, woken **one at a time** (FIFO): the writer wakes
    /// the first when it has written, and each that then gets its sample in wakes the next,
    /// until one finds the lane full again. Waking them all at each write (as `space` does)
    /// made thousands of blocked puts retry for the few that fit: with 5,000 acknowledged 1 KiB
    /// puts in flight against a 1 MiB lane, most of the client's CPU.
    pub(crate) put_room: Notify,
    /// Stops the reader.
    stop: Notify,
    dead: AtomicBool,
    /// A close to make once everything queued has been written (a replaced duplicate link).
    close_after_drain: Mutex<Option<CloseReason>>,
    /// Set when the writer has shut the link (the transport's goodbye is done).
    finished: AtomicBool,
    /// Fired with `finished`.
    pub done: Notify,
    /// The peer closed the session saying it shuts down: it left, and is not dialled again.
    left: AtomicBool,
    /// Messages dropped for this destination (queue full under `Drop`, or `Block` timed out).
    pub dropped: AtomicU64,
    /// Messages queued for this destination.
    pub sent: AtomicU64,
    /// Samples received from this neighbour.
    pub received: AtomicU64,
    /// Messages that must not be dropped (declarations, queries, replies) waiting for room,
    /// in order; the writer moves them into the session as lanes drain.
    backlog: Mutex<VecDeque<Msg>>,
    /// The neighbour's kind, set at the handshake.
    pub kind: OnceLock<crate::net::FaceKind>,
    /// Whether the link's principal is still to come from a pre-shared token.
    pub(crate) auth: Mutex<AuthGate>,
    /// The hash of the token the principal came from (revoked tokens close their links).
    pub(crate) token_hash: OnceLock<[u8; 32]>,
    /// The peer's access-control identity, set when the handshake completes.
    pub principal: OnceLock<crate::acl::Principal>,
    /// An accepted link's place among those handshaking (freed at `Established`).
    slot: Mutex<Option<super::HandshakeSlot>>,
    /// The link's sending half while the writer task is idle: a publisher finding the link
    /// idle writes its batch itself, on its own thread (no wake of the writer, no thread hop).
    parked_tx: Mutex<Option<LinkTx>>,
    /// The writer found `parked_tx` held by a publisher's direct write and waits to be woken
    /// when that write ends.
    writer_waiting: AtomicBool,
    /// The session clock's epoch (the runtime's), for writes made outside the writer.
    epoch: std::time::Instant,
    /// This node's id (the source of what it routes across the backbone).
    me: NodeId,
    /// The configured cost of this link, when it is a backbone link dialled from the config.
    pub(crate) cost: Option<u32>,
    /// When (session µs) a publisher last wrote directly: within `DIRECT_GAP_US` of it, the
    /// link counts as busy and puts are batched by the writer instead.
    last_direct: AtomicU64,
}

/// Puts closer together than this go through the writer (batched); a put after a quieter spell
/// is written at once by its caller. 50 µs: a ping-pong stays direct, a tight loop batches.
const DIRECT_GAP_US: u64 = 50;

/// What a batch carried, owned, dispatched after the session lock is released.
pub(crate) enum Incoming {
    /// A publication: the hot path, handled by the runtime on a cached route without entering
    /// the node. Kept small (the rare extras are boxed): a batch of 8-byte puts carries
    /// thousands of these, and moving fat enums around showed up as a quarter of the receiver's
    /// time.
    Sample {
        key: Arc<str>,
        kind: SampleKind,
        payload: Bytes,
        extra: Option<Box<Extra>>,
        lane: Lane,
        source: Option<SampleSource>,
    },
    /// Anything else for the node (boxed: a `Msg` is twice a sample's size, and every
    /// `Incoming` of a batch is as large as its largest variant).
    Msg(Box<Msg>),
    /// A node (of this mode) and where it listens.
    Gossip(
        hypha_core::id::NodeId,
        hypha_core::wire::Mode,
        Vec<hypha_transports::Endpoint>,
    ),
    /// The dialer's pre-shared token (empty: none), for the runtime.
    Auth(Bytes),
    /// A message routed across the backbone (for us, or in transit).
    Routed(Box<RoutedIn>),
    /// Something the node cannot use (counted).
    Other(&'static str),
}

/// `Incoming::Msg` of `m`.
fn boxed(m: Msg) -> Incoming {
    Incoming::Msg(Box::new(m))
}

/// A received `Routed` message, its body still encoded.
pub(crate) struct RoutedIn {
    pub src: NodeId,
    pub dst: NodeId,
    pub hops: u8,
    pub origin: Option<NodeId>,
    pub body: Bytes,
    pub lane: Lane,
}

/// Whether a link waits for its dialer's credential before its messages are judged.
pub(crate) enum AuthGate {
    /// The principal is known: messages go to the node.
    Open,
    /// Waiting for `Auth`: what arrives is held, in order.
    Waiting(Vec<Incoming>),
}

/// Messages held for a link before its credential (beyond, the link is closed).
const MAX_HELD: usize = 4096;

/// Timestamp, encoding and attachment of a sample, when it has any.
pub(crate) struct Extra {
    pub timestamp: Option<Timestamp>,
    pub encoding: Option<Arc<str>>,
    pub attachment: Option<Bytes>,
}

thread_local! {
    /// The batch buffer of direct writes, one per thread (64 KiB, reused).
    static DIRECT_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// A small batch of a direct write held back to share a write with the next one (`PAIR_BELOW`).
    static DIRECT_SMALL: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// Bytes this thread has written to links since it last gave up its CPU (`give_cpu`).
    static WRITTEN_SINCE_OS_YIELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A batch below this size goes out in the same write as the batch after it, on links that
/// take two at once (stream links): the tail fragment of a sample just over a batch (64 KiB
/// samples: 65,535 bytes then ~40) cost a write, a segment and a wake-up of the reader of its
/// own. Measured: 64 KiB samples +45 %, 1 MiB +12 % (BENCHMARKS.md).
const PAIR_BELOW: usize = 4096;

/// Bytes a thread writes to links before it offers its CPU to the other runnable threads.
const OS_YIELD_EVERY: usize = 64 * 1024;

/// Counts `n` bytes written on this thread and, every `OS_YIELD_EVERY`, lets the OS run another
/// thread that is waiting for this CPU (`sched_yield`; it returns at once when none is).
/// Returns whether it yielded.
///
/// A bulk write is CPU-bound (copy, encrypt, the socket's own copy) and never blocks on a fast
/// link, and the kernel takes the CPU from it only at its next tick (4 ms at HZ=250, with no
/// preemption in the kernel): on a loaded host the worker woken for a RealTime reply waited
/// behind it for up to 3 ms (`perf sched`). A task yield does not help there (the waiting
/// thread is another worker, not another task). It costs one syscall per 64 KiB written,
/// whatever the sample size (BENCHMARKS.md, "Bulk gives up the CPU every 64 KiB").
fn give_cpu(n: usize) -> bool {
    let due = WRITTEN_SINCE_OS_YIELD.with(|w| {
        let total = w.get().saturating_add(n);
        let due = total >= OS_YIELD_EVERY;
        w.set(if due { 0 } else { total });
        due
    });
    if due {
        std::thread::yield_now();
    }
    due
}

/// A zero-copy view of `part` if it lies inside `batch`, else a copy (reassembled messages).
fn bytes_of(batch: &Bytes, part: &[u8]) -> Bytes {
    let start = batch.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    if part.is_empty() {
        Bytes::new()
    } else if p >= start && p + part.len() <= start + batch.len() {
        batch.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// The key a message names, by id (through the one-entry cache) or in full.
fn resolve(ids: &mut PeerIds, k: WireKey<'_>) -> Option<Arc<str>> {
    match k {
        WireKey::Id(id) => ids.key(id),
        WireKey::Name(n) => Some(Arc::from(n)),
    }
}

fn owned(ids: &mut PeerIds, k: WireKey<'_>) -> Option<OwnedKeyExpr> {
    resolve(ids, k).and_then(|s| OwnedKeyExpr::new(s.to_string()).ok())
}

/// A sample payload that lies in the session's reassembly buffer: patched in after
/// `handle_input` from `take_reassembled`, without a copy. (index in `out`, address, length)
pub(crate) type Fixup = (usize, usize, usize);

/// The payload of a sample: a view of the batch, or (for a message reassembled from
/// fragments) an empty placeholder and a fixup.
fn payload_of(batch: &Bytes, part: &[u8], index: usize, fixups: &mut Vec<Fixup>) -> Bytes {
    let start = batch.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    if part.is_empty() || (p >= start && p + part.len() <= start + batch.len()) {
        bytes_of(batch, part)
    } else {
        fixups.push((index, p, part.len()));
        Bytes::new()
    }
}

fn convert(
    r: &Received<'_, '_>,
    batch: &Bytes,
    ids: &mut PeerIds,
    out: &mut Vec<Incoming>,
    fixups: &mut Vec<Fixup>,
) {
    let lane = Lane {
        priority: r.priority,
        reliable: r.reliable,
    };
    convert_msg(r.msg, lane, batch, ids, out, fixups);
}

/// Converts one network message found in `batch` (zero-copy where it lies inside it).
pub(crate) fn convert_msg(
    msg: NetworkMessage<'_>,
    lane: Lane,
    batch: &Bytes,
    ids: &mut PeerIds,
    out: &mut Vec<Incoming>,
    fixups: &mut Vec<Fixup>,
) {
    // The hot path (compact puts) reads the message in place rather than copying it.
    let compact = match &msg {
        NetworkMessage::Put(p) => Some((p.key_id, p.payload, None)),
        NetworkMessage::PutSn(p) => Some((p.key_id, p.payload, ids.source(p.seq))),
        _ => None,
    };
    if let Some((key_id, payload, source)) = compact {
        let index = out.len();
        out.push(match ids.key(key_id) {
            Some(key) => Incoming::Sample {
                key,
                kind: SampleKind::Put,
                payload: payload_of(batch, payload, index, fixups),
                extra: None,
                lane,
                source,
            },
            None => Incoming::Other("put on an undeclared key id"),
        });
        return;
    }
    let decl = |d: Decl| boxed(Msg::Declare(d));
    let (push, source) = match msg {
        NetworkMessage::Push(p) => (Some(p), None),
        NetworkMessage::PushSn(p) => (Some(p.push), ids.source(p.seq)),
        _ => (None, None),
    };
    let item = match (push, msg) {
        (_, NetworkMessage::Put(_) | NetworkMessage::PutSn(_)) => return,
        (Some(p), _) => match resolve(ids, p.key) {
            Some(key) => Incoming::Sample {
                key,
                kind: p.kind,
                payload: payload_of(batch, p.payload.0, out.len(), fixups),
                extra: (p.timestamp.is_some() || p.encoding.is_some() || p.attachment.is_some())
                    .then(|| {
                        Box::new(Extra {
                            timestamp: p.timestamp,
                            encoding: p.encoding.map(Arc::from),
                            attachment: p.attachment.map(|a| bytes_of(batch, a.0)),
                        })
                    }),
                lane,
                source,
            },
            None => Incoming::Other("push on an undeclared key id"),
        },
        (None, NetworkMessage::Declare(d)) => match d {
            Declare::KeyExpr { id, key } => {
                ids.set_key(id, Some(Arc::from(key)));
                return;
            }
            Declare::UndeclareKeyExpr { id } => {
                ids.set_key(id, None);
                return;
            }
            Declare::Subscriber { id, key } => match owned(ids, key) {
                Some(key) => decl(Decl::Subscriber { id, key }),
                None => Incoming::Other("subscriber on an undeclared key id"),
            },
            Declare::UndeclareSubscriber { id } => decl(Decl::Unsubscriber { id }),
            Declare::Queryable { id, key, complete } => match owned(ids, key) {
                Some(key) => decl(Decl::Queryable { id, key, complete }),
                None => Incoming::Other("queryable on an undeclared key id"),
            },
            Declare::UndeclareQueryable { id } => decl(Decl::Unqueryable { id }),
            Declare::Token { id, key } => match owned(ids, key) {
                Some(key) => decl(Decl::Token { id, key }),
                None => Incoming::Other("token on an undeclared key id"),
            },
            Declare::UndeclareToken { id } => decl(Decl::Untoken { id }),
            Declare::Interest { id, key, flags } => match key {
                None => decl(Decl::Interest {
                    id,
                    key: None,
                    flags,
                }),
                Some(k) => match owned(ids, k) {
                    Some(k) => decl(Decl::Interest {
                        id,
                        key: Some(k),
                        flags,
                    }),
                    None => Incoming::Other("interest on an undeclared key id"),
                },
            },
            Declare::InterestFinal { id } => decl(Decl::InterestFinal { id }),
            Declare::UndeclareInterest { id } => decl(Decl::UndeclareInterest { id }),
            Declare::Resync { ask, round } => decl(Decl::Resync { ask, round }),
            Declare::ResyncEnd { round } => decl(Decl::ResyncEnd { round }),
            Declare::Source {
                id,
                node,
                publisher,
            } => {
                if ids.sources.len() < MAX_SOURCES || ids.sources.contains_key(&id) {
                    ids.set_source(id, (node, publisher));
                }
                return;
            }
        },
        (None, NetworkMessage::Gossip(g)) => Incoming::Gossip(
            g.node_id,
            g.mode,
            g.locators
                .split(',')
                .filter_map(|l| l.parse().ok())
                .take(hypha_transports::discovery::MAX_ENDPOINTS)
                .collect(),
        ),
        (None, NetworkMessage::Request(q)) => match owned(ids, q.key) {
            Some(key) => boxed(Msg::Request(Request {
                id: q.id,
                key,
                parameters: Arc::from(q.parameters),
                target: q.target,
                consolidation: q.consolidation,
                timeout_ms: q.timeout_ms,
                payload: q.payload.map(|p| bytes_of(batch, p.0)),
                attachment: q.attachment.map(|a| bytes_of(batch, a.0)),
            })),
            None => Incoming::Other("request on an undeclared key id"),
        },
        (None, NetworkMessage::Response(r)) => match r.body {
            hypha_core::wire::ReplyBody::Sample(p) => match resolve(ids, p.key) {
                Some(key) => boxed(Msg::Response {
                    id: r.request_id,
                    result: Ok(Sample {
                        key,
                        payload: bytes_of(batch, p.payload.0),
                        kind: p.kind,
                        timestamp: p.timestamp,
                        encoding: p.encoding.map(Arc::from),
                        attachment: p.attachment.map(|a| bytes_of(batch, a.0)),
                        source: None,
                    }),
                }),
                None => Incoming::Other("reply on an undeclared key id"),
            },
            hypha_core::wire::ReplyBody::Err { payload, encoding } => boxed(Msg::Response {
                id: r.request_id,
                result: Err(ErrorReply {
                    payload: bytes_of(batch, payload.0),
                    encoding: encoding.map(Arc::from),
                }),
            }),
        },
        (None, NetworkMessage::ResponseFinal(f)) => boxed(Msg::ResponseFinal { id: f.request_id }),
        (None, NetworkMessage::Auth(a)) => Incoming::Auth(bytes_of(batch, a.token.0)),
        (None, NetworkMessage::Cancel(c)) => boxed(Msg::Cancel { id: c.request_id }),
        (None, NetworkMessage::Denied(d)) => boxed(Msg::Denied(Arc::new(
            crate::acl::AccessDenied::from_wire(&d),
        ))),
        (None, NetworkMessage::LinkState(l)) => {
            let mut links: Vec<(NodeId, u32)> = l.links().collect();
            links.sort_unstable();
            links.dedup_by_key(|x| x.0);
            boxed(Msg::LinkState(Arc::new(crate::net::linkstate::Lsa {
                router: l.router,
                epoch: l.epoch,
                seq: l.seq,
                site: Arc::from(l.site),
                flags: l.flags,
                links,
                locators: Arc::from(l.locators),
            })))
        }
        (None, NetworkMessage::Routed(r)) => Incoming::Routed(Box::new(RoutedIn {
            src: r.src,
            dst: r.dst,
            hops: r.hops,
            origin: r.origin,
            body: bytes_of(batch, r.body.0),
            lane,
        })),
        (None, NetworkMessage::Push(_) | NetworkMessage::PushSn(_)) => return,
    };
    out.push(item);
}

/// A stateless source table for a routed body: its `PushSn` names publisher `seq.src` of
/// node `origin`.
pub(crate) fn routed_ids(origin: Option<NodeId>, msg: &NetworkMessage<'_>) -> PeerIds {
    let mut ids = PeerIds::default();
    if let (Some(o), NetworkMessage::PushSn(p)) = (origin, msg) {
        ids.set_source(p.seq.src, (o, p.seq.src));
    }
    ids
}

/// Encodes one network message into a fresh buffer (a routed body).
fn encode_vec(m: &NetworkMessage<'_>, hint: usize) -> Result<Vec<u8>, SendError> {
    let mut len = hint.max(256);
    loop {
        let mut buf = vec![0u8; len];
        match m.encode(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(_) if len < (64 << 20) => len *= 2,
            Err(_) => return Err(SendError::TooLarge),
        }
    }
}

/// The stateless form of a node message, for a routed body: keys by name, a sample's
/// publisher as (origin, publisher id).
fn stateless_body(msg: &Msg) -> Result<(Vec<u8>, Option<NodeId>), SendError> {
    match msg {
        Msg::Sample { sample, .. } => {
            let body = sample_body(
                &sample.key,
                sample.kind,
                &sample.payload,
                sample.timestamp,
                sample.encoding.as_deref(),
                sample.attachment.as_deref(),
                sample.source,
            )?;
            Ok((body, sample.source.map(|s| s.node)))
        }
        Msg::Routed { .. } | Msg::LinkState(_) | Msg::Transit(_) => Err(SendError::TooLarge),
        other => {
            let mut out = None;
            with_network(other, &mut |m| {
                out = Some(encode_vec(m, 512));
                Ok(())
            })?;
            Ok((out.unwrap_or(Err(SendError::TooLarge))?, None))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sample_body(
    key: &str,
    kind: SampleKind,
    payload: &[u8],
    timestamp: Option<Timestamp>,
    encoding: Option<&str>,
    attachment: Option<&[u8]>,
    source: Option<SampleSource>,
) -> Result<Vec<u8>, SendError> {
    let push = Push {
        key: WireKey::Name(key),
        kind,
        payload: RawBytes(payload),
        timestamp,
        encoding,
        attachment: attachment.map(RawBytes),
    };
    let m = match source {
        Some(s) => NetworkMessage::PushSn(hypha_core::wire::PushSn {
            seq: hypha_core::wire::Seq {
                src: s.publisher,
                sn: s.sn,
            },
            push,
        }),
        None => NetworkMessage::Push(push),
    };
    encode_vec(&m, payload.len() + key.len() + 128)
}

/// Encodes a node message (other than a sample) for the wire and queues it on its lane.
fn send_encoded(session: &mut HeapSession, msg: &Msg, me: NodeId) -> Result<(), SendError> {
    let lane = msg.lane();
    match msg {
        Msg::Routed { dst, inner } => {
            let (body, origin) = stateless_body(inner)?;
            session.send(
                lane.priority,
                lane.reliable,
                &NetworkMessage::Routed(hypha_core::wire::Routed {
                    src: me,
                    dst: *dst,
                    hops: crate::net::MAX_HOPS,
                    origin,
                    body: RawBytes(&body),
                }),
            )
        }
        Msg::Transit(t) => session.send(
            t.lane.priority,
            t.lane.reliable,
            &NetworkMessage::Routed(hypha_core::wire::Routed {
                src: t.src,
                dst: t.dst,
                hops: t.hops,
                origin: t.origin,
                body: RawBytes(&t.body),
            }),
        ),
        Msg::LinkState(l) => {
            use hypha_core::wire::{LSA_LINK_LEN, LinkState, MAX_LSA_LINKS};
            let n = l.links.len().min(MAX_LSA_LINKS);
            let mut links = vec![0u8; n * LSA_LINK_LEN];
            LinkState::write_links(l.links.iter().take(n).copied(), &mut links)
                .map_err(|_| SendError::TooLarge)?;
            session.send(
                lane.priority,
                lane.reliable,
                &NetworkMessage::LinkState(LinkState {
                    router: l.router,
                    epoch: l.epoch,
                    seq: l.seq,
                    site: &l.site,
                    flags: l.flags,
                    links: RawBytes(&links),
                    locators: &l.locators,
                }),
            )
        }
        other => with_network(other, &mut |m| {
            session.send(lane.priority, lane.reliable, m)
        }),
    }
}

/// Builds the network message of a node message (keys by name) and hands it to `f`.
fn with_network(
    msg: &Msg,
    f: &mut dyn FnMut(&NetworkMessage<'_>) -> Result<(), SendError>,
) -> Result<(), SendError> {
    use hypha_core::wire::{ReplyBody, Response, ResponseFinal};
    match msg {
        Msg::Sample { sample, .. } => f(&NetworkMessage::Push(Push {
            key: WireKey::Name(&sample.key),
            kind: sample.kind,
            payload: RawBytes(&sample.payload),
            timestamp: sample.timestamp,
            encoding: sample.encoding.as_deref(),
            attachment: sample.attachment.as_deref().map(RawBytes),
        })),
        Msg::Declare(d) => {
            let d = match d {
                Decl::Subscriber { id, key } => Declare::Subscriber {
                    id: *id,
                    key: WireKey::Name(key.as_str()),
                },
                Decl::Unsubscriber { id } => Declare::UndeclareSubscriber { id: *id },
                Decl::Queryable { id, key, complete } => Declare::Queryable {
                    id: *id,
                    key: WireKey::Name(key.as_str()),
                    complete: *complete,
                },
                Decl::Unqueryable { id } => Declare::UndeclareQueryable { id: *id },
                Decl::Token { id, key } => Declare::Token {
                    id: *id,
                    key: WireKey::Name(key.as_str()),
                },
                Decl::Untoken { id } => Declare::UndeclareToken { id: *id },
                Decl::Interest { id, key, flags } => Declare::Interest {
                    id: *id,
                    key: key.as_ref().map(|k| WireKey::Name(k.as_str())),
                    flags: *flags,
                },
                Decl::InterestFinal { id } => Declare::InterestFinal { id: *id },
                Decl::UndeclareInterest { id } => Declare::UndeclareInterest { id: *id },
                Decl::Resync { ask, round } => Declare::Resync {
                    ask: *ask,
                    round: *round,
                },
                Decl::ResyncEnd { round } => Declare::ResyncEnd { round: *round },
            };
            f(&NetworkMessage::Declare(d))
        }
        Msg::Request(r) => f(&NetworkMessage::Request(hypha_core::wire::Request {
            id: r.id,
            key: WireKey::Name(r.key.as_str()),
            parameters: &r.parameters,
            target: r.target,
            consolidation: r.consolidation,
            timeout_ms: r.timeout_ms,
            payload: r.payload.as_deref().map(RawBytes),
            encoding: None,
            attachment: r.attachment.as_deref().map(RawBytes),
        })),
        Msg::Response { id, result } => {
            let body = match result {
                Ok(s) => ReplyBody::Sample(Push {
                    key: WireKey::Name(&s.key),
                    kind: s.kind,
                    payload: RawBytes(&s.payload),
                    timestamp: s.timestamp,
                    encoding: s.encoding.as_deref(),
                    attachment: s.attachment.as_deref().map(RawBytes),
                }),
                Err(e) => ReplyBody::Err {
                    payload: RawBytes(&e.payload),
                    encoding: e.encoding.as_deref(),
                },
            };
            f(&NetworkMessage::Response(Response {
                request_id: *id,
                body,
            }))
        }
        Msg::ResponseFinal { id } => f(&NetworkMessage::ResponseFinal(ResponseFinal {
            request_id: *id,
        })),
        Msg::Gossip {
            node,
            mode,
            locators,
        } => f(&NetworkMessage::Gossip(hypha_core::wire::Gossip {
            node_id: *node,
            mode: *mode,
            locators,
        })),
        Msg::Cancel { id } => f(&NetworkMessage::Cancel(hypha_core::wire::Cancel {
            request_id: *id,
        })),
        Msg::Denied(d) => f(&NetworkMessage::Denied(hypha_core::wire::Denied {
            op: d.op,
            key: &d.key,
            principal: &d.principal,
            rule: &d.rule,
        })),
        Msg::Routed { .. } | Msg::LinkState(_) | Msg::Transit(_) => Err(SendError::TooLarge),
    }
}

/// Session acknowledgements (issue 16) are on unless `HYPHA_ACKS=off` is in the environment:
/// a switch for measuring what they cost (BENCHMARKS.md), read once.
fn acks_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("HYPHA_ACKS").map_or(true, |v| v != "off"))
}

impl Face {
    fn new(rt: &Runtime, id: FaceId, info: LinkInfo, role: Role) -> Self {
        let mut cfg = SessionConfig::new(rt.id);
        cfg.mode = rt.config.mode;
        cfg.batch_size = rt
            .config
            .batch_size
            .min(u16::try_from(info.mtu).unwrap_or(u16::MAX));
        cfg.lease = hypha_core::time::Duration::from_millis(rt.config.lease_ms);
        cfg.handshake_timeout = hypha_core::time::Duration::from_millis(rt.config.lease_ms);
        cfg.lane_capacity = rt.config.queues.lane_bytes;
        // Room for the framing around the largest payload + attachment accepted.
        cfg.max_message_size = rt.config.limits.max_message_bytes.saturating_add(64 << 10);
        cfg.acks = acks_enabled();
        let session = HeapSession::new(cfg, role, rt.now(), super::random_u64());
        Face {
            id,
            info,
            role,
            peer: OnceLock::new(),
            state: Mutex::new(FaceState {
                session,
                key_ids: Default::default(),
                src_ids: Default::default(),
                next_src: 1,
            }),
            wake: Notify::new(),
            space: Notify::new(),
            put_room: Notify::new(),
            stop: Notify::new(),
            dead: AtomicBool::new(false),
            close_after_drain: Mutex::new(None),
            finished: AtomicBool::new(false),
            done: Notify::new(),
            left: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            backlog: Mutex::new(VecDeque::new()),
            kind: OnceLock::new(),
            auth: Mutex::new(AuthGate::Open),
            token_hash: OnceLock::new(),
            principal: OnceLock::new(),
            slot: Mutex::new(None),
            parked_tx: Mutex::new(None),
            writer_waiting: AtomicBool::new(false),
            epoch: rt.start_std,
            me: rt.id,
            cost: None,
            last_direct: AtomicU64::new(0),
        }
    }

    /// The neighbour, once the handshake completed.
    pub(crate) fn peer(&self) -> Option<PeerInfo> {
        self.peer.get().copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a node message. Samples (forwarded by a router) are dropped and counted when
    /// their lane is full, like any publication under `Drop`; every other message is never
    /// dropped: it waits in the backlog, in order, until the lane has room.
    /// Sends the pre-shared token (empty: none) as this link's first message.
    pub(crate) fn send_auth(&self, token: &[u8]) {
        let lane = Lane::CONTROL;
        let m = NetworkMessage::Auth(hypha_core::wire::Auth {
            token: RawBytes(token),
        });
        let r = self.lock().session.send(lane.priority, lane.reliable, &m);
        if let Err(e) = r {
            tracing::warn!(face = self.id, "credential not sent: {e}");
        }
        self.wake.notify_one();
    }

    /// Holds what the link delivers until its principal is known (a pre-shared token is
    /// expected first); gives `m` back if it is already known.
    pub(crate) fn hold(&self, m: Incoming) -> Option<Incoming> {
        let mut a = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *a {
            AuthGate::Open => Some(m),
            AuthGate::Waiting(q) => {
                if q.len() >= MAX_HELD {
                    drop(a);
                    tracing::warn!(
                        face = self.id,
                        "closing: {MAX_HELD} messages before the credential"
                    );
                    self.close_with(CloseReason::TooLarge, "messages before the credential");
                } else {
                    q.push(m);
                }
                None
            }
        }
    }

    pub(crate) fn send_msg(&self, msg: Msg) {
        if let Msg::Sample { sample, lane } = &msg {
            let hint = std::sync::atomic::AtomicU32::new(0);
            match self.send_sample(
                &sample.key,
                &hint,
                *lane,
                sample.kind,
                &sample.payload,
                sample.timestamp,
                sample.encoding.as_deref(),
                sample.attachment.as_deref(),
                sample.source,
            ) {
                Ok(()) => {}
                Err(SendError::QueueFull) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::trace!(face = self.id, "not sent: {e}"),
            }
            return;
        }
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if backlog.is_empty() {
            match send_encoded(&mut self.lock().session, &msg, self.me) {
                Ok(()) => {
                    drop(backlog);
                    self.wake.notify_one();
                    return;
                }
                Err(SendError::QueueFull) => {}
                Err(e) => {
                    tracing::trace!(face = self.id, "not sent: {e}");
                    return;
                }
            }
        }
        if backlog.len() >= MAX_BACKLOG {
            drop(backlog);
            tracing::warn!(
                face = self.id,
                "closing: backlog of unsent control messages full"
            );
            self.lock().session.close_with(
                CloseReason::TooLarge,
                "cap: backlog of unsent messages full",
            );
        } else {
            backlog.push_back(msg);
        }
        self.wake.notify_one();
    }

    /// Messages waiting for room on a full lane (declarations, queries, replies).
    pub(crate) fn backlog_len(&self) -> usize {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Moves backlogged messages into the session while their lanes have room.
    fn drain_backlog(&self) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if backlog.is_empty() {
            return;
        }
        let mut st = self.lock();
        while let Some(m) = backlog.front() {
            match send_encoded(&mut st.session, m, self.me) {
                Ok(()) => {
                    backlog.pop_front();
                }
                Err(SendError::QueueFull) => return,
                Err(_) => {
                    backlog.clear();
                    return;
                }
            }
        }
    }

    /// Queues a sample for this neighbour. `QueueFull` means the lane is full: drop or wait.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_sample(
        &self,
        key: &Arc<str>,
        key_id_hint: &std::sync::atomic::AtomicU32,
        lane: Lane,
        kind: SampleKind,
        payload: &[u8],
        timestamp: Option<Timestamp>,
        encoding: Option<&str>,
        attachment: Option<&[u8]>,
        source: Option<SampleSource>,
    ) -> Result<(), SendError> {
        let lane = self.effective_lane(lane);
        let mut guard = self.lock();
        let st = &mut *guard;
        // Best-effort lanes may lose a declaration, so they name the key in full.
        let wkey = if lane.reliable {
            // The caller's hint came from this link's own map for this key and lane: with it,
            // no lookup at all (the common case, every put after a publisher's first).
            let hint = key_id_hint.load(Ordering::Relaxed);
            let id = if hint != 0 {
                hint
            } else {
                let slot = (key.clone(), lane.priority as u8);
                let id = match st.key_ids.get(&slot) {
                    Some(id) => *id,
                    None => {
                        let id = st.session.next_key_id();
                        st.session.send(
                            lane.priority,
                            true,
                            &NetworkMessage::Declare(Declare::KeyExpr { id, key }),
                        )?;
                        st.key_ids.insert(slot, id);
                        id
                    }
                };
                key_id_hint.store(id, Ordering::Relaxed);
                id
            };
            WireKey::Id(id)
        } else {
            WireKey::Name(key)
        };
        // The publisher and its sequence number, bound to a source id declared on the reliable
        // lane of the sample's priority (so a best-effort lane cannot lose the declaration; a
        // best-effort sample that overtakes it on a multi-stream link arrives without a
        // sequence number, never with a wrong one).
        let seq = match source {
            Some(src) => {
                let slot = (src.node, src.publisher, lane.priority as u8);
                let id = match st.src_ids.get(&slot) {
                    Some(id) => *id,
                    None => {
                        let id = st.next_src;
                        st.session.send(
                            lane.priority,
                            true,
                            &NetworkMessage::Declare(Declare::Source {
                                id,
                                node: src.node,
                                publisher: src.publisher,
                            }),
                        )?;
                        st.next_src = st.next_src.wrapping_add(1).max(1);
                        st.src_ids.insert(slot, id);
                        id
                    }
                };
                Some(hypha_core::wire::Seq {
                    src: id,
                    sn: src.sn,
                })
            }
            _ => None,
        };
        let compact = kind == SampleKind::Put
            && timestamp.is_none()
            && encoding.is_none()
            && attachment.is_none();
        let push = Push {
            key: wkey,
            kind,
            payload: RawBytes(payload),
            timestamp,
            encoding,
            attachment: attachment.map(RawBytes),
        };
        let msg = match (compact, wkey, seq) {
            (true, WireKey::Id(key_id), None) => NetworkMessage::Put(Put { key_id, payload }),
            (true, WireKey::Id(key_id), Some(seq)) => {
                NetworkMessage::PutSn(hypha_core::wire::PutSn {
                    key_id,
                    seq,
                    payload,
                })
            }
            (_, _, Some(seq)) => NetworkMessage::PushSn(hypha_core::wire::PushSn { seq, push }),
            _ => NetworkMessage::Push(push),
        };
        let was_idle = st.session.total_queued_bytes() == 0;
        let r = st.session.send(lane.priority, lane.reliable, &msg);
        drop(guard);
        if r.is_ok() && was_idle && self.write_directly() {
            self.sent.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // Wake the writer even when the lane is full: it must drain (a key declaration may have
        // just been queued ahead of this message), or a blocked publisher would wait for nothing.
        self.wake.notify_one();
        r?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The lane a sample takes on this link. A link that loses datagrams (UDP) carries samples
    /// best effort whatever the publisher asked: a reliable lane there would close the link at
    /// the first loss. Losses are counted by the receiver (and seen as gaps by subscribers of
    /// declared publishers).
    fn effective_lane(&self, lane: Lane) -> Lane {
        if self.info.reliable {
            lane
        } else {
            Lane {
                reliable: false,
                ..lane
            }
        }
    }

    /// Queues a sample for router `dst` across the backbone (this link is the first hop).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_routed_sample(
        &self,
        dst: NodeId,
        key: &str,
        lane: Lane,
        kind: SampleKind,
        payload: &[u8],
        timestamp: Option<Timestamp>,
        encoding: Option<&str>,
        attachment: Option<&[u8]>,
        source: Option<SampleSource>,
    ) -> Result<(), SendError> {
        let lane = self.effective_lane(lane);
        let body = sample_body(key, kind, payload, timestamp, encoding, attachment, source)?;
        let r = self.lock().session.send(
            lane.priority,
            lane.reliable,
            &NetworkMessage::Routed(hypha_core::wire::Routed {
                src: self.me,
                dst,
                hops: crate::net::MAX_HOPS,
                origin: source.map(|s| s.node),
                body: RawBytes(&body),
            }),
        );
        self.wake.notify_one();
        r?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn now(&self) -> hypha_core::time::Instant {
        hypha_core::time::Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Writes what the session has queued on the caller's thread, if the writer task is idle,
    /// the link can write without waiting, and no direct write happened in
    /// the last `DIRECT_GAP_US`. Returns true if everything queued went out (the writer need
    /// not be woken).
    fn write_directly(&self) -> bool {
        let now = self.now();
        if now
            .as_micros()
            .saturating_sub(self.last_direct.load(Ordering::Relaxed))
            < DIRECT_GAP_US
        {
            return false;
        }
        let Ok(mut parked) = self.parked_tx.try_lock() else {
            return false;
        };
        let Some(tx) = parked.as_mut() else {
            return false;
        };
        if !tx.can_try_send() || tx.has_pending() {
            return false;
        }
        self.last_direct.store(now.as_micros(), Ordering::Relaxed);
        let mut buf = DIRECT_BUF.with(|b| b.take());
        buf.resize(hypha_transports::MAX_BATCH, 0);
        let mut small = DIRECT_SMALL.with(|b| b.take());
        let pairs = tx.pairs_batches();
        let mut all = true;
        loop {
            let next = next_write(self, &mut buf, &mut small, pairs, |s, b| {
                s.poll_transmit(now, b)
            });
            let Some(w) = next else { break };
            let (first, second) = w.batches(&buf, &small);
            let n = first.len() + second.map_or(0, <[u8]>::len);
            let sent = match second {
                Some(second) => tx.try_send_pair(first, second),
                None => tx.try_send(first),
            };
            match sent {
                Ok(true) => {
                    give_cpu(n);
                }
                // Kept in part: the writer finishes it.
                Ok(false) => {
                    all = false;
                    break;
                }
                Err(e) => {
                    tracing::debug!(face = self.id, "direct write failed: {e}");
                    all = false;
                    break;
                }
            }
        }
        DIRECT_BUF.with(|b| b.replace(buf));
        DIRECT_SMALL.with(|b| b.replace(small));
        drop(parked);
        // The writer does not wait for this write to end (it tried the lock and went back to
        // waiting): wake it for whatever it was woken for. What was queued meanwhile woke it
        // already, and what this write left (`!all`) the caller wakes it for.
        if self.writer_waiting.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
        self.space.notify_waiters();
        self.put_room.notify_one();
        all
    }

    /// Closes the link once everything already queued on it has been written: nothing accepted
    /// for this link is lost (used when a duplicate link is replaced).
    pub(crate) fn close_when_drained(&self, reason: CloseReason) {
        *self
            .close_after_drain
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.wake.notify_one();
    }

    /// Starts an orderly close; the writer sends `Close` and shuts the link.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.lock().session.close(reason);
        self.wake.notify_one();
    }

    /// Like `close`, telling the peer why (e.g. the cap it exceeded).
    pub(crate) fn close_with(&self, reason: CloseReason, detail: &'static str) {
        self.lock().session.close_with(reason, detail);
        self.wake.notify_one();
    }

    /// The link session's counters (bytes, batches, messages each way), for the admin space
    /// and metrics (issue 14).
    pub(crate) fn stats(&self) -> hypha_core::session::Stats {
        *self.lock().session.stats()
    }

    /// Bytes waiting in this link's queues.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().session.total_queued_bytes()
    }

    /// Data messages written and not yet acknowledged by the peer.
    pub(crate) fn unacknowledged(&self) -> u64 {
        self.lock().session.unacknowledged().1
    }

    /// True once the writer has shut the link.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// True once the link is down.
    /// True if the peer closed the session with `Shutdown`: it left on purpose (a broken link
    /// is dialled again, a peer that said goodbye is not).
    pub(crate) fn peer_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        self.stop.notify_one();
        self.wake.notify_one();
        self.space.notify_waiters();
        self.put_room.notify_waiters();
    }
}

/// How long a closing link's writer may take to finish before it is stopped.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a link until it closes: handshake, then traffic. Returns the peer, if the handshake
/// completed.
pub(crate) async fn run(
    rt: Arc<Runtime>,
    link: Link,
    role: Role,
    slot: Option<super::HandshakeSlot>,
    cost: Option<u32>,
) -> Option<PeerInfo> {
    let Link { info, tx, rx } = link;
    let id = rt.next_face_id();
    let mut face = Face::new(&rt, id, info, role);
    face.cost = cost;
    let face = Arc::new(face);
    *face.slot.lock().unwrap_or_else(|p| p.into_inner()) = slot;
    tracing::debug!(face = id, remote = %face.info.remote, ?role, "link up, handshaking");
    let writer = tokio::spawn(writer(rt.clone(), face.clone(), tx));
    reader(rt.clone(), face.clone(), rx).await;
    face.kill();
    // The node learns at once that the link is down (a backbone link's LSA change and the
    // re-route must not wait for the writer's grace below: issue 10's outage).
    rt.face_closed(&face);
    // A writer blocked on a socket that takes nothing (a silent cut) is given a moment to
    // finish, then stopped: its link is dead.
    let mut writer = writer;
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
        let _ = writer.await;
        face.finished.store(true, Ordering::Release);
        face.done.notify_waiters();
    }
    // Whatever was still queued will never be sent: counted, never silent (issue 16). And
    // what was written but never acknowledged by a peer that acknowledges (the kernel's or
    // quinn's buffers when the link died silently) is counted apart: probably lost.
    let (discarded, unconfirmed) = {
        let mut st = face.lock();
        st.session.discard_queued();
        let s = st.session.stats();
        (s.tx_discarded, s.tx_unconfirmed_data)
    };
    if unconfirmed > 0 {
        rt.counters
            .dropped_unconfirmed
            .fetch_add(unconfirmed, Ordering::Relaxed);
        tracing::warn!(
            face = id,
            remote = %face.info.remote,
            "link closed with {unconfirmed} data message(s) written but never acknowledged: unconfirmed"
        );
    }
    let lost = discarded + {
        let mut backlog = face.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let n = backlog.len() as u64;
        backlog.clear();
        n
    };
    if lost > 0 {
        face.dropped.fetch_add(lost, Ordering::Relaxed);
        rt.counters
            .dropped_link_closed
            .fetch_add(lost, Ordering::Relaxed);
        tracing::warn!(
            face = id,
            remote = %face.info.remote,
            "link closed with {lost} message(s) never sent: dropped"
        );
    }
    face.peer()
}

async fn reader(rt: Arc<Runtime>, face: Arc<Face>, mut rx: LinkRx) {
    let mut ids = PeerIds::default();
    let mut incoming: Vec<Incoming> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut route_cache: Option<super::RouteCache> = None;
    let mut fixups: Vec<Fixup> = Vec::new();
    let mut reassembly_held = 0usize;
    let _release = ReassemblyRelease {
        rt: rt.clone(),
        face: face.clone(),
    };
    loop {
        // The lease is watched here too: a writer stuck on a socket that takes nothing (a
        // silent cut) never reaches the session's timers, and the lease must still expire
        // (issue 16). Keep-alives stay the writer's. So is sending acknowledgements, but the
        // reader, which received what they acknowledge, wakes the writer when one falls due
        // (the writer may be asleep until its next keep-alive).
        let due = {
            let st = face.lock();
            match (st.session.expiry(), st.session.ack_due()) {
                (Some(e), Some(a)) => Some(e.min(a)),
                (e, a) => e.or(a),
            }
        };
        let timer = async {
            match due {
                Some(t) => tokio::time::sleep_until(rt.instant_of(t)).await,
                None => std::future::pending().await,
            }
        };
        let batch = tokio::select! {
            r = rx.recv() => r,
            _ = face.stop.notified() => return,
            _ = timer => {
                let closed = {
                    let mut st = face.lock();
                    st.session.handle_timeout(rt.now());
                    // Closing (its `Close` queued behind what the socket does not take) or
                    // closed: no timer is left, the link is over.
                    st.session.poll_timeout().is_none()
                };
                face.wake.notify_one();
                if closed {
                    tracing::warn!(face = face.id, remote = %face.info.remote, "link closed: lease expired");
                    return;
                }
                continue;
            }
        };
        let wake_writer;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(face = face.id, "link closed: {e}");
                if face.peer().is_none() && face.role == Role::Dialer {
                    // Refused before the session opened (a TLS alert after the handshake):
                    // that is why the dial failed.
                    rt.note_connect_error(&face.info.remote, &e);
                }
                return;
            }
        };
        {
            let mut st = face.lock();
            st.session.handle_input(rt.now(), &batch, &mut |r| {
                convert(r, &batch, &mut ids, &mut incoming, &mut fixups)
            });
            if !fixups.is_empty() {
                // Payloads of a message reassembled from fragments: keep its buffer.
                let whole = st.session.take_reassembled().map(|v| {
                    let base = v.as_ptr() as usize;
                    (base, v.len(), Bytes::from(v))
                });
                for (index, p, len) in fixups.drain(..) {
                    let view = whole.as_ref().and_then(|(base, n, b)| {
                        let off = p.checked_sub(*base)?;
                        (off + len <= *n).then(|| b.slice(off..off + len))
                    });
                    match (incoming.get_mut(index), view) {
                        (Some(Incoming::Sample { payload, .. }), Some(v)) => *payload = v,
                        (Some(item), None) => {
                            // Cannot happen (the buffer is the one just delivered); never
                            // deliver a sample with a wrong payload.
                            tracing::warn!(face = face.id, "reassembled payload not found");
                            *item = Incoming::Other("reassembled payload not found");
                        }
                        _ => {}
                    }
                }
            }
            // Partial reassemblies count against the node-wide budget: past it, this link's
            // largest partial message is evicted (counted; on a reliable lane the link closes).
            reassembly_held = rt.account_reassembly(reassembly_held, &mut st.session);
            while let Some(e) = st.session.poll_event() {
                events.push(e);
            }
            wake_writer = st.session.wants_transmit() || !events.is_empty();
        }
        // Wake the writer only if the input left something to send (a handshake answer, a
        // close): a futile cross-thread wake per received batch costs ~12 µs of latency here.
        if wake_writer {
            face.wake.notify_one();
        }
        let mut closed = false;
        for e in events.drain(..) {
            match e {
                Event::Established { peer, .. } => {
                    let _ = face.peer.set(peer);
                    // No longer half-open: its place among those handshaking is free.
                    face.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    rt.face_established(&face);
                }
                Event::Closed { reason, by_peer } => {
                    log_close(&face, reason, by_peer);
                    closed = true;
                }
            }
        }
        // Consecutive control messages (replies of a replay, above all) go through the node
        // under one lock, so that their actions leave together: the querier is woken once
        // for a run of replies, not once per reply.
        let mut msgs = Vec::new();
        for m in incoming.drain(..) {
            if let Incoming::Auth(token) = m {
                rt.handle_msgs(&face, &mut msgs);
                rt.authenticate(&face, &token, &mut route_cache);
                continue;
            }
            match face.hold(m) {
                Some(Incoming::Msg(msg)) if msgs.len() < MSG_RUN => msgs.push(*msg),
                Some(m) => {
                    rt.handle_msgs(&face, &mut msgs);
                    rt.dispatch(&face, &mut route_cache, m);
                }
                None => {}
            }
        }
        rt.handle_msgs(&face, &mut msgs);
        if closed {
            return;
        }
    }
}

/// Control messages handled under one node lock, at most (see the reader).
const MSG_RUN: usize = 64;

/// Gives a link's partial reassemblies back to the node-wide budget when its reader ends.
struct ReassemblyRelease {
    rt: Arc<Runtime>,
    face: Arc<Face>,
}

impl Drop for ReassemblyRelease {
    fn drop(&mut self) {
        let held = self.face.lock().session.reassembly_held();
        self.rt.release_reassembly(held);
    }
}

/// Logs a session's close, and notes a peer that left (closed with `Shutdown`).
fn log_close(face: &Face, reason: CloseReason, by_peer: bool) {
    if by_peer && reason == CloseReason::Shutdown {
        face.left.store(true, Ordering::Release);
    }
    let who = if by_peer { "peer" } else { "us" };
    match reason {
        CloseReason::Shutdown | CloseReason::Duplicate => {
            tracing::debug!(face = face.id, "link closed by {who}: {reason}")
        }
        _ => {
            tracing::warn!(face = face.id, remote = %face.info.remote, "link closed by {who}: {reason}")
        }
    }
}

/// Bytes the writer writes in one go before it yields to the runtime (see its loop).
const WRITER_YIELD_EVERY: usize = 256 * 1024;

/// The writer's buffer until the handshake completes: the transport messages sent before
/// (`Init`, `Accept`, `Open`, `Close`) are a few dozen bytes. A link still handshaking (possibly
/// one of thousands of half-open connections) holds no batch-sized buffer.
const HANDSHAKE_BUF: usize = 1024;

/// What one write takes: one batch, or two (on links that pair batches).
enum Write {
    /// `buf[..n]`.
    One(usize),
    /// `small[..n]` (a small batch with nothing after it).
    Small(usize),
    /// `small[..n]` then `buf[..m]`: a small batch, then the next one.
    SmallFirst(usize, usize),
}

impl Write {
    fn batches<'a>(&self, buf: &'a [u8], small: &'a [u8]) -> (&'a [u8], Option<&'a [u8]>) {
        let get = |b: &'a [u8], n: usize| b.get(..n).unwrap_or(&[]);
        match *self {
            Write::One(n) => (get(buf, n), None),
            Write::Small(n) => (get(small, n), None),
            Write::SmallFirst(n, m) => (get(small, n), Some(get(buf, m))),
        }
    }
}

/// The session's next batch, into `buf` (grown to a whole batch once the session is open), and
/// on links that take two batches in one write (`pairs`), when it is below `PAIR_BELOW`, the
/// one after it: the small one is moved to `small` and the next polled into `buf`, so that it
/// costs no write of its own. (Pairing a large batch with a small one that follows it, the tail
/// of the same sample, was tried too: it cost 1 MiB samples 25 % of their rate, see
/// BENCHMARKS.md.) `poll` is the session's `poll_transmit` (with the caller's clock and lanes).
fn next_write(
    face: &Face,
    buf: &mut Vec<u8>,
    small: &mut Vec<u8>,
    pairs: bool,
    mut poll: impl FnMut(&mut HeapSession, &mut [u8]) -> Option<usize>,
) -> Option<Write> {
    let mut st = face.lock();
    if buf.len() < hypha_transports::MAX_BATCH && st.session.is_open() {
        buf.resize(hypha_transports::MAX_BATCH, 0);
    }
    let n = poll(&mut st.session, buf)?;
    if !pairs {
        return Some(Write::One(n));
    }
    if n < PAIR_BELOW {
        small.clear();
        small.extend_from_slice(buf.get(..n).unwrap_or(&[]));
        return Some(match poll(&mut st.session, buf) {
            Some(m) => Write::SmallFirst(n, m),
            None => Write::Small(n),
        });
    }
    Some(Write::One(n))
}

/// The writer stops without a close handshake (its link failed, or it lost the sending half):
/// the face is dead, and whoever waits for the writer is told.
fn writer_gone(face: &Face) {
    face.kill();
    face.finished.store(true, Ordering::Release);
    face.done.notify_waiters();
}

/// Sleeps until the session's next deadline (forever without one).
async fn sleep_until(rt: &Runtime, deadline: Option<hypha_core::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(rt.instant_of(t)).await,
        None => std::future::pending().await,
    }
}

async fn writer(rt: Arc<Runtime>, face: Arc<Face>, tx: LinkTx) {
    let mut buf = vec![0u8; HANDSHAKE_BUF];
    let mut held = Some(tx);
    loop {
        // Take the sending half back from where idle publishers could use it. A publisher
        // writing directly holds it meanwhile: do not block this worker on that (it would hold
        // the runtime's other tasks, a RealTime reply's reader among them, for as long as the
        // publisher writes); the publisher wakes this task when it leaves anything queued.
        let tx = match held.take() {
            Some(tx) => Some(tx),
            None => {
                // Raised before trying: a publisher that holds the lock sees it when it lets
                // go, and wakes this task (whatever it was woken for: a close, a timeout).
                face.writer_waiting.store(true, Ordering::SeqCst);
                let parked = match face.parked_tx.try_lock() {
                    Ok(mut parked) => Some(parked.take()),
                    Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().take()),
                    Err(std::sync::TryLockError::WouldBlock) => None,
                };
                let Some(parked) = parked else {
                    let deadline = face.lock().session.poll_timeout();
                    tokio::select! {
                        _ = face.wake.notified() => {}
                        _ = sleep_until(&rt, deadline) => face.lock().session.handle_timeout(rt.now()),
                    }
                    continue;
                };
                face.writer_waiting.store(false, Ordering::SeqCst);
                parked
            }
        };
        let Some(mut tx) = tx else {
            tracing::debug!(face = face.id, "writer lost its link");
            writer_gone(&face);
            return;
        };
        // Finish a batch a publisher's direct write left half-written, then drain everything
        // queued, one batch per write.
        let mut failed = tx.flush().await.err();
        let mut since_yield = 0usize;
        let mut small = Vec::new();
        while failed.is_none() {
            face.drain_backlog();
            let skip = tx.blocked_lanes();
            let pairs = tx.pairs_batches();
            let next = next_write(&face, &mut buf, &mut small, pairs, |s, b| {
                s.poll_transmit_except(rt.now(), b, skip)
            });
            face.space.notify_waiters();
            face.put_room.notify_one();
            let Some(w) = next else { break };
            let (first, second) = w.batches(&buf, &small);
            let n = first.len() + second.map_or(0, <[u8]>::len);
            failed = match second {
                Some(second) => tx.send_pair(first, second).await,
                None => tx.send(first).await,
            }
            .err();
            give_cpu(n);
            // A socket that keeps taking batches (loopback, a fast LAN) would keep this task on
            // its worker for as long as publishers keep the queues full, and the runtime's I/O
            // driver (the links' readers) unpolled meanwhile: let it run every 256 KiB.
            since_yield += n;
            if since_yield >= WRITER_YIELD_EVERY {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        if let Some(e) = failed {
            tracing::debug!(face = face.id, "write failed: {e}");
            writer_gone(&face);
            return;
        }
        let drained_close = face
            .close_after_drain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reason) = drained_close {
            face.lock().session.close(reason);
            held = Some(tx);
            continue;
        }
        let (closed, deadline) = {
            let mut st = face.lock();
            let mut closed = st.session.is_closed();
            while let Some(e) = st.session.poll_event() {
                if let Event::Closed { reason, by_peer } = e {
                    log_close(&face, reason, by_peer);
                    closed = true;
                }
            }
            (closed, st.session.poll_timeout())
        };
        if closed || face.is_dead() {
            // Flush what the close queued, then shut the link and stop the reader.
            while let Some(w) = next_write(&face, &mut buf, &mut small, false, |s, b| {
                s.poll_transmit(rt.now(), b)
            }) {
                let (batch, _) = w.batches(&buf, &small);
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            // The neighbour is gone for the tables now (its tokens vanish at once), not after
            // the transport's own goodbye, which may wait for an unresponsive peer.
            face.kill();
            rt.face_closed(&face);
            tx.close().await;
            face.finished.store(true, Ordering::Release);
            face.done.notify_waiters();
            return;
        }
        let sleep = sleep_until(&rt, deadline);
        if tx.blocked_lanes() != 0 {
            // Some lane's stream is full: wait for it, for news or for a timer, holding the
            // link (only stream links are written by publishers directly).
            tokio::select! {
                r = tx.progress() => {
                    if let Err(e) = r {
                        tracing::debug!(face = face.id, "write failed: {e}");
                        writer_gone(&face);
                        return;
                    }
                }
                _ = face.wake.notified() => {}
                _ = sleep => face.lock().session.handle_timeout(rt.now()),
            }
            held = Some(tx);
            continue;
        }
        // Idle: park the sending half so that a publisher can write at once itself.
        *face.parked_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        tokio::select! {
            _ = face.wake.notified() => {}
            _ = sleep => face.lock().session.handle_timeout(rt.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread gives up its CPU once per 64 KiB written, whatever the write sizes: 8 B batches
    /// do not make a syscall each, and a 1 MiB burst of 64 KiB fragments yields after each.
    #[test]
    fn give_cpu_yields_once_per_64_kib_written() {
        std::thread::spawn(|| {
            let small = (0..(4 * OS_YIELD_EVERY / 8))
                .filter(|_| give_cpu(8))
                .count();
            assert_eq!(small, 4);
            let frags = (0..16).filter(|_| give_cpu(OS_YIELD_EVERY)).count();
            assert_eq!(frags, 16);
            assert!(!give_cpu(OS_YIELD_EVERY - 1));
            assert!(give_cpu(1));
            assert!(give_cpu(usize::MAX), "no overflow");
        })
        .join()
        .unwrap();
    }
}
