//! Deterministic multi-node tests: a [`Mesh`] of [`Node`]s on a fake clock, messages passed in
//! memory in order per link (quinn-proto's `tests/util.rs` `Pair` is the model). No sockets,
//! no sleeps, no tokio.

use super::*;
use crate::acl::Principal;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn k(s: &str) -> OwnedKeyExpr {
    OwnedKeyExpr::new(s.to_string()).expect("test key")
}

fn sample(key: &str, payload: &str) -> Sample {
    Sample {
        key: Arc::from(key),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        kind: SampleKind::Put,
        timestamp: None,
        encoding: None,
        attachment: None,
        source: None,
    }
}

const DATA: Lane = Lane {
    priority: Priority::Data,
    reliable: true,
};

/// How a local queryable in the mesh answers: these (key, payload) samples, then final.
type Answer = Vec<(String, String)>;

/// What happened at one node.
#[derive(Default, Debug)]
struct Inbox {
    /// Samples delivered, per local id.
    delivered: BTreeMap<LocalId, Vec<Sample>>,
    replies: BTreeMap<QueryId, Vec<Reply>>,
    done: HashSet<QueryId>,
    ready: HashSet<LocalId>,
    closed: Vec<(FaceId, CloseReason, &'static str)>,
    /// Gossip learnt: (node, locators, announced by itself).
    discovered: Vec<(NodeId, String, bool)>,
    /// Refusals neighbours told of: (local declarations concerned, the refusal).
    denied: Vec<(Vec<LocalId>, Arc<crate::acl::AccessDenied>)>,
    /// Alternate routers a client was told of.
    alternates: Vec<String>,
}

struct Mesh {
    now: Instant,
    nodes: Vec<Node>,
    inbox: Vec<Inbox>,
    /// face id -> (node index, peer node index, peer's face id)
    links: HashMap<FaceId, (usize, usize, FaceId)>,
    /// In-flight messages per directed link, in order: (to node, on its face, msg).
    wire: VecDeque<(usize, FaceId, Msg)>,
    answers: HashMap<(usize, LocalId), Answer>,
    next_face: FaceId,
    /// Every sample sent on a face: (sending node, face, key).
    sample_sends: Vec<(usize, FaceId, String)>,
    /// Declarations sent: (sending node, face, decl).
    decl_sends: Vec<(usize, FaceId, Decl)>,
    /// Routed declarations still to lose (a link dying with them queued).
    lose_routed_decls: usize,
    /// Declarations (and interests) sent across the backbone: (sending node, router, decl).
    routed_decls: Vec<(usize, NodeId, Decl)>,
}

impl Mesh {
    fn new(roles: &[Mode]) -> Self {
        Self::with_caps(roles, Caps::default())
    }

    fn with_caps(roles: &[Mode], caps: Caps) -> Self {
        Self::build(roles, caps, &[])
    }

    /// Nodes 1..=n with these roles and caps; `sites[i]` (where given) is node i's site.
    fn build(roles: &[Mode], caps: Caps, sites: &[&str]) -> Self {
        let nodes = roles
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut c = NodeConfig::new(NodeId::from_u128(i as u128 + 1), *r);
                c.caps = caps;
                if let Some(site) = sites.get(i) {
                    c.site = Arc::from(*site);
                }
                Node::new(c)
            })
            .collect();
        Mesh {
            now: Instant::from_micros(1_000_000),
            nodes,
            inbox: roles.iter().map(|_| Inbox::default()).collect(),
            links: HashMap::new(),
            wire: VecDeque::new(),
            answers: HashMap::new(),
            next_face: 100,
            sample_sends: Vec::new(),
            decl_sends: Vec::new(),
            lose_routed_decls: 0,
            routed_decls: Vec::new(),
        }
    }

    fn kind(&self, i: usize) -> FaceKind {
        FaceKind::of(self.nodes[i].role())
    }

    /// Links `a` (dialer) and `b`; returns (a's face, b's face).
    fn link(&mut self, a: usize, b: usize) -> (FaceId, FaceId) {
        self.link_as(a, b, Principal::anonymous(), Principal::anonymous())
    }

    /// Links `a` and `b`; `a` sees `b` as `pb`, `b` sees `a` as `pa`.
    fn link_as(&mut self, a: usize, b: usize, pa: Principal, pb: Principal) -> (FaceId, FaceId) {
        let fa = self.next_face;
        let fb = self.next_face + 1;
        self.next_face += 2;
        self.links.insert(fa, (a, b, fb));
        self.links.insert(fb, (b, a, fa));
        let (ka, kb) = (self.kind(a), self.kind(b));
        let (ida, idb) = (self.nodes[a].id(), self.nodes[b].id());
        let now = self.now;
        self.nodes[a].handle_face_up_as(now, fa, kb, idb, true, pb);
        self.nodes[b].handle_face_up_as(now, fb, ka, ida, false, pa);
        self.run();
        (fa, fb)
    }

    fn unlink(&mut self, face: FaceId) {
        let Some((a, b, fb)) = self.links.remove(&face) else {
            return;
        };
        self.links.remove(&fb);
        self.wire.retain(|(_, f, _)| *f != face && *f != fb);
        let now = self.now;
        self.nodes[a].handle_face_down(now, face);
        self.nodes[b].handle_face_down(now, fb);
        self.run();
    }

    fn local(&mut self, i: usize, cmd: Cmd) {
        let now = self.now;
        self.nodes[i].handle_local(now, cmd);
        self.run();
    }

    fn id(&mut self, i: usize) -> LocalId {
        self.nodes[i].next_local_id()
    }

    /// `n` subscribers at node `i`, on `fleet/car<k>/speed` for k in 0..n.
    fn fleet_subscribers(&mut self, i: usize, n: usize) -> Vec<LocalId> {
        (0..n)
            .map(|k| self.subscribe(i, &format!("fleet/car{k}/speed")))
            .collect()
    }

    /// A publisher at node `i` on `key`, checked to be ready.
    fn ready_publisher(&mut self, i: usize, key: &str) -> LocalId {
        let p = self.publisher(i, key);
        assert!(
            self.inbox[i].ready.contains(&p),
            "publisher at {i} not ready"
        );
        p
    }

    fn subscribe(&mut self, i: usize, key: &str) -> LocalId {
        let id = self.id(i);
        self.local(i, Cmd::Subscribe { id, key: k(key) });
        id
    }

    fn publisher(&mut self, i: usize, key: &str) -> LocalId {
        let id = self.id(i);
        self.local(i, Cmd::Publisher { id, key: k(key) });
        id
    }

    fn put(&mut self, i: usize, key: &str, payload: &str) {
        self.local(
            i,
            Cmd::Publish {
                sample: sample(key, payload),
                lane: DATA,
            },
        );
    }

    fn queryable(&mut self, i: usize, key: &str, complete: bool, answer: &[(&str, &str)]) {
        let id = self.id(i);
        self.answers.insert(
            (i, id),
            answer
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
        self.local(
            i,
            Cmd::Queryable {
                id,
                key: k(key),
                complete,
            },
        );
    }

    fn query(&mut self, i: usize, key: &str, target: QueryTarget, c: Consolidation) -> QueryId {
        let id = self.nodes[i].next_query_id();
        self.local(
            i,
            Cmd::Query {
                id,
                params: QueryParams {
                    key: k(key),
                    parameters: Arc::from(""),
                    target,
                    consolidation: c,
                    timeout: Duration::from_secs(10),
                    payload: None,
                    attachment: None,
                },
            },
        );
        id
    }

    fn delivered(&self, i: usize, id: LocalId) -> Vec<String> {
        self.inbox[i]
            .delivered
            .get(&id)
            .map(|v| {
                v.iter()
                    .map(|s| format!("{}={}", s.key, String::from_utf8_lossy(&s.payload)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        for n in &mut self.nodes {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
        self.run();
    }

    /// Runs until nothing is left to do: actions executed, messages delivered in order.
    fn run(&mut self) {
        for _ in 0..1_000_000 {
            let mut progress = false;
            for i in 0..self.nodes.len() {
                while let Some(a) = self.nodes[i].poll_action() {
                    progress = true;
                    self.execute(i, a);
                }
            }
            if let Some((to, face, msg)) = self.wire.pop_front() {
                progress = true;
                let now = self.now;
                self.nodes[to].handle_message(now, face, msg);
            }
            if !progress {
                return;
            }
        }
        panic!("the mesh did not settle");
    }

    fn execute(&mut self, i: usize, a: Action) {
        match a {
            Action::Send {
                face,
                msg: Msg::Routed { dst, inner },
            } => {
                // The runtime's part: hop by hop along each router's own next hop, then
                // handled at `dst` as coming from the sender's virtual face.
                let src = self.nodes[i].id();
                if let Msg::Declare(d) = &*inner {
                    self.routed_decls.push((i, dst, d.clone()));
                }
                if matches!(&*inner, Msg::Declare(_)) && self.lose_routed_decls > 0 {
                    self.lose_routed_decls -= 1;
                    return;
                }
                let mut link = face;
                let mut at = i;
                for _ in 0..MAX_HOPS {
                    let Some((_, b, _)) = self.links.get(&link).copied() else {
                        return;
                    };
                    if let Msg::Sample { sample, .. } = &*inner {
                        self.sample_sends.push((at, link, sample.key.to_string()));
                    }
                    at = b;
                    if self.nodes[b].id() == dst {
                        if let Some(pf) = self.nodes[b].pair_face(&src) {
                            self.wire.push_back((b, pf, *inner));
                        }
                        return;
                    }
                    match self.nodes[b].next_hop_face(&dst) {
                        Some(next) => link = next,
                        None => return,
                    }
                }
            }
            Action::Send { face, msg } => {
                let Some((_, b, fb)) = self.links.get(&face).copied() else {
                    return;
                };
                match &msg {
                    Msg::Sample { sample, .. } => {
                        self.sample_sends.push((i, face, sample.key.to_string()))
                    }
                    Msg::Declare(d) => self.decl_sends.push((i, face, d.clone())),
                    _ => {}
                }
                self.wire.push_back((b, fb, msg));
            }
            Action::Deliver { to, sample } => {
                self.inbox[i].delivered.entry(to).or_default().push(sample)
            }
            Action::Query { to, query, .. } => {
                let now = self.now;
                for l in to {
                    let answers = self.answers.get(&(i, l)).cloned().unwrap_or_default();
                    for (key, value) in answers {
                        self.nodes[i].handle_local(
                            now,
                            Cmd::Reply {
                                query,
                                result: Ok(sample(&key, &value)),
                            },
                        );
                    }
                }
                self.nodes[i].handle_local(now, Cmd::ReplyFinal { query });
            }
            Action::Reply { query, reply } => {
                self.inbox[i].replies.entry(query).or_default().push(reply)
            }
            Action::QueryDone { query } => {
                self.inbox[i].done.insert(query);
            }
            Action::Ready { id } => {
                self.inbox[i].ready.insert(id);
            }
            Action::Denied { locals, denial } => self.inbox[i].denied.push((locals, denial)),
            Action::Alternate { locators } => self.inbox[i].alternates.push(locators.to_string()),
            Action::Discovered {
                node,
                locators,
                neighbour,
            } => self.inbox[i]
                .discovered
                .push((node, locators.to_string(), neighbour)),
            Action::Close {
                face,
                reason,
                detail,
                drain: _,
            } => {
                self.inbox[i].closed.push((face, reason, detail));
                if let Some((_, b, fb)) = self.links.remove(&face) {
                    self.links.remove(&fb);
                    self.wire.retain(|(_, f, _)| *f != face && *f != fb);
                    let now = self.now;
                    self.nodes[b].handle_face_down(now, fb);
                    self.nodes[i].handle_face_down(now, face);
                }
            }
        }
    }

    fn reply_payloads(&self, i: usize, q: QueryId) -> Vec<String> {
        let mut v: Vec<String> = self.inbox[i]
            .replies
            .get(&q)
            .map(|r| {
                r.iter()
                    .filter_map(|r| r.result.as_ref().ok())
                    .map(|s| format!("{}={}", s.key, String::from_utf8_lossy(&s.payload)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

use Mode::{Client, Peer, Router};

#[test]
fn peers_deliver_directly_and_send_nothing_where_nothing_matches() {
    let mut m = Mesh::new(&[Peer, Peer, Peer]);
    m.link(0, 1);
    m.link(0, 2);
    m.link(1, 2);
    let s = m.subscribe(1, "fleet/*/speed");
    m.put(0, "fleet/car1/speed", "42");
    m.put(0, "fleet/car1/fuel", "7");
    assert_eq!(m.delivered(1, s), ["fleet/car1/speed=42"]);
    // One sample sent, to node 1 only; nothing for the key nobody wants, nothing to node 2.
    assert_eq!(m.sample_sends.len(), 1);
    assert_eq!(m.sample_sends[0].0, 0);
    assert!(
        m.sample_sends
            .iter()
            .all(|(_, _, key)| key == "fleet/car1/speed")
    );
}

#[test]
fn peers_do_not_forward_between_peers() {
    // A line 0 - 1 - 2 of peers: 2's subscriber is not reachable from 0 (peers mesh directly).
    let mut m = Mesh::new(&[Peer, Peer, Peer]);
    m.link(0, 1);
    m.link(1, 2);
    let s = m.subscribe(2, "a/**");
    m.put(0, "a/b", "x");
    assert!(m.delivered(2, s).is_empty());
    assert!(m.sample_sends.is_empty());
}

#[test]
fn router_forwards_client_to_client_peer_and_back() {
    // 0 router, 1 and 2 clients of it, 3 a peer linked to it.
    let mut m = Mesh::new(&[Router, Client, Client, Peer]);
    m.link(1, 0);
    m.link(2, 0);
    m.link(3, 0);
    let s2 = m.subscribe(2, "fleet/**");
    let s3 = m.subscribe(3, "fleet/**");
    let s1 = m.subscribe(1, "fleet/**");
    let p1 = m.publisher(1, "fleet/car1/speed");
    assert!(m.inbox[1].ready.contains(&p1));
    m.put(1, "fleet/car1/speed", "1");
    assert_eq!(m.delivered(2, s2), ["fleet/car1/speed=1"]);
    assert_eq!(m.delivered(3, s3), ["fleet/car1/speed=1"]);
    // The publisher's own subscriber gets it locally, not echoed back by the router.
    assert_eq!(m.delivered(1, s1), ["fleet/car1/speed=1"]);
    // Peer -> clients.
    m.put(3, "fleet/car9/speed", "9");
    assert_eq!(
        m.delivered(1, s1),
        ["fleet/car1/speed=1", "fleet/car9/speed=9"]
    );
    assert_eq!(
        m.delivered(2, s2),
        ["fleet/car1/speed=1", "fleet/car9/speed=9"]
    );
    assert_eq!(
        m.delivered(3, s3),
        ["fleet/car1/speed=1", "fleet/car9/speed=9"]
    );
    // Each sample crossed each face at most once.
    let mut sends = m.sample_sends.clone();
    sends.sort();
    sends.dedup();
    assert_eq!(sends.len(), m.sample_sends.len());
}

#[test]
fn writer_side_filtering_nothing_crosses_where_nobody_matches() {
    let mut m = Mesh::new(&[Router, Client, Client]);
    let (_, r_to_1) = m.link(1, 0);
    let (_, r_to_2) = m.link(2, 0);
    let s2 = m.subscribe(2, "a/**");
    let p = m.publisher(1, "b/x");
    assert!(m.inbox[1].ready.contains(&p));
    m.put(1, "b/x", "nobody");
    // The publisher's interest was answered with no subscriber: nothing leaves the client.
    assert!(m.sample_sends.is_empty(), "{:?}", m.sample_sends);
    let p2 = m.publisher(1, "a/x");
    assert!(m.inbox[1].ready.contains(&p2));
    m.put(1, "a/x", "yes");
    assert_eq!(m.delivered(2, s2), ["a/x=yes"]);
    // Exactly two sends: client 1 -> router, router -> client 2.
    assert_eq!(m.sample_sends.len(), 2);
    assert!(
        m.sample_sends
            .iter()
            .all(|(n, f, _)| *n == 1 || *f == r_to_2)
    );
    assert!(!m.sample_sends.iter().any(|(_, f, _)| *f == r_to_1));
}

#[test]
fn clients_get_only_the_declarations_matching_their_interests() {
    let mut m = Mesh::new(&[Router, Client, Peer]);
    let (_, r_to_c) = m.link(1, 0);
    m.link(2, 0);
    for i in 0..50 {
        m.subscribe(2, &format!("noise/{i}"));
    }
    m.subscribe(2, "wanted/**");
    let before = m.decl_sends.iter().filter(|(_, f, _)| *f == r_to_c).count();
    assert_eq!(
        before, 0,
        "nothing is declared to a client that asked for nothing"
    );
    m.publisher(1, "wanted/x");
    let to_client: Vec<&Decl> = m
        .decl_sends
        .iter()
        .filter(|(_, f, _)| *f == r_to_c)
        .map(|(_, _, d)| d)
        .collect();
    let subs: Vec<&Decl> = to_client
        .iter()
        .copied()
        .filter(|d| matches!(d, Decl::Subscriber { .. }))
        .collect();
    assert_eq!(subs.len(), 1, "{to_client:?}");
    // A publisher's interest is aggregated: the client is told one subscriber on its
    // publisher's key, standing for `wanted/**`.
    assert!(matches!(subs[0], Decl::Subscriber { key, .. } if key.as_str() == "wanted/x"));
}

#[test]
fn ready_means_the_first_sample_after_declaring_is_not_lost() {
    // Zenoh #495: samples published right after declaring are lost. Here both sides wait for
    // `Ready` and the very first publication arrives.
    let mut m = Mesh::new(&[Router, Client, Client, Peer]);
    m.link(1, 0);
    m.link(2, 0);
    m.link(3, 0);
    // Hold the wire: declare, and check readiness only settles after the router answered.
    let id = m.id(2);
    m.nodes[2].handle_local(m.now, Cmd::Subscribe { id, key: k("x/**") });
    while let Some(a) = m.nodes[2].poll_action() {
        assert!(
            !matches!(a, Action::Ready { .. }),
            "ready before the router knew"
        );
        m.execute(2, a);
    }
    m.run();
    assert!(m.inbox[2].ready.contains(&id));
    let p = m.publisher(1, "x/y");
    assert!(m.inbox[1].ready.contains(&p));
    m.put(1, "x/y", "first");
    assert_eq!(m.delivered(2, id), ["x/y=first"]);
    // And a peer behind the router has it too once ready: the router passed the barrier on.
    let id3 = m.subscribe(3, "z/**");
    assert!(m.inbox[3].ready.contains(&id3));
    let p1 = m.publisher(1, "z/1");
    assert!(m.inbox[1].ready.contains(&p1));
    m.put(1, "z/1", "one");
    assert_eq!(m.delivered(3, id3), ["z/1=one"]);
}

#[test]
fn a_client_with_no_interest_settled_still_sends_upstream() {
    // A plain put (no declared publisher) from a client: the router decides, nothing is lost.
    let mut m = Mesh::new(&[Router, Client, Client]);
    m.link(1, 0);
    m.link(2, 0);
    let s = m.subscribe(2, "k/**");
    m.put(1, "k/1", "v");
    assert_eq!(m.delivered(2, s), ["k/1=v"]);
}

#[test]
fn liveliness_through_a_router_appears_and_vanishes() {
    let mut m = Mesh::new(&[Router, Client, Client]);
    let (c1_face, _) = m.link(1, 0);
    m.link(2, 0);
    let lid = m.id(2);
    m.local(
        2,
        Cmd::LivelinessSubscribe {
            id: lid,
            key: k("group/*"),
        },
    );
    let t = m.id(1);
    m.local(
        1,
        Cmd::Token {
            id: t,
            key: k("group/a"),
        },
    );
    let seen: Vec<(String, SampleKind)> = m.inbox[2].delivered[&lid]
        .iter()
        .map(|s| (s.key.to_string(), s.kind))
        .collect();
    assert_eq!(seen, [("group/a".to_string(), SampleKind::Put)]);
    // Client 1 goes away: its token vanishes for client 2.
    m.unlink(c1_face);
    let last = m.inbox[2].delivered[&lid]
        .last()
        .map(|s| (s.key.to_string(), s.kind));
    assert_eq!(last, Some(("group/a".to_string(), SampleKind::Delete)));
}

#[test]
fn query_targets_and_consolidation() {
    // 0 queries; 1 and 2 are peers with queryables on store/** (1 complete, 2 not).
    let mut m = Mesh::new(&[Peer, Peer, Peer]);
    m.link(0, 1);
    m.link(0, 2);
    m.queryable(1, "store/**", true, &[("store/a", "1"), ("store/b", "1")]);
    m.queryable(2, "store/**", false, &[("store/a", "2")]);
    let q = m.query(0, "store/**", QueryTarget::All, Consolidation::None);
    assert!(m.inbox[0].done.contains(&q));
    assert_eq!(
        m.reply_payloads(0, q),
        ["store/a=1", "store/a=2", "store/b=1"]
    );
    let q = m.query(0, "store/**", QueryTarget::AllComplete, Consolidation::None);
    assert_eq!(m.reply_payloads(0, q), ["store/a=1", "store/b=1"]);
    let q = m.query(
        0,
        "store/**",
        QueryTarget::BestMatching,
        Consolidation::None,
    );
    assert_eq!(m.reply_payloads(0, q), ["store/a=1", "store/b=1"]);
    // Latest: one reply per key (no timestamps: the last one wins), delivered at the end.
    let q = m.query(0, "store/**", QueryTarget::All, Consolidation::Latest);
    assert_eq!(m.reply_payloads(0, q).len(), 2);
    assert!(m.inbox[0].done.contains(&q));
}

#[test]
fn queries_cross_a_router_and_replies_come_back() {
    let mut m = Mesh::new(&[Router, Client, Client, Peer]);
    m.link(1, 0);
    m.link(2, 0);
    m.link(3, 0);
    m.queryable(2, "cfg/**", true, &[("cfg/a", "from-client")]);
    m.queryable(3, "cfg/**", true, &[("cfg/b", "from-peer")]);
    let q = m.query(1, "cfg/**", QueryTarget::All, Consolidation::None);
    assert!(m.inbox[1].done.contains(&q));
    assert_eq!(
        m.reply_payloads(1, q),
        ["cfg/a=from-client", "cfg/b=from-peer"]
    );
    // From the peer: its own queryable and the client's, through the router.
    let q2 = m.query(3, "cfg/**", QueryTarget::All, Consolidation::None);
    assert_eq!(
        m.reply_payloads(3, q2),
        ["cfg/a=from-client", "cfg/b=from-peer"]
    );
    // A reply outside the query's key expression is refused, and counted.
    m.queryable(
        2,
        "liar/**",
        true,
        &[("elsewhere/x", "forged"), ("liar/ok", "fine")],
    );
    let q3 = m.query(1, "liar/**", QueryTarget::All, Consolidation::None);
    assert!(m.inbox[1].done.contains(&q3));
    assert_eq!(m.reply_payloads(1, q3), ["liar/ok=fine"]);
}

#[test]
fn a_query_nobody_answers_times_out_on_the_fake_clock() {
    let mut m = Mesh::new(&[Peer, Peer]);
    let (_, b_face) = m.link(0, 1);
    m.queryable(1, "slow/**", true, &[]);
    // Make node 1's face deaf: drop everything node 0 sends from now on.
    m.links.remove(&b_face);
    let q = m.query(0, "slow/**", QueryTarget::All, Consolidation::None);
    assert!(!m.inbox[0].done.contains(&q));
    m.advance(Duration::from_secs(9));
    assert!(!m.inbox[0].done.contains(&q));
    m.advance(Duration::from_secs(2));
    assert!(m.inbox[0].done.contains(&q));
}

#[test]
fn duplicate_links_keep_the_one_dialled_by_the_smaller_id() {
    let mut m = Mesh::new(&[Peer, Peer]);
    let s = m.subscribe(1, "d/**");
    // Node 1 (id 2) dials node 0 (id 1) first, then node 0 dials node 1: the latter wins.
    let (f10, f01) = m.link(1, 0);
    let (f01b, _) = m.link(0, 1);
    let closed: Vec<FaceId> = m
        .inbox
        .iter()
        .flat_map(|i| i.closed.iter().map(|c| c.0))
        .collect();
    assert!(closed.contains(&f10) || closed.contains(&f01), "{closed:?}");
    assert_eq!(m.nodes[0].faces().len(), 1);
    assert_eq!(m.nodes[0].face_of(m.nodes[1].id()), Some(f01b));
    m.put(0, "d/1", "once");
    assert_eq!(m.delivered(1, s), ["d/1=once"]);
}

#[test]
fn a_face_over_its_declaration_cap_is_closed_naming_the_cap() {
    let caps = Caps {
        declarations: 10,
        ..Caps::default()
    };
    let mut m = Mesh::with_caps(&[Peer, Peer], caps);
    m.link(0, 1);
    for i in 0..11 {
        m.subscribe(1, &format!("spam/{i}"));
    }
    let closed = &m.inbox[0].closed;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].1, CloseReason::TooLarge);
    assert!(closed[0].2.contains("max_declarations"));
    // Its state went with it.
    assert_eq!(m.nodes[0].counts().1, 0);
    assert!(m.nodes[0].faces().is_empty());
}

#[test]
fn long_keys_and_interest_floods_are_capped() {
    let caps = Caps {
        key_len: 32,
        interests: 3,
        ..Caps::default()
    };
    let mut m = Mesh::with_caps(&[Router, Client], caps);
    m.link(1, 0);
    m.subscribe(1, &"x".repeat(40));
    assert!(m.inbox[0].closed[0].2.contains("max_key_len"));
    let mut m = Mesh::with_caps(&[Router, Client], caps);
    m.link(1, 0);
    for i in 0..4 {
        m.publisher(1, &format!("p/{i}"));
    }
    assert!(m.inbox[0].closed[0].2.contains("max_interests"));
}

#[test]
fn ingress_and_egress_hooks_see_and_can_deny() {
    struct DenySecret;
    impl intercept::Intercept for DenySecret {
        fn check(&mut self, _: Direction, op: Op, key: Option<&str>) -> Verdict {
            if matches!(op, Op::Put | Op::Delete) && key.is_some_and(|k| k.starts_with("secret")) {
                Verdict::Deny(intercept::Denial {
                    why: "secret",
                    acl: None,
                })
            } else {
                Verdict::Pass
            }
        }
    }
    struct F;
    impl InterceptFactory for F {
        fn build(
            &self,
            _: FaceId,
            _: FaceKind,
            _: NodeId,
            _: &crate::acl::Principal,
        ) -> Vec<Box<dyn intercept::Intercept>> {
            vec![Box::new(DenySecret)]
        }
    }
    let mut m = Mesh::new(&[Peer, Peer]);
    let mut cfg = NodeConfig::new(NodeId::from_u128(1), Peer);
    cfg.intercepts = Box::new(F);
    m.nodes[0] = Node::new(cfg);
    m.link(0, 1);
    let s1 = m.subscribe(1, "**");
    let s0 = m.subscribe(0, "**");
    m.put(0, "secret/a", "no");
    m.put(0, "open/a", "yes");
    assert_eq!(m.delivered(1, s1), ["open/a=yes"]);
    m.put(1, "secret/b", "no");
    m.put(1, "open/b", "yes");
    // Local delivery is not a face's business; what came in on the face was filtered.
    assert_eq!(
        m.delivered(0, s0),
        ["secret/a=no", "open/a=yes", "open/b=yes"]
    );
    let f = m.nodes[0].face_of(NodeId::from_u128(2));
    let r = m.nodes[0].route(f, "secret/b");
    assert!(r.denied);
}

#[test]
fn routes_are_cached_and_expire_precisely() {
    let mut m = Mesh::new(&[Peer, Peer]);
    m.link(0, 1);
    m.subscribe(1, "a/**");
    let ra = m.nodes[0].route(None, "a/1");
    let rb = m.nodes[0].route(None, "b/1");
    assert_eq!(ra.faces.len(), 1);
    assert!(rb.faces.is_empty());
    m.subscribe(1, "b/*");
    assert!(
        !ra.is_stale(),
        "a declaration on b/* does not touch routes on a/1"
    );
    assert!(rb.is_stale());
    assert_eq!(m.nodes[0].route(None, "b/1").faces.len(), 1);
}

#[test]
fn gossip_tells_newcomers_of_neighbours_and_relays_self_announcements() {
    let mut m = Mesh::new(&[Peer, Peer, Peer]);
    for i in 0..3 {
        m.nodes[i].set_locators(
            Instant::from_micros(0),
            Arc::from(format!("tcp/10.0.0.{i}:7447")),
        );
    }
    let id = |i: usize| NodeId::from_u128(i as u128 + 1);
    // 0 - 1: each announces itself to the other (remembered, not to dial: already linked).
    m.link(0, 1);
    assert!(
        m.inbox[0]
            .discovered
            .contains(&(id(1), "tcp/10.0.0.1:7447".into(), true))
    );
    assert!(
        m.inbox[1]
            .discovered
            .contains(&(id(0), "tcp/10.0.0.0:7447".into(), true))
    );
    // 2 links to 1 only: 1 tells it of 0 (a node to dial), and relays 2's self-announcement
    // to 0 (which may dial 2 too): peers configured with one endpoint form a full mesh.
    m.link(2, 1);
    assert!(
        m.inbox[2]
            .discovered
            .contains(&(id(0), "tcp/10.0.0.0:7447".into(), false))
    );
    assert!(
        m.inbox[0]
            .discovered
            .contains(&(id(2), "tcp/10.0.0.2:7447".into(), false))
    );
    // Nobody is told about itself, and empty announcements are ignored.
    for (i, inbox) in m.inbox.iter().enumerate() {
        assert!(
            inbox
                .discovered
                .iter()
                .all(|(n, l, _)| *n != id(i) && !l.is_empty())
        );
    }
}

/// Issue 16: peers that come and go leave nothing behind in the node's tables (the gossip
/// table kept every peer that ever announced itself, up to its cap of 4,096, after which no
/// new neighbour was remembered).
#[test]
fn peers_that_come_and_go_leave_no_state_behind() {
    let mut hub = Node::new(NodeConfig::new(NodeId::from_u128(1), Peer));
    hub.set_locators(Instant::from_micros(0), Arc::from("tcp/10.0.0.1:7447"));
    let now = Instant::from_micros(1_000_000);
    let stay = NodeId::from_u128(2);
    hub.handle_face_up_as(now, 10, FaceKind::Peer, stay, false, Principal::anonymous());
    hub.handle_message(
        now,
        10,
        Msg::Gossip {
            node: stay,
            mode: Peer,
            locators: Arc::from("tcp/10.0.0.2:7447"),
        },
    );
    for i in 0..5_000u64 {
        let face = 100 + i;
        let node = NodeId::from_u128(1_000 + u128::from(i));
        hub.handle_face_up_as(
            now,
            face,
            FaceKind::Peer,
            node,
            false,
            Principal::anonymous(),
        );
        hub.handle_message(
            now,
            face,
            Msg::Gossip {
                node,
                mode: Peer,
                locators: Arc::from(format!("tcp/10.1.{}.{}:7447", i / 250, i % 250)),
            },
        );
        hub.handle_face_down(now, face);
        while hub.poll_action().is_some() {}
    }
    assert_eq!(hub.faces.len(), 1, "only the peer that stayed is linked");
    assert_eq!(
        hub.known.keys().copied().collect::<Vec<_>>(),
        vec![stay],
        "only the peer that stayed is remembered"
    );
    assert!(hub.routes.is_empty() && hub.waits.is_empty() && hub.queries.is_empty());
    // And a newcomer is still remembered and told of the one that stayed.
    let late = NodeId::from_u128(99_999);
    hub.handle_face_up_as(
        now,
        9_999,
        FaceKind::Peer,
        late,
        false,
        Principal::anonymous(),
    );
    hub.handle_message(
        now,
        9_999,
        Msg::Gossip {
            node: late,
            mode: Peer,
            locators: Arc::from("tcp/10.0.0.9:7447"),
        },
    );
    assert!(hub.known.contains_key(&late));
}

// ----- property test: random topologies ----------------------------------------------------

#[derive(Clone, Debug)]
struct Topo {
    /// Roles of the backbone nodes (peers and routers, fully meshed).
    core: Vec<Mode>,
    /// Each client's upstream (index into core).
    clients: Vec<usize>,
    /// Subscriptions: (node, key).
    subs: Vec<(usize, String)>,
    /// Publications: (node, key).
    pubs: Vec<(usize, String)>,
}

const KEYS: &[&str] = &["a/x", "a/y", "b/x", "b/y/z"];
const EXPRS: &[&str] = &["a/x", "a/*", "b/**", "**", "*/x", "c/d"];

fn topo() -> impl Strategy<Value = Topo> {
    (
        prop::collection::vec(prop::bool::ANY, 1..4),
        prop::collection::vec(0usize..4, 0..4),
    )
        .prop_flat_map(|(core, clients)| {
            let core: Vec<Mode> = core
                .into_iter()
                .map(|r| if r { Router } else { Peer })
                .collect();
            let nc = core.len();
            let clients: Vec<usize> = clients.into_iter().map(|c| c % nc).collect();
            let n = nc + clients.len();
            (
                Just(core),
                Just(clients),
                prop::collection::vec((0..n, prop::sample::select(EXPRS)), 0..6),
                prop::collection::vec((0..n, prop::sample::select(KEYS)), 1..6),
            )
        })
        .prop_map(|(core, clients, subs, pubs)| Topo {
            core,
            clients,
            subs: subs.into_iter().map(|(n, s)| (n, s.to_string())).collect(),
            pubs: pubs.into_iter().map(|(n, s)| (n, s.to_string())).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Every sample reaches exactly the matching local subscribers, once each; and nothing is
    /// sent on a face where nothing matches (each sample a node receives is delivered or
    /// forwarded by it).
    #[test]
    fn every_sample_reaches_exactly_the_matching_subscribers_once(t in topo()) {
        let mut roles = t.core.clone();
        roles.extend(t.clients.iter().map(|_| Client));
        let mut m = Mesh::new(&roles);
        let nc = t.core.len();
        for a in 0..nc {
            for b in a + 1..nc {
                m.link(a, b);
            }
        }
        for (i, up) in t.clients.iter().enumerate() {
            m.link(nc + i, *up);
        }
        let mut subs = Vec::new();
        for (n, e) in &t.subs {
            let id = m.subscribe(*n, e);
            prop_assert!(m.inbox[*n].ready.contains(&id));
            subs.push((*n, id, k(e)));
        }
        for (n, key) in &t.pubs {
            let p = m.publisher(*n, key);
            prop_assert!(m.inbox[*n].ready.contains(&p));
        }
        for (seq, (n, key)) in t.pubs.iter().enumerate() {
            m.put(*n, key, &seq.to_string());
        }
        for (n, id, e) in &subs {
            let mut got = m.delivered(*n, *id);
            got.sort();
            let mut want: Vec<String> = t
                .pubs
                .iter()
                .enumerate()
                .filter(|(_, (_, key))| e.as_keyexpr().intersects(&KeyExpr::new(key).unwrap()))
                .map(|(seq, (_, key))| format!("{key}={seq}"))
                .collect();
            want.sort();
            prop_assert_eq!(got, want, "subscriber {} on node {}", e, n);
        }
        // Nothing sent where nothing matches: every node that was sent a sample on `key`
        // has a matching local subscriber, or a client behind it does.
        for (from, face, key) in &m.sample_sends {
            let (_, to, _) = m.links[face];
            let kx = KeyExpr::new(key).unwrap();
            let behind: Vec<usize> = if to < nc {
                std::iter::once(to)
                    .chain(t.clients.iter().enumerate().filter(|(_, u)| **u == to).map(|(i, _)| nc + i))
                    .collect()
            } else {
                vec![to]
            };
            let wanted = subs.iter().any(|(n, _, e)| {
                let reachable = if *from >= nc { *n != *from } else { behind.contains(n) };
                reachable && e.as_keyexpr().intersects(&kx)
            });
            prop_assert!(wanted, "sample on {} sent from {} to {} where nothing matches", key, from, to);
        }
    }
}

// ----- property test: hostile remote input -------------------------------------------------

/// One message a hostile (or buggy) neighbour might send.
fn hostile_msg() -> impl Strategy<Value = Msg> {
    let key = prop::sample::select(vec!["a", "a/b", "a/*", "**", "x/**", "a/b/c", "@x/y"]);
    prop_oneof![
        (0u32..8, key.clone()).prop_map(|(id, s)| Msg::Declare(Decl::Subscriber { id, key: k(s) })),
        (0u32..8).prop_map(|id| Msg::Declare(Decl::Unsubscriber { id })),
        (0u32..8, key.clone(), any::<bool>()).prop_map(|(id, s, complete)| {
            Msg::Declare(Decl::Queryable {
                id,
                key: k(s),
                complete,
            })
        }),
        (0u32..8).prop_map(|id| Msg::Declare(Decl::Unqueryable { id })),
        (0u32..8, key.clone()).prop_map(|(id, s)| Msg::Declare(Decl::Token { id, key: k(s) })),
        (0u32..8).prop_map(|id| Msg::Declare(Decl::Untoken { id })),
        (0u32..8, prop::option::of(key.clone()), any::<u8>()).prop_map(|(id, s, flags)| {
            Msg::Declare(Decl::Interest {
                id,
                key: s.map(k),
                flags,
            })
        }),
        (0u32..8).prop_map(|id| Msg::Declare(Decl::InterestFinal { id })),
        (0u32..8).prop_map(|id| Msg::Declare(Decl::UndeclareInterest { id })),
        (0u32..8, key.clone(), 0u8..3).prop_map(|(id, s, t)| Msg::Request(Request {
            id,
            key: k(s),
            parameters: Arc::from(""),
            target: [
                QueryTarget::BestMatching,
                QueryTarget::All,
                QueryTarget::AllComplete
            ][t as usize],
            consolidation: Consolidation::None,
            timeout_ms: 100,
            payload: None,
            attachment: None,
        })),
        (0u32..8, key.clone()).prop_map(|(id, key)| Msg::Response {
            id,
            result: Ok(sample(if key.contains('*') { "a/b" } else { key }, "r")),
        }),
        (0u32..8).prop_map(|id| Msg::ResponseFinal { id }),
        key.prop_map(|key| Msg::Sample {
            sample: sample(if key.contains('*') { "a/b" } else { key }, "s"),
            lane: DATA,
        }),
        (any::<u128>(), "[a-z0-9/.:,]{0,40}").prop_map(|(n, l)| Msg::Gossip {
            node: NodeId::from_u128(n),
            mode: Mode::Peer,
            locators: Arc::from(l.as_str()),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Whatever a neighbour sends, the node does not panic, holds no more than its caps, and
    /// gives everything back when the face goes.
    #[test]
    fn hostile_input_never_panics_stays_capped_and_is_freed(
        role in prop::sample::select(vec![Peer, Router, Client]),
        msgs in prop::collection::vec(hostile_msg(), 0..120),
    ) {
        let caps = Caps { declarations: 6, interests: 3, pending_queries: 3, key_len: 64 };
        let mut m = Mesh::with_caps(&[role, Peer, Client], caps);
        // Node 0 has a well-behaved neighbour (2) and a hostile one (1), fed by hand.
        m.link(2, 0);
        let (_, hostile_face) = m.link(1, 0);
        let sub = m.subscribe(0, "a/**");
        let q = m.query(0, "a/**", QueryTarget::All, Consolidation::None);
        for msg in msgs {
            let now = m.now;
            m.nodes[0].handle_message(now, hostile_face, msg);
            m.run();
            prop_assert!(m.nodes[0].counts().1 <= caps.declarations);
        }
        m.advance(Duration::from_secs(11));
        prop_assert!(m.inbox[0].done.contains(&q), "the local query ended");
        let _ = sub;
        // The hostile face goes (if a cap has not closed it already): its state goes with it.
        m.unlink(hostile_face);
        let left: usize = m.nodes[0].faces().iter().map(|f| f.subscribers + f.queryables + f.tokens).sum();
        prop_assert_eq!(left, 0, "only the quiet client's declarations (none) remain");
        prop_assert!(m.nodes[0].queries.is_empty(), "no query outlives its deadline or its face");
    }
}

fn acl_node(id: u128, role: Mode, rules: &str) -> Node {
    #[derive(serde::Deserialize)]
    struct W {
        acl: crate::acl::AclFile,
    }
    let w: W = toml::from_str(rules).unwrap();
    let acl = crate::acl::Acl::compile(&w.acl).unwrap();
    let mut cfg = NodeConfig::new(NodeId::from_u128(id), role);
    cfg.intercepts = Box::new(crate::acl::enforce::AclFactory(Arc::new(acl)));
    Node::new(cfg)
}

const ROBOT_RULES: &str = r#"
[acl]
default = "deny"
[[acl.rule]]
id = "robots"
who = ["robot/*"]
ops = ["put", "token", "sub", "query", "serve"]
keys = ["fleet/${id.last}/**"]
[[acl.rule]]
id = "ops"
who = ["ops"]
ops = ["sub", "query", "token_sub"]
keys = ["fleet/**"]
[[acl.rule]]
id = "no-cameras"
permission = "deny"
who = ["ops"]
ops = ["sub", "query"]
keys = ["fleet/*/camera/**"]
"#;

#[test]
fn acl_at_a_router_filters_refuses_and_tells() {
    // 0: router enforcing the rules; 1: robot r1 (client); 2: ops (client); 3: robot r2.
    let mut m = Mesh::new(&[Router, Client, Client, Client]);
    m.nodes[0] = acl_node(1, Router, ROBOT_RULES);
    let p = |s: &str| Principal::new(s).unwrap();
    m.link_as(1, 0, p("robot/r1"), Principal::anonymous());
    m.link_as(2, 0, p("ops"), Principal::anonymous());
    m.link_as(3, 0, p("robot/r2"), Principal::anonymous());

    // Ops subscribes to everything: accepted (it intersects the allow), then filtered per key.
    let all = m.subscribe(2, "fleet/**");
    assert!(m.inbox[2].ready.contains(&all));
    assert!(m.inbox[2].denied.is_empty());
    m.publisher(1, "fleet/r1/speed");
    m.put(1, "fleet/r1/speed", "1");
    m.put(1, "fleet/r1/camera/front", "jpeg");
    assert_eq!(m.delivered(2, all), ["fleet/r1/speed=1"]);
    // Robot 1 may not publish on robot 2's keys: dropped, and told (once per key per 10 s).
    m.put(1, "fleet/r2/cmd", "stop");
    m.put(1, "fleet/r2/cmd", "stop");
    assert_eq!(m.delivered(2, all), ["fleet/r1/speed=1"]);
    let notices: Vec<_> = m.inbox[1]
        .denied
        .iter()
        .map(|(l, d)| (l.clone(), d.op, d.key.clone(), d.rule.clone()))
        .collect();
    assert_eq!(
        notices,
        [(
            vec![],
            crate::acl::Op::Put,
            "fleet/r2/cmd".to_string(),
            "default".to_string()
        )]
    );
    assert_eq!(m.nodes[0].faces()[0].principal.name(), "robot/r1");

    // A subscription wholly inside a deny is refused, and the declarer learns it before ready.
    let cams = m.subscribe(2, "fleet/*/camera/**");
    let (locals, d) = m.inbox[2].denied.last().cloned().unwrap();
    assert_eq!(locals, vec![cams]);
    assert_eq!(
        (d.op, d.rule.as_str(), d.principal.as_str()),
        (crate::acl::Op::Sub, "no-cameras", "ops")
    );
    assert!(
        m.inbox[2].ready.contains(&cams),
        "the barrier still completes"
    );
    // Robot 2 may not subscribe to robot 1's keys.
    let spy = m.subscribe(3, "fleet/r1/**");
    assert_eq!(m.inbox[3].denied.last().unwrap().0, vec![spy]);
    m.put(1, "fleet/r1/speed", "2");
    assert!(m.delivered(3, spy).is_empty());

    // Liveliness (Zenoh #1562): robot 2 has no token_sub, so robot 1's token never reaches it,
    // nor its undeclaration; ops sees both.
    let liv_ops = m.id(2);
    m.local(
        2,
        Cmd::LivelinessSubscribe {
            id: liv_ops,
            key: k("fleet/**"),
        },
    );
    let liv_r2 = m.id(3);
    m.local(
        3,
        Cmd::LivelinessSubscribe {
            id: liv_r2,
            key: k("fleet/**"),
        },
    );
    assert_eq!(
        m.inbox[3].denied.last().unwrap().1.op,
        crate::acl::Op::TokenSub
    );
    let tok = m.id(1);
    m.local(
        1,
        Cmd::Token {
            id: tok,
            key: k("fleet/r1/alive"),
        },
    );
    m.local(1, Cmd::Undeclare { id: tok });
    assert_eq!(m.delivered(2, liv_ops).len(), 2);
    assert!(m.delivered(3, liv_r2).is_empty());
    // A token outside the robot's grant is refused.
    let bad = m.id(1);
    m.local(
        1,
        Cmd::Token {
            id: bad,
            key: k("fleet/r2/alive"),
        },
    );
    assert_eq!(m.inbox[1].denied.last().unwrap().0, vec![bad]);
    assert_eq!(m.delivered(2, liv_ops).len(), 2);

    // Queries: a denied query gets an access-denied error, not silence; replies outside the
    // querier's grant become errors too.
    m.queryable(
        1,
        "fleet/r1/**",
        false,
        &[("fleet/r1/speed", "1"), ("fleet/r1/camera/x", "img")],
    );
    let q = m.query(2, "fleet/r1/**", QueryTarget::All, Consolidation::None);
    let replies = &m.inbox[2].replies[&q];
    let oks: Vec<&str> = replies
        .iter()
        .filter_map(|r| r.result.as_ref().ok().map(|s| &*s.key))
        .collect();
    assert_eq!(oks, ["fleet/r1/speed"]);
    let errs: Vec<_> = replies
        .iter()
        .filter_map(|r| r.result.as_ref().err().and_then(|e| e.access_denied()))
        .collect();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        (errs[0].op, errs[0].rule.as_str()),
        (crate::acl::Op::Query, "no-cameras")
    );
    assert!(m.inbox[2].done.contains(&q));
    let q2 = m.query(3, "fleet/r1/**", QueryTarget::All, Consolidation::None);
    let e = m.inbox[3].replies[&q2][0]
        .result
        .as_ref()
        .err()
        .and_then(|e| e.access_denied())
        .unwrap();
    assert_eq!(
        (e.op, e.principal.as_str()),
        (crate::acl::Op::Query, "robot/r2")
    );
    assert!(m.inbox[3].done.contains(&q2));
}

#[test]
fn acl_reload_tightens_live_subscriptions() {
    let mut m = Mesh::new(&[Router, Client, Client]);
    m.nodes[0] = acl_node(1, Router, ROBOT_RULES);
    let p = |s: &str| Principal::new(s).unwrap();
    m.link_as(1, 0, p("robot/r1"), Principal::anonymous());
    m.link_as(2, 0, p("ops"), Principal::anonymous());
    let s = m.subscribe(2, "fleet/r1/**");
    m.publisher(1, "fleet/r1/speed");
    m.put(1, "fleet/r1/speed", "1");
    assert_eq!(m.delivered(2, s).len(), 1);
    // Ops loses its read grant: the live subscription is dropped and noticed, the next sample
    // does not arrive.
    let tighter = ROBOT_RULES.replace(
        "ops = [\"sub\", \"query\", \"token_sub\"]",
        "ops = [\"token_sub\"]",
    );
    assert_ne!(tighter, ROBOT_RULES);
    #[derive(serde::Deserialize)]
    struct W {
        acl: crate::acl::AclFile,
    }
    let w: W = toml::from_str(&tighter).unwrap();
    let acl = crate::acl::Acl::compile(&w.acl).unwrap();
    let now = m.now;
    m.nodes[0].set_intercepts(
        now,
        Box::new(crate::acl::enforce::AclFactory(Arc::new(acl))),
    );
    m.run();
    assert_eq!(m.inbox[2].denied.last().unwrap().0, vec![s]);
    m.put(1, "fleet/r1/speed", "2");
    assert_eq!(m.delivered(2, s).len(), 1);
}

#[test]
fn an_unproven_link_never_takes_over_a_proven_one() {
    // Node 2 claims node 1's id without its credential.
    let mut m = Mesh::new(&[Peer, Peer, Peer]);
    let id1 = m.nodes[1].id();
    m.nodes[2] = Node::new(NodeConfig::new(id1, Peer));
    let p = Principal::new("robot/r1").unwrap();
    m.link_as(0, 1, Principal::anonymous(), p.clone());
    m.now += Duration::from_secs(5);
    let (f02, _) = m.link_as(0, 2, Principal::anonymous(), Principal::anonymous());
    assert!(
        m.inbox[0]
            .closed
            .iter()
            .any(|(f, r, _)| *f == f02 && *r == CloseReason::Duplicate),
        "{:?}",
        m.inbox[0].closed
    );
    let faces = m.nodes[0].faces();
    assert_eq!(faces.len(), 1);
    assert_eq!(faces[0].principal, p);
    // A proven newcomer does replace an unproven link.
    let mut m = Mesh::new(&[Peer, Peer, Peer]);
    let id1 = m.nodes[1].id();
    m.nodes[2] = Node::new(NodeConfig::new(id1, Peer));
    m.link_as(0, 1, Principal::anonymous(), Principal::anonymous());
    m.link_as(0, 2, Principal::anonymous(), p.clone());
    let faces = m.nodes[0].faces();
    assert_eq!(faces.len(), 1, "{faces:?}");
    assert_eq!(faces[0].principal, p);
}

// ----- the backbone between sites ------------------------------------------------------------

impl Mesh {
    /// A mesh whose routers are in the given sites (one entry per node; clients' ignored).
    fn with_sites(roles: &[Mode], sites: &[&str]) -> Self {
        Self::build(roles, Caps::default(), sites)
    }

    /// Three sites in a triangle: routers 0 (A), 1 (B), 2 (C) with links A–B 20, B–C 20,
    /// A–C 60; client 3 at A, client 4 at C. Returns the mesh and the three links' faces.
    fn triangle() -> (Self, FaceId, FaceId, FaceId) {
        let mut m = Mesh::with_sites(
            &[Router, Router, Router, Client, Client],
            &["A", "B", "C", "", ""],
        );
        let (ab, _) = m.link(0, 1);
        let (bc, _) = m.link(1, 2);
        let (ac, _) = m.link(0, 2);
        m.cost(ab, 20);
        m.cost(bc, 20);
        m.cost(ac, 60);
        m.link(3, 0);
        m.link(4, 2);
        (m, ab, bc, ac)
    }

    fn cost(&mut self, face: FaceId, cost: u32) {
        let (a, b, fb) = self.links[&face];
        let now = self.now;
        self.nodes[a].set_link_cost(now, face, cost);
        self.nodes[b].set_link_cost(now, fb, cost);
        self.run();
    }

    fn route_next(&self, i: usize, j: usize) -> Option<NodeId> {
        let dst = self.nodes[j].id();
        self.nodes[i].lsdb()?.route(&dst).map(|h| h.next)
    }
}

/// Three sites in a triangle (A–B 20, B–C 20, A–C 60), a client at each router: a sample from
/// A's client reaches C's client once, along A–B–C; a cut of A–B re-routes through the direct
/// link with no token flap (C is still reachable) and no duplicate; the link's return moves
/// it back.
#[test]
fn backbone_triangle_takes_the_cheap_path_and_heals_without_token_flaps() {
    let (mut m, ab, _, ac) = Mesh::triangle();
    let (a, b, c) = (m.nodes[0].id(), m.nodes[1].id(), m.nodes[2].id());
    assert_eq!(m.route_next(0, 2), Some(b));
    assert_eq!(m.nodes[0].lsdb().unwrap().route(&c).unwrap().cost, 40);
    // Identical databases everywhere.
    let d = m.nodes[0].lsdb().unwrap().digest();
    assert!((0..3).all(|i| m.nodes[i].lsdb().unwrap().digest() == d));
    let sub = m.subscribe(4, "fleet/**");
    assert!(m.inbox[4].ready.contains(&sub));
    let lid = m.id(4);
    m.local(
        4,
        Cmd::LivelinessSubscribe {
            id: lid,
            key: k("alive/*"),
        },
    );
    let t = m.id(3);
    m.local(
        3,
        Cmd::Token {
            id: t,
            key: k("alive/a"),
        },
    );
    let p = m.publisher(3, "fleet/a/speed");
    assert!(m.inbox[3].ready.contains(&p));
    m.sample_sends.clear();
    m.put(3, "fleet/a/speed", "1");
    assert_eq!(m.delivered(4, sub), ["fleet/a/speed=1"]);
    // The sample crossed A→B and B→C, never A→C.
    let hops: Vec<(usize, usize)> = m
        .sample_sends
        .iter()
        .map(|(from, f, _)| (*from, m.links[f].1))
        .collect();
    assert_eq!(hops, [(3, 0), (0, 1), (1, 2), (2, 4)]);
    // Cut A–B: re-routed through A–C; the token at A stays alive for C's client.
    m.unlink(ab);
    assert_eq!(m.route_next(0, 2), Some(c));
    assert_eq!(m.route_next(0, 1), Some(c));
    m.put(3, "fleet/a/speed", "2");
    assert_eq!(m.delivered(4, sub), ["fleet/a/speed=1", "fleet/a/speed=2"]);
    let kinds: Vec<SampleKind> = m.inbox[4].delivered[&lid].iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [SampleKind::Put],
        "no token flap while A is reachable"
    );
    // Back on the short path once A–B returns.
    let (ab2, _) = m.link(0, 1);
    m.cost(ab2, 20);
    assert_eq!(m.route_next(0, 2), Some(b));
    m.put(3, "fleet/a/speed", "3");
    assert_eq!(m.delivered(4, sub).len(), 3);
    // A router that becomes unreachable takes its clients' tokens with it.
    m.unlink(ab2);
    m.unlink(ac);
    let kinds: Vec<SampleKind> = m.inbox[4].delivered[&lid].iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [SampleKind::Put, SampleKind::Delete]);
    let _ = a;
}

/// Interest on demand: 1,000 subscriptions at A that nobody elsewhere publishes to send
/// nothing across the backbone; one publisher at B on one key brings exactly that key's
/// subscription over, once.
#[test]
fn subscriptions_nobody_publishes_to_never_cross_the_backbone() {
    let mut m = Mesh::with_sites(&[Router, Router, Client, Client], &["A", "B", "", ""]);
    m.link(0, 1);
    m.link(2, 0);
    m.link(3, 1);
    for i in 0..1000 {
        m.subscribe(2, &format!("fleet/v{i}/cmd"));
    }
    let s42 = m.subscribe(2, "fleet/v42/speed");
    let backbone = |m: &Mesh| -> Vec<Decl> {
        m.decl_sends
            .iter()
            .filter(|(from, f, _)| *from == 0 && m.links.get(f).is_none_or(|l| l.1 == 1))
            .map(|(_, _, d)| d.clone())
            .collect()
    };
    // Declarations told to B's virtual face are wrapped in Routed (not recorded as decl
    // sends on a link); count what A declared to B's pair face instead.
    let pair_b = m.nodes[0].pair_face(&m.nodes[1].id()).unwrap();
    let told = |m: &Mesh| m.nodes[0].faces.get(&pair_b).unwrap().out.entries.len();
    assert_eq!(told(&m), 0, "no subscription crossed without an interest");
    assert!(backbone(&m).is_empty());
    // Nothing about them at all crossed, readiness barriers included (A→B: only its own
    // interest in B's queryables and B's answer).
    let crossed = |m: &Mesh| {
        m.routed_decls
            .iter()
            .filter(|(from, _, _)| *from == 0)
            .count()
    };
    assert!(
        crossed(&m) <= 2,
        "{:?}",
        &m.routed_decls[..crossed(&m).min(6)]
    );
    let p = m.publisher(3, "fleet/v42/speed");
    assert!(m.inbox[3].ready.contains(&p));
    assert_eq!(told(&m), 1, "only the matching subscription crossed");
    m.put(3, "fleet/v42/speed", "7");
    assert_eq!(m.delivered(2, s42), ["fleet/v42/speed=7"]);
}

/// Two routers in one site with peers, another site with a subscriber: only the designated
/// router relays the peers' samples (no duplicate); when it goes, the other takes over.
#[test]
fn one_designated_router_per_site_relays_peers_without_duplicates() {
    // 0, 1: routers of site A; 2: a peer of A; 3: router of B; 4: a client of B.
    let mut m = Mesh::with_sites(
        &[Router, Router, Peer, Router, Client],
        &["A", "A", "", "B", ""],
    );
    let (r01, _) = m.link(0, 1);
    let (p0, _) = m.link(2, 0);
    m.link(2, 1);
    let (a0b, _) = m.link(0, 3);
    m.link(1, 3);
    m.link(4, 3);
    m.advance(Duration::from_secs(2)); // the designated-router hold
    assert!(m.nodes[0].is_designated() ^ m.nodes[1].is_designated());
    assert!(!m.nodes[3].is_designated() || m.nodes[3].lsdb().is_some());
    let dr = if m.nodes[0].is_designated() { 0 } else { 1 };
    assert_eq!(dr, 0, "the lowest id without an incumbent");
    let sub = m.subscribe(4, "lan/**");
    let p = m.publisher(2, "lan/x");
    assert!(m.inbox[2].ready.contains(&p));
    m.put(2, "lan/x", "1");
    assert_eq!(m.delivered(4, sub), ["lan/x=1"], "exactly once");
    // The designated router goes: the standby takes over and relays.
    m.unlink(r01);
    m.unlink(p0);
    m.unlink(a0b);
    m.advance(Duration::from_secs(2));
    assert!(m.nodes[1].is_designated());
    m.put(2, "lan/x", "2");
    assert_eq!(m.delivered(4, sub), ["lan/x=1", "lan/x=2"]);
}

/// A router restarting next to its site's designated router does not take the role, however
/// late its backbone links come (its neighbours redial after a backoff): the hold starts at its
/// first link, not at boot, so it learns of the incumbent first (non-preemptive).
#[test]
fn a_restarted_router_with_late_links_does_not_take_the_role() {
    // 0 (the lowest id), 1: routers of site A; 2: router of B.
    let mut m = Mesh::with_sites(&[Router, Router, Router], &["A", "A", "B"]);
    let now = m.now;
    for (i, loc) in [
        "tcp/10.0.0.1:7447",
        "tcp/10.0.0.2:7447",
        "tcp/10.0.1.1:7447",
    ]
    .iter()
    .enumerate()
    {
        m.nodes[i].set_locators(now, Arc::from(*loc));
    }
    m.link(1, 2);
    m.advance(Duration::from_secs(2));
    assert!(m.nodes[1].is_designated(), "the only router of A linked");
    // 0 has been up (alone) for two holds when its links come.
    m.link(0, 2);
    m.link(0, 1);
    m.advance(Duration::from_secs(3));
    assert!(
        m.nodes[1].is_designated() && !m.nodes[0].is_designated(),
        "the incumbent kept the role (0 designated: {}, 1: {})",
        m.nodes[0].is_designated(),
        m.nodes[1].is_designated()
    );
}

/// The designated router stopped (SIGSTOP) and continued, seen as a node: every link of
/// router 0 (the DR, lowest id) goes, router 1 takes over; then 0's links come back, its
/// peer's first, while 0 still holds the role (an incumbent again: the lower id keeps it, 1
/// steps down). The peer's interest reached 0 when no other router was reachable: it must
/// still be passed on to the routers that become reachable, or 0 never learns of the remote
/// subscriber, never declares it to the peer, and the peer's samples reach no other site
/// (found by `tests/tests/backbone_failover.rs`: 1 run in ~7 lost every sample after the
/// SIGCONT).
#[test]
fn a_peer_interest_met_before_any_remote_router_is_passed_on_when_one_appears() {
    // 0, 1: routers of site A; 2: a peer of A; 3: router of B; 4: a client of B.
    let mut m = Mesh::with_sites(
        &[Router, Router, Peer, Router, Client],
        &["A", "A", "", "B", ""],
    );
    let (r10, _) = m.link(1, 0);
    let (p0, _) = m.link(2, 0);
    m.link(2, 1);
    let (b0, _) = m.link(3, 0);
    m.link(3, 1);
    m.link(4, 3);
    m.advance(Duration::from_secs(2)); // the designated-router hold
    assert!(m.nodes[0].is_designated() && !m.nodes[1].is_designated());
    let sub = m.subscribe(4, "lan/**");
    let p = m.publisher(2, "lan/x");
    assert!(m.inbox[2].ready.contains(&p));
    m.put(2, "lan/x", "1");
    // 0 stopped: its links expire everywhere; 1 takes over.
    m.unlink(r10);
    m.unlink(p0);
    m.unlink(b0);
    m.advance(Duration::from_secs(2));
    assert!(m.nodes[1].is_designated(), "the standby took over");
    assert!(m.nodes[0].is_designated(), "0, alone, still holds the role");
    m.put(2, "lan/x", "2");
    // 0 continued: the peer redials it first, then the routers.
    m.link(2, 0);
    m.link(3, 0);
    m.link(1, 0);
    m.advance(Duration::from_secs(2));
    assert!(
        m.nodes[0].is_designated() && !m.nodes[1].is_designated(),
        "two incumbents: the lower id keeps the role"
    );
    m.put(2, "lan/x", "3");
    assert_eq!(
        m.delivered(4, sub),
        ["lan/x=1", "lan/x=2", "lan/x=3"],
        "every sample once, after the designated router came back"
    );
}

/// A pair's resync that arrives after a newer one (routes moved while it was on its way, so it
/// took the longer path: seen in `tests/tests/backbone_failover.rs`, where the continued
/// designated router's empty resync, sent before it declared its peer's subscriber, arrived
/// after that declaration and withdrew it, and the other site's samples reached no peer) is
/// stale: it withdraws nothing. A newer one still does.
#[test]
fn a_stale_resync_arriving_after_newer_declarations_withdraws_nothing() {
    let (mut m, _, _, _) = Mesh::triangle();
    let a = m.nodes[0].id();
    let pa = m.nodes[2]
        .pair_face(&a)
        .expect("C holds a virtual face for A");
    let has = |m: &Mesh, key: &str| {
        m.nodes[2]
            .declarations()
            .iter()
            .any(|(kind, k, src, _)| *kind == "subscriber" && k.as_str() == key && *src == Some(pa))
    };
    let now = m.now;
    let deliver = |m: &mut Mesh, d: Decl| {
        m.nodes[2].handle_message(now, pa, Msg::Declare(d));
        m.run();
    };
    // Resync 5 (empty), then a declaration, then resync 3 (empty, sent before both).
    deliver(
        &mut m,
        Decl::Resync {
            ask: false,
            round: 5,
        },
    );
    deliver(&mut m, Decl::ResyncEnd { round: 5 });
    deliver(
        &mut m,
        Decl::Subscriber {
            id: 900,
            key: k("k/x"),
        },
    );
    deliver(
        &mut m,
        Decl::Resync {
            ask: false,
            round: 3,
        },
    );
    deliver(&mut m, Decl::ResyncEnd { round: 3 });
    assert!(
        has(&m, "k/x"),
        "the stale resync withdrew a newer declaration"
    );
    // An end that matches no resync begun changes nothing either.
    deliver(&mut m, Decl::ResyncEnd { round: 6 });
    assert!(has(&m, "k/x"));
    // A newer resync that does not repeat it withdraws it.
    deliver(
        &mut m,
        Decl::Resync {
            ask: false,
            round: 6,
        },
    );
    deliver(&mut m, Decl::ResyncEnd { round: 6 });
    assert!(!has(&m, "k/x"), "a newer resync heals as before");
}

/// A control message lost with a dying link (an interest here) leaves the pair short; the route
/// change that follows resyncs the pair and heals it: the publisher becomes ready and its
/// samples arrive, and nothing unchanged was withdrawn (no token flap).
#[test]
fn a_lost_control_message_is_healed_by_the_resync_after_the_route_moves() {
    let (mut m, ab, _, _) = Mesh::triangle();
    let sub = m.subscribe(4, "k/**");
    let lid = m.id(4);
    m.local(
        4,
        Cmd::LivelinessSubscribe {
            id: lid,
            key: k("alive/*"),
        },
    );
    let t = m.id(3);
    m.local(
        3,
        Cmd::Token {
            id: t,
            key: k("alive/a"),
        },
    );
    // A's interests for the publisher are lost on their way to B and C.
    m.lose_routed_decls = 2;
    let p = m.publisher(3, "k/x");
    assert!(
        !m.inbox[3].ready.contains(&p),
        "ready although the interest was lost"
    );
    // Its samples are not lost meanwhile: no settled interest covers them, so A sends them
    // to every remote router, which filters.
    m.put(3, "k/x", "0");
    assert_eq!(m.delivered(4, sub), ["k/x=0"]);
    // A–B dies: A's route to C moves to the direct link, and the pair resyncs.
    m.unlink(ab);
    assert!(m.nodes[0].backbone_counters.resyncs >= 1);
    assert!(m.inbox[3].ready.contains(&p), "not ready after the resync");
    m.put(3, "k/x", "1");
    assert_eq!(m.delivered(4, sub), ["k/x=0", "k/x=1"]);
    let kinds: Vec<SampleKind> = m.inbox[4].delivered[&lid].iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [SampleKind::Put],
        "the resync withdrew nothing unchanged"
    );
}

/// Measured costs (QUIC RTT) are damped: the first measure applies, jitter under 20 % or 2 ms
/// or a change within 10 s of the last does not, a configured cost always wins.
#[test]
fn measured_link_costs_are_damped_and_configured_ones_win() {
    let mut m = Mesh::with_sites(&[Router, Router], &["A", "B"]);
    let (ab, ba) = m.link(0, 1);
    let b = m.nodes[1].id();
    let cost = |m: &Mesh| m.nodes[0].lsdb().unwrap().adjacency_cost(&b);
    let now = m.now;
    m.nodes[0].measured_cost(now, ab, 40);
    assert_eq!(cost(&m), Some(40));
    m.nodes[0].measured_cost(now + Duration::from_secs(20), ab, 45); // 12 %: jitter
    assert_eq!(cost(&m), Some(40));
    m.nodes[0].measured_cost(now + Duration::from_secs(5), ab, 80); // too soon
    assert_eq!(cost(&m), Some(40));
    m.nodes[0].measured_cost(now + Duration::from_secs(20), ab, 80);
    assert_eq!(cost(&m), Some(80));
    m.run();
    // Configured wins from then on.
    m.cost(ab, 7);
    m.nodes[0].measured_cost(now + Duration::from_secs(60), ab, 300);
    assert_eq!(cost(&m), Some(7));
    let _ = ba;
}

/// A router tells its clients of alternates (its site's routers first, then the cheapest), and
/// a client turns them into its failover list.
#[test]
fn clients_learn_alternate_routers_same_site_first() {
    let mut m = Mesh::with_sites(&[Router, Router, Router, Client], &["A", "A", "B", ""]);
    let now = m.now;
    for (i, loc) in [
        "tcp/10.0.0.1:7447",
        "tcp/10.0.0.2:7447",
        "tcp/10.0.1.1:7447",
    ]
    .iter()
    .enumerate()
    {
        m.nodes[i].set_locators(now, Arc::from(*loc));
    }
    let (a02, _) = m.link(0, 2);
    m.cost(a02, 5);
    let (a01, _) = m.link(0, 1);
    m.cost(a01, 50);
    m.link(3, 0);
    // The site's other router first although the other site is cheaper: told last, so that
    // it ends first in the client's failover list (what is told last goes first).
    assert_eq!(
        m.inbox[3].alternates,
        ["tcp/10.0.1.1:7447", "tcp/10.0.0.2:7447"]
    );
}

/// Sixteen routers on a 3-regular graph (a ring with chords), a client at four of them with
/// four flows between them; a link is cut, then a router killed: every flow still delivers
/// exactly once (no duplicate, nothing missing after the change settled) and every router's
/// link-state database is the same.
#[test]
fn sixteen_routers_four_flows_cut_then_kill() {
    let n = 16;
    let mut roles = vec![Router; n];
    roles.extend([Client; 4]);
    let sites: Vec<String> = (0..n + 4).map(|i| format!("s{i}")).collect();
    let sites: Vec<&str> = sites.iter().map(String::as_str).collect();
    let mut m = Mesh::with_sites(&roles, &sites);
    let mut links = HashMap::new();
    for i in 0..n {
        let (f, _) = m.link(i, (i + 1) % n);
        m.cost(f, 5 + (i as u32 * 7) % 40);
        links.insert((i, (i + 1) % n), f);
    }
    for i in 0..n / 2 {
        let (f, _) = m.link(i, i + n / 2);
        m.cost(f, 10 + (i as u32 * 11) % 40);
    }
    // Clients at routers 1, 6, 9, 14.
    let at = [1, 6, 9, 14];
    for (c, r) in at.iter().enumerate() {
        m.link(n + c, *r);
    }
    let subs: Vec<LocalId> = (0..4)
        .map(|c| m.subscribe(n + c, &format!("flow/{c}")))
        .collect();
    let pubs: Vec<LocalId> = (0..4)
        .map(|c| m.publisher(n + (c + 1) % 4, &format!("flow/{c}")))
        .collect();
    for (c, p) in pubs.iter().enumerate() {
        assert!(
            m.inbox[n + (c + 1) % 4].ready.contains(p),
            "flow {c} not ready"
        );
    }
    let send = |m: &mut Mesh, round: &str| {
        for c in 0..4 {
            m.put(n + (c + 1) % 4, &format!("flow/{c}"), round);
        }
    };
    let digests_equal = |m: &Mesh| {
        let alive: Vec<u64> = (0..n)
            .filter(|i| m.nodes[*i].lsdb().is_some_and(|db| !db.routes().is_empty()))
            .map(|i| m.nodes[i].lsdb().unwrap().digest())
            .collect();
        alive.windows(2).all(|w| w[0] == w[1])
    };
    send(&mut m, "0");
    m.unlink(links[&(3, 4)]);
    send(&mut m, "1");
    // Kill router 11: all its links go.
    let dead: Vec<FaceId> = m
        .links
        .iter()
        .filter(|(_, (a, _, _))| *a == 11)
        .map(|(f, _)| *f)
        .collect();
    for f in dead {
        m.unlink(f);
    }
    // Its LSA stays (stale) until purged; the others agree on everything else.
    m.advance(linkstate::KEEP_UNREACHABLE + Duration::from_secs(1));
    assert!(digests_equal(&m), "link-state databases differ");
    send(&mut m, "2");
    for (c, s) in subs.iter().enumerate() {
        assert_eq!(
            m.delivered(n + c, *s),
            [
                format!("flow/{c}=0"),
                format!("flow/{c}=1"),
                format!("flow/{c}=2")
            ],
            "flow {c}"
        );
    }
}

/// Late joiners across sites: a subscriber at C declared while A publishes gets everything
/// published after its `ready`, 100 times over.
#[test]
fn late_joiners_across_sites_miss_nothing_after_ready() {
    let mut m = Mesh::with_sites(
        &[Router, Router, Router, Client, Client],
        &["A", "B", "C", "", ""],
    );
    m.link(0, 1);
    m.link(1, 2);
    m.link(3, 0);
    m.link(4, 2);
    let p = m.publisher(3, "late/x");
    assert!(m.inbox[3].ready.contains(&p));
    for trial in 0..100 {
        let s = m.subscribe(4, "late/**");
        assert!(m.inbox[4].ready.contains(&s), "trial {trial}: not ready");
        m.put(3, "late/x", &trial.to_string());
        assert_eq!(
            m.delivered(4, s),
            [format!("late/x={trial}")],
            "trial {trial}"
        );
        m.local(4, Cmd::Undeclare { id: s });
    }
}

/// A one-shot put (no publisher declared: no interest covers its key) from a client at A
/// reaches a subscriber at B: A sends it to every remote router and B filters.
#[test]
fn an_undeclared_put_crosses_the_backbone() {
    let mut m = Mesh::with_sites(&[Router, Router, Client, Client], &["A", "B", "", ""]);
    m.link(0, 1);
    m.link(2, 0);
    m.link(3, 1);
    let s = m.subscribe(3, "once/**");
    m.put(2, "once/x", "1");
    assert_eq!(m.delivered(3, s), ["once/x=1"]);
}

// ----- aggregated interests (issue 10: "aggregate when many match") ------------------------

impl Mesh {
    /// Two sites: routers 0 (A) and 1 (B), client 2 at A, client 3 at B.
    fn two_sites() -> Self {
        let mut caps = Caps::default();
        caps.declarations = 20_000;
        let mut m = Mesh::build(&[Router, Router, Client, Client], caps, &["A", "B", "", ""]);
        m.link(0, 1);
        m.link(2, 0);
        m.link(3, 1);
        m
    }

    /// Control messages router `from` sent router `to` across the backbone since index
    /// `since` of `routed_decls`.
    fn routed_since(&self, since: usize, from: usize, to: usize) -> Vec<Decl> {
        let dst = self.nodes[to].id();
        self.routed_decls[since..]
            .iter()
            .filter(|(i, d, _)| *i == from && *d == dst)
            .map(|(_, _, d)| d.clone())
            .collect()
    }
}

/// What A routed to B since `since`: at most 5 control messages, one subscriber declaration
/// among them (the aggregate).
fn one_aggregate_crossed(m: &Mesh, since: usize) -> Vec<Decl> {
    let a_to_b = m.routed_since(since, 0, 1);
    assert!(
        a_to_b.len() <= 5,
        "{} control messages: {a_to_b:?}",
        a_to_b.len()
    );
    assert_eq!(subscriber_decls(&a_to_b), 1, "{a_to_b:?}");
    a_to_b
}

fn subscriber_decls(v: &[Decl]) -> usize {
    v.iter()
        .filter(|d| matches!(d, Decl::Subscriber { .. }))
        .count()
}

fn unsubscriber_decls(v: &[Decl]) -> usize {
    v.iter()
        .filter(|d| matches!(d, Decl::Unsubscriber { .. }))
        .count()
}

/// 10,000 subscribers `fleet/car<i>/speed` at A, then a publisher on `fleet/**` at B: A tells
/// B one subscriber (`fleet/**`, the publisher's key), not 10,000, and a sample on each key
/// published at B reaches its subscriber at A exactly once. Liveliness tokens are never
/// aggregated: each crosses as itself.
#[test]
fn many_subscribers_matching_a_publisher_cross_as_one_aggregate() {
    const N: usize = 10_000;
    let mut m = Mesh::two_sites();
    let subs = m.fleet_subscribers(2, N);
    assert!(subs.iter().all(|s| m.inbox[2].ready.contains(s)));
    let since = m.routed_decls.len();
    let p = m.publisher(3, "fleet/**");
    assert!(
        m.inbox[3].ready.contains(&p),
        "ready: remote subscribers known"
    );
    let a_to_b = one_aggregate_crossed(&m, since);
    assert!(
        matches!(&a_to_b[..], [.., Decl::Subscriber { key, .. }, Decl::InterestFinal { .. }]
        if key.as_str() == "fleet/**")
    );
    let pair_b = m.nodes[0].pair_face(&m.nodes[1].id()).unwrap();
    assert_eq!(m.nodes[0].faces[&pair_b].out.entries.len(), 1);
    // Every key once, exactly once at its subscriber.
    for i in 0..N {
        m.put(3, &format!("fleet/car{i}/speed"), &i.to_string());
    }
    for (i, s) in subs.iter().enumerate() {
        assert_eq!(m.delivered(2, *s), [format!("fleet/car{i}/speed={i}")]);
    }
    // A key nobody subscribes to crosses (the price of the aggregate) and is delivered to
    // nobody.
    m.put(3, "fleet/car0/temp", "x");
    assert_eq!(m.delivered(2, subs[0]).len(), 1);
    // Tokens: a liveliness subscriber at B on `alive/**`, three tokens at A: three cross.
    let lid = m.id(3);
    m.local(
        3,
        Cmd::LivelinessSubscribe {
            id: lid,
            key: k("alive/**"),
        },
    );
    let since = m.routed_decls.len();
    for t in ["alive/a", "alive/b", "alive/c"] {
        let id = m.id(2);
        m.local(2, Cmd::Token { id, key: k(t) });
    }
    let tokens = m
        .routed_since(since, 0, 1)
        .iter()
        .filter(|d| matches!(d, Decl::Token { .. }))
        .count();
    assert_eq!(tokens, 3);
    assert_eq!(m.inbox[3].delivered[&lid].len(), 3);
}

/// A publisher at B first, then subscribers at A in bursts (declared without the mesh
/// settling between them), from a client and on the router itself: the first declares the
/// aggregate and passes one barrier on; the others join that barrier or find the aggregate
/// arrived, so what crosses is O(1), and every subscriber is ready and gets the next sample.
#[test]
fn subscribers_declared_in_a_burst_after_the_publisher_cost_one_declaration() {
    let mut m = Mesh::two_sites();
    m.ready_publisher(3, "fleet/**");
    let since = m.routed_decls.len();
    let now = m.now;
    let mut subs = Vec::new();
    for (node, n) in [(2usize, 1000), (0, 1000)] {
        for i in 0..n {
            let id = m.id(node);
            m.nodes[node].handle_local(
                now,
                Cmd::Subscribe {
                    id,
                    key: k(&format!("fleet/n{node}/car{i}/speed")),
                },
            );
            subs.push((node, id, i));
        }
        m.run();
    }
    one_aggregate_crossed(&m, since);
    for (node, id, _) in &subs {
        assert!(m.inbox[*node].ready.contains(id), "{node}/{id} not ready");
    }
    for (node, _, i) in &subs {
        m.put(3, &format!("fleet/n{node}/car{i}/speed"), "1");
    }
    for (node, id, i) in &subs {
        assert_eq!(
            m.delivered(*node, *id),
            [format!("fleet/n{node}/car{i}/speed=1")]
        );
    }
}

/// Subscribers going one by one: the aggregate stays until the last goes, then it is
/// undeclared once and B's samples stop crossing.
#[test]
fn the_aggregate_stays_until_the_last_matching_subscriber_goes() {
    const N: usize = 1000;
    let mut m = Mesh::two_sites();
    m.ready_publisher(3, "fleet/**");
    let subs = m.fleet_subscribers(2, N);
    let since = m.routed_decls.len();
    for (i, s) in subs.iter().enumerate() {
        m.local(2, Cmd::Undeclare { id: *s });
        let gone = unsubscriber_decls(&m.routed_since(since, 0, 1));
        if i + 1 < N {
            assert_eq!(gone, 0, "undeclared after {} of {N}", i + 1);
            // The remaining subscribers still get B's samples.
            let j = N - 1;
            m.put(3, &format!("fleet/car{j}/speed"), &i.to_string());
            assert_eq!(m.delivered(2, subs[j]).len(), i + 1);
        } else {
            assert_eq!(gone, 1);
        }
    }
    assert_eq!(subscriber_decls(&m.routed_since(since, 0, 1)), 0);
    let crossed = m.sample_sends.len();
    m.put(3, "fleet/car1/speed", "late");
    assert!(
        m.sample_sends[crossed..]
            .iter()
            .all(|(from, _, _)| *from == 3),
        "nothing crosses once nobody at A matches: {:?}",
        &m.sample_sends[crossed..]
    );
    // A new subscriber brings the aggregate back, once.
    let s = m.subscribe(2, "fleet/car7/speed");
    assert_eq!(subscriber_decls(&m.routed_since(since, 0, 1)), 1);
    m.put(3, "fleet/car7/speed", "back");
    assert_eq!(m.delivered(2, s), ["fleet/car7/speed=back"]);
}

/// The backbone link going down and coming up (B unreachable, then reachable again): the
/// aggregate is declared again once, and samples flow as before; a client publisher's link
/// to its router going down and up likewise gets one declaration again.
#[test]
fn a_face_down_and_up_declares_the_aggregate_again_once() {
    const N: usize = 1000;
    let mut m = Mesh::two_sites();
    let subs = m.fleet_subscribers(2, N);
    m.ready_publisher(3, "fleet/**");
    // The backbone link (`face_of` could name B's virtual face).
    let ab = m
        .links
        .iter()
        .find(|(_, (a, b, _))| (*a, *b) == (0, 1))
        .map(|(f, _)| *f)
        .unwrap();
    let since = m.routed_decls.len();
    m.unlink(ab);
    assert!(m.nodes[0].pair_face(&m.nodes[1].id()).is_none());
    m.link(0, 1);
    let a_to_b = m.routed_since(since, 0, 1);
    assert_eq!(subscriber_decls(&a_to_b), 1, "{a_to_b:?}");
    assert!(
        a_to_b.len() <= 8,
        "{} control messages: {a_to_b:?}",
        a_to_b.len()
    );
    for i in [0, 500, N - 1] {
        m.put(3, &format!("fleet/car{i}/speed"), "after");
        assert_eq!(
            m.delivered(2, subs[i]),
            [format!("fleet/car{i}/speed=after")]
        );
    }
    // The client publisher's own link: its node asks again on the new link, and B tells it
    // one subscriber again.
    let c3_to_b = m.nodes[3].face_of(m.nodes[1].id()).unwrap();
    m.unlink(c3_to_b);
    let before = m.decl_sends.len();
    let (_, b_to_c3) = m.link(3, 1);
    let told = m.decl_sends[before..]
        .iter()
        .filter(|(from, f, d)| *from == 1 && *f == b_to_c3 && matches!(d, Decl::Subscriber { .. }))
        .count();
    assert_eq!(told, 1);
    m.put(3, "fleet/car3/speed", "again");
    assert_eq!(
        m.delivered(2, subs[3]).last().map(String::as_str),
        Some("fleet/car3/speed=again")
    );
}

/// A face holding both the aggregate and a declaration of its own for the same subscriber
/// (B also asked, without aggregation, for `fleet/car1/**`): B's samples on `fleet/car1/speed`
/// still cross once and are delivered once; withdrawing the plain interest leaves only the
/// aggregate, with no moment where neither is held.
#[test]
fn an_aggregate_and_a_plain_declaration_for_one_face_deliver_once() {
    const N: usize = 100;
    let mut m = Mesh::two_sites();
    let subs = m.fleet_subscribers(2, N);
    m.ready_publisher(3, "fleet/**");
    let pair_b = m.nodes[0].pair_face(&m.nodes[1].id()).unwrap();
    let since = m.routed_decls.len();
    let now = m.now;
    m.nodes[0].handle_message(
        now,
        pair_b,
        Msg::Declare(Decl::Interest {
            id: 9_999,
            key: Some(k("fleet/car1/**")),
            flags: interest::SUBSCRIBERS | interest::CURRENT | interest::FUTURE,
        }),
    );
    m.run();
    let a_to_b = m.routed_since(since, 0, 1);
    assert_eq!(subscriber_decls(&a_to_b), 1, "{a_to_b:?}");
    assert!(
        matches!(&a_to_b[0], Decl::Subscriber { key, .. } if key.as_str() == "fleet/car1/speed")
    );
    assert_eq!(m.nodes[0].faces[&pair_b].out.entries.len(), 2);
    let crossed = m.sample_sends.len();
    m.put(3, "fleet/car1/speed", "1");
    assert_eq!(m.delivered(2, subs[1]), ["fleet/car1/speed=1"]);
    let b_to_a = m.sample_sends[crossed..]
        .iter()
        .filter(|(from, _, _)| *from == 1)
        .count();
    assert_eq!(b_to_a, 1, "{:?}", &m.sample_sends[crossed..]);
    // The plain interest goes: its declaration is undeclared, the aggregate stays.
    let since = m.routed_decls.len();
    m.nodes[0].handle_message(
        now,
        pair_b,
        Msg::Declare(Decl::UndeclareInterest { id: 9_999 }),
    );
    m.run();
    let a_to_b = m.routed_since(since, 0, 1);
    assert_eq!(unsubscriber_decls(&a_to_b), 1, "{a_to_b:?}");
    assert_eq!(subscriber_decls(&a_to_b), 0, "{a_to_b:?}");
    m.put(3, "fleet/car1/speed", "2");
    assert_eq!(
        m.delivered(2, subs[1]),
        ["fleet/car1/speed=1", "fleet/car1/speed=2"]
    );
}

/// The aggregate lost on its way (a dying link) is healed by the resync after the route
/// moves, as one declaration: C's 1,000 subscribers are one subscriber at A again, and A's
/// samples reach each of them once.
#[test]
fn a_lost_aggregate_is_healed_by_the_resync_as_one_declaration() {
    const N: usize = 1000;
    let (mut m, ab, _, _) = Mesh::triangle();
    m.ready_publisher(3, "fleet/**");
    // The first subscriber's aggregate is lost between C and A.
    m.lose_routed_decls = 1;
    let subs = m.fleet_subscribers(4, N);
    let pair_c = m.nodes[0].pair_face(&m.nodes[2].id()).unwrap();
    assert_eq!(
        m.nodes[0].faces[&pair_c].subs.len(),
        0,
        "the aggregate was lost"
    );
    // A–B dies: A's route to C moves to the direct link, and the pair resyncs.
    let since = m.routed_decls.len();
    m.unlink(ab);
    assert!(m.nodes[2].backbone_counters.resyncs >= 1);
    assert_eq!(m.nodes[0].faces[&pair_c].subs.len(), 1);
    // One aggregate per resync round (both ends saw the route move, so two rounds).
    let c_to_a = m.routed_since(since, 2, 0);
    let rounds = c_to_a
        .iter()
        .filter(|d| matches!(d, Decl::Resync { .. }))
        .count();
    assert!((1..=2).contains(&rounds), "{c_to_a:?}");
    assert_eq!(subscriber_decls(&c_to_a), rounds, "{c_to_a:?}");
    assert!(
        c_to_a
            .iter()
            .all(|d| !matches!(d, Decl::Subscriber { key, .. } if key.as_str() != "fleet/**"))
    );
    assert_eq!(unsubscriber_decls(&c_to_a), 0, "{c_to_a:?}");
    for (i, s) in subs.iter().enumerate() {
        m.put(3, &format!("fleet/car{i}/speed"), "1");
        assert_eq!(m.delivered(4, *s), [format!("fleet/car{i}/speed=1")]);
    }
}

/// The aggregate and the barrier that many subscribers joined, both lost with a dying path:
/// none of them is ready; the resync after the route moves declares the aggregate again and
/// asks the barrier again, and then every one is ready and gets C's samples once.
#[test]
fn a_lost_barrier_that_many_joined_is_asked_again_by_the_resync() {
    const N: usize = 100;
    let (mut m, ab, _, _) = Mesh::triangle();
    let p = m.publisher(4, "fleet/**");
    assert!(m.inbox[4].ready.contains(&p));
    m.lose_routed_decls = 2;
    let now = m.now;
    let subs: Vec<LocalId> = (0..N)
        .map(|i| {
            let id = m.id(3);
            m.nodes[3].handle_local(
                now,
                Cmd::Subscribe {
                    id,
                    key: k(&format!("fleet/car{i}/speed")),
                },
            );
            id
        })
        .collect();
    m.run();
    assert_eq!(m.lose_routed_decls, 0);
    assert!(
        subs.iter().all(|s| !m.inbox[3].ready.contains(s)),
        "ready although the aggregate and its barrier were lost"
    );
    m.unlink(ab);
    assert!(m.nodes[0].backbone_counters.resyncs >= 1);
    for s in &subs {
        assert!(
            m.inbox[3].ready.contains(s),
            "{s} not ready after the resync"
        );
    }
    for (i, s) in subs.iter().enumerate() {
        m.put(4, &format!("fleet/car{i}/speed"), "1");
        assert_eq!(m.delivered(3, *s), [format!("fleet/car{i}/speed=1")]);
    }
}
