//! Serial links: batches framed `0x00 COBS(batch | CRC-32/IEEE) 0x00` over a byte stream, the
//! framing of `hypha_core::framing` (the very code the device node runs).
//!
//! - `serial+tcp/HOST:PORT`: the framing over a TCP connection, which is how an emulated
//!   board's UART is reached (QEMU `-serial tcp:HOST:PORT,server=on`); listening accepts boards
//!   whose UART dials out (`server=off`). No preamble: the first bytes are frames.
//! - `serial/PATH#baud=N` (e.g. `serial//dev/ttyUSB0#baud=115200`, a USB adapter, a board's
//!   UART or a pty): the tty opened read-write in raw mode, 8 data bits, no parity, one stop
//!   bit, no flow control, at N baud (115,200 by default), for exclusive use (`flock` and
//!   `TIOCEXCL`: a second opener is refused).
//!   Lines are dialled only (`--connect`); a line that hangs up or fails is reopened by the
//!   runtime's redial. Termios through `rustix` (no unsafe here), readiness through tokio's
//!   reactor.
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

/// One serial link's framing counters, shared between its receiving half (which stores them
/// after every push into the deframer) and its [`LinkProbe`](crate::LinkProbe) (which the
/// runtime's face reads for the admin space).
#[derive(Debug, Default)]
pub(crate) struct SharedFraming {
    frames: AtomicU32,
    crc_errors: AtomicU32,
    cobs_errors: AtomicU32,
    overflows: AtomicU32,
}

impl SharedFraming {
    fn store(&self, s: &FramingStats) {
        self.frames.store(s.frames, Ordering::Relaxed);
        self.crc_errors.store(s.crc_errors, Ordering::Relaxed);
        self.cobs_errors.store(s.cobs_errors, Ordering::Relaxed);
        self.overflows.store(s.overflows, Ordering::Relaxed);
    }

    pub(crate) fn load(&self) -> FramingStats {
        FramingStats {
            frames: self.frames.load(Ordering::Relaxed),
            crc_errors: self.crc_errors.load(Ordering::Relaxed),
            cobs_errors: self.cobs_errors.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
        }
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
    /// This link's counters as the face sees them (through the link's probe).
    shared: std::sync::Arc<SharedFraming>,
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
        self.shared.store(&now);
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
    // EIO: a pty whose other side closed, or an unplugged USB adapter: the line's end.
    if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) {
        return LinkError::Closed;
    }
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected => {
            LinkError::Closed
        }
        _ => LinkError::Io(e),
    }
}

fn make_link(r: Reader, w: Writer, mut info: LinkInfo) -> Link {
    let remote = info.remote.clone();
    let shared = std::sync::Arc::new(SharedFraming::default());
    info.probe.framing = Some(shared.clone());
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
            shared,
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
        probe: Default::default(),
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

/// Opens `path` as a raw 8N1 line at `baud`, non-blocking, for this process alone.
fn open_tty(path: &std::path::Path, baud: u32) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    use rustix::termios::{
        ControlModes, InputModes, OptionalActions, QueueSelector, SpecialCodeIndex,
    };
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if !rustix::termios::isatty(&fd) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a terminal (tty) device", path.display()),
        ));
    }
    let mut t = rustix::termios::tcgetattr(&fd)?;
    t.make_raw();
    t.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD | ControlModes::CS8;
    t.control_modes &= !(ControlModes::CSTOPB | ControlModes::PARENB | ControlModes::CRTSCTS);
    t.input_modes &= !(InputModes::IXON | InputModes::IXOFF | InputModes::IXANY);
    t.special_codes[SpecialCodeIndex::VMIN] = 1;
    t.special_codes[SpecialCodeIndex::VTIME] = 0;
    t.set_speed(baud).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("baud rate {baud} refused by {}: {e}", path.display()),
        )
    })?;
    rustix::termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    // Another process opening the line would interleave bytes with ours: an advisory lock
    // (honoured by other Hypha nodes and serialport-based tools, root included), and
    // TIOCEXCL for the rest (root bypasses it).
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!("{} is in use by another process ({e})", path.display()),
        )
    })?;
    rustix::termios::ioctl_tiocexcl(&fd)?;
    // Bytes queued before we owned the line are from an old session (the device resends Init).
    let _ = rustix::termios::tcflush(&fd, QueueSelector::IFlush);
    Ok(std::fs::File::from(fd))
}

/// Opens a serial line (`serial/PATH#baud=N`).
pub(crate) async fn connect_tty(endpoint: &Endpoint) -> Result<Link, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let Endpoint::Serial { path, baud } = endpoint else {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a serial/ endpoint",
        )));
    };
    let file = open_tty(path, *baud).map_err(io)?;
    // Two descriptors of the one open line, each registered with the reactor. tokio's pipe
    // halves only need a pollable, non-blocking descriptor, which a tty is.
    let w = file.try_clone().map_err(io)?;
    let r = tokio::net::unix::pipe::Receiver::from_file_unchecked(file).map_err(io)?;
    let w = tokio::net::unix::pipe::Sender::from_file_unchecked(w).map_err(io)?;
    let info = LinkInfo {
        protocol: Protocol::Serial,
        local: endpoint.clone(),
        remote: endpoint.clone(),
        mtu: SERIAL_MTU,
        reliable: true,
        peer_certificate: None,
        probe: Default::default(),
    };
    Ok(make_link(Box::new(r), Box::new(w), info))
}

/// A serial line is opened, not listened on.
pub(crate) fn listen_tty(endpoint: &Endpoint) -> Result<Listener, ListenError> {
    Err(ListenError::Address(
        endpoint.clone(),
        "a serial line is opened, not listened on: give it to --connect".into(),
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

    /// A pty pair: the master end (the "device"), and the slave's path.
    fn pty() -> (std::fs::File, String) {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let m = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&m).unwrap();
        unlockpt(&m).unwrap();
        let name = ptsname(&m, Vec::new()).unwrap();
        (std::fs::File::from(m), name.to_string_lossy().into_owned())
    }

    #[tokio::test]
    async fn a_tty_line_carries_frames_both_ways_and_its_hangup_closes_the_link() {
        use std::io::{Read, Write};
        let (mut master, slave) = pty();
        let ep: Endpoint = format!("serial/{slave}#baud=115200").parse().unwrap();
        let mut link = crate::connect(&ep, &TlsConfig::default()).await.unwrap();
        assert_eq!(link.info.protocol, Protocol::Serial);
        assert_eq!(link.info.remote, ep);
        // The device: junk, then a frame.
        let mut good = vec![0u8; framing::encoded_len(5)];
        let n = framing::encode(b"hello", &mut good).unwrap();
        let mut bytes = vec![0x42, 0x00];
        bytes.extend_from_slice(&good[..n]);
        master.write_all(&bytes).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), link.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"hello");
        link.tx.send(b"world").await.unwrap();
        let back = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 64];
            let mut got = Vec::new();
            let mut de = Deframer::new(vec![0u8; 64]);
            loop {
                let n = master.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if let (_, Some(f)) = de.push(&got) {
                    return de.frame(f).to_vec(); // the master end closes here
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(back, b"world");
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), link.rx.recv())
            .await
            .unwrap();
        assert!(matches!(end, Err(LinkError::Closed)), "{end:?}");
    }

    #[tokio::test]
    async fn a_tty_that_cannot_be_used_is_a_clear_error() {
        let tls = TlsConfig::default();
        let e = crate::connect(&"serial//dev/null#baud=9600".parse().unwrap(), &tls)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("serial//dev/null#baud=9600") && e.contains("not a terminal"),
            "{e}"
        );
        let e = crate::connect(&"serial//nonexistent/ttyX".parse().unwrap(), &tls)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot connect to serial//nonexistent/ttyX"),
            "{e}"
        );
        // A line in use by another process is refused (TIOCEXCL).
        let (_master, slave) = pty();
        let ep: Endpoint = format!("serial/{slave}").parse().unwrap();
        let _first = crate::connect(&ep, &tls).await.unwrap();
        let e = crate::connect(&ep, &tls).await.unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        let e = crate::listen(&ep, &tls).await.unwrap_err().to_string();
        assert!(e.contains("--connect"), "{e}");
    }
}
