//! The node core: a sans-IO routing state machine (no tokio, no sockets, no clock reads).
//!
//! Shaped like quinn-proto's `Endpoint`: the runtime feeds it inputs and executes what it asks.
//!
//! - inputs: [`Node::handle_face_up`], [`Node::handle_face_down`], [`Node::handle_message`]
//!   (what a neighbour sent), [`Node::handle_local`] (what the application does),
//!   [`Node::handle_timeout`]; time is always an argument;
//! - outputs: [`Node::poll_action`] (send this message on that face, deliver this sample to
//!   local declaration N, hand this query to these queryables, this reply, this query is done,
//!   this declaration is ready, close that face) and [`Node::poll_timeout`];
//! - the hot path: [`Node::route`] answers "where does a sample on this key from this source
//!   go" with a cached [`Route`] that the runtime keeps and re-uses until it goes stale.
//!
//! Local declarations are plain ids ([`LocalId`]): the node never holds a handler, which is what
//! keeps the API above it and the node below it independent. The routing policy per role is in
//! [`hat`]; every message in or out of a face passes its [`intercept::Chain`].
//!
//! Remote input is capped per face ([`Caps`]): declarations, interests, pending queries, key
//! length. A face that exceeds a cap is closed with a reason naming the cap.

mod hat;
pub(crate) mod intercept;
pub(crate) mod linkstate;
mod query;
#[cfg(test)]
mod tests;

use crate::acl::{AccessDenied, Principal};
use crate::sample::{ErrorReply, Reply, Sample};
use bytes::Bytes;
use hat::From as Src0;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::{KeTree, KeyExpr, OwnedKeyExpr};
use hypha_core::time::{Duration, Instant};
use hypha_core::wire::{
    CloseReason, Consolidation, Mode, Priority, QueryTarget, SampleKind, interest,
};
use intercept::{Chain, Direction, InterceptFactory, NoIntercepts, Op, Verdict};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A face (a link to a neighbour), for the lifetime of the node.
pub(crate) type FaceId = u64;
/// A local declaration (subscriber, queryable, token, liveliness subscriber, publisher).
pub(crate) type LocalId = u64;
/// A query this node handles (its own, or one it answers or forwards). Also the request id it
/// uses on the wire.
pub(crate) type QueryId = u32;

/// The kind of a neighbour, from its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FaceKind {
    Peer,
    Client,
    Router,
    /// A router reached across the backbone (a virtual face: its messages travel wrapped in
    /// `Routed` along link-state routes). Exists on routers only, one per reachable router.
    Remote,
    /// As the routing policy sees a remote router of another site when this router is its
    /// site's designated router (it relays between that router and the site's peers). Never
    /// stored on a face: see `Node::hat_kind`.
    RemoteRelay,
}

impl FaceKind {
    pub(crate) fn of(mode: Mode) -> Self {
        match mode {
            Mode::Peer => FaceKind::Peer,
            Mode::Client => FaceKind::Client,
            Mode::Router => FaceKind::Router,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FaceKind::Peer => "peer",
            FaceKind::Client => "client",
            FaceKind::Router => "router",
            FaceKind::Remote | FaceKind::RemoteRelay => "remote",
        }
    }
}

/// Quality of service of a send: the lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lane {
    pub(crate) priority: Priority,
    pub(crate) reliable: bool,
}

impl Lane {
    /// Declarations and interests: reliable, highest priority.
    pub(crate) const CONTROL: Lane = Lane {
        priority: Priority::Control,
        reliable: true,
    };
    /// Queries and replies travel on their own lane, so they never block publications.
    pub(crate) const QUERY: Lane = Lane {
        priority: Priority::InteractiveLow,
        reliable: true,
    };
}

/// Caps on what one neighbour may make this node hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Subscribers + queryables + tokens declared by one face.
    pub(crate) declarations: usize,
    /// Interests one face keeps open.
    pub(crate) interests: usize,
    /// Queries from one face not yet finished.
    pub(crate) pending_queries: usize,
    /// Longest key expression accepted from a face, in bytes.
    pub(crate) key_len: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            declarations: 10_000,
            interests: 1_000,
            pending_queries: 1_000,
            key_len: 1_024,
        }
    }
}

/// What the node is.
pub(crate) struct NodeConfig {
    pub(crate) id: NodeId,
    pub(crate) role: Mode,
    pub(crate) caps: Caps,
    pub(crate) intercepts: Box<dyn InterceptFactory>,
    /// A router's site (empty: none).
    pub(crate) site: Arc<str>,
    /// When this node booted (unix ms): a router's link-state epoch.
    pub(crate) epoch: u64,
}

impl NodeConfig {
    pub(crate) fn new(id: NodeId, role: Mode) -> Self {
        NodeConfig {
            id,
            role,
            caps: Caps::default(),
            intercepts: Box::new(NoIntercepts),
            site: Arc::from(""),
            epoch: 1,
        }
    }
}

/// A declaration or interest on the wire, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decl {
    Subscriber {
        id: u32,
        key: OwnedKeyExpr,
    },
    Unsubscriber {
        id: u32,
    },
    Queryable {
        id: u32,
        key: OwnedKeyExpr,
        complete: bool,
    },
    Unqueryable {
        id: u32,
    },
    Token {
        id: u32,
        key: OwnedKeyExpr,
    },
    Untoken {
        id: u32,
    },
    Interest {
        id: u32,
        key: Option<OwnedKeyExpr>,
        flags: u8,
    },
    InterestFinal {
        id: u32,
    },
    UndeclareInterest {
        id: u32,
    },
    /// Between routers: what follows is everything the sender holds towards us (`ask`: do the
    /// same towards it), until [`Decl::ResyncEnd`] with the same `round` (the sender's resync
    /// number, increasing).
    Resync {
        ask: bool,
        round: u32,
    },
    ResyncEnd {
        round: u32,
    },
}

/// A query as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) id: u32,
    pub(crate) key: OwnedKeyExpr,
    pub(crate) parameters: Arc<str>,
    pub(crate) target: QueryTarget,
    pub(crate) consolidation: Consolidation,
    pub(crate) timeout_ms: u32,
    pub(crate) payload: Option<Bytes>,
    pub(crate) attachment: Option<Bytes>,
}

/// A network message between nodes, owned (the runtime converts to and from the wire).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Msg {
    Sample {
        sample: Sample,
        lane: Lane,
    },
    Declare(Decl),
    Request(Request),
    Response {
        id: u32,
        result: Result<Sample, ErrorReply>,
    },
    ResponseFinal {
        id: u32,
    },
    /// "`node` (a neighbour of this kind) listens on `locators`" (comma-separated endpoints).
    Gossip {
        node: NodeId,
        mode: Mode,
        locators: Arc<str>,
    },
    /// "Access control refused what you sent" (to the neighbour refused).
    Denied(Arc<crate::acl::AccessDenied>),
    /// The querier dropped request `id`'s replies.
    Cancel {
        id: u32,
    },
    /// A router's link-state advertisement (between backbone neighbours).
    LinkState(Arc<linkstate::Lsa>),
    /// `inner`, for router `dst` across the backbone (outbound only: the runtime wraps it,
    /// forwards transit copies and unwraps what is for this router).
    Routed {
        dst: NodeId,
        inner: Box<Msg>,
    },
    /// A routed message passing through (runtime only: never handed to the node).
    Transit(Box<Transit>),
}

/// A routed message in transit, its body kept encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transit {
    pub(crate) src: NodeId,
    pub(crate) dst: NodeId,
    pub(crate) hops: u8,
    pub(crate) origin: Option<NodeId>,
    pub(crate) body: Bytes,
    pub(crate) lane: Lane,
}

impl Msg {
    /// The lane a message travels on (samples carry theirs).
    pub(crate) fn lane(&self) -> Lane {
        match self {
            Msg::Sample { lane, .. } => *lane,
            Msg::Declare(_) | Msg::Gossip { .. } | Msg::Denied(_) | Msg::LinkState(_) => {
                Lane::CONTROL
            }
            Msg::Routed { inner, .. } => inner.lane(),
            Msg::Transit(t) => t.lane,
            Msg::Request(_)
            | Msg::Response { .. }
            | Msg::ResponseFinal { .. }
            | Msg::Cancel { .. } => Lane::QUERY,
        }
    }
}

/// What a local query asks.
#[derive(Clone, Debug)]
pub(crate) struct QueryParams {
    pub(crate) key: OwnedKeyExpr,
    pub(crate) parameters: Arc<str>,
    pub(crate) target: QueryTarget,
    pub(crate) consolidation: Consolidation,
    pub(crate) timeout: Duration,
    pub(crate) payload: Option<Bytes>,
    pub(crate) attachment: Option<Bytes>,
}

/// What the application does.
#[derive(Clone, Debug)]
pub(crate) enum Cmd {
    Subscribe {
        id: LocalId,
        key: OwnedKeyExpr,
    },
    Queryable {
        id: LocalId,
        key: OwnedKeyExpr,
        complete: bool,
    },
    Token {
        id: LocalId,
        key: OwnedKeyExpr,
    },
    LivelinessSubscribe {
        id: LocalId,
        key: OwnedKeyExpr,
    },
    Publisher {
        id: LocalId,
        key: OwnedKeyExpr,
    },
    /// Withdraws any local declaration.
    Undeclare {
        id: LocalId,
    },
    /// Publishes through the node. The runtime's publishers take the fast path instead (the
    /// same [`Route`], cached), so only the deterministic tests use this input.
    #[cfg_attr(not(test), allow(dead_code))]
    Publish {
        sample: Sample,
        lane: Lane,
    },
    Query {
        id: QueryId,
        params: QueryParams,
    },
    CancelQuery {
        id: QueryId,
    },
    /// A local queryable's reply to a query it was handed.
    Reply {
        query: QueryId,
        result: Result<Sample, ErrorReply>,
    },
    /// Every local queryable is done with the query.
    ReplyFinal {
        query: QueryId,
    },
}

/// What the node asks the runtime to do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send `msg` on `face` (on `msg.lane()`).
    Send { face: FaceId, msg: Msg },
    /// Deliver a sample (or a liveliness change) to a local subscriber.
    Deliver { to: LocalId, sample: Sample },
    /// Hand a query to local queryables; they answer with [`Cmd::Reply`] and
    /// [`Cmd::ReplyFinal`] (once, when all of them are done).
    Query {
        to: Vec<LocalId>,
        query: QueryId,
        key: OwnedKeyExpr,
        parameters: Arc<str>,
        payload: Option<Bytes>,
        attachment: Option<Bytes>,
    },
    /// A reply to a local query.
    Reply { query: QueryId, reply: Reply },
    /// A local query is over (after its last reply).
    QueryDone { query: QueryId },
    /// A local declaration is known where it matters: every neighbour asked has answered.
    Ready { id: LocalId },
    /// A neighbour's access control refused something of ours: these local declarations
    /// (none for a refused publication).
    Denied {
        locals: Vec<LocalId>,
        denial: Arc<AccessDenied>,
    },
    /// A node and where it listens, learnt by gossip. `neighbour`: it announced itself on one
    /// of our links (remember it, to redial it later); otherwise it is a neighbour's neighbour
    /// the runtime may dial (peers form a full mesh).
    Discovered {
        node: NodeId,
        locators: Arc<str>,
        neighbour: bool,
    },
    /// A client learnt of another router it may fail over to (from its router).
    Alternate { locators: Arc<str> },
    /// Close a face. `drain`: after what is already queued on it has been written.
    Close {
        face: FaceId,
        reason: CloseReason,
        detail: &'static str,
        drain: bool,
    },
}

/// Where a sample goes: local subscribers and faces. Shared with the runtime, which keeps it
/// until [`Route::is_stale`] says a declaration that could change it has changed.
#[derive(Debug, Default)]
pub(crate) struct Route {
    pub(crate) locals: Vec<LocalId>,
    pub(crate) faces: Vec<FaceId>,
    /// Routers across the backbone: (the backbone link to send on, the router it is for).
    pub(crate) routed: Vec<(FaceId, NodeId)>,
    /// The source face's ingress hooks refuse puts on this key (count them as denied).
    pub(crate) denied: bool,
    /// ... and deletions.
    pub(crate) denied_delete: bool,
    stale: AtomicBool,
}

impl Route {
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }
    fn expire(&self) {
        self.stale.store(true, Ordering::Release);
    }
}

/// Kinds of declarations that live in the tables and are propagated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Sub,
    Qabl,
    Token,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::Sub => interest::SUBSCRIBERS,
            Kind::Qabl => interest::QUERYABLES,
            Kind::Token => interest::TOKENS,
        }
    }
}

/// Who made a declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Src {
    Local,
    Face(FaceId),
}

/// One declaration in a table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    src: Src,
    /// Local id, or the face's declaration id.
    id: u64,
    complete: bool,
}

/// What the application declared.
#[derive(Clone, Debug)]
enum LocalKind {
    Sub,
    Qabl(bool),
    Token,
    LivSub,
    Pub,
}

#[derive(Clone, Debug)]
struct LocalDecl {
    kind: LocalKind,
    key: OwnedKeyExpr,
}

/// An interest we sent to a face.
#[derive(Clone, Debug)]
struct MyInterest {
    key: OwnedKeyExpr,
    flags: u8,
    /// Its final marker arrived: the face told us every current match.
    done: bool,
}

/// An interest a face asked of us.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TheirInterest {
    key: Option<OwnedKeyExpr>,
    flags: u8,
}

/// One wire declaration told to a face: (kind, key, complete).
type Slot = (Kind, OwnedKeyExpr, bool);

/// A wire declaration told to a face.
struct OutEntry {
    /// Its wire id.
    wid: u32,
    /// Sources holding it.
    refs: usize,
    /// Its number among the declarations sent on the face ([`Out::seq`]).
    seq: u64,
}

/// What one source (a local or a face's declaration) holds on a face.
struct Held {
    key: OwnedKeyExpr,
    complete: bool,
    /// The wire declarations it holds: its own (kind, key, complete), and/or the key of each
    /// aggregated interest of the face it matches.
    slots: Vec<Slot>,
}

/// What we declared to one face: one wire declaration per distinct (kind, key, complete),
/// counted by how many sources hold it. A subscriber answering an interest that asked for
/// aggregation holds the interest's key instead of its own, so many subscribers matching one
/// publisher's interest cost one declaration.
#[derive(Default)]
struct Out {
    entries: HashMap<Slot, OutEntry>,
    counted: HashMap<(Kind, Src, u64), Held>,
    next_id: u32,
    /// Wire declarations sent on the face so far (each entry is numbered when sent).
    seq: u64,
    /// Every declaration numbered up to this has arrived: a barrier sent after it was
    /// answered (the lane is ordered).
    acked: u64,
    /// Barriers in flight on the face: id → ([`Out::seq`] when sent, its key).
    barriers: HashMap<u32, (u64, Option<OwnedKeyExpr>)>,
    /// Waits that joined a barrier in flight instead of sending their own: barrier id → the
    /// waits' ids.
    followers: HashMap<u32, Vec<u32>>,
}

impl Out {
    /// What a barrier for a declaration holding entries numbered up to `seq` needs on this
    /// face: nothing if they have arrived, else a barrier in flight sent after them (joined),
    /// else a new one.
    fn barrier_for(&self, seq: u64) -> BarrierNeed {
        if seq <= self.acked {
            return BarrierNeed::None;
        }
        match self.barriers.iter().find(|(_, (s, _))| *s >= seq) {
            Some((b, _)) => BarrierNeed::Join(*b),
            None => BarrierNeed::Send,
        }
    }
}

/// See [`Out::barrier_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarrierNeed {
    None,
    Join(u32),
    Send,
}

struct Face {
    kind: FaceKind,
    node: NodeId,
    dialed: bool,
    subs: HashMap<u32, OwnedKeyExpr>,
    qabls: HashMap<u32, (OwnedKeyExpr, bool)>,
    tokens: HashMap<u32, OwnedKeyExpr>,
    their_interests: HashMap<u32, TheirInterest>,
    my_interests: HashMap<u32, MyInterest>,
    out: Out,
    chain: Chain,
    pending_queries: usize,
    counters: FaceCounters,
    principal: Principal,
    /// When the face came up.
    since: Instant,
    /// When a denial on this face was last logged, and how many since were not.
    warned: Option<Instant>,
    unwarned: u64,
    /// When each refused publication was last noticed to the face.
    noticed: HashMap<(crate::acl::Op, Arc<str>), Instant>,
    /// A remote router's resync in progress: the ids it has not confirmed yet.
    resync: Option<Marks>,
    /// The remote router's newest resync begun here: (its LSA epoch then, its number).
    resync_seen: Option<(u64, u32)>,
}

/// Declarations and interests of a remote router not yet confirmed by its resync.
#[derive(Default)]
struct Marks {
    /// The resync's number.
    round: u32,
    subs: HashSet<u32>,
    qabls: HashSet<u32>,
    tokens: HashSet<u32>,
    interests: HashSet<u32>,
}

impl Face {
    fn new(
        kind: FaceKind,
        node: NodeId,
        dialed: bool,
        chain: Chain,
        principal: Principal,
        now: Instant,
    ) -> Face {
        Face {
            kind,
            node,
            dialed,
            subs: HashMap::new(),
            qabls: HashMap::new(),
            tokens: HashMap::new(),
            their_interests: HashMap::new(),
            my_interests: HashMap::new(),
            out: Out {
                next_id: 1,
                ..Out::default()
            },
            chain,
            pending_queries: 0,
            counters: FaceCounters::default(),
            principal,
            since: now,
            warned: None,
            unwarned: 0,
            noticed: HashMap::new(),
            resync: None,
            resync_seen: None,
        }
    }
}

/// Counters of one face, for `info` and the admin space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaceCounters {
    pub(crate) declarations_in: u64,
    pub(crate) denied_in: u64,
    pub(crate) denied_out: u64,
    pub(crate) replies_refused: u64,
}

/// A snapshot of one face.
#[derive(Clone, Debug)]
pub(crate) struct FaceSnapshot {
    pub(crate) id: FaceId,
    pub(crate) kind: FaceKind,
    pub(crate) node: NodeId,
    pub(crate) subscribers: usize,
    pub(crate) queryables: usize,
    pub(crate) tokens: usize,
    pub(crate) interests: usize,
    pub(crate) declared_to: usize,
    pub(crate) counters: FaceCounters,
    pub(crate) principal: Principal,
}

/// Readiness of a local declaration, or a barrier a face asked us to pass on.
struct Wait {
    waiting: HashSet<FaceId>,
    done: Done,
}

enum Done {
    Ready(LocalId),
    /// Answer `InterestFinal { id }` on the face.
    Final(FaceId, u32),
}

/// Most routes cached before the cache is emptied (bounds memory under many keys).
const MAX_CACHED_ROUTES: usize = 16_384;

/// The node.
pub(crate) struct Node {
    id: NodeId,
    role: Mode,
    caps: Caps,
    intercepts: Box<dyn InterceptFactory>,
    faces: HashMap<FaceId, Face>,
    locals: HashMap<LocalId, LocalDecl>,
    subs: KeTree<Vec<Item>>,
    qabls: KeTree<Vec<Item>>,
    tokens: KeTree<Vec<Item>>,
    liveliness_subs: KeTree<Vec<LocalId>>,
    routes: HashMap<(Option<FaceId>, Arc<str>), Arc<Route>>,
    waits: HashMap<u32, Wait>,
    queries: HashMap<QueryId, query::QueryState>,
    next_query: QueryId,
    next_id: u64,
    actions: VecDeque<Action>,
    /// Bumped on every declaration change (for waiters on "something changed").
    version: u64,
    /// Where this node listens (gossiped to every new neighbour).
    locators: Arc<str>,
    /// Where neighbours said they listen (relayed to newcomers), capped.
    known: HashMap<NodeId, Arc<str>>,
    /// A router's link-state database (routers only).
    lsdb: Option<linkstate::Lsdb>,
    /// The virtual face of each router reachable across the backbone.
    pairs: std::collections::BTreeMap<NodeId, FaceId>,
    /// The next hop of each remote router's route when last computed.
    pair_next: HashMap<NodeId, NodeId>,
    next_pair: FaceId,
    /// Interests of clients and peers passed on to every remote router:
    /// (origin face, its interest id) → (our interest id, key, flags).
    forwarded: HashMap<(FaceId, u32), (u32, OwnedKeyExpr, u8)>,
    /// Backbone neighbours whose link cost was configured or measured here (the others take
    /// the cost their far end advertises).
    cost_set: HashSet<NodeId>,
    /// Backbone neighbours' measured costs (RTT ms) and when each last changed.
    measured: HashMap<NodeId, (u32, Instant)>,
    pub(crate) backbone_counters: BackboneCounters,
    /// This router is its site's designated router.
    is_dr: bool,
    /// Not before this may it claim the role (set at its first backbone event).
    dr_hold: Option<Instant>,
    dr_hold_fired: bool,
    /// The id of the interest last passed on to remote routers.
    last_forwarded: u32,
    /// Passed-on interests asking for current matches only (forgotten once answered).
    once: HashSet<u32>,
    /// The number of our last resync with a remote router (one sequence for all of them).
    resync_round: u32,
}

/// How long a router waits from its first backbone event before claiming its site's
/// designated-router role (time to hear of an incumbent).
const DR_HOLD: Duration = Duration::from_secs(1);

/// Counters of the backbone, for `info` and the admin space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BackboneCounters {
    /// Messages for a router with no route (dropped).
    pub(crate) unroutable: u64,
    /// Routed messages dropped when their hop count ran out.
    pub(crate) hop_drop: u64,
    /// Routed messages passed on towards another router.
    pub(crate) transit: u64,
    /// Resyncs started with remote routers whose route moved.
    pub(crate) resyncs: u64,
}

/// Virtual faces (remote routers) are numbered from here, far from the runtime's link ids.
const PAIR_FACE_BASE: FaceId = 1 << 62;
/// The interest a router asks every remote router with: their queryables (a query has no
/// declaration to ask ahead with, and queryables are few; see ARCHITECTURE.md).
const QUERYABLES_INTEREST: u32 = u32::MAX - 1;
/// The same for their admin queryables (`@/**`: `**` does not match `@` chunks).
const ADMIN_QUERYABLES_INTEREST: u32 = u32::MAX - 2;
/// A measured link cost changes at most once per this interval.
pub(crate) const COST_HOLD: Duration = Duration::from_secs(10);
/// Hops a routed message may take.
pub(crate) const MAX_HOPS: u8 = 16;

/// Most nodes remembered from gossip (a neighbour cannot exhaust memory with it).
const MAX_KNOWN: usize = 4096;

impl Node {
    pub(crate) fn new(config: NodeConfig) -> Self {
        Node {
            id: config.id,
            role: config.role,
            caps: config.caps,
            intercepts: config.intercepts,
            faces: HashMap::new(),
            locals: HashMap::new(),
            subs: KeTree::new(),
            qabls: KeTree::new(),
            tokens: KeTree::new(),
            liveliness_subs: KeTree::new(),
            routes: HashMap::new(),
            waits: HashMap::new(),
            queries: HashMap::new(),
            next_query: 1,
            next_id: 1,
            actions: VecDeque::new(),
            version: 1,
            locators: Arc::from(""),
            known: HashMap::new(),
            lsdb: (config.role == Mode::Router)
                .then(|| linkstate::Lsdb::new(config.id, config.epoch, config.site.clone())),
            pairs: Default::default(),
            pair_next: HashMap::new(),
            next_pair: PAIR_FACE_BASE,
            forwarded: HashMap::new(),
            cost_set: HashSet::new(),
            measured: HashMap::new(),
            backbone_counters: BackboneCounters::default(),
            is_dr: false,
            dr_hold: None,
            dr_hold_fired: false,
            last_forwarded: 0,
            once: HashSet::new(),
            resync_round: 0,
        }
    }

    /// Where this node listens, comma-separated (told to every new neighbour; a router also
    /// advertises it in its LSA, for other routers' clients).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn set_locators(&mut self, now: Instant, locators: Arc<str>) {
        self.set_locators_advertising(now, locators.clone(), locators);
    }

    /// Where this node listens (`locators`, told to every new neighbour, unspecified hosts
    /// left for the neighbour to fill in with our address) and, for a router's LSA, where
    /// other routers' clients can reach it (`advertised`: the same with unspecified hosts
    /// replaced by our interface addresses, since a client learns them through a third node).
    pub(crate) fn set_locators_advertising(
        &mut self,
        now: Instant,
        locators: Arc<str>,
        advertised: Arc<str>,
    ) {
        self.locators = locators;
        let changed = self
            .lsdb
            .as_mut()
            .is_some_and(|db| db.set_locators(now, advertised));
        if changed {
            self.after_own_change(now);
        }
    }

    #[cfg(test)]
    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn role(&self) -> Mode {
        self.role
    }

    /// Changes whenever a declaration (local or remote) or a face changes.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// A fresh id for a local declaration (also used for interest ids).
    pub(crate) fn next_local_id(&mut self) -> LocalId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A fresh id for a local query.
    pub(crate) fn next_query_id(&mut self) -> QueryId {
        let id = self.next_query;
        self.next_query = self.next_query.wrapping_add(1).max(1);
        id
    }

    /// The next thing to do; poll until `None` after every input.
    #[must_use]
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due (the earliest query deadline).
    #[must_use]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let dr = self.dr_hold.filter(|_| !self.dr_hold_fired);
        let lsa = self.lsdb.as_ref().and_then(|db| db.next_expiry());
        self.queries
            .values()
            .map(|q| q.deadline)
            .chain(dr)
            .chain(lsa)
            .min()
    }

    /// Backbone timers: the designated-router hold, ageing of unreachable routers' LSAs.
    fn backbone_timeout(&mut self, now: Instant) {
        if self.lsdb.is_none() {
            return;
        }
        if let Some(db) = self.lsdb.as_mut() {
            db.expire(now);
        }
        if self.dr_hold.is_some_and(|h| h <= now) && !self.dr_hold_fired {
            self.dr_hold_fired = true;
            self.elect(now);
        }
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    // ----- faces -----------------------------------------------------------------------------

    /// A link completed its handshake with `node`, a neighbour of `kind`. `dialed`: this node
    /// dialled it. If a link to `node` exists already, the one dialled by the smaller node id
    /// survives (both ends agree) and the other is closed after draining; returns `false` if
    /// the new face is the one refused.
    /// A face is up, to `node`, whose credential named `principal` (its access-control
    /// identity on this face).
    pub(crate) fn handle_face_up_as(
        &mut self,
        now: Instant,
        face: FaceId,
        kind: FaceKind,
        node: NodeId,
        dialed: bool,
        principal: Principal,
    ) -> bool {
        if node == self.id {
            self.push(Action::Close {
                face,
                reason: CloseReason::Refused,
                detail: "a link to ourselves",
                drain: false,
            });
            return false;
        }
        tracing::debug!(me = %self.id, face, ?kind, peer = %node, dialed, "face up");
        let dialer_of = |dialed: bool| if dialed { self.id } else { node };
        let existing = self
            .faces
            .iter()
            .find(|(_, f)| f.node == node && f.kind != FaceKind::Remote)
            .map(|(id, f)| (*id, f.dialed, !f.principal.is_anonymous(), f.since));
        let mut replaced = None;
        if let Some((old, old_dialed, old_proven, since)) = existing {
            // A link displaces an established one for the same id only if it proves that id
            // as well (a certificate or token bound to it): an unproven claim never takes over
            // a proven link. Between two links alike, the duplicate rule decides.
            let proven = !principal.is_anonymous();
            let new_wins = match (old_proven, proven) {
                (true, false) => false,
                (false, true) => true,
                _ => dialer_of(dialed) < dialer_of(old_dialed),
            };
            // Two nodes dialling each other at once is routine; a second link for a node
            // linked for a while is not.
            if now.saturating_since(since) > SETTLED_LINK {
                tracing::warn!(
                    me = %self.id,
                    peer = %node,
                    old,
                    face,
                    proven,
                    old_proven,
                    "a second link claims node {node}, linked for {:?}: {}",
                    now.saturating_since(since),
                    if new_wins { "it replaces the old one" } else { "refused" }
                );
            }
            if new_wins {
                // The new link wins: the old one goes once drained; its queries move over.
                replaced = Some(old);
            } else {
                self.push(Action::Close {
                    face,
                    reason: CloseReason::Duplicate,
                    detail: "duplicate link",
                    drain: false,
                });
                return false;
            }
        }
        let hooks = self.intercepts.build(face, kind, node, &principal);
        self.faces.insert(
            face,
            Face::new(kind, node, dialed, Chain::new(hooks), principal, now),
        );
        self.expire_all_routes();
        if self.role == Mode::Router && kind == FaceKind::Router {
            // A backbone link: it carries link state and routed messages only.
            self.adjacency_up(now, face, node);
            if let Some(old) = replaced {
                self.push(Action::Close {
                    face: old,
                    reason: CloseReason::Duplicate,
                    detail: "duplicate link",
                    drain: true,
                });
                self.remove_face(old, Some(face));
            }
            self.changed();
            return true;
        }
        // Everything visible to the newcomer: local declarations and other faces'.
        for (kind, src, id, key, complete) in self.all_decls() {
            self.consider(face, kind, src, id, &key, complete);
        }
        // Our interests (publishers, liveliness subscribers) are asked of it too.
        if hat::asks(self.role, kind) {
            let mine: Vec<(LocalId, OwnedKeyExpr, u8)> = self
                .locals
                .iter()
                .filter_map(|(id, l)| interest_flags(&l.kind).map(|fl| (*id, l.key.clone(), fl)))
                .collect();
            for (id, key, flags) in mine {
                self.send_interest(face, id as u32, key, flags);
            }
        }
        // Gossip: who we are and where we listen, and the neighbours we know (so that peers
        // configured with one endpoint still form a full mesh).
        self.send(
            face,
            Msg::Gossip {
                node: self.id,
                mode: self.role,
                locators: self.locators.clone(),
            },
        );
        let known: Vec<(NodeId, Arc<str>)> = self
            .known
            .iter()
            .filter(|(n, _)| **n != node && self.faces.values().any(|f| f.node == **n))
            .map(|(n, l)| (*n, l.clone()))
            .collect();
        for (n, locators) in known {
            self.send(
                face,
                Msg::Gossip {
                    node: n,
                    mode: Mode::Peer,
                    locators,
                },
            );
        }
        if kind == FaceKind::Client {
            self.send_alternates(face);
        }
        if let Some(old) = replaced {
            self.push(Action::Close {
                face: old,
                reason: CloseReason::Duplicate,
                detail: "duplicate link",
                drain: true,
            });
            self.remove_face(old, Some(face));
        }
        self.changed();
        true
    }

    /// A link is gone: everything it declared goes (its tokens vanish), queries waiting on it
    /// are over for that part.
    pub(crate) fn handle_face_down(&mut self, now: Instant, face: FaceId) {
        let backbone = self
            .faces
            .get(&face)
            .filter(|f| self.role == Mode::Router && f.kind == FaceKind::Router)
            .map(|f| f.node);
        self.remove_face(face, None);
        if let Some(node) = backbone {
            self.adjacency_down(now, node);
        }
    }

    /// Removes a face; `replacement`: a new link to the same node that takes over its queries.
    fn remove_face(&mut self, face: FaceId, replacement: Option<FaceId>) {
        let Some(f) = self.faces.remove(&face) else {
            return;
        };
        tracing::debug!(me = %self.id, face, kind = ?f.kind, peer = %f.node, ?replacement, "face removed");
        // What it announced about itself goes with its last link: relayed only while linked,
        // and kept, it filled the table (4,096) with peers long gone (issue 16: churn).
        if !self.faces.values().any(|g| g.node == f.node) {
            self.known.remove(&f.node);
        }
        self.expire_all_routes();
        if f.kind == FaceKind::Remote {
            self.pairs.remove(&f.node);
        }
        // Interests it asked that were passed on to remote routers are withdrawn there.
        let gone: Vec<(u32, u32)> = self
            .forwarded
            .iter()
            .filter(|((g, _), _)| *g == face)
            .map(|((_, their), (wid, _, _))| (*their, *wid))
            .collect();
        for (their, wid) in gone {
            self.forwarded.remove(&(face, their));
            self.withdraw_forwarded(wid);
        }
        // Withdraw what it declared, from the tables and from the other faces.
        for (id, key) in f.subs {
            self.remove_item(Kind::Sub, Src::Face(face), u64::from(id), &key);
        }
        for (id, (key, _)) in f.qabls {
            self.remove_item(Kind::Qabl, Src::Face(face), u64::from(id), &key);
        }
        for (id, key) in f.tokens {
            self.remove_item(Kind::Token, Src::Face(face), u64::from(id), &key);
        }
        // Barriers and readiness no longer wait for it.
        let ids: Vec<u32> = self
            .waits
            .iter()
            .filter(|(_, w)| w.waiting.contains(&face))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.wait_answered(id, face);
        }
        self.waits
            .retain(|_, w| !matches!(w.done, Done::Final(f2, _) if f2 == face));
        self.queries_face_down(face, replacement);
        self.changed();
    }

    /// New rules: every face's chain is rebuilt from its principal, every cached route
    /// recomputed (tightened rules apply to the next sample), and each face's declarations
    /// judged again: those now refused are dropped and noticed to the face.
    pub(crate) fn set_intercepts(&mut self, now: Instant, factory: Box<dyn InterceptFactory>) {
        self.intercepts = factory;
        let ids: Vec<FaceId> = self.faces.keys().copied().collect();
        for face in ids {
            let Some(f) = self.faces.get_mut(&face) else {
                continue;
            };
            let hooks = self.intercepts.build(face, f.kind, f.node, &f.principal);
            let old = std::mem::take(&mut f.chain);
            f.chain = Chain::new(hooks);
            f.chain.denied_in = old.denied_in;
            f.chain.denied_out = old.denied_out;
            let mut refused: Vec<(Decl, intercept::Denial)> = Vec::new();
            for (id, key) in &f.subs {
                if let Verdict::Deny(d) =
                    f.chain
                        .check(Direction::Ingress, Op::Sub, Some(key.as_str()))
                {
                    refused.push((Decl::Unsubscriber { id: *id }, d));
                }
            }
            for (id, (key, _)) in &f.qabls {
                if let Verdict::Deny(d) =
                    f.chain
                        .check(Direction::Ingress, Op::Queryable, Some(key.as_str()))
                {
                    refused.push((Decl::Unqueryable { id: *id }, d));
                }
            }
            for (id, key) in &f.tokens {
                if let Verdict::Deny(d) =
                    f.chain
                        .check(Direction::Ingress, Op::Token, Some(key.as_str()))
                {
                    refused.push((Decl::Untoken { id: *id }, d));
                }
            }
            for (undeclare, d) in refused {
                self.warn_denied(now, face, &d);
                if let Some(a) = d.acl {
                    self.send(face, Msg::Denied(a));
                }
                // As if the face had withdrawn it.
                self.on_declare(face, undeclare);
            }
        }
        // What each face was told is judged again too (egress rules may have tightened):
        // `recheck_face` re-decides every declaration told, egress rules included.
        let ids: Vec<FaceId> = self.faces.keys().copied().collect();
        for face in ids {
            self.recheck_face(face);
            for (kind, src, id, key, complete) in self.all_decls() {
                self.consider(face, kind, src, id, &key, complete);
            }
        }
        self.expire_all_routes();
        self.changed();
    }

    /// Faces, for `info` and the admin space.
    pub(crate) fn faces(&self) -> Vec<FaceSnapshot> {
        let mut v: Vec<FaceSnapshot> = self
            .faces
            .iter()
            .map(|(id, f)| FaceSnapshot {
                id: *id,
                kind: f.kind,
                node: f.node,
                subscribers: f.subs.len(),
                queryables: f.qabls.len(),
                tokens: f.tokens.len(),
                interests: f.their_interests.len(),
                declared_to: f.out.entries.len(),
                principal: f.principal.clone(),
                counters: FaceCounters {
                    denied_in: f.counters.denied_in + f.chain.denied_in,
                    denied_out: f.counters.denied_out + f.chain.denied_out,
                    ..f.counters
                },
            })
            .collect();
        v.sort_by_key(|f| f.id);
        v
    }

    // ----- the backbone (routers only) -------------------------------------------------------

    /// How the routing policy sees a face: a remote router of another site is a relay for
    /// this site's peers when this router is the site's designated router.
    fn hat_kind(&self, f: &Face) -> FaceKind {
        if f.kind == FaceKind::Remote && self.is_dr {
            let other_site = self
                .lsdb
                .as_ref()
                .and_then(|db| db.lsa(&f.node).map(|l| l.site != *db.site()))
                .unwrap_or(false);
            if other_site {
                return FaceKind::RemoteRelay;
            }
        }
        f.kind
    }

    /// Elects the site's designated router among the reachable routers of this site: the
    /// incumbent (its LSA says so) keeps the role (non-preemptive); without one, the lowest
    /// id takes it; two incumbents (a partition healed): the lower id. A router claims the
    /// role only after [`DR_HOLD`] from its first backbone event, so that a router booting
    /// next to an incumbent learns of it first.
    fn elect(&mut self, now: Instant) {
        let Some(db) = self.lsdb.as_ref() else {
            return;
        };
        // The hold starts at the first backbone link, not at boot (setting our locators
        // already elects): a restarted router whose neighbours redial it only after their
        // backoff claimed the role alone, then took it from the incumbent when they came
        // back (two incumbents: the lower id), a preemption in half the restarts.
        if self.dr_hold.is_none() && db.own().links.is_empty() {
            return;
        }
        let hold = *self.dr_hold.get_or_insert(now + DR_HOLD);
        let site = db.site().clone();
        let mut incumbents = Vec::new();
        let mut all = vec![self.id];
        if self.is_dr {
            incumbents.push(self.id);
        }
        for r in db.routes().keys() {
            if let Some(l) = db.lsa(r).filter(|l| l.site == site) {
                all.push(*r);
                if l.flags & linkstate::FLAG_DR != 0 {
                    incumbents.push(*r);
                }
            }
        }
        let dr = incumbents
            .iter()
            .min()
            .copied()
            .or_else(|| all.iter().min().copied());
        let me = dr == Some(self.id) && (self.is_dr || now >= hold);
        if me != self.is_dr {
            tracing::info!(
                me = %self.id,
                site = %site,
                designated = me,
                ?incumbents,
                "designated router of the site"
            );
            self.is_dr = me;
            let flags = if me { linkstate::FLAG_DR } else { 0 };
            if let Some(db) = self.lsdb.as_mut() {
                db.set_flags(now, flags);
            }
            let own = self.lsdb.as_ref().map(|db| db.own().clone());
            if let Some(own) = own {
                self.flood(None, own);
            }
            self.relay_changed();
        }
    }

    /// Whether this router is its site's designated router.
    pub(crate) fn is_designated(&self) -> bool {
        self.is_dr
    }

    /// The designated-router role moved: what peers and remote routers were told is judged
    /// again, and peers' interests are passed on (or withdrawn) accordingly.
    fn relay_changed(&mut self) {
        self.expire_all_routes();
        let ids: Vec<FaceId> = self
            .faces
            .iter()
            .filter(|(_, f)| matches!(f.kind, FaceKind::Peer | FaceKind::Remote))
            .map(|(g, _)| *g)
            .collect();
        for face in &ids {
            self.recheck_face(*face);
        }
        for face in &ids {
            for (kind, src, id, key, complete) in self.all_decls() {
                self.consider(*face, kind, src, id, &key, complete);
            }
        }
        // Peers' interests: passed on to relayed routers while designated, withdrawn when not.
        let peer_fwd: Vec<(FaceId, u32)> = self
            .forwarded
            .iter()
            .filter(|((g, _), _)| self.faces.get(g).is_some_and(|f| f.kind == FaceKind::Peer))
            .map(|(k, _)| *k)
            .collect();
        for k in peer_fwd {
            if let Some((wid, _, _)) = self.forwarded.remove(&k) {
                self.withdraw_forwarded(wid);
            }
        }
        if self.is_dr {
            let peers: Vec<(FaceId, u32, Option<OwnedKeyExpr>, u8)> = self
                .faces
                .iter()
                .filter(|(_, f)| f.kind == FaceKind::Peer)
                .flat_map(|(g, f)| {
                    f.their_interests
                        .iter()
                        .map(move |(id, i)| (*g, *id, i.key.clone(), i.flags))
                })
                .collect();
            for (face, id, key, flags) in peers {
                self.forward_interest(face, id, key, flags);
            }
        }
        self.changed();
    }

    /// Passes a client's or (designated router) a peer's interest on to the remote routers
    /// that may answer it; returns those it was sent to.
    fn forward_interest(
        &mut self,
        face: FaceId,
        id: u32,
        key: Option<OwnedKeyExpr>,
        flags: u8,
    ) -> HashSet<FaceId> {
        let on_demand = flags & (interest::SUBSCRIBERS | interest::TOKENS);
        let Some(kind) = self.faces.get(&face).map(|f| f.kind) else {
            return HashSet::new();
        };
        let to: HashSet<FaceId> = self
            .pairs
            .values()
            .copied()
            .filter(|p| {
                kind == FaceKind::Client
                    || self
                        .faces
                        .get(p)
                        .is_some_and(|f| self.hat_kind(f) == FaceKind::RemoteRelay)
            })
            .collect();
        if on_demand == 0 {
            return HashSet::new();
        }
        // Between routers, an interest in subscribers is always aggregated (a client's or a
        // peer's publisher asks so anyway): the far site declares one subscriber on the key
        // while any matches, not each of its subscribers.
        let on_demand = if on_demand & interest::SUBSCRIBERS != 0 {
            on_demand | interest::AGGREGATE
        } else {
            on_demand
        };
        let future = flags & interest::FUTURE != 0;
        if to.is_empty() && !future {
            return to;
        }
        let wid = self.next_local_id() as u32;
        let key = key.unwrap_or_else(OwnedKeyExpr::everything);
        for p in &to {
            self.send_interest(*p, wid, key.clone(), on_demand);
        }
        if future {
            // Kept even when no remote router may answer yet: `pair_up` passes it on to each
            // router that becomes reachable (a designated router whose peers redialled it
            // before its backbone links came back lost its peers' interests otherwise).
            self.forwarded.insert((face, id), (wid, key, on_demand));
        } else {
            // Current only: asked once, forgotten once answered (the wait holds the id).
            self.once.insert(wid);
        }
        self.last_forwarded = wid;
        to
    }

    /// Faces that carry backbone traffic only (no gossip, no declarations of their own):
    /// links to other routers, on a router, and the virtual faces of remote routers.
    fn backbone_kind(&self, kind: FaceKind) -> bool {
        kind == FaceKind::Remote || (self.role == Mode::Router && kind == FaceKind::Router)
    }

    /// The backbone link to `node`, if up.
    fn backbone_face(&self, node: &NodeId) -> Option<FaceId> {
        self.faces
            .iter()
            .find(|(_, f)| f.kind == FaceKind::Router && f.node == *node)
            .map(|(id, _)| *id)
    }

    /// The backbone link a routed message for router `dst` leaves on (transit included).
    pub(crate) fn next_hop_face(&self, dst: &NodeId) -> Option<FaceId> {
        let hop = self.lsdb.as_ref()?.route(dst)?;
        self.backbone_face(&hop.next)
    }

    /// The virtual face standing for router `src` (what it sends us is handled as coming
    /// from there).
    pub(crate) fn pair_face(&self, src: &NodeId) -> Option<FaceId> {
        self.pairs.get(src).copied()
    }

    /// A routed message was dropped (its hop count ran out, or no route): counted.
    pub(crate) fn routed_dropped(&mut self, hops_out: bool) {
        if hops_out {
            self.backbone_counters.hop_drop += 1;
        } else {
            self.backbone_counters.unroutable += 1;
        }
    }

    /// A routed message passed through (counted).
    pub(crate) fn routed_transit(&mut self) {
        self.backbone_counters.transit += 1;
    }

    /// The link-state database (routers only), for `info` and the admin space.
    pub(crate) fn lsdb(&self) -> Option<&linkstate::Lsdb> {
        self.lsdb.as_ref()
    }

    /// A backbone link's measured round trip (QUIC links), in ms: its cost unless one was
    /// configured. Damped: it moves only by more than 20 % and more than 2 ms, at most once per
    /// [`COST_HOLD`], so routes do not flap with jitter.
    pub(crate) fn measured_cost(&mut self, now: Instant, face: FaceId, rtt_ms: u32) {
        let Some(node) = self.backbone_node(face) else {
            return;
        };
        if self.cost_set.contains(&node) {
            return;
        }
        let new = rtt_ms.max(1);
        let apply = match self.measured.get(&node) {
            None => true,
            Some((old, since)) => {
                let diff = new.abs_diff(*old);
                diff * 5 > *old && diff > 2 && now.saturating_since(*since) >= COST_HOLD
            }
        };
        if !apply {
            return;
        }
        self.measured.insert(node, (new, now));
        let changed = self
            .lsdb
            .as_mut()
            .is_some_and(|db| db.set_adjacency(now, node, new));
        if changed {
            self.after_own_change(now);
        }
    }

    /// The node id of the backbone neighbour on `face`, if it is one.
    fn backbone_node(&self, face: FaceId) -> Option<NodeId> {
        self.faces
            .get(&face)
            .filter(|f| f.kind == FaceKind::Router)
            .map(|f| f.node)
    }

    /// Sets the cost of a backbone link (configured).
    pub(crate) fn set_link_cost(&mut self, now: Instant, face: FaceId, cost: u32) {
        let Some(node) = self.backbone_node(face) else {
            return;
        };
        self.cost_set.insert(node);
        let changed = self
            .lsdb
            .as_mut()
            .is_some_and(|db| db.set_adjacency(now, node, cost));
        if changed {
            self.after_own_change(now);
        }
    }

    fn adjacency_up(&mut self, now: Instant, face: FaceId, node: NodeId) {
        let Some(db) = self.lsdb.as_mut() else {
            return;
        };
        let cost = db.adjacency_cost(&node).unwrap_or(linkstate::DEFAULT_COST);
        db.set_adjacency(now, node, cost);
        // The whole database to the newcomer (ours first), then our new LSA to the others.
        let all = db.all();
        for l in all {
            self.send(face, Msg::LinkState(Arc::new(l)));
        }
        let own = self.lsdb.as_ref().map(|db| db.own().clone());
        if let Some(own) = own {
            self.flood(Some(face), own);
        }
        self.update_pairs(now);
    }

    fn adjacency_down(&mut self, now: Instant, node: NodeId) {
        self.cost_set.remove(&node);
        self.measured.remove(&node);
        let changed = self
            .lsdb
            .as_mut()
            .is_some_and(|db| db.remove_adjacency(now, node));
        if changed {
            self.after_own_change(now);
        }
    }

    fn after_own_change(&mut self, now: Instant) {
        let own = self.lsdb.as_ref().map(|db| db.own().clone());
        if let Some(own) = own {
            self.flood(None, own);
        }
        self.update_pairs(now);
    }

    /// Sends `lsa` to every backbone neighbour but `except`.
    fn flood(&mut self, except: Option<FaceId>, lsa: linkstate::Lsa) {
        let to: Vec<FaceId> = self
            .faces
            .iter()
            .filter(|(g, f)| f.kind == FaceKind::Router && Some(**g) != except)
            .map(|(g, _)| *g)
            .collect();
        let lsa = Arc::new(lsa);
        for g in to {
            self.send(g, Msg::LinkState(lsa.clone()));
        }
    }

    fn on_link_state(&mut self, now: Instant, face: FaceId, lsa: Arc<linkstate::Lsa>) {
        let Some(from) = self.backbone_node(face) else {
            return;
        };
        let Some(db) = self.lsdb.as_mut() else {
            return;
        };
        let lsa = Arc::unwrap_or_clone(lsa);
        // A neighbour's cost for its link to us, when ours was neither configured nor
        // measured: both ends then advertise the same cost.
        let adopt = (lsa.router == from
            && !self.cost_set.contains(&from)
            && !self.measured.contains_key(&from))
        .then(|| {
            lsa.links
                .iter()
                .find(|(n, _)| *n == self.id)
                .map(|(_, c)| *c)
        })
        .flatten()
        .filter(|c| db.adjacency_cost(&from).is_some_and(|mine| mine != *c));
        let about_me = lsa.router == self.id;
        match db.receive(now, lsa.clone()) {
            linkstate::Received::Newer { .. } => {
                let out = if about_me { db.own().clone() } else { lsa };
                self.flood(if about_me { None } else { Some(face) }, out);
            }
            linkstate::Received::Stale(ours) => self.send(face, Msg::LinkState(Arc::new(ours))),
            linkstate::Received::Same => {}
        }
        if let Some(c) = adopt {
            let changed = self
                .lsdb
                .as_mut()
                .is_some_and(|db| db.set_adjacency(now, from, c));
            if changed {
                let own = self.lsdb.as_ref().map(|db| db.own().clone());
                if let Some(own) = own {
                    self.flood(None, own);
                }
            }
        }
        self.update_pairs(now);
    }

    /// Creates a virtual face for every router newly reachable, removes those of routers no
    /// longer reachable (their declarations go: only then do their tokens vanish), and
    /// re-resolves routes (next hops may have moved).
    fn update_pairs(&mut self, now: Instant) {
        let Some(db) = self.lsdb.as_ref() else {
            return;
        };
        let reachable: Vec<NodeId> = db.routes().keys().copied().collect();
        // Pairs whose route moved: what was in flight on the old path may be lost.
        let moved: Vec<FaceId> = self
            .pairs
            .iter()
            .filter(|(n, _)| {
                db.route(n)
                    .is_some_and(|h| self.pair_next.get(*n).is_some_and(|old| *old != h.next))
            })
            .map(|(_, f)| *f)
            .collect();
        self.pair_next = db.routes().iter().map(|(n, h)| (*n, h.next)).collect();
        // A remote router is judged (access control) as the backbone neighbour its route goes
        // through: rules apply at every hop to the directly linked principal.
        let judged: Vec<(FaceId, NodeId, Principal)> = self
            .pairs
            .iter()
            .filter_map(|(n, f)| {
                let next = self.pair_next.get(n)?;
                let link = self.backbone_face(next)?;
                Some((*f, *n, self.faces.get(&link)?.principal.clone()))
            })
            .collect();
        for (face, node, principal) in judged {
            self.judge_pair(face, node, principal);
        }
        for f in moved {
            self.backbone_counters.resyncs += 1;
            self.resync_pair(f, true);
        }
        let gone: Vec<FaceId> = self
            .pairs
            .iter()
            .filter(|(n, _)| !reachable.contains(n))
            .map(|(_, f)| *f)
            .collect();
        for f in gone {
            self.remove_face(f, None);
        }
        let new: Vec<NodeId> = reachable
            .into_iter()
            .filter(|n| !self.pairs.contains_key(n))
            .collect();
        let grew = !new.is_empty();
        for node in new {
            let face = self.next_pair;
            self.next_pair += 1;
            self.pairs.insert(node, face);
            self.faces.insert(
                face,
                Face::new(
                    FaceKind::Remote,
                    node,
                    false,
                    Chain::default(),
                    Principal::anonymous(),
                    now,
                ),
            );
            let principal = self
                .pair_next
                .get(&node)
                .and_then(|next| self.backbone_face(next))
                .and_then(|link| self.faces.get(&link))
                .map(|f| f.principal.clone());
            if let Some(p) = principal {
                self.judge_pair(face, node, p);
            }
            self.pair_up(face);
        }
        if grew {
            let clients: Vec<FaceId> = self
                .faces
                .iter()
                .filter(|(_, f)| f.kind == FaceKind::Client)
                .map(|(g, _)| *g)
                .collect();
            for c in clients {
                self.send_alternates(c);
            }
        }
        self.expire_all_routes();
        self.elect(now);
        self.changed();
    }

    /// A remote router became reachable: ask it for what our side needs (local publishers
    /// and liveliness subscribers, clients' and peers' interests, every queryable), and tell
    /// it what matches its interests once they arrive.
    fn pair_up(&mut self, face: FaceId) {
        let mine: Vec<(LocalId, OwnedKeyExpr, u8)> = self
            .locals
            .iter()
            .filter_map(|(id, l)| interest_flags(&l.kind).map(|fl| (*id, l.key.clone(), fl)))
            .collect();
        for (id, key, flags) in mine {
            self.send_interest(face, id as u32, key, flags);
        }
        let relay = self
            .faces
            .get(&face)
            .is_some_and(|f| self.hat_kind(f) == FaceKind::RemoteRelay);
        let fwd: Vec<(u32, OwnedKeyExpr, u8)> = self
            .forwarded
            .iter()
            .filter(|((g, _), _)| {
                relay
                    || self
                        .faces
                        .get(g)
                        .is_some_and(|f| f.kind == FaceKind::Client)
            })
            .map(|(_, v)| v.clone())
            .collect();
        for (wid, key, flags) in fwd {
            self.send_interest(face, wid, key, flags);
        }
        self.send_interest(
            face,
            QUERYABLES_INTEREST,
            OwnedKeyExpr::everything(),
            interest::QUERYABLES,
        );
        // `**` never matches an `@` chunk: the admin space (`@/<id>/**`) is asked for by name,
        // so `hypha get '@/*/node'` reaches the routers of other sites too.
        if let Ok(admin) = OwnedKeyExpr::try_from("@/**") {
            self.send_interest(face, ADMIN_QUERYABLES_INTEREST, admin, interest::QUERYABLES);
        }
    }

    /// Sets the principal a remote router's virtual face is judged as, rebuilding its
    /// intercept chain (counters kept) when it changes.
    fn judge_pair(&mut self, face: FaceId, node: NodeId, principal: Principal) {
        let Some(f) = self.faces.get(&face) else {
            return;
        };
        if f.principal == principal && !f.chain.is_empty() {
            return;
        }
        let hooks = self
            .intercepts
            .build(face, FaceKind::Router, node, &principal);
        if let Some(f) = self.faces.get_mut(&face) {
            let old = std::mem::take(&mut f.chain);
            f.chain = Chain::new(hooks);
            f.chain.denied_in = old.denied_in;
            f.chain.denied_out = old.denied_out;
            f.principal = principal;
        }
        self.expire_all_routes();
    }

    /// Tells remote router `face` everything we hold towards it again (same ids), framed by
    /// `Resync`/`ResyncEnd`, so that it drops what we no longer hold and learns what a lost
    /// message did not tell it. `ask`: it does the same towards us.
    fn resync_pair(&mut self, face: FaceId, ask: bool) {
        let Some(f) = self.faces.get(&face) else {
            return;
        };
        self.resync_round = self.resync_round.wrapping_add(1);
        let round = self.resync_round;
        let mut msgs = vec![Decl::Resync { ask, round }];
        for ((kind, key, complete), e) in &f.out.entries {
            msgs.push(slot_decl(*kind, e.wid, key.clone(), *complete));
        }
        for (id, i) in &f.my_interests {
            msgs.push(Decl::Interest {
                id: *id,
                key: Some(i.key.clone()),
                flags: i.flags | interest::CURRENT | interest::FUTURE,
            });
        }
        msgs.push(Decl::ResyncEnd { round });
        // Barriers in flight may have been lost with the old path too (and every wait that
        // joined one would wait for ever): asked again, after what they confirm.
        let seq = f.out.seq;
        let mut again: Vec<(u32, Option<OwnedKeyExpr>)> = f
            .out
            .barriers
            .iter()
            .map(|(b, (_, k))| (*b, k.clone()))
            .collect();
        again.sort_by_key(|(b, _)| *b);
        for (b, key) in again {
            msgs.push(Decl::Interest {
                id: b,
                key,
                flags: interest::CURRENT,
            });
        }
        if let Some(f) = self.faces.get_mut(&face) {
            for (s, _) in f.out.barriers.values_mut() {
                *s = seq;
            }
        }
        for d in msgs {
            self.send(face, Msg::Declare(d));
        }
    }

    /// Up to three other routers a client of ours may fail over to: those of our site first,
    /// then the cheapest; only those advertising where clients reach them.
    fn alternates(&self) -> Vec<(NodeId, Arc<str>)> {
        let Some(db) = self.lsdb.as_ref() else {
            return Vec::new();
        };
        let mut v: Vec<(bool, u64, NodeId, Arc<str>)> = db
            .routes()
            .iter()
            .filter_map(|(r, h)| {
                let l = db.lsa(r)?;
                (!l.locators.is_empty())
                    .then(|| (l.site != *db.site(), h.cost, *r, l.locators.clone()))
            })
            .collect();
        v.sort();
        v.into_iter().take(3).map(|(_, _, r, l)| (r, l)).collect()
    }

    /// Tells client `face` of our alternates, the best last: a client puts what it is told
    /// last first in its failover list.
    fn send_alternates(&mut self, face: FaceId) {
        for (node, locators) in self.alternates().into_iter().rev() {
            self.send(
                face,
                Msg::Gossip {
                    node,
                    mode: Mode::Router,
                    locators,
                },
            );
        }
    }

    /// Withdraws a passed-on interest from every remote router.
    fn withdraw_forwarded(&mut self, wid: u32) {
        let pairs: Vec<FaceId> = self.pairs.values().copied().collect();
        for p in pairs {
            // Only the routers it was passed on to are told (one kept while none could
            // answer, or while we were not designated, reached nobody).
            let asked = self
                .faces
                .get_mut(&p)
                .is_some_and(|f| f.my_interests.remove(&wid).is_some());
            if asked {
                self.send(p, Msg::Declare(Decl::UndeclareInterest { id: wid }));
            }
        }
    }

    // ----- admin space (issue 14): a read-only snapshot of the tables -----------------------

    /// Every subscriber, queryable and token in the tables, local and remote, for the admin
    /// space: (kind `subscriber` | `queryable` | `token`, key, the declaring face or `None`
    /// for this node, complete).
    pub(crate) fn declarations(&self) -> Vec<(&'static str, OwnedKeyExpr, Option<FaceId>, bool)> {
        self.all_decls()
            .into_iter()
            .map(|(kind, src, _, key, complete)| {
                let kind = match kind {
                    Kind::Sub => "subscriber",
                    Kind::Qabl => "queryable",
                    Kind::Token => "token",
                };
                let face = match src {
                    Src::Local => None,
                    Src::Face(f) => Some(f),
                };
                (kind, key, face, complete)
            })
            .collect()
    }

    /// Where a sample published here would go, per subscriber key expression in the tables
    /// (local and remote): (key, the neighbours' node ids, local subscribers), plus how many
    /// routes are cached. Computed afresh, not cached, and counted nowhere.
    pub(crate) fn route_table(&mut self) -> (Vec<(OwnedKeyExpr, Vec<NodeId>, usize)>, usize) {
        let mut keys: Vec<OwnedKeyExpr> = self
            .subs
            .iter()
            .filter_map(|(k, _)| OwnedKeyExpr::new(k.as_str().to_string()).ok())
            .collect();
        keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        keys.dedup_by(|a, b| a.as_str() == b.as_str());
        let table = keys
            .into_iter()
            .map(|k| {
                let r = self.compute_route(None, k.as_str());
                let nodes = r
                    .faces
                    .iter()
                    .filter_map(|f| self.faces.get(f).map(|f| f.node))
                    .collect();
                (k, nodes, r.locals.len())
            })
            .collect();
        (table, self.routes.len())
    }

    // ----- end of admin space ----------------------------------------------------------------

    /// The face linked to `node`, if any.
    #[cfg(test)]
    pub(crate) fn face_of(&self, node: NodeId) -> Option<FaceId> {
        self.faces
            .iter()
            .find(|(_, f)| f.node == node)
            .map(|(id, _)| *id)
    }

    // ----- remote input ----------------------------------------------------------------------

    /// A neighbour sent `msg` on `face`.
    pub(crate) fn handle_message(&mut self, now: Instant, face: FaceId, msg: Msg) {
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        let (op, key) = op_of(&msg);
        if let Some(k) = key {
            if k.len() > self.caps.key_len {
                self.close_for_cap(face, "cap limits.max_key_len exceeded");
                return;
            }
        }
        let verdict = f.chain.check(Direction::Ingress, op, key);
        let mut msg = msg;
        if let Verdict::Deny(d) = verdict {
            match msg {
                // A refused reply still reaches the querier, as an access-denied error.
                Msg::Response { id, .. } => {
                    self.warn_denied(now, face, &d);
                    let result = Err(match &d.acl {
                        Some(a) => denied_reply(a),
                        None => ErrorReply {
                            payload: Bytes::from_static(b"reply refused"),
                            encoding: None,
                        },
                    });
                    msg = Msg::Response { id, result };
                }
                other => {
                    self.on_ingress_denied(now, face, other, d);
                    return;
                }
            }
        }
        match msg {
            Msg::Sample { sample, lane } => self.on_sample(Some(face), sample, lane),
            Msg::Declare(d) => {
                if let Some(f) = self.faces.get(&face) {
                    tracing::debug!(me = %self.id, face, kind = ?f.kind, peer = %f.node, decl = ?d, "declare in");
                }
                self.on_declare(face, d)
            }
            Msg::Request(r) => self.on_request(now, face, r),
            Msg::Response { id, result } => self.on_response(face, id, result),
            Msg::ResponseFinal { id } => self.on_response_final(face, id),
            Msg::Gossip {
                node,
                mode,
                locators,
            } => self.on_gossip(face, node, mode, locators),
            Msg::Denied(d) => self.on_denied_notice(face, d),
            Msg::Cancel { id } => self.on_cancel(face, id),
            Msg::LinkState(lsa) => self.on_link_state(now, face, lsa),
            // Unwrapped by the runtime; never handed to the node.
            Msg::Routed { .. } | Msg::Transit(_) => {}
        }
    }

    /// Logs a denial at warn, at most once per face per [`WARN_EVERY`].
    fn warn_denied(&mut self, now: Instant, face: FaceId, d: &intercept::Denial) {
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        if f.warned
            .is_some_and(|t| now.saturating_since(t) < WARN_EVERY)
        {
            f.unwarned += 1;
            return;
        }
        let also = std::mem::take(&mut f.unwarned);
        f.warned = Some(now);
        match &d.acl {
            Some(a) => tracing::warn!(
                face,
                peer = %f.node,
                principal = %a.principal,
                op = crate::acl::op_name(a.op),
                key = %a.key,
                rule = %a.rule,
                "access denied ({also} more on this link since the last warning)"
            ),
            None => {
                tracing::warn!(face, peer = %f.node, why = d.why, "message refused ({also} more)")
            }
        }
    }

    /// Something the neighbour sent was refused: tell it (never silently), log, count.
    fn on_ingress_denied(&mut self, now: Instant, face: FaceId, msg: Msg, d: intercept::Denial) {
        self.warn_denied(now, face, &d);
        let notice = |d: &intercept::Denial| d.acl.clone().map(Msg::Denied);
        match msg {
            Msg::Request(r) => {
                if let Some(a) = &d.acl {
                    self.send(
                        face,
                        Msg::Response {
                            id: r.id,
                            result: Err(denied_reply(a)),
                        },
                    );
                }
                self.send(face, Msg::ResponseFinal { id: r.id });
            }
            Msg::Declare(decl) => {
                if let Some(n) = notice(&d) {
                    self.send(face, n);
                }
                // An interest still gets its final, so the asker's barrier does not hang.
                if let Decl::Interest { id, flags, .. } = decl {
                    if flags & interest::CURRENT != 0 {
                        self.send(face, Msg::Declare(Decl::InterestFinal { id }));
                    }
                }
            }
            Msg::Sample { sample, .. } => self.notice_sample(now, face, &sample.key, d),
            _ => {}
        }
    }

    /// Tells `face` (at most once per key and operation per [`NOTICE_EVERY`]) that a
    /// publication of its was refused.
    fn notice_sample(&mut self, now: Instant, face: FaceId, key: &Arc<str>, d: intercept::Denial) {
        let Some(a) = d.acl else {
            return;
        };
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        let slot = (a.op, key.clone());
        if f.noticed
            .get(&slot)
            .is_some_and(|t| now.saturating_since(*t) < NOTICE_EVERY)
        {
            return;
        }
        if f.noticed.len() >= MAX_NOTICED {
            f.noticed
                .retain(|_, t| now.saturating_since(*t) < NOTICE_EVERY);
            if f.noticed.len() >= MAX_NOTICED {
                return;
            }
        }
        f.noticed.insert(slot, now);
        self.send(face, Msg::Denied(a));
    }

    /// The runtime dropped a sample from `face` on a route its ingress hooks refuse: judge it
    /// again (counted), log and notice it.
    pub(crate) fn sample_denied(
        &mut self,
        now: Instant,
        face: FaceId,
        key: &Arc<str>,
        kind: SampleKind,
    ) {
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        if let Verdict::Deny(d) = f
            .chain
            .check(Direction::Ingress, sample_op(kind), Some(key))
        {
            self.warn_denied(now, face, &d);
            self.notice_sample(now, face, key, d);
        }
    }

    /// A neighbour refused something we sent: our own declarations learn it; declarations we
    /// relayed for another face pass the notice on towards their source.
    fn on_denied_notice(&mut self, face: FaceId, d: Arc<AccessDenied>) {
        use crate::acl::Op as A;
        let kind = match d.op {
            A::Sub => Some((Kind::Sub, LocalKind::Sub)),
            A::Queryable => Some((Kind::Qabl, LocalKind::Qabl(false))),
            A::Token => Some((Kind::Token, LocalKind::Token)),
            A::TokenSub => Some((Kind::Token, LocalKind::LivSub)),
            _ => None,
        };
        let peer = self.faces.get(&face).map(|f| f.node);
        tracing::warn!(
            face,
            peer = ?peer,
            principal = %d.principal,
            op = crate::acl::op_name(d.op),
            key = %d.key,
            rule = %d.rule,
            "a neighbour's access control refused what we sent"
        );
        let mut locals: Vec<LocalId> = Vec::new();
        let mut relay: Vec<FaceId> = Vec::new();
        if let Some((table, lk)) = &kind {
            locals = self
                .locals
                .iter()
                .filter(|(_, l)| {
                    l.key.as_str() == d.key
                        && std::mem::discriminant(&l.kind) == std::mem::discriminant(lk)
                })
                .map(|(id, _)| *id)
                .collect();
            if *table != Kind::Token || d.op == A::Token {
                for (g, f) in &self.faces {
                    if *g == face {
                        continue;
                    }
                    let has = match table {
                        Kind::Sub => f.subs.values().any(|k| k.as_str() == d.key),
                        Kind::Qabl => f.qabls.values().any(|(k, _)| k.as_str() == d.key),
                        Kind::Token => f.tokens.values().any(|k| k.as_str() == d.key),
                    };
                    if has {
                        relay.push(*g);
                    }
                }
            }
        } else {
            // A refused publication: ours, unless we only forwarded it.
            locals.clear();
        }
        locals.sort_unstable();
        for g in relay {
            self.send(g, Msg::Denied(d.clone()));
        }
        self.push(Action::Denied { locals, denial: d });
    }

    fn close_for_cap(&mut self, face: FaceId, cap: &'static str) {
        tracing::warn!(face, cap, "closing face: {cap}");
        self.push(Action::Close {
            face,
            reason: CloseReason::TooLarge,
            detail: cap,
            drain: false,
        });
        self.remove_face(face, None);
    }

    fn on_declare(&mut self, face: FaceId, d: Decl) {
        const CAP: &str = "cap limits.max_declarations exceeded";
        let cap = self.caps.declarations;
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        f.counters.declarations_in += 1;
        let full = f.subs.len() + f.qabls.len() + f.tokens.len() >= cap;
        let src = Src::Face(face);
        // During a resync, what is declared again unchanged is only confirmed.
        if let Some(m) = f.resync.as_mut() {
            let same = match &d {
                Decl::Subscriber { id, key } => {
                    m.subs.remove(id);
                    f.subs.get(id) == Some(key)
                }
                Decl::Queryable { id, key, complete } => {
                    m.qabls.remove(id);
                    f.qabls.get(id) == Some(&(key.clone(), *complete))
                }
                Decl::Token { id, key } => {
                    m.tokens.remove(id);
                    f.tokens.get(id) == Some(key)
                }
                Decl::Interest { id, .. } => {
                    m.interests.remove(id);
                    false
                }
                _ => false,
            };
            if same {
                return;
            }
        }
        match d {
            Decl::Resync { ask, round } => {
                if f.kind == FaceKind::Remote {
                    // A resync older than one begun already (it came the long way while
                    // routes moved) would drop what was declared since: it changes nothing.
                    // Numbers restart with the router (a new LSA epoch).
                    let epoch = self
                        .lsdb
                        .as_ref()
                        .and_then(|db| db.lsa(&f.node))
                        .map_or(0, |l| l.epoch);
                    let fresh = f
                        .resync_seen
                        .is_none_or(|(e, seen)| e != epoch || round > seen);
                    if fresh {
                        f.resync_seen = Some((epoch, round));
                        f.resync = Some(Marks {
                            round,
                            subs: f.subs.keys().copied().collect(),
                            qabls: f.qabls.keys().copied().collect(),
                            tokens: f.tokens.keys().copied().collect(),
                            interests: f.their_interests.keys().copied().collect(),
                        });
                    }
                    // Answered even when stale: telling it all we hold is always safe.
                    if ask {
                        self.resync_pair(face, false);
                    }
                }
            }
            Decl::ResyncEnd { round } => {
                if f.resync.as_ref().is_some_and(|m| m.round == round)
                    && let Some(m) = f.resync.take()
                {
                    for id in m.subs {
                        self.on_declare(face, Decl::Unsubscriber { id });
                    }
                    for id in m.qabls {
                        self.on_declare(face, Decl::Unqueryable { id });
                    }
                    for id in m.tokens {
                        self.on_declare(face, Decl::Untoken { id });
                    }
                    for id in m.interests {
                        self.on_declare(face, Decl::UndeclareInterest { id });
                    }
                }
            }
            Decl::Subscriber { id, key } => {
                if full && !f.subs.contains_key(&id) {
                    return self.close_for_cap(face, CAP);
                }
                if let Some(old) = f.subs.insert(id, key.clone()) {
                    self.remove_item(Kind::Sub, src, u64::from(id), &old);
                }
                self.add_item(Kind::Sub, src, u64::from(id), key, false);
            }
            Decl::Unsubscriber { id } => {
                if let Some(key) = f.subs.remove(&id) {
                    self.remove_item(Kind::Sub, src, u64::from(id), &key);
                }
            }
            Decl::Queryable { id, key, complete } => {
                if full && !f.qabls.contains_key(&id) {
                    return self.close_for_cap(face, CAP);
                }
                if let Some((old, _)) = f.qabls.insert(id, (key.clone(), complete)) {
                    self.remove_item(Kind::Qabl, src, u64::from(id), &old);
                }
                self.add_item(Kind::Qabl, src, u64::from(id), key, complete);
            }
            Decl::Unqueryable { id } => {
                if let Some((key, _)) = f.qabls.remove(&id) {
                    self.remove_item(Kind::Qabl, src, u64::from(id), &key);
                }
            }
            Decl::Token { id, key } => {
                if full && !f.tokens.contains_key(&id) {
                    return self.close_for_cap(face, CAP);
                }
                if let Some(old) = f.tokens.insert(id, key.clone()) {
                    self.remove_item(Kind::Token, src, u64::from(id), &old);
                }
                self.add_item(Kind::Token, src, u64::from(id), key, false);
            }
            Decl::Untoken { id } => {
                if let Some(key) = f.tokens.remove(&id) {
                    self.remove_item(Kind::Token, src, u64::from(id), &key);
                }
            }
            Decl::Interest { id, key, flags } => self.on_interest(face, id, key, flags),
            Decl::InterestFinal { id } => {
                let covered = match f.my_interests.get_mut(&id) {
                    Some(i) if !i.done => {
                        i.done = true;
                        Some(i.key.clone())
                    }
                    _ => None,
                };
                // A barrier's answer: everything declared on the face before it has arrived,
                // for the waits that joined it too.
                if let Some((seq, _)) = f.out.barriers.remove(&id) {
                    f.out.acked = f.out.acked.max(seq);
                }
                let followers = f.out.followers.remove(&id).unwrap_or_default();
                if let Some(k) = covered {
                    self.expire_routes(&k);
                    self.changed();
                }
                self.wait_answered(id, face);
                for w in followers {
                    self.wait_answered(w, face);
                }
            }
            Decl::UndeclareInterest { id } => {
                if f.their_interests.remove(&id).is_some() {
                    self.recheck_face(face);
                }
                if let Some((wid, _, _)) = self.forwarded.remove(&(face, id)) {
                    self.withdraw_forwarded(wid);
                }
            }
        }
    }

    fn on_interest(&mut self, face: FaceId, id: u32, key: Option<OwnedKeyExpr>, flags: u8) {
        let caps = self.caps;
        let role = self.role;
        let Some(hk) = self.faces.get(&face).map(|f| self.hat_kind(f)) else {
            return;
        };
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        let kind = f.kind;
        let kinds = flags & (interest::SUBSCRIBERS | interest::QUERYABLES | interest::TOKENS);
        if kinds != 0 {
            if f.their_interests.len() >= caps.interests && !f.their_interests.contains_key(&id) {
                return self.close_for_cap(face, "cap limits.max_interests exceeded");
            }
            let asked = TheirInterest {
                key: key.clone(),
                flags,
            };
            let replaced = f
                .their_interests
                .insert(id, asked.clone())
                .is_some_and(|old| old != asked);
            if replaced {
                // The same id asking something else: what it had is decided again.
                self.recheck_face(face);
            }
            if flags & interest::CURRENT != 0 {
                for (k, src, sid, dkey, complete) in self.all_decls() {
                    if k.flag() & kinds != 0 {
                        self.consider(face, k, src, sid, &dkey, complete);
                    }
                }
            }
            if flags & interest::FUTURE == 0 {
                if let Some(f) = self.faces.get_mut(&face) {
                    f.their_interests.remove(&id);
                }
            }
        }
        // Interest on demand across the backbone: a client's (or, at the designated router,
        // a peer's) interest in subscribers or tokens is passed on to the remote routers,
        // which then declare what matches (and only that) back to us; its final waits for
        // theirs.
        if role == Mode::Router && matches!(kind, FaceKind::Client | FaceKind::Peer) {
            let via = self.forward_interest(face, id, key.clone(), flags);
            if !via.is_empty() {
                if flags & interest::CURRENT != 0 {
                    let wid = self.last_forwarded;
                    self.waits.insert(
                        wid,
                        Wait {
                            waiting: via,
                            done: Done::Final(face, id),
                        },
                    );
                }
                return;
            }
        }
        if flags & interest::CURRENT == 0 {
            return;
        }
        // The final marker. A router passes a barrier (an interest asking for nothing but the
        // final marker, sent after a declaration) on to the neighbours it propagated the
        // face's declarations to, and answers once they all have: the declaration is then known
        // wherever a matching sample could come from.
        // A face told only what it asked for waits only if it was told of the key (a remote
        // router nobody there publishes to hears nothing about it), and only until what it
        // was told has arrived: many subscribers held by one aggregated declaration pass one
        // barrier on, not one each.
        let onward: Vec<(FaceId, BarrierNeed)> = if kinds == 0 && role == Mode::Router {
            self.faces
                .iter()
                .filter(|(g, gf)| {
                    **g != face
                        && hat::asks(role, gf.kind)
                        && hat::propagates(role, Src0::Face(hk), self.hat_kind(gf))
                })
                .filter_map(|(g, gf)| {
                    if !hat::filters_by_interest(gf.kind) {
                        return Some((*g, BarrierNeed::Send));
                    }
                    match gf.out.barrier_for(told_seq(gf, key.as_ref())?) {
                        BarrierNeed::None => None,
                        need => Some((*g, need)),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        if onward.is_empty() {
            self.send(face, Msg::Declare(Decl::InterestFinal { id }));
            return;
        }
        let wid = self.next_local_id() as u32;
        let mut waiting = HashSet::new();
        for (g, need) in onward {
            waiting.insert(g);
            self.barrier(g, need, wid, key.clone());
        }
        self.waits.insert(
            wid,
            Wait {
                waiting,
                done: Done::Final(face, id),
            },
        );
    }

    /// Makes wait `wait` wait on face `g` as `need` says: joins the barrier in flight, or
    /// sends one (numbered `wait`).
    fn barrier(&mut self, g: FaceId, need: BarrierNeed, wait: u32, key: Option<OwnedKeyExpr>) {
        let Some(f) = self.faces.get_mut(&g) else {
            return;
        };
        match need {
            BarrierNeed::None => {}
            BarrierNeed::Join(b) => f.out.followers.entry(b).or_default().push(wait),
            BarrierNeed::Send => {
                f.out.barriers.insert(wait, (f.out.seq, key.clone()));
                self.send(
                    g,
                    Msg::Declare(Decl::Interest {
                        id: wait,
                        key,
                        flags: interest::CURRENT,
                    }),
                );
            }
        }
    }

    /// A neighbour told us where `node` listens. About itself: remembered and relayed one hop
    /// to our other neighbours; about another node: the runtime may dial it.
    fn on_gossip(&mut self, face: FaceId, node: NodeId, mode: Mode, locators: Arc<str>) {
        let Some(from) = self
            .faces
            .get(&face)
            .filter(|f| !self.backbone_kind(f.kind))
            .map(|f| f.node)
        else {
            return;
        };
        if node == self.id || locators.is_empty() {
            return;
        }
        let neighbour = node == from;
        if self.role == Mode::Client && mode == Mode::Router && !neighbour {
            // Our router telling us of an alternate router (its site's first).
            self.push(Action::Alternate { locators });
            return;
        }
        if neighbour {
            if self.known.len() < MAX_KNOWN || self.known.contains_key(&node) {
                self.known.insert(node, locators.clone());
            }
            let others: Vec<FaceId> = self
                .faces
                .iter()
                .filter(|(g, f)| **g != face && !self.backbone_kind(f.kind))
                .map(|(g, _)| *g)
                .collect();
            for g in others {
                self.send(
                    g,
                    Msg::Gossip {
                        node,
                        mode: Mode::Peer,
                        locators: locators.clone(),
                    },
                );
            }
        }
        self.push(Action::Discovered {
            node,
            locators,
            neighbour,
        });
    }

    fn wait_answered(&mut self, id: u32, face: FaceId) {
        let Some(w) = self.waits.get_mut(&id) else {
            return;
        };
        w.waiting.remove(&face);
        if !w.waiting.is_empty() {
            return;
        }
        let Some(w) = self.waits.remove(&id) else {
            return;
        };
        if self.once.remove(&id) {
            self.withdraw_forwarded(id);
        }
        match w.done {
            Done::Ready(l) => self.push(Action::Ready { id: l }),
            Done::Final(f, rid) => {
                if self.faces.contains_key(&f) {
                    self.send(f, Msg::Declare(Decl::InterestFinal { id: rid }));
                }
            }
        }
    }

    fn on_sample(&mut self, src: Option<FaceId>, sample: Sample, lane: Lane) {
        let route = self.route(src, &sample.key);
        for l in &route.locals {
            self.push(Action::Deliver {
                to: *l,
                sample: sample.clone(),
            });
        }
        for f in &route.faces {
            self.push(Action::Send {
                face: *f,
                msg: Msg::Sample {
                    sample: sample.clone(),
                    lane,
                },
            });
        }
        for (link, dst) in &route.routed {
            self.push(Action::Send {
                face: *link,
                msg: Msg::Routed {
                    dst: *dst,
                    inner: Box::new(Msg::Sample {
                        sample: sample.clone(),
                        lane,
                    }),
                },
            });
        }
    }

    // ----- local input -----------------------------------------------------------------------

    /// The application did something.
    pub(crate) fn handle_local(&mut self, now: Instant, cmd: Cmd) {
        match cmd {
            Cmd::Subscribe { id, key } => {
                self.declare_local(id, LocalKind::Sub, key);
            }
            Cmd::Queryable { id, key, complete } => {
                self.declare_local(id, LocalKind::Qabl(complete), key);
            }
            Cmd::Token { id, key } => self.declare_local(id, LocalKind::Token, key),
            Cmd::LivelinessSubscribe { id, key } => {
                // Tokens alive now, then changes.
                let mut alive: Vec<String> = self
                    .tokens
                    .intersecting(&key.as_keyexpr())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, _)| k.as_str().to_string())
                    .collect();
                alive.sort();
                for k in alive {
                    self.push(Action::Deliver {
                        to: id,
                        sample: token_sample(&k, SampleKind::Put),
                    });
                }
                match self.liveliness_subs.get_mut(&key.as_keyexpr()) {
                    Some(v) => v.push(id),
                    None => {
                        self.liveliness_subs.insert(&key.as_keyexpr(), vec![id]);
                    }
                }
                self.declare_local(id, LocalKind::LivSub, key);
            }
            Cmd::Publisher { id, key } => self.declare_local(id, LocalKind::Pub, key),
            Cmd::Undeclare { id } => self.undeclare_local(id),
            Cmd::Publish { sample, lane } => self.on_sample(None, sample, lane),
            Cmd::Query { id, params } => self.start_query(now, id, params),
            Cmd::CancelQuery { id } => self.cancel_query(id),
            Cmd::Reply { query, result } => self.on_reply(None, query, result),
            Cmd::ReplyFinal { query } => self.local_final(query),
        }
    }

    fn declare_local(&mut self, id: LocalId, kind: LocalKind, key: OwnedKeyExpr) {
        self.locals.insert(
            id,
            LocalDecl {
                kind: kind.clone(),
                key: key.clone(),
            },
        );
        let table = match kind {
            LocalKind::Sub => Some((Kind::Sub, false)),
            LocalKind::Qabl(c) => Some((Kind::Qabl, c)),
            LocalKind::Token => Some((Kind::Token, false)),
            LocalKind::LivSub | LocalKind::Pub => None,
        };
        let mut waiting = HashSet::new();
        if let Some((k, complete)) = table {
            self.add_item(k, Src::Local, id, key.clone(), complete);
            // A barrier on each asked face it went to: ready once each has it (once what it
            // holds there has arrived: a subscriber joining an aggregated declaration that
            // arrived already waits for nothing).
            let role = self.role;
            let to: Vec<(FaceId, BarrierNeed)> = self
                .faces
                .iter()
                .filter(|(_, f)| hat::asks(role, f.kind))
                .filter_map(|(g, f)| {
                    let held = f.out.counted.get(&(k, Src::Local, id))?;
                    let seq = held
                        .slots
                        .iter()
                        .filter_map(|s| f.out.entries.get(s).map(|e| e.seq))
                        .max()?;
                    match f.out.barrier_for(seq) {
                        BarrierNeed::None => None,
                        need => Some((*g, need)),
                    }
                })
                .collect();
            for (g, need) in to {
                self.barrier(g, need, id as u32, Some(key.clone()));
                waiting.insert(g);
            }
        } else if let Some(flags) = interest_flags(&kind) {
            let to: Vec<FaceId> = self
                .faces
                .iter()
                .filter(|(_, f)| hat::asks(self.role, f.kind))
                .map(|(g, _)| *g)
                .collect();
            for g in to {
                self.send_interest(g, id as u32, key.clone(), flags);
                waiting.insert(g);
            }
        }
        if waiting.is_empty() {
            self.push(Action::Ready { id });
        } else {
            self.waits.insert(
                id as u32,
                Wait {
                    waiting,
                    done: Done::Ready(id),
                },
            );
        }
        self.changed();
    }

    fn send_interest(&mut self, face: FaceId, id: u32, key: OwnedKeyExpr, flags: u8) {
        if let Some(f) = self.faces.get_mut(&face) {
            f.my_interests.insert(
                id,
                MyInterest {
                    key: key.clone(),
                    flags,
                    done: false,
                },
            );
        }
        self.send(
            face,
            Msg::Declare(Decl::Interest {
                id,
                key: Some(key),
                flags: flags | interest::CURRENT | interest::FUTURE,
            }),
        );
    }

    fn undeclare_local(&mut self, id: LocalId) {
        let Some(l) = self.locals.remove(&id) else {
            return;
        };
        self.waits.remove(&(id as u32));
        match l.kind {
            LocalKind::Sub => self.remove_item(Kind::Sub, Src::Local, id, &l.key),
            LocalKind::Qabl(_) => self.remove_item(Kind::Qabl, Src::Local, id, &l.key),
            LocalKind::Token => self.remove_item(Kind::Token, Src::Local, id, &l.key),
            LocalKind::LivSub | LocalKind::Pub => {
                if let LocalKind::LivSub = l.kind {
                    if let Some(v) = self.liveliness_subs.get_mut(&l.key.as_keyexpr()) {
                        v.retain(|x| *x != id);
                        if v.is_empty() {
                            self.liveliness_subs.remove(&l.key.as_keyexpr());
                        }
                    }
                }
                let iid = id as u32;
                let faces: Vec<FaceId> = self
                    .faces
                    .iter_mut()
                    .filter_map(|(g, f)| f.my_interests.remove(&iid).map(|_| *g))
                    .collect();
                for g in faces {
                    self.send(g, Msg::Declare(Decl::UndeclareInterest { id: iid }));
                }
                self.expire_routes(&l.key);
            }
        }
        self.changed();
    }

    // ----- tables and propagation ------------------------------------------------------------

    fn table(&mut self, kind: Kind) -> &mut KeTree<Vec<Item>> {
        match kind {
            Kind::Sub => &mut self.subs,
            Kind::Qabl => &mut self.qabls,
            Kind::Token => &mut self.tokens,
        }
    }

    fn add_item(&mut self, kind: Kind, src: Src, id: u64, key: OwnedKeyExpr, complete: bool) {
        let item = Item { src, id, complete };
        let first = {
            let t = self.table(kind);
            match t.get_mut(&key.as_keyexpr()) {
                Some(v) => {
                    v.push(item);
                    v.len() == 1
                }
                None => {
                    t.insert(&key.as_keyexpr(), vec![item]);
                    true
                }
            }
        };
        if kind != Kind::Token {
            self.expire_routes(&key);
        } else if first {
            self.token_event(&key, SampleKind::Put);
        }
        let faces: Vec<FaceId> = self.faces.keys().copied().collect();
        for g in faces {
            self.consider(g, kind, src, id, &key, complete);
        }
        self.changed();
    }

    fn remove_item(&mut self, kind: Kind, src: Src, id: u64, key: &OwnedKeyExpr) {
        let last = {
            let t = self.table(kind);
            match t.get_mut(&key.as_keyexpr()) {
                Some(v) => {
                    v.retain(|i| !(i.src == src && i.id == id));
                    let empty = v.is_empty();
                    if empty {
                        t.remove(&key.as_keyexpr());
                    }
                    empty
                }
                None => false,
            }
        };
        if kind != Kind::Token {
            self.expire_routes(key);
        } else if last {
            self.token_event(key, SampleKind::Delete);
        }
        let faces: Vec<FaceId> = self.faces.keys().copied().collect();
        for g in faces {
            self.withdraw(g, kind, src, id);
        }
        self.changed();
    }

    fn token_event(&mut self, key: &OwnedKeyExpr, kind: SampleKind) {
        let mut to: Vec<LocalId> = self
            .liveliness_subs
            .intersecting(&key.as_keyexpr())
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        to.sort_unstable();
        for l in to {
            self.push(Action::Deliver {
                to: l,
                sample: token_sample(key.as_str(), kind),
            });
        }
    }

    /// Every declaration in the tables: (kind, source, id, key, complete).
    fn all_decls(&self) -> Vec<(Kind, Src, u64, OwnedKeyExpr, bool)> {
        let mut v = Vec::new();
        for (kind, t) in [
            (Kind::Sub, &self.subs),
            (Kind::Qabl, &self.qabls),
            (Kind::Token, &self.tokens),
        ] {
            for (k, items) in t.iter() {
                for i in items {
                    if let Ok(key) = OwnedKeyExpr::new(k.as_str().to_string()) {
                        v.push((kind, i.src, i.id, key, i.complete));
                    }
                }
            }
        }
        v
    }

    /// The wire declarations (kind, `key`) from `src` should hold on `face`: none if it
    /// should not see it; its own slot; and for a face told only what it asked for, the key of
    /// each aggregated interest it matches instead of its own (a subscriber matching both an
    /// aggregated and a plain interest holds both: the far side's routes hold a face once, so
    /// no sample is sent twice). `count`: a denial by the egress hooks is counted (the first
    /// time a declaration is decided for the face).
    fn desired(
        &mut self,
        face: FaceId,
        kind: Kind,
        src: Src,
        key: &OwnedKeyExpr,
        complete: bool,
        count: bool,
    ) -> Vec<Slot> {
        let Some(f) = self.faces.get(&face) else {
            return Vec::new();
        };
        let from = match src {
            Src::Local => Src0::Local,
            Src::Face(g) if g == face => return Vec::new(),
            Src::Face(g) => match self.faces.get(&g) {
                Some(gf) => Src0::Face(self.hat_kind(gf)),
                None => return Vec::new(),
            },
        };
        if !hat::propagates(self.role, from, self.hat_kind(f)) {
            return Vec::new();
        }
        let mut own = !hat::filters_by_interest(f.kind);
        let mut aggregates: Vec<OwnedKeyExpr> = Vec::new();
        if !own {
            let k = key.as_keyexpr();
            for i in f.their_interests.values() {
                if i.flags & kind.flag() == 0 {
                    continue;
                }
                match &i.key {
                    None => own = true,
                    Some(ik) if ik.as_keyexpr().intersects(&k) => {
                        if kind == Kind::Sub && i.flags & interest::AGGREGATE != 0 {
                            if !aggregates.contains(ik) {
                                aggregates.push(ik.clone());
                            }
                        } else {
                            own = true;
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        if !own && aggregates.is_empty() {
            return Vec::new();
        }
        let op = match kind {
            Kind::Sub => Op::Sub,
            Kind::Qabl => Op::Queryable,
            Kind::Token => Op::Token,
        };
        let Some(f) = self.faces.get_mut(&face) else {
            return Vec::new();
        };
        // The declaration's own key is judged first, as when nothing is aggregated: what the
        // rules keep from a face is not told to it in an aggregate either.
        let admitted = if count {
            f.chain.check(Direction::Egress, op, Some(key.as_str())) == Verdict::Pass
        } else {
            f.chain.admits(Direction::Egress, op, key.as_str())
        };
        if !admitted {
            return Vec::new();
        }
        let mut slots = Vec::with_capacity(aggregates.len() + 1);
        for a in aggregates {
            if f.chain.admits(Direction::Egress, op, a.as_str()) {
                slots.push((kind, a, false));
            } else {
                // An aggregate the rules refuse: the declaration is told as itself.
                own = true;
            }
        }
        let mine = (kind, key.clone(), complete);
        if own && !slots.contains(&mine) {
            slots.push(mine);
        }
        slots
    }

    /// Declares (kind, key) from `src` to `face` as it should see it now: the wire
    /// declarations it should hold there are declared first (new ones sent), then those it
    /// no longer should are released (undeclared when nobody holds them), so the far side
    /// never misses a moment in between.
    fn consider(
        &mut self,
        face: FaceId,
        kind: Kind,
        src: Src,
        id: u64,
        key: &OwnedKeyExpr,
        complete: bool,
    ) {
        let Some(f) = self.faces.get(&face) else {
            return;
        };
        let had: Vec<Slot> = f
            .out
            .counted
            .get(&(kind, src, id))
            .map(|h| h.slots.clone())
            .unwrap_or_default();
        let want = self.desired(face, kind, src, key, complete, had.is_empty());
        if want.len() == had.len() && want.iter().all(|s| had.contains(s)) {
            return;
        }
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        let mut decls = Vec::new();
        let out = &mut f.out;
        for slot in want.iter().filter(|s| !had.contains(s)) {
            match out.entries.get_mut(slot) {
                Some(e) => e.refs += 1,
                None => {
                    let wid = out.next_id;
                    out.next_id = out.next_id.wrapping_add(1).max(1);
                    out.seq += 1;
                    out.entries.insert(
                        slot.clone(),
                        OutEntry {
                            wid,
                            refs: 1,
                            seq: out.seq,
                        },
                    );
                    decls.push(slot_decl(slot.0, wid, slot.1.clone(), slot.2));
                }
            }
        }
        for slot in had.iter().filter(|s| !want.contains(s)) {
            if let Some(d) = release(out, slot) {
                decls.push(d);
            }
        }
        if want.is_empty() {
            out.counted.remove(&(kind, src, id));
        } else {
            out.counted.insert(
                (kind, src, id),
                Held {
                    key: key.clone(),
                    complete,
                    slots: want,
                },
            );
        }
        for d in decls {
            self.send(face, Msg::Declare(d));
        }
    }

    /// Withdraws (kind, src, id) from what `face` was told, undeclaring when no source is left.
    fn withdraw(&mut self, face: FaceId, kind: Kind, src: Src, id: u64) {
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        let Some(held) = f.out.counted.remove(&(kind, src, id)) else {
            return;
        };
        let decls: Vec<Decl> = held
            .slots
            .iter()
            .filter_map(|slot| release(&mut f.out, slot))
            .collect();
        for d in decls {
            self.send(face, Msg::Declare(d));
        }
    }

    /// After a face's interests changed: decide again what it holds (withdraw what it should
    /// no longer see, move between aggregated and its own declarations).
    fn recheck_face(&mut self, face: FaceId) {
        let Some(f) = self.faces.get(&face) else {
            return;
        };
        let counted: Vec<(Kind, Src, u64, OwnedKeyExpr, bool)> = f
            .out
            .counted
            .iter()
            .map(|((k, s, i), h)| (*k, *s, *i, h.key.clone(), h.complete))
            .collect();
        for (k, s, i, key, complete) in counted {
            self.consider(face, k, s, i, &key, complete);
        }
    }

    /// Queues a message for a face through its egress hooks.
    fn send(&mut self, face: FaceId, msg: Msg) {
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        let (op, key) = op_of(&msg);
        let verdict = if matches!(msg, Msg::Declare(_)) {
            // Declarations were checked where they were decided (consider), with their key.
            Verdict::Pass
        } else {
            f.chain.check(Direction::Egress, op, key)
        };
        let mut msg = msg;
        {
            if let Verdict::Deny(d) = verdict {
                tracing::debug!(face, why = d.why, "egress denied");
                match (msg, d.acl) {
                    // A reply the querier may not see becomes an access-denied error.
                    (Msg::Response { id, .. }, Some(a)) => {
                        msg = Msg::Response {
                            id,
                            result: Err(denied_reply(&a)),
                        }
                    }
                    _ => return,
                }
            }
        }
        if let Msg::Declare(d) = &msg {
            tracing::debug!(me = %self.id, face, kind = ?f.kind, peer = %f.node, decl = ?d, "declare out");
        }
        if f.kind == FaceKind::Remote {
            // Across the backbone: wrapped for the router, on the link its route leaves by.
            let dst = f.node;
            match self.next_hop_face(&dst) {
                Some(link) => self.actions.push_back(Action::Send {
                    face: link,
                    msg: Msg::Routed {
                        dst,
                        inner: Box::new(msg),
                    },
                }),
                None => self.backbone_counters.unroutable += 1,
            }
            return;
        }
        self.actions.push_back(Action::Send { face, msg });
    }

    // ----- routes ----------------------------------------------------------------------------

    /// Where a sample on `key` from `src` (`None`: this node) goes. Cached; the runtime may keep
    /// the `Arc` until [`Route::is_stale`].
    pub(crate) fn route(&mut self, src: Option<FaceId>, key: &str) -> Arc<Route> {
        if let Some(r) = self.routes.get(&(src, Arc::from(key))) {
            return r.clone();
        }
        let r = Arc::new(self.compute_route(src, key));
        if self.routes.len() >= MAX_CACHED_ROUTES {
            self.expire_all_routes();
        }
        self.routes.insert((src, Arc::from(key)), r.clone());
        r
    }

    fn compute_route(&mut self, src: Option<FaceId>, key: &str) -> Route {
        let Ok(k) = KeyExpr::new(key) else {
            return Route::default();
        };
        let (mut denied_put, mut denied_delete) = (false, false);
        let src_kind = src
            .and_then(|f| self.faces.get(&f))
            .map(|f| self.hat_kind(f));
        let from = match src {
            None => Src0::Local,
            Some(f) => match self.faces.get_mut(&f) {
                Some(face) => {
                    denied_put = !face.chain.admits(Direction::Ingress, Op::Put, key);
                    denied_delete = !face.chain.admits(Direction::Ingress, Op::Delete, key);
                    if denied_put && denied_delete {
                        return Route {
                            denied: true,
                            denied_delete: true,
                            ..Route::default()
                        };
                    }
                    Src0::Face(src_kind.unwrap_or(face.kind))
                }
                None => return Route::default(),
            },
        };
        let mut locals = Vec::new();
        let mut faces = Vec::new();
        for (_, items) in self.subs.intersecting(&k) {
            for i in items {
                match i.src {
                    Src::Local => locals.push(i.id),
                    Src::Face(g) if Some(g) != src => faces.push(g),
                    Src::Face(_) => {}
                }
            }
        }
        if src.is_none() && hat::sends_uncovered(self.role) {
            for (g, f) in &self.faces {
                if hat::asks(self.role, f.kind) && !covered(f, &k) {
                    faces.push(*g);
                }
            }
        }
        if hat::sends_uncovered_to_remotes(self.role) {
            for (g, f) in &self.faces {
                if f.kind == FaceKind::Remote && !covered(f, &k) {
                    faces.push(*g);
                }
            }
        }
        locals.sort_unstable();
        locals.dedup();
        faces.sort_unstable();
        faces.dedup();
        let role = self.role;
        let kinds: HashMap<FaceId, FaceKind> = faces
            .iter()
            .filter_map(|g| self.faces.get(g).map(|f| (*g, self.hat_kind(f))))
            .collect();
        faces.retain(|g| match (self.faces.get_mut(g), kinds.get(g)) {
            (Some(f), Some(k)) => {
                hat::forwards(role, from, *k) && f.chain.admits(Direction::Egress, Op::Put, key)
            }
            _ => false,
        });
        // Remote routers are reached on the backbone link of their route.
        let mut routed = Vec::new();
        faces.retain(|g| match self.faces.get(g) {
            Some(f) if f.kind == FaceKind::Remote => {
                match self.next_hop_face(&f.node) {
                    Some(link) => routed.push((link, f.node)),
                    None => self.backbone_counters.unroutable += 1,
                }
                false
            }
            _ => true,
        });
        Route {
            locals,
            faces,
            routed,
            denied: denied_put,
            denied_delete,
            stale: AtomicBool::new(false),
        }
    }

    /// Expires every cached route on a key intersecting `key`.
    fn expire_routes(&mut self, key: &OwnedKeyExpr) {
        let k = key.as_keyexpr();
        self.routes.retain(|(_, rk), r| {
            let hit = KeyExpr::new(rk).map_or(true, |rk| rk.intersects(&k));
            if hit {
                r.expire();
            }
            !hit
        });
    }

    fn expire_all_routes(&mut self) {
        for r in self.routes.values() {
            r.expire();
        }
        self.routes.clear();
    }

    /// True if every neighbour this node asks has answered the interest of local declaration
    /// `id` (a publisher, a liveliness subscriber): it knows every current match on every link
    /// up now, including links that came up after it was first ready.
    pub(crate) fn interest_answered_everywhere(&self, id: LocalId) -> bool {
        let iid = id as u32;
        self.faces
            .values()
            .filter(|f| hat::asks(self.role, f.kind))
            .all(|f| f.my_interests.get(&iid).is_some_and(|i| i.done))
    }

    /// True if some subscriber, local or remote, matches `key` (a publisher's matching status).
    pub(crate) fn has_subscriber(&self, key: &KeyExpr<'_>) -> bool {
        self.subs.intersecting(key).any(|(_, v)| !v.is_empty())
    }

    /// Queryables matching `key`: (local ones, faces holding one). A client is not told of
    /// queryables (it asks its upstream every query), so for it any upstream counts.
    pub(crate) fn has_queryable(&self, key: &KeyExpr<'_>) -> (bool, bool) {
        let mut local = false;
        let mut remote = hat::sends_uncovered(self.role)
            && self.faces.values().any(|f| hat::asks(self.role, f.kind));
        for (_, items) in self.qabls.intersecting(key) {
            for i in items {
                match i.src {
                    Src::Local => local = true,
                    Src::Face(_) => remote = true,
                }
            }
        }
        (local, remote)
    }

    /// Number of local declarations and of remote ones held for faces.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let remote = self
            .faces
            .values()
            .map(|f| f.subs.len() + f.qabls.len() + f.tokens.len())
            .sum();
        (self.locals.len(), remote)
    }
}

/// The interest flags of a local declaration that asks neighbours for theirs.
fn interest_flags(kind: &LocalKind) -> Option<u8> {
    match kind {
        // A publisher only needs to know that its samples are wanted: one declaration on its
        // key stands for every matching subscriber where the answerer filters by interest.
        LocalKind::Pub => Some(interest::SUBSCRIBERS | interest::AGGREGATE),
        LocalKind::LivSub => Some(interest::TOKENS),
        _ => None,
    }
}

/// The newest wire declaration `f` (a face told only what it asked for) was told that a
/// declaration on `key` holds: its own, or an aggregate of an interest it matches (`None`:
/// none, so a barrier for that declaration does not wait for `f`: a remote router that was not
/// told of a subscription, because nobody there publishes to it, hears nothing about it,
/// barrier included). Without a key, anything sent so far.
fn told_seq(f: &Face, key: Option<&OwnedKeyExpr>) -> Option<u64> {
    let Some(k) = key else {
        return Some(f.out.seq);
    };
    // One copy of the key, reused as the lookup key of every kind.
    let mut probe = (Kind::Sub, k.clone(), false);
    let mut seq = [
        (Kind::Sub, false),
        (Kind::Qabl, false),
        (Kind::Qabl, true),
        (Kind::Token, false),
    ]
    .into_iter()
    .filter_map(|(kind, complete)| {
        probe.0 = kind;
        probe.2 = complete;
        f.out.entries.get(&probe).map(|e| e.seq)
    })
    .max();
    let kk = k.as_keyexpr();
    for i in f.their_interests.values() {
        let aggregated = interest::SUBSCRIBERS | interest::AGGREGATE;
        if i.flags & aggregated != aggregated {
            continue;
        }
        if let Some(ik) = i.key.as_ref().filter(|ik| ik.as_keyexpr().intersects(&kk)) {
            if let Some(e) = f.out.entries.get(&(Kind::Sub, ik.clone(), false)) {
                seq = seq.max(Some(e.seq));
            }
        }
    }
    seq
}

/// Releases one holder of `slot`; the undeclaration to send if it was the last.
fn release(out: &mut Out, slot: &Slot) -> Option<Decl> {
    let e = out.entries.get_mut(slot)?;
    e.refs = e.refs.saturating_sub(1);
    if e.refs > 0 {
        return None;
    }
    let wid = e.wid;
    out.entries.remove(slot);
    Some(match slot.0 {
        Kind::Sub => Decl::Unsubscriber { id: wid },
        Kind::Qabl => Decl::Unqueryable { id: wid },
        Kind::Token => Decl::Untoken { id: wid },
    })
}

/// The wire declaration of a slot.
fn slot_decl(kind: Kind, id: u32, key: OwnedKeyExpr, complete: bool) -> Decl {
    match kind {
        Kind::Sub => Decl::Subscriber { id, key },
        Kind::Qabl => Decl::Queryable { id, key, complete },
        Kind::Token => Decl::Token { id, key },
    }
}

/// Has `f` answered an interest of ours for subscribers that includes `key` in full?
fn covered(f: &Face, key: &KeyExpr<'_>) -> bool {
    f.my_interests
        .values()
        .any(|i| i.done && i.flags & interest::SUBSCRIBERS != 0 && i.key.as_keyexpr().includes(key))
}

fn op_of(msg: &Msg) -> (Op, Option<&str>) {
    match msg {
        Msg::Sample { sample, .. } => (sample_op(sample.kind), Some(&sample.key)),
        Msg::Declare(d) => match d {
            Decl::Subscriber { key, .. } => (Op::Sub, Some(key.as_str())),
            Decl::Queryable { key, .. } => (Op::Queryable, Some(key.as_str())),
            Decl::Token { key, .. } => (Op::Token, Some(key.as_str())),
            Decl::Interest { key, flags, .. } => {
                (Op::Interest(*flags), key.as_ref().map(|k| k.as_str()))
            }
            _ => (Op::Control, None),
        },
        Msg::Request(r) => (Op::Query, Some(r.key.as_str())),
        Msg::Response { result, .. } => (Op::Reply, result.as_ref().ok().map(|s| &*s.key)),
        Msg::ResponseFinal { .. }
        | Msg::Gossip { .. }
        | Msg::Denied(_)
        | Msg::Cancel { .. }
        | Msg::LinkState(_)
        | Msg::Routed { .. }
        | Msg::Transit(_) => (Op::Control, None),
    }
}

fn sample_op(kind: SampleKind) -> Op {
    match kind {
        SampleKind::Delete => Op::Delete,
        _ => Op::Put,
    }
}

/// The error reply that tells a querier access control refused something.
fn denied_reply(d: &AccessDenied) -> ErrorReply {
    ErrorReply {
        payload: Bytes::from(d.to_payload()),
        encoding: Some(Arc::from(crate::acl::DENIED_ENCODING)),
    }
}

/// A link older than this is settled: a second link for its node is worth a warning.
const SETTLED_LINK: Duration = Duration::from_secs(2);

/// At most one warning per face per this interval (the rest are counted and summarised).
const WARN_EVERY: Duration = Duration::from_secs(1);
/// At most one notice per (face, operation, key) per this interval for refused publications.
const NOTICE_EVERY: Duration = Duration::from_secs(10);
/// Publications remembered per face for rate-limiting notices.
const MAX_NOTICED: usize = 256;

fn token_sample(key: &str, kind: SampleKind) -> Sample {
    Sample {
        key: Arc::from(key),
        payload: Bytes::new(),
        kind,
        timestamp: None,
        encoding: None,
        attachment: None,
        source: None,
    }
}
