//! The per-link session state machine, sans-IO.
//!
//! One [`Session`] runs one link between two nodes. It performs no I/O and reads no clock:
//!
//! - **Inputs**: [`Session::handle_input`] with each batch received from the link,
//!   [`Session::handle_timeout`] when the instant from [`Session::poll_timeout`] has passed, and
//!   [`Session::send`] / [`Session::close`] from the application.
//! - **Outputs**: [`Session::poll_transmit`] hands the next batch to write to the link (call it
//!   until it returns `None`; it is worth calling again after any input, send or timeout);
//!   [`Session::poll_event`] hands state changes ([`Event`]); network messages received are
//!   handed to the closure given to `handle_input`, borrowing from the received batch (no copy).
//!
//! What it does: the handshake (`Init` → `Accept` → `Open`) with a protocol version check and
//! negotiation of the batch size; lease expiry and keep-alives; per-lane sequence numbers with
//! duplicate and gap detection (a gap on a reliable lane closes the link, on a best-effort lane
//! it is counted as loss); batching of queued messages into frames up to the negotiated batch
//! size (a lone message goes out alone, a backlog is coalesced); fragmentation of messages larger
//! than a batch and bounded reassembly; tracking of the key ids the peer declares.
//!
//! ```
//! use hypha_core::id::NodeId;
//! use hypha_core::session::{Config, HeapSession, Role};
//! use hypha_core::time::Instant;
//!
//! let now = Instant::ZERO;
//! let mut a = HeapSession::new(Config::new(NodeId::from_u128(1)), Role::Dialer, now, 7);
//! let mut b = HeapSession::new(Config::new(NodeId::from_u128(2)), Role::Listener, now, 9);
//! let mut buf = [0u8; 65_535];
//! // Shuttle batches until both sides are quiet.
//! for _ in 0..4 {
//!     while let Some(n) = a.poll_transmit(now, &mut buf) {
//!         b.handle_input(now, &buf[..n], &mut |_| {});
//!     }
//!     while let Some(n) = b.poll_transmit(now, &mut buf) {
//!         a.handle_input(now, &buf[..n], &mut |_| {});
//!     }
//! }
//! assert!(a.is_open() && b.is_open());
//! ```

mod buffer;
mod rx;
mod tx;

#[cfg(test)]
mod tests;

#[cfg(feature = "alloc")]
pub use buffer::HeapKeys;
pub use buffer::{Buffer, FixedKeys, KeyTable};

use crate::id::NodeId;
use crate::time::{Duration, Instant};
use crate::wire::{
    CloseReason, LaneAck, Mode, NetworkMessage, PROTOCOL_VERSION, Priority, WireKey, limits,
};
use core::fmt;
use tx::LaneQueue;

/// Number of priority lanes.
pub const LANES: usize = 8;
/// Number of sequence-number spaces: one per lane and reliability.
const SLOTS: usize = LANES * 2;

/// Session parameters. Every field has a default; see [`Config::new`].
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's mode.
    pub mode: Mode,
    /// Largest batch this node sends and accepts (the smaller of both sides is used).
    pub batch_size: u16,
    /// This node's lease: the peer closes the link if it hears nothing from us for this long.
    /// We send a keep-alive after `lease / 4` of silence.
    pub lease: Duration,
    /// Time allowed for the handshake to complete.
    pub handshake_timeout: Duration,
    /// Bytes queued per lane before [`Session::send`] reports [`SendError::QueueFull`]. One
    /// message larger than this is still accepted when its lane is empty.
    pub lane_capacity: usize,
    /// Largest message (encoded) accepted for sending or for reassembly.
    pub max_message_size: usize,
    /// Most key ids the peer may declare on this link.
    pub max_remote_keys: usize,
    /// Proposed sequence-number resolution in bits (7 to 32; the smaller of both sides' is
    /// used). Sequence numbers wrap and are compared with serial-number arithmetic, so the
    /// resolution only bounds how far apart a duplicate or a gap can be told apart; 7 bits keep
    /// every frame header at two bytes.
    pub sn_bits: u8,
    /// Offer acknowledgements of reliable lanes in the handshake. When both sides do, each
    /// tells the other how many messages it has received on each reliable lane ([`Acks`]),
    /// and a session that ends without an orderly close counts what it wrote and never heard
    /// acknowledged ([`Stats::tx_unconfirmed`]). Against a peer that does not, nothing is
    /// counted.
    ///
    /// [`Acks`]: crate::wire::Acks
    pub acks: bool,
    /// How long an acknowledgement waits after the first message it covers: a busy link
    /// sends at most one per `ack_delay` (plus one before a close, and keep-alives carry them).
    pub ack_delay: Duration,
}

impl Config {
    /// Defaults: peer mode, 65,535-byte batches, 10 s lease, 1 MiB per lane, 16 MiB messages,
    /// 10,000 remote key ids.
    pub const fn new(node_id: NodeId) -> Self {
        Config {
            node_id,
            mode: Mode::Peer,
            batch_size: limits::MAX_BATCH_SIZE as u16,
            lease: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            lane_capacity: 1 << 20,
            max_message_size: 16 << 20,
            max_remote_keys: 10_000,
            sn_bits: 7,
            acks: true,
            ack_delay: Duration::from_millis(10),
        }
    }
}

/// Which side of the link this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We dialed: we send `Init`.
    Dialer,
    /// We accepted: we wait for `Init`.
    Listener,
}

/// What the peer told us in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id.
    pub node_id: NodeId,
    /// Its mode.
    pub mode: Mode,
    /// Its lease.
    pub lease: Duration,
}

/// A state change of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Established {
        /// The peer.
        peer: PeerInfo,
        /// Negotiated batch size.
        batch_size: u16,
    },
    /// The session is closed; nothing more will be sent or accepted.
    Closed {
        /// Why.
        reason: CloseReason,
        /// True if the peer closed it (we received `Close`), false if we did.
        by_peer: bool,
    },
}

/// Why [`Session::send`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake has not completed.
    NotOpen,
    /// The session is closed.
    Closed,
    /// The lane's queue is full: poll transmissions first, or drop.
    QueueFull,
    /// The message is larger than `max_message_size` or the buffer storage.
    TooLarge,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::NotOpen => "session not open yet",
            SendError::Closed => "session closed",
            SendError::QueueFull => "lane queue full",
            SendError::TooLarge => "message too large",
        })
    }
}

impl core::error::Error for SendError {}

/// Counters of a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches handed out by `poll_transmit`.
    pub tx_batches: u64,
    /// Bytes handed out by `poll_transmit`.
    pub tx_bytes: u64,
    /// Network messages sent.
    pub tx_messages: u64,
    /// Of those, data (samples, queries, replies: [`NetworkMessage::is_data`]); the rest is
    /// control.
    pub tx_data: u64,
    /// Fragments sent.
    pub tx_fragments: u64,
    /// Batches received.
    pub rx_batches: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Network messages delivered.
    pub rx_messages: u64,
    /// Of those, data ([`NetworkMessage::is_data`]); the rest is control.
    pub rx_data: u64,
    /// Duplicate (already seen) frames dropped.
    pub rx_duplicates: u64,
    /// Frames missing on best-effort lanes (sequence gaps).
    pub rx_lost: u64,
    /// Messages reassembled from fragments.
    pub rx_reassembled: u64,
    /// Partial reassemblies dropped (a fragment was lost on a best-effort lane).
    pub rx_reassembly_dropped: u64,
    /// Partial reassemblies evicted because a node-wide budget was exceeded.
    pub rx_reassembly_evicted: u64,
    /// Keep-alives sent.
    pub keepalives_sent: u64,
    /// Messages queued but never sent: discarded when the session closed (a lease expired in a
    /// blackout, the link broke, a close). Never sent means lost to the peer.
    pub tx_discarded: u64,
    /// Messages handed to the link on a reliable lane that the peer never acknowledged, counted
    /// when the session ended other than by our own orderly close (the lease expired, the link
    /// broke, the peer closed). Probably lost; a few may have arrived with their
    /// acknowledgement still on its way (at most `ack_delay` plus a round trip of traffic).
    /// Only on a session whose handshake agreed on acknowledgements.
    pub tx_unconfirmed: u64,
    /// Of those, data ([`NetworkMessage::is_data`]).
    pub tx_unconfirmed_data: u64,
    /// Acknowledgements sent.
    pub acks_sent: u64,
    /// Acknowledgements received.
    pub acks_received: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Dialer: `Init` queued or sent, waiting for `Accept`.
    AwaitAccept,
    /// Listener: waiting for `Init`.
    AwaitInit,
    /// Listener: `Accept` queued or sent, waiting for `Open`.
    AwaitOpen,
    Open,
    /// `Close` queued; becomes `Closed` once sent.
    Closing,
    Closed,
}

/// Control message waiting to go out ahead of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Init,
    Accept,
    Open,
    Close(CloseReason, &'static str),
}

/// A network message received, with the means to resolve the peer's key ids.
pub struct Received<'m, 'k> {
    /// The lane it came on.
    pub priority: Priority,
    /// Whether the lane is reliable.
    pub reliable: bool,
    /// The message, borrowing from the received batch (or the reassembly buffer).
    pub msg: NetworkMessage<'m>,
    keys: &'k dyn KeyTable,
}

impl<'m, 'k> Received<'m, 'k> {
    /// The key expression text for a wire key: an id declared by the peer, or a full name.
    pub fn resolve(&self, key: WireKey<'m>) -> Option<&str> {
        match key {
            WireKey::Id(id) => self.keys.get(id),
            WireKey::Name(n) => Some(n),
        }
    }

    /// The key expression text bound to a peer-declared id.
    pub fn resolve_id(&self, id: u32) -> Option<&'k str> {
        self.keys.get(id)
    }
}

impl fmt::Debug for Received<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("priority", &self.priority)
            .field("reliable", &self.reliable)
            .field("msg", &self.msg)
            .finish()
    }
}

/// The per-link state machine. `B` stores queues and reassembly, `K` the peer's key ids.
pub struct Session<B: Buffer, K: KeyTable> {
    config: Config,
    role: Role,
    state: State,
    control: Option<Control>,
    peer: Option<PeerInfo>,
    batch_size: usize,
    started: Instant,
    last_rx: Instant,
    last_tx: Instant,
    keepalive_due: bool,
    random: u32,
    local_initial_sn: u32,
    sn_mask: u32,
    tx_sn: [u32; SLOTS],
    rx_sn: [u32; SLOTS],
    lanes: [LaneQueue<B>; LANES],
    reassembly: [rx::Reassembly<B>; SLOTS],
    /// The buffer of the last message delivered from fragments (see `take_reassembled`).
    reassembled: Option<B>,
    keys: K,
    next_key_id: u32,
    events: heapless::Deque<Event, 4>,
    stats: Stats,
    acks: Acking,
}

/// Acknowledgement state of a session (both directions), by lane (`Priority::index`).
#[derive(Clone, Copy, Debug, Default)]
struct Acking {
    /// Both sides agreed in the handshake.
    on: bool,
    /// Reliable messages we handed to the link, per lane.
    sent: [LaneAck; LANES],
    /// What the peer acknowledged of them.
    acked: [LaneAck; LANES],
    /// Reliable messages we received in order, per lane.
    got: [LaneAck; LANES],
    /// `got[..].messages` as of our last acknowledgement.
    told: [u32; LANES],
    /// Something arrived on a reliable lane since our last acknowledgement, at this instant.
    since: Option<Instant>,
    /// An acknowledgement is due now (a timer fired): the next transmission.
    now: bool,
    /// What the peer did not acknowledge was counted (or excused by our orderly close).
    settled: bool,
}

impl Acking {
    /// A reliable message on `lane` left in a batch.
    fn wrote(&mut self, lane: usize, data: bool) {
        if let Some(s) = self.sent.get_mut(lane) {
            s.messages = s.messages.wrapping_add(1);
            s.data = s.data.wrapping_add(u32::from(data));
        }
    }
}

/// A session with heap-backed, growable storage.
#[cfg(feature = "alloc")]
pub type HeapSession = Session<alloc::vec::Vec<u8>, HeapKeys>;

impl<B: Buffer, K: KeyTable + Default> Session<B, K> {
    /// A new session. `random` seeds the initial sequence numbers.
    pub fn new(config: Config, role: Role, now: Instant, random: u64) -> Self {
        Self::with_keys(config, role, now, random, K::default())
    }
}

impl<B: Buffer, K: KeyTable> Session<B, K> {
    /// A new session with a given key table.
    pub fn with_keys(config: Config, role: Role, now: Instant, random: u64, keys: K) -> Self {
        let random = (random ^ (random >> 32)) as u32;
        let sn_mask = sn_mask(config.sn_bits);
        let initial = random & sn_mask;
        let (state, control) = match role {
            Role::Dialer => (State::AwaitAccept, Some(Control::Init)),
            Role::Listener => (State::AwaitInit, None),
        };
        Session {
            config,
            role,
            state,
            control,
            peer: None,
            batch_size: usize::from(config.batch_size).clamp(64, limits::MAX_BATCH_SIZE),
            started: now,
            last_rx: now,
            last_tx: now,
            keepalive_due: false,
            random,
            local_initial_sn: initial,
            sn_mask,
            tx_sn: [initial; SLOTS],
            rx_sn: [0; SLOTS],
            lanes: core::array::from_fn(|_| LaneQueue::default()),
            reassembly: core::array::from_fn(|_| rx::Reassembly::default()),
            reassembled: None,
            keys,
            next_key_id: 1,
            events: heapless::Deque::new(),
            stats: Stats::default(),
            acks: Acking::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Which side we are.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True once the handshake has completed and until the session closes.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True once closed (nothing more to transmit).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The peer, once the handshake has told us who it is.
    pub fn peer(&self) -> Option<PeerInfo> {
        self.peer
    }

    /// The negotiated batch size (our configured one until the handshake completes).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Keys declared by the peer.
    pub fn remote_keys(&self) -> &K {
        &self.keys
    }

    /// Bytes held in partial reassemblies (messages whose last fragment has not arrived). A
    /// runtime adds these up across its links to enforce a node-wide budget.
    pub fn reassembly_held(&self) -> usize {
        self.reassembly
            .iter()
            .filter(|r| r.is_active())
            .map(|r| r.held())
            .sum()
    }

    /// Drops the largest partial reassembly (a node-wide budget is exceeded) and frees its
    /// memory; counted in `stats.rx_reassembly_evicted`. On a reliable lane the message cannot
    /// be skipped, so the link is closed (`TooLarge`, "reassembly budget"). Returns the bytes
    /// freed (0 if there was nothing to evict).
    pub fn evict_partial(&mut self) -> usize {
        let Some((slot, held)) = self
            .reassembly
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_active())
            .map(|(i, r)| (i, r.held()))
            .max_by_key(|(_, h)| *h)
        else {
            return 0;
        };
        if let Some(r) = self.reassembly.get_mut(slot) {
            r.evict();
        }
        self.stats.rx_reassembly_evicted += 1;
        if slot % 2 == 1 {
            crate::core_warn!("closing link: node-wide reassembly budget exceeded");
            self.close_with(
                CloseReason::TooLarge,
                "node-wide reassembly budget exceeded",
            );
        }
        held
    }

    /// Takes the buffer holding the last message reassembled from fragments (delivered by the
    /// latest `handle_input` that completed one): payload slices handed to the sink point into
    /// it, so a runtime can keep them without a copy. `None` if already taken.
    pub fn take_reassembled(&mut self) -> Option<B> {
        self.reassembled.take()
    }

    /// Bytes waiting in a lane's queue.
    pub fn queued_bytes(&self, priority: Priority) -> usize {
        self.lanes
            .get(priority.index())
            .map_or(0, LaneQueue::queued)
    }

    /// Bytes waiting in all lanes.
    pub fn total_queued_bytes(&self) -> usize {
        self.lanes.iter().map(LaneQueue::queued).sum()
    }

    /// Next state change, if any. Worth polling after any `handle_*` call or `close`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Allocates a fresh local key id and queues its declaration to the peer on the control
    /// lane. Later messages may name `key` by the returned id.
    pub fn declare_keyexpr(&mut self, key: &str) -> Result<u32, SendError> {
        let id = self.next_key_id;
        let msg = NetworkMessage::Declare(crate::wire::Declare::KeyExpr { id, key });
        self.send(Priority::Control, true, &msg)?;
        self.next_key_id = self.next_key_id.wrapping_add(1).max(1);
        Ok(id)
    }

    /// Allocates a fresh local key id without declaring it: the caller sends
    /// `Declare::KeyExpr` itself, on the lane that will use the id (so that, on a link with a
    /// stream per lane, the declaration cannot be overtaken by its first use).
    pub fn next_key_id(&mut self) -> u32 {
        let id = self.next_key_id;
        self.next_key_id = self.next_key_id.wrapping_add(1).max(1);
        id
    }

    /// True if [`poll_transmit`](Self::poll_transmit) has something to send now (a handshake
    /// or close message, or queued data). A driver uses it to skip waking its writer after
    /// input that produced nothing to send (a cross-thread wake costs more than the input).
    pub fn wants_transmit(&self) -> bool {
        self.control.is_some() || self.acks.now || self.total_queued_bytes() > 0
    }

    /// Starts an orderly close: a `Close` goes out next, then the session is closed.
    pub fn close(&mut self, reason: CloseReason) {
        self.close_with(reason, reason.as_str());
    }

    /// Like [`close`](Self::close), with a detail for the peer (e.g. the name of the cap it
    /// exceeded). The detail is static so that closing never allocates.
    pub fn close_with(&mut self, reason: CloseReason, detail: &'static str) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.begin_close_with(reason, detail, false);
    }

    fn begin_close(&mut self, reason: CloseReason, by_peer: bool) {
        self.begin_close_with(reason, reason.as_str(), by_peer);
    }

    fn begin_close_with(&mut self, reason: CloseReason, detail: &'static str, by_peer: bool) {
        crate::core_debug!("session closing: {reason} (by peer: {by_peer})");
        if by_peer {
            self.state = State::Closed;
            self.control = None;
        } else {
            self.state = State::Closing;
            self.control = Some(Control::Close(reason, detail));
        }
        self.discard_queued_only();
        if by_peer || reason == CloseReason::LeaseExpired {
            // The peer discards what we sent after its last acknowledgement (it sends one just
            // before its `Close`), or the link went silent: unconfirmed.
            self.settle_unconfirmed();
        } else {
            // Our orderly close: what we wrote goes ahead of our `Close` on a working link.
            self.acks.settled = true;
        }
        let _ = self.events.push_back(Event::Closed { reason, by_peer });
    }

    /// Empties the lanes, counting what they held in [`Stats::tx_discarded`]; returns that
    /// count. A session closing does it; a driver whose link broke calls it so that nothing
    /// queued leaves uncounted. Unless our own orderly close ended the session, what the peer
    /// never acknowledged is counted too ([`Stats::tx_unconfirmed`], once).
    pub fn discard_queued(&mut self) -> u64 {
        self.settle_unconfirmed();
        self.discard_queued_only()
    }

    /// Reliable messages written and not (yet) acknowledged by the peer: (all, data). Zero on a
    /// session without acknowledgements.
    pub fn unacknowledged(&self) -> (u64, u64) {
        if !self.acks.on {
            return (0, 0);
        }
        self.acks
            .sent
            .iter()
            .zip(&self.acks.acked)
            .fold((0, 0), |(m, d), (s, a)| {
                (
                    m + u64::from(s.messages.wrapping_sub(a.messages)),
                    d + u64::from(s.data.wrapping_sub(a.data)),
                )
            })
    }

    /// Counts what the peer never acknowledged, once.
    fn settle_unconfirmed(&mut self) {
        if self.acks.settled {
            return;
        }
        self.acks.settled = true;
        let (m, d) = self.unacknowledged();
        if m > 0 {
            crate::core_debug!("link ended with {m} message(s) unacknowledged ({d} data)");
        }
        self.stats.tx_unconfirmed += m;
        self.stats.tx_unconfirmed_data += d;
        self.acks.acked = self.acks.sent;
    }

    fn discard_queued_only(&mut self) -> u64 {
        let mut n = 0;
        for lane in &mut self.lanes {
            n += lane.messages();
            lane.clear();
        }
        self.stats.tx_discarded += n;
        n
    }

    /// When `handle_timeout` should next be called, if ever. Changes after any input, send or
    /// transmission.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed | State::Closing => None,
            State::Open => {
                let keepalive = self.last_tx + self.config.lease.div(4);
                let expiry = self.last_rx + self.peer.map_or(self.config.lease, |p| p.lease);
                let t = keepalive.min(expiry);
                Some(self.ack_due().map_or(t, |a| a.min(t)))
            }
            _ => Some(self.started + self.config.handshake_timeout),
        }
    }

    /// When the session closes for silence (the peer's lease, or the handshake's timeout)
    /// unless something arrives first; `None` once closing. Unlike
    /// [`poll_timeout`](Self::poll_timeout) this ignores keep-alives: a driver whose writer may
    /// be stuck on a socket watches it to end the link anyway.
    pub fn expiry(&self) -> Option<Instant> {
        match self.state {
            State::Closed | State::Closing => None,
            State::Open => Some(self.last_rx + self.peer.map_or(self.config.lease, |p| p.lease)),
            _ => Some(self.started + self.config.handshake_timeout),
        }
    }

    /// When an acknowledgement of what we received falls due, if one is waiting for its delay;
    /// `None` once it is due (then [`wants_transmit`](Self::wants_transmit) says so) or when
    /// there is nothing to acknowledge. Part of [`poll_timeout`](Self::poll_timeout); a driver
    /// whose reader watches the lease (see [`expiry`](Self::expiry)) watches this too, so that
    /// the writer is woken only when an acknowledgement is to be sent.
    pub fn ack_due(&self) -> Option<Instant> {
        match (self.state, self.acks.now) {
            (State::Open, false) => self.acks.since.map(|t| t + self.config.ack_delay),
            _ => None,
        }
    }

    /// Advances timers: lease expiry closes the session, silence schedules a keep-alive, an
    /// acknowledgement's delay makes it due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed | State::Closing => {}
            State::Open => {
                if self.ack_due().is_some_and(|t| now >= t) {
                    self.acks.now = true;
                }
                let peer_lease = self.peer.map_or(self.config.lease, |p| p.lease);
                if now.saturating_since(self.last_rx) >= peer_lease {
                    self.begin_close(CloseReason::LeaseExpired, false);
                } else if now.saturating_since(self.last_tx) >= self.config.lease.div(4) {
                    self.keepalive_due = true;
                }
            }
            _ => {
                if now.saturating_since(self.started) >= self.config.handshake_timeout {
                    self.begin_close(CloseReason::LeaseExpired, false);
                }
            }
        }
    }

    /// Adopts the negotiated sequence-number resolution and draws our initial number in it.
    fn negotiate_sn(&mut self, peer_bits: u8) {
        self.sn_mask = sn_mask(self.config.sn_bits.min(peer_bits));
        self.local_initial_sn = self.random & self.sn_mask;
        self.tx_sn = [self.local_initial_sn; SLOTS];
    }

    /// The negotiated sequence-number resolution, in bits.
    pub fn sn_bits(&self) -> u8 {
        (32 - self.sn_mask.leading_zeros()) as u8
    }

    fn slot(priority: Priority, reliable: bool) -> usize {
        priority.index() * 2 + usize::from(reliable)
    }

    fn check_version(&mut self, version: u8) -> bool {
        if version == PROTOCOL_VERSION {
            return true;
        }
        crate::core_warn!(
            "refusing peer: protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        );
        self.begin_close(CloseReason::UnsupportedVersion, false);
        false
    }
}

fn sn_mask(bits: u8) -> u32 {
    match bits.clamp(7, 32) {
        32 => u32::MAX,
        b => (1u32 << b) - 1,
    }
}

impl<B: Buffer, K: KeyTable> fmt::Debug for Session<B, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("peer", &self.peer)
            .field("batch_size", &self.batch_size)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
