//! TLS over TCP (`tls/HOST:PORT`): TLS 1.3 (tokio-rustls, the ring provider) with the same
//! certificates and verifiers as QUIC links (`tls.rs`), then the stream framing of TCP links
//! (preamble, u16-length-prefixed batches) inside the encrypted stream. For networks that block
//! UDP; QUIC remains the default (no head-of-line blocking between priorities).

use crate::AbortOnDrop;
use crate::endpoint::{Endpoint, Host, Protocol};
use crate::link::{
    ConnectError, Link, LinkError, LinkInfo, LinkRx, LinkTx, ListenError, Listener, TlsCause,
};
use crate::stream::{StreamRx, StreamTx, closed_or_io, handshake, tcp_tune};
use crate::tls::TlsConfig;
use std::sync::Arc;
use tokio::sync::mpsc;

fn leaf(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Option<Arc<[u8]>> {
    certs
        .and_then(|c| c.first())
        .map(|c| Arc::<[u8]>::from(c.as_ref()))
}

fn link<S>(s: S, info: LinkInfo) -> Link
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(s);
    Link {
        info,
        tx: LinkTx::Stream(StreamTx::new_flushing(Box::new(w))),
        rx: LinkRx::Stream(StreamRx::new(Box::new(r))),
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(material.server_config()?));
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
    let local = Endpoint::from_socket(Protocol::Tls, local_addr);
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let (s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%local_addr, "tls accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                tcp_tune(&s);
                let setup = async {
                    let mut t = acceptor.accept(s).await.map_err(closed_or_io)?;
                    handshake(&mut t).await?;
                    Ok::<_, LinkError>(t)
                };
                match tokio::time::timeout(crate::SETUP_TIMEOUT, setup).await {
                    Ok(Ok(t)) => {
                        let peer_certificate = if verified {
                            leaf(t.get_ref().1.peer_certificates())
                        } else {
                            None
                        };
                        let info = LinkInfo {
                            protocol: Protocol::Tls,
                            local: Endpoint::from_socket(Protocol::Tls, local_addr),
                            remote: Endpoint::from_socket(Protocol::Tls, peer),
                            mtu: crate::MAX_BATCH,
                            reliable: true,
                            peer_certificate,
                            probe: crate::LinkProbe::tcp(t.get_ref().0),
                        };
                        let _ = tx.send(link(t, info)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, "refusing tls peer: {e}"),
                    Err(_) => tracing::warn!(%peer, "refusing tls peer: handshake timed out"),
                }
            });
        }
    });
    Ok(Listener::new(local, rx, vec![AbortOnDrop(task)], None))
}

pub(crate) async fn connect(endpoint: &Endpoint, tls: &TlsConfig) -> Result<Link, ConnectError> {
    let io = |source| ConnectError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let addr = crate::link::resolve_one(endpoint).await?;
    let material = tls.load()?;
    let verified = material.verifies_servers();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(material.client_config()?));
    let name = match endpoint {
        Endpoint::Net {
            host: Host::Name(n),
            ..
        } => n.clone(),
        _ => "hypha".to_string(),
    };
    let server_name =
        rustls::pki_types::ServerName::try_from(name).map_err(|e| ConnectError::Tls {
            endpoint: endpoint.clone(),
            cause: TlsCause::Other,
            reason: e.to_string(),
        })?;
    let s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    tcp_tune(&s);
    let local = s.local_addr().map_err(io)?;
    let refused = |e: LinkError| {
        let reason = e.to_string();
        match e {
            // rustls' own verdicts and the peer's alerts arrive as I/O errors.
            LinkError::Io(_) | LinkError::Closed => ConnectError::Tls {
                endpoint: endpoint.clone(),
                cause: TlsCause::from_alert(None, &reason),
                reason,
            },
            source => ConnectError::Link {
                endpoint: endpoint.clone(),
                source,
            },
        }
    };
    let mut t = connector
        .connect(server_name, s)
        .await
        .map_err(|e| refused(LinkError::Io(e)))?;
    // TLS 1.3: the listener judges our certificate after we think the handshake is done; its
    // alert arrives while we exchange preambles.
    handshake(&mut t).await.map_err(refused)?;
    let peer_certificate = if verified {
        leaf(t.get_ref().1.peer_certificates())
    } else {
        None
    };
    let info = LinkInfo {
        protocol: Protocol::Tls,
        local: Endpoint::from_socket(Protocol::Tls, local),
        remote: Endpoint::from_socket(Protocol::Tls, addr),
        mtu: crate::MAX_BATCH,
        reliable: true,
        peer_certificate,
        probe: crate::LinkProbe::tcp(t.get_ref().0),
    };
    Ok(link(t, info))
}
