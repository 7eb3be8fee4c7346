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

/// Receiving half of a stream link.
pub struct StreamRx {
    r: Reader,
    buf: BytesMut,
    /// How much room the next read asks for ([`FIRST_READ`] doubling to [`READ_CHUNK`]).
    chunk: usize,
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
        use std::task::{Context, Poll, Waker};
        if self.has_pending() {
            return Ok(false);
        }
        let len = u16::try_from(batch.len()).map_err(|_| LinkError::TooLarge(batch.len()))?;
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(batch);
        let mut done = 0usize;
        let mut cx = Context::from_waker(Waker::noop());
        while done < self.buf.len() {
            let rest = self.buf.get(done..).unwrap_or(&[]);
            match std::pin::Pin::new(&mut self.w).poll_write(&mut cx, rest) {
                Poll::Ready(Ok(0)) => return Err(LinkError::Closed),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => return Err(closed_or_io(e)),
                Poll::Pending => {
                    self.pending = done..self.buf.len();
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    pub(crate) async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        self.flush().await?;
        let len = u16::try_from(batch.len()).map_err(|_| LinkError::TooLarge(batch.len()))?;
        if batch.len() < VECTORED_FROM {
            // Small batch: one contiguous buffer, one write.
            self.buf.clear();
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf.extend_from_slice(batch);
            self.w.write_all(&self.buf).await.map_err(closed_or_io)?;
            return self.flush_if_buffered().await;
        }
        // Large batch: prefix and batch in one vectored write, without copying the batch.
        let prefix = len.to_le_bytes();
        let mut done = 0usize;
        let total = prefix.len() + batch.len();
        while done < total {
            let n = if done < prefix.len() {
                let bufs = [
                    std::io::IoSlice::new(prefix.get(done..).unwrap_or(&[])),
                    std::io::IoSlice::new(batch),
                ];
                self.w.write_vectored(&bufs).await
            } else {
                self.w
                    .write(batch.get(done - prefix.len()..).unwrap_or(&[]))
                    .await
            }
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
        }
    }

    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_le_bytes([self.buf[0], self.buf[1]]));
                if len == 0 {
                    return Err(LinkError::BadLength(0));
                }
                if self.buf.len() >= 2 + len {
                    self.buf.advance(2);
                    return Ok(self.buf.split_to(len).freeze());
                }
                self.buf.reserve(2 + len - self.buf.len());
            }
            let room = self.buf.capacity() - self.buf.len();
            if room < self.chunk / 2 {
                self.buf.reserve(self.chunk);
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = self.r.read_buf(&mut self.buf).await.map_err(closed_or_io)?;
            if n == 0 {
                return Err(LinkError::Closed);
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
