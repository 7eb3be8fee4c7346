//! Samples, replies and reply errors: plain data every layer (net, runtime, api, storage)
//! may use. A leaf: it depends on nothing in this crate.

use bytes::Bytes;
use hypha_core::hlc::Timestamp;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::KeyExpr;
pub use hypha_core::wire::SampleKind;
use std::sync::Arc;

/// One publication as a subscriber sees it. Cloning is cheap: the key and payload are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The key it was published on (a concrete key expression).
    pub key: Arc<str>,
    /// The payload (empty for deletes). Shared with every other local receiver, never copied.
    pub payload: Bytes,
    /// Put or delete.
    pub kind: SampleKind,
    /// When and by whom it was made, if the publisher (or a storage) stamped it.
    pub timestamp: Option<Timestamp>,
    /// How to read the payload (MIME-like), if the publisher said.
    pub encoding: Option<Arc<str>>,
    /// Extra user bytes.
    pub attachment: Option<Bytes>,
    /// The publisher it came from and its sequence number, end to end (samples of declared
    /// publishers); subscribers count duplicates and gaps with it.
    pub source: Option<SampleSource>,
}

/// Which publisher made a sample, and its place in that publisher's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleSource {
    /// The publishing node.
    pub node: NodeId,
    /// The publisher, numbered by its node.
    pub publisher: u32,
    /// The publisher's sequence number (from 0, wrapping at 2^32).
    pub sn: u32,
}

impl Sample {
    /// The key as a key expression (`None` only if a sample was built by hand with a bad key:
    /// every sample Hypha delivers has a validated key).
    pub fn key_expr(&self) -> Option<KeyExpr<'_>> {
        KeyExpr::new(&self.key).ok()
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// An error a queryable answered instead of a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// Its payload.
    pub payload: Bytes,
    /// Its encoding.
    pub encoding: Option<Arc<str>>,
}

impl ErrorReply {
    /// The refusal this error carries, when access control refused the query or a reply.
    pub fn access_denied(&self) -> Option<crate::acl::AccessDenied> {
        if self.encoding.as_deref() != Some(crate::acl::DENIED_ENCODING) {
            return None;
        }
        crate::acl::AccessDenied::from_payload(&self.payload)
    }
}

/// One reply to a `get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// A sample, or the queryable's error.
    pub result: Result<Sample, ErrorReply>,
    /// The node that answered (`None`: this node).
    pub replier: Option<NodeId>,
}
