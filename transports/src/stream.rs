//! Stream links (TCP, unix): a preamble, then batches prefixed by their u16 length.
//!
//! Reading fills a buffer with as many bytes as the socket has and splits complete batches off
//! it without copying; writing puts prefix and batch in one contiguous buffer and issues one
//! write. Buffers are sized to what the link carries: a link that never sends more than its
//! handshake holds a few KiB, not the 128 KiB a busy link reads at a time (issue 16: thousands
//! of half-open links each preallocating their largest buffers took hundreds of MB).

use crate::AbortOnDrop;
use crate::endpoint::{Endpoint, Protocol};
use crate::link::{ConnectError, Link, LinkError, LinkInfo, LinkRx, LinkTx, ListenError, Listener};
use bytes::{Buf, Bytes, BytesMut};
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Every stream link starts with these bytes, both ways.
pub(crate) const PREAMBLE: &[u8; 8] = b"HYPHA/1\n";
/// The most a reader asks the socket for at once (a busy link's read size).
const READ_CHUNK: usize = 128 * 1024;
/// What a fresh reader asks for: room for a handshake. Each read that fills the room asked for
/// doubles the next one, up to [`READ_CHUNK`].
const FIRST_READ: usize = 2048;
/// Batches from this size on are written with a vectored write instead of being copied.
const VECTORED_FROM: usize = 4096;
/// The most a reader reads ahead of the batch it hands out, looking for a more urgent one
/// behind bulk: half a 1 MiB sample (a real-time batch is found once it is within this of the
/// bulk being handed out). 2 MiB (about the receive buffer, see [`tcp_tune`]) was tried
/// first; the smaller bound holds less per busy link and keeps what is read ahead in cache,
/// a judgement: the loaded test machine could not tell the two apart (BENCHMARKS.md).
const LOOKAHEAD: usize = 512 << 10;
/// Lanes from this one down (`Priority::index`) are looked past: a batch of a higher lane
/// (Control, RealTime) is handed out at once, one of these only after the reader has read what
/// the socket holds behind it (up to [`LOOKAHEAD`]) and found nothing more urgent.
const LOOK_PAST: usize = hypha_core::wire::Priority::InteractiveHigh as usize;
/// Header kind of a `Close` transport message (see `core/WIRE.md`).
const CLOSE_KIND: u8 = 3;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Sending half of a stream link.
pub struct StreamTx {
    w: Writer,
    buf: Vec<u8>,
    /// Bytes of `buf` not yet written by a [`StreamTx::try_send`] that could not finish; they
    /// go out first on the next `send` or `flush`.
    pending: std::ops::Range<usize>,
    /// Flush the writer after each batch (TLS keeps records in its own buffer until then); such
    /// a stream has no direct writes (`try_send`).
    flush_each: bool,
}

/// The most slices a vectored write of [`StreamTx`] takes (two prefixed batches).
const MAX_PARTS: usize = 4;

/// Slices of `parts` from byte `done` of their concatenation on, into `out`; returns how many.
fn rest_of<'a>(
    parts: &[&'a [u8]],
    mut done: usize,
    out: &mut [std::io::IoSlice<'a>; MAX_PARTS],
) -> usize {
    let mut k = 0;
    for p in parts {
        if done >= p.len() {
            done -= p.len();
            continue;
        }
        if let Some(slot) = out.get_mut(k) {
            *slot = std::io::IoSlice::new(p.get(done..).unwrap_or(&[]));
            k += 1;
        }
        done = 0;
    }
    k
}

/// Receiving half of a stream link.
///
/// The lanes of a TCP, unix or TLS link share one byte stream, so a real-time batch arrives
/// behind whatever bulk was written before it. When the next batch is of a lower lane (see
/// [`LOOK_PAST`]), the reader first reads what the socket already holds (without waiting, up to
/// [`LOOKAHEAD`]), splits it into batches (no copy: slices of the read buffer) and hands out
/// the highest-priority one: the session's lanes are independent (sequence numbers and
/// reassembly per lane), so only the order within a lane is kept, as on QUIC, where each lane
/// has its own stream. A `Close` is handed out last.
pub struct StreamRx {
    r: Reader,
    buf: BytesMut,
    /// How much room the next read asks for ([`FIRST_READ`] doubling to [`READ_CHUNK`]).
    chunk: usize,
    /// Look past low-lane batches (false for a stream that carries one lane: QUIC).
    lanes: bool,
    ahead: Box<Ahead>,
}

/// Batches read ahead, per lane, in stream order within each.
#[derive(Default)]
struct Ahead {
    lanes: [std::collections::VecDeque<Bytes>; hypha_core::session::LANES],
    bytes: usize,
    /// The peer's `Close`, handed out once the lanes are empty.
    close: Option<Bytes>,
    /// The read that ended the stream (or failed) while reading ahead: reported once the
    /// batches before it are handed out.
    end: Option<LinkError>,
}

impl Ahead {
    fn is_empty(&self) -> bool {
        self.bytes == 0 && self.close.is_none()
    }

    fn push(&mut self, b: Bytes) {
        if b.first().is_some_and(|h| h & 7 == CLOSE_KIND) {
            self.close = Some(b);
            return;
        }
        let lane = crate::batch_lane(&b).0.index();
        if let Some(q) = self.lanes.get_mut(lane) {
            self.bytes += b.len();
            q.push_back(b);
        }
    }

    /// The highest-priority batch read ahead (the `Close` last).
    fn pop(&mut self) -> Option<Bytes> {
        for q in &mut self.lanes {
            if let Some(b) = q.pop_front() {
                self.bytes -= b.len();
                return Some(b);
            }
        }
        self.close.take()
    }
}

impl fmt::Debug for StreamTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamTx")
    }
}

impl fmt::Debug for StreamRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamRx({} bytes buffered)", self.buf.len())
    }
}

impl StreamTx {
    pub(crate) fn new(w: Writer) -> Self {
        StreamTx {
            w,
            // Grows to the largest batch copied into it (small batches; direct writes).
            buf: Vec::new(),
            pending: 0..0,
            flush_each: false,
        }
    }

    /// A writer that buffers (TLS): flushed after each batch, never written to directly.
    pub(crate) fn new_flushing(w: Writer) -> Self {
        StreamTx {
            flush_each: true,
            ..StreamTx::new(w)
        }
    }

    /// True if [`try_send`](Self::try_send) may write on the caller's thread.
    pub(crate) fn direct(&self) -> bool {
        !self.flush_each
    }

    /// True if part of a batch given to `try_send` is still waiting to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the rest of a batch `try_send` could not finish.
    pub(crate) async fn flush(&mut self) -> Result<(), LinkError> {
        while !self.pending.is_empty() {
            let n = self
                .w
                .write(self.buf.get(self.pending.clone()).unwrap_or(&[]))
                .await
                .map_err(closed_or_io)?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.pending.start += n;
        }
        Ok(())
    }

    /// Writes one batch without waiting, on the caller's thread: `Ok(true)` if it was written
    /// entirely; `Ok(false)` if the socket took only part of it (or nothing): the rest is kept
    /// and must be finished with [`flush`](Self::flush) before anything else is sent.
    pub(crate) fn try_send(&mut self, batch: &[u8]) -> Result<bool, LinkError> {
        if self.has_pending() {
            return Ok(false);
        }
        let len = u16::try_from(batch.len()).map_err(|_| LinkError::TooLarge(batch.len()))?;
        // Prefix and batch in one vectored write; only what the socket leaves is copied.
        self.try_write_parts(&[&len.to_le_bytes(), batch])
    }

    /// Two batches in one write (each with its prefix), without waiting: as
    /// [`try_send`](Self::try_send) for both. A small batch (the tail fragment of a sample just
    /// over a batch, a ping) then costs no write of its own.
    pub(crate) fn try_send_pair(&mut self, a: &[u8], b: &[u8]) -> Result<bool, LinkError> {
        if self.has_pending() {
            return Ok(false);
        }
        let la = u16::try_from(a.len()).map_err(|_| LinkError::TooLarge(a.len()))?;
        let lb = u16::try_from(b.len()).map_err(|_| LinkError::TooLarge(b.len()))?;
        self.try_write_parts(&[&la.to_le_bytes(), a, &lb.to_le_bytes(), b])
    }

    /// Writes `parts` in vectored writes until done or the socket takes no more; what is left
    /// is copied into `buf` for [`flush`](Self::flush).
    fn try_write_parts(&mut self, parts: &[&[u8]]) -> Result<bool, LinkError> {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0usize;
        while done < total {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_PARTS];
            let k = rest_of(parts, done, &mut slices);
            let rest = slices.get(..k).unwrap_or(&[]);
            match std::pin::Pin::new(&mut self.w).poll_write_vectored(&mut cx, rest) {
                Poll::Ready(Ok(0)) => return Err(LinkError::Closed),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => return Err(closed_or_io(e)),
                Poll::Pending => {
                    self.buf.clear();
                    for s in rest {
                        self.buf.extend_from_slice(s);
                    }
                    self.pending = 0..self.buf.len();
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Two batches in one write, as [`send`](Self::send) for `a` then `b`.
    pub(crate) async fn send_pair(&mut self, a: &[u8], b: &[u8]) -> Result<(), LinkError> {
        let la = u16::try_from(a.len()).map_err(|_| LinkError::TooLarge(a.len()))?;
        let lb = u16::try_from(b.len()).map_err(|_| LinkError::TooLarge(b.len()))?;
        // A TLS stream makes a record of each write: one contiguous buffer there.
        let copy = self.flush_each || b.len() < VECTORED_FROM;
        self.send_parts(&[&la.to_le_bytes(), a, &lb.to_le_bytes(), b], copy)
            .await
    }

    pub(crate) async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        let len = u16::try_from(batch.len()).map_err(|_| LinkError::TooLarge(batch.len()))?;
        // A small batch is copied behind its prefix (one contiguous write); a large one goes
        // out with its prefix in one vectored write, not copied.
        self.send_parts(&[&len.to_le_bytes(), batch], batch.len() < VECTORED_FROM)
            .await
    }

    /// Writes what `try_send` kept, then all of `parts`: copied into one buffer and written at
    /// once if `copy`, else in vectored writes.
    async fn send_parts(&mut self, parts: &[&[u8]], copy: bool) -> Result<(), LinkError> {
        self.flush().await?;
        if copy {
            self.buf.clear();
            for p in parts {
                self.buf.extend_from_slice(p);
            }
            self.w.write_all(&self.buf).await.map_err(closed_or_io)?;
            return self.flush_if_buffered().await;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0usize;
        while done < total {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_PARTS];
            let k = rest_of(parts, done, &mut slices);
            let n = self
                .w
                .write_vectored(slices.get(..k).unwrap_or(&[]))
                .await
                .map_err(closed_or_io)?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            done += n;
        }
        self.flush_if_buffered().await
    }

    async fn flush_if_buffered(&mut self) -> Result<(), LinkError> {
        if self.flush_each {
            self.w.flush().await.map_err(closed_or_io)?;
        }
        Ok(())
    }

    pub(crate) async fn close(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

impl StreamRx {
    pub(crate) fn new(r: Reader) -> Self {
        StreamRx {
            r,
            buf: BytesMut::new(),
            chunk: FIRST_READ,
            lanes: true,
            ahead: Box::default(),
        }
    }

    /// A reader of a stream that carries one lane (a QUIC lane's stream): batches in order,
    /// nothing read ahead (QUIC's flow control holds that lane back, not this reader).
    pub(crate) fn one_lane(r: Reader) -> Self {
        StreamRx {
            lanes: false,
            ..StreamRx::new(r)
        }
    }

    /// The next batch: the next in the stream, or, when that one is of a low lane, the most
    /// urgent one the socket already holds (see [`StreamRx`]).
    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if self.ahead.is_empty() {
            let b = match self.ahead.end.take() {
                None => self.next_in_stream().await?,
                // The stream ended while reading ahead: what is buffered first.
                Some(e) => match self.split_one()? {
                    Some(b) => {
                        self.ahead.end = Some(e);
                        b
                    }
                    None => return Err(e),
                },
            };
            if !self.lanes || crate::batch_lane(&b).0.index() < LOOK_PAST {
                return Ok(b);
            }
            self.ahead.push(b);
        }
        self.read_ahead();
        // Not empty: it held a batch, or one was just pushed.
        self.ahead.pop().ok_or(LinkError::Closed)
    }

    /// Splits the complete batches buffered into `ahead`, reading what the socket holds
    /// without waiting, until [`LOOKAHEAD`] bytes are ahead or the socket has nothing more.
    fn read_ahead(&mut self) {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        while self.ahead.bytes < LOOKAHEAD {
            match self.split_one() {
                Ok(Some(b)) => {
                    self.ahead.push(b);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.ahead.end = Some(e);
                    break;
                }
            }
            if self.ahead.end.is_some() {
                break;
            }
            self.make_room();
            let read = {
                let f = self.r.read_buf(&mut self.buf);
                tokio::pin!(f);
                f.poll(&mut cx)
            };
            match read {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => self.ahead.end = Some(LinkError::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => self.ahead.end = Some(closed_or_io(e)),
            }
        }
    }

    /// A complete batch at the front of the buffer, if there is one.
    fn split_one(&mut self) -> Result<Option<Bytes>, LinkError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_le_bytes([self.buf[0], self.buf[1]]));
        if len == 0 {
            return Err(LinkError::BadLength(0));
        }
        if self.buf.len() < 2 + len {
            self.buf.reserve(2 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(2);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Room for the next read.
    fn make_room(&mut self) {
        let room = self.buf.capacity() - self.buf.len();
        if room < self.chunk / 2 {
            self.buf.reserve(self.chunk);
        }
    }

    /// The next batch in stream order, waiting for the socket if need be.
    async fn next_in_stream(&mut self) -> Result<Bytes, LinkError> {
        std::future::poll_fn(|cx| self.poll_next_in_stream(cx)).await
    }

    /// The next batch in stream order, polled: a QUIC link's reader polls its lanes' streams
    /// itself, most urgent first, instead of a task per stream handing batches over.
    pub(crate) fn poll_next_in_stream(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Bytes, LinkError>> {
        use std::future::Future;
        use std::task::Poll;
        loop {
            if let Some(b) = self.split_one()? {
                return Poll::Ready(Ok(b));
            }
            self.make_room();
            let room = self.buf.capacity() - self.buf.len();
            let read = {
                let f = self.r.read_buf(&mut self.buf);
                tokio::pin!(f);
                f.poll(cx)
            };
            let n = match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.map_err(closed_or_io)?,
            };
            if n == 0 {
                return Poll::Ready(Err(LinkError::Closed));
            }
            if n >= room {
                // The socket had at least as much as we asked for: ask for more next time.
                self.chunk = (self.chunk * 2).min(READ_CHUNK);
            }
        }
    }
}

pub(crate) fn closed_or_io(e: std::io::Error) -> LinkError {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected => {
            LinkError::Closed
        }
        _ => LinkError::Io(e),
    }
}

/// Exchanges preambles on a fresh stream.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<(), LinkError> {
    s.write_all(PREAMBLE).await.map_err(closed_or_io)?;
    s.flush().await.map_err(closed_or_io)?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await.map_err(closed_or_io)?;
    if &got != PREAMBLE {
        return Err(LinkError::BadPreamble(got.to_vec()));
    }
    Ok(())
}

fn make_link(r: Reader, w: Writer, info: LinkInfo) -> Link {
    Link {
        info,
        tx: LinkTx::Stream(StreamTx::new(w)),
        rx: LinkRx::Stream(StreamRx::new(r)),
    }
}

fn tcp_link(s: tokio::net::TcpStream, mut info: LinkInfo) -> Link {
    info.probe = crate::LinkProbe::tcp(&s);
    let (r, w) = s.into_split();
    make_link(Box::new(r), Box::new(w), info)
}

fn unix_link(s: tokio::net::UnixStream, info: LinkInfo) -> Link {
    let (r, w) = s.into_split();
    make_link(Box::new(r), Box::new(w), info)
}

/// Unsent bytes the kernel may hold for a TCP link before the socket stops taking more
/// (`TCP_NOTSENT_LOWAT`). Bytes in flight (sent, not yet acknowledged) are not counted, so a
/// long fat link still fills its pipe; but what waits to be sent stays in the session's
/// priority lanes, where a real-time message overtakes bulk, instead of in one kernel queue
/// behind a megabyte of it.
const NOTSENT_LOWAT: u32 = 128 * 1024;

pub(crate) fn tcp_tune(s: &tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_send_buffer_size(1 << 20);
    let _ = sock.set_recv_buffer_size(1 << 20);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

pub(crate) async fn listen_tcp(endpoint: &Endpoint) -> Result<Listener, ListenError> {
    let addr = endpoint
        .resolve()
        .await
        .ok()
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| ListenError::Address(endpoint.clone(), "cannot resolve host".into()))?;
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind {
            endpoint: endpoint.clone(),
            source,
        })?;
    let local_addr = l.local_addr().map_err(|source| ListenError::Bind {
        endpoint: endpoint.clone(),
        source,
    })?;
    let local = Endpoint::from_socket(Protocol::Tcp, local_addr);
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let (mut s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%local_addr, "tcp accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                tcp_tune(&s);
                let setup = tokio::time::timeout(crate::SETUP_TIMEOUT, handshake(&mut s)).await;
                match setup {
                    Ok(Ok(())) => {
                        let info = LinkInfo {
                            protocol: Protocol::Tcp,
                            local: Endpoint::from_socket(Protocol::Tcp, local_addr),
                            remote: Endpoint::from_socket(Protocol::Tcp, peer),
                            mtu: crate::MAX_BATCH,
                            reliable: true,
                            peer_certificate: None,
                            probe: Default::default(),
                        };
                        let _ = tx.send(tcp_link(s, info)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, "refusing tcp peer: {e}"),
                    Err(_) => tracing::warn!(%peer, "refusing tcp peer: no preamble in time"),
                }
            });
        }
    });
    Ok(Listener::new(local, rx, vec![AbortOnDrop(task)], None))
}

pub(crate) async fn connect_tcp(endpoint: &Endpoint) -> Result<Link, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let addrs = endpoint.resolve().await.map_err(io)?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut s) => {
                tcp_tune(&s);
                handshake(&mut s)
                    .await
                    .map_err(|source| ConnectError::Link {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
                let local = s.local_addr().map_err(io)?;
                let info = LinkInfo {
                    protocol: Protocol::Tcp,
                    local: Endpoint::from_socket(Protocol::Tcp, local),
                    remote: Endpoint::from_socket(Protocol::Tcp, addr),
                    mtu: crate::MAX_BATCH,
                    reliable: true,
                    peer_certificate: None,
                    probe: Default::default(),
                };
                return Ok(tcp_link(s, info));
            }
            Err(e) => last = e,
        }
    }
    Err(io(last))
}

pub(crate) async fn listen_unix(endpoint: &Endpoint) -> Result<Listener, ListenError> {
    let Endpoint::Unix(path) = endpoint else {
        return Err(ListenError::Address(
            endpoint.clone(),
            "not a unix endpoint".into(),
        ));
    };
    // A socket file left by a dead process is removed; a live one is an error.
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ListenError::Bind {
                endpoint: endpoint.clone(),
                source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "socket in use"),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|source| ListenError::Bind {
        endpoint: endpoint.clone(),
        source,
    })?;
    let local = endpoint.clone();
    let (tx, rx) = mpsc::channel(64);
    let ep = endpoint.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let tx = tx.clone();
            let ep = ep.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(crate::SETUP_TIMEOUT, handshake(&mut s)).await {
                    Ok(Ok(())) => {
                        let info = LinkInfo {
                            protocol: Protocol::Unix,
                            local: ep.clone(),
                            remote: ep,
                            mtu: crate::MAX_BATCH,
                            reliable: true,
                            peer_certificate: None,
                            probe: Default::default(),
                        };
                        let _ = tx.send(unix_link(s, info)).await;
                    }
                    Ok(Err(e)) => tracing::warn!("refusing unix peer: {e}"),
                    Err(_) => tracing::warn!("refusing unix peer: no preamble in time"),
                }
            });
        }
    });
    Ok(Listener::new(local, rx, vec![AbortOnDrop(task)], None))
}

pub(crate) async fn connect_unix(endpoint: &Endpoint) -> Result<Link, ConnectError> {
    let Endpoint::Unix(path) = endpoint else {
        return Err(ConnectError::NoListener(endpoint.clone()));
    };
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Io {
            endpoint: endpoint.clone(),
            source,
        })?;
    handshake(&mut s)
        .await
        .map_err(|source| ConnectError::Link {
            endpoint: endpoint.clone(),
            source,
        })?;
    let info = LinkInfo {
        protocol: Protocol::Unix,
        local: endpoint.clone(),
        remote: endpoint.clone(),
        mtu: crate::MAX_BATCH,
        reliable: true,
        peer_certificate: None,
        probe: Default::default(),
    };
    Ok(unix_link(s, info))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use super::*;

    async fn tcp_pair() -> (StreamTx, StreamRx) {
        let ep: Endpoint = "tcp/127.0.0.1:0".parse().unwrap();
        let mut l = listen_tcp(&ep).await.unwrap();
        let to = l.local_endpoint().clone();
        let (dialed, accepted) = tokio::join!(connect_tcp(&to), l.accept());
        let (LinkTx::Stream(tx), LinkRx::Stream(rx)) = (dialed.unwrap().tx, accepted.unwrap().rx)
        else {
            panic!("tcp links are stream links");
        };
        (tx, rx)
    }

    /// Issue 16: a link that carried only small batches holds small buffers (each half-open link
    /// used to hold 128 KiB for reading and 64 KiB for writing from its first byte on).
    #[tokio::test]
    async fn a_quiet_link_holds_small_buffers() {
        let (mut tx, mut rx) = tcp_pair().await;
        assert_eq!(tx.buf.capacity(), 0, "nothing written yet");
        assert_eq!(rx.buf.capacity(), 0, "nothing read yet");
        for i in 0..100u8 {
            tx.send(&[i; 40]).await.unwrap();
            assert_eq!(&rx.recv().await.unwrap()[..], &[i; 40]);
        }
        assert!(tx.buf.capacity() <= 1024, "tx {}", tx.buf.capacity());
        assert!(
            rx.buf.capacity() <= 4 * FIRST_READ,
            "rx {}",
            rx.buf.capacity()
        );
    }

    use hypha_core::wire::{self, CloseReason, Priority, TransportMessage};

    /// A batch of `len` bytes on lane `p`, as the stream carries it (length prefix), with its
    /// index in the payload so that order can be checked.
    fn framed(p: Priority, len: usize, index: u8) -> Vec<u8> {
        let mut b = vec![index; len];
        let h = wire::encode_frame_header(&mut b, p, true, 0).unwrap();
        assert!(h < len);
        let mut out = (len as u16).to_le_bytes().to_vec();
        out.extend_from_slice(&b);
        out
    }

    fn close_batch() -> Vec<u8> {
        let mut b = vec![0u8; 64];
        let n = TransportMessage::Close(wire::Close {
            reason: CloseReason::Shutdown,
            detail: "",
        })
        .encode(&mut b)
        .unwrap();
        let mut out = (n as u16).to_le_bytes().to_vec();
        out.extend_from_slice(&b[..n]);
        out
    }

    /// A reader over everything in `bytes`, already written (and the stream ended), so what
    /// it hands out does not depend on timing.
    async fn reader_of(bytes: &[u8]) -> StreamRx {
        let (mut w, r) = tokio::io::duplex(bytes.len() + 1);
        w.write_all(bytes).await.unwrap();
        drop(w);
        StreamRx::new(Box::new(r))
    }

    /// (lane, index) of each batch handed out, until the stream ends.
    async fn drain(rx: &mut StreamRx) -> Vec<(usize, u8)> {
        let mut got = Vec::new();
        while let Ok(b) = rx.recv().await {
            let lane = crate::batch_lane(&b).0.index();
            got.push((
                lane,
                if b[0] & 7 == CLOSE_KIND {
                    255
                } else {
                    b[b.len() - 1]
                },
            ));
        }
        got
    }

    /// Issue 15: on a stream link a real-time batch written behind bulk is handed out before
    /// the bulk the socket holds ahead of it (here none goes first: the head batch was bulk,
    /// so the reader looked past it); each lane keeps its order, and the peer's `Close` comes
    /// last.
    #[tokio::test]
    async fn a_real_time_batch_overtakes_bulk_already_received() {
        let mut bytes = Vec::new();
        let ahead = LOOKAHEAD / 65_002 - 1; // bulk batches that leave room for the rest
        for i in 0..ahead as u8 {
            bytes.extend(framed(Priority::Background, 65_000, i));
        }
        bytes.extend(framed(Priority::RealTime, 100, 100));
        bytes.extend(framed(Priority::Background, 65_000, ahead as u8));
        bytes.extend(framed(Priority::Data, 500, 50));
        bytes.extend(close_batch());
        let mut rx = reader_of(&bytes).await;
        let got = drain(&mut rx).await;
        let mut want = vec![
            (Priority::RealTime.index(), 100),
            (Priority::Data.index(), 50),
        ];
        want.extend((0..=ahead as u8).map(|i| (Priority::Background.index(), i)));
        want.push((Priority::Control.index(), 255));
        assert_eq!(got, want);
    }

    /// Behind more bulk than the look-ahead holds, the real-time batch waits only for the
    /// bulk beyond that bound: it is handed out as soon as it is within `LOOKAHEAD` bytes.
    #[tokio::test]
    async fn the_look_ahead_is_bounded() {
        let mut bytes = Vec::new();
        let before = 2 * LOOKAHEAD / 65_002;
        for i in 0..before {
            bytes.extend(framed(Priority::Background, 65_000, i as u8));
        }
        bytes.extend(framed(Priority::RealTime, 100, 255));
        let mut rx = reader_of(&bytes).await;
        let got = drain(&mut rx).await;
        let at = got.iter().position(|g| g.0 == Priority::RealTime.index());
        let ahead = LOOKAHEAD / 65_002;
        // Bulk handed out first: what lay beyond the bound, at most one batch more.
        let first = at.unwrap();
        assert!(
            first + ahead >= before && first + ahead <= before + 1,
            "{first}"
        );
        assert_eq!(got.len(), before + 1);
    }

    /// A batch of a high lane is handed out as soon as it is read (a ping pays no read
    /// ahead); a lower one behind it waits for nothing but its turn.
    #[tokio::test]
    async fn high_lanes_are_handed_out_in_stream_order() {
        let mut bytes = Vec::new();
        bytes.extend(framed(Priority::RealTime, 100, 1));
        bytes.extend(framed(Priority::Data, 100, 2));
        bytes.extend(framed(Priority::RealTime, 100, 3));
        bytes.extend(framed(Priority::Control, 100, 4));
        let mut rx = reader_of(&bytes).await;
        let got = drain(&mut rx).await;
        let (rt, data, ctl) = (
            Priority::RealTime.index(),
            Priority::Data.index(),
            Priority::Control.index(),
        );
        // 1 first (a high lane at the head); then the head is Data: the reader looks past it
        // and hands out 4 (Control) and 3 (RealTime) before it.
        assert_eq!(got, vec![(rt, 1), (ctl, 4), (rt, 3), (data, 2)]);
    }

    /// A direct write of large batches into a socket that stops taking them keeps the rest of
    /// the last one (vectored writes copy nothing else), and `flush` finishes it: the reader
    /// gets every batch whole and in order, small and large alike.
    #[tokio::test]
    async fn direct_writes_kept_in_part_arrive_whole() {
        let (mut tx, mut rx) = tcp_pair().await;
        let batch = |i: usize| {
            let len = if i % 3 == 2 { 100 } else { 60_000 + i };
            let mut b = framed(Priority::Background, len, i as u8);
            b.drain(..2);
            b
        };
        let mut sent = 0usize;
        loop {
            let b = batch(sent);
            sent += 1;
            if !tx.try_send(&b).unwrap() {
                break;
            }
            assert!(sent < 10_000, "the socket never filled");
        }
        assert!(tx.has_pending());
        assert!(
            !tx.try_send(&batch(sent)).unwrap(),
            "nothing after a kept rest"
        );
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..sent + 1 {
                got.push(rx.recv().await.unwrap().to_vec());
            }
            got
        });
        tx.flush().await.unwrap();
        assert!(!tx.has_pending());
        tx.send(&batch(sent)).await.unwrap();
        let got = reader.await.unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &batch(i), "batch {i}");
        }
    }

    /// A QUIC lane's stream carries one lane: its reader never reads ahead.
    #[tokio::test]
    async fn a_one_lane_reader_keeps_stream_order() {
        let mut bytes = Vec::new();
        bytes.extend(framed(Priority::Background, 1000, 1));
        bytes.extend(framed(Priority::RealTime, 100, 2));
        let (mut w, r) = tokio::io::duplex(bytes.len() + 1);
        w.write_all(&bytes).await.unwrap();
        drop(w);
        let mut rx = StreamRx::one_lane(Box::new(r));
        let got = drain(&mut rx).await;
        assert_eq!(
            got,
            vec![
                (Priority::Background.index(), 1),
                (Priority::RealTime.index(), 2)
            ]
        );
    }

    /// A busy link still reads in large pieces: the read size grows to `READ_CHUNK`.
    #[tokio::test]
    async fn a_busy_link_reads_in_large_pieces() {
        let (mut tx, mut rx) = tcp_pair().await;
        let big = vec![7u8; 60_000];
        let writer = tokio::spawn(async move {
            for _ in 0..64 {
                tx.send(&big).await.unwrap();
            }
            tx
        });
        for _ in 0..64 {
            assert_eq!(rx.recv().await.unwrap().len(), 60_000);
        }
        let _tx = writer.await.unwrap();
        assert_eq!(rx.chunk, READ_CHUNK);
    }
}
