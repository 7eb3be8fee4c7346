//! QUIC links (quinn): TLS 1.3, one unidirectional stream per priority lane, datagrams for
//! best-effort lanes.
//!
//! Each lane's stream is opened on first use and given a QUIC stream priority that follows the
//! lane, so a bulk transfer on a low lane never delays real-time traffic on a high one. Batches
//! of best-effort lanes go as QUIC datagrams when they fit, else on their lane's stream.

use crate::AbortOnDrop;
use crate::endpoint::{Endpoint, Host, Protocol};
use crate::link::{ConnectError, Link, LinkError, LinkInfo, LinkRx, LinkTx, ListenError, Listener};
use crate::stream::StreamRx;
use crate::tls::TlsConfig;
use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Priority lanes (one stream each).
const LANES: usize = hypha_core::session::LANES;

/// Header kind of a `Close` transport message (see `core/WIRE.md`).
const CLOSE_KIND: u8 = 3;
/// Header kind of a `Frame` (whole messages; fragments are kinds 6 and 7).
const FRAME_KIND: u8 = 5;

/// Sending half of a QUIC link.
#[derive(Debug)]
pub struct QuicTx {
    conn: quinn::Connection,
    streams: Box<[Option<quinn::SendStream>; LANES]>,
    buf: Vec<u8>,
    /// Per lane, the part of the last batch its stream did not take yet (flow control or the
    /// send window): the writer waits for it with [`QuicTx::progress`] while it keeps serving
    /// the other lanes, and asks the session for nothing more on that lane
    /// ([`QuicTx::blocked_lanes`]) — a bulk lane never holds a real-time one back.
    pending: Box<[Pending; LANES]>,
    /// A `Close` given to [`QuicTx::try_send`] (and any batch after it): it waits for the
    /// other lanes, so the writer sends it ([`QuicTx::flush`]).
    held_close: Vec<Vec<u8>>,
    /// Keeps the client endpoint alive for dialled links.
    _endpoint: Option<quinn::Endpoint>,
    /// The one strong reference behind the link's [`LinkProbe`](crate::LinkProbe) (its RTT):
    /// the probe's weak one fails once this half is gone.
    _probe: Arc<quinn::Connection>,
}

/// Receiving half of a QUIC link.
///
/// The link's reader polls the lanes' streams itself, most urgent lane first (and the
/// connection's datagrams, which carry best-effort batches): [`QuicRx::recv`] hands out a
/// batch of the most urgent lane that has one, so a real-time batch never waits behind bulk
/// already received, and a lane whose batches are not taken stays in quinn's stream buffer,
/// where QUIC flow control holds back only that stream at the sender. There is no task per
/// stream: each batch went through one, and a channel, on its way to the link's reader (a
/// same-thread hop: no latency gain measured, BENCHMARKS.md, "QUIC receive without a task per
/// stream"), and a `Close` could overtake batches those tasks had not yet read.
pub struct QuicRx {
    conn: quinn::Connection,
    /// The next incoming stream; `None` once the connection has failed.
    accept: Option<Accept>,
    /// The next datagram; `None` once the connection has failed.
    datagram: Option<NextDatagram>,
    /// A datagram read and not handed out yet (a more urgent lane's stream had a batch).
    held: Option<Bytes>,
    /// Incoming streams in order of lane (`Priority::index()`), those whose lane is not known
    /// yet (no batch read) first.
    streams: Vec<LaneStream>,
    /// A `Close` taken from the control stream, handed out once the other lanes are empty.
    close: Option<Bytes>,
    /// The connection's failure, reported once nothing received before it is left.
    error: Option<LinkError>,
    /// The failure was reported: later calls say `Closed`.
    ended: bool,
}

type Accept = std::pin::Pin<
    Box<dyn Future<Output = Result<quinn::RecvStream, quinn::ConnectionError>> + Send + Sync>,
>;
type NextDatagram =
    std::pin::Pin<Box<dyn Future<Output = Result<Bytes, quinn::ConnectionError>> + Send + Sync>>;

/// One incoming stream (one lane of the peer's) and its framing.
struct LaneStream {
    rx: StreamRx,
    /// Learnt from its first batch.
    lane: Option<usize>,
}

impl std::fmt::Debug for QuicRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicRx")
            .field(
                "streams",
                &self.streams.iter().map(|s| s.lane).collect::<Vec<_>>(),
            )
            .field("held", &self.held.as_ref().map(Bytes::len))
            .field("close", &self.close.is_some())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

fn accept(conn: &quinn::Connection) -> Accept {
    let c = conn.clone();
    Box::pin(async move { c.accept_uni().await })
}

fn next_datagram(conn: &quinn::Connection) -> NextDatagram {
    let c = conn.clone();
    Box::pin(async move { c.read_datagram().await })
}

/// What a lane's stream has not taken yet of its last batch.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    off: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.off >= self.buf.len()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.off = 0;
        if self.buf.capacity() > crate::MAX_BATCH + 2 {
            self.buf.shrink_to(crate::MAX_BATCH + 2);
        }
    }
}

/// One write attempt that does not wait; the connection's driver runs on this thread (see
/// [`quic_driver`](crate::quic_driver)).
fn write_now(
    stream: &mut quinn::SendStream,
    buf: &[u8],
    cx: &mut Context<'_>,
) -> Poll<Result<usize, quinn::WriteError>> {
    crate::quic_driver::drive_inline(|| std::pin::Pin::new(stream).poll_write(cx, buf))
}

/// Writes what the stream takes of `buf` now; returns how much.
fn write_some(
    stream: &mut quinn::SendStream,
    buf: &[u8],
    cx: &mut Context<'_>,
) -> Result<usize, LinkError> {
    let mut off = 0;
    while off < buf.len() {
        match write_now(stream, &buf[off..], cx) {
            Poll::Ready(Ok(n)) if n > 0 => off += n,
            Poll::Ready(Ok(_)) | Poll::Pending => break,
            Poll::Ready(Err(e)) => return Err(write_err(e)),
        }
    }
    Ok(off)
}

fn write_err(e: quinn::WriteError) -> LinkError {
    match e {
        quinn::WriteError::ConnectionLost(c) => conn_err(c),
        other => quic_err(other),
    }
}

fn quic_err(e: impl std::fmt::Display) -> LinkError {
    LinkError::Quic(e.to_string())
}

fn conn_err(e: quinn::ConnectionError) -> LinkError {
    if let quinn::ConnectionError::ConnectionClosed(c) = &e {
        let code = u64::from(c.error_code);
        if (0x100..=0x1ff).contains(&code) {
            let reason = c.to_string();
            return LinkError::Tls {
                cause: crate::link::TlsCause::from_alert(Some((code - 0x100) as u8), &reason),
                reason,
            };
        }
    }
    match e {
        quinn::ConnectionError::ApplicationClosed(_)
        | quinn::ConnectionError::ConnectionClosed(_)
        | quinn::ConnectionError::Reset
        | quinn::ConnectionError::LocallyClosed => LinkError::Closed,
        quinn::ConnectionError::TimedOut => LinkError::Timeout,
        other => quic_err(other),
    }
}

impl QuicTx {
    pub(crate) async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        if is_close(batch) {
            // A `Close` travels on the control stream; batches still in flight on the other
            // lanes' streams could arrive after it and be lost. Finish those streams and wait
            // (bounded) until the peer has read them to the end, then send the `Close`.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_pending()).await;
            self.drain_lanes().await;
        }
        let (priority, reliable) = crate::batch_lane(batch);
        if let Some(r) = self.try_datagram(batch, reliable) {
            return r;
        }
        let lane = priority.index();
        let stream = match self.streams.get_mut(lane) {
            Some(Some(s)) => s,
            Some(slot) => {
                let s = self.conn.open_uni().await.map_err(conn_err)?;
                // Higher value = served first; lane 0 is the most urgent.
                let _ = s.set_priority(8 - lane as i32);
                slot.insert(s)
            }
            None => return Err(quic_err("bad lane")),
        };
        let len = u16::try_from(batch.len()).map_err(|_| LinkError::TooLarge(batch.len()))?;
        let pending = self
            .pending
            .get_mut(lane)
            .ok_or_else(|| quic_err("bad lane"))?;
        if !pending.is_empty() {
            // The writer asked for this lane while it was blocked: finish the earlier batch
            // first (order within a lane), waiting if need be.
            std::future::poll_fn(|cx| {
                while !pending.is_empty() {
                    match write_now(stream, &pending.buf[pending.off..], cx) {
                        Poll::Ready(Ok(n)) => pending.off += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(write_err(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Poll::Ready(Ok(()))
            })
            .await?;
            pending.clear();
        }
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(batch);
        // Take what the stream accepts now; keep the rest for `progress`.
        let off = std::future::poll_fn(|cx| Poll::Ready(write_some(stream, &self.buf, cx))).await?;
        if off < self.buf.len() {
            pending.buf.clear();
            pending.buf.extend_from_slice(&self.buf[off..]);
            pending.off = 0;
        }
        Ok(())
    }

    /// A best-effort batch as a datagram, if it is one whole frame that fits; `None` if it
    /// must take its lane's stream instead. Only whole frames go as datagrams: the fragments of
    /// one message all take the lane's stream, so a small last fragment cannot overtake the
    /// others and break reassembly.
    fn try_datagram(&mut self, batch: &[u8], reliable: bool) -> Option<Result<(), LinkError>> {
        let whole = batch.first().is_some_and(|h| h & 7 == FRAME_KIND);
        // (`max_datagram_size` takes the connection's lock: asked only when it matters.)
        if reliable
            || !whole
            || self
                .conn
                .max_datagram_size()
                .is_none_or(|m| batch.len() > m)
        {
            return None;
        }
        // Too large after all, or disabled: `None`, and the lane's stream takes it.
        self.send_datagram(batch)
    }

    /// A best-effort batch as a datagram; `None` if it cannot go as one (too large, or the peer
    /// takes none).
    fn send_datagram(&mut self, batch: &[u8]) -> Option<Result<(), LinkError>> {
        let conn = &self.conn;
        match crate::quic_driver::drive_inline(|| conn.send_datagram(Bytes::copy_from_slice(batch)))
        {
            Ok(()) => Some(Ok(())),
            Err(quinn::SendDatagramError::ConnectionLost(e)) => Some(Err(conn_err(e))),
            Err(_) => None,
        }
    }

    /// Writes a batch at once, on the caller's thread, without waiting: the stream takes it
    /// into quinn's buffer and the connection's driver sends it from here (see
    /// [`quic_driver`](crate::quic_driver)). `Ok(true)` if it was taken whole; `Ok(false)` if
    /// it is kept, wholly or in part, for the writer (its lane is then blocked, or a `Close`
    /// waits for [`flush`](Self::flush)).
    pub(crate) fn try_send(&mut self, batch: &[u8]) -> Result<bool, LinkError> {
        if batch.first().is_some_and(|h| h & 7 == CLOSE_KIND) || !self.held_close.is_empty() {
            // A `Close` waits for the other lanes' streams, as in `send`: the writer sends it,
            // and anything after it.
            self.held_close.push(batch.to_vec());
            return Ok(false);
        }
        let (priority, reliable) = crate::batch_lane(batch);
        if let Some(r) = self.try_datagram(batch, reliable) {
            return r.map(|()| true);
        }
        let lane = priority.index();
        let len = u16::try_from(batch.len()).map_err(|_| LinkError::TooLarge(batch.len()))?;
        let (Some(slot), Some(pending)) = (self.streams.get_mut(lane), self.pending.get_mut(lane))
        else {
            return Err(quic_err("bad lane"));
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if slot.is_none() {
            let open = self.conn.open_uni();
            tokio::pin!(open);
            if let Poll::Ready(r) = open.poll(&mut cx) {
                let s = r.map_err(conn_err)?;
                let _ = s.set_priority(8 - lane as i32);
                *slot = Some(s);
            }
        }
        let keep = |pending: &mut Pending, rest: &[u8]| {
            if pending.is_empty() {
                pending.clear();
            }
            pending.buf.extend_from_slice(rest);
        };
        let Some(stream) = slot.as_mut().filter(|_| pending.is_empty()) else {
            // No stream yet (no stream credit), or the lane is blocked: the writer writes it
            // after what the lane holds ([`QuicTx::progress`]).
            keep(pending, &len.to_le_bytes());
            keep(pending, batch);
            return Ok(false);
        };
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(batch);
        let off = write_some(stream, &self.buf, &mut cx)?;
        if off < self.buf.len() {
            keep(pending, &self.buf[off..]);
            return Ok(false);
        }
        Ok(true)
    }

    /// True if `try_send` kept something the writer must still write: a lane's rest, or a
    /// `Close`.
    pub(crate) fn has_pending(&self) -> bool {
        !self.held_close.is_empty() || self.blocked_lanes() != 0
    }

    /// Sends the `Close` that `try_send` kept.
    pub(crate) async fn flush(&mut self) -> Result<(), LinkError> {
        for batch in std::mem::take(&mut self.held_close) {
            self.send(&batch).await?;
        }
        Ok(())
    }

    /// Lanes (bit `i` = `Priority::index() == i`) whose stream still holds part of a batch:
    /// the session should hand out nothing more for them until [`progress`](Self::progress).
    pub(crate) fn blocked_lanes(&self) -> u8 {
        self.pending
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Waits until at least one blocked lane has written what it held (at once if none is
    /// blocked).
    pub(crate) async fn progress(&mut self) -> Result<(), LinkError> {
        self.open_held_lanes().await?;
        std::future::poll_fn(|cx| {
            let mut freed = self.blocked_lanes() == 0;
            for (p, s) in self.pending.iter_mut().zip(self.streams.iter_mut()) {
                let Some(s) = s.as_mut().filter(|_| !p.is_empty()) else {
                    p.clear();
                    continue;
                };
                loop {
                    match write_now(s, &p.buf[p.off..], cx) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            p.off += n;
                            if p.off >= p.buf.len() {
                                p.clear();
                                freed = true;
                                break;
                            }
                        }
                        Poll::Ready(Ok(_)) | Poll::Pending => break,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(write_err(e))),
                    }
                }
            }
            if freed {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Opens the streams of lanes that hold a batch `try_send` could not give a stream (no
    /// stream credit then).
    async fn open_held_lanes(&mut self) -> Result<(), LinkError> {
        for (lane, (p, s)) in self.pending.iter().zip(self.streams.iter_mut()).enumerate() {
            if s.is_none() && !p.is_empty() {
                let new = self.conn.open_uni().await.map_err(conn_err)?;
                let _ = new.set_priority(8 - lane as i32);
                *s = Some(new);
            }
        }
        Ok(())
    }

    /// Writes what every lane still holds (before a close), waiting as long as it takes.
    async fn flush_pending(&mut self) {
        let _ = self.open_held_lanes().await;
        for (p, s) in self.pending.iter_mut().zip(self.streams.iter_mut()) {
            if let Some(s) = s.as_mut().filter(|_| !p.is_empty()) {
                let _ = s.write_all(&p.buf[p.off..]).await;
            }
            p.clear();
        }
    }

    /// Finishes every data lane's stream and waits (up to a second) until the peer has read
    /// each to its end.
    async fn drain_lanes(&mut self) {
        let mut lanes: Vec<quinn::SendStream> = self
            .streams
            .iter_mut()
            .skip(1)
            .filter_map(Option::take)
            .collect();
        for s in &mut lanes {
            let _ = s.finish();
        }
        let drained = async {
            for s in &mut lanes {
                let _ = s.stopped().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
    }

    /// Finishes every lane's stream, waits (up to a second) until the peer has read them to the
    /// end, so that a final `Close` batch is not lost, then closes the connection.
    pub(crate) async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_pending()).await;
        for s in self.streams.iter_mut().flatten() {
            let _ = s.finish();
        }
        let drained = async {
            for s in self.streams.iter_mut().flatten() {
                let _ = s.stopped().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
        self.conn.close(0u32.into(), b"close");
    }
}

impl QuicRx {
    fn new(conn: quinn::Connection) -> Self {
        QuicRx {
            accept: Some(accept(&conn)),
            datagram: Some(next_datagram(&conn)),
            conn,
            held: None,
            streams: Vec::new(),
            close: None,
            error: None,
            ended: false,
        }
    }

    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, LinkError>> {
        if self.ended {
            return Poll::Ready(Err(LinkError::Closed));
        }
        self.poll_accept(cx);
        self.poll_datagram(cx);
        // A held datagram goes before the streams of its own lane and below.
        let held_lane = self.held.as_deref().map_or(LANES, lane_of);
        let mut learnt = false;
        let mut i = 0;
        let mut out = None;
        while let Some(s) = self.streams.get_mut(i) {
            match s.lane {
                Some(l) if l >= held_lane => break,
                // The peer's last word is taken: nothing follows it on the control stream.
                Some(0) if self.close.is_some() => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            match s.rx.poll_next_in_stream(cx) {
                Poll::Ready(Ok(b)) => {
                    if s.lane.is_none() {
                        s.lane = Some(lane_of(&b));
                        learnt = true;
                    }
                    if s.lane == Some(0) && is_close(&b) {
                        // The peer finished its other streams before sending it, so what they
                        // carried goes first.
                        self.close = Some(b);
                        i += 1;
                        continue;
                    }
                    out = Some(b);
                    break;
                }
                // A stream that ends (finished, or reset) ends only itself: the connection's
                // fate comes from `accept`.
                Poll::Ready(Err(_)) => {
                    self.streams.remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
        if learnt {
            self.streams.sort_by_key(|s| s.lane.map_or(0, |l| l + 1));
        }
        if let Some(b) = out
            .or_else(|| self.held.take())
            .or_else(|| self.close.take())
        {
            return Poll::Ready(Ok(b));
        }
        match self.error.take() {
            Some(e) => {
                self.ended = true;
                Poll::Ready(Err(e))
            }
            None => Poll::Pending,
        }
    }

    /// Takes the streams the peer opened.
    fn poll_accept(&mut self, cx: &mut Context<'_>) {
        while let Some(f) = self.accept.as_mut() {
            match f.as_mut().poll(cx) {
                Poll::Ready(Ok(s)) => {
                    // Unknown lane: first, until its first batch says which.
                    self.streams.insert(
                        0,
                        LaneStream {
                            rx: StreamRx::one_lane(Box::new(s)),
                            lane: None,
                        },
                    );
                    self.accept = Some(accept(&self.conn));
                }
                Poll::Ready(Err(e)) => {
                    self.error.get_or_insert(conn_err(e));
                    self.accept = None;
                }
                Poll::Pending => break,
            }
        }
    }

    /// Reads a datagram into `held` if none is held (best effort: while one is held, later
    /// ones wait in quinn's datagram receive buffer, which drops the oldest when full).
    fn poll_datagram(&mut self, cx: &mut Context<'_>) {
        while self.held.is_none() {
            let Some(f) = self.datagram.as_mut() else {
                return;
            };
            match f.as_mut().poll(cx) {
                Poll::Ready(Ok(d)) => {
                    self.datagram = Some(next_datagram(&self.conn));
                    if !d.is_empty() {
                        self.held = Some(d);
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.error.get_or_insert(conn_err(e));
                    self.datagram = None;
                }
                Poll::Pending => return,
            }
        }
    }
}

/// Whether a batch is the peer's `Close`.
fn is_close(batch: &[u8]) -> bool {
    batch.first().is_some_and(|h| h & 7 == CLOSE_KIND)
}

/// The lane (queue index) of a received batch.
fn lane_of(batch: &[u8]) -> usize {
    crate::batch_lane(batch).0.index().min(LANES - 1)
}

/// An endpoint on a UDP socket bound to `addr` (a client's IPv6 one dual-stack where the system
/// allows, as `quinn::Endpoint::client` makes it),
/// its drivers run by [`DriverRuntime`](crate::quic_driver::DriverRuntime) on the current tokio
/// runtime: a writer sends its connection's packets itself.
fn new_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol as IpProto, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(IpProto::UDP))?;
    if addr.is_ipv6() && server.is_none() {
        if let Err(e) = socket.set_only_v6(false) {
            tracing::debug!("quic socket not dual-stack: {e}");
        }
    }
    socket.bind(&addr.into())?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        crate::quic_driver::DriverRuntime::current()?,
    )
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(32u32.into());
    t.max_concurrent_bidi_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t.congestion_controller_factory(Arc::new(crate::quic_cc::FlooredCubicConfig::new(
        crate::quic_cc::MIN_WINDOW,
    )));
    Arc::new(t)
}

/// `verified`: rustls checked the peer's certificate against the configured CA (so its leaf
/// may stand for the peer's identity).
fn link(
    conn: quinn::Connection,
    local: SocketAddr,
    endpoint: Option<quinn::Endpoint>,
    verified: bool,
) -> Link {
    let peer_certificate = if verified {
        conn.peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|v| v.first().map(|c| Arc::<[u8]>::from(c.as_ref())))
    } else {
        None
    };
    let mut info = LinkInfo {
        protocol: Protocol::Quic,
        local: Endpoint::from_socket(Protocol::Quic, local),
        remote: Endpoint::from_socket(Protocol::Quic, conn.remote_address()),
        mtu: crate::MAX_BATCH,
        reliable: true,
        peer_certificate,
        probe: Default::default(),
    };
    let probe = Arc::new(conn.clone());
    info.probe.quic = Some(Arc::downgrade(&probe));
    let rx = QuicRx::new(conn.clone());
    Link {
        info,
        tx: LinkTx::Quic(QuicTx {
            conn,
            streams: Default::default(),
            buf: Vec::with_capacity(crate::MAX_BATCH + 2),
            pending: Default::default(),
            held_close: Vec::new(),
            _endpoint: endpoint,
            _probe: probe,
        }),
        rx: LinkRx::Quic(rx),
    }
}

pub(crate) async fn listen(endpoint: &Endpoint, tls: &TlsConfig) -> Result<Listener, ListenError> {
    let addr = endpoint
        .resolve()
        .await
        .ok()
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| ListenError::Address(endpoint.clone(), "cannot resolve host".into()))?;
    let material = tls.load()?;
    let verified = material.verifies_clients();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(material.server_config()?)
        .map_err(|e| ListenError::Address(endpoint.clone(), e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config());
    let ep = new_endpoint(addr, Some(server)).map_err(|source| ListenError::Bind {
        endpoint: endpoint.clone(),
        source,
    })?;
    let local_addr = ep.local_addr().map_err(|source| ListenError::Bind {
        endpoint: endpoint.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match tokio::time::timeout(crate::SETUP_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(link(conn, local_addr, None, verified)).await;
                    }
                    // A peer that gives up its own handshake (it kept another link to us, the
                    // duplicate rule) is routine: only other failures are worth a warning.
                    Ok(Err(quinn::ConnectionError::ApplicationClosed(_)))
                    | Ok(Err(quinn::ConnectionError::LocallyClosed)) => {
                        tracing::debug!(%remote, "quic peer closed during its handshake")
                    }
                    Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                        if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
                    {
                        tracing::debug!(%remote, "quic peer closed during its handshake")
                    }
                    Ok(Err(e)) => tracing::warn!(%remote, "refusing quic peer: {e}"),
                    Err(_) => tracing::warn!(%remote, "refusing quic peer: handshake timed out"),
                }
            });
        }
    });
    Ok(Listener::new(
        Endpoint::from_socket(Protocol::Quic, local_addr),
        rx,
        vec![AbortOnDrop(task)],
        None,
    ))
}

pub(crate) async fn connect(endpoint: &Endpoint, tls: &TlsConfig) -> Result<Link, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let remote = crate::link::resolve_one(endpoint).await?;
    let material = tls.load()?;
    let verified = material.verifies_servers();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(material.client_config()?)
        .map_err(|e| ConnectError::Tls {
            endpoint: endpoint.clone(),
            cause: crate::link::TlsCause::Other,
            reason: e.to_string(),
        })?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport_config());
    let bind: SocketAddr = if remote.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let mut ep = new_endpoint(bind, None).map_err(io)?;
    ep.set_default_client_config(client);
    let name = match endpoint {
        Endpoint::Net {
            host: Host::Name(n),
            ..
        } => n.as_str(),
        _ => "hypha",
    };
    let connecting = ep.connect(remote, name).map_err(|e| ConnectError::Link {
        endpoint: endpoint.clone(),
        source: quic_err(e),
    })?;
    // A TLS failure is a QUIC CRYPTO_ERROR: 0x100 + the TLS alert.
    let alert = |code: quinn::TransportErrorCode| {
        let c = u64::from(code);
        (0x100..=0x1ff).contains(&c).then(|| (c - 0x100) as u8)
    };
    let conn = connecting.await.map_err(|e| match e {
        quinn::ConnectionError::TransportError(t) if alert(t.code).is_some() => {
            let reason = t.to_string();
            ConnectError::Tls {
                endpoint: endpoint.clone(),
                cause: crate::link::TlsCause::from_alert(alert(t.code), &reason),
                reason,
            }
        }
        quinn::ConnectionError::ConnectionClosed(c) if alert(c.error_code).is_some() => {
            let reason = c.to_string();
            ConnectError::Tls {
                endpoint: endpoint.clone(),
                cause: crate::link::TlsCause::from_alert(alert(c.error_code), &reason),
                reason,
            }
        }
        other => ConnectError::Link {
            endpoint: endpoint.clone(),
            source: conn_err(other),
        },
    })?;
    let local = ep.local_addr().map_err(io)?;
    Ok(link(conn, local, Some(ep), verified))
}
