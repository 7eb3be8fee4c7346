//! The device's own codec for core's wire (`core/WIRE.md`): the few messages a client sends
//! are written byte by byte, and received batches are read by one small parser that extracts
//! what a client acts on and steps over everything else.
//!
//! Why not `hypha_core::wire`: its postcard/serde encoders and decoders are generic over every
//! message of the mesh, and were the largest part of the firmware image (about 7 KB of flash
//! of a 16 KiB budget). The bytes are the same: `tests.rs` checks every message written here
//! against hypha-core's encoder, and the parser against hypha-core's decoder on random
//! messages and on random bytes.
//!
//! One difference, on purpose: the parser checks a batch's structure (tags, variant indices,
//! lengths, UTF-8, length caps) like core's, but not the syntax of key expressions the std
//! side sends; the device's matcher ([`crate::ke`]) accepts any string without panicking, and
//! the std side only ever sends valid ones.

use hypha_core::id::NodeId;
use hypha_core::wire::{CloseReason, PROTOCOL_VERSION, SampleKind, WireKey};

/// Close reasons by wire index.
const REASONS: [CloseReason; 9] = [
    CloseReason::Shutdown,
    CloseReason::UnsupportedVersion,
    CloseReason::LeaseExpired,
    CloseReason::Malformed,
    CloseReason::Unexpected,
    CloseReason::TooLarge,
    CloseReason::SequenceGap,
    CloseReason::Duplicate,
    CloseReason::Refused,
];

const MAX_KEY_LEN: usize = 1_024;
const MAX_PARAMS_LEN: usize = 4_096;
const MAX_SHORT_LEN: usize = 256;
const MAX_BATCH_SIZE: usize = 65_535;

/// Header byte of a frame on the device's one lane: kind 5, priority Data (5), reliable.
pub(crate) const FRAME_HEADER: u8 = 5 | (5 << 3) | (1 << 6);

/// Bytes a varint of `v` takes.
pub(crate) const fn varint_len(v: u32) -> usize {
    match v {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

// ----- writing ----------------------------------------------------------------------------

/// Writes into a buffer; remembers running out of room instead of failing each call.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    ok: bool,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            ok: true,
        }
    }

    pub(crate) fn u8(&mut self, b: u8) -> &mut Self {
        match self.buf.get_mut(self.pos) {
            Some(slot) => {
                *slot = b;
                self.pos += 1;
            }
            None => self.ok = false,
        }
        self
    }

    pub(crate) fn var(&mut self, mut v: u32) -> &mut Self {
        while v >= 0x80 {
            self.u8(v as u8 | 0x80);
            v >>= 7;
        }
        self.u8(v as u8)
    }

    pub(crate) fn raw(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.u8(x);
        }
        self
    }

    /// `varint length | bytes` (postcard's `&[u8]` and `&str`).
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.var(b.len() as u32).raw(b)
    }

    /// `WireKey::Name(key)`.
    fn name(&mut self, key: &str) -> &mut Self {
        self.u8(1).bytes(key.as_bytes())
    }

    /// The length written, or `None` if it did not fit.
    pub(crate) fn finish(&self) -> Option<usize> {
        self.ok.then_some(self.pos)
    }
}

/// The transport messages a device sends (one per batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// `Init` as a client.
    Init {
        node_id: NodeId,
        batch_size: u16,
        sn_bits: u8,
        lease_ms: u32,
        initial_sn: u32,
    },
    Open {
        initial_sn: u32,
    },
    /// `Close` with an empty detail.
    Close(CloseReason),
    KeepAlive,
}

impl Control {
    pub(crate) fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        match *self {
            Control::Init {
                node_id,
                batch_size,
                sn_bits,
                lease_ms,
                initial_sn,
            } => {
                w.u8(0)
                    .u8(PROTOCOL_VERSION)
                    .raw(&node_id.0)
                    .u8(1) // Mode::Client
                    .var(u32::from(batch_size))
                    .u8(sn_bits)
                    .var(lease_ms)
                    .var(initial_sn);
            }
            Control::Open { initial_sn } => {
                w.u8(2).var(initial_sn);
            }
            Control::Close(reason) => {
                let i = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
                w.u8(3).u8(i as u8).u8(0);
            }
            Control::KeepAlive => {
                w.u8(4);
            }
        }
        w.finish()
    }
}

/// The network messages a device sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Out<'a> {
    /// A compact put on a key id the device declared.
    Put {
        key_id: u32,
        payload: &'a [u8],
    },
    /// A query on a key by name: best-matching target, automatic consolidation, no payload.
    Request {
        id: u32,
        key: &'a str,
        params: &'a str,
        timeout_ms: u32,
    },
    /// A sample answering a query (a put, no timestamp, encoding or attachment).
    Reply {
        request_id: u32,
        key: &'a str,
        payload: &'a [u8],
    },
    ResponseFinal(u32),
    InterestFinal(u32),
    KeyExpr {
        id: u32,
        key: &'a str,
    },
    Subscriber {
        id: u32,
        key: &'a str,
    },
    /// Not complete.
    Queryable {
        id: u32,
        key: &'a str,
    },
    Token {
        id: u32,
        key: &'a str,
    },
}

impl Out<'_> {
    pub(crate) fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        match *self {
            Out::Put { key_id, payload } => {
                w.u8(0).var(key_id).bytes(payload);
            }
            Out::Request {
                id,
                key,
                params,
                timeout_ms,
            } => {
                w.u8(4)
                    .var(id)
                    .name(key)
                    .bytes(params.as_bytes())
                    .u8(0)
                    .u8(0)
                    .var(timeout_ms)
                    .raw(&[0, 0, 0]);
            }
            Out::Reply {
                request_id,
                key,
                payload,
            } => {
                w.u8(5)
                    .var(request_id)
                    .u8(0) // ReplyBody::Sample
                    .name(key)
                    .u8(0) // SampleKind::Put
                    .bytes(payload)
                    .raw(&[0, 0, 0]);
            }
            Out::ResponseFinal(id) => {
                w.u8(6).var(id);
            }
            Out::InterestFinal(id) => {
                w.u8(3).u8(9).var(id);
            }
            Out::KeyExpr { id, key } => {
                w.u8(3).u8(0).var(id).bytes(key.as_bytes());
            }
            Out::Subscriber { id, key } => {
                w.u8(3).u8(2).var(id).name(key);
            }
            Out::Queryable { id, key } => {
                w.u8(3).u8(4).var(id).name(key).u8(0);
            }
            Out::Token { id, key } => {
                w.u8(3).u8(6).var(id).name(key);
            }
        }
        w.finish()
    }
}

// ----- reading ----------------------------------------------------------------------------

/// Reads from a received batch; every method is `None` on truncated or invalid input.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&x, rest) = self.b.split_first()?;
        self.b = rest;
        Some(x)
    }

    /// A varint of at most `bytes` bytes whose last byte is at most `last` (postcard's rule
    /// for an integer of `7 * (bytes - 1) + log2(last + 1)` bits). The value wraps for 64-bit
    /// integers, which are only skipped.
    fn varint(&mut self, bytes: u32, last: u8) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..bytes {
            let x = self.u8()?;
            v |= u32::from(x & 0x7f).wrapping_shl(7 * i);
            if x & 0x80 == 0 {
                return (i + 1 < bytes || x <= last).then_some(v);
            }
        }
        None
    }

    fn var(&mut self) -> Option<u32> {
        self.varint(5, 0x0f)
    }

    /// A `u32` below `n` (an enum's variant index).
    fn below(&mut self, n: u32) -> Option<u32> {
        self.var().filter(|v| *v < n)
    }

    /// A `bool` or an `Option`'s tag.
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.var()?;
        self.take(n as usize)
    }

    fn str(&mut self, cap: usize) -> Option<&'a str> {
        let b = self.bytes()?;
        if b.len() > cap {
            return None;
        }
        core::str::from_utf8(b).ok()
    }

    fn key(&mut self) -> Option<WireKey<'a>> {
        Some(if self.flag()? {
            WireKey::Name(self.str(MAX_KEY_LEN)?)
        } else {
            WireKey::Id(self.var()?)
        })
    }

    /// An `Option<str>` capped at 256 bytes (encodings), skipped.
    fn skip_short_str(&mut self) -> Option<()> {
        if self.flag()? {
            self.str(MAX_SHORT_LEN)?;
        }
        Some(())
    }

    /// An `Option<bytes>` (payloads, attachments), skipped.
    fn skip_opt_bytes(&mut self) -> Option<()> {
        if self.flag()? {
            self.bytes()?;
        }
        Some(())
    }

    /// Push's fields: key, kind, payload, timestamp, encoding, attachment.
    fn push(&mut self) -> Option<(WireKey<'a>, SampleKind, &'a [u8])> {
        let key = self.key()?;
        let kind = if self.below(2)? == 0 {
            SampleKind::Put
        } else {
            SampleKind::Delete
        };
        let payload = self.bytes()?;
        if self.flag()? {
            // Timestamp: NTP64 as a u64 varint, then the 16-byte node id.
            self.varint(10, 1)?;
            self.take(16)?;
        }
        self.skip_short_str()?;
        self.skip_opt_bytes()?;
        Some((key, kind, payload))
    }
}

/// The `Accept` fields a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Accept {
    pub(crate) version: u8,
    pub(crate) node_id: NodeId,
    pub(crate) batch_size: u16,
    pub(crate) sn_bits: u8,
    pub(crate) lease_ms: u32,
    pub(crate) initial_sn: u32,
}

/// What a received batch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    Accept(Accept),
    Close(CloseReason),
    KeepAlive,
    /// A frame: its lane slot (`priority * 2 + reliable`), sequence number, and where its
    /// network messages start.
    Frame {
        slot: usize,
        reliable: bool,
        sn: u32,
        start: usize,
    },
    Fragment {
        slot: usize,
        reliable: bool,
        sn: u32,
    },
    /// `Init` or `Open`: nothing a client answers.
    Ignored,
    Malformed,
}

/// Reads one batch (the whole of a received frame).
pub(crate) fn batch(b: &[u8]) -> Batch {
    transport(b).unwrap_or(Batch::Malformed)
}

fn transport(b: &[u8]) -> Option<Batch> {
    if b.len() > MAX_BATCH_SIZE {
        return None;
    }
    let mut r = Reader { b };
    let h = r.u8()?;
    let kind = h & 7;
    let slot = usize::from((h >> 3) & 7) * 2 + usize::from(h & 0x40 != 0);
    let reliable = h & 0x40 != 0;
    // Init and Open are not read (a client answers neither), whatever their body; an Init may
    // carry the R bit (it offers acknowledgements).
    if h == 0 || h == 2 || h == 0x40 {
        return Some(Batch::Ignored);
    }
    if kind < 5 && h & !7 != 0 || kind == 5 && h & 0x80 != 0 {
        return None;
    }
    let batch = match kind {
        1 => {
            let version = r.u8()?;
            let id = r.take(16)?;
            r.below(3)?; // mode
            let batch_size = r.varint(3, 3)? as u16;
            let sn_bits = r.u8()?;
            let lease_ms = r.var()?;
            let initial_sn = r.var()?;
            let mut node_id = [0u8; 16];
            node_id.copy_from_slice(id);
            Batch::Accept(Accept {
                version,
                node_id: NodeId(node_id),
                batch_size,
                sn_bits,
                lease_ms,
                initial_sn,
            })
        }
        3 => {
            let reason = *REASONS.get(r.var()? as usize)?;
            r.str(MAX_SHORT_LEN)?;
            Batch::Close(reason)
        }
        4 => Batch::KeepAlive,
        5 => {
            let sn = r.var()?;
            return Some(Batch::Frame {
                slot,
                reliable,
                sn,
                start: b.len() - r.b.len(),
            });
        }
        _ => {
            return Some(Batch::Fragment {
                slot,
                reliable,
                sn: r.var()?,
            });
        }
    };
    r.b.is_empty().then_some(batch)
}

/// A network message as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Msg<'a> {
    /// Put, Push, PutSn, PushSn.
    Sample {
        kind: SampleKind,
        key: WireKey<'a>,
        payload: &'a [u8],
    },
    KeyExpr {
        id: u32,
        key: &'a str,
    },
    UndeclareKeyExpr(u32),
    Interest {
        id: u32,
        flags: u8,
    },
    Request {
        id: u32,
        key: WireKey<'a>,
        params: &'a str,
    },
    /// A reply: `key` is `None` for an error reply.
    Response {
        request_id: u32,
        key: Option<WireKey<'a>>,
        payload: &'a [u8],
    },
    ResponseFinal(u32),
    /// Every other message (declarations of the std side, gossip, refusals, auth).
    Other,
}

/// Reads the network message at the start of `b`; returns it and what follows it.
pub(crate) fn take(b: &[u8]) -> Option<(Msg<'_>, &[u8])> {
    let mut r = Reader { b };
    let msg = match r.var()? {
        0 => {
            let key_id = r.var()?;
            Msg::Sample {
                kind: SampleKind::Put,
                key: WireKey::Id(key_id),
                payload: r.bytes()?,
            }
        }
        1 => {
            let key_id = r.var()?;
            let payload = core::mem::take(&mut r.b);
            Msg::Sample {
                kind: SampleKind::Put,
                key: WireKey::Id(key_id),
                payload,
            }
        }
        t @ (2 | 9) => {
            if t == 9 {
                r.var()?;
                r.var()?;
            }
            let (key, kind, payload) = r.push()?;
            Msg::Sample { kind, key, payload }
        }
        3 => declare(&mut r)?,
        4 => {
            let id = r.var()?;
            let key = r.key()?;
            let params = r.str(MAX_PARAMS_LEN)?;
            r.below(3)?; // target
            r.below(4)?; // consolidation
            r.var()?; // timeout
            r.skip_opt_bytes()?;
            r.skip_short_str()?;
            r.skip_opt_bytes()?;
            Msg::Request { id, key, params }
        }
        5 => {
            let request_id = r.var()?;
            if r.below(2)? == 0 {
                let (key, _, payload) = r.push()?;
                Msg::Response {
                    request_id,
                    key: Some(key),
                    payload,
                }
            } else {
                let payload = r.bytes()?;
                r.skip_short_str()?;
                Msg::Response {
                    request_id,
                    key: None,
                    payload,
                }
            }
        }
        6 => Msg::ResponseFinal(r.var()?),
        7 => {
            r.take(16)?;
            r.below(3)?;
            r.str(MAX_PARAMS_LEN)?;
            Msg::Other
        }
        8 => {
            let key_id = r.var()?;
            r.var()?;
            r.var()?;
            Msg::Sample {
                kind: SampleKind::Put,
                key: WireKey::Id(key_id),
                payload: r.bytes()?,
            }
        }
        10 => {
            r.below(9)?;
            r.str(MAX_KEY_LEN)?;
            r.str(MAX_SHORT_LEN)?;
            r.str(MAX_SHORT_LEN)?;
            Msg::Other
        }
        11 => {
            // Auth: a dialer's token, only on encrypted links (never on a serial line).
            if r.bytes()?.len() > MAX_SHORT_LEN {
                return None;
            }
            Msg::Other
        }
        12 => {
            // Cancel: the querier dropped a request's replies; the std side drops the device's
            // late replies itself.
            r.var()?;
            Msg::Other
        }
        _ => return None,
    };
    Some((msg, r.b))
}

fn declare<'a>(r: &mut Reader<'a>) -> Option<Msg<'a>> {
    let variant = r.var()?;
    // Between routers only (a pair resync): Resync { ask, round } and ResyncEnd { round } carry
    // no id.
    match variant {
        12 => {
            r.flag()?;
            r.var()?;
            return Some(Msg::Other);
        }
        13 => {
            r.var()?;
            return Some(Msg::Other);
        }
        _ => {}
    }
    let id = r.var()?;
    Some(match variant {
        0 => Msg::KeyExpr {
            id,
            key: r.str(MAX_KEY_LEN)?,
        },
        1 => Msg::UndeclareKeyExpr(id),
        2 | 6 => {
            r.key()?;
            Msg::Other
        }
        4 => {
            r.key()?;
            r.flag()?;
            Msg::Other
        }
        8 => {
            if r.flag()? {
                r.key()?;
            }
            Msg::Interest { id, flags: r.u8()? }
        }
        11 => {
            r.take(16)?;
            r.var()?;
            Msg::Other
        }
        3 | 5 | 7 | 9 | 10 => Msg::Other,
        _ => return None,
    })
}
