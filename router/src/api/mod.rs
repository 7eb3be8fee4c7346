//! The Session API: what applications call.

pub mod durable;
pub mod query;

pub use crate::sample::{Sample, SampleKind};

use crate::config::Config;
use crate::net::{Cmd, LocalId};
use crate::runtime::{CongestionControl, IncomingQuery, LocalSink, Qos, Runtime};
use bytes::Bytes;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::{KeyExpr, KeyExprError, OwnedKeyExpr};
use hypha_core::wire::{Mode, Priority, SampleKind as Kind};
use hypha_transports::Endpoint;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Why `open` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A listener could not start.
    #[error(transparent)]
    Listen(#[from] hypha_transports::ListenError),
    /// Discovery could not start.
    #[error("mDNS discovery failed to start: {0}")]
    Discovery(#[from] hypha_transports::discovery::DiscoveryError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Why a put or delete failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The key is not a valid key expression.
    #[error("invalid key expression: {0}")]
    KeyExpr(#[from] KeyExprError),
    /// Publications go to concrete keys; wildcards are for subscribing.
    #[error("cannot publish on the wildcard key expression {0:?}")]
    Wildcard(String),
    /// The session was closed.
    #[error("session closed")]
    Closed,
    /// The payload (with its attachment) is larger than `limits.max_message_bytes`.
    #[error("message of {size} bytes is larger than limits.max_message_bytes ({limit})")]
    TooLarge {
        /// Payload + attachment bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The key is longer than `limits.max_key_len` (neighbours would close the link).
    #[error("key of {len} bytes is longer than limits.max_key_len ({limit} bytes)")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An acknowledged put needs a declared publisher (its samples carry a source and a
    /// sequence number that the storage acknowledges).
    #[error("an acknowledged put needs a declared publisher (Session::declare_publisher)")]
    AckNeedsPublisher,
    /// `PutBuilder::now` cannot wait for an acknowledgement: await the put instead.
    #[error("an acknowledged put must be awaited (put(..).ack(..).await), not sent with now()")]
    AckNeedsAwait,
    /// No storage holds the key, so nothing can acknowledge the put (it was still published).
    #[error("no storage holds {0}: nothing acknowledged the put")]
    NoStorage(String),
    /// The storages that hold the key did not acknowledge within the wait (the sample may
    /// still be stored: a retry with the same sequence number is not stored twice).
    #[error("not acknowledged: {0}")]
    NotAcknowledged(String),
    /// The acknowledgement query could not be sent.
    #[error("acknowledgement query: {0}")]
    AckQuery(#[from] query::QueryError),
}

/// What an acknowledged put waits for ([`PutBuilder::ack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Every storage that answers has committed the sample (a crash can still lose it within
    /// the storage's flush window, `flush_ms`).
    Received,
    /// ... and synced it to disk (fsync; the storage syncs at once while such a put waits).
    Durable,
}

/// Why a declaration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeclareError {
    /// The key is not a valid key expression.
    #[error("invalid key expression: {0}")]
    KeyExpr(#[from] KeyExprError),
    /// The session was closed.
    #[error("session closed")]
    Closed,
    /// A neighbour's access control refused the declaration.
    #[error(transparent)]
    AccessDenied(#[from] crate::acl::AccessDenied),
    /// The key expression is longer than `limits.max_key_len` (neighbours would close the
    /// link).
    #[error("key expression of {len} bytes is longer than limits.max_key_len ({limit} bytes)")]
    KeyTooLong {
        /// The key expression's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// How long an awaited declaration (`declare_subscriber(k).await`) waits for its neighbours'
/// verdict at most. A declaration not yet acknowledged by then is returned all the same (it is
/// live; `declared()` can wait longer).
pub const DECLARE_WAIT: Duration = Duration::from_secs(5);

/// Refusals neighbours' access control told this node of (see [`Session::denials`]).
pub struct Denials {
    rx: tokio::sync::broadcast::Receiver<Arc<crate::acl::AccessDenied>>,
    missed: u64,
}

impl Denials {
    /// The next refusal; `None` once the session is closed.
    pub async fn recv(&mut self) -> Option<crate::acl::AccessDenied> {
        loop {
            match self.rx.recv().await {
                Ok(d) => return Some((*d).clone()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Refusals this receiver skipped because it read too slowly (64 are buffered).
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

fn keyexpr(key: &str) -> Result<OwnedKeyExpr, KeyExprError> {
    OwnedKeyExpr::autocanonize(key.to_string())
}

/// `Some((len, limit))` when `key` (canonized) is longer than what this node sends:
/// `limits.max_key_len`, which is also what its neighbours accept by default (a neighbour
/// receiving a longer key closes the link), and never more than the wire's limit.
pub(crate) fn too_long(rt: &Runtime, key: &str) -> Option<(usize, usize)> {
    let limit = rt
        .config()
        .limits
        .max_key_len
        .min(hypha_core::wire::limits::MAX_KEY_LEN);
    (key.len() > limit).then_some((key.len(), limit))
}

/// How a local subscriber receives.
pub(crate) enum Delivery {
    Callback(Box<dyn Fn(Sample) + Send + Sync>),
    Channel(mpsc::Sender<Sample>),
    Ring(Arc<Ring>),
    /// A queryable: queries go to a callback or an unbounded channel (queries are never
    /// dropped; their replies are what costs).
    QueryCallback(Box<dyn Fn(query::Query) + Send + Sync>),
    QueryChannel(mpsc::UnboundedSender<query::Query>),
    /// A subscriber catching up on history: live samples wait at the seam.
    Seam(Arc<Seam>),
}

/// What a late joiner's history replay found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryReport {
    /// A storage (or other queryable) matching the key was known when history was asked.
    pub storage_found: bool,
    /// Replies received from storages (history samples before de-duplication).
    pub replies: usize,
    /// Samples delivered at the seam, in timestamp order without duplicates: the history and
    /// the live samples held while it was fetched.
    pub delivered: usize,
}

/// The seam between a late joiner's history and its live stream.
pub(crate) struct Seam {
    report: tokio::sync::watch::Sender<Option<HistoryReport>>,
    state: Mutex<SeamState>,
    inner: Arc<Handler>,
}

enum SeamState {
    /// History is being fetched: live samples are held.
    Syncing(Vec<Sample>),
    /// Live: samples already delivered from history (same timestamp = same event) are dropped.
    Live {
        seen: std::collections::HashSet<hypha_core::hlc::Timestamp>,
        horizon: Option<hypha_core::hlc::Timestamp>,
    },
}

impl Seam {
    fn on_live(&self, s: Sample) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *st {
            SeamState::Syncing(held) => held.push(s),
            SeamState::Live { seen, horizon } => {
                if let (Some(ts), Some(h)) = (s.timestamp, *horizon) {
                    if ts <= h && seen.contains(&ts) {
                        return;
                    }
                    // Two seconds past the horizon nothing from history can come live again.
                    if ts.time.0 > h.time.0.saturating_add(2 << 32) && !seen.is_empty() {
                        seen.clear();
                    }
                }
                drop(st);
                self.inner.deliver(s);
            }
        }
    }

    /// Delivers the history and the live samples held meanwhile, merged in timestamp order
    /// (each publisher's clock is monotonic) without duplicates, then goes live.
    fn finish(&self, history: Vec<Sample>, mut report: HistoryReport) {
        report.replies = history.len();
        let mut seen = std::collections::HashSet::new();
        let mut horizon = None;
        let mut pending = history;
        loop {
            // Take what was held (under the lock), deliver outside it; go live only when
            // nothing new was held meanwhile, so no live sample can overtake the history.
            {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if let SeamState::Syncing(h) = &mut *st {
                    pending.append(h);
                }
                if pending.is_empty() {
                    *st = SeamState::Live {
                        seen: std::mem::take(&mut seen),
                        horizon,
                    };
                    drop(st);
                    self.report.send_replace(Some(report));
                    return;
                }
            }
            pending.sort_by_key(|s| s.timestamp);
            for s in pending.drain(..) {
                if let Some(ts) = s.timestamp {
                    if !seen.insert(ts) {
                        continue; // the same event from two storages, or history and live
                    }
                    horizon = horizon.max(Some(ts));
                }
                report.delivered += 1;
                self.inner.deliver(s);
            }
        }
    }
}

/// A local subscriber's (or liveliness subscriber's) delivery end.
pub struct Handler {
    delivery: Delivery,
    received: AtomicU64,
    dropped: AtomicU64,
    /// Per publisher, the next sequence number expected.
    seq: Mutex<SeqTrack>,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    /// Samples counted in `gaps` that arrived after all (out of order).
    late: AtomicU64,
}

/// Most publishers whose sequence a subscriber follows (more: the oldest-seen are forgotten,
/// and one of them returning is taken as new, never as a gap).
const MAX_TRACKED_PUBLISHERS: usize = 4096;

#[derive(Default)]
struct SeqTrack {
    /// Per publisher: the newest sequence number seen, and which of the 64 before it were.
    seen: std::collections::HashMap<(NodeId, u32), Window>,
    /// The publisher seen last and its window (not in `seen` meanwhile).
    last: Option<((NodeId, u32), Window)>,
}

/// The newest sequence number of a publisher, and a bit per each of the 64 before it
/// (bit `i`: `newest - 1 - i` arrived).
#[derive(Clone, Copy)]
struct Window {
    newest: u32,
    bits: u64,
}

/// What a sample's sequence number says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The next one, or ahead of it: this many before it are missing (so far).
    New(u64),
    /// Behind the newest but not seen yet: it was counted missing, and arrived late (also a
    /// sample more than 64 behind, which cannot be told from a duplicate: delivered).
    Late,
    /// Seen already: removed.
    Duplicate,
}

/// How far behind the newest a sample is still told apart from a duplicate.
const SEQ_WINDOW: u32 = 64;

impl SeqTrack {
    fn see(&mut self, s: &crate::sample::SampleSource) -> Seen {
        let k = (s.node, s.publisher);
        // The last publisher's window is kept out of the map: a run of samples from one
        // publisher (a batch holds thousands) costs no hash lookup at all.
        if !matches!(&self.last, Some((lk, _)) if *lk == k) {
            let found = self.seen.remove(&k);
            if let Some((lk, lw)) = self.last.take() {
                if self.seen.len() >= MAX_TRACKED_PUBLISHERS {
                    self.seen.clear();
                }
                self.seen.insert(lk, lw);
            }
            let fresh = found.is_none();
            let w = found.unwrap_or(Window {
                newest: s.sn,
                bits: 0,
            });
            self.last = Some((k, w));
            if fresh {
                return Seen::New(0);
            }
        }
        let Some((_, w)) = &mut self.last else {
            return Seen::New(0);
        };
        // Serial arithmetic: within half the space ahead of the newest is news.
        let ahead = s.sn.wrapping_sub(w.newest);
        if ahead != 0 && ahead < 1 << 31 {
            // Shift the window: the old newest becomes bit ahead-1.
            w.bits = if ahead > SEQ_WINDOW {
                0
            } else {
                (w.bits << 1 | 1) << (ahead - 1)
            };
            w.newest = s.sn;
            return Seen::New(u64::from(ahead - 1));
        }
        if ahead == 0 {
            return Seen::Duplicate;
        }
        let back = w.newest.wrapping_sub(s.sn) - 1;
        if back >= SEQ_WINDOW {
            return Seen::Late;
        }
        let bit = 1u64 << back;
        if w.bits & bit != 0 {
            Seen::Duplicate
        } else {
            w.bits |= bit;
            Seen::Late
        }
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Handler(received {}, dropped {})",
            self.received.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        )
    }
}

impl Handler {
    pub(crate) fn deliver(&self, s: Sample) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(src) = &s.source {
            let seen = self.seq.lock().unwrap_or_else(|p| p.into_inner()).see(src);
            match seen {
                Seen::New(0) => {}
                Seen::New(missing) => {
                    self.gaps.fetch_add(missing, Ordering::Relaxed);
                }
                Seen::Late => {
                    self.late.fetch_add(1, Ordering::Relaxed);
                }
                Seen::Duplicate => {
                    // A second copy (a re-route, a retry): removed, counted.
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        match &self.delivery {
            Delivery::Callback(f) => f(s),
            Delivery::Channel(tx) => {
                if tx.try_send(s).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Delivery::Ring(r) => {
                if r.push(s) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Delivery::Seam(seam) => seam.on_live(s),
            Delivery::QueryCallback(_) | Delivery::QueryChannel(_) => {}
        }
    }

    pub(crate) fn deliver_query(&self, q: IncomingQuery) {
        let q = query::Query::from_incoming(q);
        self.received.fetch_add(1, Ordering::Relaxed);
        match &self.delivery {
            Delivery::QueryCallback(f) => f(q),
            Delivery::QueryChannel(tx) => {
                let _ = tx.send(q);
            }
            _ => {}
        }
    }

    pub(crate) fn new(delivery: Delivery) -> Self {
        Handler {
            delivery,
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            seq: Mutex::new(SeqTrack::default()),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }
}

impl LocalSink for Handler {
    fn deliver(&self, sample: Sample) {
        Handler::deliver(self, sample);
    }
    fn query(&self, q: IncomingQuery) {
        self.deliver_query(q);
    }
}

/// A bounded ring keeping the newest samples.
pub(crate) struct Ring {
    q: Mutex<VecDeque<Sample>>,
    cap: usize,
    ready: Notify,
}

impl Ring {
    /// Pushes; returns true if the oldest sample was evicted.
    fn push(&self, s: Sample) -> bool {
        let evicted = {
            let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
            let evicted = q.len() >= self.cap && q.pop_front().is_some();
            q.push_back(s);
            evicted
        };
        self.ready.notify_one();
        evicted
    }

    fn pop(&self) -> Option<Sample> {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// A Hypha session: a node in the mesh. Cheap to clone; the node stops when `close` is called
/// or the last clone is dropped.
#[derive(Clone)]
pub struct Session {
    rt: Arc<Runtime>,
    _guard: Arc<CloseOnDrop>,
    /// The admin space's queryable and the node's metrics (issue 14; `crate::admin`).
    admin: Option<Arc<crate::admin::Admin>>,
}

struct CloseOnDrop(Arc<Runtime>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let rt = self.0.clone();
        if !rt.is_closed() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { rt.close().await });
            }
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.rt.id())
    }
}

/// A node that demands authentication (`tls.mutual`) refuses to listen on or dial a
/// plaintext transport (tcp, udp, unix): a peer there could bypass the certificates.
fn check_authenticated(config: &Config) -> Result<(), OpenError> {
    if config.acl.as_ref().is_some_and(|a| a.require_auth())
        && !(config.tls.mutual && config.tls.ca.is_some())
    {
        return Err(OpenError::Config(crate::config::ConfigError::Value {
            field: "acl.require_auth",
            message: "needs tls.ca and tls.mutual = true (peers authenticate with certificates)"
                .into(),
        }));
    }
    if !config.tls.mutual {
        return Ok(());
    }
    let plaintext = |e: &Endpoint| match e {
        Endpoint::Net { protocol, .. } => !matches!(
            protocol,
            hypha_transports::Protocol::Quic | hypha_transports::Protocol::Tls
        ),
        Endpoint::Unix(_) => true,
        Endpoint::Mem(_) => false,
        Endpoint::Serial { .. } => true,
    };
    for (field, eps) in [("listen", &config.listen), ("connect", &config.connect)] {
        if let Some(e) = eps.iter().find(|e| plaintext(e)) {
            return Err(OpenError::Config(crate::config::ConfigError::Value {
                field,
                message: format!(
                    "{e} is plaintext, and tls.mutual demands authenticated links: use quic/ or tls/"
                ),
            }));
        }
    }
    Ok(())
}

/// A node whose certificate chains to a CA takes its key's node id (see
/// `acl::identity`): peers refuse any other. A configured id that differs is an error.
fn bind_id_to_key(config: &mut Config) -> Result<(), OpenError> {
    let cfg_err = |message: String| {
        OpenError::Config(crate::config::ConfigError::Value {
            field: "id",
            message,
        })
    };
    let has_cert = config.tls.ca.is_some() && config.tls.cert.is_some();
    if let Some(token) = &config.auth_token {
        if has_cert {
            return Err(cfg_err(
                "auth.token and a certificate (tls.ca + tls.cert): use one credential".into(),
            ));
        }
        // A node presenting a token takes an id bound to it (as to a key: see acl::identity).
        let h = crate::acl::token_hash(token.as_bytes());
        let prefix = crate::acl::identity::id_prefix_of_token(&h);
        match config.id {
            Some(id) if id.0[..8] != prefix => {
                return Err(cfg_err(format!(
                    "{id}: with auth.token a node's id is bound to its token (leave id unset)"
                )));
            }
            Some(_) => {}
            None => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&prefix);
                b[8..].copy_from_slice(&crate::runtime::random_u64().to_be_bytes());
                config.id = Some(NodeId(b));
            }
        }
        return Ok(());
    }
    if config.tls.ca.is_none() {
        return Ok(());
    }
    let Some(der) = config
        .tls
        .leaf_certificate()
        .map_err(|e| cfg_err(e.to_string()))?
    else {
        return Ok(());
    };
    use crate::acl::identity::{check_bound, node_id_for};
    match config.id {
        Some(id) => check_bound(&der, id).map_err(|e| {
            cfg_err(format!(
                "{e}: with tls.ca a node's id is bound to its key (leave id unset)"
            ))
        }),
        None => {
            let id = node_id_for(&der, crate::runtime::random_u64())
                .map_err(|e| cfg_err(e.to_string()))?;
            config.id = Some(id);
            Ok(())
        }
    }
}

/// Opens a session: starts listeners, dials configured endpoints, starts mDNS discovery.
pub async fn open(mut config: Config) -> Result<Session, OpenError> {
    crate::config::check_lease(config.lease_ms)?;
    crate::config::check_advertise(&config.router.advertise)?;
    check_authenticated(&config)?;
    bind_id_to_key(&mut config)?;
    let rt = Runtime::new(config);
    rt.start();
    let mut bound = Vec::new();
    for ep in &rt.config().listen {
        let l = hypha_transports::listen(ep, &rt.config().tls).await?;
        tracing::info!(node = %rt.id(), endpoint = %l.local_endpoint(), "listening");
        bound.push(l.local_endpoint().clone());
        rt.serve(l);
    }
    rt.set_listening(bound.clone());
    rt.set_listening_locators();
    let connect = rt.config().connect.clone();
    if rt.config().mode == Mode::Client {
        // A client keeps one link: to the first endpoint of its list that answers, failing over
        // to the next when it breaks. It never dials what it discovers (it only dials out).
        rt.keep_connected_to_one_of(connect);
    } else {
        for ep in connect {
            rt.keep_connected(ep);
        }
        if rt.config().mode == Mode::Router {
            let r = rt.config().router.clone();
            for ep in r.backbone {
                rt.keep_backbone(ep, r.cost);
            }
            rt.start_cost_probe();
        }
        crate::runtime::start_dialer(&rt);
        if rt.config().mdns {
            crate::runtime::start_discovery(&rt, bound)?;
        }
    }
    // The admin space `@/<id>/**` (issue 14).
    let admin = match crate::admin::declare(&rt) {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            tracing::warn!("admin space not declared: {e}");
            None
        }
    };
    Ok(Session {
        _guard: Arc::new(CloseOnDrop(rt.clone())),
        rt,
        admin,
    })
}

pub use crate::info::LinkSummary;

/// What a session knows about itself.
#[derive(Clone, Debug)]
pub struct Info {
    /// This node.
    pub id: NodeId,
    /// Its mode.
    pub mode: Mode,
    /// Endpoints it listens on (ports resolved).
    pub listening: Vec<Endpoint>,
    /// Its neighbours.
    pub links: Vec<LinkSummary>,
    /// Publications made here.
    pub published: u64,
    /// Samples received from neighbours.
    pub received: u64,
    /// Messages dropped for congested destinations.
    pub dropped: u64,
    /// Messages queued on a link that closed before they were sent (lost in a blackout that
    /// expired the link's lease, or with a broken link).
    pub dropped_link_closed: u64,
    /// Data messages (samples, queries, replies) written to a link that ended without the
    /// peer acknowledging them: probably lost, though a few may have arrived with their
    /// acknowledgement still on its way. Links to a peer that does not acknowledge (the
    /// device node) count nothing here.
    pub dropped_unconfirmed: u64,
    /// Samples forwarded from one neighbour to another.
    pub forwarded: u64,
    /// Samples refused by ingress hooks.
    pub denied: u64,
    /// Accepted links closed at once because too many were still handshaking
    /// (`limits.max_handshaking`, `limits.max_handshaking_per_source`).
    pub refused_handshaking: u64,
    /// Partial messages evicted because all links together exceeded
    /// `limits.max_reassembly_bytes`.
    pub reassembly_evicted: u64,
    /// Links refused for their identity: no verified credential under `acl.require_auth`, a
    /// node id not bound to the certificate's key, a certificate naming no usable principal.
    pub refused_identity: u64,
    /// Links refused because another link to the same node was up (two nodes dialling each
    /// other at once: the link dialled by the smaller id stays).
    pub refused_duplicate: u64,
    /// Refusals neighbours' access control told this node of.
    pub denials_received: u64,
    /// Serial-line framing counters (frames, CRC, COBS and overflow errors) summed over every
    /// `serial+tcp/` link this process has run (`hypha_transports::serial::framing_totals`).
    pub serial_framing: hypha_core::framing::FramingStats,
}

impl Session {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.rt.id()
    }

    /// Refusals by neighbours' access control, from now on: declarations of this node (also
    /// returned by the awaited declare calls and `denied()`), and publications (at most one
    /// notice per key and operation per 10 s from each enforcing neighbour).
    pub fn denials(&self) -> Denials {
        Denials {
            rx: self.rt.subscribe_denials(),
            missed: 0,
        }
    }

    /// Replaces this node's access-control rules (`None`: none) without dropping links:
    /// every link's rules and cached routes are rebuilt, so tightened rules apply to the next
    /// sample, and neighbours' declarations now refused are dropped and noticed to them.
    /// (The `hypha` program does this on SIGHUP.)
    pub fn set_acl(&self, acl: Option<crate::acl::Acl>) {
        self.rt.set_acl(acl);
    }

    /// A description of this node, its links and counters.
    pub fn info(&self) -> Info {
        let links = self.rt.links();
        let c = self.rt.counters();
        Info {
            id: self.rt.id(),
            mode: self.rt.config().mode,
            listening: self.rt.listening(),
            links,
            published: c.published.load(Ordering::Relaxed),
            received: c.received_remote.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            dropped_link_closed: c.dropped_link_closed.load(Ordering::Relaxed),
            dropped_unconfirmed: c.dropped_unconfirmed.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            refused_handshaking: c.refused_handshaking.load(Ordering::Relaxed),
            reassembly_evicted: c.reassembly_evicted.load(Ordering::Relaxed),
            refused_identity: c.refused_identity.load(Ordering::Relaxed),
            refused_duplicate: c.refused_duplicate.load(Ordering::Relaxed),
            denials_received: c.denials_received.load(Ordering::Relaxed),
            serial_framing: hypha_transports::serial::framing_totals(),
        }
    }

    /// A fresh timestamp from this node's hybrid logical clock.
    pub fn new_timestamp(&self) -> hypha_core::hlc::Timestamp {
        self.rt.new_timestamp()
    }

    /// Neighbours currently connected.
    pub fn peers(&self) -> Vec<NodeId> {
        self.info().links.into_iter().map(|l| l.node).collect()
    }

    /// Waits until at least `n` neighbours are connected, up to `timeout`. Returns whether they
    /// are.
    pub async fn wait_peers(&self, n: usize, timeout: Duration) -> bool {
        self.rt
            .wait_until(timeout, || self.rt.links().len() >= n)
            .await
    }

    /// The routers this client learnt from its routers (a router tells its clients of other
    /// routers of its site first, then the cheapest others), newest first: after the
    /// configured endpoints, the ones it fails over to when its router goes. Empty for peers
    /// and routers.
    pub fn alternates(&self) -> Vec<hypha_transports::Endpoint> {
        self.rt.alternates()
    }

    /// Waits until this client has learnt at least one alternate router, up to `timeout`.
    /// Returns whether it has.
    pub async fn wait_alternates(&self, timeout: Duration) -> bool {
        self.rt
            .wait_until(timeout, || !self.rt.alternates().is_empty())
            .await
    }

    /// Why the last attempt to reach a configured endpoint failed (refused, unreachable, a TLS
    /// certificate the peer refused or we refused…), if one did. With no link up, this is what
    /// a short-lived program should report instead of publishing into nothing.
    pub fn connect_error(&self) -> Option<String> {
        self.rt.last_connect_error()
    }

    /// Waits until discovery has settled, up to `timeout`: a link to every configured endpoint,
    /// no dial in progress, and every node learnt of through gossip (or mDNS) connected. What a
    /// short-lived program (a one-shot put or get) should wait for before it acts, so that it
    /// reaches every matching node rather than the first one found. Returns whether it settled.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        self.rt.wait_until(timeout, || self.rt.settled()).await
    }

    /// Waits until some queryable (here or on a neighbour) matches `key`, up to `timeout`.
    pub async fn wait_queryable(&self, key: &OwnedKeyExpr, timeout: Duration) -> bool {
        self.rt
            .wait_until(timeout, || {
                let (l, r) = self.rt.has_queryable(&key.as_keyexpr());
                l || r
            })
            .await
    }

    /// Publishes `payload` on `key` with default options (for options, declare a
    /// publisher and use its `put` builder).
    pub async fn put(
        &self,
        key: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PutReport, PublishError> {
        self.publisher(key)?.put(payload).await
    }

    /// Publishes a deletion of `key`.
    pub async fn delete(&self, key: &str) -> Result<PutReport, PublishError> {
        self.publisher(key)?.delete().await
    }

    /// A one-shot publisher: no interest declared (a client sends it upstream, where the router
    /// filters).
    fn publisher(&self, key: &str) -> Result<Publisher, PublishError> {
        let k = keyexpr(key)?;
        if k.as_keyexpr().is_wild() {
            return Err(PublishError::Wildcard(k.into_string()));
        }
        if let Some((len, limit)) = too_long(&self.rt, k.as_str()) {
            return Err(PublishError::KeyTooLong { len, limit });
        }
        Ok(Publisher {
            rt: self.rt.clone(),
            key: Arc::from(k.as_str()),
            qos: Qos::default(),
            encoding: None,
            cache: Mutex::new(None),
            decl: None,
            sn: std::sync::atomic::AtomicU32::new(0),
            acks: Arc::default(),
            ack: None,
        })
    }

    /// A publisher on a concrete key, with default options (Data lane, reliable, drop when
    /// congested). Adjust with its builder methods. It asks its neighbours for the matching
    /// subscribers (an interest); [`Publisher::ready`] resolves once they have all answered,
    /// so that the first publication reaches every subscriber already declared.
    pub fn declare_publisher(&self, key: &str) -> Result<Publisher, PublishError> {
        let mut p = self.publisher(key)?;
        if self.rt.is_closed() {
            return Err(PublishError::Closed);
        }
        let k = OwnedKeyExpr::new(p.key.to_string())?;
        p.decl = Some(self.rt.declare(None, |id| Cmd::Publisher { id, key: k }));
        Ok(p)
    }

    /// A subscriber on a key expression; choose how it receives with the builder.
    pub fn declare_subscriber(&self, key: &str) -> SubscriberBuilder {
        SubscriberBuilder {
            rt: self.rt.clone(),
            key: keyexpr(key),
            capacity: self.rt.config().queues.subscriber,
            history: None,
        }
    }

    /// A query: replies from every matching queryable (storages included) arrive on the
    /// returned stream. Selector: `KEYEXPR[?PARAMETERS]`, e.g. `fleet/**?_time=[now(-10m)..]`.
    pub fn get(&self, selector: &str) -> query::GetBuilder {
        query::GetBuilder::new(self.rt.clone(), selector)
    }

    /// A queryable on a key expression; choose how it receives queries with the builder.
    pub fn declare_queryable(&self, key: &str) -> query::QueryableBuilder {
        query::QueryableBuilder::new(self.rt.clone(), keyexpr(key))
    }

    /// Liveliness: tokens and their subscribers.
    pub fn liveliness(&self) -> Liveliness {
        Liveliness {
            rt: self.rt.clone(),
        }
    }

    // ----- admin space (issue 14) ----------------------------------------------------------

    /// The node's metrics as OpenMetrics text (what `@/<id>/metrics` answers).
    pub fn metrics(&self) -> String {
        self.admin
            .as_ref()
            .map_or_else(|| "# EOF\n".to_string(), |a| a.metrics.render())
    }

    /// Lists a storage in the admin space (`@/<id>/storages/**`) and its metrics.
    pub(crate) fn register_storage(
        &self,
        key: OwnedKeyExpr,
        backend: String,
        stats: &Arc<crate::storage::StorageStats>,
        consumers: &Arc<crate::storage::consumer::Consumers>,
    ) -> Option<crate::metrics::StorageTimers> {
        self.admin
            .as_ref()
            .map(|a| a.register_storage(key, backend, stats, consumers))
    }

    /// The access-control rules in force (the HTTP gateway judges its callers by them).
    #[cfg(feature = "http")]
    pub(crate) fn acl(&self) -> Option<Arc<crate::acl::Acl>> {
        self.rt.acl()
    }

    // ----- end of admin space --------------------------------------------------------------

    /// Closes the session gracefully: neighbours are told, links are shut.
    pub async fn close(self) {
        self.rt.close().await;
    }
}

/// A publisher on one key.
pub struct Publisher {
    rt: Arc<Runtime>,
    key: Arc<str>,
    qos: Qos,
    encoding: Option<Arc<str>>,
    cache: Mutex<Option<Arc<crate::runtime::Resolved>>>,
    /// The node's declaration (its interest), for declared publishers; also the publisher's
    /// number in its samples' [`SampleSource`](crate::sample::SampleSource).
    decl: Option<LocalId>,
    /// The next sequence number.
    sn: std::sync::atomic::AtomicU32,
    /// Acknowledgements asked and not yet answered, sent in batches.
    acks: Arc<AckBatcher>,
    /// What every put asks for unless it says otherwise ([`Publisher::ack`]).
    ack: Option<(Ack, Duration)>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(id) = self.decl {
            self.rt.undeclare(id);
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Publisher({}, {:?})", self.key, self.qos)
    }
}

impl Publisher {
    /// The priority lane (default `Data`).
    pub fn priority(mut self, p: Priority) -> Self {
        self.qos.priority = p;
        self
    }

    /// Reliable (default) or best effort.
    pub fn reliable(mut self, r: bool) -> Self {
        self.qos.reliable = r;
        self
    }

    /// Drop (default) or block when a destination is congested.
    pub fn congestion_control(mut self, c: CongestionControl) -> Self {
        self.qos.congestion = c;
        self
    }

    /// Every put and delete of this publisher waits for the storages' acknowledgement at
    /// `level`, as [`PutBuilder::ack`] does for one (which a put can still change with its
    /// own `.ack(..)` / `.ack_timeout(..)`).
    pub fn ack(mut self, level: Ack) -> Self {
        self.ack = Some(with_level(self.ack, level));
        self
    }

    /// How long this publisher's acknowledged puts wait (default 5 s, at most 10 s); sets
    /// [`Ack::Received`] if no level was set.
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.ack = Some(with_timeout(self.ack, t));
        self
    }

    /// The encoding announced with every sample.
    pub fn encoding(mut self, e: &str) -> Self {
        self.encoding = Some(Arc::from(e));
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn route(&self) -> Arc<crate::runtime::Resolved> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = c.as_ref() {
            if !r.route.is_stale() {
                return r.clone();
            }
        }
        let r = self.rt.resolve(None, &self.key);
        *c = Some(r.clone());
        r
    }

    /// Waits until every neighbour asked has told this publisher its matching subscribers, up
    /// to `timeout`: a publication made after this reaches every subscriber declared before
    /// it. Returns whether it is ready (`true` at once for a one-shot `Session::put`).
    pub async fn ready(&self, timeout: Duration) -> bool {
        match self.decl {
            Some(id) => {
                self.rt
                    .wait_until(timeout, || {
                        self.rt.is_ready(id) && self.rt.interest_answered_everywhere(id)
                    })
                    .await
            }
            None => true,
        }
    }

    /// Waits until discovery has settled and every neighbour linked by then has answered this
    /// publisher's interest (see [`Session::wait_settled`] and [`ready`](Self::ready)), up to
    /// `timeout`: what a one-shot program waits for so that its first put reaches every
    /// matching subscriber it can. Returns whether that happened in time.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        let Some(id) = self.decl else { return true };
        self.rt
            .wait_until(timeout, || {
                self.rt.settled()
                    && self.rt.is_ready(id)
                    && self.rt.interest_answered_everywhere(id)
            })
            .await
    }

    /// Publishes a value: `publisher.put(v).await`, with options
    /// `.attachment(a).timestamp(t).encoding(e)` before the `.await`. Neighbours whose queue
    /// is full drop it (counted, and reported in the returned [`PutReport`]) or make this call
    /// wait, per the congestion control; others are never slowed down.
    pub fn put(&self, payload: impl Into<Bytes>) -> PutBuilder<'_> {
        PutBuilder::new(self, Kind::Put, payload.into())
    }

    /// Publishes a deletion (same options as `put`).
    pub fn delete(&self) -> PutBuilder<'_> {
        PutBuilder::new(self, Kind::Delete, Bytes::new())
    }

    /// True if some subscriber, here or on a neighbour, matches the key.
    pub fn matching_status(&self) -> bool {
        KeyExpr::new(&self.key).is_ok_and(|k| self.rt.has_subscriber(&k))
    }

    /// Waits until a subscriber matches, up to `timeout`. Returns the matching status.
    pub async fn wait_matching(&self, timeout: Duration) -> bool {
        self.rt.wait_until(timeout, || self.matching_status()).await
    }

    /// Waits until everything queued for neighbours has been written, up to `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.rt.flush(timeout).await
    }
}

/// What happened to one publication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutReport {
    /// Destinations it was handed to: local subscribers and links to neighbours.
    pub destinations: usize,
    /// Storages that acknowledged it (0 unless [`PutBuilder::ack`] was asked).
    pub acked: usize,
    /// Links that dropped it (queue full under `Drop`, or `Block` waited `queues.block_ms` in
    /// vain). Also counted per link in `Session::info`.
    pub dropped: u64,
}

/// A publisher's acknowledgements in flight. A put that asks for one queues its sequence
/// number; one query per publisher is in flight at a time, carrying every sequence number
/// queued when it left (`key?_acks=<node>.<publisher>;_wait=MS[;_durable=1]`, payload: the
/// postcard list), and each storage answers once with the ones it holds; what queued meanwhile
/// leaves when the answer is in. So many puts in flight cost a few queries, not one each. (One
/// query in flight measured best: 1.2-1.4x the acknowledged puts per second of 2 or 4 in
/// flight with 5,000 puts in flight on 100 publishers, `durable_bench --ack received`; the
/// price is that a put made while its publisher's query is out waits for that one first.)
#[derive(Default)]
pub(crate) struct AckBatcher {
    q: Mutex<AckQueue>,
}

#[derive(Default)]
struct AckQueue {
    /// By level: `Received`, `Durable`.
    waiting: [Vec<AckReq>; 2],
    batches: usize,
}

struct AckReq {
    sn: u32,
    wait: Duration,
    tx: tokio::sync::oneshot::Sender<Result<usize, PublishError>>,
}

/// Acknowledgement queries in flight per publisher, at most (see [`AckBatcher`]).
const ACK_BATCHES: usize = 1;
/// Sequence numbers per acknowledgement query, at most.
const ACK_BATCH: usize = 4096;

impl AckBatcher {
    /// Asks the storages holding `key` to acknowledge `src`; how many did.
    async fn ack(
        self: &Arc<Self>,
        rt: Arc<Runtime>,
        key: Arc<str>,
        level: Ack,
        wait: Duration,
        src: crate::sample::SampleSource,
    ) -> Result<usize, PublishError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting[usize::from(level == Ack::Durable)].push(AckReq {
                sn: src.sn,
                wait,
                tx,
            });
            let start = q.batches < ACK_BATCHES;
            if start {
                q.batches += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().run(rt, key, src));
        }
        rx.await.unwrap_or(Err(PublishError::Closed))
    }

    /// Sends batches until nothing is queued.
    async fn run(
        self: Arc<Self>,
        rt: Arc<Runtime>,
        key: Arc<str>,
        src: crate::sample::SampleSource,
    ) {
        loop {
            let (level, batch) = {
                let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
                let Some(l) = (0..2).find(|&l| !q.waiting[l].is_empty()) else {
                    q.batches -= 1;
                    return;
                };
                let n = q.waiting[l].len().min(ACK_BATCH);
                (l, q.waiting[l].drain(..n).collect::<Vec<_>>())
            };
            let sns: Vec<u32> = batch.iter().map(|r| r.sn).collect();
            let wait = batch.iter().map(|r| r.wait).max().unwrap_or_default();
            let r = acknowledged(&rt, &key, level == 1, wait, &src, &sns).await;
            for req in batch {
                let out = match &r {
                    Err(PublishError::Closed) => Err(PublishError::Closed),
                    Err(e) => Err(PublishError::NotAcknowledged(e.to_string())),
                    Ok((counts, err)) => match (counts.get(&req.sn).copied().unwrap_or(0), err) {
                        (0, None) => Err(PublishError::NoStorage(key.to_string())),
                        (0, Some(e)) => Err(PublishError::NotAcknowledged(e.clone())),
                        (n, _) => Ok(n),
                    },
                };
                let _ = req.tx.send(out);
            }
        }
    }
}

/// One acknowledgement query for `sns` of `src`'s publisher: per sequence number, how many
/// storages hold it, and the first error a storage answered.
async fn acknowledged(
    rt: &Arc<Runtime>,
    key: &str,
    durable: bool,
    wait: Duration,
    src: &crate::sample::SampleSource,
    sns: &[u32],
) -> Result<(rustc_hash::FxHashMap<u32, usize>, Option<String>), PublishError> {
    let selector = format!(
        "{key}?_acks={}.{};_wait={}{}",
        src.node,
        src.publisher,
        wait.as_millis(),
        if durable { ";_durable=1" } else { "" }
    );
    let payload =
        postcard::to_allocvec(sns).map_err(|e| PublishError::NotAcknowledged(e.to_string()))?;
    let replies = query::GetBuilder::new(rt.clone(), &selector)
        .target(query::QueryTarget::AllComplete)
        .consolidation(query::Consolidation::None)
        .timeout(wait + Duration::from_secs(1))
        .payload(payload)
        .send()
        .await?
        .collect()
        .await;
    let mut counts = rustc_hash::FxHashMap::default();
    let mut err = None;
    for r in replies {
        match r.result {
            Ok(s) => {
                for sn in postcard::from_bytes::<Vec<u32>>(&s.payload).unwrap_or_default() {
                    *counts.entry(sn).or_insert(0) += 1;
                }
            }
            Err(e) => {
                err.get_or_insert_with(|| String::from_utf8_lossy(&e.payload).into_owned());
            }
        }
    }
    Ok((counts, err))
}

/// An acknowledgement setting with its level set (the wait kept, default 5 s).
fn with_level(ack: Option<(Ack, Duration)>, level: Ack) -> (Ack, Duration) {
    (level, ack.map_or(Duration::from_secs(5), |(_, t)| t))
}

/// An acknowledgement setting with its wait set (at most 10 s; the level kept, default
/// `Received`).
fn with_timeout(ack: Option<(Ack, Duration)>, t: Duration) -> (Ack, Duration) {
    (
        ack.map_or(Ack::Received, |(l, _)| l),
        t.min(Duration::from_secs(10)),
    )
}

/// One publication being built; `.await` it. Nothing is sent until then.
#[must_use = "a put does nothing until it is awaited"]
pub struct PutBuilder<'a> {
    publisher: &'a Publisher,
    kind: Kind,
    payload: Bytes,
    attachment: Option<Bytes>,
    timestamp: Option<hypha_core::hlc::Timestamp>,
    encoding: Option<Arc<str>>,
    ack: Option<(Ack, Duration)>,
}

impl<'a> PutBuilder<'a> {
    fn new(publisher: &'a Publisher, kind: Kind, payload: Bytes) -> Self {
        PutBuilder {
            publisher,
            kind,
            payload,
            attachment: None,
            timestamp: None,
            encoding: publisher.encoding.clone(),
            ack: publisher.ack,
        }
    }

    /// Waits, after publishing, until the storages that hold the key acknowledge the sample
    /// (each answers once it has stored it, or synced it for [`Ack::Durable`]), for at most
    /// 5 s ([`ack_timeout`](Self::ack_timeout)). `Err(NoStorage)` when no storage holds the
    /// key, `Err(NotAcknowledged)` when none acknowledged in time. Only on a declared
    /// publisher; the acknowledgement is a query to the key (`_acks=<node>.<publisher>`, batched)
    /// targeted at every complete queryable, so it needs nothing new on the wire.
    pub fn ack(mut self, level: Ack) -> Self {
        self.ack = Some(with_level(self.ack, level));
        self
    }

    /// How long an acknowledged put waits for its acknowledgement (at most 10 s: a storage
    /// waits no longer).
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.ack = Some(with_timeout(self.ack, t));
        self
    }

    /// Extra user bytes delivered with the sample.
    pub fn attachment(mut self, a: impl Into<Bytes>) -> Self {
        self.attachment = Some(a.into());
        self
    }

    /// An explicit timestamp (replays, bridges, tests); default: the node's HLC when
    /// `timestamping` is on.
    pub fn timestamp(mut self, t: hypha_core::hlc::Timestamp) -> Self {
        self.timestamp = Some(t);
        self
    }

    /// The encoding of this sample (overrides the publisher's).
    pub fn encoding(mut self, e: &str) -> Self {
        self.encoding = Some(Arc::from(e));
        self
    }
}

/// A put checked and ready to publish: the publisher's route, the sample, the acknowledgement
/// asked (with the sample's source).
struct Prepared {
    route: Arc<crate::runtime::Resolved>,
    sample: crate::runtime::Outgoing,
    size: usize,
    ack: Option<(Ack, Duration, crate::sample::SampleSource)>,
}

impl<'a> PutBuilder<'a> {
    // Inlined: out of line, moving the prepared sample cost 2-19 % of the 8 B rate (three
    // interleaved rounds against the code before `prepare` existed).
    #[inline(always)]
    fn prepare(self) -> Result<Prepared, PublishError> {
        let p = self.publisher;
        if p.rt.is_closed() {
            return Err(PublishError::Closed);
        }
        let limit = p.rt.config().limits.max_message_bytes;
        let size = self.payload.len() + self.attachment.as_ref().map_or(0, Bytes::len);
        if size > limit {
            return Err(PublishError::TooLarge { size, limit });
        }
        let route = p.route();
        // A declared publisher numbers its samples, end to end.
        let source = p.decl.map(|id| crate::sample::SampleSource {
            node: p.rt.id(),
            publisher: id as u32,
            sn: p.sn.fetch_add(1, Ordering::Relaxed),
        });
        let ack = match (self.ack, source) {
            (Some(_), None) => return Err(PublishError::AckNeedsPublisher),
            (Some((level, wait)), Some(src)) => Some((level, wait, src)),
            (None, _) => None,
        };
        let sample = crate::runtime::Outgoing {
            source,
            key: p.key.clone(),
            kind: self.kind,
            payload: self.payload,
            timestamp: self.timestamp,
            encoding: self.encoding,
            attachment: self.attachment,
        };
        Ok(Prepared {
            route,
            sample,
            size,
            ack,
        })
    }

    /// Publishes without waiting, from any thread: a subscriber callback (which runs on the
    /// link's reader, so an answer sent from it goes to the socket on the same thread, with no
    /// hand-over), or a thread with no async runtime. It does what `.await` does, except that
    /// it never waits: a link whose queue is full drops the sample even under
    /// [`CongestionControl::Block`], since there is nothing here to wait on, and the drop is
    /// counted as any other (in the returned [`PutReport::dropped`], per link and in
    /// `hypha info`). An acknowledged put must be awaited: `Err(AckNeedsAwait)`.
    pub fn now(self) -> Result<PutReport, PublishError> {
        let p = self.publisher;
        let qos = p.qos;
        let rt = p.rt.clone();
        let Prepared {
            route, sample, ack, ..
        } = self.prepare()?;
        if ack.is_some() {
            return Err(PublishError::AckNeedsAwait);
        }
        let r = match rt.publish_now(&route, qos, sample) {
            Ok(r) => r,
            Err(blocked) => rt.publish_drop_blocked(&route, blocked),
        };
        Ok(PutReport {
            destinations: r.destinations,
            acked: 0,
            dropped: r.dropped,
        })
    }
}

impl<'a> std::future::IntoFuture for PutBuilder<'a> {
    type Output = Result<PutReport, PublishError>;
    type IntoFuture = PutFuture<'a>;

    fn into_future(self) -> PutFuture<'a> {
        let p = self.publisher;
        let Prepared {
            route,
            sample,
            size,
            ack,
        } = match self.prepare() {
            Ok(prepared) => prepared,
            Err(e) => return PutFuture::Done(Some(Err(e))),
        };
        if let Some((level, wait, src)) = ack {
            let rt = p.rt.clone();
            let key = p.key.clone();
            let qos = p.qos;
            let acks = p.acks.clone();
            return PutFuture::Waiting(Box::pin(async move {
                let r = match rt.publish_now(&route, qos, sample) {
                    Ok(r) => r,
                    Err(blocked) => rt.publish_wait(&route, blocked).await,
                };
                let acked = acks.ack(rt, key, level, wait, src).await?;
                Ok(PutReport {
                    destinations: r.destinations,
                    acked,
                    dropped: r.dropped,
                })
            }));
        }
        // The common case completes here, without allocating; only a `Block` publisher facing
        // a full queue gets a boxed future that waits for room.
        match p.rt.publish_now(&route, p.qos, sample) {
            Ok(r) => {
                let report = PutReport {
                    destinations: r.destinations,
                    acked: 0,
                    dropped: r.dropped,
                };
                if yield_due(size) {
                    PutFuture::Waiting(Box::pin(async move {
                        tokio::task::yield_now().await;
                        Ok(report)
                    }))
                } else {
                    PutFuture::Done(Some(Ok(report)))
                }
            }
            Err(blocked) => {
                let rt = p.rt.clone();
                PutFuture::Waiting(Box::pin(async move {
                    let r = rt.publish_wait(&route, blocked).await;
                    Ok(PutReport {
                        destinations: r.destinations,
                        acked: 0,
                        dropped: r.dropped,
                    })
                }))
            }
        }
    }
}

/// Bytes a thread may publish without its task yielding (payload plus [`PUT_COST`] per put).
/// A publisher whose puts never wait (room in every queue, each put written or queued at once)
/// would otherwise keep its worker thread busy for as long as it has data: tokio polls the
/// I/O driver only between tasks (every 61 polls on a busy worker), so a 1 MiB-sample loop
/// held the replies of a RealTime ping in the same process unread for up to 0.1 s (issue 15,
/// BENCHMARKS.md "A bulk publisher starved the runtime's I/O"). A yield every 256 KiB costs
/// one reschedule per quarter megabyte, and lets the driver run in between.
const YIELD_EVERY: usize = 256 * 1024;
/// What a put counts for [`YIELD_EVERY`] besides its payload (so that 8-byte puts yield too,
/// about every 3,600).
const PUT_COST: usize = 64;

thread_local! {
    static PUT_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// True if this put brings the thread's published bytes since its last yield to
/// [`YIELD_EVERY`] (and starts counting again).
fn yield_due(size: usize) -> bool {
    PUT_BYTES.with(|c| {
        let n = c.get().saturating_add(size + PUT_COST);
        if n >= YIELD_EVERY {
            c.set(0);
            true
        } else {
            c.set(n);
            false
        }
    })
}

/// The future of a [`PutBuilder`].
pub enum PutFuture<'a> {
    #[doc(hidden)]
    Done(Option<Result<PutReport, PublishError>>),
    #[doc(hidden)]
    Waiting(
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<PutReport, PublishError>> + Send + 'a>,
        >,
    ),
}

impl std::fmt::Debug for PutFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutFuture")
    }
}

impl std::future::Future for PutFuture<'_> {
    type Output = Result<PutReport, PublishError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            PutFuture::Done(r) => {
                std::task::Poll::Ready(r.take().unwrap_or(Err(PublishError::Closed)))
            }
            PutFuture::Waiting(f) => f.as_mut().poll(cx),
        }
    }
}

/// Chooses how a subscriber receives.
pub struct SubscriberBuilder {
    rt: Arc<Runtime>,
    key: Result<OwnedKeyExpr, KeyExprError>,
    capacity: usize,
    history: Option<Duration>,
}

impl std::future::IntoFuture for SubscriberBuilder {
    type Output = Result<Subscriber<Fifo>, DeclareError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    /// `declare_subscriber(k).await`: a stream subscriber, once the neighbours have accepted
    /// it (up to [`DECLARE_WAIT`]); `Err(AccessDenied)` if one refused it.
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let s = self.stream()?;
            s.declared(DECLARE_WAIT).await?;
            Ok(s)
        })
    }
}

impl SubscriberBuilder {
    /// Samples buffered by `stream()` before newer ones are dropped (default from the config).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Late joiner: first replay what storages hold from the last `since` (in timestamp order),
    /// then continue live, with no gap and no duplicate at the seam (samples are matched by
    /// timestamp, so publishers should timestamp: `timestamping = true`, the default).
    pub fn history(mut self, since: Duration) -> Self {
        self.history = Some(since);
        self
    }

    /// A durable subscriber named `name`: its position is kept by a storage holding its key,
    /// each sample is acknowledged, unacknowledged ones are delivered again; subscribers of
    /// the same name share the samples (a work-queue group). See [`durable`].
    pub fn durable(self, name: &str) -> durable::DurableBuilder {
        durable::DurableBuilder::new(self.rt, self.key, name)
    }

    /// Calls `f` for every sample, on the task that received it. Keep it short.
    pub fn callback(
        self,
        f: impl Fn(Sample) + Send + Sync + 'static,
    ) -> Result<Subscriber<Callback>, DeclareError> {
        self.declare(Delivery::Callback(Box::new(f)), Callback)
    }

    /// An async stream: `recv().await`. When the consumer lags, newer samples are dropped and
    /// counted (`dropped()`); publishers are never slowed down.
    pub fn stream(self) -> Result<Subscriber<Fifo>, DeclareError> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.declare(
            Delivery::Channel(tx),
            Fifo {
                rx: tokio::sync::Mutex::new(rx),
            },
        )
    }

    /// A bounded ring keeping the newest `n` samples; older ones are evicted (and counted).
    pub fn ring(self, n: usize) -> Result<Subscriber<RingBuffer>, DeclareError> {
        let ring = Arc::new(Ring {
            q: Mutex::new(VecDeque::new()),
            cap: n.max(1),
            ready: Notify::new(),
        });
        self.declare(Delivery::Ring(ring.clone()), RingBuffer { ring })
    }

    fn declare<H>(self, delivery: Delivery, rx: H) -> Result<Subscriber<H>, DeclareError> {
        let key = self.key?;
        if let Some((len, limit)) = too_long(&self.rt, key.as_str()) {
            return Err(DeclareError::KeyTooLong { len, limit });
        }
        if self.rt.is_closed() {
            return Err(DeclareError::Closed);
        }
        let handler = Arc::new(Handler::new(delivery));
        let (report_tx, report_rx) = tokio::sync::watch::channel(None);
        let seam = self.history.map(|_| {
            Arc::new(Seam {
                report: report_tx,
                state: Mutex::new(SeamState::Syncing(Vec::new())),
                inner: handler.clone(),
            })
        });
        let history = self.history.map(|_| report_rx);
        let registered = match &seam {
            Some(seam) => Arc::new(Handler::new(Delivery::Seam(seam.clone()))),
            None => handler.clone(),
        };
        let k2 = key.clone();
        let id = self
            .rt
            .declare(Some(registered), |id| Cmd::Subscribe { id, key: k2 });
        if let (Some(seam), Some(since)) = (&seam, self.history) {
            let (rt, seam, key) = (self.rt.clone(), seam.clone(), key.clone());
            // The window is fixed now, at declaration: exactly `since`, however long the waits.
            let start = std::time::SystemTime::now()
                .checked_sub(since)
                .unwrap_or(std::time::UNIX_EPOCH);
            tokio::spawn(async move {
                let fetch = |selector: String| {
                    let get = query::GetBuilder::new(rt.clone(), &selector)
                        .target(query::QueryTarget::All)
                        .consolidation(query::Consolidation::None);
                    async move {
                        match get.send().await {
                            Ok(r) => r
                                .collect()
                                .await
                                .into_iter()
                                .filter_map(|r| r.result.ok())
                                .collect(),
                            Err(e) => {
                                tracing::warn!("history query failed: {e}");
                                Vec::<Sample>::new()
                            }
                        }
                    }
                };
                let since_time = |t: std::time::SystemTime| {
                    format!("{key}?_time=[{}..]", humantime::format_rfc3339_micros(t))
                };
                // Events, not sleeps: once the subscriber is ready, every publisher that matters
                // sends to it (those samples wait at the seam); then ask the storages that are
                // known to exist (bounded waits; the report says when none was found).
                let _ = rt.wait_ready(id, HISTORY_WAIT).await;
                let storage_found = rt
                    .wait_until(HISTORY_WAIT, || {
                        let (l, r) = rt.has_queryable(&key.as_keyexpr());
                        l || r
                    })
                    .await;
                let mut history = if storage_found {
                    fetch(since_time(start)).await
                } else {
                    Vec::new()
                };
                // A sample published just before the publisher knew of this subscriber may have
                // reached a storage only after it answered: ask once more for what is newer
                // than the newest sample replayed (duplicates are removed at the seam).
                if storage_found {
                    if let Some(newest) = history.iter().filter_map(|s| s.timestamp).max() {
                        let t = std::time::UNIX_EPOCH
                            + Duration::from_micros(newest.time.as_unix_micros());
                        history.extend(fetch(since_time(t)).await);
                    }
                }
                let report = HistoryReport {
                    storage_found,
                    ..HistoryReport::default()
                };
                seam.finish(history, report);
            });
        }
        Ok(Subscriber {
            rt: self.rt,
            id,
            key,
            handler,
            rx,
            history,
        })
    }
}

/// How long a late joiner waits to be ready, and for a storage to be known, before asking.
const HISTORY_WAIT: Duration = Duration::from_secs(5);

/// The receiving end of a callback subscriber or queryable: there is nothing to receive,
/// the callback gets everything (so there is no `recv` that could silently return nothing).
#[derive(Debug)]
pub struct Callback;

/// The receiving end of a `stream()` subscriber: a bounded FIFO.
#[derive(Debug)]
pub struct Fifo {
    rx: tokio::sync::Mutex<mpsc::Receiver<Sample>>,
}

impl Fifo {
    /// The next sample; `None` once the session is gone.
    pub async fn recv(&self) -> Option<Sample> {
        self.rx.lock().await.recv().await
    }

    /// A sample if one is waiting.
    pub fn try_recv(&self) -> Option<Sample> {
        self.rx.try_lock().ok()?.try_recv().ok()
    }
}

/// The receiving end of a `ring(n)` subscriber: the newest `n` samples.
pub struct RingBuffer {
    ring: Arc<Ring>,
}

impl std::fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingBuffer({})", self.ring.cap)
    }
}

impl RingBuffer {
    /// The oldest sample kept, waiting for one if none is.
    pub async fn recv(&self) -> Option<Sample> {
        loop {
            let ready = self.ring.ready.notified();
            if let Some(s) = self.ring.pop() {
                return Some(s);
            }
            ready.await;
        }
    }

    /// The oldest sample kept, if any.
    pub fn try_recv(&self) -> Option<Sample> {
        self.ring.pop()
    }
}

/// A subscriber; `H` is how it receives ([`Fifo`], [`RingBuffer`] or [`Callback`]), and the
/// subscriber dereferences to it (`sub.recv().await` on a stream subscriber). Dropping it
/// undeclares it.
pub struct Subscriber<H = Fifo> {
    rt: Arc<Runtime>,
    id: LocalId,
    key: OwnedKeyExpr,
    handler: Arc<Handler>,
    rx: H,
    /// A late joiner's history replay report, once it is done.
    history: Option<tokio::sync::watch::Receiver<Option<HistoryReport>>>,
}

impl<H> std::ops::Deref for Subscriber<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.rx
    }
}

impl<H> std::fmt::Debug for Subscriber<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subscriber({})", self.key)
    }
}

impl<H> Subscriber<H> {
    /// Waits until the subscriber is ready (see `ready`) or refused, up to `timeout`:
    /// `Err(AccessDenied)` if a neighbour's access control refused it, else whether it is ready.
    pub async fn declared(&self, timeout: Duration) -> Result<bool, DeclareError> {
        self.rt
            .wait_declared(self.id, timeout)
            .await
            .map_err(|d| DeclareError::AccessDenied((*d).clone()))
    }

    /// The refusal of this subscriber by a neighbour's access control, if any.
    pub fn denied(&self) -> Option<crate::acl::AccessDenied> {
        self.rt.denial(self.id).map(|d| (*d).clone())
    }

    /// The key expression.
    pub fn key_expr(&self) -> &OwnedKeyExpr {
        &self.key
    }

    /// For a late joiner (`history(..)`): what its replay found, once the seam has been crossed
    /// (`None` before, and for subscribers without history).
    pub fn history_report(&self) -> Option<HistoryReport> {
        self.history.as_ref().and_then(|r| *r.borrow())
    }

    /// Waits until a late joiner has crossed the seam (history delivered, live from then on),
    /// up to `timeout`, and says what the replay found: in particular whether any storage was
    /// there to answer (`storage_found`), so that "no history" is never silent.
    pub async fn history_done(&self, timeout: Duration) -> Option<HistoryReport> {
        let mut rx = self.history.clone()?;
        let r = tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some())).await;
        r.ok().and_then(|r| r.ok().and_then(|v| *v))
    }

    /// Waits until the subscriber is known where it matters (every neighbour asked has
    /// acknowledged it; through a router, the router's neighbours too), up to `timeout`:
    /// publications made after this reach it. Returns whether it is ready.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.rt.wait_ready(self.id, timeout).await
    }

    /// Samples delivered to this subscriber.
    pub fn received(&self) -> u64 {
        self.handler.received.load(Ordering::Relaxed)
    }

    /// Samples dropped because this subscriber lagged (stream full, ring evictions).
    pub fn dropped(&self) -> u64 {
        self.handler.dropped.load(Ordering::Relaxed)
    }

    /// Samples received twice from the same publisher (a sequence number seen already, within
    /// the last 64 of that publisher), by the publishers' end-to-end sequence numbers: removed,
    /// not delivered (a re-route across the backbone, a retry).
    pub fn duplicates(&self) -> u64 {
        self.handler.duplicates.load(Ordering::Relaxed)
    }

    /// Samples that never arrived from publishers this subscriber hears (sequence numbers
    /// skipped and not filled in later): losses anywhere on the way, made visible. A sample
    /// that arrives out of order is first counted missing, then taken back ([`late`](Self::late)).
    pub fn gaps(&self) -> u64 {
        let h = &self.handler;
        h.gaps
            .load(Ordering::Relaxed)
            .saturating_sub(h.late.load(Ordering::Relaxed))
    }

    /// Samples that arrived after a later one of the same publisher (delivered, out of order).
    pub fn late(&self) -> u64 {
        self.handler.late.load(Ordering::Relaxed)
    }
}

impl<H> Drop for Subscriber<H> {
    fn drop(&mut self) {
        self.rt.undeclare(self.id);
    }
}

/// Liveliness tokens and subscribers.
pub struct Liveliness {
    rt: Arc<Runtime>,
}

impl Liveliness {
    /// Declares a token and waits (up to [`DECLARE_WAIT`]) for the neighbours' verdict:
    /// `Err(AccessDenied)` if one refused it.
    pub async fn token(&self, key: &str) -> Result<LivelinessToken, DeclareError> {
        let t = self.declare_token(key)?;
        t.declared(DECLARE_WAIT).await?;
        Ok(t)
    }

    /// A liveliness subscriber, once accepted (up to [`DECLARE_WAIT`]): `Err(AccessDenied)`
    /// if a neighbour refused it.
    pub async fn subscriber(&self, key: &str) -> Result<Subscriber<Fifo>, DeclareError> {
        let s = self.declare_subscriber(key)?;
        s.declared(DECLARE_WAIT).await?;
        Ok(s)
    }

    /// Declares a token: liveliness subscribers see a put on `key` now and a delete when the
    /// token is dropped, the session closes, or this node dies and its links' leases expire.
    pub fn declare_token(&self, key: &str) -> Result<LivelinessToken, DeclareError> {
        let key = keyexpr(key)?;
        if let Some((len, limit)) = too_long(&self.rt, key.as_str()) {
            return Err(DeclareError::KeyTooLong { len, limit });
        }
        if self.rt.is_closed() {
            return Err(DeclareError::Closed);
        }
        let k = key.clone();
        let id = self.rt.declare(None, |id| Cmd::Token { id, key: k });
        Ok(LivelinessToken {
            rt: self.rt.clone(),
            id,
            key,
        })
    }

    /// A subscriber to tokens matching `key`: a put for each token alive now and each that
    /// appears, a delete for each that disappears. Receives like a stream subscriber.
    pub fn declare_subscriber(&self, key: &str) -> Result<Subscriber<Fifo>, DeclareError> {
        let key = keyexpr(key)?;
        if let Some((len, limit)) = too_long(&self.rt, key.as_str()) {
            return Err(DeclareError::KeyTooLong { len, limit });
        }
        if self.rt.is_closed() {
            return Err(DeclareError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.rt.config().queues.subscriber.max(1024));
        let handler = Arc::new(Handler::new(Delivery::Channel(tx)));
        let k = key.clone();
        let id = self
            .rt
            .declare(Some(handler.clone()), |id| Cmd::LivelinessSubscribe {
                id,
                key: k,
            });
        Ok(Subscriber {
            rt: self.rt.clone(),
            id,
            key,
            handler,
            rx: Fifo {
                rx: tokio::sync::Mutex::new(rx),
            },
            history: None,
        })
    }
}

/// A liveliness token. Dropping it withdraws it.
pub struct LivelinessToken {
    rt: Arc<Runtime>,
    id: LocalId,
    key: OwnedKeyExpr,
}

impl std::fmt::Debug for LivelinessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LivelinessToken({})", self.key)
    }
}

impl LivelinessToken {
    /// Waits until the token is known where it matters or refused, up to `timeout`.
    pub async fn declared(&self, timeout: Duration) -> Result<bool, DeclareError> {
        self.rt
            .wait_declared(self.id, timeout)
            .await
            .map_err(|d| DeclareError::AccessDenied((*d).clone()))
    }

    /// The refusal of this token by a neighbour's access control, if any.
    pub fn denied(&self) -> Option<crate::acl::AccessDenied> {
        self.rt.denial(self.id).map(|d| (*d).clone())
    }
}

impl Drop for LivelinessToken {
    fn drop(&mut self) {
        self.rt.undeclare(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypha_core::hlc::{Ntp64, Timestamp};

    fn at(t: u64, v: &str) -> Sample {
        Sample {
            key: Arc::from("k/a"),
            payload: Bytes::copy_from_slice(v.as_bytes()),
            kind: Kind::Put,
            timestamp: Some(Timestamp {
                time: Ntp64(t << 32),
                id: NodeId::from_u128(1),
            }),
            encoding: None,
            attachment: None,
            source: None,
        }
    }

    /// A second copy of a publication (same publisher, same sequence number: a re-route, a
    /// retry) is removed before the application and counted; a late one is delivered and
    /// taken back from the gaps.
    #[test]
    fn a_subscriber_removes_second_copies_and_takes_late_samples_back_from_gaps() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let h = Handler::new(Delivery::Callback(Box::new(move |s: Sample| {
            g.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&s.payload).to_string());
        })));
        let with_sn = |sn: u32| Sample {
            source: Some(crate::sample::SampleSource {
                node: NodeId::from_u128(9),
                publisher: 1,
                sn,
            }),
            ..at(u64::from(sn), &sn.to_string())
        };
        for sn in [0, 1, 1, 3, 2, 3, 4] {
            h.deliver(with_sn(sn));
        }
        assert_eq!(*got.lock().unwrap(), ["0", "1", "3", "2", "4"]);
        assert_eq!(h.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(h.gaps.load(Ordering::Relaxed), 1, "2 missing when 3 came");
        assert_eq!(h.late.load(Ordering::Relaxed), 1, "then 2 came");
    }

    #[test]
    fn sequence_numbers_reveal_duplicates_and_gaps_per_publisher() {
        let mut t = SeqTrack::default();
        let src = |publisher: u32, sn: u32| crate::sample::SampleSource {
            node: NodeId::from_u128(9),
            publisher,
            sn,
        };
        use Seen::{Duplicate, Late, New};
        let seen: Vec<Seen> = [0, 1, 1, 4, 2, 5, 2, 3, 3, 4]
            .iter()
            .map(|sn| t.see(&src(1, *sn)))
            .collect();
        assert_eq!(
            seen,
            [
                New(0),
                New(0),
                Duplicate,
                New(2), // 2 and 3 missing so far
                Late,   // 2 after all
                New(0),
                Duplicate,
                Late, // 3 after all
                Duplicate,
                Duplicate
            ]
        );
        // Another publisher has its own sequence, joining mid-stream is no gap, and the
        // sequence wraps.
        assert_eq!(t.see(&src(2, 1000)), New(0));
        assert_eq!(t.see(&src(2, 1001)), New(0));
        assert_eq!(t.see(&src(3, u32::MAX)), New(0));
        assert_eq!(t.see(&src(3, 0)), New(0));
        assert_eq!(t.see(&src(3, 2)), New(1));
        assert_eq!(t.see(&src(3, 1)), Late, "late across the wrap");
        assert_eq!(
            t.see(&src(3, u32::MAX)),
            Duplicate,
            "duplicate across the wrap"
        );
        // The window: a copy 64 behind is still recognised; a jump past the window forgets it.
        for sn in 3..=66 {
            assert_eq!(t.see(&src(3, sn)), New(0));
        }
        assert_eq!(t.see(&src(3, 2)), Duplicate, "64 behind the newest");
        assert_eq!(t.see(&src(3, 1)), Late, "65 behind: cannot tell, delivered");
        assert_eq!(t.see(&src(3, 1_000)), New(1_000 - 67));
        assert_eq!(t.see(&src(3, 999)), Late);
        assert_eq!(t.see(&src(3, 999)), Duplicate);
        // Publishers interleaved: each keeps its own window across the switches (the last
        // one's is held apart from the map).
        for sn in 1_001..1_010 {
            assert_eq!(t.see(&src(2, sn + 1)), New(0));
            assert_eq!(t.see(&src(3, sn)), New(0));
        }
        assert_eq!(
            t.see(&src(2, 1_005)),
            Duplicate,
            "publisher 2, after switches"
        );
        assert_eq!(
            t.see(&src(3, 1_005)),
            Duplicate,
            "publisher 3, after switches"
        );
        assert_eq!(
            t.see(&src(1, 5)),
            Duplicate,
            "publisher 1, back from the map"
        );
        assert_eq!(t.see(&src(1, 6)), New(0));
    }

    /// The seam, deterministically: live samples held while history is fetched, history and
    /// held samples merged in timestamp order without duplicates, then live (a replayed event
    /// arriving live again is dropped), and the report.
    #[test]
    fn the_seam_merges_history_and_live_without_gap_or_duplicate() {
        let (tx, mut rx) = mpsc::channel(64);
        let inner = Arc::new(Handler::new(Delivery::Channel(tx)));
        let (report_tx, report_rx) = tokio::sync::watch::channel(None);
        let seam = Seam {
            report: report_tx,
            state: Mutex::new(SeamState::Syncing(Vec::new())),
            inner,
        };
        seam.on_live(at(3, "3"));
        seam.on_live(at(2, "2")); // also in the history
        assert!(rx.try_recv().is_err(), "nothing before the history");
        seam.finish(
            vec![at(2, "2"), at(1, "1")],
            HistoryReport {
                storage_found: true,
                ..HistoryReport::default()
            },
        );
        seam.on_live(at(3, "3")); // replayed already: dropped
        seam.on_live(at(4, "4"));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|s| s.payload_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(got, ["1", "2", "3", "4"]);
        assert_eq!(
            *report_rx.borrow(),
            Some(HistoryReport {
                storage_found: true,
                replies: 2,
                delivered: 3
            })
        );
    }
}
