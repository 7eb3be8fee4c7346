//! TLS 1.3 for QUIC links (rustls with the ring provider).
//!
//! - No files configured: the node generates a self-signed certificate at start (rcgen) and logs
//!   that it does. Links are encrypted, peers are not authenticated.
//! - `ca` configured: a peer's certificate must chain to that CA, or the link is refused with a
//!   logged reason. Peers are dialled by address, so the certificate's names are not matched
//!   against the address; the CA is what vouches for a peer.
//! - `ca` + `mutual`: listeners also demand a client certificate signed by the CA (mTLS).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// ALPN protocol id of Hypha links.
pub const ALPN: &[u8] = b"hypha/1";

/// Where a node's TLS material lives. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA that signs every node's certificate.
    pub ca: Option<PathBuf>,
    /// PEM file of this node's certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    pub key: Option<PathBuf>,
    /// Demand client certificates signed by the CA (mutual TLS). Needs `ca`.
    pub mutual: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}: {reason}")]
    Load {
        /// Certificate, key or CA.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Only one of `cert` and `key` is set, or `mutual` without `ca`.
    #[error("incomplete TLS configuration: {0}")]
    Incomplete(&'static str),
    /// rustls refused the material.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// The CA file holds no usable certificate.
    #[error("the CA file {0} holds no usable certificate")]
    EmptyCa(PathBuf),
}

/// Loaded TLS material, ready to build rustls configurations.
#[derive(Debug)]
pub(crate) struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Option<Arc<RootCertStore>>,
    mutual: bool,
    provider: Arc<CryptoProvider>,
}

fn load_err(what: &'static str, path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Load {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl TlsConfig {
    /// The DER of this node's own leaf certificate, when files are configured.
    pub fn leaf_certificate(&self) -> Result<Option<Vec<u8>>, TlsError> {
        let Some(c) = &self.cert else {
            return Ok(None);
        };
        let first = CertificateDer::pem_file_iter(c)
            .map_err(|e| load_err("certificate", c, e))?
            .next()
            .ok_or_else(|| load_err("certificate", c, "no certificate in file"))?
            .map_err(|e| load_err("certificate", c, e))?;
        Ok(Some(first.as_ref().to_vec()))
    }

    pub(crate) fn load(&self) -> Result<TlsMaterial, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        if self.mutual && self.ca.is_none() {
            return Err(TlsError::Incomplete("mutual TLS needs a CA"));
        }
        let (chain, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let chain = CertificateDer::pem_file_iter(c)
                    .map_err(|e| load_err("certificate", c, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| load_err("certificate", c, e))?;
                if chain.is_empty() {
                    return Err(load_err("certificate", c, "no certificate in file"));
                }
                let key = PrivateKeyDer::from_pem_file(k).map_err(|e| load_err("key", k, e))?;
                (chain, key)
            }
            (None, None) => {
                let ck =
                    rcgen::generate_simple_self_signed(vec!["hypha".into(), "localhost".into()])
                        .map_err(|e| TlsError::Generate(e.to_string()))?;
                tracing::info!(
                    "no TLS certificate configured: generated a self-signed one \
                     (links are encrypted, peers are not authenticated)"
                );
                let key =
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
                (vec![ck.cert.der().clone()], key)
            }
            _ => return Err(TlsError::Incomplete("cert and key must be given together")),
        };
        let roots = match &self.ca {
            Some(ca) => {
                let mut store = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| load_err("CA", ca, e))? {
                    let c = c.map_err(|e| load_err("CA", ca, e))?;
                    store.add(c).map_err(|e| load_err("CA", ca, e))?;
                }
                if store.is_empty() {
                    return Err(TlsError::EmptyCa(ca.clone()));
                }
                Some(Arc::new(store))
            }
            None => None,
        };
        Ok(TlsMaterial {
            chain,
            key,
            roots,
            mutual: self.mutual,
            provider,
        })
    }
}

impl TlsMaterial {
    /// Listeners verify client certificates against the CA.
    pub(crate) fn verifies_clients(&self) -> bool {
        self.roots.is_some() && self.mutual
    }

    /// Dialers verify server certificates against the CA.
    pub(crate) fn verifies_servers(&self) -> bool {
        self.roots.is_some()
    }

    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match (&self.roots, self.mutual) {
            (Some(roots), true) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let verifier: Arc<dyn ServerCertVerifier> = match &self.roots {
            Some(roots) => Arc::new(CaVerifier {
                inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
            }),
            None => Arc::new(AnyCert(self.provider.clone())),
        };
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut cfg = if self.roots.is_some() {
            // Present our certificate, in case the listener asks for mutual TLS.
            builder.with_client_auth_cert(self.chain.clone(), self.key.clone_key())?
        } else {
            builder.with_no_client_auth()
        };
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Accepts any certificate but still checks the handshake signatures (self-signed mode).
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the chain against the CA; the certificate's names are not matched against the
/// dialled address (peers are found by address, the CA vouches for them).
#[derive(Debug)]
struct CaVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
