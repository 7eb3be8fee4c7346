//! The link abstraction and the per-protocol dispatch of `listen` and `connect`.

use crate::endpoint::{Endpoint, Protocol};
use crate::tls::{TlsConfig, TlsError};
use crate::{AbortOnDrop, mem, quic, serial, stream, tlstcp, udp};
use bytes::Bytes;
use std::future::Future;
use tokio::sync::mpsc;

/// What is known about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The transport.
    pub protocol: Protocol,
    /// Our end.
    pub local: Endpoint,
    /// Their end.
    pub remote: Endpoint,
    /// Largest batch worth sending on this link (the session's batch size should not exceed it).
    pub mtu: usize,
    /// True if the link delivers every batch in order (streams); false for UDP.
    pub reliable: bool,
    /// The peer's leaf certificate (DER), only when TLS verified it against the configured CA:
    /// what the peer's access-control identity is taken from.
    pub peer_certificate: Option<std::sync::Arc<[u8]>>,
    /// Live figures only the transport knows (RTT, serial framing counters), readable while
    /// the link runs; [`LinkProbe::default`] for a link that offers none.
    pub probe: LinkProbe,
}

/// What the transport can tell about a running link, beyond what the session counts: the QUIC
/// stack's smoothed RTT, the kernel's for TCP and TLS links, a serial link's framing counters. The runtime's face keeps it (in its
/// [`LinkInfo`]) to answer the admin space and the metrics. It holds only weak references and
/// shared counters: it never keeps a link open. Not compared (`==` is always true).
#[derive(Clone, Default)]
pub struct LinkProbe {
    /// The QUIC connection; the strong reference lives in the link's sending half.
    pub(crate) quic: Option<std::sync::Weak<quinn::Connection>>,
    /// A serial link's counters, updated by its receiving half.
    pub(crate) framing: Option<std::sync::Arc<serial::SharedFraming>>,
    /// A TCP (or TLS over TCP) connection's addresses, to ask the kernel its RTT.
    pub(crate) tcp: Option<crate::tcp_rtt::TcpProbe>,
}

impl LinkProbe {
    /// The probe of a TCP connection (`tcp/` and `tls/` links).
    pub(crate) fn tcp(s: &tokio::net::TcpStream) -> LinkProbe {
        LinkProbe {
            tcp: crate::tcp_rtt::TcpProbe::of(s),
            ..LinkProbe::default()
        }
    }

    /// The link's current round-trip time: quinn's smoothed estimate on QUIC links, the
    /// kernel's (`tcpi_rtt`, through socket diagnostics: `tcp_rtt.rs`) on TCP and TLS links;
    /// `None` for other transports or once the link has gone.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        if let Some(q) = &self.quic {
            return Some(q.upgrade()?.rtt());
        }
        self.tcp.as_ref()?.rtt()
    }

    /// A serial link's framing counters (frames, CRC and COBS errors, overflows) so far;
    /// `None` for other transports.
    pub fn framing(&self) -> Option<hypha_core::framing::FramingStats> {
        self.framing.as_ref().map(|f| f.load())
    }
}

impl PartialEq for LinkProbe {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LinkProbe {}

impl std::fmt::Debug for LinkProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkProbe")
            .field("rtt", &self.rtt())
            .field("framing", &self.framing())
            .finish()
    }
}

/// Why TLS refused a link, from our verifier or the peer's alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsCause {
    /// The certificate does not chain to the trusted CA (or is self-signed).
    UnknownCa,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// The peer's TLS alert says expired, which TLS also sends for not yet valid (over TCP the
    /// alert is all the peer tells).
    OutsideValidity,
    /// The listener demands a client certificate and none was sent.
    CertificateRequired,
    /// The certificate was revoked.
    Revoked,
    /// The certificate is malformed, of the wrong kind (a CA used as a leaf, a wrong key
    /// usage) or otherwise refused.
    BadCertificate,
    /// Another handshake failure (no common protocol version, wrong ALPN, ...).
    Other,
}

impl TlsCause {
    /// From a TLS alert number (RFC 8446 §6) and the error text.
    pub fn from_alert(alert: Option<u8>, text: &str) -> TlsCause {
        if text.contains("NotValidYet") || text.contains("not valid yet") {
            return TlsCause::NotYetValid;
        }
        if text.contains("alert: CertificateExpired") {
            return TlsCause::OutsideValidity;
        }
        if text.contains("Expired") || text.contains("expired") {
            return TlsCause::Expired;
        }
        if text.contains("UnknownIssuer") || text.contains("UnknownCA") {
            return TlsCause::UnknownCa;
        }
        if text.contains("CertificateRequired") {
            return TlsCause::CertificateRequired;
        }
        if text.contains("BadCertificate") || text.contains("BadSignature") {
            return TlsCause::BadCertificate;
        }
        match alert {
            Some(48) => TlsCause::UnknownCa,
            Some(45) => TlsCause::Expired,
            Some(116) => TlsCause::CertificateRequired,
            Some(44) => TlsCause::Revoked,
            Some(42 | 43 | 46) => TlsCause::BadCertificate,
            _ => TlsCause::Other,
        }
    }
}

impl std::fmt::Display for TlsCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsCause::UnknownCa => "certificate not signed by the trusted CA",
            TlsCause::Expired => "certificate expired",
            TlsCause::NotYetValid => "certificate not valid yet",
            TlsCause::OutsideValidity => "certificate expired or not valid yet",
            TlsCause::CertificateRequired => "client certificate required",
            TlsCause::Revoked => "certificate revoked",
            TlsCause::BadCertificate => "certificate refused",
            TlsCause::Other => "handshake failed",
        })
    }
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer closed the link (or its process ended).
    #[error("link closed by the peer")]
    Closed,
    /// An I/O error on the socket.
    #[error("link i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not start with Hypha's preamble.
    #[error("peer is not a Hypha node: bad preamble {0:?}")]
    BadPreamble(Vec<u8>),
    /// A batch length of zero or above the cap.
    #[error("peer sent a batch of invalid length {0}")]
    BadLength(usize),
    /// A batch to send exceeds what the link carries.
    #[error("batch of {0} bytes exceeds the link's limit")]
    TooLarge(usize),
    /// A QUIC-level failure.
    #[error("quic: {0}")]
    Quic(String),
    /// The peer's TLS refused us after the handshake looked complete (TLS 1.3 checks the
    /// client's certificate last): why.
    #[error("TLS refused by the peer: {cause}: {reason}")]
    Tls {
        /// Why, as a type.
        cause: TlsCause,
        /// The peer's words.
        reason: String,
    },
    /// The peer did not complete the link setup in time.
    #[error("link setup timed out")]
    Timeout,
    /// This kind of link does not offer the operation.
    #[error("this link does not support {0}")]
    Unsupported(&'static str),
}

/// Why `listen` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Could not bind.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint's host must be resolved first or is not local.
    #[error("cannot listen on {0}: {1}")]
    Address(Endpoint, String),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why `connect` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Could not resolve or reach the address.
    #[error("cannot connect to {endpoint}: {source}")]
    Io {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
    /// The peer was reached but the link could not be set up.
    #[error("cannot set up a link to {endpoint}: {source}")]
    Link {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: LinkError,
    },
    /// TLS refused the peer (certificate verification failed, or we were refused).
    #[error("TLS refused the link to {endpoint}: {cause}: {reason}")]
    Tls {
        /// Where.
        endpoint: Endpoint,
        /// Why, as a type.
        cause: TlsCause,
        /// The verifier's words.
        reason: String,
    },
    /// TLS setup failed locally.
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
    /// Nobody listens on that in-memory name.
    #[error("nothing listens on {0}")]
    NoListener(Endpoint),
    /// No answer in time.
    #[error("connecting to {0} timed out")]
    Timeout(Endpoint),
}

/// Sends batches.
pub trait LinkSend: Send {
    /// Sends one batch (one transport message). Returns once it is handed to the OS or the QUIC
    /// stack; waits while the link applies back-pressure.
    fn send(&mut self, batch: &[u8]) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Closes our side of the link; the peer's `recv` then returns [`LinkError::Closed`].
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Receives batches.
pub trait LinkRecv: Send {
    /// Receives one batch. Never returns an empty batch.
    fn recv(&mut self) -> impl Future<Output = Result<Bytes, LinkError>> + Send;
}

/// The sending half of any link.
#[derive(Debug)]
pub enum LinkTx {
    /// TCP or unix.
    Stream(stream::StreamTx),
    /// UDP.
    Udp(udp::UdpTx),
    /// QUIC.
    Quic(quic::QuicTx),
    /// In-process.
    Mem(mem::MemTx),
    /// Serial framing (COBS + CRC) over a byte stream.
    Serial(serial::SerialTx),
}

/// The receiving half of any link.
#[derive(Debug)]
pub enum LinkRx {
    /// TCP or unix.
    Stream(stream::StreamRx),
    /// UDP.
    Udp(udp::UdpRx),
    /// QUIC.
    Quic(quic::QuicRx),
    /// In-process.
    Mem(mem::MemRx),
    /// Serial framing (COBS + CRC) over a byte stream.
    Serial(serial::SerialRx),
}

impl LinkTx {
    /// True if this link can write a batch without waiting ([`try_send`](Self::try_send)):
    /// TCP and unix streams, and QUIC (into quinn's stream buffer, the connection's driver
    /// then run on the caller's thread: see [`quic_driver`](crate::quic_driver)). Others
    /// always go through `send`.
    pub fn can_try_send(&self) -> bool {
        matches!(self, LinkTx::Stream(t) if t.direct()) || matches!(self, LinkTx::Quic(_))
    }

    /// True if part of a batch given to `try_send` still waits to be written (finish it with
    /// [`flush`](Self::flush) before the next `try_send` can succeed).
    pub fn has_pending(&self) -> bool {
        match self {
            LinkTx::Stream(t) => t.has_pending(),
            LinkTx::Quic(t) => t.has_pending(),
            _ => false,
        }
    }

    /// Writes one batch at once, on the caller's thread, if the socket takes it: `Ok(true)`
    /// when written entirely; `Ok(false)` when it is kept (wholly or in part) for
    /// [`flush`](Self::flush). Only for links where [`can_try_send`](Self::can_try_send); other
    /// links answer [`LinkError::Unsupported`] without taking the batch.
    pub fn try_send(&mut self, batch: &[u8]) -> Result<bool, LinkError> {
        check_batch(batch)?;
        match self {
            LinkTx::Stream(t) if t.direct() => t.try_send(batch),
            LinkTx::Quic(t) => t.try_send(batch),
            _ => Err(LinkError::Unsupported("try_send")),
        }
    }

    /// True if this link writes two batches in one go ([`send_pair`](Self::send_pair),
    /// [`try_send_pair`](Self::try_send_pair)): stream links, where the batches share one byte
    /// stream. Other links take each batch alone.
    pub fn pairs_batches(&self) -> bool {
        matches!(self, LinkTx::Stream(_))
    }

    /// `a` then `b` in one write ([`pairs_batches`](Self::pairs_batches) links; others send
    /// them one after the other).
    pub async fn send_pair(&mut self, a: &[u8], b: &[u8]) -> Result<(), LinkError> {
        check_batch(a)?;
        check_batch(b)?;
        match self {
            LinkTx::Stream(t) => t.send_pair(a, b).await,
            _ => {
                self.send(a).await?;
                self.send(b).await
            }
        }
    }

    /// [`try_send`](Self::try_send) of `a` then `b` in one write, on
    /// [`pairs_batches`](Self::pairs_batches) links only: what the socket does not take of
    /// either is kept, as for one batch.
    pub fn try_send_pair(&mut self, a: &[u8], b: &[u8]) -> Result<bool, LinkError> {
        check_batch(a)?;
        check_batch(b)?;
        match self {
            LinkTx::Stream(t) if t.direct() => t.try_send_pair(a, b),
            _ => Err(LinkError::Unsupported("try_send_pair")),
        }
    }

    /// Lanes whose own stream is full (bit `i` for `Priority::index() == i`): the caller should
    /// give this link nothing more for them until [`progress`](Self::progress) returns. Only
    /// QUIC links, which write every lane to its own stream, block a lane alone; on the others
    /// the whole link waits in `send`.
    pub fn blocked_lanes(&self) -> u8 {
        match self {
            LinkTx::Quic(t) => t.blocked_lanes(),
            _ => 0,
        }
    }

    /// Waits until a lane of [`blocked_lanes`](Self::blocked_lanes) can take more (at once if
    /// none is blocked).
    pub async fn progress(&mut self) -> Result<(), LinkError> {
        match self {
            LinkTx::Quic(t) => t.progress().await,
            _ => Ok(()),
        }
    }

    /// Finishes writing what `try_send` kept (on QUIC: a `Close`; the rest of a lane's batch
    /// is written by [`progress`](Self::progress), as that lane is blocked).
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        match self {
            LinkTx::Stream(t) => t.flush().await,
            LinkTx::Quic(t) => t.flush().await,
            _ => Ok(()),
        }
    }
}

impl LinkSend for LinkTx {
    async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        check_batch(batch)?;
        match self {
            LinkTx::Stream(t) => t.send(batch).await,
            LinkTx::Udp(t) => t.send(batch).await,
            LinkTx::Quic(t) => t.send(batch).await,
            LinkTx::Mem(t) => t.send(batch).await,
            LinkTx::Serial(t) => t.send(batch).await,
        }
    }

    async fn close(&mut self) {
        match self {
            LinkTx::Stream(t) => t.close().await,
            LinkTx::Udp(t) => t.close().await,
            LinkTx::Quic(t) => t.close().await,
            LinkTx::Mem(t) => t.close().await,
            LinkTx::Serial(t) => t.close().await,
        }
    }
}

impl LinkRecv for LinkRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        match self {
            LinkRx::Stream(r) => r.recv().await,
            LinkRx::Udp(r) => r.recv().await,
            LinkRx::Quic(r) => r.recv().await,
            LinkRx::Mem(r) => r.recv().await,
            LinkRx::Serial(r) => r.recv().await,
        }
    }
}

/// A link: what it is, and its two halves.
#[derive(Debug)]
pub struct Link {
    /// Endpoints, MTU, reliability.
    pub info: LinkInfo,
    /// Sending half.
    pub tx: LinkTx,
    /// Receiving half.
    pub rx: LinkRx,
}

/// Accepts links on one endpoint. Dropping it stops listening.
#[derive(Debug)]
pub struct Listener {
    local: Endpoint,
    incoming: mpsc::Receiver<Link>,
    _tasks: Vec<AbortOnDrop>,
    _guard: Option<mem::MemGuard>,
}

impl Listener {
    pub(crate) fn new(
        local: Endpoint,
        incoming: mpsc::Receiver<Link>,
        tasks: Vec<AbortOnDrop>,
        guard: Option<mem::MemGuard>,
    ) -> Self {
        Listener {
            local,
            incoming,
            _tasks: tasks,
            _guard: guard,
        }
    }

    /// The endpoint really bound (port 0 replaced by the port the OS picked).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// The next link set up by a peer. Peers that fail the setup (preamble, TLS) are logged and
    /// skipped; `None` once the listener has stopped.
    pub async fn accept(&mut self) -> Option<Link> {
        self.incoming.recv().await
    }
}

/// Starts listening on `endpoint`.
pub async fn listen(endpoint: &Endpoint, tls: &TlsConfig) -> Result<Listener, ListenError> {
    match endpoint.protocol() {
        Protocol::Tcp => stream::listen_tcp(endpoint).await,
        Protocol::Unix => stream::listen_unix(endpoint).await,
        Protocol::Udp => udp::listen(endpoint).await,
        Protocol::Quic => quic::listen(endpoint, tls).await,
        Protocol::Mem => mem::listen(endpoint),
        Protocol::SerialTcp => serial::listen_tcp(endpoint).await,
        Protocol::Serial => serial::listen_tty(endpoint),
        Protocol::Tls => tlstcp::listen(endpoint, tls).await,
    }
}

/// Connects to `endpoint`.
pub async fn connect(endpoint: &Endpoint, tls: &TlsConfig) -> Result<Link, ConnectError> {
    let fut = async {
        match endpoint.protocol() {
            Protocol::Tcp => stream::connect_tcp(endpoint).await,
            Protocol::Unix => stream::connect_unix(endpoint).await,
            Protocol::Udp => udp::connect(endpoint).await,
            Protocol::Quic => quic::connect(endpoint, tls).await,
            Protocol::Mem => mem::connect(endpoint).await,
            Protocol::SerialTcp => serial::connect_tcp(endpoint).await,
            Protocol::Serial => serial::connect_tty(endpoint).await,
            Protocol::Tls => tlstcp::connect(endpoint, tls).await,
        }
    };
    tokio::time::timeout(crate::SETUP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(ConnectError::Timeout(endpoint.clone())))
}

/// The first address `endpoint` resolves to.
pub(crate) async fn resolve_one(endpoint: &Endpoint) -> Result<std::net::SocketAddr, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    endpoint
        .resolve()
        .await
        .map_err(io)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "host resolves to no address",
            ))
        })
}

/// A batch a link can carry: not empty, at most `MAX_BATCH` bytes.
fn check_batch(batch: &[u8]) -> Result<(), LinkError> {
    if batch.is_empty() || batch.len() > crate::MAX_BATCH {
        return Err(LinkError::TooLarge(batch.len()));
    }
    Ok(())
}
