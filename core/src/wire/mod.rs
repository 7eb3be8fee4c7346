//! The wire protocol: every message Hypha nodes exchange, and its encoding.
//!
//! Three layers, each documented byte by byte in `core/WIRE.md`:
//!
//! - **Transport messages** ([`TransportMessage`]): exactly one per *batch*, the unit a link
//!   carries (one QUIC/TCP length-delimited frame, one UDP datagram). They run the link:
//!   handshake ([`Init`], [`Accept`], [`Open`]), [`Close`], keep-alive, and the carriers of
//!   network messages, [`Frame`] and [`Fragment`]. The first byte is a hand-packed header
//!   (kind, priority lane, reliability, more-fragments flag); the body is postcard.
//! - **Network messages** ([`NetworkMessage`]): the mesh's payload, packed back to back inside a
//!   frame: puts and deletes, declarations, queries and replies. Encoded with postcard (varints);
//!   the variant order is the wire contract (append, never reorder).
//! - **Scouting messages** ([`ScoutMessage`]): discovery, sent outside any link.
//!
//! Decoding borrows from the input: payloads, key expressions and strings are slices of the
//! received buffer, never copies. Every decoder validates what it decodes (key expressions are
//! checked for syntax and canon form; lengths are capped, see [`limits`]) and returns a
//! [`DecodeError`] rather than panicking on any input.
//!
//! ```
//! use hypha_core::wire::{Frame, NetworkMessage, Priority, Put, TransportMessage};
//! let mut body = [0u8; 64];
//! let n = NetworkMessage::Put(Put { key_id: 3, payload: b"12.5" }).encode(&mut body).unwrap();
//! let frame = TransportMessage::Frame(Frame {
//!     priority: Priority::Data,
//!     reliable: true,
//!     sn: 7,
//!     payload: &body[..n],
//! });
//! let mut out = [0u8; 64];
//! let len = frame.encode(&mut out).unwrap();
//! let TransportMessage::Frame(f) = TransportMessage::decode(&out[..len]).unwrap() else {
//!     unreachable!()
//! };
//! let msgs: Vec<_> = f.messages().collect::<Result<_, _>>().unwrap();
//! assert_eq!(msgs, [NetworkMessage::Put(Put { key_id: 3, payload: b"12.5" })]);
//! ```

mod network;
mod scout;
mod transport;
mod varint;

#[cfg(test)]
mod tests;

pub use network::*;
pub use scout::*;
pub use transport::*;

use crate::keyexpr::KeyExprError;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The protocol version carried in the handshake and in scouting messages.
pub const PROTOCOL_VERSION: u8 = 1;

/// Size caps enforced while decoding remote input.
pub mod limits {
    /// Largest batch (one transport message) a link may carry, in bytes.
    pub const MAX_BATCH_SIZE: usize = 65_535;
    /// Longest key expression accepted, in bytes.
    pub const MAX_KEY_LEN: usize = 1_024;
    /// Longest selector parameter string accepted, in bytes.
    pub const MAX_PARAMS_LEN: usize = 4_096;
    /// Longest encoding (MIME-like) string accepted, in bytes.
    pub const MAX_ENCODING_LEN: usize = 256;
    /// Longest close-reason detail, in bytes.
    pub const MAX_DETAIL_LEN: usize = 256;
    /// Longest locator list in a scouting hello, in bytes.
    pub const MAX_LOCATORS_LEN: usize = 4_096;
}

/// Priority lanes, highest first. Each lane has its own sequence numbers and queue, so a bulk
/// transfer on a low lane never delays real-time traffic on a high one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Priority {
    /// Link control (declarations travel here).
    Control = 0,
    /// Real-time telemetry.
    RealTime = 1,
    /// Interactive, high.
    InteractiveHigh = 2,
    /// Interactive, low.
    InteractiveLow = 3,
    /// Data, high.
    DataHigh = 4,
    /// Data (the default).
    #[default]
    Data = 5,
    /// Data, low.
    DataLow = 6,
    /// Background bulk transfers.
    Background = 7,
}

impl Priority {
    /// All lanes, highest priority first.
    pub const ALL: [Priority; 8] = [
        Priority::Control,
        Priority::RealTime,
        Priority::InteractiveHigh,
        Priority::InteractiveLow,
        Priority::DataHigh,
        Priority::Data,
        Priority::DataLow,
        Priority::Background,
    ];

    /// The lane for a 3-bit value.
    pub const fn from_bits(b: u8) -> Priority {
        match b & 7 {
            0 => Priority::Control,
            1 => Priority::RealTime,
            2 => Priority::InteractiveHigh,
            3 => Priority::InteractiveLow,
            4 => Priority::DataHigh,
            5 => Priority::Data,
            6 => Priority::DataLow,
            _ => Priority::Background,
        }
    }

    /// The lane index, 0 (highest) to 7.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The role a node plays in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Routes to its local subscribers and direct neighbours.
    #[default]
    Peer,
    /// Attaches to one router or peer; never forwards.
    Client,
    /// Forwards between sites.
    Router,
}

impl Mode {
    /// The mode's lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Peer => "peer",
            Mode::Client => "client",
            Mode::Router => "router",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field whose length is capped while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// A key expression.
    KeyExpr,
    /// Selector parameters.
    Parameters,
    /// An encoding string.
    Encoding,
    /// A close-reason detail.
    Detail,
    /// A scouting locator list.
    Locators,
    /// A whole batch.
    Batch,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::KeyExpr => "key expression",
            Field::Parameters => "parameters",
            Field::Encoding => "encoding",
            Field::Detail => "close detail",
            Field::Locators => "locators",
            Field::Batch => "batch",
        })
    }
}

/// Why bytes could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the message did.
    Truncated,
    /// An unknown message kind or variant tag.
    UnknownTag(u32),
    /// Header bits that must be zero for this kind were set.
    ReservedBits(u8),
    /// The body is not a valid postcard encoding of the expected message.
    Malformed,
    /// A varint is longer than its type allows.
    BadVarint,
    /// A length exceeds its cap.
    TooLong {
        /// Which field.
        field: Field,
        /// Its length in bytes.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A key expression is invalid.
    KeyExpr(KeyExprError),
    /// Bytes were left over after a message that must end its buffer.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("message truncated"),
            DecodeError::UnknownTag(t) => write!(f, "unknown message tag {t}"),
            DecodeError::ReservedBits(h) => write!(f, "reserved header bits set in {h:#04x}"),
            DecodeError::Malformed => f.write_str("malformed message body"),
            DecodeError::BadVarint => f.write_str("varint too long"),
            DecodeError::TooLong { field, len, max } => {
                write!(f, "{field} of {len} bytes exceeds the cap of {max}")
            }
            DecodeError::KeyExpr(e) => write!(f, "invalid key expression: {e}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes after message"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<KeyExprError> for DecodeError {
    fn from(e: KeyExprError) -> Self {
        DecodeError::KeyExpr(e)
    }
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            postcard::Error::DeserializeBadVarint => DecodeError::BadVarint,
            _ => DecodeError::Malformed,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small for the message.
    BufferTooSmall,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl core::error::Error for EncodeError {}

impl From<postcard::Error> for EncodeError {
    fn from(_: postcard::Error) -> Self {
        EncodeError::BufferTooSmall
    }
}

/// A borrowed byte string, encoded as a varint length followed by the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RawBytes<'a>(pub &'a [u8]);

impl fmt::Debug for RawBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print payload bytes in Debug output: only their length.
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawBytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawBytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("borrowed bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(RawBytes(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

pub(crate) fn check_len(field: Field, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

/// Encodes a postcard value at the start of `buf`, returning the number of bytes written.
pub(crate) fn put_postcard<T: Serialize + ?Sized>(
    v: &T,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    Ok(postcard::to_slice(v, buf)?.len())
}

/// Writes `data` at `buf[pos..]`, returning the new position.
pub(crate) fn put_slice(buf: &mut [u8], pos: usize, data: &[u8]) -> Result<usize, EncodeError> {
    let end = pos
        .checked_add(data.len())
        .ok_or(EncodeError::BufferTooSmall)?;
    buf.get_mut(pos..end)
        .ok_or(EncodeError::BufferTooSmall)?
        .copy_from_slice(data);
    Ok(end)
}

/// `buf[pos..]`, or `BufferTooSmall`.
pub(crate) fn tail_mut(buf: &mut [u8], pos: usize) -> Result<&mut [u8], EncodeError> {
    buf.get_mut(pos..).ok_or(EncodeError::BufferTooSmall)
}
