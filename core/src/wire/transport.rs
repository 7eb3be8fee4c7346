//! Transport messages: one per batch; they run the link.

use super::varint;
use super::{
    DecodeError, EncodeError, Field, Mode, NetworkMessage, Priority, check_len, limits,
    put_postcard, put_slice, tail_mut,
};
use crate::id::NodeId;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Header kinds (low three bits of the first byte of a batch).
mod kind {
    pub const INIT: u8 = 0;
    pub const ACCEPT: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const CLOSE: u8 = 3;
    pub const KEEP_ALIVE: u8 = 4;
    pub const FRAME: u8 = 5;
    pub const FRAGMENT_FIRST: u8 = 6;
    pub const FRAGMENT_NEXT: u8 = 7;
}

const PRIO_SHIFT: u8 = 3;
const FLAG_RELIABLE: u8 = 1 << 6;
const FLAG_MORE: u8 = 1 << 7;

/// Opens a link: sent by the dialing side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// Protocol version of the sender.
    pub version: u8,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The sender's mode.
    pub mode: Mode,
    /// Largest batch the sender accepts, in bytes.
    pub batch_size: u16,
    /// Sequence-number resolution the sender proposes, in bits (7 to 32); the smaller of both
    /// sides' is used. 7 bits keep the frame header at two bytes.
    pub sn_bits: u8,
    /// The sender's lease in milliseconds: it promises to send something at least this often
    /// (it sends keep-alives every lease / 4 when otherwise idle).
    pub lease_ms: u32,
    /// First sequence number the sender will use on every lane (reduced modulo the negotiated
    /// resolution). Carried here so that the listener can accept frames that overtake `Open`
    /// on a multi-stream link.
    pub initial_sn: u32,
    /// The sender acknowledges what it receives on reliable lanes ([`Acks`]) and understands
    /// acknowledgements. Carried in the header's R bit (`0x40`), not in the body.
    #[serde(skip)]
    pub acks: bool,
}

/// Answers an [`Init`]: sent by the listening side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// Protocol version of the sender.
    pub version: u8,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The sender's mode.
    pub mode: Mode,
    /// Negotiated batch size: the smaller of both sides'.
    pub batch_size: u16,
    /// Negotiated sequence-number resolution in bits: the smaller of both sides'.
    pub sn_bits: u8,
    /// The sender's lease in milliseconds.
    pub lease_ms: u32,
    /// First sequence number the sender will use on every lane.
    pub initial_sn: u32,
    /// Both sides acknowledge reliable lanes ([`Acks`]): set only when the `Init` said so and
    /// the listener does too. Carried in the header's R bit (`0x40`), not in the body.
    #[serde(skip)]
    pub acks: bool,
}

/// Completes the handshake: sent by the dialing side after an [`Accept`]. Until the listener
/// hears it (or any frame, which may overtake it on a multi-stream link), it sends no data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// First sequence number the sender will use on every lane; equals `Init::initial_sn`
    /// reduced modulo the negotiated resolution.
    pub initial_sn: u32,
}

/// Why a link was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CloseReason {
    /// Orderly shutdown.
    Shutdown,
    /// The peers speak different protocol versions.
    UnsupportedVersion,
    /// Nothing was received within the lease.
    LeaseExpired,
    /// The peer sent bytes that do not decode.
    Malformed,
    /// The peer sent a message that is not valid in the current state.
    Unexpected,
    /// The peer exceeded a size cap (reassembly, declarations).
    TooLarge,
    /// A reliable lane lost or reordered a message.
    SequenceGap,
    /// The peer is already connected through another link.
    Duplicate,
    /// A node id we refuse (e.g. our own).
    Refused,
}

impl CloseReason {
    /// A short human description.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::UnsupportedVersion => "unsupported protocol version",
            CloseReason::LeaseExpired => "lease expired",
            CloseReason::Malformed => "malformed message",
            CloseReason::Unexpected => "unexpected message",
            CloseReason::TooLarge => "size cap exceeded",
            CloseReason::SequenceGap => "sequence gap on a reliable lane",
            CloseReason::Duplicate => "duplicate link",
            CloseReason::Refused => "refused",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Closes a link, saying why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close<'a> {
    /// The reason.
    pub reason: CloseReason,
    /// Free text for the log (capped at [`limits::MAX_DETAIL_LEN`]).
    pub detail: &'a str,
}

/// A batch of network messages on one lane.
///
/// The payload holds [`NetworkMessage`]s back to back up to the end of the batch; iterate them
/// with [`Frame::messages`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The lane.
    pub priority: Priority,
    /// Whether the lane is reliable (losses and reordering are protocol errors).
    pub reliable: bool,
    /// Sequence number of this frame on its lane.
    pub sn: u32,
    /// The encoded network messages.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Iterates the network messages of the frame, stopping after the first error.
    pub fn messages(&self) -> Messages<'a> {
        Messages {
            rest: self.payload,
            failed: false,
        }
    }
}

/// Iterator over the network messages of a frame or reassembled payload.
#[derive(Clone, Debug)]
pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Messages<'a> {
    /// Iterates the messages encoded back to back in `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Messages {
            rest: bytes,
            failed: false,
        }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<NetworkMessage<'a>, DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match NetworkMessage::take(self.rest) {
            Ok((m, rest)) => {
                self.rest = rest;
                Some(Ok(m))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One piece of a network message too large for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The lane.
    pub priority: Priority,
    /// Whether the lane is reliable.
    pub reliable: bool,
    /// True on the first fragment of a message.
    pub first: bool,
    /// True if more fragments of the same message follow.
    pub more: bool,
    /// Sequence number (fragments use the lane's sequence numbers like frames).
    pub sn: u32,
    /// The bytes of this piece.
    pub data: &'a [u8],
}

/// What the receiver of one reliable lane has had: counts since the session opened, wrapping
/// at 2^32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneAck {
    /// Network messages received in order on the lane (a fragmented one counts once, whole).
    pub messages: u32,
    /// Of those, data messages ([`NetworkMessage::is_data`]).
    pub data: u32,
}

/// Cumulative acknowledgements of reliable lanes, sent only on a session whose handshake
/// agreed on them (`Init::acks` and `Accept::acks`). It is also a keep-alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    /// By [`Priority::index`]: the counts of the reliable lane, or `None` when this message
    /// says nothing new about it.
    pub lanes: [Option<LaneAck>; 8],
}

/// A transport message: exactly one per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportMessage<'a> {
    /// Handshake, step 1 (dialer → listener).
    Init(Init),
    /// Handshake, step 2 (listener → dialer).
    Accept(Accept),
    /// Handshake, step 3 (dialer → listener).
    Open(Open),
    /// Link closed.
    Close(Close<'a>),
    /// Nothing to say, but alive.
    KeepAlive,
    /// Network messages.
    Frame(Frame<'a>),
    /// A piece of a large network message.
    Fragment(Fragment<'a>),
    /// Acknowledgements of reliable lanes (kind 4 with the R bit: a keep-alive with a body).
    Acks(Acks),
}

/// Bytes of frame header for a given sequence number (header byte + varint).
pub const fn frame_header_len(sn: u32) -> usize {
    1 + varint::len_u32(sn)
}

/// Writes a frame or fragment header at the start of `buf`, returning its length.
pub fn encode_frame_header(
    buf: &mut [u8],
    priority: Priority,
    reliable: bool,
    sn: u32,
) -> Result<usize, EncodeError> {
    let h = header(kind::FRAME, priority, reliable, false);
    let pos = put_slice(buf, 0, &[h])?;
    varint::put_u32(buf, pos, sn)
}

/// Writes a fragment header at the start of `buf`, returning its length.
pub fn encode_fragment_header(
    buf: &mut [u8],
    priority: Priority,
    reliable: bool,
    first: bool,
    more: bool,
    sn: u32,
) -> Result<usize, EncodeError> {
    let k = if first {
        kind::FRAGMENT_FIRST
    } else {
        kind::FRAGMENT_NEXT
    };
    let pos = put_slice(buf, 0, &[header(k, priority, reliable, more)])?;
    varint::put_u32(buf, pos, sn)
}

const fn ack_bit(acks: bool) -> u8 {
    if acks { FLAG_RELIABLE } else { 0 }
}

const fn header(kind: u8, priority: Priority, reliable: bool, more: bool) -> u8 {
    let mut h = kind | ((priority as u8) << PRIO_SHIFT);
    if reliable {
        h |= FLAG_RELIABLE;
    }
    if more {
        h |= FLAG_MORE;
    }
    h
}

impl<'a> TransportMessage<'a> {
    /// Encodes the message at the start of `buf`, returning its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            TransportMessage::Init(m) => Self::plain(buf, kind::INIT | ack_bit(m.acks), m),
            TransportMessage::Accept(m) => Self::plain(buf, kind::ACCEPT | ack_bit(m.acks), m),
            TransportMessage::Open(m) => Self::plain(buf, kind::OPEN, m),
            TransportMessage::Close(m) => Self::plain(buf, kind::CLOSE, m),
            TransportMessage::KeepAlive => put_slice(buf, 0, &[kind::KEEP_ALIVE]),
            TransportMessage::Frame(f) => {
                let pos = encode_frame_header(buf, f.priority, f.reliable, f.sn)?;
                put_slice(buf, pos, f.payload)
            }
            TransportMessage::Fragment(f) => {
                let pos =
                    encode_fragment_header(buf, f.priority, f.reliable, f.first, f.more, f.sn)?;
                put_slice(buf, pos, f.data)
            }
            TransportMessage::Acks(a) => {
                let mask = a
                    .lanes
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.is_some())
                    .fold(0u8, |m, (i, _)| m | 1 << i);
                let mut pos = put_slice(buf, 0, &[kind::KEEP_ALIVE | FLAG_RELIABLE, mask])?;
                for l in a.lanes.iter().flatten() {
                    pos = varint::put_u32(buf, pos, l.messages)?;
                    pos = varint::put_u32(buf, pos, l.data)?;
                }
                Ok(pos)
            }
        }
    }

    fn plain<T: Serialize>(buf: &mut [u8], k: u8, body: &T) -> Result<usize, EncodeError> {
        let pos = put_slice(buf, 0, &[k])?;
        Ok(pos + put_postcard(body, tail_mut(buf, pos)?)?)
    }

    /// Decodes one batch. The whole input must be one message (no trailing bytes).
    pub fn decode(batch: &'a [u8]) -> Result<Self, DecodeError> {
        check_len(Field::Batch, batch.len(), limits::MAX_BATCH_SIZE)?;
        let (&h, body) = batch.split_first().ok_or(DecodeError::Truncated)?;
        let k = h & 7;
        let priority = Priority::from_bits(h >> PRIO_SHIFT);
        let reliable = h & FLAG_RELIABLE != 0;
        let more = h & FLAG_MORE != 0;
        // Init, Accept and KeepAlive may carry the R bit (acknowledgements), nothing else.
        let flags = if matches!(k, kind::INIT | kind::ACCEPT | kind::KEEP_ALIVE) {
            h & !7 & !FLAG_RELIABLE
        } else {
            h & !7
        };
        if k < kind::FRAME && flags != 0 || k == kind::FRAME && more {
            return Err(DecodeError::ReservedBits(h));
        }
        Ok(match k {
            kind::INIT => TransportMessage::Init(Init {
                acks: reliable,
                ..Self::whole(body)?
            }),
            kind::ACCEPT => TransportMessage::Accept(Accept {
                acks: reliable,
                ..Self::whole(body)?
            }),
            kind::KEEP_ALIVE if reliable => TransportMessage::Acks(Self::acks(body)?),
            kind::OPEN => TransportMessage::Open(Self::whole(body)?),
            kind::CLOSE => {
                let c: Close<'a> = Self::whole(body)?;
                check_len(Field::Detail, c.detail.len(), limits::MAX_DETAIL_LEN)?;
                TransportMessage::Close(c)
            }
            kind::KEEP_ALIVE => {
                if !body.is_empty() {
                    return Err(DecodeError::TrailingBytes(body.len()));
                }
                TransportMessage::KeepAlive
            }
            kind::FRAME => {
                let (sn, payload) = varint::take_u32(body)?;
                TransportMessage::Frame(Frame {
                    priority,
                    reliable,
                    sn,
                    payload,
                })
            }
            _ => {
                let (sn, data) = varint::take_u32(body)?;
                TransportMessage::Fragment(Fragment {
                    priority,
                    reliable,
                    first: k == kind::FRAGMENT_FIRST,
                    more,
                    sn,
                    data,
                })
            }
        })
    }

    fn acks(body: &[u8]) -> Result<Acks, DecodeError> {
        let (&mask, mut rest) = body.split_first().ok_or(DecodeError::Truncated)?;
        let mut a = Acks::default();
        for (i, lane) in a.lanes.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                let (messages, r) = varint::take_u32(rest)?;
                let (data, r) = varint::take_u32(r)?;
                rest = r;
                *lane = Some(LaneAck { messages, data });
            }
        }
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(a)
    }

    fn whole<T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
        let (v, rest) = postcard::take_from_bytes(body)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(v)
    }
}
