//! # hypha-transports
//!
//! Links that carry Hypha's batches between nodes, and zero-configuration discovery. This crate
//! moves bytes; it knows nothing of routing. Every batch is one transport message produced by
//! `hypha_core::session` (at most 65,535 bytes).
//!
//! - [`Endpoint`]: `quic/HOST:PORT`, `tcp/HOST:PORT`, `udp/HOST:PORT`, `unix/PATH`, `mem/NAME`,
//!   `serial+tcp/HOST:PORT`, `serial/PATH#baud=N`.
//! - [`listen`] / [`connect`]: a [`Listener`] yields [`Link`]s; a link splits into a [`LinkTx`]
//!   (send a batch) and a [`LinkRx`] (receive a batch) owned by one driver task each, or one
//!   task using both with `select!`. Native `async fn`s, no allocation per batch on the
//!   stream transports' hot path.
//! - **QUIC** (quinn + rustls, ring provider): TLS 1.3 always; one unidirectional stream per
//!   priority lane (so bulk transfers never delay real-time traffic), QUIC datagrams for
//!   best-effort lanes, falling back to the lane's stream when a batch exceeds the datagram
//!   size. Without certificates a node generates a self-signed one and logs it; with a CA, peers
//!   are verified, and mutual TLS is available ([`TlsConfig`]).
//! - **TCP** and **unix**: a preamble (`HYPHA/1\n`) then batches prefixed by their length
//!   (u16, little-endian), `TCP_NODELAY`; read in large chunks and split without copying.
//! - **UDP**: one batch per datagram, best effort; an empty datagram says "closing".
//! - **TLS over TCP** (`tls/HOST:PORT`): TLS 1.3 with the QUIC links' certificates (and mutual
//!   TLS), then the TCP framing inside; for networks that block UDP.
//! - **mem**: in-process channels, for tests.
//! - **serial+tcp** ([`serial`]): batches framed `0x00 COBS(batch | CRC-32) 0x00` (the device
//!   node's framing, `hypha_core::framing`) over TCP, how an emulated board's UART is reached;
//!   the device opens the session ([`Protocol::far_end_opens`]).
//! - [`discovery`]: mDNS (`_hypha._udp.local.`) announcements and browsing, turned into found /
//!   lost events; [`dialer`]: parallel dialing with backoff that never dials itself or a node
//!   it is already connected to.

#![warn(missing_docs)]

pub mod dialer;
pub mod discovery;
mod endpoint;
mod link;
mod mem;
mod quic;
mod quic_cc;
pub mod quic_driver;
pub mod serial;
mod stream;
mod tcp_rtt;
mod tls;
mod tlstcp;
mod udp;

pub use endpoint::{Endpoint, EndpointError, Host, Protocol};
pub use link::{
    ConnectError, Link, LinkError, LinkInfo, LinkProbe, LinkRecv, LinkRx, LinkSend, LinkTx,
    ListenError, Listener, TlsCause, connect, listen,
};
pub use tls::{TlsConfig, TlsError};

/// Time allowed to set up a link (TCP connect + preamble, QUIC + TLS handshake).
pub const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest batch any link carries.
pub const MAX_BATCH: usize = hypha_core::wire::limits::MAX_BATCH_SIZE;

/// The lane a batch travels on, read from its header byte: transport control messages go on the
/// reliable control lane, frames and fragments on their own lane.
pub fn batch_lane(batch: &[u8]) -> (hypha_core::wire::Priority, bool) {
    let h = batch.first().copied().unwrap_or(0);
    if h & 7 >= 5 {
        (hypha_core::wire::Priority::from_bits(h >> 3), h & 0x40 != 0)
    } else {
        (hypha_core::wire::Priority::Control, true)
    }
}

/// Aborts a spawned task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
