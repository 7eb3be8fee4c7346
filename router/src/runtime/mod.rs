//! The node's runtime: links, faces, discovery and dispatch.

pub(crate) mod face;
mod query_state;

use crate::api::{Handler, Sample};
use crate::config::Config;
use crate::routing::{FaceId, Route, Tables};
use bytes::Bytes;
use face::{Face, Incoming, Lane};
use hypha_core::hlc::{Hlc, Ntp64, Timestamp};
use hypha_core::id::NodeId;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::session::{Role, SendError};
use hypha_core::wire::{Declare, Gossip, NetworkMessage, SampleKind, WireKey};
use hypha_transports::{Endpoint, Listener};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
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
    /// Write at once rather than batch. Hypha's writers never linger (a lone message always goes
    /// out at once), so this only documents intent.
    pub express: bool,
}

impl Default for Qos {
    fn default() -> Self {
        Qos {
            priority: hypha_core::wire::Priority::Data,
            reliable: true,
            congestion: CongestionControl::Drop,
            express: false,
        }
    }
}

/// A publisher's resolved route: local subscribers, and the links (with the key id each one
/// declared for this publisher's key and lane, 0 until known), so that a publication touches
/// neither the tables nor the link map.
pub(crate) struct Resolved {
    pub route: Arc<Route<Arc<Handler>>>,
    pub faces: Vec<(Arc<Face>, std::sync::atomic::AtomicU32)>,
}

/// The last route used by a link's reader: key, tables version, route.
pub(crate) type RouteCache = (Arc<str>, u64, Arc<Route<Arc<Handler>>>);

/// Counters of the node.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub delivered_local: AtomicU64,
    pub received_remote: AtomicU64,
    pub dropped: AtomicU64,
    pub undeliverable: AtomicU64,
}

pub(crate) struct Runtime {
    pub id: NodeId,
    pub config: Config,
    pub tables: Mutex<Tables<Arc<Handler>>>,
    /// Bumped whenever tables change, read lock-free by publishers.
    pub version: AtomicU64,
    pub faces: RwLock<HashMap<FaceId, Arc<Face>>>,
    /// Fired whenever declarations change (matching status waiters).
    pub changed: Notify,
    next_face: AtomicU64,
    hlc: Mutex<Hlc>,
    start_std: std::time::Instant,
    start_tokio: tokio::time::Instant,
    pub listening: Mutex<Vec<Endpoint>>,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    pub closed: AtomicBool,
    pub counters: Counters,
    rand: std::collections::hash_map::RandomState,
    rand_ctr: AtomicU64,
    /// Queries this node made, waiting for replies.
    pub queries: Mutex<HashMap<u32, query_state::PendingQuery>>,
    next_query: std::sync::atomic::AtomicU32,
    /// The dialer of discovered peers (when mDNS is on).
    pub dialer: std::sync::OnceLock<hypha_transports::dialer::Dialer>,
    /// Last known endpoints of discovered peers.
    pub known: Mutex<HashMap<NodeId, Vec<Endpoint>>>,
    /// Nodes with a dialled link still handshaking (not dialled again meanwhile).
    pub connecting: Mutex<std::collections::HashSet<NodeId>>,
}

/// 64 random bits from the OS-seeded hasher state (no extra dependency).
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Runtime {
    pub fn new(config: Config) -> Arc<Self> {
        let id = config.id.unwrap_or_else(|| {
            NodeId::from_u128((u128::from(random_u64()) << 64) | u128::from(random_u64()))
        });
        Arc::new(Runtime {
            id,
            hlc: Mutex::new(Hlc::new(id, 500_000)),
            config,
            tables: Mutex::new(Tables::new()),
            version: AtomicU64::new(1),
            faces: RwLock::new(HashMap::new()),
            changed: Notify::new(),
            next_face: AtomicU64::new(1),
            start_std: std::time::Instant::now(),
            start_tokio: tokio::time::Instant::now(),
            listening: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            rand: std::collections::hash_map::RandomState::new(),
            rand_ctr: AtomicU64::new(0),
            dialer: std::sync::OnceLock::new(),
            queries: Mutex::new(HashMap::new()),
            next_query: std::sync::atomic::AtomicU32::new(1),
            known: Mutex::new(HashMap::new()),
            connecting: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn random_u64(&self) -> u64 {
        let mut h = self.rand.build_hasher();
        h.write_u64(self.rand_ctr.fetch_add(1, Ordering::Relaxed));
        h.finish()
    }

    /// The session clock: microseconds since the runtime started.
    pub fn now(&self) -> hypha_core::time::Instant {
        hypha_core::time::Instant::from_micros(self.start_std.elapsed().as_micros() as u64)
    }

    /// A tokio instant for a session-clock instant.
    pub fn instant_of(&self, t: hypha_core::time::Instant) -> tokio::time::Instant {
        self.start_tokio + Duration::from_micros(t.as_micros())
    }

    pub fn next_face_id(&self) -> FaceId {
        self.next_face.fetch_add(1, Ordering::Relaxed)
    }

    pub fn new_timestamp(&self) -> Timestamp {
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

    pub fn tables(&self) -> std::sync::MutexGuard<'_, Tables<Arc<Handler>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faces_snapshot(&self) -> Vec<Arc<Face>> {
        self.faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn face(&self, id: FaceId) -> Option<Arc<Face>> {
        self.faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Call after any table change.
    pub fn tables_changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Sends a declaration to every established neighbour.
    pub fn declare_to_all(&self, d: Declare<'_>) {
        for f in self.faces_snapshot() {
            f.send_declare(d);
        }
    }

    /// A handshake completed: registers the face, unless we already have a link to that node
    /// (then the link dialled by the smaller node id is kept). Returns `false` to close it.
    pub fn face_established(&self, face: &Arc<Face>) -> bool {
        let Some(peer) = face.peer() else {
            return false;
        };
        let dialer_of = |f: &Face| {
            if f.role == Role::Dialer {
                self.id
            } else {
                peer.node_id
            }
        };
        let replaced = {
            let mut faces = self.faces.write().unwrap_or_else(|p| p.into_inner());
            let existing = faces
                .values()
                .find(|f| f.peer().map(|p| p.node_id) == Some(peer.node_id) && !f.is_dead())
                .cloned();
            if let Some(old) = &existing {
                // Keep the link whose dialer has the smaller id; both ends agree on it.
                if dialer_of(face) < dialer_of(old) {
                    faces.remove(&old.id);
                    old.close_when_drained(hypha_core::wire::CloseReason::Duplicate);
                } else {
                    return false;
                }
            }
            faces.insert(face.id, face.clone());
            existing
        };
        if let Some(old) = &replaced {
            // Its declarations come again on the new link; forget them now so that nothing
            // (a query, a publication) is routed to a link that is going away.
            self.tables().remove_face(old.id);
        }
        tracing::info!(peer = %peer.node_id, mode = %peer.mode, remote = %face.info.remote, "connected");
        if let Some(d) = self.dialer.get() {
            d.set_connected(peer.node_id, true);
        }
        let (subs, tokens, queryables) = {
            let mut t = self.tables();
            t.add_face(face.id, Some(peer.node_id));
            let subs: Vec<(u64, String)> = t
                .subscribers
                .iter()
                .map(|(id, s)| (*id, s.key.as_str().to_string()))
                .collect();
            let tokens: Vec<(u64, String)> = t
                .tokens
                .iter()
                .map(|(id, k)| (*id, k.as_str().to_string()))
                .collect();
            let queryables: Vec<(u64, String, bool)> = t
                .queryables
                .iter()
                .map(|(id, (q, c))| (*id, q.key.as_str().to_string(), *c))
                .collect();
            (subs, tokens, queryables)
        };
        // Replay our declarations to the new neighbour.
        for (id, key) in &subs {
            face.send_declare(Declare::Subscriber {
                id: *id as u32,
                key: WireKey::Name(key),
            });
        }
        for (id, key, complete) in &queryables {
            face.send_declare(Declare::Queryable {
                id: *id as u32,
                key: WireKey::Name(key),
                complete: *complete,
            });
        }
        for (id, key) in &tokens {
            face.send_declare(Declare::Token {
                id: *id as u32,
                key: WireKey::Name(key),
            });
        }
        self.gossip_to(face);
        self.tables_changed();
        true
    }

    /// A link is gone: forget its declarations; its liveliness tokens disappear.
    pub fn face_closed(self: &Arc<Self>, face: &Arc<Face>) {
        let was_registered = {
            let mut faces = self.faces.write().unwrap_or_else(|p| p.into_inner());
            faces.get(&face.id).is_some_and(|f| Arc::ptr_eq(f, face))
                && faces.remove(&face.id).is_some()
        };
        if !was_registered {
            return;
        }
        if let Some(p) = face.peer() {
            tracing::info!(peer = %p.node_id, "disconnected");
            if let Some(d) = self.dialer.get() {
                d.set_connected(p.node_id, false);
                let known = self
                    .known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&p.node_id)
                    .cloned();
                if let Some(eps) = known {
                    if !self.closed.load(Ordering::Acquire) && !self.connected_to(p.node_id) {
                        d.dial(Some(p.node_id), eps);
                    }
                }
            }
        }
        self.requery_or_done(face.id, face.peer().map(|p| p.node_id));
        let vanished: Vec<OwnedKeyExpr> = {
            let mut t = self.tables();
            let gone = t.remove_face(face.id);
            gone.map(|d| {
                d.tokens
                    .into_values()
                    .filter(|k| t.token_holders(k) == 0)
                    .collect()
            })
            .unwrap_or_default()
        };
        for key in vanished {
            self.token_event(&key, SampleKind::Delete);
        }
        self.tables_changed();
    }

    /// Delivers a liveliness change to matching local liveliness subscribers.
    pub fn token_event(&self, key: &OwnedKeyExpr, kind: SampleKind) {
        let subs = self.tables().liveliness_subscribers_for(&key.as_keyexpr());
        let sample = Sample {
            key: Arc::from(key.as_str()),
            payload: Bytes::new(),
            kind,
            timestamp: None,
            encoding: None,
            attachment: None,
        };
        for s in subs {
            s.deliver(sample.clone());
        }
    }

    /// Delivers a sample from a neighbour to the local subscribers. `cache` keeps the last
    /// route (valid while the key and the tables' version are unchanged): a stream of samples on
    /// one key does not touch the tables' lock.
    pub fn deliver_remote_sample(
        &self,
        face: &Arc<Face>,
        cache: &mut Option<RouteCache>,
        key: Arc<str>,
        kind: SampleKind,
        payload: Bytes,
        extra: Option<Box<face::Extra>>,
    ) {
        face.received.fetch_add(1, Ordering::Relaxed);
        self.counters
            .received_remote
            .fetch_add(1, Ordering::Relaxed);
        let version = self.version.load(Ordering::Acquire);
        let route = match cache {
            Some((k, v, r)) if *v == version && (Arc::ptr_eq(k, &key) || **k == *key) => r.clone(),
            _ => {
                let r = self.tables().route_remote(&key);
                *cache = Some((key.clone(), version, r.clone()));
                r
            }
        };
        if route.local.is_empty() {
            return;
        }
        let (timestamp, encoding, attachment) = match extra {
            Some(e) => (e.timestamp, e.encoding, e.attachment),
            None => (None, None, None),
        };
        self.deliver_local(
            &route,
            Sample {
                key,
                payload,
                kind,
                timestamp,
                encoding,
                attachment,
            },
        );
    }

    /// Handles what a neighbour sent.
    pub fn dispatch(self: &Arc<Self>, face: &Arc<Face>, m: Incoming) {
        match m {
            Incoming::Sample {
                key,
                kind,
                payload,
                extra,
            } => {
                let mut none = None;
                self.deliver_remote_sample(face, &mut none, key, kind, payload, extra);
            }
            Incoming::Subscriber(id, key) => {
                self.tables().face_subscriber(face.id, id, key);
                self.tables_changed();
            }
            Incoming::Unsubscriber(id) => {
                self.tables().face_unsubscriber(face.id, id);
                self.tables_changed();
            }
            Incoming::Queryable(id, key, complete) => {
                self.tables().face_queryable(face.id, id, key, complete);
                self.tables_changed();
            }
            Incoming::Unqueryable(id) => {
                self.tables().face_unqueryable(face.id, id);
                self.tables_changed();
            }
            Incoming::Token(id, key) => {
                let first = {
                    let mut t = self.tables();
                    let held = t.token_holders(&key);
                    t.face_token(face.id, id, key.clone()) && held == 0
                };
                if first {
                    self.token_event(&key, SampleKind::Put);
                }
            }
            Incoming::Untoken(id) => {
                let last = {
                    let mut t = self.tables();
                    t.face_untoken(face.id, id)
                        .filter(|k| t.token_holders(k) == 0)
                };
                if let Some(key) = last {
                    self.token_event(&key, SampleKind::Delete);
                }
            }
            Incoming::Gossip(node, endpoints) => self.on_gossip(face, node, endpoints),
            Incoming::Request {
                id,
                key,
                parameters,
                target,
                payload,
                attachment,
            } => self.on_request(face, id, key, parameters, target, payload, attachment),
            Incoming::Reply(id, r) => {
                self.deliver_reply(id, face.peer().map(|p| p.node_id), r);
            }
            Incoming::ReplyFinal(id) => self.query_part_done(id, Some(face.id)),
            Incoming::Other(what) => {
                self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(face = face.id, "ignored: {what}");
            }
        }
    }

    fn deliver_local(&self, route: &Route<Arc<Handler>>, sample: Sample) {
        if let Some((last, rest)) = route.local.split_last() {
            for h in rest {
                h.deliver(sample.clone());
            }
            last.deliver(sample);
            self.counters
                .delivered_local
                .fetch_add(route.local.len() as u64, Ordering::Relaxed);
        }
    }

    /// The route of a local publication on `key`, resolved to links.
    pub fn resolve(&self, key: &Arc<str>) -> (u64, Arc<Resolved>) {
        let v = self.version.load(Ordering::Acquire);
        let route = self.tables().route_local(key);
        let faces = route
            .faces
            .iter()
            .filter_map(|id| self.face(*id))
            .map(|f| (f, std::sync::atomic::AtomicU32::new(0)))
            .collect();
        (v, Arc::new(Resolved { route, faces }))
    }

    /// Publishes: local subscribers get the sample directly (no encoding), neighbours with a
    /// matching subscriber get it on their link. Returns how many destinations dropped it.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish(
        &self,
        resolved: &Resolved,
        key: &Arc<str>,
        qos: Qos,
        kind: SampleKind,
        payload: Bytes,
        encoding: Option<Arc<str>>,
        attachment: Option<Bytes>,
    ) -> u64 {
        let timestamp = self.config.timestamping.then(|| self.new_timestamp());
        self.publish_stamped(
            resolved, key, qos, kind, payload, timestamp, encoding, attachment,
        )
        .await
    }

    /// Publishes with a given timestamp (or none).
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_stamped(
        &self,
        resolved: &Resolved,
        key: &Arc<str>,
        qos: Qos,
        kind: SampleKind,
        payload: Bytes,
        timestamp: Option<Timestamp>,
        encoding: Option<Arc<str>>,
        attachment: Option<Bytes>,
    ) -> u64 {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let lane = Lane {
            priority: qos.priority,
            reliable: qos.reliable,
        };
        let mut dropped = 0;
        let route = &resolved.route;
        for (face, key_id) in &resolved.faces {
            let send = || {
                face.send_sample(
                    key,
                    key_id,
                    lane,
                    kind,
                    &payload,
                    timestamp,
                    encoding.as_deref(),
                    attachment.as_deref(),
                )
            };
            match send() {
                Ok(()) => {}
                Err(SendError::QueueFull) if qos.congestion == CongestionControl::Block => {
                    let deadline = tokio::time::Instant::now()
                        + Duration::from_millis(self.config.queues.block_ms);
                    let mut sent = false;
                    while !face.is_dead() {
                        let notified = face.space.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        match send() {
                            Ok(()) => {
                                sent = true;
                                break;
                            }
                            Err(SendError::QueueFull) => {}
                            Err(_) => break,
                        }
                        if tokio::time::timeout_at(deadline, notified).await.is_err() {
                            break;
                        }
                    }
                    if !sent {
                        face.dropped.fetch_add(1, Ordering::Relaxed);
                        dropped += 1;
                    }
                }
                Err(SendError::QueueFull) => {
                    face.dropped.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                }
                Err(e) => tracing::trace!(face = face.id, "not sent: {e}"),
            }
        }
        if !route.local.is_empty() {
            let sample = Sample {
                key: key.clone(),
                payload,
                kind,
                timestamp,
                encoding,
                attachment,
            };
            self.deliver_local(route, sample);
        }
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        dropped
    }

    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(f);
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    /// Accepts links on a listener for the node's lifetime.
    pub fn serve(self: &Arc<Self>, mut listener: Listener) {
        let rt = self.clone();
        self.spawn(async move {
            while let Some(link) = listener.accept().await {
                let rt2 = rt.clone();
                tokio::spawn(async move {
                    face::run(rt2, link, Role::Listener).await;
                });
            }
        });
    }

    /// Keeps a link to a configured endpoint: connect, run until it breaks, redial with backoff.
    pub fn keep_connected(self: &Arc<Self>, ep: Endpoint) {
        let rt = self.clone();
        self.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !rt.closed.load(Ordering::Acquire) {
                match hypha_transports::connect(&ep, &rt.config.tls).await {
                    Ok(link) => {
                        tracing::debug!(endpoint = %ep, "connected, handshaking");
                        if face::run(rt.clone(), link, Role::Dialer).await.is_some() {
                            backoff = Duration::from_millis(100);
                        }
                    }
                    Err(e) => tracing::debug!(endpoint = %ep, "connect failed: {e}"),
                }
                if rt.closed.load(Ordering::Acquire) {
                    break;
                }
                let jitter = Duration::from_millis(rt.random_u64() % 50);
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    pub fn connected_to(&self, node: NodeId) -> bool {
        self.faces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|f| f.peer().map(|p| p.node_id) == Some(node) && !f.is_dead())
    }

    pub async fn close(&self) {
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
    }
}

impl Runtime {
    /// Waits until every link's queues are empty, up to `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
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
                face::run(rt3.clone(), d.link, Role::Dialer).await;
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
pub(crate) fn start_discovery(rt: &Arc<Runtime>, listening: Vec<Endpoint>) -> Result<(), String> {
    use hypha_transports::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent};
    let (discovery, mut events) =
        Discovery::start(DiscoveryConfig::new(rt.id, rt.config.mode, listening))
            .map_err(|e| e.to_string())?;
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

/// `ep` with an unspecified host (0.0.0.0, [::]) replaced by `ip`.
fn with_host(ep: &Endpoint, ip: Option<std::net::IpAddr>) -> Option<Endpoint> {
    match (ep, ip) {
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

impl Runtime {
    /// Remembers where `node` listens and dials it unless already linked. Both ends of a pair
    /// usually learn of each other: the smaller id dials at once, the other only if no link has
    /// appeared after a grace period, so a pair normally ends up with a single link (the
    /// duplicate rule in `face_established` settles the rare race).
    pub fn consider_dialing(self: &Arc<Self>, node: NodeId, endpoints: Vec<Endpoint>) {
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

    /// Gossip on a new link: who we are and where we listen, and the neighbours we know.
    pub fn gossip_to(&self, face: &Arc<Face>) {
        let own: Vec<String> = self
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| matches!(e, Endpoint::Net { .. }))
            .map(|e| e.to_string())
            .collect();
        let peer = face.peer().map(|p| p.node_id);
        let locators = own.join(",");
        face.send_control(&NetworkMessage::Gossip(Gossip {
            node_id: self.id,
            mode: self.config.mode,
            locators: &locators,
        }));
        let known: Vec<(NodeId, Vec<Endpoint>)> = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(n, _)| Some(**n) != peer && self.connected_to(**n))
            .map(|(n, e)| (*n, e.clone()))
            .collect();
        for (node, eps) in known {
            let locators = eps
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",");
            face.send_control(&NetworkMessage::Gossip(Gossip {
                node_id: node,
                mode: hypha_core::wire::Mode::Peer,
                locators: &locators,
            }));
        }
    }

    /// A neighbour told us where a node listens.
    fn on_gossip(self: &Arc<Self>, face: &Arc<Face>, node: NodeId, endpoints: Vec<Endpoint>) {
        let from = face.peer().map(|p| p.node_id);
        let remote_ip = face.info.remote.socket_addr().map(|a| a.ip());
        let about_itself = from == Some(node);
        let eps: Vec<Endpoint> = endpoints
            .iter()
            .filter_map(|e| with_host(e, if about_itself { remote_ip } else { None }))
            .collect();
        if eps.is_empty() || node == self.id {
            return;
        }
        if about_itself {
            // Relay the self-announcement one hop, to our other neighbours.
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node, eps.clone());
            let locators = eps
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",");
            for f in self.faces_snapshot() {
                if f.id != face.id {
                    f.send_control(&NetworkMessage::Gossip(Gossip {
                        node_id: node,
                        mode: hypha_core::wire::Mode::Peer,
                        locators: &locators,
                    }));
                }
            }
        } else {
            self.consider_dialing(node, eps);
        }
    }
}
