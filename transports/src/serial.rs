//! Serial links: batches framed `0x00 COBS(batch | CRC-32/IEEE) 0x00` over a byte stream, the
//! framing of `hypha_core::framing` (the very code the device node runs).
//!
//! - `serial+tcp/HOST:PORT`: the framing over a TCP connection, which is how an emulated
//!   board's UART is reached (QEMU `-serial tcp:HOST:PORT,server=on`); listening accepts boards
//!   whose UART dials out (`server=off`). No preamble: the first bytes are frames.
//!
//! On a serial line the **device opens the session** (it sends `Init`, re-sent until
//! accepted), whichever side opened the line: [`Protocol::far_end_opens`] tells the runtime to
//! run the session as the listener. A rebooted device's fresh `Init` on a live session closes
//! that session, and the runtime's redial opens a new one.
//!
//! Frames that fail COBS or the CRC, and runs longer than the buffer, are dropped and counted;
//! reception resynchronises at the next delimiter. Every such error is logged (`warn`) with the
//! link's running counters, and the process-wide totals are in [`framing_totals`].
//!
//! [`Protocol::far_end_opens`]: crate::Protocol::far_end_opens

use crate::AbortOnDrop;
use crate::endpoint::{Endpoint, Protocol};
use crate::link::{ConnectError, Link, LinkError, LinkInfo, LinkRx, LinkTx, ListenError, Listener};
use bytes::Bytes;
use hypha_core::framing::{self, Deframer, FramingStats};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Largest batch a serial link carries (the device proposes its own, smaller, MTU in `Init`).
pub const SERIAL_MTU: usize = 4096;
const READ_CHUNK: usize = 4096;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

static CRC_ERRORS: AtomicU32 = AtomicU32::new(0);
static COBS_ERRORS: AtomicU32 = AtomicU32::new(0);
static OVERFLOWS: AtomicU32 = AtomicU32::new(0);
static FRAMES: AtomicU32 = AtomicU32::new(0);

/// Framing counters summed over every serial link this process has run.
pub fn framing_totals() -> FramingStats {
    FramingStats {
        frames: FRAMES.load(Ordering::Relaxed),
        crc_errors: CRC_ERRORS.load(Ordering::Relaxed),
        cobs_errors: COBS_ERRORS.load(Ordering::Relaxed),
        overflows: OVERFLOWS.load(Ordering::Relaxed),
    }
}

/// Sending half of a serial link.
pub struct SerialTx {
    w: Writer,
    buf: Vec<u8>,
}

/// Receiving half of a serial link.
pub struct SerialRx {
    r: Reader,
    de: Deframer<Vec<u8>>,
    input: Vec<u8>,
    pos: usize,
    seen: FramingStats,
    remote: Endpoint,
}

impl fmt::Debug for SerialTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SerialTx")
    }
}

impl fmt::Debug for SerialRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SerialRx({:?})", self.de.stats())
    }
}

impl SerialTx {
    pub(crate) async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        if batch.len() > SERIAL_MTU {
            return Err(LinkError::TooLarge(batch.len()));
        }
        self.buf.resize(framing::encoded_len(batch.len()), 0);
        let n =
            framing::encode(batch, &mut self.buf).map_err(|_| LinkError::TooLarge(batch.len()))?;
        let bytes = self.buf.get(..n).unwrap_or(&[]);
        self.w.write_all(bytes).await.map_err(closed_or_io)?;
        self.w.flush().await.map_err(closed_or_io)
    }

    pub(crate) async fn close(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

impl SerialRx {
    /// This link's framing counters.
    pub fn stats(&self) -> FramingStats {
        *self.de.stats()
    }

    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        loop {
            if let Some(rest) = self.input.get(self.pos..).filter(|r| !r.is_empty()) {
                let (used, frame) = self.de.push(rest);
                self.pos += used;
                self.count();
                if let Some(n) = frame {
                    if n > 0 {
                        return Ok(Bytes::copy_from_slice(self.de.frame(n)));
                    }
                }
                continue;
            }
            self.input.resize(READ_CHUNK, 0);
            self.pos = 0;
            let n = self.r.read(&mut self.input).await.map_err(closed_or_io)?;
            self.input.truncate(n);
            if n == 0 {
                return Err(LinkError::Closed);
            }
        }
    }

    /// Publishes new counts and logs new errors.
    fn count(&mut self) {
        let now = *self.de.stats();
        let was = std::mem::replace(&mut self.seen, now);
        FRAMES.fetch_add(now.frames.wrapping_sub(was.frames), Ordering::Relaxed);
        let d_crc = now.crc_errors.wrapping_sub(was.crc_errors);
        let d_cobs = now.cobs_errors.wrapping_sub(was.cobs_errors);
        let d_over = now.overflows.wrapping_sub(was.overflows);
        if d_crc + d_cobs + d_over == 0 {
            return;
        }
        CRC_ERRORS.fetch_add(d_crc, Ordering::Relaxed);
        COBS_ERRORS.fetch_add(d_cobs, Ordering::Relaxed);
        OVERFLOWS.fetch_add(d_over, Ordering::Relaxed);
        tracing::warn!(
            remote = %self.remote,
            crc_errors = now.crc_errors,
            cobs_errors = now.cobs_errors,
            overflows = now.overflows,
            "serial framing error: frame dropped"
        );
    }
}

fn closed_or_io(e: std::io::Error) -> LinkError {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected => {
            LinkError::Closed
        }
        _ => LinkError::Io(e),
    }
}

fn make_link(r: Reader, w: Writer, info: LinkInfo) -> Link {
    let remote = info.remote.clone();
    Link {
        info,
        tx: LinkTx::Serial(SerialTx { w, buf: Vec::new() }),
        rx: LinkRx::Serial(SerialRx {
            r,
            de: Deframer::new(vec![0u8; framing::deframer_len(SERIAL_MTU)]),
            input: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            seen: FramingStats::default(),
            remote,
        }),
    }
}

fn tcp_info(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> LinkInfo {
    LinkInfo {
        protocol: Protocol::SerialTcp,
        local: Endpoint::from_socket(Protocol::SerialTcp, local),
        remote: Endpoint::from_socket(Protocol::SerialTcp, remote),
        mtu: SERIAL_MTU,
        reliable: true,
        peer_certificate: None,
    }
}

fn tcp_link(s: tokio::net::TcpStream, info: LinkInfo) -> Link {
    let _ = s.set_nodelay(true);
    let (r, w) = s.into_split();
    make_link(Box::new(r), Box::new(w), info)
}

/// Connects to a board's UART exposed as a TCP server.
pub(crate) async fn connect_tcp(endpoint: &Endpoint) -> Result<Link, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let addrs = endpoint.resolve().await.map_err(io)?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let local = s.local_addr().map_err(io)?;
                return Ok(tcp_link(s, tcp_info(local, addr)));
            }
            Err(e) => last = e,
        }
    }
    Err(io(last))
}

/// Accepts boards whose UART dials out over TCP.
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
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, peer)) => {
                    if tx
                        .send(tcp_link(s, tcp_info(local_addr, peer)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(%local_addr, "serial+tcp accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(Listener::new(
        Endpoint::from_socket(Protocol::SerialTcp, local_addr),
        rx,
        vec![AbortOnDrop(task)],
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LinkRecv, LinkSend, TlsConfig};

    #[tokio::test]
    async fn frames_cross_and_noise_is_counted() {
        let ep: Endpoint = "serial+tcp/127.0.0.1:0".parse().unwrap();
        let mut l = crate::listen(&ep, &TlsConfig::default()).await.unwrap();
        let at = l.local_endpoint().clone();
        assert_eq!(at.protocol(), Protocol::SerialTcp);
        assert!(at.protocol().far_end_opens());
        // A raw "device" on the other end: noise, a corrupted frame, then a good one.
        let addr = at.socket_addr().unwrap();
        let dev = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut good = vec![0u8; framing::encoded_len(5)];
            let n = framing::encode(b"hello", &mut good).unwrap();
            good.truncate(n);
            let mut bad = good.clone();
            bad[3] ^= 0x01;
            let mut bytes = vec![0x42, 0x17, 0x00];
            bytes.extend_from_slice(&bad);
            bytes.extend_from_slice(&good);
            s.write_all(&bytes).await.unwrap();
            let mut back = vec![0u8; 64];
            let n = s.read(&mut back).await.unwrap();
            back.truncate(n);
            back
        });
        let mut link = l.accept().await.unwrap();
        assert_eq!(link.info.mtu, SERIAL_MTU);
        let got = link.rx.recv().await.unwrap();
        assert_eq!(&got[..], b"hello");
        let LinkRx::Serial(rx) = &link.rx else {
            panic!("not a serial link")
        };
        let s = rx.stats();
        assert_eq!((s.frames, s.crc_errors + s.cobs_errors), (1, 2), "{s:?}");
        link.tx.send(b"world").await.unwrap();
        let back = dev.await.unwrap();
        let mut de = Deframer::new(vec![0u8; 64]);
        let (_, f) = de.push(&back);
        assert_eq!(de.frame(f.unwrap()), b"world");
        assert!(framing_totals().crc_errors + framing_totals().cobs_errors >= 2);
    }
}
