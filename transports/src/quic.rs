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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const RX_QUEUE: usize = 256;
/// Header kind of a `Close` transport message (see `core/WIRE.md`).
const CLOSE_KIND: u8 = 3;
/// Header kind of a `Frame` (whole messages; fragments are kinds 6 and 7).
const FRAME_KIND: u8 = 5;

/// Sending half of a QUIC link.
#[derive(Debug)]
pub struct QuicTx {
    conn: quinn::Connection,
    streams: Box<[Option<quinn::SendStream>; 8]>,
    buf: Vec<u8>,
    /// Keeps the client endpoint alive for dialled links.
    _endpoint: Option<quinn::Endpoint>,
    /// The one strong reference behind the link's [`LinkProbe`](crate::LinkProbe) (its RTT):
    /// the probe's weak one fails once this half is gone.
    _probe: Arc<quinn::Connection>,
}

/// Receiving half of a QUIC link.
#[derive(Debug)]
pub struct QuicRx {
    rx: mpsc::Receiver<Result<Bytes, LinkError>>,
    _tasks: Vec<AbortOnDrop>,
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
        if batch.first().is_some_and(|h| h & 7 == CLOSE_KIND) {
            // A `Close` travels on the control stream; batches still in flight on the other
            // lanes' streams could arrive after it and be lost. Finish those streams and wait
            // (bounded) until the peer has read them to the end, then send the `Close`.
            self.drain_lanes().await;
        }
        let (priority, reliable) = crate::batch_lane(batch);
        // Only whole frames go as datagrams: the fragments of one message all take the lane's
        // stream, so a small last fragment cannot overtake the others and break reassembly.
        let whole = batch.first().is_some_and(|h| h & 7 == FRAME_KIND);
        if !reliable
            && whole
            && self
                .conn
                .max_datagram_size()
                .is_some_and(|m| batch.len() <= m)
        {
            match self.conn.send_datagram(Bytes::copy_from_slice(batch)) {
                Ok(()) => return Ok(()),
                Err(quinn::SendDatagramError::ConnectionLost(e)) => return Err(conn_err(e)),
                // Too large after all, or disabled: fall back to the lane's stream.
                Err(_) => {}
            }
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
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(batch);
        stream.write_all(&self.buf).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(c) => conn_err(c),
            other => quic_err(other),
        })
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
    pub(crate) async fn recv(&mut self) -> Result<Bytes, LinkError> {
        self.rx.recv().await.unwrap_or(Err(LinkError::Closed))
    }
}

/// Starts the reader tasks of a connection: one per incoming stream, one for datagrams.
fn spawn_readers(conn: quinn::Connection) -> QuicRx {
    let (tx, rx) = mpsc::channel(RX_QUEUE);
    let c = conn.clone();
    let t = tx.clone();
    let streams = tokio::spawn(async move {
        let mut readers = Vec::new();
        loop {
            match c.accept_uni().await {
                Ok(s) => {
                    let t = t.clone();
                    readers.push(AbortOnDrop(tokio::spawn(async move {
                        let mut r = StreamRx::new(Box::new(s));
                        loop {
                            // A stream that ends (finished, or reset) ends only this task: the
                            // connection's fate is reported by the accept loop below.
                            let Ok(batch) = r.recv().await else { return };
                            if t.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                    })));
                    if readers.len() > 16 {
                        readers.retain(|r: &AbortOnDrop| !r.0.is_finished());
                    }
                }
                Err(e) => {
                    let _ = t.send(Err(conn_err(e))).await;
                    return;
                }
            }
        }
    });
    let datagrams = tokio::spawn(async move {
        loop {
            match conn.read_datagram().await {
                Ok(d) if !d.is_empty() => {
                    // Best effort: drop rather than stall when the consumer lags.
                    let _ = tx.try_send(Ok(d));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(conn_err(e))).await;
                    return;
                }
            }
        }
    });
    QuicRx {
        rx,
        _tasks: vec![AbortOnDrop(streams), AbortOnDrop(datagrams)],
    }
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
    let rx = spawn_readers(conn.clone());
    Link {
        info,
        tx: LinkTx::Quic(QuicTx {
            conn,
            streams: Default::default(),
            buf: Vec::with_capacity(crate::MAX_BATCH + 2),
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
    let ep = quinn::Endpoint::server(server, addr).map_err(|source| ListenError::Bind {
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
    let mut ep = quinn::Endpoint::client(bind).map_err(io)?;
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
