//! The runtime: tokio glue that executes what the node core ([`crate::net`]) decides.
//!
//! It owns the link drivers ([`face`]), listeners and dialing, discovery and gossip, the clock
//! and randomness, and the registry that maps the core's [`LocalId`]s to the API's delivery
//! ends ([`LocalSink`]). It decides nothing about routing: every declaration, interest, query
//! and reply goes through [`Node`], and samples follow the [`Route`]s the node computed (cached
//! here until they go stale).

pub(crate) mod face;

use crate::config::Config;
use crate::net::{
    Action, Cmd, FaceId, FaceKind, Lane, LocalId, Msg, Node, NodeConfig, QueryId, QueryParams,
    Route,
};
use crate::sample::{ErrorReply, Reply, Sample};
use bytes::Bytes;
use face::{Face, Incoming};
use hypha_core::hlc::{Hlc, Ntp64, Timestamp};
use hypha_core::id::NodeId;
use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
use hypha_core::session::{Role, SendError};
use hypha_core::wire::{Mode, SampleKind};
use hypha_transports::{Endpoint, Listener};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How a publisher reacts when a destination's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// Drop the message for that destination (and count it). Other destinations are unaffected.
    #[default]
    Drop,
    /// Wait for room, up to the configured bound (`queues.block_ms`), then drop and count.
    /// Only publishers to the congested destination wait.
    Block,
}

/// Publication options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qos {
    /// Priority lane.
    pub priority: hypha_core::wire::Priority,
    /// Reliable (default) or best effort.
    pub reliable: bool,
    /// Drop (default) or block when a destination is congested.
    pub congestion: CongestionControl,
}

impl Default for Qos {
    fn default() -> Self {
        Qos {
            priority: hypha_core::wire::Priority::Data,
            reliable: true,
            congestion: CongestionControl::Drop,
        }
    }
}

/// The delivery end of a local declaration (the API implements it).
pub(crate) trait LocalSink: Send + Sync {
    /// A sample (or liveliness change) for a subscriber.
    fn deliver(&self, sample: Sample);
    /// A query for a queryable.
    fn query(&self, _query: IncomingQuery) {}
}

/// A query handed to local queryables. Cheap to clone; when the last clone of its
/// [`Responder`] drops, the node is told that this node's queryables are done.
#[derive(Clone)]
pub(crate) struct IncomingQuery {
    pub(crate) key: OwnedKeyExpr,
    pub(crate) parameters: Arc<str>,
    pub(crate) payload: Option<Bytes>,
    pub(crate) attachment: Option<Bytes>,
    pub(crate) responder: Arc<Responder>,
}

/// Replies to one query on behalf of the local queryables.
pub(crate) struct Responder {
    rt: Arc<Runtime>,
    qid: QueryId,
}

impl Responder {
    /// The runtime the replies go through (its configuration's limits apply to them).
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Sends one reply; `false` if the query is over (its querier left or it timed out).
    pub(crate) fn reply(&self, result: Result<Sample, ErrorReply>) -> bool {
        self.rt.with_node(|n, now| {
            let alive = n.query_alive(self.qid);
            if alive {
                n.handle_local(
                    now,
                    Cmd::Reply {
                        query: self.qid,
                        result,
                    },
                );
            }
            alive
        })
    }

    /// Sends every one of `samples` as a reply under one node lock; `false` if the query is
    /// over.
    pub(crate) fn reply_all(&self, samples: Vec<Sample>) -> bool {
        self.rt.with_node(|n, now| {
            let alive = n.query_alive(self.qid);
            if alive {
                for s in samples {
                    n.handle_local(
                        now,
                        Cmd::Reply {
                            query: self.qid,
                            result: Ok(s),
                        },
                    );
                }
            }
            alive
        })
    }

    /// Waits while the link the replies leave on has more than [`REPLY_BACKLOG`] messages
    /// waiting for room (it drains as the querier reads), or until it is gone.
    pub(crate) async fn room(&self) {
        let link = self
            .rt
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query_link(self.qid);
        let Some(face) = link.and_then(|id| self.rt.face(id)) else {
            return;
        };
        while face.backlog_len() > REPLY_BACKLOG && !face.is_dead() {
            let space = face.space.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), space).await;
        }
    }
}

/// Replies a link may hold waiting for room before a replying queryable is made to wait (the
/// link's own cap, which closes it, is far above).
const REPLY_BACKLOG: usize = 4_096;

impl Drop for Responder {
    fn drop(&mut self) {
        let qid = self.qid;
        self.rt
            .with_node(|n, now| n.handle_local(now, Cmd::ReplyFinal { query: qid }));
    }
}

/// A publisher's (or a reader's) resolved route: the node's [`Route`] with its local
/// subscribers and links looked up, so that a publication touches neither the node nor the
/// registries. Valid while `route.is_stale()` is false.
pub(crate) struct Resolved {
    pub route: Arc<Route>,
    pub locals: Vec<Arc<dyn LocalSink>>,
    /// Links, each with the key id it declared for the publisher's key and lane (0 until known).
    pub faces: Vec<(Arc<Face>, std::sync::atomic::AtomicU32)>,
    /// Remote routers across the backbone: (the first-hop link, the router).
    pub routed: Vec<(Arc<Face>, hypha_core::id::NodeId)>,
    /// The `[metrics] prefixes` counters this key falls under, matched once when the route is
    /// resolved: a sample only adds to these atomics (empty unless prefixes are configured).
    pub prefixes: Vec<Arc<PrefixCounter>>,
}

impl Resolved {
    /// Sends a sample's copies for remote routers, each through its first hop; a full first hop
    /// drops its copy (never blocks), counted on that link. Returns the copies dropped.
    #[allow(clippy::too_many_arguments)]
    fn send_routed(
        &self,
        key: &str,
        lane: Lane,
        kind: SampleKind,
        payload: &[u8],
        timestamp: Option<Timestamp>,
        encoding: Option<&str>,
        attachment: Option<&[u8]>,
        source: Option<crate::sample::SampleSource>,
    ) -> u64 {
        let mut dropped = 0;
        for (face, dst) in &self.routed {
            if let Err(SendError::QueueFull) = face.send_routed_sample(
                *dst, key, lane, kind, payload, timestamp, encoding, attachment, source,
            ) {
                face.dropped.fetch_add(1, Ordering::Relaxed);
                dropped += 1;
            }
        }
        dropped
    }
}

/// One `[metrics] prefixes` entry: samples and payload bytes published here or received from
/// neighbours on keys intersecting `expr` (`hypha_prefix_{samples,bytes}_total{prefix}`), and
/// the copies of them this node dropped for a full link (`hypha_prefix_dropped_total{prefix}`:
/// one per link that missed the sample).
#[derive(Debug)]
pub(crate) struct PrefixCounter {
    pub expr: String,
    pub samples: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
}

impl PrefixCounter {
    fn count(&self, payload: usize) {
        self.samples.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(payload as u64, Ordering::Relaxed);
    }
}

/// Adds `n` drops to each of a route's prefix counters.
fn count_prefix_drops(prefixes: &[Arc<PrefixCounter>], n: u64) {
    if n > 0 {
        for p in prefixes {
            p.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Most alternate routers a client keeps from what its routers told it.
const MAX_ALTERNATES: usize = 3;

/// Links accepted and still handshaking.
#[derive(Default)]
struct Handshaking {
    total: usize,
    per_source: HashMap<std::net::IpAddr, usize>,
}

/// One accepted link's place among those handshaking; freed when the handshake completes or
/// the link goes (dropped).
pub(crate) struct HandshakeSlot {
    rt: std::sync::Weak<Runtime>,
    source: Option<std::net::IpAddr>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let Some(rt) = self.rt.upgrade() else { return };
        let mut h = rt.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(ip) = self.source {
            if let Some(n) = h.per_source.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    h.per_source.remove(&ip);
                }
            }
        }
    }
}

/// A publication on its way out.
pub(crate) struct Outgoing {
    pub(crate) key: Arc<str>,
    pub(crate) kind: SampleKind,
    pub(crate) payload: Bytes,
    pub(crate) timestamp: Option<Timestamp>,
    pub(crate) encoding: Option<Arc<str>>,
    pub(crate) attachment: Option<Bytes>,
    pub(crate) source: Option<crate::sample::SampleSource>,
}

impl Outgoing {
    fn send_on(
        &self,
        face: &Face,
        key_id: &std::sync::atomic::AtomicU32,
        lane: Lane,
    ) -> Result<(), SendError> {
        face.send_sample(
            &self.key,
            key_id,
            lane,
            self.kind,
            &self.payload,
            self.timestamp,
            self.encoding.as_deref(),
            self.attachment.as_deref(),
            self.source,
        )
    }

    fn sample(&self) -> Sample {
        Sample {
            key: self.key.clone(),
            payload: self.payload.clone(),
            kind: self.kind,
            timestamp: self.timestamp,
            encoding: self.encoding.clone(),
            attachment: self.attachment.clone(),
            source: self.source,
        }
    }
}

/// What a publication did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PublishOutcome {
    pub(crate) destinations: usize,
    pub(crate) dropped: u64,
}

/// A `Block` publication that found links full: which ones, and what it did elsewhere.
pub(crate) struct Blocked {
    sample: Outgoing,
    lane: Lane,
    faces: Vec<usize>,
    partial: PublishOutcome,
}

/// The last route used by a link's reader: key and resolved route.
pub(crate) type RouteCache = (Arc<str>, Arc<Resolved>);

/// Counters of the node.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub delivered_local: AtomicU64,
    pub received_remote: AtomicU64,
    pub dropped: AtomicU64,
    /// Messages queued on a link that closed before they were sent (a blackout that expired
    /// the lease, a broken link): lost, and counted here (issue 16).
    pub dropped_link_closed: AtomicU64,
    /// Data messages written to a link that ended without the peer acknowledging them (a
    /// silent cut: they sat in the kernel's or quinn's buffers): probably lost (issue 16).
    pub dropped_unconfirmed: AtomicU64,
    pub undeliverable: AtomicU64,
    /// Samples refused by a face's ingress hooks.
    pub denied: AtomicU64,
    /// Samples forwarded from one face to another (routers, peers serving clients).
    pub forwarded: AtomicU64,
    /// Accepted links closed at once because too many were handshaking.
    pub refused_handshaking: AtomicU64,
    /// Partial messages evicted for the node-wide reassembly budget.
    pub reassembly_evicted: AtomicU64,
    /// Access-control refusals neighbours told us of.
    pub denials_received: AtomicU64,
    /// Links refused for their identity (no credential with `require_auth`, a node id not
    /// bound to the key, an unusable certificate).
    pub refused_identity: AtomicU64,
    /// Links refused because another link to the same node was up (the duplicate rule: the
    /// one dialled by the smaller id stays), or because they led back to this node.
    pub refused_duplicate: AtomicU64,
}

/// How long a listener holding pre-shared tokens waits for a dialer's credential.
const AUTH_WAIT: Duration = Duration::from_secs(2);

/// Local declarations whose refusal is remembered (beyond, refusals are still counted and
/// broadcast).
const MAX_DENIALS: usize = 4_096;

/// Actions waiting to be executed outside the node's lock, in the order the node produced them.
/// Whoever finds nobody draining drains; a delivery that re-enters the session (a callback
/// that publishes) only appends, so nothing deadlocks and nothing is reordered.
#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<Action>>,
    draining: AtomicBool,
}

pub(crate) struct Runtime {
    /// This runtime, weakly (handed to responders of local queryables).
    me: std::sync::Weak<Runtime>,
    id: NodeId,
    config: Config,
    node: Mutex<Node>,
    /// Link drivers by face id.
    faces: RwLock<HashMap<FaceId, Arc<Face>>>,
    /// Delivery ends of local declarations.
    sinks: RwLock<HashMap<LocalId, Arc<dyn LocalSink>>>,
    /// Local queries waiting for replies.
    queriers: Mutex<HashMap<QueryId, mpsc::UnboundedSender<Reply>>>,
    /// Local declarations that are ready.
    ready: Mutex<HashSet<LocalId>>,
    outbox: Outbox,
    /// Fired whenever declarations, faces or readiness change.
    changed: Notify,
    /// Wakes the timer task (a query with an earlier deadline).
    timer: Notify,
    hlc: Mutex<Hlc>,
    start_std: std::time::Instant,
    start_tokio: tokio::time::Instant,
    listening: Mutex<Vec<Endpoint>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    counters: Counters,
    /// `[metrics] prefixes`, in configured order (read by `metrics.rs`).
    prefixes: Vec<Arc<PrefixCounter>>,
    next_face: AtomicU64,
    /// The dialer of discovered peers (when mDNS is on).
    dialer: std::sync::OnceLock<hypha_transports::dialer::Dialer>,
    /// Last known endpoints of discovered peers.
    known: Mutex<HashMap<NodeId, Vec<Endpoint>>>,
    /// A client's alternate routers, learnt from its routers (newest first).
    alternates: Mutex<Vec<Endpoint>>,
    /// Nodes with a dialled link still handshaking (not dialled again meanwhile).
    connecting: Mutex<HashSet<NodeId>>,
    /// Accepted links still handshaking.
    handshaking: Mutex<Handshaking>,
    /// Bytes held in partial reassemblies by all links.
    reassembly: AtomicUsize,
    /// Why the last dial of a configured endpoint failed (for `Session::connect_error`).
    last_connect_error: Mutex<Option<String>>,
    /// The access-control rules in force (identities and tokens are judged by them).
    acl: RwLock<Option<Arc<crate::acl::Acl>>>,
    /// Local declarations a neighbour's access control refused.
    denials: Mutex<HashMap<LocalId, Arc<crate::acl::AccessDenied>>>,
    /// Every refusal a neighbour tells us of.
    denial_tx: tokio::sync::broadcast::Sender<Arc<crate::acl::AccessDenied>>,
}

/// hypha-core's log shim, forwarded to `tracing` under the target `hypha_core`.
fn core_log(level: hypha_core::log::Level, args: std::fmt::Arguments<'_>) {
    use hypha_core::log::Level;
    match level {
        Level::Trace => tracing::trace!(target: "hypha_core", "{args}"),
        Level::Debug => tracing::debug!(target: "hypha_core", "{args}"),
        Level::Info => tracing::info!(target: "hypha_core", "{args}"),
        Level::Warn => tracing::warn!(target: "hypha_core", "{args}"),
    }
}

/// 64 random bits from the operating system's generator.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        // No OS randomness (never seen on Linux): fall back to the clock, loudly.
        Err(e) => {
            tracing::warn!("getrandom failed ({e}); falling back to the clock");
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }
    }
}

impl Runtime {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        let id = config.id.unwrap_or_else(|| {
            NodeId::from_u128((u128::from(random_u64()) << 64) | u128::from(random_u64()))
        });
        let acl = config.acl.clone().map(Arc::new);
        let mut nc = NodeConfig::new(id, config.mode);
        nc.caps = config.limits.caps();
        nc.site = Arc::from(config.router.site.as_str());
        nc.epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        if let Some(acl) = &config.acl {
            nc.intercepts = Box::new(crate::acl::enforce::AclFactory(Arc::new(acl.clone())));
        }
        let prefixes = config
            .metrics
            .prefixes
            .iter()
            .map(|p| {
                Arc::new(PrefixCounter {
                    expr: p.clone(),
                    samples: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                })
            })
            .collect();
        Arc::new_cyclic(|me| Runtime {
            me: me.clone(),
            id,
            hlc: Mutex::new(Hlc::new(id, 500_000)),
            node: Mutex::new(Node::new(nc)),
            config,
            faces: RwLock::new(HashMap::new()),
            sinks: RwLock::new(HashMap::new()),
            queriers: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashSet::new()),
            outbox: Outbox::default(),
            changed: Notify::new(),
            timer: Notify::new(),
            start_std: std::time::Instant::now(),
            start_tokio: tokio::time::Instant::now(),
            listening: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            prefixes,
            next_face: AtomicU64::new(1),
            dialer: std::sync::OnceLock::new(),
            known: Mutex::new(HashMap::new()),
            alternates: Mutex::new(Vec::new()),
            connecting: Mutex::new(HashSet::new()),
            handshaking: Mutex::new(Handshaking::default()),
            reassembly: AtomicUsize::new(0),
            last_connect_error: Mutex::new(None),
            acl: RwLock::new(acl),
            denials: Mutex::new(HashMap::new()),
            denial_tx: tokio::sync::broadcast::channel(64).0,
        })
    }

    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The `[metrics] prefixes` counters.
    pub(crate) fn prefix_counters(&self) -> &[Arc<PrefixCounter>] {
        &self.prefixes
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn listening(&self) -> Vec<Endpoint> {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_listening(&self, eps: Vec<Endpoint>) {
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = eps;
    }

    /// The session clock: microseconds since the runtime started.
    pub(crate) fn now(&self) -> hypha_core::time::Instant {
        hypha_core::time::Instant::from_micros(self.start_std.elapsed().as_micros() as u64)
    }

    /// A tokio instant for a session-clock instant.
    pub(crate) fn instant_of(&self, t: hypha_core::time::Instant) -> tokio::time::Instant {
        self.start_tokio + Duration::from_micros(t.as_micros())
    }

    pub(crate) fn next_face_id(&self) -> FaceId {
        self.next_face.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_timestamp(&self) -> Timestamp {
        let phys = Ntp64::from_unix_micros(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        );
        self.hlc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .new_timestamp(phys)
    }

    fn faces_snapshot(&self) -> Vec<Arc<Face>> {
        self.faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn face(&self, id: FaceId) -> Option<Arc<Face>> {
        self.faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    // ----- the node --------------------------------------------------------------------------

    /// Runs `f` on the node, then executes what it asked: messages to faces are queued while
    /// the node is still locked (so two threads can never reorder a face's declarations);
    /// deliveries to the application run after the lock is released.
    pub(crate) fn with_node<R>(
        &self,
        f: impl FnOnce(&mut Node, hypha_core::time::Instant) -> R,
    ) -> R {
        let (r, changed) = {
            let mut n = self.node.lock().unwrap_or_else(|p| p.into_inner());
            let v = n.version();
            let r = f(&mut n, self.now());
            let mut later = Vec::new();
            while let Some(a) = n.poll_action() {
                match a {
                    Action::Send { face, msg } => {
                        if let Some(f) = self.face(face) {
                            f.send_msg(msg);
                        }
                    }
                    Action::Close {
                        face,
                        reason,
                        detail,
                        drain,
                    } => {
                        if let Some(f) = self.face(face) {
                            if drain {
                                f.close_when_drained(reason);
                            } else {
                                f.close_with(reason, detail);
                            }
                        }
                    }
                    other => later.push(other),
                }
            }
            if !later.is_empty() {
                self.outbox
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(later);
            }
            (r, n.version() != v)
        };
        self.drain_outbox();
        if changed {
            self.changed.notify_waiters();
        }
        r
    }

    fn drain_outbox(&self) {
        loop {
            if self.outbox.draining.swap(true, Ordering::AcqRel) {
                return;
            }
            loop {
                // All that is queued, in order, under one lock.
                let next = std::mem::take(
                    &mut *self.outbox.queue.lock().unwrap_or_else(|p| p.into_inner()),
                );
                if next.is_empty() {
                    break;
                }
                for a in next {
                    self.execute(a);
                }
            }
            self.outbox.draining.store(false, Ordering::Release);
            if self
                .outbox
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
        }
    }

    fn sink(&self, id: LocalId) -> Option<Arc<dyn LocalSink>> {
        self.sinks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn execute(&self, a: Action) {
        match a {
            Action::Deliver { to, sample } => {
                if let Some(s) = self.sink(to) {
                    self.counters
                        .delivered_local
                        .fetch_add(1, Ordering::Relaxed);
                    s.deliver(sample);
                }
            }
            Action::Query {
                to,
                query,
                key,
                parameters,
                payload,
                attachment,
            } => {
                let sinks: Vec<Arc<dyn LocalSink>> =
                    to.iter().filter_map(|id| self.sink(*id)).collect();
                let Some(rt) = self.self_arc() else { return };
                let q = IncomingQuery {
                    key,
                    parameters,
                    payload,
                    attachment,
                    responder: Arc::new(Responder { rt, qid: query }),
                };
                for s in sinks {
                    s.query(q.clone());
                }
            }
            Action::Reply { query, reply } => {
                let tx = self
                    .queriers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&query)
                    .cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
            Action::QueryDone { query } => {
                self.queriers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&query);
            }
            Action::Ready { id } => {
                self.ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
                self.changed.notify_waiters();
            }
            Action::Denied { locals, denial } => {
                self.counters
                    .denials_received
                    .fetch_add(1, Ordering::Relaxed);
                {
                    let mut d = self.denials.lock().unwrap_or_else(|p| p.into_inner());
                    for id in locals {
                        if d.len() < MAX_DENIALS || d.contains_key(&id) {
                            d.insert(id, denial.clone());
                        }
                    }
                }
                // Nobody listening is fine: the counter and the declaration's state remain.
                let _ = self.denial_tx.send(denial);
                self.changed.notify_waiters();
            }
            Action::Alternate { locators } => {
                // A router of ours told us of another: the client's failover list grows (at
                // most MAX_ALTERNATES, newest first; configured endpoints stay first).
                let eps: Vec<Endpoint> = locators
                    .split(',')
                    .filter_map(|l| l.parse().ok())
                    .filter(|e: &Endpoint| !self.config.connect.contains(e))
                    .collect();
                // One router's endpoints go first, in its order; the router tells its list
                // lowest priority first, so the best ends first (a re-told one moves up).
                let mut alt = self.alternates.lock().unwrap_or_else(|p| p.into_inner());
                for e in &eps {
                    if !alt.contains(e) {
                        tracing::info!(endpoint = %e, "learnt an alternate router");
                    }
                }
                alt.retain(|e| !eps.contains(e));
                alt.splice(0..0, eps);
                alt.truncate(MAX_ALTERNATES);
                drop(alt);
                self.changed.notify_waiters();
            }
            Action::Discovered {
                node,
                locators,
                neighbour,
            } => {
                let eps: Vec<Endpoint> = locators
                    .split(',')
                    .filter_map(|l| l.parse().ok())
                    .take(hypha_transports::discovery::MAX_ENDPOINTS)
                    .collect();
                if eps.is_empty() {
                    return;
                }
                if neighbour {
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    if known.len() < MAX_KNOWN || known.contains_key(&node) {
                        known.insert(node, eps);
                    }
                } else if let Some(rt) = self.self_arc() {
                    rt.consider_dialing(node, eps);
                }
            }
            // Executed under the node's lock in `with_node`.
            Action::Send { .. } | Action::Close { .. } => {}
        }
    }

    /// An `Arc` of this runtime, from the face registry's back-reference (set at start).
    fn self_arc(&self) -> Option<Arc<Runtime>> {
        self.me.upgrade()
    }

    // ----- local declarations ----------------------------------------------------------------

    /// Declares something local: registers its delivery end (if any) under a fresh id, then
    /// tells the node. Returns the id.
    pub(crate) fn declare(
        &self,
        sink: Option<Arc<dyn LocalSink>>,
        cmd: impl FnOnce(LocalId) -> Cmd,
    ) -> LocalId {
        self.with_node(|n, now| {
            let id = n.next_local_id();
            if let Some(s) = sink {
                self.sinks
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, s);
            }
            n.handle_local(now, cmd(id));
            id
        })
    }

    /// Withdraws a local declaration.
    pub(crate) fn undeclare(&self, id: LocalId) {
        self.with_node(|n, now| n.handle_local(now, Cmd::Undeclare { id }));
        self.sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(crate) fn is_ready(&self, id: LocalId) -> bool {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Waits until a declaration is known where it matters (every neighbour asked answered),
    /// up to `timeout`. Returns whether it is.
    pub(crate) async fn wait_ready(&self, id: LocalId, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.is_ready(id)).await
    }

    /// Waits until `cond` holds, re-checking whenever the node changes (and every 50 ms, for
    /// state outside the node such as gossip), up to `timeout`.
    pub(crate) async fn wait_until(&self, timeout: Duration, cond: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cond() {
                return true;
            }
            let tick = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            let _ = tokio::time::timeout_at(tick, changed).await;
            if tokio::time::Instant::now() >= deadline {
                return cond();
            }
        }
    }

    /// Updates the node-wide count of bytes in partial reassemblies with one link's change
    /// (`before` is what the link held at its last call) and, past `limits.max_reassembly_bytes`,
    /// evicts that link's largest partial messages until under budget. Returns what it holds now.
    pub(crate) fn account_reassembly(
        &self,
        before: usize,
        session: &mut hypha_core::session::HeapSession,
    ) -> usize {
        let mut now = session.reassembly_held();
        let budget = self.config.limits.max_reassembly_bytes;
        let mut total = if now >= before {
            self.reassembly.fetch_add(now - before, Ordering::AcqRel) + (now - before)
        } else {
            self.reassembly
                .fetch_sub(before - now, Ordering::AcqRel)
                .saturating_sub(before - now)
        };
        while total > budget {
            let freed = session.evict_partial();
            if freed == 0 {
                break;
            }
            self.counters
                .reassembly_evicted
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "node-wide reassembly budget ({budget} bytes) exceeded: partial message of {freed} bytes evicted"
            );
            now -= freed.min(now);
            total = self
                .reassembly
                .fetch_sub(freed, Ordering::AcqRel)
                .saturating_sub(freed);
        }
        now
    }

    /// A link's partial reassemblies leave the budget (the link is gone).
    pub(crate) fn release_reassembly(&self, held: usize) {
        let _ = self
            .reassembly
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(held))
            });
    }

    /// Records why a dial failed.
    pub(crate) fn note_connect_error(&self, ep: &Endpoint, e: &dyn std::fmt::Display) {
        *self
            .last_connect_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(format!("{ep}: {e}"));
    }

    /// Why the last dial of a configured endpoint failed, if one did.
    /// Routers learnt from our routers to fail over to (clients), newest first.
    pub(crate) fn alternates(&self) -> Vec<Endpoint> {
        self.alternates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn last_connect_error(&self) -> Option<String> {
        self.last_connect_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every neighbour asked has answered local declaration `id`'s interest.
    pub(crate) fn interest_answered_everywhere(&self, id: LocalId) -> bool {
        self.node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .interest_answered_everywhere(id)
    }

    pub(crate) fn has_subscriber(&self, key: &KeyExpr<'_>) -> bool {
        self.node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_subscriber(key)
    }

    /// (a local queryable matches, a neighbour's does)
    pub(crate) fn has_queryable(&self, key: &KeyExpr<'_>) -> (bool, bool) {
        self.node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_queryable(key)
    }

    // ----- faces -----------------------------------------------------------------------------

    /// A handshake completed: registers the face with the node, which may refuse it (a
    /// duplicate of an existing link, a link to ourselves) by closing it.
    pub(crate) fn face_established(self: &Arc<Self>, face: &Arc<Face>) {
        use hypha_transports::Protocol;
        let encrypted = matches!(face.info.protocol, Protocol::Quic | Protocol::Tls);
        if face.role == Role::Dialer {
            if encrypted {
                // Our credential (or none) first, so the listener can judge the rest.
                let token = self.config.auth_token.as_deref().unwrap_or("");
                face.send_auth(token.as_bytes());
            } else if self.config.auth_token.is_some() {
                tracing::warn!(remote = %face.info.remote, "auth.token is never sent over a plaintext link");
            }
        }
        let wait = face.role == Role::Listener
            && encrypted
            && face.info.peer_certificate.is_none()
            && self.acl().is_some_and(|a| a.has_tokens());
        if wait {
            *face.auth.lock().unwrap_or_else(|p| p.into_inner()) =
                face::AuthGate::Waiting(Vec::new());
            // A dialer that sends no credential is anonymous after this.
            let (rt, f) = (self.clone(), face.clone());
            tokio::spawn(async move {
                tokio::time::sleep(AUTH_WAIT).await;
                rt.authenticate(&f, &[], &mut None);
            });
            return;
        }
        self.admit(face, None);
    }

    /// The dialer's credential arrived (empty: none, or the wait ran out): the link's
    /// principal is the token's, then what it sent meanwhile is judged, in order.
    pub(crate) fn authenticate(
        self: &Arc<Self>,
        face: &Arc<Face>,
        token: &[u8],
        cache: &mut Option<RouteCache>,
    ) {
        let mut gate = face.auth.lock().unwrap_or_else(|p| p.into_inner());
        let face::AuthGate::Waiting(held) = &mut *gate else {
            if !token.is_empty() {
                tracing::debug!(
                    face = face.id,
                    "a credential where none was expected: ignored"
                );
            }
            return;
        };
        let held = std::mem::take(held);
        let by_token = if token.is_empty() {
            None
        } else {
            match self.acl().and_then(|a| a.principal_for_token(token)) {
                Some(found) => Some(found),
                None => {
                    *gate = face::AuthGate::Open;
                    drop(gate);
                    self.counters
                        .refused_identity
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(remote = %face.info.remote, "refusing link: unknown pre-shared token");
                    face.close_with(hypha_core::wire::CloseReason::Refused, "unknown token");
                    return;
                }
            }
        };
        self.admit(face, by_token);
        for m in held {
            self.dispatch(face, cache, m);
        }
        *gate = face::AuthGate::Open;
    }

    /// Registers an established face with the node under its principal (from a token, or
    /// else from its certificate), or refuses it.
    fn admit(&self, face: &Arc<Face>, by_token: Option<(crate::acl::Principal, [u8; 32])>) {
        let Some(peer) = face.peer() else {
            return;
        };
        let kind = FaceKind::of(peer.mode);
        let identified = match by_token {
            Some((p, hash)) => {
                crate::acl::identity::check_bound_to_token(&hash, peer.node_id).map(|()| {
                    let _ = face.token_hash.set(hash);
                    p
                })
            }
            None => self.identify(face, peer.node_id),
        };
        let principal = match identified {
            Ok(p) => p,
            Err(e) => {
                self.counters
                    .refused_identity
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %peer.node_id, remote = %face.info.remote, "refusing link: {e}");
                face.close_with(hypha_core::wire::CloseReason::Refused, "identity refused");
                return;
            }
        };
        let _ = face.principal.set(principal.clone());
        let _ = face.kind.set(kind);
        self.faces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(face.id, face.clone());
        let dialed = face.role == Role::Dialer;
        let cost = face.cost;
        let accepted = self.with_node(|n, now| {
            let up = n.handle_face_up_as(now, face.id, kind, peer.node_id, dialed, principal);
            if up && let Some(c) = cost {
                n.set_link_cost(now, face.id, c);
            }
            up
        });
        if !accepted {
            self.counters
                .refused_duplicate
                .fetch_add(1, Ordering::Relaxed);
            self.faces
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&face.id);
            return;
        }
        tracing::info!(peer = %peer.node_id, mode = %peer.mode, remote = %face.info.remote, "connected");
        if let Some(d) = self.dialer.get() {
            d.set_connected(peer.node_id, true);
        }
    }

    /// The access-control principal of a link's peer, from the certificate TLS verified. With a
    /// verified certificate the node id the peer claimed must be its key's; with `require_auth`
    /// a peer without one is refused.
    fn identify(
        &self,
        face: &Face,
        claimed: NodeId,
    ) -> Result<crate::acl::Principal, crate::acl::identity::IdentityError> {
        use crate::acl::identity::{IdentityError, check_bound, principal_of};
        let acl = self.acl();
        let Some(cert) = &face.info.peer_certificate else {
            return match &acl {
                Some(a) if a.require_auth() => Err(IdentityError::AuthRequired),
                _ => Ok(crate::acl::Principal::anonymous()),
            };
        };
        check_bound(cert, claimed)?;
        let from = acl
            .as_ref()
            .map_or(&crate::acl::DEFAULT_IDENTITY_FROM[..], |a| {
                a.identity_from()
            });
        match principal_of(cert, from) {
            Ok(p) => Ok(p),
            // Without rules, a certificate we cannot name is still a verified peer.
            Err(e) if acl.is_none() => {
                tracing::debug!("peer certificate names no principal ({e}): anonymous");
                Ok(crate::acl::Principal::anonymous())
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the access-control rules (SIGHUP): links stay up (but those whose token was
    /// removed close); every face's hooks and every cached route are rebuilt, so tightened
    /// rules apply to the next sample.
    pub(crate) fn set_acl(&self, acl: Option<crate::acl::Acl>) {
        *self.acl.write().unwrap_or_else(|p| p.into_inner()) = acl.clone().map(Arc::new);
        let revoked: Vec<Arc<Face>> = self
            .faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|f| {
                f.token_hash
                    .get()
                    .is_some_and(|h| !acl.as_ref().is_some_and(|a| a.knows_token(h)))
            })
            .cloned()
            .collect();
        for f in revoked {
            tracing::warn!(remote = %f.info.remote, "closing link: its token was revoked");
            f.close_with(hypha_core::wire::CloseReason::Refused, "token revoked");
        }
        let factory: Box<dyn crate::net::intercept::InterceptFactory> = match acl {
            Some(a) => Box::new(crate::acl::enforce::AclFactory(Arc::new(a))),
            None => Box::new(crate::net::intercept::NoIntercepts),
        };
        self.with_node(|n, now| n.set_intercepts(now, factory));
    }

    /// The access-control rules in force (the configuration's, or the last reload's).
    pub(crate) fn acl(&self) -> Option<Arc<crate::acl::Acl>> {
        self.acl.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The refusal of local declaration `id`, if a neighbour refused it.
    pub(crate) fn denial(&self, id: LocalId) -> Option<Arc<crate::acl::AccessDenied>> {
        self.denials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Refusals as neighbours tell them.
    pub(crate) fn subscribe_denials(
        &self,
    ) -> tokio::sync::broadcast::Receiver<Arc<crate::acl::AccessDenied>> {
        self.denial_tx.subscribe()
    }

    /// Waits until local declaration `id` is ready or refused, up to `timeout`.
    pub(crate) async fn wait_declared(
        &self,
        id: LocalId,
        timeout: Duration,
    ) -> Result<bool, Arc<crate::acl::AccessDenied>> {
        self.wait_until(timeout, || self.is_ready(id) || self.denial(id).is_some())
            .await;
        match self.denial(id) {
            Some(d) => Err(d),
            None => Ok(self.is_ready(id)),
        }
    }

    /// A link is gone: the node forgets what it declared; its liveliness tokens disappear.
    pub(crate) fn face_closed(&self, face: &Arc<Face>) {
        let was_registered = {
            let mut faces = self.faces.write().unwrap_or_else(|p| p.into_inner());
            faces.get(&face.id).is_some_and(|f| Arc::ptr_eq(f, face))
                && faces.remove(&face.id).is_some()
        };
        if !was_registered {
            return;
        }
        self.with_node(|n, now| n.handle_face_down(now, face.id));
        if let Some(p) = face.peer() {
            tracing::info!(peer = %p.node_id, "disconnected");
            if let Some(d) = self.dialer.get() {
                d.set_connected(p.node_id, false);
                // A peer that said goodbye is forgotten, not dialled (issue 16: churn).
                let known = {
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    match face.peer_left() && !self.connected_to(p.node_id) {
                        true => known.remove(&p.node_id).and(None),
                        false => known.get(&p.node_id).cloned(),
                    }
                };
                if let Some(eps) = known {
                    if !self.is_closed() && !self.connected_to(p.node_id) {
                        d.dial(Some(p.node_id), eps);
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Handles what a neighbour sent. Samples take the hot path on `cache`, the link's last
    /// route; everything else goes to the node.
    pub(crate) fn dispatch(
        self: &Arc<Self>,
        face: &Arc<Face>,
        cache: &mut Option<RouteCache>,
        m: Incoming,
    ) {
        match m {
            Incoming::Sample {
                key,
                kind,
                payload,
                extra,
                lane,
                source,
            } => self.deliver_remote_sample(
                face, face.id, cache, key, kind, payload, extra, lane, source,
            ),
            Incoming::Routed(r) => self.on_routed(face, *r),
            Incoming::Msg(msg) => {
                let is_request = matches!(*msg, Msg::Request(_));
                self.with_node(|n, now| n.handle_message(now, face.id, *msg));
                if is_request {
                    self.timer.notify_one();
                }
            }
            Incoming::Gossip(node, mode, endpoints) => self.on_gossip(face, node, mode, endpoints),
            // Taken by the reader before dispatch; one here came after the link was admitted.
            Incoming::Auth(_) => tracing::debug!(face = face.id, "late credential ignored"),
            Incoming::Other(what) => {
                self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(face = face.id, "ignored: {what}");
            }
        }
    }

    /// Handles `msgs` (control messages from `face`, in order) under one node lock, and
    /// empties it.
    pub(crate) fn handle_msgs(&self, face: &Arc<Face>, msgs: &mut Vec<Msg>) {
        if msgs.is_empty() {
            return;
        }
        let requests = msgs.iter().any(|m| matches!(m, Msg::Request(_)));
        self.with_node(|n, now| {
            for m in msgs.drain(..) {
                n.handle_message(now, face.id, m);
            }
        });
        if requests {
            self.timer.notify_one();
        }
    }

    /// A message routed across the backbone: passed on towards its router, or (for us)
    /// unwrapped and handled as coming from the virtual face of the router that sent it.
    fn on_routed(self: &Arc<Self>, face: &Arc<Face>, r: face::RoutedIn) {
        if r.dst != self.id {
            let next = {
                let mut n = self.node.lock().unwrap_or_else(|p| p.into_inner());
                if r.hops <= 1 {
                    n.routed_dropped(true);
                    None
                } else {
                    match n.next_hop_face(&r.dst) {
                        Some(f) => {
                            n.routed_transit();
                            Some(f)
                        }
                        None => {
                            n.routed_dropped(false);
                            None
                        }
                    }
                }
            };
            if let Some(f) = next.and_then(|id| self.face(id)) {
                f.send_msg(Msg::Transit(Box::new(crate::net::Transit {
                    src: r.src,
                    dst: r.dst,
                    hops: r.hops - 1,
                    origin: r.origin,
                    body: r.body,
                    lane: r.lane,
                })));
            }
            return;
        }
        let pair = self
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pair_face(&r.src);
        let Some(pair) = pair else {
            // Its link state has not reached us yet (or it is gone).
            self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(face = face.id, src = %r.src, "routed message from an unknown router");
            return;
        };
        let msg = match hypha_core::wire::NetworkMessage::decode(&r.body) {
            Ok(
                hypha_core::wire::NetworkMessage::Routed(_)
                | hypha_core::wire::NetworkMessage::LinkState(_)
                | hypha_core::wire::NetworkMessage::Auth(_)
                | hypha_core::wire::NetworkMessage::Gossip(_),
            ) => {
                self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(src = %r.src, "routed message with a body not allowed there");
                return;
            }
            Ok(m) => m,
            Err(e) => {
                self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(src = %r.src, "malformed routed message: {e}");
                return;
            }
        };
        let mut ids = face::routed_ids(r.origin, &msg);
        let mut out = Vec::new();
        let mut fixups = Vec::new();
        face::convert_msg(msg, r.lane, &r.body, &mut ids, &mut out, &mut fixups);
        for m in out {
            match m {
                Incoming::Sample {
                    key,
                    kind,
                    payload,
                    extra,
                    lane,
                    source,
                } => self.deliver_remote_sample(
                    face, pair, &mut None, key, kind, payload, extra, lane, source,
                ),
                Incoming::Msg(msg) => {
                    let is_request = matches!(*msg, Msg::Request(_));
                    self.with_node(|n, now| n.handle_message(now, pair, *msg));
                    if is_request {
                        self.timer.notify_one();
                    }
                }
                _ => {
                    self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Links, for `info`.
    pub(crate) fn links(&self) -> Vec<crate::info::LinkSummary> {
        let snaps = self.node.lock().unwrap_or_else(|p| p.into_inner()).faces();
        let mut v: Vec<crate::info::LinkSummary> = snaps
            .into_iter()
            .filter_map(|s| {
                let f = self.face(s.id)?;
                let p = f.peer()?;
                Some(crate::info::LinkSummary {
                    node: s.node,
                    mode: p.mode,
                    kind: s.kind.as_str(),
                    remote: f.info.remote.clone(),
                    sent: f.sent.load(Ordering::Relaxed),
                    dropped: f.dropped.load(Ordering::Relaxed),
                    received: f.received.load(Ordering::Relaxed),
                    queued_bytes: f.queued_bytes(),
                    unacknowledged: f.unacknowledged(),
                    denied_in: s.counters.denied_in,
                    denied_out: s.counters.denied_out,
                    declarations: s.subscribers + s.queryables + s.tokens,
                    interests: s.interests,
                    declared_to: s.declared_to,
                    principal: s.principal.name().to_string(),
                })
            })
            .collect();
        v.sort_by_key(|l| l.node);
        v
    }

    // ----- samples ---------------------------------------------------------------------------

    /// The route of a sample on `key` from `src` (`None`: published here), resolved to
    /// delivery ends and links.
    pub(crate) fn resolve(&self, src: Option<FaceId>, key: &str) -> Arc<Resolved> {
        let route = self
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .route(src, key);
        let locals = route
            .locals
            .iter()
            .filter_map(|id| self.sink(*id))
            .collect();
        let faces = route
            .faces
            .iter()
            .filter_map(|id| self.face(*id))
            .map(|f| (f, std::sync::atomic::AtomicU32::new(0)))
            .collect();
        let routed = route
            .routed
            .iter()
            .filter_map(|(id, dst)| self.face(*id).map(|f| (f, *dst)))
            .collect();
        // The per-prefix match runs here, once per resolved key (routes are cached per key),
        // never per sample. Prefixes were validated by the config; an invalid key matches none.
        let prefixes = match KeyExpr::new(key) {
            Ok(k) if !self.prefixes.is_empty() => self
                .prefixes
                .iter()
                .filter(|p| KeyExpr::new(&p.expr).is_ok_and(|e| e.intersects(&k)))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Arc::new(Resolved {
            route,
            locals,
            faces,
            routed,
            prefixes,
        })
    }

    /// Delivers a sample from a neighbour: to local subscribers, and on to the faces the node's
    /// route says (a peer or router forwarding for its clients). `cache` keeps the last route
    /// while it is fresh: a stream of samples on one key does not touch the node's lock.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver_remote_sample(
        &self,
        face: &Arc<Face>,
        src: FaceId,
        cache: &mut Option<RouteCache>,
        key: Arc<str>,
        kind: SampleKind,
        payload: Bytes,
        extra: Option<Box<face::Extra>>,
        lane: Lane,
        source: Option<crate::sample::SampleSource>,
    ) {
        face.received.fetch_add(1, Ordering::Relaxed);
        self.counters
            .received_remote
            .fetch_add(1, Ordering::Relaxed);
        let resolved = match cache {
            Some((k, r)) if !r.route.is_stale() && (Arc::ptr_eq(k, &key) || **k == *key) => {
                r.clone()
            }
            _ => {
                let r = self.resolve(Some(src), &key);
                *cache = Some((key.clone(), r.clone()));
                r
            }
        };
        if resolved.route.denied && kind != SampleKind::Delete
            || resolved.route.denied_delete && kind == SampleKind::Delete
        {
            self.counters.denied.fetch_add(1, Ordering::Relaxed);
            self.with_node(|n, now| n.sample_denied(now, src, &key, kind));
            return;
        }
        for p in &resolved.prefixes {
            p.count(payload.len());
        }
        if resolved.locals.is_empty() && resolved.faces.is_empty() && resolved.routed.is_empty() {
            return;
        }
        let (timestamp, encoding, attachment) = match extra {
            Some(e) => (e.timestamp, e.encoding, e.attachment),
            None => (None, None, None),
        };
        self.counters
            .forwarded
            .fetch_add(resolved.routed.len() as u64, Ordering::Relaxed);
        let dropped = resolved.send_routed(
            &key,
            lane,
            kind,
            &payload,
            timestamp,
            encoding.as_deref(),
            attachment.as_deref(),
            source,
        );
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        count_prefix_drops(&resolved.prefixes, dropped);
        for (f, key_id) in &resolved.faces {
            self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            match f.send_sample(
                &key,
                key_id,
                lane,
                kind,
                &payload,
                timestamp,
                encoding.as_deref(),
                attachment.as_deref(),
                source,
            ) {
                Err(SendError::QueueFull) => {
                    f.dropped.fetch_add(1, Ordering::Relaxed);
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    count_prefix_drops(&resolved.prefixes, 1);
                }
                // Its link closed under it (issue 16): lost with the link, counted.
                Err(SendError::Closed) => {
                    self.counters
                        .dropped_link_closed
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        self.deliver_local(
            &resolved.locals,
            Sample {
                key,
                payload,
                kind,
                timestamp,
                encoding,
                attachment,
                source,
            },
        );
    }

    fn deliver_local(&self, locals: &[Arc<dyn LocalSink>], sample: Sample) {
        if let Some((last, rest)) = locals.split_last() {
            for h in rest {
                h.deliver(sample.clone());
            }
            last.deliver(sample);
            self.counters
                .delivered_local
                .fetch_add(locals.len() as u64, Ordering::Relaxed);
        }
    }

    /// Publishes what can be published now: local subscribers get the sample directly (no
    /// encoding), neighbours with a matching subscriber get it on their link. Under `Drop`, a
    /// full link drops it (counted). Under `Block`, full links are returned to wait for with
    /// [`publish_wait`](Self::publish_wait) (`Err`); everything else is already done.
    pub(crate) fn publish_now(
        &self,
        resolved: &Resolved,
        qos: Qos,
        mut s: Outgoing,
    ) -> Result<PublishOutcome, Box<Blocked>> {
        if s.timestamp.is_none() && self.config.timestamping {
            s.timestamp = Some(self.new_timestamp());
        }
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        for p in &resolved.prefixes {
            p.count(s.payload.len());
        }
        let lane = Lane {
            priority: qos.priority,
            reliable: qos.reliable,
        };
        let mut out = PublishOutcome {
            destinations: resolved.locals.len() + resolved.faces.len() + resolved.routed.len(),
            dropped: 0,
        };
        // Remote routers (this node is a router publishing itself): never blocks; a full first
        // hop drops, counted.
        out.dropped += resolved.send_routed(
            &s.key,
            lane,
            s.kind,
            &s.payload,
            s.timestamp,
            s.encoding.as_deref(),
            s.attachment.as_deref(),
            s.source,
        );
        let mut blocked = Vec::new();
        for (i, (face, key_id)) in resolved.faces.iter().enumerate() {
            match s.send_on(face, key_id, lane) {
                Ok(()) => {}
                Err(SendError::QueueFull) if qos.congestion == CongestionControl::Block => {
                    blocked.push(i);
                }
                Err(SendError::QueueFull) => {
                    face.dropped.fetch_add(1, Ordering::Relaxed);
                    out.dropped += 1;
                }
                // The link's session closed under this publication (its lease expired, the
                // route not yet updated): lost with the link, counted (issue 16).
                Err(SendError::Closed) => {
                    self.counters
                        .dropped_link_closed
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::trace!(face = face.id, "not sent: {e}"),
            }
        }
        if !resolved.locals.is_empty() {
            self.deliver_local(&resolved.locals, s.sample());
        }
        self.counters
            .dropped
            .fetch_add(out.dropped, Ordering::Relaxed);
        count_prefix_drops(&resolved.prefixes, out.dropped);
        if blocked.is_empty() {
            Ok(out)
        } else {
            Err(Box::new(Blocked {
                sample: s,
                lane,
                faces: blocked,
                partial: out,
            }))
        }
    }

    /// Waits for room on the links a `Block` publication found full, each up to
    /// `queues.block_ms`; what still does not fit is dropped and counted.
    pub(crate) async fn publish_wait(
        &self,
        resolved: &Resolved,
        b: Box<Blocked>,
    ) -> PublishOutcome {
        let Blocked {
            sample,
            lane,
            faces,
            mut partial,
        } = *b;
        for i in faces {
            let Some((face, key_id)) = resolved.faces.get(i) else {
                continue;
            };
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(self.config.queues.block_ms);
            let mut sent = false;
            let mut waited = false;
            while !face.is_dead() {
                let notified = face.put_room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match sample.send_on(face, key_id, lane) {
                    Ok(()) => {
                        sent = true;
                        if waited {
                            // Woken in turn and in: there may be room for the next one.
                            face.put_room.notify_one();
                        }
                        break;
                    }
                    Err(SendError::QueueFull) => {}
                    Err(_) => break,
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
                waited = true;
            }
            if !sent {
                self.count_block_drop(resolved, face, &mut partial);
            }
        }
        partial
    }

    /// What [`publish_wait`](Self::publish_wait) does when no room came, at once, for every
    /// link a `Block` publication found full: for a put that cannot wait (`PutBuilder::now`).
    pub(crate) fn publish_drop_blocked(
        &self,
        resolved: &Resolved,
        b: Box<Blocked>,
    ) -> PublishOutcome {
        let Blocked {
            faces, mut partial, ..
        } = *b;
        for i in faces {
            if let Some((face, _)) = resolved.faces.get(i) {
                self.count_block_drop(resolved, face, &mut partial);
            }
        }
        partial
    }

    fn count_block_drop(&self, resolved: &Resolved, face: &Face, out: &mut PublishOutcome) {
        face.dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        count_prefix_drops(&resolved.prefixes, 1);
        out.dropped += 1;
    }

    // ----- queries ---------------------------------------------------------------------------

    /// Starts a local query; replies arrive on the returned stream, which ends when the query
    /// is over.
    pub(crate) fn start_query(
        &self,
        params: QueryParams,
    ) -> (QueryId, mpsc::UnboundedReceiver<Reply>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let qid = self.with_node(|n, now| {
            let qid = n.next_query_id();
            self.queriers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(qid, tx);
            n.handle_local(now, Cmd::Query { id: qid, params });
            qid
        });
        self.timer.notify_one();
        (qid, rx)
    }

    /// The querier dropped its stream.
    pub(crate) fn cancel_query(&self, qid: QueryId) {
        self.queriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&qid);
        self.with_node(|n, now| n.handle_local(now, Cmd::CancelQuery { id: qid }));
    }

    /// Runs the node's timers (query deadlines) for the node's lifetime.
    /// Routers: every 2 s, each backbone link's measured round trip (QUIC, TCP, TLS) becomes
    /// its cost unless one was configured (the node damps it). Only the end that dialled
    /// measures; the listener adopts the cost its dialer advertises. If both measured, an edge
    /// (counted at the smaller of its two ends' costs) took whichever end's RTT came lower
    /// and, when the listener measured before its dialer's LSA arrived, its RTT over the
    /// dialer's configured cost: a 3-router test saw 1 ms instead of a configured 20 about
    /// one run in ten.
    pub(crate) fn start_cost_probe(self: &Arc<Self>) {
        if self.config.mode != Mode::Router {
            return;
        }
        let rt = self.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while !rt.is_closed() {
                tick.tick().await;
                for f in rt.faces_snapshot() {
                    if f.cost.is_some()
                        || f.role != Role::Dialer
                        || f.kind.get() != Some(&crate::net::FaceKind::Router)
                    {
                        continue;
                    }
                    if let Some(rtt) = f.info.probe.rtt() {
                        let ms = u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX);
                        rt.with_node(|n, now| n.measured_cost(now, f.id, ms));
                    }
                }
            }
        });
    }

    fn start_timer(self: &Arc<Self>) {
        let rt = self.clone();
        self.spawn(async move {
            loop {
                let wake = rt.timer.notified();
                tokio::pin!(wake);
                wake.as_mut().enable();
                let due = rt
                    .node
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .poll_timeout();
                match due {
                    Some(t) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(rt.instant_of(t)) => {}
                            _ = &mut wake => {}
                        }
                    }
                    None => wake.await,
                }
                rt.with_node(|n, now| n.handle_timeout(now));
            }
        });
    }

    pub(crate) fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(f);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    /// Starts what every node runs: the timer, listeners' accept loops are added by `serve`.
    /// Also routes hypha-core's log records (why a session closed a link, …) to `tracing`.
    pub(crate) fn start(self: &Arc<Self>) {
        let _ = hypha_core::log::set_sink(core_log);
        self.start_timer();
    }

    /// Accepts links on a listener for the node's lifetime.
    /// Accepted links still handshaking are bounded per node (`limits.max_handshaking`) and
    /// per source address (`limits.max_handshaking_per_source`): a link over either bound is
    /// closed at once and counted, so half-open connections cannot take memory without limit.
    pub(crate) fn serve(self: &Arc<Self>, mut listener: Listener) {
        let rt = self.clone();
        self.spawn(async move {
            while let Some(link) = listener.accept().await {
                let source = link.info.remote.socket_addr().map(|a| a.ip());
                let Some(slot) = rt.handshake_slot(source) else {
                    rt.counters.refused_handshaking.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(remote = %link.info.remote, "refused: too many links handshaking");
                    drop(link);
                    continue;
                };
                let rt2 = rt.clone();
                tokio::spawn(async move {
                    face::run(rt2, link, Role::Listener, Some(slot), None).await;
                });
            }
        });
    }

    /// A place among the links handshaking, if both bounds allow one more.
    fn handshake_slot(self: &Arc<Self>, source: Option<std::net::IpAddr>) -> Option<HandshakeSlot> {
        let limits = &self.config.limits;
        let mut h = self.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        if h.total >= limits.max_handshaking {
            return None;
        }
        if let Some(ip) = source {
            let n = h.per_source.entry(ip).or_insert(0);
            if *n >= limits.max_handshaking_per_source {
                return None;
            }
            *n += 1;
        }
        h.total += 1;
        Some(HandshakeSlot {
            rt: Arc::downgrade(self),
            source,
        })
    }

    /// Keeps a link to a configured endpoint: connect, run until it breaks, redial with backoff.
    pub(crate) fn keep_connected(self: &Arc<Self>, ep: Endpoint) {
        self.keep_connected_to_one_of(vec![ep]);
    }

    /// Keeps a backbone link to the router at `ep` (a link cost, if configured).
    pub(crate) fn keep_backbone(self: &Arc<Self>, ep: Endpoint, cost: Option<u32>) {
        self.keep_connected_with(vec![ep], cost);
    }

    /// Keeps one link to the first endpoint of `eps` that answers: when it breaks (or cannot
    /// be reached), the next one is tried, round robin, with backoff once all have failed.
    /// This is a client's failover list; the node replays the client's declarations and
    /// interests on the new link.
    pub(crate) fn keep_connected_to_one_of(self: &Arc<Self>, eps: Vec<Endpoint>) {
        self.keep_connected_with(eps, None);
    }

    fn keep_connected_with(self: &Arc<Self>, eps: Vec<Endpoint>, cost: Option<u32>) {
        if eps.is_empty() {
            return;
        }
        let rt = self.clone();
        self.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut i = 0usize;
            let mut failed_in_a_row = 0usize;
            // The endpoint whose working link just broke: the next try is the one after it.
            let mut broke: Option<Endpoint> = None;
            while !rt.is_closed() {
                // The configured list, then alternates routers told us of (clients only).
                let mut all = eps.clone();
                if rt.config.mode == Mode::Client {
                    all.extend(
                        rt.alternates
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .cloned(),
                    );
                }
                // The alternates may have been re-ordered while the link was up (a router
                // re-tells them when routers appear): find where the broken one is now, or
                // the index would land on it again (or skip one).
                if let Some(pos) = broke.take().and_then(|b| all.iter().position(|e| *e == b)) {
                    i = pos + 1;
                }
                let eps = &all;
                let ep = &eps[i % eps.len()];
                let mut ok = false;
                match hypha_transports::connect(ep, &rt.config.tls).await {
                    Ok(link) => {
                        tracing::debug!(endpoint = %ep, "connected, handshaking");
                        // device node (serial links): the device sends Init whoever dialled.
                        let role = match link.info.protocol.far_end_opens() {
                            true => Role::Listener,
                            false => Role::Dialer,
                        };
                        if let Some(peer) = face::run(rt.clone(), link, role, None, cost).await {
                            backoff = Duration::from_millis(100);
                            ok = true;
                            broke = Some(ep.clone());
                            // Refused as a duplicate (or replaced): another live link to that
                            // node exists, say one dialled from gossip. Redialling at once
                            // would be refused again, every 100 ms for as long as it lives
                            // (seen between two routers of a site): wait until it goes.
                            rt.wait_unlinked(peer.node_id).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %ep, "connect failed: {e}");
                        *rt.last_connect_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(format!("{ep}: {e}"));
                    }
                }
                if rt.is_closed() {
                    break;
                }
                // After a working link broke, try the next endpoint at once (failover);
                // after a whole round of failures, back off.
                i += 1;
                failed_in_a_row = if ok { 0 } else { failed_in_a_row + 1 };
                if ok && eps.len() > 1 {
                    continue;
                }
                if failed_in_a_row % eps.len() == 0 || eps.len() == 1 {
                    let jitter = Duration::from_millis(random_u64() % 50);
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        });
    }

    /// Returns once no live link to `node` is left (or the runtime closes).
    async fn wait_unlinked(&self, node: NodeId) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() || !self.connected_to(node) {
                return;
            }
            // Notified when a link closes; the timeout is a backstop.
            let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
        }
    }

    /// Discovery has settled for now: a link per configured endpoint (a client: one link), no
    /// dial in progress, and every node learnt of by gossip or mDNS connected.
    pub(crate) fn settled(&self) -> bool {
        let links = self.links().len();
        let want = match self.config.mode {
            Mode::Client => usize::from(!self.config.connect.is_empty()),
            _ => self.config.connect.len(),
        };
        if links < want {
            return false;
        }
        if !self
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return false;
        }
        let known: Vec<NodeId> = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        known.into_iter().all(|n| self.connected_to(n))
    }

    pub(crate) fn connected_to(&self, node: NodeId) -> bool {
        self.faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|f| f.peer().map(|p| p.node_id) == Some(node) && !f.is_dead())
    }

    pub(crate) async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let faces = self.faces_snapshot();
        for f in &faces {
            f.close(hypha_core::wire::CloseReason::Shutdown);
        }
        // Wait (bounded) until every writer has sent its Close and the transport said goodbye,
        // so that nothing queued before `close` is lost when the process exits.
        let finished = async {
            for f in &faces {
                loop {
                    let done = f.done.notified();
                    tokio::pin!(done);
                    done.as_mut().enable();
                    if f.is_finished() {
                        break;
                    }
                    done.await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), finished).await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
        // Local queries end now.
        self.queriers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Waits until every link's queues are empty, up to `timeout`.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for f in self.faces_snapshot() {
            loop {
                let space = f.space.notified();
                tokio::pin!(space);
                space.as_mut().enable();
                if f.queued_bytes() == 0 || f.is_dead() {
                    break;
                }
                if tokio::time::timeout_at(deadline, space).await.is_err() {
                    return false;
                }
            }
        }
        true
    }
}

/// Starts the dialer of discovered and gossiped peers: every link it sets up runs as a face.
pub(crate) fn start_dialer(rt: &Arc<Runtime>) {
    use hypha_transports::dialer::Dialer;
    let (dialer, mut dialed) = Dialer::new(rt.id, rt.config.tls.clone());
    // A node unreachable for about two minutes (100 ms doubling to 5 s, then 5 s) is forgotten:
    // it comes back by gossip, mDNS or by dialling us. Dialled forever, 5,000 peers coming and
    // going left 5,000 dial loops and `known` entries behind (issue 16).
    let weak = Arc::downgrade(rt);
    dialer.give_up_after(DIAL_GIVE_UP_ROUNDS, move |node| {
        if let Some(rt) = weak.upgrade() {
            rt.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&node);
        }
    });
    let _ = rt.dialer.set(dialer);
    let rt2 = rt.clone();
    rt.spawn(async move {
        while let Some(d) = dialed.recv().await {
            let rt3 = rt2.clone();
            if let Some(n) = d.node_id {
                rt3.connecting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n);
            }
            tokio::spawn(async move {
                face::run(rt3.clone(), d.link, Role::Dialer, None, None).await;
                if let Some(n) = d.node_id {
                    rt3.connecting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&n);
                }
            });
        }
    });
}

/// Starts mDNS discovery: found peers are dialled (see [`Runtime::consider_dialing`]).
pub(crate) fn start_discovery(
    rt: &Arc<Runtime>,
    listening: Vec<Endpoint>,
) -> Result<(), hypha_transports::discovery::DiscoveryError> {
    use hypha_transports::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent};
    let (discovery, mut events) =
        Discovery::start(DiscoveryConfig::new(rt.id, rt.config.mode, listening))?;
    let rt2 = rt.clone();
    rt.spawn(async move {
        let _discovery = discovery; // announced while this task lives
        while let Some(ev) = events.recv().await {
            match ev {
                DiscoveryEvent::Found {
                    node_id, endpoints, ..
                } => {
                    tracing::debug!(peer = %node_id, ?endpoints, "discovered");
                    rt2.consider_dialing(node_id, endpoints);
                }
                DiscoveryEvent::Lost { node_id } => {
                    tracing::debug!(peer = %node_id, "lost (mDNS)");
                    rt2.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&node_id);
                    if let Some(d) = rt2.dialer.get() {
                        d.forget(Some(node_id), &[]);
                    }
                }
            }
        }
    });
    Ok(())
}

/// Most nodes remembered from discovery and gossip (a peer cannot exhaust memory with gossip).
const MAX_KNOWN: usize = 4096;

/// Failed rounds after which a discovered node is no longer dialled (about two minutes).
const DIAL_GIVE_UP_ROUNDS: u32 = 30;

/// `ep` with an unspecified host (0.0.0.0, [::]) replaced by `ip`.
/// `local`: the gossip came over a unix or mem link, so the node it names shares our host
/// (or process) and its unix (or mem) endpoints are reachable from here.
fn with_host(ep: &Endpoint, ip: Option<std::net::IpAddr>, local: bool) -> Option<Endpoint> {
    match (ep, ip) {
        (Endpoint::Unix(_) | Endpoint::Mem(_), _) if local => Some(ep.clone()),
        (
            Endpoint::Net {
                protocol,
                host: hypha_transports::Host::Ip(h),
                port,
            },
            Some(ip),
        ) if h.is_unspecified() => Some(Endpoint::Net {
            protocol: *protocol,
            host: hypha_transports::Host::Ip(ip),
            port: *port,
        }),
        (
            Endpoint::Net {
                host: hypha_transports::Host::Ip(h),
                ..
            },
            None,
        ) if h.is_unspecified() => None,
        (Endpoint::Net { .. }, _) => Some(ep.clone()),
        _ => None, // unix and mem endpoints are only meaningful on their own host
    }
}

/// Where a router's clients' peers (clients of other routers) can reach it: network endpoints
/// of `listening`, each with an unspecified host (0.0.0.0, [::]) replaced by every address of
/// `ifaces` it covers (IPv4 for 0.0.0.0; both for [::], dual-stack); unix and mem ones dropped.
fn advertised(listening: &[Endpoint], ifaces: &[std::net::IpAddr]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for ep in listening {
        let Endpoint::Net {
            protocol,
            host,
            port,
        } = ep
        else {
            continue;
        };
        match host {
            hypha_transports::Host::Ip(h) if h.is_unspecified() => {
                for ip in ifaces.iter().filter(|ip| h.is_ipv6() || ip.is_ipv4()) {
                    out.push(Endpoint::Net {
                        protocol: *protocol,
                        host: hypha_transports::Host::Ip(*ip),
                        port: *port,
                    });
                }
            }
            _ => out.push(ep.clone()),
        }
    }
    out
}

impl Runtime {
    /// Remembers where `node` listens and dials it unless already linked. Both ends of a pair
    /// usually learn of each other: the smaller id dials at once, the other only if no link has
    /// appeared after a grace period, so a pair normally ends up with a single link (the
    /// duplicate rule in `face_established` settles the rare race).
    pub(crate) fn consider_dialing(self: &Arc<Self>, node: NodeId, endpoints: Vec<Endpoint>) {
        if node == self.id
            || endpoints.is_empty()
            || self.config.mode == hypha_core::wire::Mode::Client
        {
            return;
        }
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= MAX_KNOWN && !known.contains_key(&node) {
                return;
            }
            if known.get(&node) == Some(&endpoints) && self.connected_to(node) {
                return;
            }
            known.insert(node, endpoints.clone());
        }
        if self.connected_to(node) {
            return;
        }
        let Some(dialer) = self.dialer.get().cloned() else {
            return;
        };
        if self.id < node {
            dialer.dial(Some(node), endpoints);
        } else {
            let rt = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !rt.connected_to(node) && !rt.closed.load(Ordering::Acquire) {
                    dialer.dial(Some(node), endpoints);
                }
            });
        }
    }

    /// Where this node listens, as gossiped: its network endpoints (unix and mem ones mean
    /// nothing on another host).
    pub(crate) fn set_listening_locators(&self) {
        let own: Vec<String> = self
            .listening()
            .iter()
            // unix (and mem) endpoints too: they reach only nodes on this host (or process),
            // and only links of the same kind pass them on (see `with_host`).
            .filter(|e| {
                matches!(
                    e,
                    Endpoint::Net { .. } | Endpoint::Unix(_) | Endpoint::Mem(_)
                )
            })
            .map(|e| e.to_string())
            .collect();
        let locators: Arc<str> = Arc::from(own.join(","));
        // A router's LSA tells other routers' clients where to fail over to: a client learns it
        // from its own router, so an unspecified host (which a direct neighbour fills in with
        // the link's address) means nothing to it. Advertise the interface addresses instead.
        let advertised = match self.config.mode {
            Mode::Router if !self.config.router.advertise.is_empty() => {
                let eps: Vec<String> = self
                    .config
                    .router
                    .advertise
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                Arc::from(eps.join(","))
            }
            Mode::Router => {
                let ifaces = match if_addrs::get_if_addrs() {
                    Ok(v) => v
                        .into_iter()
                        .filter(|i| i.is_oper_up() && !i.is_loopback() && !i.is_link_local())
                        .map(|i| i.ip())
                        .collect(),
                    Err(e) => {
                        tracing::warn!("cannot list interface addresses to advertise: {e}");
                        Vec::new()
                    }
                };
                let eps: Vec<String> = advertised(&self.listening(), &ifaces)
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                Arc::from(eps.join(","))
            }
            _ => locators.clone(),
        };
        self.with_node(|n, now| n.set_locators_advertising(now, locators, advertised));
    }

    /// A neighbour told us where a node listens: endpoints with an unspecified host stand for
    /// the neighbour's own address (about itself) or are dropped (about others); then the node
    /// decides (remember, relay, dial).
    fn on_gossip(
        self: &Arc<Self>,
        face: &Arc<Face>,
        node: NodeId,
        mode: Mode,
        endpoints: Vec<Endpoint>,
    ) {
        let from = face.peer().map(|p| p.node_id);
        let remote_ip = face.info.remote.socket_addr().map(|a| a.ip());
        let about_itself = from == Some(node);
        let local = matches!(
            face.info.protocol,
            hypha_transports::Protocol::Unix | hypha_transports::Protocol::Mem
        );
        let eps: Vec<String> = endpoints
            .iter()
            .filter_map(|e| with_host(e, if about_itself { remote_ip } else { None }, local))
            .map(|e| e.to_string())
            .collect();
        let msg = Msg::Gossip {
            node,
            mode,
            locators: Arc::from(eps.join(",")),
        };
        self.with_node(|n, now| n.handle_message(now, face.id, msg));
    }
}

#[cfg(test)]
mod tests {
    use super::advertised;
    use hypha_transports::Endpoint;

    fn eps(v: &[&str]) -> Vec<Endpoint> {
        v.iter().map(|e| e.parse().unwrap()).collect()
    }

    #[test]
    fn unspecified_listeners_advertise_interface_addresses() {
        let ifaces = ["10.1.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        // 0.0.0.0 covers IPv4 addresses only; [::] both; a concrete host is kept as it is;
        // unix endpoints mean nothing to another host's client.
        let got = advertised(
            &eps(&[
                "quic/0.0.0.0:7447",
                "tcp/[::]:7448",
                "tcp/192.0.2.1:7449",
                "unix//tmp/h.sock",
            ]),
            &ifaces,
        );
        assert_eq!(
            got,
            eps(&[
                "quic/10.1.0.2:7447",
                "tcp/10.1.0.2:7448",
                "tcp/[2001:db8::2]:7448",
                "tcp/192.0.2.1:7449",
            ])
        );
        // A host with no usable interface advertises none of its unspecified listeners.
        assert_eq!(advertised(&eps(&["quic/0.0.0.0:7447"]), &[]), vec![]);
    }
}
