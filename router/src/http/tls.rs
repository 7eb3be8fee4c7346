//! HTTPS for the gateway (`[http] tls = true`): rustls over the gateway's TCP listener, and
//! the client certificate as the caller's identity.
//!
//! - The certificate and key are `http.cert`/`http.key` (by default the node's `[tls]` ones),
//!   TLS 1.2 or 1.3, ALPN `http/1.1` (the gateway speaks HTTP/1.1).
//! - With a client CA (`http.client_ca`, by default `[tls] ca`) the server asks for a client
//!   certificate but does not demand one: a certificate that does not chain to the CA fails the
//!   handshake; a verified one names the caller's principal exactly as a link's certificate
//!   does ([`principal_of`] with the ACL's `identity_from`); a caller without one is judged by
//!   bearer tokens as over plain HTTP (`anonymous` when no token is required, 401 when one is).
//! - Handshakes run in their own tasks (10 s at most), so a slow or silent client never holds
//!   up the others; axum sees only finished TLS streams.

use super::ServeError;
use crate::acl::identity::principal_of;
use crate::acl::{Acl, DEFAULT_IDENTITY_FROM, Principal};
use crate::config::HttpConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn load_err(what: &'static str, path: &std::path::Path, e: impl std::fmt::Display) -> ServeError {
    ServeError::TlsFile {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The rustls configuration of `config`'s HTTPS (`tls` set).
pub(super) fn server_config(config: &HttpConfig) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
        return Err(ServeError::TlsIncomplete);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| load_err("certificate", cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_err("certificate", cert, e))?;
    if chain.is_empty() {
        return Err(load_err("certificate", cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| load_err("key", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| load_err("client CA", ca, e))? {
                let c = c.map_err(|e| load_err("client CA", ca, e))?;
                roots.add(c).map_err(|e| load_err("client CA", ca, e))?;
            }
            if roots.is_empty() {
                return Err(load_err("client CA", ca, "no certificate in file"));
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What the gateway knows of an HTTPS caller's connection.
#[derive(Clone, Debug)]
pub(super) struct Client {
    /// The leaf certificate the client CA verified, if the client sent one.
    pub(super) certificate: Option<Arc<[u8]>>,
}

/// The principal a verified client certificate names, by the node's ACL's `identity_from`
/// (the links' rule); `None` (401) when it names none and the node has an ACL. Without an ACL
/// such a certificate is `anonymous`, as on links.
pub(super) fn principal(acl: Option<&Acl>, cert: &[u8]) -> Option<Principal> {
    let from = acl.map_or(&DEFAULT_IDENTITY_FROM[..], |a| a.identity_from());
    match principal_of(cert, from) {
        Ok(p) => Some(p),
        Err(e) if acl.is_none() => {
            tracing::debug!("http client certificate names no principal ({e}): anonymous");
            Some(Principal::anonymous())
        }
        Err(e) => {
            tracing::debug!("http client certificate refused: {e}");
            None
        }
    }
}

/// TLS connections, handshaken in tasks of their own, for `axum::serve`.
pub(super) struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, Client)>,
    /// Stops accepting when the listener (the gateway's serve task) goes.
    _accept_task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    pub(super) fn new(listener: TcpListener, cfg: Arc<rustls::ServerConfig>) -> TlsListener {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let (tx, done) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (s, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("https accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                        Ok(Ok(t)) => {
                            let certificate = t
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| Arc::from(c.as_ref()));
                            let _ = tx.send((t, Client { certificate })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "https handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            done,
            _accept_task: AbortOnDrop(task),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Client;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept task has gone (the gateway is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Client { certificate: None })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for Client
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
