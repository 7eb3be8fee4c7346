//! UDP links: one batch per datagram, best effort. An empty datagram means "closing".
//!
//! A listener owns one socket and demultiplexes datagrams by source address: the first datagram
//! from a new address yields a new link.

use crate::AbortOnDrop;
use crate::endpoint::{Endpoint, Protocol};
use crate::link::{ConnectError, Link, LinkError, LinkInfo, LinkRx, LinkTx, ListenError, Listener};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Largest batch sent in one datagram: fits a 1500-byte Ethernet MTU without IP fragmentation.
pub const UDP_MTU: usize = 1_452;
const PEER_QUEUE: usize = 256;
const MAX_PEERS: usize = 1_024;

/// Sending half of a UDP link.
#[derive(Debug)]
pub struct UdpTx {
    socket: Arc<UdpSocket>,
    /// Set on a listener's links (shared socket); `None` on a dialer's connected socket.
    peer: Option<SocketAddr>,
}

/// Receiving half of a UDP link.
#[derive(Debug)]
pub enum UdpRx {
    /// A dialer reads its own connected socket.
    Socket(Arc<UdpSocket>, BytesMut),
    /// A listener's link reads what the demultiplexer hands it.
    Chan(mpsc::Receiver<Bytes>),
}

impl UdpTx {
    pub(crate) async fn send(&mut self, batch: &[u8]) -> Result<(), LinkError> {
        if batch.len() > crate::MAX_BATCH {
            return Err(LinkError::TooLarge(batch.len()));
        }
        match self.peer {
            Some(p) => self.socket.send_to(batch, p).await?,
            None => self.socket.send(batch).await?,
        };
        Ok(())
    }

    pub(crate) async fn close(&mut self) {
        let _ = match self.peer {
            Some(p) => self.socket.send_to(&[], p).await,
            None => self.socket.send(&[]).await,
        };
    }
}

impl UdpRx {
    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        match self {
            UdpRx::Socket(s, buf) => {
                buf.clear();
                buf.reserve(65_536);
                match s.recv_buf(buf).await {
                    Ok(0) => Err(LinkError::Closed),
                    Ok(_) => Ok(buf.split().freeze()),
                    // ICMP port unreachable from an earlier send: the peer is gone.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        Err(LinkError::Closed)
                    }
                    Err(e) => Err(LinkError::Io(e)),
                }
            }
            UdpRx::Chan(rx) => match rx.recv().await {
                Some(b) if !b.is_empty() => Ok(b),
                _ => Err(LinkError::Closed),
            },
        }
    }
}

async fn bind_addr(endpoint: &Endpoint) -> Option<SocketAddr> {
    endpoint.resolve().await.ok()?.into_iter().next()
}

pub(crate) async fn listen(endpoint: &Endpoint) -> Result<Listener, ListenError> {
    let addr = bind_addr(endpoint)
        .await
        .ok_or_else(|| ListenError::Address(endpoint.clone(), "cannot resolve host".into()))?;
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|source| ListenError::Bind {
            endpoint: endpoint.clone(),
            source,
        })?;
    let local_addr = socket.local_addr().map_err(|source| ListenError::Bind {
        endpoint: endpoint.clone(),
        source,
    })?;
    let socket = Arc::new(socket);
    let local = Endpoint::from_socket(Protocol::Udp, local_addr);
    let (tx, rx) = mpsc::channel(64);
    let sock = socket.clone();
    let local2 = local.clone();
    let task = tokio::spawn(async move {
        let mut peers: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
        let mut buf = BytesMut::with_capacity(65_536);
        loop {
            buf.clear();
            buf.reserve(65_536);
            let (n, from) = match sock.recv_buf_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::trace!("udp recv error: {e}");
                    continue;
                }
            };
            let data = buf.split().freeze();
            if let Some(p) = peers.get(&from) {
                match p.try_send(data) {
                    Ok(()) => {}
                    // Best effort: a full queue drops the datagram.
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        peers.remove(&from);
                    }
                }
                if n == 0 {
                    peers.remove(&from);
                }
                continue;
            }
            if n == 0 {
                continue;
            }
            if peers.len() >= MAX_PEERS {
                peers.retain(|_, s| !s.is_closed());
                if peers.len() >= MAX_PEERS {
                    tracing::warn!(%from, "udp listener: too many peers, dropping datagram");
                    continue;
                }
            }
            let (ptx, prx) = mpsc::channel(PEER_QUEUE);
            let _ = ptx.try_send(data);
            peers.insert(from, ptx);
            let link = Link {
                info: LinkInfo {
                    protocol: Protocol::Udp,
                    local: local2.clone(),
                    remote: Endpoint::from_socket(Protocol::Udp, from),
                    mtu: UDP_MTU,
                    reliable: false,
                    peer_certificate: None,
                    probe: Default::default(),
                },
                tx: LinkTx::Udp(UdpTx {
                    socket: sock.clone(),
                    peer: Some(from),
                }),
                rx: LinkRx::Udp(UdpRx::Chan(prx)),
            };
            if tx.send(link).await.is_err() {
                return;
            }
        }
    });
    Ok(Listener::new(local, rx, vec![AbortOnDrop(task)], None))
}

pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Link, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let remote = crate::link::resolve_one(endpoint).await?;
    let any: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| io(std::io::Error::other("bad wildcard address")))?;
    let socket = UdpSocket::bind(any).await.map_err(io)?;
    socket.connect(remote).await.map_err(io)?;
    let local = socket.local_addr().map_err(io)?;
    let socket = Arc::new(socket);
    Ok(Link {
        info: LinkInfo {
            protocol: Protocol::Udp,
            local: Endpoint::from_socket(Protocol::Udp, local),
            remote: Endpoint::from_socket(Protocol::Udp, remote),
            mtu: UDP_MTU,
            reliable: false,
            peer_certificate: None,
            probe: Default::default(),
        },
        tx: LinkTx::Udp(UdpTx {
            socket: socket.clone(),
            peer: None,
        }),
        rx: LinkRx::Udp(UdpRx::Socket(socket, BytesMut::with_capacity(65_536))),
    })
}
