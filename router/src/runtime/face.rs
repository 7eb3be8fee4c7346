//! One link to a neighbour: its session state machine and its two driver tasks.
//!
//! The reader task receives batches, feeds them to the session and dispatches what they carry;
//! the writer task drains the session's lane queues into batches and writes them, and runs the
//! session's timers. Publishers enqueue directly into the session (a short lock), so whatever
//! accumulates while the writer is busy goes out together in the next batch, and a lone message
//! goes out at once. Reader and writer are separate tasks so that a link blocked on writing
//! never stops reading (no deadlock when both sides' socket buffers are full).

use super::Runtime;
use crate::routing::FaceId;
use bytes::Bytes;
use hypha_core::hlc::Timestamp;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::session::{
    Config as SessionConfig, Event, HeapSession, PeerInfo, Received, Role, SendError,
};
use hypha_core::wire::{
    CloseReason, Declare, NetworkMessage, Priority, Push, Put, RawBytes, SampleKind, WireKey,
};
use hypha_transports::{Link, LinkInfo, LinkRecv, LinkRx, LinkSend, LinkTx};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;

/// Queries and replies travel on their own lane, so they never block publications.
pub(crate) const QUERY_LANE: Priority = Priority::InteractiveLow;

/// Quality of service of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lane {
    pub priority: Priority,
    pub reliable: bool,
}

struct FaceState {
    session: HeapSession,
    /// Key ids we declared on this link, per key and lane (a declaration travels on the lane
    /// that uses it, so it can never be overtaken by its first use on a multi-stream link).
    key_ids: HashMap<(Arc<str>, u8), u32>,
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
    /// Fired when the writer has drained queues: blocked publishers retry.
    pub space: Notify,
    /// Stops the reader.
    stop: Notify,
    dead: AtomicBool,
    /// A close to make once everything queued has been written (a replaced duplicate link).
    close_after_drain: Mutex<Option<CloseReason>>,
    /// Set when the writer has shut the link (the transport's goodbye is done).
    finished: AtomicBool,
    /// Fired with `finished`.
    pub done: Notify,
    /// Messages dropped for this destination (queue full under `Drop`, or `Block` timed out).
    pub dropped: AtomicU64,
    /// Messages queued for this destination.
    pub sent: AtomicU64,
    /// Samples received from this neighbour.
    pub received: AtomicU64,
}

/// What a batch carried, owned, dispatched after the session lock is released.
pub(crate) enum Incoming {
    /// A publication. Kept small (the rare extras are boxed): a batch of 8-byte puts carries
    /// thousands of these, and moving fat enums around showed up as a quarter of the receiver's
    /// time.
    Sample {
        key: Arc<str>,
        kind: SampleKind,
        payload: Bytes,
        extra: Option<Box<Extra>>,
    },
    Subscriber(u32, OwnedKeyExpr),
    Unsubscriber(u32),
    Queryable(u32, OwnedKeyExpr, bool),
    Unqueryable(u32),
    Token(u32, OwnedKeyExpr),
    Untoken(u32),
    /// A node and where it listens.
    Gossip(hypha_core::id::NodeId, Vec<hypha_transports::Endpoint>),
    Request {
        id: u32,
        key: OwnedKeyExpr,
        parameters: String,
        target: hypha_core::wire::QueryTarget,
        payload: Option<Bytes>,
        attachment: Option<Bytes>,
    },
    Reply(
        u32,
        Result<crate::api::Sample, crate::api::query::ErrorReply>,
    ),
    ReplyFinal(u32),
    /// Anything else (queries and replies arrive with their own issue).
    Other(&'static str),
}

/// Timestamp, encoding and attachment of a sample, when it has any.
pub(crate) struct Extra {
    pub timestamp: Option<Timestamp>,
    pub encoding: Option<Arc<str>>,
    pub attachment: Option<Bytes>,
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

fn resolve(keys: &HashMap<u32, Arc<str>>, k: WireKey<'_>) -> Option<Arc<str>> {
    match k {
        WireKey::Id(id) => keys.get(&id).cloned(),
        WireKey::Name(n) => Some(Arc::from(n)),
    }
}

fn owned(keys: &HashMap<u32, Arc<str>>, k: WireKey<'_>) -> Option<OwnedKeyExpr> {
    resolve(keys, k).and_then(|s| OwnedKeyExpr::new(s.to_string()).ok())
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
    keys: &mut HashMap<u32, Arc<str>>,
    out: &mut Vec<Incoming>,
    fixups: &mut Vec<Fixup>,
) {
    // The hot path (compact puts) reads the message in place rather than copying it.
    if let NetworkMessage::Put(p) = &r.msg {
        let index = out.len();
        out.push(match keys.get(&p.key_id) {
            Some(k) => Incoming::Sample {
                key: k.clone(),
                kind: SampleKind::Put,
                payload: payload_of(batch, p.payload, index, fixups),
                extra: None,
            },
            None => Incoming::Other("put on an undeclared key id"),
        });
        return;
    }
    let item = match r.msg {
        NetworkMessage::Put(p) => match keys.get(&p.key_id) {
            Some(k) => Incoming::Sample {
                key: k.clone(),
                kind: SampleKind::Put,
                payload: bytes_of(batch, p.payload),
                extra: None,
            },
            None => Incoming::Other("put on an undeclared key id"),
        },
        NetworkMessage::Push(p) => match resolve(keys, p.key) {
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
            },
            None => Incoming::Other("push on an undeclared key id"),
        },
        NetworkMessage::Declare(d) => match d {
            Declare::KeyExpr { id, key } => {
                keys.insert(id, Arc::from(key));
                return;
            }
            Declare::UndeclareKeyExpr { id } => {
                keys.remove(&id);
                return;
            }
            Declare::Subscriber { id, key } => match owned(keys, key) {
                Some(k) => Incoming::Subscriber(id, k),
                None => Incoming::Other("subscriber on an undeclared key id"),
            },
            Declare::UndeclareSubscriber { id } => Incoming::Unsubscriber(id),
            Declare::Queryable { id, key, complete } => match owned(keys, key) {
                Some(k) => Incoming::Queryable(id, k, complete),
                None => Incoming::Other("queryable on an undeclared key id"),
            },
            Declare::UndeclareQueryable { id } => Incoming::Unqueryable(id),
            Declare::Token { id, key } => match owned(keys, key) {
                Some(k) => Incoming::Token(id, k),
                None => Incoming::Other("token on an undeclared key id"),
            },
            Declare::UndeclareToken { id } => Incoming::Untoken(id),
            _ => Incoming::Other("interest"),
        },
        NetworkMessage::Gossip(g) => Incoming::Gossip(
            g.node_id,
            g.locators
                .split(',')
                .filter_map(|l| l.parse().ok())
                .take(hypha_transports::discovery::MAX_ENDPOINTS)
                .collect(),
        ),
        NetworkMessage::Request(q) => match owned(keys, q.key) {
            Some(key) => Incoming::Request {
                id: q.id,
                key,
                parameters: q.parameters.to_string(),
                target: q.target,
                payload: q.payload.map(|p| bytes_of(batch, p.0)),
                attachment: q.attachment.map(|a| bytes_of(batch, a.0)),
            },
            None => Incoming::Other("request on an undeclared key id"),
        },
        NetworkMessage::Response(r) => match r.body {
            hypha_core::wire::ReplyBody::Sample(p) => match resolve(keys, p.key) {
                Some(key) => Incoming::Reply(
                    r.request_id,
                    Ok(crate::api::Sample {
                        key,
                        payload: bytes_of(batch, p.payload.0),
                        kind: p.kind,
                        timestamp: p.timestamp,
                        encoding: p.encoding.map(Arc::from),
                        attachment: p.attachment.map(|a| bytes_of(batch, a.0)),
                    }),
                ),
                None => Incoming::Other("reply on an undeclared key id"),
            },
            hypha_core::wire::ReplyBody::Err { payload, encoding } => Incoming::Reply(
                r.request_id,
                Err(crate::api::query::ErrorReply {
                    payload: bytes_of(batch, payload.0),
                    encoding: encoding.map(Arc::from),
                }),
            ),
        },
        NetworkMessage::ResponseFinal(f) => Incoming::ReplyFinal(f.request_id),
    };
    out.push(item);
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
        let session = HeapSession::new(cfg, role, rt.now(), rt.random_u64());
        Face {
            id,
            info,
            role,
            peer: OnceLock::new(),
            state: Mutex::new(FaceState {
                session,
                key_ids: HashMap::new(),
            }),
            wake: Notify::new(),
            space: Notify::new(),
            stop: Notify::new(),
            dead: AtomicBool::new(false),
            close_after_drain: Mutex::new(None),
            finished: AtomicBool::new(false),
            done: Notify::new(),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// The neighbour, once the handshake completed.
    pub fn peer(&self) -> Option<PeerInfo> {
        self.peer.get().copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a declaration on the reliable control lane.
    pub fn send_declare(&self, d: Declare<'_>) {
        let r = self
            .lock()
            .session
            .send(Priority::Control, true, &NetworkMessage::Declare(d));
        match r {
            Ok(()) => self.wake.notify_one(),
            Err(SendError::Closed | SendError::NotOpen) => {}
            Err(e) => tracing::warn!(face = self.id, "declaration not sent: {e}"),
        }
    }

    /// Queues a sample for this neighbour. `QueueFull` means the lane is full: drop or wait.
    #[allow(clippy::too_many_arguments)]
    pub fn send_sample(
        &self,
        key: &Arc<str>,
        key_id_hint: &std::sync::atomic::AtomicU32,
        lane: Lane,
        kind: SampleKind,
        payload: &[u8],
        timestamp: Option<Timestamp>,
        encoding: Option<&str>,
        attachment: Option<&[u8]>,
    ) -> Result<(), SendError> {
        let mut st = self.lock();
        let st = &mut *st;
        // Best-effort lanes may lose a declaration, so they name the key in full.
        let wkey = if lane.reliable {
            let hint = key_id_hint.load(Ordering::Relaxed);
            let slot = (key.clone(), lane.priority as u8);
            let id = match (hint, st.key_ids.get(&slot)) {
                // The caller's hint came from this link's own map for this key and lane.
                (h, _) if h != 0 => h,
                (_, Some(id)) => *id,
                (_, None) => {
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
            WireKey::Id(id)
        } else {
            WireKey::Name(key)
        };
        let compact = kind == SampleKind::Put
            && timestamp.is_none()
            && encoding.is_none()
            && attachment.is_none();
        let msg = match (compact, wkey) {
            (true, WireKey::Id(key_id)) => NetworkMessage::Put(Put { key_id, payload }),
            _ => NetworkMessage::Push(Push {
                key: wkey,
                kind,
                payload: RawBytes(payload),
                timestamp,
                encoding,
                attachment: attachment.map(RawBytes),
            }),
        };
        let r = st.session.send(lane.priority, lane.reliable, &msg);
        // Wake the writer even when the lane is full: it must drain (a key declaration may have
        // just been queued ahead of this message), or a blocked publisher would wait for nothing.
        self.wake.notify_one();
        r?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues any network message on the reliable control lane.
    pub fn send_control(&self, msg: &NetworkMessage<'_>) {
        if self
            .lock()
            .session
            .send(Priority::Control, true, msg)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Queues `msg` on `lane`, waiting for room (never dropping); `false` if the link is gone.
    async fn send_waiting(&self, priority: Priority, msg: &NetworkMessage<'_>) -> bool {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let r = self.lock().session.send(priority, true, msg);
            match r {
                Ok(()) => {
                    self.wake.notify_one();
                    return true;
                }
                Err(SendError::QueueFull) if !self.is_dead() => space.await,
                Err(_) => return false,
            }
        }
    }

    /// Sends a query to this neighbour.
    pub async fn send_request(&self, req: &hypha_core::wire::Request<'_>) -> bool {
        self.send_waiting(QUERY_LANE, &NetworkMessage::Request(*req))
            .await
    }

    /// Sends one reply; waits for room rather than drop it.
    pub async fn send_reply(
        &self,
        request_id: u32,
        r: Result<crate::api::Sample, crate::api::query::ErrorReply>,
    ) -> bool {
        use hypha_core::wire::{ReplyBody, Response};
        let body = match &r {
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
        self.send_waiting(
            QUERY_LANE,
            &NetworkMessage::Response(Response { request_id, body }),
        )
        .await
    }

    /// Tells the querier this node is done with its query (after every reply, same lane).
    pub fn send_response_final(self: &Arc<Self>, request_id: u32) {
        let msg = NetworkMessage::ResponseFinal(hypha_core::wire::ResponseFinal { request_id });
        let r = self.lock().session.send(QUERY_LANE, true, &msg);
        match r {
            Ok(()) => self.wake.notify_one(),
            Err(SendError::QueueFull) => {
                let face = self.clone();
                tokio::spawn(async move {
                    face.send_waiting(QUERY_LANE, &msg).await;
                });
            }
            Err(_) => {}
        }
    }

    /// Closes the link once everything already queued on it has been written: nothing accepted
    /// for this link is lost (used when a duplicate link is replaced).
    pub fn close_when_drained(&self, reason: CloseReason) {
        *self
            .close_after_drain
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.wake.notify_one();
    }

    /// Starts an orderly close; the writer sends `Close` and shuts the link.
    pub fn close(&self, reason: CloseReason) {
        self.lock().session.close(reason);
        self.wake.notify_one();
    }

    /// Bytes waiting in this link's queues.
    pub fn queued_bytes(&self) -> usize {
        self.lock().session.total_queued_bytes()
    }

    /// True once the writer has shut the link.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// True once the link is down.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        self.stop.notify_one();
        self.wake.notify_one();
        self.space.notify_waiters();
    }
}

/// Runs a link until it closes: handshake, then traffic. Returns the peer, if the handshake
/// completed.
pub(crate) async fn run(rt: Arc<Runtime>, link: Link, role: Role) -> Option<PeerInfo> {
    let Link { info, tx, rx } = link;
    let id = rt.next_face_id();
    let face = Arc::new(Face::new(&rt, id, info, role));
    tracing::debug!(face = id, remote = %face.info.remote, ?role, "link up, handshaking");
    let writer = tokio::spawn(writer(rt.clone(), face.clone(), tx));
    reader(rt.clone(), face.clone(), rx).await;
    face.kill();
    let _ = writer.await;
    rt.face_closed(&face);
    face.peer()
}

async fn reader(rt: Arc<Runtime>, face: Arc<Face>, mut rx: LinkRx) {
    let mut keys: HashMap<u32, Arc<str>> = HashMap::new();
    let mut incoming: Vec<Incoming> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut route_cache: Option<super::RouteCache> = None;
    let mut fixups: Vec<Fixup> = Vec::new();
    loop {
        let batch = tokio::select! {
            r = rx.recv() => r,
            _ = face.stop.notified() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(face = face.id, "link closed: {e}");
                return;
            }
        };
        {
            let mut st = face.lock();
            st.session.handle_input(rt.now(), &batch, &mut |r| {
                convert(r, &batch, &mut keys, &mut incoming, &mut fixups)
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
            while let Some(e) = st.session.poll_event() {
                events.push(e);
            }
        }
        face.wake.notify_one();
        let mut closed = false;
        for e in events.drain(..) {
            match e {
                Event::Established { peer, .. } => {
                    let _ = face.peer.set(peer);
                    if !rt.face_established(&face) {
                        face.close(CloseReason::Duplicate);
                    }
                }
                Event::Closed { reason, by_peer } => {
                    log_close(&face, reason, by_peer);
                    closed = true;
                }
            }
        }
        for m in incoming.drain(..) {
            match m {
                Incoming::Sample {
                    key,
                    kind,
                    payload,
                    extra,
                } => rt.deliver_remote_sample(&face, &mut route_cache, key, kind, payload, extra),
                other => rt.dispatch(&face, other),
            }
        }
        if closed {
            return;
        }
    }
}

fn log_close(face: &Face, reason: CloseReason, by_peer: bool) {
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

async fn writer(rt: Arc<Runtime>, face: Arc<Face>, mut tx: LinkTx) {
    let mut buf = vec![0u8; hypha_transports::MAX_BATCH];
    loop {
        // Drain everything queued, one batch per write.
        loop {
            let n = face.lock().session.poll_transmit(rt.now(), &mut buf);
            face.space.notify_waiters();
            let Some(n) = n else { break };
            if let Err(e) = tx.send(&buf[..n]).await {
                tracing::debug!(face = face.id, "write failed: {e}");
                face.kill();
                face.finished.store(true, Ordering::Release);
                face.done.notify_waiters();
                return;
            }
        }
        let drained_close = face
            .close_after_drain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reason) = drained_close {
            face.lock().session.close(reason);
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
            loop {
                let n = face.lock().session.poll_transmit(rt.now(), &mut buf);
                let Some(n) = n else { break };
                if tx.send(&buf[..n]).await.is_err() {
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
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(rt.instant_of(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = face.wake.notified() => {}
            _ = sleep => face.lock().session.handle_timeout(rt.now()),
        }
    }
}
