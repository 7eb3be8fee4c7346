//! The admin space: every node answers queries under `@/<node-id>/**` with what it knows of
//! itself, as JSON (and its metrics as OpenMetrics text).
//!
//! | key | value |
//! | --- | --- |
//! | `@/<id>/node` | id, mode, version, uptime, endpoints, node-wide counters; `prefixes`: the `[metrics] prefixes` counters (samples, bytes, dropped copies; empty unless configured) |
//! | `@/<id>/links/<peer-id>` | one per link: peer, kind, principal, transport, bytes and messages each way, drops, denials; `rtt_us` (QUIC, TCP and TLS links), `framing` (serial links) |
//! | `@/<id>/subscribers` | every subscriber in the tables: key, origin (`local` or the declaring neighbour) |
//! | `@/<id>/queryables` | the same for queryables (with `complete`) |
//! | `@/<id>/tokens` | the same for liveliness tokens |
//! | `@/<id>/routes` | where a sample published here goes, per subscriber key expression: neighbours and local subscribers; the number of cached routes |
//! | `@/<id>/storages/<n>` | one per storage of this node (`n` in start order): key expression, backend, keys, samples, bytes, oldest sample, counters (stored, queries, replied, errors; ingest queue: queued, waited, dropped; acks, ack_timeouts, duplicates), and `consumers`: each durable consumer or work-queue group with delivered, redelivered, acked, dead_lettered, dropped, pending, acked_ahead and its position |
//! | `@/<id>/metrics` | the node's metrics registry, OpenMetrics text (`crate::metrics`) |
//!
//! `@` is a verbatim chunk (`hypha_core::keyexpr`): `**` and `*` never match it, so wildcard
//! subscribers and queries (`hypha sub '**'`) never see the admin space; `@/*/links/**` asks
//! every node for its links. The queryable is an ordinary local queryable over the runtime:
//! everything it answers is read from snapshots (`net::Node::faces`, `Node::declarations`, the
//! links' session counters), never from logs. Access from a neighbour is the ACL operation
//! `admin` (`acl::enforce`).

pub(crate) mod json;

use crate::api::query::{Query, Queryable};
use crate::api::{Callback, DeclareError};
use crate::runtime::Runtime;
use crate::sample::Sample;
use bytes::Bytes;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::{KeyExpr, OwnedKeyExpr};
use hypha_core::wire::{Mode, SampleKind};
use json::Obj;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

/// The encoding of JSON admin values.
pub(crate) const JSON: &str = "application/json";

/// A node's mode as the admin space spells it.
pub(crate) fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Peer => "peer",
        Mode::Client => "client",
        Mode::Router => "router",
    }
}

/// One link, as the admin space and the metrics see it.
#[derive(Clone, Debug)]
pub(crate) struct LinkView {
    pub(crate) peer: NodeId,
    pub(crate) kind: &'static str,
    pub(crate) mode: Mode,
    pub(crate) principal: String,
    pub(crate) transport: String,
    pub(crate) local: String,
    pub(crate) remote: String,
    pub(crate) stats: hypha_core::session::Stats,
    /// Messages queued to the neighbour.
    pub(crate) sent: u64,
    /// Samples received from it.
    pub(crate) received: u64,
    /// Messages dropped for it (congestion).
    pub(crate) dropped: u64,
    pub(crate) queued_bytes: usize,
    pub(crate) denied_in: u64,
    pub(crate) denied_out: u64,
    pub(crate) replies_refused: u64,
    pub(crate) declarations: usize,
    pub(crate) interests: usize,
    pub(crate) declared_to: usize,
    /// The transport's RTT estimate (QUIC, TCP, TLS links; `hypha_transports::LinkProbe::rtt`).
    pub(crate) rtt: Option<std::time::Duration>,
    /// A serial link's framing counters (`LinkProbe::framing`).
    pub(crate) framing: Option<hypha_core::framing::FramingStats>,
}

impl LinkView {
    /// Serial frames dropped on this link (CRC, COBS, overflow); 0 for other links.
    pub(crate) fn framing_errors(&self) -> u64 {
        self.framing.map_or(0, |f| {
            u64::from(f.crc_errors) + u64::from(f.cobs_errors) + u64::from(f.overflows)
        })
    }

    pub(crate) fn to_json(&self, me: NodeId) -> String {
        let s = &self.stats;
        let drops = Obj::new()
            .int("congestion", self.dropped)
            .int("acl_in", self.denied_in)
            .int("acl_out", self.denied_out)
            .int("lost", s.rx_lost)
            .int("duplicates", s.rx_duplicates)
            .int("replies_refused", self.replies_refused)
            .finish();
        let mut o = Obj::new()
            .str("node", &me.to_string())
            .str("peer", &self.peer.to_string())
            .str("kind", self.kind)
            .str("mode", mode_name(self.mode))
            .str("principal", &self.principal)
            .str("transport", &self.transport)
            .str("local", &self.local)
            .str("remote", &self.remote)
            .int("tx_bytes", s.tx_bytes)
            .int("rx_bytes", s.rx_bytes)
            .int("tx_messages", s.tx_messages)
            .int("rx_messages", s.rx_messages)
            .int("tx_data", s.tx_data)
            .int("rx_data", s.rx_data)
            .int("tx_control", s.tx_messages.saturating_sub(s.tx_data))
            .int("rx_control", s.rx_messages.saturating_sub(s.rx_data))
            .int("tx_batches", s.tx_batches)
            .int("rx_batches", s.rx_batches)
            .int("acks_sent", s.acks_sent)
            .int("acks_received", s.acks_received)
            .int("sent", self.sent)
            .int("received", self.received)
            .int("dropped", self.dropped)
            .int("denied_in", self.denied_in)
            .int("denied_out", self.denied_out)
            .raw("drops", &drops)
            .int("queued_bytes", self.queued_bytes as u64)
            .int("declarations", self.declarations as u64)
            .int("interests", self.interests as u64)
            .int("declared_to", self.declared_to as u64);
        // Only where the transport knows them: no field rather than a made-up zero.
        if let Some(rtt) = self.rtt {
            o = o.int("rtt_us", u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
        }
        if let Some(f) = self.framing {
            let framing = Obj::new()
                .int("frames", u64::from(f.frames))
                .int("crc_errors", u64::from(f.crc_errors))
                .int("cobs_errors", u64::from(f.cobs_errors))
                .int("overflows", u64::from(f.overflows))
                .finish();
            o = o.raw("framing", &framing);
        }
        o.finish()
    }
}

/// One subscriber, queryable or token in the node's tables.
#[derive(Clone, Debug)]
pub(crate) struct DeclView {
    pub(crate) kind: &'static str,
    pub(crate) key: OwnedKeyExpr,
    /// The declaring neighbour, `None` for this node.
    pub(crate) origin: Option<NodeId>,
    pub(crate) complete: bool,
}

/// Where a sample published here on keys of `key` goes.
#[derive(Clone, Debug)]
pub(crate) struct RouteView {
    pub(crate) key: OwnedKeyExpr,
    pub(crate) peers: Vec<NodeId>,
    pub(crate) locals: usize,
}

/// One storage of this node.
#[derive(Clone, Debug)]
pub(crate) struct StorageView {
    pub(crate) n: u64,
    pub(crate) key: OwnedKeyExpr,
    pub(crate) backend: String,
    pub(crate) keys: u64,
    pub(crate) samples: u64,
    pub(crate) bytes: u64,
    /// NTP64 time of the oldest sample, 0 for none.
    pub(crate) oldest: u64,
    pub(crate) stored: u64,
    pub(crate) queries: u64,
    pub(crate) replied: u64,
    pub(crate) errors: u64,
    /// Ingest queue (issue 17): samples waiting now, samples that waited for room, dropped.
    pub(crate) queued: u64,
    pub(crate) waited: u64,
    pub(crate) dropped: u64,
    /// Acknowledged writes: acks given, acks timed out, duplicates not stored twice.
    pub(crate) acks: u64,
    pub(crate) ack_timeouts: u64,
    pub(crate) duplicates: u64,
    /// Its durable consumers and work-queue groups.
    pub(crate) consumers: Vec<crate::storage::consumer::ConsumerInfo>,
}

impl StorageView {
    fn to_json(&self, me: NodeId) -> String {
        let mut o = Obj::new()
            .str("node", &me.to_string())
            .int("n", self.n)
            .str("key", self.key.as_str())
            .str("backend", &self.backend)
            .int("keys", self.keys)
            .int("samples", self.samples)
            .int("bytes", self.bytes)
            .int("stored", self.stored)
            .int("queries", self.queries)
            .int("replied", self.replied)
            .int("errors", self.errors)
            .int("queued", self.queued)
            .int("waited", self.waited)
            .int("dropped", self.dropped)
            .int("acks", self.acks)
            .int("ack_timeouts", self.ack_timeouts)
            .int("duplicates", self.duplicates)
            .raw(
                "consumers",
                &json::array(self.consumers.iter().map(|c| {
                    let o = Obj::new()
                        .str("name", &c.name)
                        .str("key", &c.key)
                        .int("delivered", c.counts.delivered)
                        .int("redelivered", c.counts.redelivered)
                        .int("acked", c.counts.acked)
                        .int("dead_lettered", c.counts.dead_lettered)
                        .int("dropped", c.counts.dropped)
                        .int("pending", c.pending as u64)
                        .int("acked_ahead", c.acked_ahead as u64);
                    match c.position {
                        None => o.raw("position", "null"),
                        Some(t) => o.str("position", &format!("{:016x}", t.time.0)),
                    }
                    .finish()
                })),
            );
        o = if self.oldest == 0 {
            o.raw("oldest", "null").raw("oldest_unix_us", "null")
        } else {
            let t = hypha_core::hlc::Ntp64(self.oldest);
            o.str("oldest", &format!("{:016x}", self.oldest))
                .int("oldest_unix_us", t.as_unix_micros())
        };
        o.finish()
    }
}

/// What the admin space knows beyond the node and runtime: the node's storages (registered
/// by `storage::start` through the session).
#[derive(Debug, Default)]
pub(crate) struct Extra {
    storages: Mutex<Vec<StorageEntry>>,
    next_storage: std::sync::atomic::AtomicU64,
    /// Storage timings, registered in the node's metrics (`crate::metrics`).
    pub(crate) timers: crate::metrics::StorageTimerFamilies,
}

#[derive(Debug)]
struct StorageEntry {
    n: u64,
    key: OwnedKeyExpr,
    backend: String,
    stats: Weak<crate::storage::StorageStats>,
    consumers: Weak<crate::storage::consumer::Consumers>,
}

impl Extra {
    fn storages(&self) -> Vec<StorageView> {
        let mut list = self.storages.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|e| e.stats.strong_count() > 0);
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        list.iter()
            .filter_map(|e| {
                let st = e.stats.upgrade()?;
                Some(StorageView {
                    n: e.n,
                    key: e.key.clone(),
                    backend: e.backend.clone(),
                    keys: l(&st.keys),
                    samples: l(&st.samples),
                    bytes: l(&st.bytes),
                    oldest: l(&st.oldest),
                    stored: l(&st.stored),
                    queries: l(&st.queries),
                    replied: l(&st.replied),
                    errors: l(&st.errors),
                    queued: l(&st.queued),
                    waited: l(&st.waited),
                    dropped: l(&st.dropped),
                    acks: l(&st.acks),
                    ack_timeouts: l(&st.ack_timeouts),
                    duplicates: l(&st.duplicates),
                    consumers: e.consumers.upgrade().map(|c| c.list()).unwrap_or_default(),
                })
            })
            .collect()
    }
}

/// Everything the admin space answers, read at once.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) id: NodeId,
    pub(crate) mode: Mode,
    /// The router's site (`[router] site`; empty: none, and for peers and clients).
    pub(crate) site: String,
    pub(crate) uptime_s: f64,
    pub(crate) endpoints: Vec<String>,
    pub(crate) links: Vec<LinkView>,
    pub(crate) decls: Vec<DeclView>,
    pub(crate) counters: Vec<(&'static str, u64)>,
    pub(crate) routes: Vec<RouteView>,
    pub(crate) cached_routes: usize,
    pub(crate) storages: Vec<StorageView>,
    /// `@/<id>/backbone` (routers only), rendered under the node's lock.
    pub(crate) backbone: Option<String>,
    /// `[metrics] prefixes`: (key expression, samples, payload bytes, dropped copies).
    pub(crate) prefixes: Vec<(String, u64, u64, u64)>,
}

/// The backbone of a router as JSON: its site and role, the link-state database, its routes
/// and counters.
fn backbone_json(n: &crate::net::Node) -> Option<String> {
    let db = n.lsdb()?;
    let id = |x: &NodeId| x.to_string();
    let lsas = json::array(db.all().into_iter().map(|l| {
        Obj::new()
            .str("router", &id(&l.router))
            .str("site", &l.site)
            .int("epoch", l.epoch)
            .int("seq", l.seq)
            .bool("designated", l.flags & crate::net::linkstate::FLAG_DR != 0)
            .raw(
                "links",
                &json::array(l.links.iter().map(|(nb, c)| {
                    Obj::new()
                        .str("router", &id(nb))
                        .int("cost", u64::from(*c))
                        .finish()
                })),
            )
            .finish()
    }));
    let routes = json::array(db.routes().iter().map(|(dst, h)| {
        Obj::new()
            .str("router", &id(dst))
            .str("next", &id(&h.next))
            .int("cost", h.cost)
            .int("hops", u64::from(h.hops))
            .finish()
    }));
    let c = n.backbone_counters;
    let lc = db.counters;
    Some(
        Obj::new()
            .str("site", db.site())
            .bool("designated", n.is_designated())
            .str("digest", &format!("{:016x}", db.digest()))
            .raw("lsdb", &lsas)
            .raw("routes", &routes)
            .raw(
                "counters",
                &Obj::new()
                    .int("transit", c.transit)
                    .int("hop_drop", c.hop_drop)
                    .int("unroutable", c.unroutable)
                    .int("resyncs", c.resyncs)
                    .int("lsa_in", lc.lsa_in)
                    .int("lsa_newer", lc.lsa_newer)
                    .int("lsa_stale", lc.lsa_stale)
                    .int("spf_runs", lc.spf_runs)
                    .finish(),
            )
            .finish(),
    )
}

impl Snapshot {
    /// Reads the node, its links and counters, and `extra`'s storages.
    pub(crate) fn read(rt: &Runtime, extra: &Extra) -> Snapshot {
        let (faces, decls, (routes, cached_routes), backbone) = rt.with_node(|n, _| {
            (
                n.faces(),
                n.declarations(),
                n.route_table(),
                backbone_json(n),
            )
        });
        let mut links = Vec::with_capacity(faces.len());
        let mut node_of = std::collections::HashMap::new();
        for s in &faces {
            node_of.insert(s.id, s.node);
            let Some(f) = rt.face(s.id) else { continue };
            let Some(p) = f.peer() else { continue };
            links.push(LinkView {
                peer: s.node,
                kind: s.kind.as_str(),
                mode: p.mode,
                principal: s.principal.name().to_string(),
                transport: f.info.protocol.as_str().to_string(),
                local: f.info.local.to_string(),
                remote: f.info.remote.to_string(),
                stats: f.stats(),
                sent: f.sent.load(Ordering::Relaxed),
                received: f.received.load(Ordering::Relaxed),
                dropped: f.dropped.load(Ordering::Relaxed),
                queued_bytes: f.queued_bytes(),
                denied_in: s.counters.denied_in,
                denied_out: s.counters.denied_out,
                replies_refused: s.counters.replies_refused,
                declarations: s.subscribers + s.queryables + s.tokens,
                interests: s.interests,
                declared_to: s.declared_to,
                rtt: f.info.probe.rtt(),
                framing: f.info.probe.framing(),
            });
        }
        links.sort_by_key(|l| l.peer);
        let decls = decls
            .into_iter()
            .map(|(kind, key, face, complete)| DeclView {
                kind,
                key,
                origin: face.and_then(|f| node_of.get(&f).copied()),
                complete,
            })
            .collect();
        let routes = routes
            .into_iter()
            .map(|(key, peers, locals)| RouteView { key, peers, locals })
            .collect();
        let c = rt.counters();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters = vec![
            ("published", l(&c.published)),
            ("delivered_local", l(&c.delivered_local)),
            ("received", l(&c.received_remote)),
            ("dropped", l(&c.dropped)),
            ("dropped_link_closed", l(&c.dropped_link_closed)),
            ("dropped_unconfirmed", l(&c.dropped_unconfirmed)),
            ("undeliverable", l(&c.undeliverable)),
            ("forwarded", l(&c.forwarded)),
            ("denied", l(&c.denied)),
            ("refused_handshaking", l(&c.refused_handshaking)),
            ("reassembly_evicted", l(&c.reassembly_evicted)),
            ("refused_identity", l(&c.refused_identity)),
            ("refused_duplicate", l(&c.refused_duplicate)),
            ("denials_received", l(&c.denials_received)),
        ];
        Snapshot {
            id: rt.id(),
            mode: rt.config().mode,
            site: rt.config().router.site.clone(),
            uptime_s: rt.now().as_micros() as f64 / 1e6,
            endpoints: rt.listening().iter().map(|e| e.to_string()).collect(),
            links,
            decls,
            counters,
            routes,
            cached_routes,
            storages: extra.storages(),
            backbone,
            prefixes: rt
                .prefix_counters()
                .iter()
                .map(|p| (p.expr.clone(), l(&p.samples), l(&p.bytes), l(&p.dropped)))
                .collect(),
        }
    }

    /// `@/<id>/routes`.
    pub(crate) fn routes_json(&self) -> String {
        let routes = json::array(self.routes.iter().map(|r| {
            Obj::new()
                .str("key", r.key.as_str())
                .raw(
                    "peers",
                    &json::strings(r.peers.iter().map(|p| p.to_string())),
                )
                .int("local_subscribers", r.locals as u64)
                .finish()
        }));
        Obj::new()
            .str("node", &self.id.to_string())
            .int("cached", self.cached_routes as u64)
            .raw("routes", &routes)
            .finish()
    }

    /// `@/<id>/node`.
    pub(crate) fn node_json(&self) -> String {
        let mut counters = Obj::new();
        for (k, v) in &self.counters {
            counters = counters.int(k, *v);
        }
        Obj::new()
            .str("id", &self.id.to_string())
            .str("mode", mode_name(self.mode))
            .str("site", &self.site)
            .str("version", env!("CARGO_PKG_VERSION"))
            .num("uptime_s", self.uptime_s)
            .raw("endpoints", &json::strings(&self.endpoints))
            .int("links", self.links.len() as u64)
            .raw("counters", &counters.finish())
            .raw(
                "prefixes",
                &json::array(self.prefixes.iter().map(|(p, samples, bytes, dropped)| {
                    Obj::new()
                        .str("prefix", p)
                        .int("samples", *samples)
                        .int("bytes", *bytes)
                        .int("dropped", *dropped)
                        .finish()
                })),
            )
            .finish()
    }

    /// `@/<id>/subscribers`, `queryables`, `tokens`.
    pub(crate) fn decls_json(&self, kind: &str) -> String {
        json::array(self.decls.iter().filter(|d| d.kind == kind).map(|d| {
            let o = Obj::new().str("key", d.key.as_str()).str(
                "origin",
                &d.origin
                    .map_or_else(|| "local".to_string(), |n| n.to_string()),
            );
            if kind == "queryable" {
                o.bool("complete", d.complete).finish()
            } else {
                o.finish()
            }
        }))
    }

    /// Every admin entry of this node: (key, value, encoding).
    pub(crate) fn entries(
        &self,
        metrics: &dyn Fn() -> String,
    ) -> Vec<(String, String, &'static str)> {
        let base = format!("@/{}", self.id);
        let mut v = vec![(format!("{base}/node"), self.node_json(), JSON)];
        for l in &self.links {
            v.push((format!("{base}/links/{}", l.peer), l.to_json(self.id), JSON));
        }
        for (name, kind) in [
            ("subscribers", "subscriber"),
            ("queryables", "queryable"),
            ("tokens", "token"),
        ] {
            v.push((format!("{base}/{name}"), self.decls_json(kind), JSON));
        }
        v.push((format!("{base}/routes"), self.routes_json(), JSON));
        if let Some(b) = &self.backbone {
            v.push((format!("{base}/backbone"), b.clone(), JSON));
        }
        for st in &self.storages {
            v.push((
                format!("{base}/storages/{}", st.n),
                st.to_json(self.id),
                JSON,
            ));
        }
        v.push((
            format!("{base}/metrics"),
            metrics(),
            crate::metrics::CONTENT_TYPE,
        ));
        v
    }
}

/// The key expression every node answers: `@/<id>/**`.
pub(crate) fn space_of(id: NodeId) -> String {
    format!("@/{id}/**")
}

/// The admin queryable of one node; dropping it undeclares it.
pub(crate) struct Admin {
    _queryable: Queryable<Callback>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    extra: Arc<Extra>,
}

impl Admin {
    /// Lists a storage (until its stats are dropped with it).
    pub(crate) fn register_storage(
        &self,
        key: OwnedKeyExpr,
        backend: String,
        stats: &Arc<crate::storage::StorageStats>,
        consumers: &Arc<crate::storage::consumer::Consumers>,
    ) -> crate::metrics::StorageTimers {
        let timers = self.extra.timers.for_storage(key.as_str());
        let n = self.extra.next_storage.fetch_add(1, Ordering::Relaxed);
        let mut list = self
            .extra
            .storages
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        list.push(StorageEntry {
            n,
            key,
            backend,
            stats: Arc::downgrade(stats),
            consumers: Arc::downgrade(consumers),
        });
        timers
    }
}

/// Declares the admin queryable of `rt`'s node.
pub(crate) fn declare(rt: &Arc<Runtime>) -> Result<Admin, DeclareError> {
    let extra = Arc::new(Extra::default());
    let metrics = Arc::new(crate::metrics::Metrics::new(
        Arc::downgrade(rt),
        extra.clone(),
    ));
    let weak: Weak<Runtime> = Arc::downgrade(rt);
    let m = Arc::downgrade(&metrics);
    let x = extra.clone();
    let key = OwnedKeyExpr::autocanonize(space_of(rt.id()));
    // Not `complete`: a `BestMatching` query (the default) would then stop at the querier's
    // own admin space; as it is, `@/*/…` reaches every node.
    let q = crate::api::query::QueryableBuilder::new(rt.clone(), key).callback(move |query| {
        if let (Some(rt), Some(m)) = (weak.upgrade(), m.upgrade()) {
            answer(&rt, &m, &x, &query);
        }
    })?;
    Ok(Admin {
        _queryable: q,
        metrics,
        extra,
    })
}

/// Answers one admin query: every entry whose key the query intersects.
fn answer(rt: &Runtime, metrics: &crate::metrics::Metrics, extra: &Extra, query: &Query) {
    let snap = Snapshot::read(rt, extra);
    let qk = query.key_expr();
    let render = || metrics.render();
    let entries = snap.entries(&render);
    let ts = rt.new_timestamp();
    let matching: Vec<Sample> = entries
        .into_iter()
        .filter(|(k, _, _)| KeyExpr::new(k).is_ok_and(|k| k.intersects(&qk)))
        .map(|(k, v, enc)| Sample {
            key: Arc::from(k.as_str()),
            payload: Bytes::from(v),
            kind: SampleKind::Put,
            timestamp: Some(ts),
            encoding: Some(Arc::from(enc)),
            attachment: None,
            source: None,
        })
        .collect();
    let query = query.clone();
    rt.spawn(async move {
        for s in matching {
            if query.reply_sample(s).await.is_err() {
                break;
            }
        }
    });
}
