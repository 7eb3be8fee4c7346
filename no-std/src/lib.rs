//! # hypha-nostd
//!
//! The device node: a Hypha **client** for microcontrollers. It attaches to one std node (a
//! router or a peer) over a byte stream — a UART, or QEMU's UART on a TCP socket — and speaks
//! the same wire as every other node (`hypha_core::wire`), so the std side sees an ordinary
//! client and filters for it: only samples matching the device's subscriptions cross the slow
//! link.
//!
//! - `#![no_std]`, `#![forbid(unsafe_code)]`, **never allocates** (no `alloc` in its graph: a
//!   firmware linked without a global allocator proves it, see `no-std/firmware/`), no
//!   `core::fmt` on any path the firmware uses.
//! - **Sans-IO** (quinn-proto style): bytes from the line go in through
//!   [`Node::handle_rx`]; framed bytes for the line come out of [`Node::poll_transmit`];
//!   what happened comes out of [`Node::poll_event`], borrowing the receive buffer (zero copy,
//!   no callbacks); [`Node::poll_timeout`] says when to call again. Time is an argument
//!   (microseconds from any monotonic counter, e.g. a 1 kHz SysTick).
//! - **Caller-provided buffers** ([`rx_buffer_len`], [`tx_buffer_len`] for an MTU) and const
//!   generic capacities: `Node<SUBS, QABLES, GETS, KEYS>`.
//! - **Back-pressure** is [`Error::WouldBlock`]: a verb that finds the transmit batch full
//!   refuses, and nothing is ever dropped silently. Call `poll_transmit`, write it out, retry.
//! - **Client mode**: the handshake (`Init` re-sent every `init_interval` until `Accept`),
//!   lease and keep-alives, and reconnection: after a lease expiry, a `Close`, or a device
//!   reboot (the fresh `Init` on a live link makes the std side drop the old session), every
//!   declaration is replayed on the new session.
//!
//! The framing (`0x00 COBS(batch | CRC-32) 0x00`) is `hypha_core::framing`, the same code the
//! std `serial+tcp/` and `serial/` links run.
//!
//! A device with a network stack uses datagrams instead: [`Node::poll_transmit_datagram`]
//! gives each batch unframed, to send as one UDP datagram, and [`Node::handle_datagram`]
//! takes one received datagram; the std side is an ordinary `udp/` listener (one batch per
//! datagram, the UDP checksum in place of the CRC). A firmware that uses one form carries
//! none of the other.
//!
//! The optional `embassy` feature (off by default, outside the footprint gate) adds
//! `io_async`: the node driven over any `embedded_io_async` Read + Write, with a clock
//! passed in (executor-agnostic).
//!
//! ```
//! use hypha_core::id::NodeId;
//! use hypha_core::time::Instant;
//! use hypha_nostd::{Config, Event, Node, rx_buffer_len, tx_buffer_len};
//!
//! let mut rx = [0u8; rx_buffer_len(256)];
//! let mut tx = [0u8; tx_buffer_len(256)];
//! let mut node: Node<'_, 4, 2, 2, 4> = Node::new(Config::new(NodeId::from_u128(7)), &mut rx, &mut tx);
//! let temp = node.declare_publisher("device/temp").unwrap();
//! let _ctl = node.declare_subscriber("ctl/**").unwrap();
//! let now = Instant::ZERO;
//! // The first transmission is the handshake's Init, framed for the line.
//! let init = node.poll_transmit(now).unwrap();
//! assert_eq!((init[0], *init.last().unwrap()), (0, 0));
//! // Not connected yet: a put is refused, not dropped.
//! assert_eq!(node.put(temp, b"21.5"), Err(hypha_nostd::Error::NotConnected));
//! assert!(node.poll_event().is_none());
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(feature = "embassy")]
pub mod io_async;
mod ke;
mod node;
#[cfg(test)]
mod one_wire;
#[cfg(test)]
mod tests;
mod wire;

pub use hypha_core::framing::FramingStats;
pub use hypha_core::time::{Duration, Instant};
pub use hypha_core::wire::{CloseReason, SampleKind};
pub use node::Node;

use hypha_core::framing::{deframer_len, encoded_len};
use hypha_core::id::NodeId;

/// Bytes reserved in front of the staged messages for the frame header.
const STAGE_OFFSET: usize = 6;

/// Length of the receive buffer for batches of up to `mtu` bytes.
pub const fn rx_buffer_len(mtu: usize) -> usize {
    deframer_len(mtu)
}

/// Length of the transmit buffer for batches of up to `mtu` bytes: the batch being built and
/// its framed copy.
pub const fn tx_buffer_len(mtu: usize) -> usize {
    STAGE_OFFSET + mtu + encoded_len(mtu)
}

/// Most keys the std side may name by id at once (it declares one per key and lane it sends
/// on); past that the oldest binding is replaced and counted (`Stats::keys_evicted`).
pub const REMOTE_KEYS: usize = 4;
/// Longest key the std side may bind to an id; a longer one is counted and its samples are
/// dropped with `Stats::rx_unknown_key`.
pub const REMOTE_KEY_LEN: usize = 48;
/// Liveliness tokens a node may hold.
pub const TOKENS: usize = 2;

/// Parameters of a [`Node`].
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// This device's node id.
    pub node_id: NodeId,
    /// Largest batch sent and accepted, in bytes (64 to 65,535; the buffers must be sized for
    /// it with [`rx_buffer_len`] and [`tx_buffer_len`]).
    pub mtu: u16,
    /// The device's lease, in milliseconds: the std side drops the link after this long
    /// without a byte from the device; the device sends a keep-alive after `lease / 4` of
    /// silence. (Milliseconds as `u32`: no 64-bit division in the image.)
    pub lease_ms: u32,
    /// How often `Init` is re-sent until the std side accepts, in milliseconds.
    pub init_interval_ms: u32,
    /// Seeds the initial sequence number (any value; a hardware RNG or a boot counter).
    pub seed: u32,
}

impl Config {
    /// MTU 256, lease 3 s, `Init` every 250 ms.
    pub const fn new(node_id: NodeId) -> Self {
        Config {
            node_id,
            mtu: 256,
            lease_ms: 3_000,
            init_interval_ms: 250,
            seed: 0,
        }
    }
}

/// Why a verb was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The transmit batch is full: call [`Node::poll_transmit`], write its bytes, retry.
    WouldBlock,
    /// Not connected to the std node (yet, or any more). Declarations are kept and replayed
    /// on connection; puts, gets and replies are refused.
    NotConnected,
    /// A capacity (`SUBS`, `QABLES`, `GETS`, `KEYS`, [`TOKENS`]) is exhausted.
    Full,
    /// The message can never fit in one batch of the MTU.
    TooLarge,
    /// The key expression is not valid canonical Hypha syntax.
    InvalidKey,
    /// The buffers are smaller than the MTU needs.
    BufferTooSmall,
}

impl Error {
    /// A short description (no `core::fmt` needed).
    pub const fn as_str(self) -> &'static str {
        match self {
            Error::WouldBlock => "transmit batch full",
            Error::NotConnected => "not connected",
            Error::Full => "capacity exhausted",
            Error::TooLarge => "message larger than the MTU",
            Error::InvalidKey => "invalid key expression",
            Error::BufferTooSmall => "buffers too small for the MTU",
        }
    }
}

/// A subscription, by declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubId(pub u8);
/// A queryable, by declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QableId(pub u8);
/// A declared publication key (a numeric key id on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyId(pub u8);
/// A liveliness token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenId(pub u8);
/// A query this device sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetId(pub u32);
/// A query this device received, to answer with [`Node::reply`] and [`Node::reply_final`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryId(pub u32);

/// The subscriptions a sample matches, as a bit set (bit `i` for `SubId(i)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubSet(pub u32);

impl SubSet {
    /// True if `sub` is in the set.
    pub const fn contains(self, sub: SubId) -> bool {
        sub.0 < 32 && self.0 & (1 << sub.0) != 0
    }
}

/// What happened. Borrows the node (the receive buffer): handle it before the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The handshake completed; declarations are being replayed.
    Connected,
    /// The session ended; the node reconnects by itself.
    Disconnected {
        /// Why.
        reason: CloseReason,
        /// True if the std side closed it.
        by_peer: bool,
    },
    /// A sample for one or more subscriptions.
    Sample {
        /// The matching subscriptions.
        subs: SubSet,
        /// Put or delete.
        kind: SampleKind,
        /// Its key.
        key: &'a str,
        /// Its payload.
        payload: &'a [u8],
    },
    /// A query for a queryable: answer with `reply` (any number) then `reply_final`.
    Query {
        /// The query, for the answers.
        id: QueryId,
        /// The (first) matching queryable.
        qable: QableId,
        /// What is asked for.
        key: &'a str,
        /// Selector parameters.
        params: &'a str,
    },
    /// A reply to a get.
    Reply {
        /// The get.
        get: GetId,
        /// The reply's key.
        key: &'a str,
        /// The payload.
        payload: &'a [u8],
    },
    /// An error reply to a get.
    ReplyErr {
        /// The get.
        get: GetId,
        /// The error payload.
        payload: &'a [u8],
    },
    /// No more replies to a get (all answered, timed out, or the link went).
    ReplyEnd {
        /// The get.
        get: GetId,
    },
}

/// Counters of a [`Node`] (framing errors are in [`Node::framing`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions opened.
    pub connects: u32,
    /// Frames (with network messages) sent.
    pub tx_frames: u32,
    /// Keep-alives sent.
    pub tx_keepalives: u32,
    /// Batches received and accepted.
    pub rx_batches: u32,
    /// Frames lost on best-effort lanes (sequence gaps).
    pub rx_lost: u32,
    /// Duplicate frames dropped.
    pub rx_duplicates: u32,
    /// Fragments dropped: a message larger than the MTU cannot be reassembled here.
    pub rx_too_large: u32,
    /// Samples or queries on a key id the node does not hold (evicted or too long).
    pub rx_unknown_key: u32,
    /// Key-id bindings replaced because the table was full.
    pub keys_evicted: u32,
    /// Batches that passed the CRC but did not decode (the session is then closed).
    pub rx_malformed: u32,
    /// Messages owed to the std side (interest or query finals) that found no room and were
    /// given up (the std side's own deadline then ends what waits on them).
    pub owed_dropped: u32,
}
