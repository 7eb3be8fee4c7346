//! A principal from a peer's verified certificate, and the binding of node ids to keys.
//!
//! The certificate has already been verified by rustls (chain to the configured CA, validity
//! period, key usage) when this code sees it; here it is only parsed (x509-parser), never
//! trusted more than rustls did, and every parse failure is an error value (a certificate with
//! no common name is normal: the name then comes from a SAN).
//!
//! **Node ids are bound to keys.** A node whose certificate chains to the mesh's CA takes as
//! the first 8 bytes of its id the first 8 bytes of the SHA-256 of its certificate's public key
//! (SPKI); the other 8 are random per process, so several processes may share one credential
//! (a robot's node and the `hypha` commands run on it). A peer that claims an id without its
//! key's prefix is refused with [`IdentityError::IdentityMismatch`]: taking over another node's
//! id would take a 64-bit second preimage of SHA-256.

use super::{IdentitySource, Principal, PrincipalError, validate_principal};
use crate::digest::{sha256, to_hex};
use hypha_core::id::NodeId;
use x509_parser::prelude::*;

/// Why no principal could be taken from a certificate, or a link's identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate does not parse as X.509.
    #[error("the peer's certificate does not parse: {0}")]
    Parse(String),
    /// None of the configured sources (URI SAN, DNS SAN, CN) holds a name.
    #[error("the peer's certificate has no {0} to take a principal from")]
    NoName(String),
    /// The name found is not a safe principal.
    #[error(transparent)]
    Principal(#[from] PrincipalError),
    /// The peer claimed a node id that is not its key's.
    #[error(
        "identity mismatch: the peer claims node id {claimed}, but ids of its certificate's key start with {}",
        to_hex(prefix)
    )]
    IdentityMismatch {
        /// What the handshake said.
        claimed: NodeId,
        /// The first 8 bytes every id of that key has.
        prefix: [u8; 8],
    },
    /// `require_auth` is set and the peer presented no verified credential.
    #[error("authentication required: the peer presented no verified certificate")]
    AuthRequired,
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    Ok(sha256(cert.public_key().raw))
}

/// The first 8 bytes of every node id bound to a certificate's key.
pub fn id_prefix_of(cert_der: &[u8]) -> Result<[u8; 8], IdentityError> {
    let h = spki_sha256(cert_der)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    Ok(b)
}

/// A node id bound to a certificate's key: its prefix, then `random`.
pub fn node_id_for(cert_der: &[u8], random: u64) -> Result<NodeId, IdentityError> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&id_prefix_of(cert_der)?);
    b[8..].copy_from_slice(&random.to_be_bytes());
    Ok(NodeId(b))
}

/// The first 8 bytes of every node id bound to a pre-shared token (of hash `token_hash`).
pub fn id_prefix_of_token(token_hash: &[u8; 32]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&sha256(token_hash)[..8]);
    b
}

/// Checks that `claimed` is bound to the token.
pub fn check_bound_to_token(token_hash: &[u8; 32], claimed: NodeId) -> Result<(), IdentityError> {
    let prefix = id_prefix_of_token(token_hash);
    if claimed.0[..8] == prefix {
        Ok(())
    } else {
        Err(IdentityError::IdentityMismatch { claimed, prefix })
    }
}

/// Checks that `claimed` is bound to the certificate's key.
pub fn check_bound(cert_der: &[u8], claimed: NodeId) -> Result<(), IdentityError> {
    let prefix = id_prefix_of(cert_der)?;
    if claimed.0[..8] == prefix {
        Ok(())
    } else {
        Err(IdentityError::IdentityMismatch { claimed, prefix })
    }
}

/// Strips a URI SAN to a principal name: `hypha:robot/r42` → `robot/r42`,
/// `spiffe://fleet/robot/r42` → `fleet/robot/r42`.
fn uri_name(u: &str) -> &str {
    if let Some((_, rest)) = u.split_once("://") {
        rest.trim_end_matches('/')
    } else if let Some((_, rest)) = u.split_once(':') {
        rest
    } else {
        u
    }
}

/// The principal of a verified certificate: the first of `from` that the certificate holds,
/// validated, with the key's fingerprint.
pub fn principal_of(cert_der: &[u8], from: &[IdentitySource]) -> Result<Principal, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let sans: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(IdentityError::Parse(e.to_string())),
    };
    let mut name: Option<String> = None;
    for src in from {
        name = match src {
            IdentitySource::Uri => sans.iter().find_map(|g| match g {
                GeneralName::URI(u) => Some(uri_name(u).to_string()),
                _ => None,
            }),
            IdentitySource::Dns => sans.iter().find_map(|g| match g {
                GeneralName::DNSName(d) => Some((*d).to_string()),
                _ => None,
            }),
            IdentitySource::Cn => cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
        };
        if name.is_some() {
            break;
        }
    }
    let Some(name) = name else {
        let what: Vec<&str> = from
            .iter()
            .map(|s| match s {
                IdentitySource::Uri => "URI SAN",
                IdentitySource::Dns => "DNS SAN",
                IdentitySource::Cn => "common name",
            })
            .collect();
        return Err(IdentityError::NoName(what.join(", ")));
    };
    validate_principal(&name)?;
    let spki = to_hex(&sha256(cert.public_key().raw));
    Ok(Principal::new(&name)?.with_spki(format!("spki:sha256:{spki}")))
}
