//! Zero-configuration discovery over mDNS / DNS-SD (RFC 6762, RFC 6763), with `mdns-sd`.
//!
//! # How it works
//!
//! [`Discovery::start`] starts an mDNS daemon (a thread of `mdns-sd`) that both **announces** this
//! node and **browses** for others, on every multicast-capable, up, non-loopback interface of the
//! network namespace it runs in.
//!
//! The announcement is a DNS-SD service of type [`SERVICE`] (`_hypha._udp.local.`):
//!
//! | record | value                                                                   |
//! |--------|-------------------------------------------------------------------------|
//! | PTR    | `_hypha._udp.local.` → `<node id hex>._hypha._udp.local.`              |
//! | SRV    | host `<node id hex>.local.`, port of the first announced endpoint        |
//! | A/AAAA | every address of the interface the answer goes out on (kept up to date) |
//! | TXT    | `id=<32 hex>`, `mode=peer\|client\|router`, `eps=<endpoint list>`       |
//!
//! `eps` lists the endpoints we listen on, comma separated. An endpoint bound to an unspecified
//! address (`quic/0.0.0.0:7447`, `tcp/[::]:7448`) is written without its host (`quic/:7447`):
//! the receiver pairs it with **every** address the announcement carried, which is how a
//! multi-homed host is reachable on each of its networks (an answer sent on an interface carries
//! that interface's addresses). Endpoints with a concrete host are sent as they are. Unix and
//! in-memory endpoints, and port 0, are never announced.
//!
//! On the browsing side every resolved announcement of another node is validated (node id,
//! mode, each endpoint parsed, lengths capped; anything malformed is dropped with a `debug!` log)
//! and turned into [`DiscoveryEvent::Found`] with concrete endpoints, IPv4 first. Found is
//! emitted again only when the node's mode or endpoint set changes. A goodbye (or the expiry of
//! its records) yields [`DiscoveryEvent::Lost`]. Our own announcements are ignored.
//!
//! Nodes on the same host (same network namespace) also hear each other over the loopback
//! interface, so they see each other at `127.0.0.1` besides their other addresses.
//!
//! # Timing
//!
//! A running node finds a newcomer within milliseconds: the newcomer announces itself as it
//! starts. The newcomer finds the running node when that node answers its query, within ~50 ms
//! (random response delay) — except when the running node multicast its records less than a
//! second earlier, since RFC 6762 §6 (which mdns-sd enforces) forbids multicasting a record
//! twice within one second; the answer then comes with the newcomer's second query, one second
//! later. Two nodes started together therefore typically find each other after ~10 ms one way
//! and ~1 s the other way; the first one to find the other dials it at once, so their link is up
//! within tens of milliseconds (measured in `tests/discovery_netns.rs`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hypha_core::{id::NodeId, wire::Mode};
//! use hypha_transports::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent};
//!
//! let cfg = DiscoveryConfig::new(
//!     NodeId::from_u128(1),
//!     Mode::Peer,
//!     vec!["quic/0.0.0.0:7447".parse()?],
//! );
//! let (discovery, mut events) = Discovery::start(cfg)?;
//! while let Some(ev) = events.recv().await {
//!     if let DiscoveryEvent::Found { node_id, endpoints, .. } = ev {
//!         println!("{node_id} at {endpoints:?}");
//!     }
//! }
//! discovery.stop().await;
//! # Ok(()) }
//! ```
//!
//! # Limits
//!
//! - **One link-local network.** mDNS is multicast to `224.0.0.251` / `ff02::fb` with a TTL of
//!   255 but is never routed: nodes find each other only on the same L2 segment (bridge, switch,
//!   Wi-Fi). Across routers use configured endpoints, or gossip over existing links.
//! - **IPv6 link-local addresses are skipped**: they need a scope id that [`Endpoint`] cannot
//!   carry. IPv6 works with global or unique-local addresses.
//! - **Lost is a hint.** A node that stops cleanly says goodbye and is reported lost at once; a
//!   node that crashes is only reported when its records expire (minutes). Link failure is the
//!   real liveness signal. (A goodbye takes effect one second after it is heard, per RFC 6762.)
//! - **No authentication.** Anyone on the segment can announce anything; discovery only says
//!   where to dial, and TLS (with a CA) decides whom to trust.
//! - **Name probing is skipped**: instance and host names are derived from the 128-bit random
//!   node id, so conflicts do not happen in practice, and skipping the probe saves ~750 ms.
//! - The `eps` TXT value is limited to 250 bytes (DNS caps one TXT string at 255): endpoints that
//!   do not fit are left out with a warning; at most [`MAX_ENDPOINTS`] endpoints are read from a
//!   peer, combined with at most [`MAX_ADDRESSES`] addresses; at most [`MAX_NODES`] nodes are
//!   tracked at once.
//! - The daemon watches interface addresses every 5 s: an address added later is announced after
//!   that delay.

use crate::AbortOnDrop;
use crate::endpoint::{Endpoint, Host, Protocol};
use hypha_core::id::NodeId;
use hypha_core::wire::Mode;
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// The DNS-SD service type Hypha nodes announce and browse.
pub const SERVICE: &str = "_hypha._udp.local.";

/// At most this many endpoints are read from a peer's announcement.
pub const MAX_ENDPOINTS: usize = 16;

/// At most this many addresses of a peer are combined with its host-less endpoints.
pub const MAX_ADDRESSES: usize = 16;

/// At most this many discovered nodes are tracked; announcements of further nodes are ignored
/// until some are lost.
pub const MAX_NODES: usize = 4096;

/// Longest `eps` TXT value we send (a TXT string holds 255 bytes, `eps=` included).
const MAX_EPS_LEN: usize = 250;

/// Longest endpoint text we accept from a peer.
const MAX_ENDPOINT_LEN: usize = 300;

/// Capacity of the event channel.
const EVENT_CAPACITY: usize = 256;

/// How long [`Discovery::stop`] waits for the daemon to confirm the goodbye and the shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// What to announce.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// This node's id (instance name and `id` TXT record).
    pub node_id: NodeId,
    /// This node's mode (`mode` TXT record).
    pub mode: Mode,
    /// Our listening endpoints, possibly with an unspecified host like `quic/0.0.0.0:7447`
    /// (announced without the host, to be paired with each of our addresses).
    pub endpoints: Vec<Endpoint>,
    /// The DNS-SD service type; [`SERVICE`] by default.
    pub service: String,
}

impl DiscoveryConfig {
    /// A configuration for the default service type.
    pub fn new(node_id: NodeId, mode: Mode, endpoints: Vec<Endpoint>) -> Self {
        DiscoveryConfig {
            node_id,
            mode,
            endpoints,
            service: SERVICE.to_string(),
        }
    }
}

/// What discovery saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A node announced itself, or changed its mode or endpoints.
    Found {
        /// Its id.
        node_id: NodeId,
        /// Its mode.
        mode: Mode,
        /// Where to dial it, IPv4 first; never empty.
        endpoints: Vec<Endpoint>,
    },
    /// A node said goodbye or its announcement expired.
    Lost {
        /// Its id.
        node_id: NodeId,
    },
}

/// Why discovery could not start or update.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The mDNS daemon could not start (no usable socket, port 5353 not bindable, ...).
    #[error("cannot start the mDNS daemon: {0}")]
    Daemon(String),
    /// The service type is not a valid DNS-SD type (`_name._udp.local.`).
    #[error("invalid mDNS service type {service:?}: {reason}")]
    Service {
        /// The configured type.
        service: String,
        /// mdns-sd's reason.
        reason: String,
    },
    /// The announcement could not be built or registered.
    #[error("cannot announce this node over mDNS: {0}")]
    Announce(String),
    /// Browsing could not start.
    #[error("cannot browse for {service:?} over mDNS: {reason}")]
    Browse {
        /// The configured type.
        service: String,
        /// mdns-sd's reason.
        reason: String,
    },
    /// The daemon has stopped.
    #[error("the mDNS daemon has stopped")]
    Stopped,
}

/// Announcement state, changed by [`Discovery::update_endpoints`].
#[derive(Debug)]
struct Announced {
    /// Full name of our registered instance, if any (nothing to announce: browse only).
    registered: Option<String>,
}

/// A running discovery: announces this node and reports others. Dropping it withdraws the
/// announcement (goodbye) and stops the daemon without waiting; [`Discovery::stop`] waits.
pub struct Discovery {
    daemon: ServiceDaemon,
    node_id: NodeId,
    mode: Mode,
    service: String,
    announced: Mutex<Announced>,
    stopped: bool,
    _task: AbortOnDrop,
}

impl Discovery {
    /// Starts announcing `cfg` and browsing for other nodes. Events come out of the returned
    /// receiver, which closes when discovery stops.
    ///
    /// A configuration without any announceable endpoint (none, or only unix/mem/port 0)
    /// browses without announcing.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (the event bridge is a tokio task).
    pub fn start(
        cfg: DiscoveryConfig,
    ) -> Result<(Discovery, mpsc::Receiver<DiscoveryEvent>), DiscoveryError> {
        let daemon = ServiceDaemon::new().map_err(|e| DiscoveryError::Daemon(e.to_string()))?;
        // Daemon errors (socket failures, ...) are logged by the bridge; optional.
        let monitor = daemon.monitor().ok();
        let events = match daemon.browse(&cfg.service) {
            Ok(events) => events,
            Err(e) => {
                let _ = daemon.shutdown(); // stop its thread
                return Err(DiscoveryError::Browse {
                    service: cfg.service,
                    reason: e.to_string(),
                });
            }
        };
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        let bridge = Bridge {
            own_id: cfg.node_id,
            known: HashMap::new(),
            names: HashMap::new(),
        };
        let task = tokio::spawn(bridge.run(events, monitor, tx));
        let discovery = Discovery {
            daemon,
            node_id: cfg.node_id,
            mode: cfg.mode,
            service: cfg.service,
            announced: Mutex::new(Announced { registered: None }),
            stopped: false,
            _task: AbortOnDrop(task),
        };
        // On failure, dropping `discovery` stops the daemon.
        discovery.update_endpoints(cfg.endpoints)?;
        tracing::debug!(node = %discovery.node_id, service = %discovery.service, "mDNS discovery started");
        Ok((discovery, rx))
    }

    /// Announces another set of endpoints (say, after binding a new listener), replacing the
    /// previous one. Peers see a new [`DiscoveryEvent::Found`]. An empty (or unannounceable)
    /// set withdraws the announcement; browsing continues.
    pub fn update_endpoints(&self, endpoints: Vec<Endpoint>) -> Result<(), DiscoveryError> {
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        let Some((port, eps)) = encode_endpoints(&endpoints) else {
            if let Some(name) = announced.registered.take() {
                tracing::debug!("no endpoint left to announce: withdrawing the announcement");
                self.daemon
                    .unregister(&name)
                    .map_err(|_| DiscoveryError::Stopped)?;
            } else {
                tracing::debug!("no endpoint to announce: browsing only");
            }
            return Ok(());
        };
        let id = self.node_id.to_string();
        let host = format!("{id}.local.");
        let props = [
            ("id", id.as_str()),
            ("mode", self.mode.as_str()),
            ("eps", eps.as_str()),
        ];
        let mut info = ServiceInfo::new(&self.service, &id, &host, "", port, &props[..])
            .map_err(|e| DiscoveryError::Service {
                service: self.service.clone(),
                reason: e.to_string(),
            })?
            .enable_addr_auto();
        info.set_requires_probe(false);
        let name = info.get_fullname().to_string();
        self.daemon
            .register(info)
            .map_err(|e| DiscoveryError::Announce(e.to_string()))?;
        tracing::debug!(node = %id, %eps, port, "announcing over mDNS");
        announced.registered = Some(name);
        Ok(())
    }

    /// Withdraws the announcement (a goodbye: peers report [`DiscoveryEvent::Lost`] about a
    /// second later) and stops the daemon, waiting (at most a second each) for both to be done.
    pub async fn stop(mut self) {
        self.stopped = true;
        let name = self
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .registered
            .take();
        if let Some(name) = name {
            if let Ok(done) = self.daemon.unregister(&name) {
                let _ = tokio::time::timeout(STOP_TIMEOUT, done.recv_async()).await;
            }
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(STOP_TIMEOUT, done.recv_async()).await;
        }
        tracing::debug!(node = %self.node_id, "mDNS discovery stopped");
    }
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("node_id", &self.node_id)
            .field("mode", &self.mode)
            .field("service", &self.service)
            .field("announced", &self.announced)
            .finish_non_exhaustive()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Both are queued to the daemon thread in order: the goodbye goes out, then it exits.
        let name = self
            .announced
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .registered
            .take();
        if let Some(name) = name {
            let _ = self.daemon.unregister(&name);
        }
        let _ = self.daemon.shutdown();
    }
}

/// Turns our endpoints into the SRV port and the `eps` TXT value; `None` if nothing is
/// announceable.
fn encode_endpoints(endpoints: &[Endpoint]) -> Option<(u16, String)> {
    let mut port = None;
    let mut eps = String::new();
    let mut seen = Vec::new();
    for ep in endpoints {
        let Endpoint::Net {
            protocol,
            host,
            port: p,
        } = ep
        else {
            continue; // unix and mem are local to this host
        };
        if *p == 0 {
            tracing::debug!(endpoint = %ep, "not announcing an endpoint without a port");
            continue;
        }
        let text = match host {
            Host::Ip(ip) if ip.is_unspecified() => format!("{}/:{p}", protocol.as_str()),
            _ => ep.to_string(),
        };
        if seen.contains(&text) {
            continue;
        }
        let extra = text.len() + usize::from(!eps.is_empty());
        if eps.len() + extra > MAX_EPS_LEN {
            tracing::warn!(endpoint = %ep, "too many endpoints for one mDNS TXT record: not announced");
            continue;
        }
        if !eps.is_empty() {
            eps.push(',');
        }
        eps.push_str(&text);
        port.get_or_insert(*p);
        seen.push(text);
    }
    port.map(|p| (p, eps))
}

/// One entry of a peer's `eps`.
#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    /// `proto/:port`: to be paired with each address of the announcement.
    AnyHost(Protocol, u16),
    /// A complete endpoint.
    Fixed(Endpoint),
}

/// Parses a peer's `eps` value; malformed entries make the whole value malformed.
fn parse_eps(value: &str) -> Result<Vec<Announcement>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if out.len() == MAX_ENDPOINTS {
            return Err(format!("more than {MAX_ENDPOINTS} endpoints"));
        }
        if item.len() > MAX_ENDPOINT_LEN {
            return Err("endpoint text too long".into());
        }
        let entry = match item.split_once("/:") {
            Some((proto, port)) => {
                // Validate by the ordinary parser, with a placeholder host.
                match format!("{proto}/0.0.0.0:{port}").parse::<Endpoint>() {
                    Ok(Endpoint::Net { protocol, port, .. }) if port != 0 => {
                        Announcement::AnyHost(protocol, port)
                    }
                    Ok(_) => return Err(format!("endpoint {item:?} has port 0")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            None => match item.parse::<Endpoint>().map_err(|e| e.to_string())? {
                ep @ Endpoint::Net { .. } if ep.socket_addr().is_none_or(|a| a.port() != 0) => {
                    Announcement::Fixed(ep)
                }
                _ => {
                    return Err(format!(
                        "endpoint {item:?} cannot be dialled from another host"
                    ));
                }
            },
        };
        out.push(entry);
    }
    Ok(out)
}

fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "peer" => Some(Mode::Peer),
        "client" => Some(Mode::Client),
        "router" => Some(Mode::Router),
        _ => None,
    }
}

/// Addresses worth dialling, IPv4 first, each family sorted: no link-local IPv6 (no scope id in
/// an [`Endpoint`]), no unspecified or multicast address.
fn usable_addresses(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect();
    v.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    v.dedup();
    v.truncate(MAX_ADDRESSES);
    v
}

/// Pairs the announced endpoints with the announced addresses (duplicates dropped, IPv4 first).
fn expand(announced: &[Announcement], addrs: &[IpAddr]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    let mut push = |ep: Endpoint| {
        if !out.contains(&ep) {
            out.push(ep);
        }
    };
    for a in announced {
        match a {
            Announcement::AnyHost(protocol, port) => {
                for ip in addrs {
                    push(Endpoint::Net {
                        protocol: *protocol,
                        host: Host::Ip(*ip),
                        port: *port,
                    });
                }
            }
            Announcement::Fixed(ep) => push(ep.clone()),
        }
    }
    // IPv4 first; a stable sort keeps the announced order within each family.
    out.sort_by_key(|ep| ep.socket_addr().is_some_and(|a| a.is_ipv6()));
    out
}

/// A peer's announcement, validated.
#[derive(Debug, PartialEq, Eq)]
struct Peer {
    node_id: NodeId,
    mode: Mode,
    endpoints: Vec<Endpoint>,
}

/// Validates what a peer announced. Never panics, whatever the input.
fn parse_peer(
    id: Option<&str>,
    mode: Option<&str>,
    eps: Option<&str>,
    addrs: impl IntoIterator<Item = IpAddr>,
) -> Result<Peer, String> {
    let id = id.ok_or("no id")?;
    let node_id = NodeId::parse(id).map_err(|e| format!("bad id: {e}"))?;
    let mode = mode.and_then(parse_mode).ok_or("no valid mode")?;
    let announced = parse_eps(eps.ok_or("no eps")?)?;
    let endpoints = expand(&announced, &usable_addresses(addrs));
    if endpoints.is_empty() {
        return Err("no dialable endpoint".into());
    }
    Ok(Peer {
        node_id,
        mode,
        endpoints,
    })
}

/// Turns mdns-sd's events into [`DiscoveryEvent`]s.
struct Bridge {
    own_id: NodeId,
    /// What was last reported per node.
    known: HashMap<NodeId, (Mode, Vec<Endpoint>)>,
    /// Instance full name → node id (removals only carry the name).
    names: HashMap<String, NodeId>,
}

impl Bridge {
    async fn run(
        mut self,
        events: mdns_sd::Receiver<ServiceEvent>,
        monitor: Option<mdns_sd::Receiver<mdns_sd::DaemonEvent>>,
        tx: mpsc::Sender<DiscoveryEvent>,
    ) {
        let mut monitor = monitor;
        loop {
            let ev = tokio::select! {
                ev = events.recv_async() => match ev {
                    Ok(ev) => ev,
                    Err(_) => break, // daemon stopped
                },
                m = async { monitor.as_ref()?.recv_async().await.ok() }, if monitor.is_some() => {
                    match m {
                        Some(mdns_sd::DaemonEvent::Error(e)) => tracing::warn!("mDNS daemon: {e}"),
                        Some(other) => tracing::trace!("mDNS daemon: {other:?}"),
                        None => monitor = None,
                    }
                    continue;
                }
                _ = tx.closed() => break,
            };
            for out in self.handle(ev) {
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        }
        tracing::debug!("mDNS event bridge ended");
    }

    fn handle(&mut self, ev: ServiceEvent) -> Vec<DiscoveryEvent> {
        match ev {
            ServiceEvent::ServiceResolved(svc) => self.resolved(&svc).into_iter().collect(),
            ServiceEvent::ServiceRemoved(_, fullname) => {
                self.removed(&fullname).into_iter().collect()
            }
            other => {
                tracing::trace!("mDNS: {other:?}");
                Vec::new()
            }
        }
    }

    fn resolved(&mut self, svc: &ResolvedService) -> Option<DiscoveryEvent> {
        let addrs = svc.get_addresses().iter().map(|a| a.to_ip_addr());
        let peer = match parse_peer(
            svc.get_property_val_str("id"),
            svc.get_property_val_str("mode"),
            svc.get_property_val_str("eps"),
            addrs,
        ) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(instance = %svc.get_fullname(), "ignoring mDNS announcement: {why}");
                return None;
            }
        };
        self.found(svc.get_fullname(), peer)
    }

    fn found(&mut self, fullname: &str, peer: Peer) -> Option<DiscoveryEvent> {
        if peer.node_id == self.own_id {
            return None;
        }
        let name = fullname.to_lowercase();
        let new_node = !self.known.contains_key(&peer.node_id) && self.known.len() >= MAX_NODES;
        let new_name = !self.names.contains_key(&name) && self.names.len() >= MAX_NODES;
        if new_node || new_name {
            tracing::debug!(node = %peer.node_id, "ignoring mDNS announcement: too many nodes");
            return None;
        }
        self.names.insert(name, peer.node_id);
        let now = (peer.mode, peer.endpoints);
        if self.known.get(&peer.node_id) == Some(&now) {
            return None;
        }
        tracing::debug!(node = %peer.node_id, endpoints = ?now.1, "found over mDNS");
        self.known.insert(peer.node_id, now.clone());
        Some(DiscoveryEvent::Found {
            node_id: peer.node_id,
            mode: now.0,
            endpoints: now.1,
        })
    }

    fn removed(&mut self, fullname: &str) -> Option<DiscoveryEvent> {
        let node_id = self.names.remove(&fullname.to_lowercase())?;
        // Another instance name may still announce the same id: then it is not lost.
        if self.names.values().any(|n| *n == node_id) {
            return None;
        }
        self.known.remove(&node_id)?;
        tracing::debug!(node = %node_id, "lost over mDNS");
        Some(DiscoveryEvent::Lost { node_id })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ID: &str = "000102030405060708090a0b0c0d0e0f";

    #[test]
    fn endpoints_are_announced_without_unspecified_hosts() {
        let eps = [
            ep("quic/0.0.0.0:7447"),
            ep("tcp/[::]:7448"),
            ep("udp/10.1.2.3:7449"),
            ep("quic/0.0.0.0:7447"), // duplicate
            ep("tcp/0.0.0.0:0"),     // no port yet
            ep("unix//tmp/x.sock"),
            ep("mem/a"),
        ];
        assert_eq!(
            encode_endpoints(&eps),
            Some((7447, "quic/:7447,tcp/:7448,udp/10.1.2.3:7449".to_string()))
        );
        assert_eq!(encode_endpoints(&[ep("unix//tmp/x.sock")]), None);
        assert_eq!(encode_endpoints(&[]), None);
        // The SRV port is the first announced endpoint's.
        assert_eq!(
            encode_endpoints(&[ep("tcp/0.0.0.0:0"), ep("tcp/0.0.0.0:9")])
                .unwrap()
                .0,
            9
        );
    }

    #[test]
    fn the_eps_record_never_exceeds_its_limit() {
        let many: Vec<Endpoint> = (1..200u16)
            .map(|p| ep(&format!("quic/[2001:db8::{p:x}]:{}", 40000 + p)))
            .collect();
        let (port, eps) = encode_endpoints(&many).unwrap();
        assert_eq!(port, 40001);
        assert!(eps.len() <= MAX_EPS_LEN);
        assert!(parse_eps(&eps).is_ok());
    }

    #[test]
    fn host_less_endpoints_pair_with_every_address_ipv4_first() {
        let peer = parse_peer(
            Some(ID),
            Some("router"),
            Some("quic/:7447,tcp/192.0.2.9:80"),
            [
                ip("fe80::1"),
                ip("2001:db8::5"),
                ip("10.0.0.2"),
                ip("10.0.1.2"),
                ip("0.0.0.0"),
            ],
        )
        .unwrap();
        assert_eq!(peer.node_id, NodeId::parse(ID).unwrap());
        assert_eq!(peer.mode, Mode::Router);
        assert_eq!(
            peer.endpoints,
            [
                ep("quic/10.0.0.2:7447"),
                ep("quic/10.0.1.2:7447"),
                ep("tcp/192.0.2.9:80"),
                ep("quic/[2001:db8::5]:7447"),
            ]
        );
    }

    #[test]
    fn malformed_announcements_are_refused_not_panicked_on() {
        let addrs = || [ip("10.0.0.2")];
        let ok = |id, mode, eps| parse_peer(id, mode, eps, addrs());
        assert!(ok(Some(ID), Some("peer"), Some("quic/:1")).is_ok());
        for (id, mode, eps) in [
            (None, Some("peer"), Some("quic/:1")),
            (Some("xyz"), Some("peer"), Some("quic/:1")),
            (
                Some("g00102030405060708090a0b0c0d0e0f"),
                Some("peer"),
                Some("quic/:1"),
            ),
            (
                Some("é0102030405060708090a0b0c0d0e0f"),
                Some("peer"),
                Some("quic/:1"),
            ),
            (Some(ID), None, Some("quic/:1")),
            (Some(ID), Some("boss"), Some("quic/:1")),
            (Some(ID), Some("peer"), None),
            (Some(ID), Some("peer"), Some("")),
            (Some(ID), Some("peer"), Some("quic/:0")),
            (Some(ID), Some("peer"), Some("quic/:99999")),
            (Some(ID), Some("peer"), Some("sctp/:1")),
            (Some(ID), Some("peer"), Some("/:1")),
            (Some(ID), Some("peer"), Some(":::")),
            (Some(ID), Some("peer"), Some("quic/:1,garbage")),
            (Some(ID), Some("peer"), Some("unix//tmp/a")),
            (Some(ID), Some("peer"), Some("mem/a")),
            (Some(ID), Some("peer"), Some("quic/1.2.3.4:0")),
        ] {
            assert!(
                ok(id, mode, eps).is_err(),
                "{id:?} {mode:?} {eps:?} should be refused"
            );
        }
        // Only link-local IPv6: nothing to dial.
        assert!(parse_peer(Some(ID), Some("peer"), Some("quic/:1"), [ip("fe80::2")]).is_err());
        // Too many entries.
        let long = vec!["quic/:1"; MAX_ENDPOINTS + 1].join(",");
        assert!(ok(Some(ID), Some("peer"), Some(&long)).is_err());
        // Arbitrary bytes never panic.
        for s in [
            "\u{0}",
            "quic/:",
            "/",
            ",,,",
            "quic/[::1",
            "quic/:1/:2",
            "tcp/[:1]:5",
        ] {
            let _ = parse_peer(Some(ID), Some("peer"), Some(s), addrs());
        }
    }

    #[test]
    fn addresses_are_capped() {
        let addrs: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        assert_eq!(usable_addresses(addrs).len(), MAX_ADDRESSES);
    }

    fn bridge() -> Bridge {
        Bridge {
            own_id: NodeId::from_u128(1),
            known: HashMap::new(),
            names: HashMap::new(),
        }
    }

    fn peer(id: u128, eps: &[&str]) -> Peer {
        Peer {
            node_id: NodeId::from_u128(id),
            mode: Mode::Peer,
            endpoints: eps.iter().map(|s| ep(s)).collect(),
        }
    }

    #[test]
    fn found_is_deduplicated_and_lost_follows_removal() {
        let mut b = bridge();
        assert_eq!(
            b.found("own._hypha._udp.local.", peer(1, &["quic/10.0.0.1:1"])),
            None
        );
        let first = b.found("two._hypha._udp.local.", peer(2, &["quic/10.0.0.2:1"]));
        assert!(matches!(first, Some(DiscoveryEvent::Found { .. })));
        assert_eq!(
            b.found("two._hypha._udp.local.", peer(2, &["quic/10.0.0.2:1"])),
            None
        );
        let moved = b.found("two._hypha._udp.local.", peer(2, &["quic/10.0.0.3:1"]));
        assert_eq!(
            moved,
            Some(DiscoveryEvent::Found {
                node_id: NodeId::from_u128(2),
                mode: Mode::Peer,
                endpoints: vec![ep("quic/10.0.0.3:1")],
            })
        );
        assert_eq!(b.removed("unknown._hypha._udp.local."), None);
        assert_eq!(
            b.removed("TWO._hypha._udp.local."),
            Some(DiscoveryEvent::Lost {
                node_id: NodeId::from_u128(2)
            })
        );
        assert_eq!(b.removed("two._hypha._udp.local."), None);
        // Found again after being lost.
        assert!(
            b.found("two._hypha._udp.local.", peer(2, &["quic/10.0.0.3:1"]))
                .is_some()
        );
    }
}
