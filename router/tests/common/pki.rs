//! A test PKI made with rcgen: a CA, and leaf certificates naming principals, on disk.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap fails the test

use hypha_transports::TlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A CA in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
    n: AtomicUsize,
}

impl Pki {
    /// A new CA.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so that a certificate of another test CA is "unknown issuer".
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        p.distinguished_name
            .push(DnType::CommonName, format!("hypha test CA {n}"));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Pki {
            dir,
            ca,
            ca_path,
            n: AtomicUsize::new(0),
        }
    }

    /// TLS files for a node whose certificate names `principal` in a URI SAN (`hypha:NAME`),
    /// with no common name; `tweak` may change the parameters first.
    pub fn node(&self, principal: &str, tweak: impl FnOnce(&mut CertificateParams)) -> TlsConfig {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            format!("hypha:{principal}").try_into().unwrap(),
        )];
        p.distinguished_name = DistinguishedName::new();
        tweak(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        let i = self.n.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("node{i}.pem"));
        let key_path = self.dir.path().join(format!("node{i}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TlsConfig {
            ca: Some(self.ca_path.clone()),
            cert: Some(cert_path),
            key: Some(key_path),
            mutual: true,
        }
    }
}

/// The `[tls]` section of a node's TOML file holding `t` (mutual TLS).
pub fn tls_toml(t: &TlsConfig) -> String {
    let p = |x: &Option<PathBuf>| x.as_ref().unwrap().display().to_string();
    format!(
        "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\nmutual = true\n",
        p(&t.ca),
        p(&t.cert),
        p(&t.key)
    )
}
