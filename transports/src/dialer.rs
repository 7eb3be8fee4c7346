//! Parallel dialing with exponential backoff.
//!
//! The runtime hands the [`Dialer`] a node (or `None` for a configured endpoint whose node is not
//! known yet) and the endpoints where it may be reached. The dialer then, in a background task per
//! target:
//!
//! 1. dials **every** endpoint at once; the first link set up wins and the other attempts are
//!    dropped (a multi-homed peer announces several addresses, some of which may not be routable
//!    from here);
//! 2. when every endpoint failed, waits and tries again: 100 ms, doubling up to `max_backoff`
//!    (5 s by default), each wait drawn in `[¾·d, d]` so that nodes started together do not dial
//!    in lock-step;
//! 3. stops when a link is delivered on the [`Dialed`] channel, when the runtime reports the node
//!    connected ([`Dialer::set_connected`]), when the target is [forgotten](Dialer::forget), or,
//!    for a node (not a configured endpoint), after the rounds set with [`Dialer::give_up_after`]
//!    (a peer that left for good is not dialled forever: 5,000 peers coming and going left
//!    5,000 dial loops behind, issue 16).
//!
//! A target is keyed by its node id, or, for `node_id: None`, by its (sorted) endpoint list. Our
//! own id is never dialled, nor a node marked connected. A delivered link ends the retries: when
//! it later breaks, the runtime calls [`Dialer::dial`] again.
//!
//! The dialer does not look at what is on the other end: the runtime's handshake tells which node
//! answered, and two nodes dialling each other at once get two links, one of which the runtime
//! closes.
//!
//! ```no_run
//! # async fn demo() {
//! use hypha_core::id::NodeId;
//! use hypha_transports::{TlsConfig, dialer::Dialer};
//!
//! let (dialer, mut dialed) = Dialer::new(NodeId::from_u128(1), TlsConfig::default());
//! dialer.dial(Some(NodeId::from_u128(2)), vec!["quic/10.0.0.2:7447".parse().unwrap()]);
//! if let Some(d) = dialed.recv().await {
//!     println!("linked to {:?} at {}", d.node_id, d.endpoint);
//!     dialer.set_connected(NodeId::from_u128(2), true);
//! }
//! # }
//! ```

use crate::{Endpoint, Link, TlsConfig, connect};
use hypha_core::id::NodeId;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// The first wait after every endpoint failed; it doubles after each failed round.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Default cap of the wait between two rounds.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Capacity of the [`Dialed`] channel.
const DIALED_CAPACITY: usize = 64;

/// A link set up by the dialer.
#[derive(Debug)]
pub struct Dialed {
    /// The node it was dialled for (`None` for a configured endpoint).
    pub node_id: Option<NodeId>,
    /// The endpoint that answered first.
    pub endpoint: Endpoint,
    /// The link; the runtime runs the handshake on it.
    pub link: Link,
}

/// What a dial is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Node(NodeId),
    Endpoints(Vec<Endpoint>),
}

impl Target {
    fn new(node_id: Option<NodeId>, endpoints: &[Endpoint]) -> Self {
        match node_id {
            Some(n) => Target::Node(n),
            None => Target::Endpoints(normalize(endpoints.to_vec())),
        }
    }
}

/// Sorted, without duplicates: the same set dialled twice is one target.
fn normalize(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// Called with a node the dialer stopped dialling after its last allowed round.
#[derive(Clone)]
struct GiveUp(Arc<dyn Fn(NodeId) + Send + Sync>);

impl std::fmt::Debug for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GiveUp")
    }
}

/// A dial in progress (its task is aborted when the entry is dropped, unless detached).
#[derive(Debug)]
struct Pending {
    endpoints: Vec<Endpoint>,
    generation: u64,
    failed_rounds: u32,
    task: Option<AbortHandle>,
}

impl Pending {
    /// Lets the task finish on its own (it is the one removing the entry).
    fn detach(mut self) {
        self.task = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    connected: HashSet<NodeId>,
    pending: HashMap<Target, Pending>,
    next_generation: u64,
}

/// What the dial tasks share with the handles.
#[derive(Debug)]
struct Shared {
    own_id: NodeId,
    tls: TlsConfig,
    max_backoff: Duration,
    runtime: tokio::runtime::Handle,
    out: mpsc::Sender<Dialed>,
    state: Mutex<State>,
    /// Failed rounds after which a node target is dropped, and whom to tell.
    give_up: Mutex<Option<(u32, GiveUp)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent (each update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held by handles only: when the last [`Dialer`] goes, every dial task is aborted (the tasks
/// hold `Shared`, not this, so there is no cycle).
#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let pending = std::mem::take(&mut self.0.lock().pending);
        drop(pending); // aborts every task
    }
}

/// Dials nodes in the background, in parallel over their endpoints, with backoff.
///
/// A cheap handle: clones share the same dials. Dropping the last clone aborts every dial in
/// progress and closes the [`Dialed`] channel.
#[derive(Clone, Debug)]
pub struct Dialer {
    owner: Arc<Owner>,
}

impl Dialer {
    /// A dialer for the node `own_id`, using `tls` for QUIC links, with the default backoff cap
    /// ([`DEFAULT_MAX_BACKOFF`]). Links come out of the returned receiver.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (dial tasks are spawned on the current runtime).
    pub fn new(own_id: NodeId, tls: TlsConfig) -> (Dialer, mpsc::Receiver<Dialed>) {
        Self::with_max_backoff(own_id, tls, DEFAULT_MAX_BACKOFF)
    }

    /// Like [`Dialer::new`], with another cap on the wait between two rounds (at least
    /// [`INITIAL_BACKOFF`]).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn with_max_backoff(
        own_id: NodeId,
        tls: TlsConfig,
        max_backoff: Duration,
    ) -> (Dialer, mpsc::Receiver<Dialed>) {
        let (out, rx) = mpsc::channel(DIALED_CAPACITY);
        let shared = Arc::new(Shared {
            own_id,
            tls,
            max_backoff: max_backoff.max(INITIAL_BACKOFF),
            runtime: tokio::runtime::Handle::current(),
            out,
            state: Mutex::new(State::default()),
            give_up: Mutex::new(None),
        });
        (
            Dialer {
                owner: Arc::new(Owner(shared)),
            },
            rx,
        )
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.0
    }

    /// Dials `node_id` (`None`: a configured endpoint, node unknown) at `endpoints`: all at once,
    /// the first link set up wins; when all fail, again after a backoff, until a link is
    /// delivered, the node is reported connected, or the target is [forgotten](Self::forget).
    ///
    /// Does nothing for our own id, for a node marked connected, for an empty endpoint list, or
    /// when the same target is already being dialled at the same endpoints. A known node dialled
    /// with other endpoints (say, discovery saw a new address) restarts its dial at once with the
    /// new list.
    pub fn dial(&self, node_id: Option<NodeId>, endpoints: Vec<Endpoint>) {
        let shared = self.shared();
        if node_id == Some(shared.own_id) {
            tracing::debug!("not dialling our own node id");
            return;
        }
        let endpoints = normalize(endpoints);
        if endpoints.is_empty() {
            tracing::debug!(node = ?node_id, "nothing to dial: no endpoint");
            return;
        }
        let target = Target::new(node_id, &endpoints);
        let mut st = shared.lock();
        if let Some(n) = node_id {
            if st.connected.contains(&n) {
                tracing::debug!(node = %n, "not dialling: already connected");
                return;
            }
        }
        if st
            .pending
            .get(&target)
            .is_some_and(|p| p.endpoints == endpoints)
        {
            return;
        }
        st.next_generation += 1;
        let generation = st.next_generation;
        tracing::debug!(node = ?node_id, ?endpoints, "dialling");
        let task = shared.runtime.spawn(run(
            shared.clone(),
            target.clone(),
            generation,
            node_id,
            endpoints.clone(),
        ));
        // Replacing an older entry drops it, which aborts its task.
        st.pending.insert(
            target,
            Pending {
                endpoints,
                generation,
                failed_rounds: 0,
                task: Some(task.abort_handle()),
            },
        );
    }

    /// Tells the dialer whether `node_id` is connected. A connected node is never dialled:
    /// marking it connected cancels a dial in progress. Marking it disconnected does not dial it
    /// again by itself; the runtime calls [`Dialer::dial`] when it wants the node back.
    pub fn set_connected(&self, node_id: NodeId, connected: bool) {
        let mut st = self.shared().lock();
        if connected {
            st.connected.insert(node_id);
            if st.pending.remove(&Target::Node(node_id)).is_some() {
                tracing::debug!(node = %node_id, "connected: dial cancelled");
            }
        } else {
            st.connected.remove(&node_id);
        }
    }

    /// Stops dialling a target: `Some(node)` (the endpoints are ignored), or `None` with the
    /// endpoint list given to [`Dialer::dial`] (in any order).
    pub fn forget(&self, node_id: Option<NodeId>, endpoints: &[Endpoint]) {
        let target = Target::new(node_id, endpoints);
        if self.shared().lock().pending.remove(&target).is_some() {
            tracing::debug!(node = ?node_id, "dial forgotten");
        }
    }

    /// True while the target is being dialled (keyed like [`Dialer::forget`]).
    pub fn is_pending(&self, node_id: Option<NodeId>, endpoints: &[Endpoint]) -> bool {
        self.shared()
            .lock()
            .pending
            .contains_key(&Target::new(node_id, endpoints))
    }

    /// How many rounds (every endpoint tried) failed so far for a target being dialled.
    pub fn failed_rounds(&self, node_id: Option<NodeId>, endpoints: &[Endpoint]) -> Option<u32> {
        self.shared()
            .lock()
            .pending
            .get(&Target::new(node_id, endpoints))
            .map(|p| p.failed_rounds)
    }

    /// How many targets are being dialled.
    pub fn pending_count(&self) -> usize {
        self.shared().lock().pending.len()
    }

    /// Stops dialling a node (a target with a node id; configured endpoints are dialled until
    /// forgotten) after `rounds` failed rounds, and then calls `gone` with it, so that the caller
    /// can forget the node too. Without this, nodes are dialled until a link, a
    /// [`set_connected`](Self::set_connected) or a [`forget`](Self::forget).
    pub fn give_up_after(&self, rounds: u32, gone: impl Fn(NodeId) + Send + Sync + 'static) {
        *self
            .shared()
            .give_up
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((rounds.max(1), GiveUp(Arc::new(gone))));
    }
}

/// One target's dial loop.
async fn run(
    shared: Arc<Shared>,
    target: Target,
    generation: u64,
    node_id: Option<NodeId>,
    endpoints: Vec<Endpoint>,
) {
    let mut delay = INITIAL_BACKOFF;
    let mut round: u32 = 0;
    loop {
        round += 1;
        if let Some((endpoint, link)) = dial_all(&endpoints, &shared.tls).await {
            let current = {
                let mut st = shared.lock();
                let ours = st
                    .pending
                    .get(&target)
                    .is_some_and(|p| p.generation == generation);
                if ours {
                    if let Some(p) = st.pending.remove(&target) {
                        p.detach(); // we are that task: do not abort ourselves
                    }
                }
                ours && node_id.is_none_or(|n| !st.connected.contains(&n))
            };
            if current {
                tracing::debug!(node = ?node_id, %endpoint, round, "dialled");
                // The receiver may be gone (runtime shutting down): then the link just drops.
                let _ = shared
                    .out
                    .send(Dialed {
                        node_id,
                        endpoint,
                        link,
                    })
                    .await;
            }
            return;
        }
        let give_up = shared
            .give_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let gone = match (node_id, give_up) {
            (Some(n), Some((max, f))) if round >= max => Some((n, f)),
            _ => None,
        };
        {
            let mut st = shared.lock();
            let ours = st
                .pending
                .get(&target)
                .is_some_and(|p| p.generation == generation);
            if !ours {
                return;
            }
            if gone.is_some() {
                if let Some(p) = st.pending.remove(&target) {
                    p.detach(); // we are that task: do not abort ourselves
                }
            } else if let Some(p) = st.pending.get_mut(&target) {
                p.failed_rounds = round;
            }
        }
        if let Some((n, f)) = gone {
            tracing::debug!(node = %n, round, "every endpoint failed {round} times: giving up");
            (f.0)(n);
            return;
        }
        let wait = jittered(delay, random_u64());
        tracing::debug!(node = ?node_id, round, ?wait, "every endpoint failed; retrying later");
        tokio::time::sleep(wait).await;
        delay = next_backoff(delay, shared.max_backoff);
    }
}

/// Dials every endpoint at once; the first link set up wins, the other attempts are aborted when
/// the set drops.
async fn dial_all(endpoints: &[Endpoint], tls: &TlsConfig) -> Option<(Endpoint, Link)> {
    let mut attempts = JoinSet::new();
    for ep in endpoints {
        let (ep, tls) = (ep.clone(), tls.clone());
        attempts.spawn(async move {
            let r = connect(&ep, &tls).await;
            (ep, r)
        });
    }
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok((ep, Ok(link))) => return Some((ep, link)),
            Ok((ep, Err(e))) => tracing::debug!(endpoint = %ep, "dial failed: {e}"),
            Err(e) => tracing::debug!("dial attempt ended abnormally: {e}"),
        }
    }
    None
}

/// The next round's base wait: doubled, capped.
fn next_backoff(delay: Duration, max: Duration) -> Duration {
    delay.saturating_mul(2).min(max)
}

/// A wait drawn in `[¾·d, d]` from the random bits `r`.
fn jittered(d: Duration, r: u64) -> Duration {
    let quarter = d / 4;
    let nanos = u64::try_from(quarter.as_nanos()).unwrap_or(u64::MAX);
    let off = if nanos == 0 { 0 } else { r % (nanos + 1) };
    d - quarter + Duration::from_nanos(off)
}

/// Random bits for jitter, from the operating system's generator (std's hasher keys as a
/// fallback should it ever fail).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => std::collections::hash_map::RandomState::new().hash_one(0u8),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Listener, listen};
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(20);

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    /// A TCP endpoint nothing listens on (bound, then released).
    fn closed_port() -> Endpoint {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        ep(&format!("tcp/127.0.0.1:{port}"))
    }

    async fn tcp_listener() -> Listener {
        listen(&ep("tcp/127.0.0.1:0"), &TlsConfig::default())
            .await
            .unwrap()
    }

    async fn next(rx: &mut mpsc::Receiver<Dialed>) -> Dialed {
        tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("deadline")
            .expect("channel open")
    }

    /// Waits until `cond` holds, polling the dialer's state, with a deadline.
    async fn until(cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < DEADLINE,
                "condition not met before the deadline"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_below_the_base() {
        let max = Duration::from_secs(5);
        let mut d = INITIAL_BACKOFF;
        let mut seen = vec![];
        for _ in 0..10 {
            seen.push(d.as_millis());
            d = next_backoff(d, max);
        }
        assert_eq!(
            seen,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        for r in [0, 1, 12345, u64::MAX] {
            let j = jittered(Duration::from_millis(800), r);
            assert!(
                j >= Duration::from_millis(600) && j <= Duration::from_millis(800),
                "{j:?}"
            );
        }
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
        assert_ne!(random_u64(), random_u64());
    }

    #[tokio::test]
    async fn parallel_dial_picks_the_endpoint_that_works() {
        let mut l = tcp_listener().await;
        let good = l.local_endpoint().clone();
        let (dialer, mut rx) = Dialer::new(NodeId::from_u128(1), TlsConfig::default());
        let node = NodeId::from_u128(2);
        let eps = vec![closed_port(), good.clone(), closed_port(), closed_port()];
        dialer.dial(Some(node), eps.clone());
        assert!(dialer.is_pending(Some(node), &eps));
        let d = next(&mut rx).await;
        assert_eq!(d.node_id, Some(node));
        assert_eq!(d.endpoint, good);
        assert!(
            tokio::time::timeout(DEADLINE, l.accept())
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            !dialer.is_pending(Some(node), &eps),
            "a delivered link ends the dial"
        );
        assert_eq!(dialer.pending_count(), 0);
    }

    #[tokio::test]
    async fn never_dials_own_id_or_a_connected_node() {
        let l = tcp_listener().await;
        let good = l.local_endpoint().clone();
        let own = NodeId::from_u128(7);
        let (dialer, mut rx) = Dialer::new(own, TlsConfig::default());
        dialer.dial(Some(own), vec![good.clone()]);
        assert!(!dialer.is_pending(Some(own), &[]));

        let other = NodeId::from_u128(8);
        dialer.set_connected(other, true);
        dialer.dial(Some(other), vec![good.clone()]);
        assert!(!dialer.is_pending(Some(other), &[]));
        assert_eq!(dialer.pending_count(), 0);

        // Once disconnected it is dialled again (when asked), and only that one is delivered.
        dialer.set_connected(other, false);
        dialer.dial(Some(other), vec![good.clone()]);
        let d = next(&mut rx).await;
        assert_eq!(d.node_id, Some(other));
        assert!(rx.try_recv().is_err());
    }

    /// Issue 16: a node that left for good is not dialled forever; configured endpoints are.
    #[tokio::test]
    async fn a_node_is_given_up_after_its_rounds_and_a_configured_endpoint_never() {
        let (dialer, _rx) = Dialer::with_max_backoff(
            NodeId::from_u128(1),
            TlsConfig::default(),
            Duration::from_millis(200),
        );
        let gone = Arc::new(Mutex::new(Vec::new()));
        let g = gone.clone();
        dialer.give_up_after(3, move |n| g.lock().unwrap().push(n));
        let dead = closed_port();
        let configured = closed_port();
        let key = std::slice::from_ref(&configured);
        for i in 0..50u128 {
            dialer.dial(Some(NodeId::from_u128(100 + i)), vec![dead.clone()]);
        }
        dialer.dial(None, vec![configured.clone()]);
        assert_eq!(dialer.pending_count(), 51);
        until(|| gone.lock().unwrap().len() == 50).await;
        let mut told = gone.lock().unwrap().clone();
        told.sort();
        assert_eq!(
            told,
            (0..50u128)
                .map(|i| NodeId::from_u128(100 + i))
                .collect::<Vec<_>>()
        );
        // The configured endpoint is still dialled, past the rounds a node gets.
        until(|| dialer.failed_rounds(None, key).is_some_and(|r| r >= 5)).await;
        assert_eq!(dialer.pending_count(), 1);
        assert!(dialer.is_pending(None, key));
    }

    #[tokio::test]
    async fn marking_connected_cancels_a_pending_dial() {
        let (dialer, mut rx) = Dialer::new(NodeId::from_u128(1), TlsConfig::default());
        let node = NodeId::from_u128(3);
        let dead = closed_port();
        dialer.dial(Some(node), vec![dead.clone()]);
        assert!(dialer.is_pending(Some(node), &[]));
        until(|| {
            dialer
                .failed_rounds(Some(node), &[])
                .is_some_and(|r| r >= 1)
        })
        .await;
        dialer.set_connected(node, true);
        assert!(!dialer.is_pending(Some(node), &[]));
        // Something listens there now; a marker dial to the same endpoint gets through, and only
        // the marker is delivered: the cancelled dial never comes back.
        let _l = listen(&dead, &TlsConfig::default()).await.unwrap();
        dialer.dial(None, vec![dead.clone()]);
        let d = next(&mut rx).await;
        assert_eq!(d.node_id, None);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn backoff_retries_until_a_listener_appears() {
        // Reserve a port, find it closed a few times, then listen on it.
        let dead = closed_port();
        let (dialer, mut rx) = Dialer::new(NodeId::from_u128(1), TlsConfig::default());
        let started = Instant::now();
        let key = std::slice::from_ref(&dead);
        dialer.dial(None, vec![dead.clone()]);
        assert!(dialer.is_pending(None, key));
        until(|| dialer.failed_rounds(None, key).is_some_and(|r| r >= 3)).await;
        // Three failed rounds are separated by at least ¾·100 + ¾·200 ms of backoff.
        assert!(
            started.elapsed() >= Duration::from_millis(225),
            "{:?}",
            started.elapsed()
        );
        let mut l = listen(&dead, &TlsConfig::default()).await.unwrap();
        let d = next(&mut rx).await;
        assert_eq!(d.node_id, None);
        assert_eq!(d.endpoint, dead);
        assert!(
            tokio::time::timeout(DEADLINE, l.accept())
                .await
                .unwrap()
                .is_some()
        );
        assert!(!dialer.is_pending(None, &[dead]));
    }

    #[tokio::test]
    async fn forget_stops_a_dial_and_configured_endpoints_are_keyed_by_their_set() {
        let (dialer, _rx) = Dialer::new(NodeId::from_u128(1), TlsConfig::default());
        let (a, b) = (closed_port(), closed_port());
        dialer.dial(None, vec![a.clone(), b.clone()]);
        // Same set, other order, duplicates: same target, no second dial.
        dialer.dial(None, vec![b.clone(), a.clone(), a.clone()]);
        assert_eq!(dialer.pending_count(), 1);
        assert!(dialer.is_pending(None, &[b.clone(), a.clone()]));
        assert!(!dialer.is_pending(None, std::slice::from_ref(&a)));
        dialer.forget(None, &[b.clone(), a.clone()]);
        assert_eq!(dialer.pending_count(), 0);

        let node = NodeId::from_u128(9);
        dialer.dial(Some(node), vec![a.clone()]);
        dialer.dial(Some(node), vec![b.clone()]); // new endpoints replace the old dial
        assert_eq!(dialer.pending_count(), 1);
        dialer.forget(Some(node), &[]);
        assert_eq!(dialer.pending_count(), 0);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_channel() {
        let (dialer, mut rx) = Dialer::new(NodeId::from_u128(1), TlsConfig::default());
        let copy = dialer.clone();
        dialer.dial(Some(NodeId::from_u128(4)), vec![closed_port()]);
        drop(dialer);
        assert_eq!(copy.pending_count(), 1, "a clone keeps the dials alive");
        drop(copy);
        let end = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("deadline");
        assert!(end.is_none(), "tasks aborted, channel closed");
    }
}
