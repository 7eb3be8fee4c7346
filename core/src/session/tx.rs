//! Transmit side: per-lane queues, batching into frames, fragmentation, control messages.

use super::{Buffer, Control, KeyTable, SendError, Session, State};
use crate::time::Instant;
use crate::wire::{
    self, Accept, Acks, Close, EncodeError, Init, NetworkMessage, Open, PROTOCOL_VERSION, Priority,
    TransportMessage,
};

/// Each queued message is preceded by a 4-byte little-endian header: bit 31 = reliable, bit 30
/// = data ([`NetworkMessage::is_data`]), bits 0..30 = encoded length.
const ENTRY_HDR: usize = 4;
const RELIABLE_BIT: u32 = 1 << 31;
const DATA_BIT: u32 = 1 << 30;
const LEN_MASK: u32 = DATA_BIT - 1;

/// One lane's FIFO of encoded messages.
#[derive(Default)]
pub(super) struct LaneQueue<B> {
    buf: B,
    head: usize,
    /// Bytes of the head message already sent as fragments.
    frag_off: usize,
}

impl<B: Buffer> LaneQueue<B> {
    pub(super) fn queued(&self) -> usize {
        self.buf.bytes().len().saturating_sub(self.head)
    }

    /// Messages queued (the head one counts even if some of its fragments went out).
    pub(super) fn messages(&self) -> u64 {
        let bytes = self.buf.bytes();
        let mut at = self.head;
        let mut n = 0;
        while let Some(hdr) = bytes.get(at..at + ENTRY_HDR) {
            let mut h = [0u8; ENTRY_HDR];
            h.copy_from_slice(hdr);
            at += ENTRY_HDR + (u32::from_le_bytes(h) & LEN_MASK) as usize;
            n += 1;
        }
        n
    }

    pub(super) fn clear(&mut self) {
        self.buf.resize(0);
        self.buf.shrink();
        self.head = 0;
        self.frag_off = 0;
    }

    /// The head entry: (reliable, data, encoded message).
    fn head(&self) -> Option<(bool, bool, &[u8])> {
        let bytes = self.buf.bytes().get(self.head..)?;
        let hdr: [u8; ENTRY_HDR] = bytes.get(..ENTRY_HDR)?.try_into().ok()?;
        let hdr = u32::from_le_bytes(hdr);
        let len = (hdr & LEN_MASK) as usize;
        let msg = bytes.get(ENTRY_HDR..ENTRY_HDR + len)?;
        Some((hdr & RELIABLE_BIT != 0, hdr & DATA_BIT != 0, msg))
    }

    fn pop(&mut self, len: usize) {
        self.head += ENTRY_HDR + len;
        self.frag_off = 0;
        if self.head >= self.buf.bytes().len() {
            self.buf.resize(0);
            self.buf.shrink();
            self.head = 0;
        }
    }

    /// Moves the live bytes to the front when the consumed prefix dominates.
    fn compact(&mut self) {
        let len = self.buf.bytes().len();
        if self.head > 0 && self.head >= len / 2 {
            self.buf.bytes_mut().copy_within(self.head..len, 0);
            self.buf.resize(len - self.head);
            self.head = 0;
        }
    }
}

fn entry_header(reliable: bool, data: bool, len: usize) -> [u8; ENTRY_HDR] {
    let mut h = len as u32 & LEN_MASK;
    if reliable {
        h |= RELIABLE_BIT;
    }
    if data {
        h |= DATA_BIT;
    }
    h.to_le_bytes()
}

/// A generous guess of a message's encoded size, to size the first encoding attempt.
fn size_hint(msg: &NetworkMessage<'_>) -> usize {
    use wire::{Declare, ReplyBody, WireKey};
    let key = |k: &WireKey<'_>| match k {
        WireKey::Id(_) => 5,
        WireKey::Name(n) => n.len() + 5,
    };
    let opt = |b: Option<wire::RawBytes<'_>>| b.map_or(0, |b| b.0.len() + 5);
    let push = |p: &wire::Push<'_>| {
        key(&p.key) + p.payload.0.len() + opt(p.attachment) + p.encoding.map_or(0, str::len) + 48
    };
    16 + match msg {
        NetworkMessage::Put(p) => p.payload.len() + 10,
        NetworkMessage::Push(p) => push(p),
        NetworkMessage::Declare(Declare::KeyExpr { key, .. }) => key.len() + 10,
        NetworkMessage::Declare(_) => 1_100,
        NetworkMessage::Request(r) => {
            key(&r.key) + r.parameters.len() + opt(r.payload) + opt(r.attachment) + 300
        }
        NetworkMessage::Response(r) => match &r.body {
            ReplyBody::Sample(p) => push(p),
            ReplyBody::Err { payload, .. } => payload.0.len() + 300,
        },
        NetworkMessage::ResponseFinal(_) => 8,
        NetworkMessage::Gossip(g) => g.locators.len() + 40,
        NetworkMessage::PutSn(p) => p.payload.len() + 20,
        NetworkMessage::PushSn(p) => push(&p.push) + 10,
        NetworkMessage::Denied(d) => d.key.len() + d.principal.len() + d.rule.len() + 20,
        NetworkMessage::Auth(a) => a.token.0.len() + 10,
        NetworkMessage::Cancel(_) => 8,
        NetworkMessage::LinkState(l) => l.site.len() + l.links.0.len() + l.locators.len() + 60,
        NetworkMessage::Routed(r) => r.body.0.len() + 60,
    }
}

impl<B: Buffer, K: KeyTable> Session<B, K> {
    /// Queues a network message on a lane. It goes out with the next `poll_transmit` calls,
    /// batched with whatever else is queued on that lane, fragmented if larger than a batch.
    pub fn send(
        &mut self,
        priority: Priority,
        reliable: bool,
        msg: &NetworkMessage<'_>,
    ) -> Result<(), SendError> {
        match self.state {
            State::Open => {}
            State::Closing | State::Closed => return Err(SendError::Closed),
            _ => return Err(SendError::NotOpen),
        }
        let max = self.config.max_message_size;
        let cap = self.config.lane_capacity;
        let lane = self
            .lanes
            .get_mut(priority.index())
            .ok_or(SendError::TooLarge)?;
        let hint = size_hint(msg);
        if hint > max.saturating_add(32) {
            return Err(SendError::TooLarge);
        }
        let queued = lane.queued();
        if queued > 0 && queued + hint > cap {
            return Err(SendError::QueueFull);
        }
        if lane.head > 0 && lane.buf.bytes().len() + hint > cap {
            lane.compact();
        }
        let start = lane.buf.bytes().len();
        let compact = match msg {
            NetworkMessage::Put(p) => Some((p.key_id, None, p.payload)),
            NetworkMessage::PutSn(p) => Some((p.key_id, Some(p.seq), p.payload)),
            _ => None,
        };
        if let Some((key_id, seq, payload)) = compact {
            // Hot path: header and varints on the stack, then one copy of the payload (no
            // zeroing of the room first: for a 1 MiB sample that was a 1 MiB memset).
            let mut head = [0u8; ENTRY_HDR + 25];
            let n = match seq {
                None => msg_prefix(&mut head[ENTRY_HDR..], key_id, payload.len()),
                Some(seq) => {
                    wire::encode_put_sn_prefix(&mut head[ENTRY_HDR..], key_id, seq, payload.len())
                }
            }
            .map_err(|_| SendError::TooLarge)?;
            let len = n + payload.len();
            if len > max {
                return Err(SendError::TooLarge);
            }
            head[..ENTRY_HDR].copy_from_slice(&entry_header(reliable, true, len));
            let ok = lane
                .buf
                .extend_from_slice(head.get(..ENTRY_HDR + n).unwrap_or(&[]))
                && lane.buf.extend_from_slice(payload);
            if !ok {
                lane.buf.resize(start);
                return Err(SendError::QueueFull);
            }
        } else {
            let mut room = hint;
            let len = loop {
                if !lane.buf.resize(start + ENTRY_HDR + room) {
                    lane.buf.resize(start);
                    return Err(SendError::QueueFull);
                }
                let dst = lane
                    .buf
                    .bytes_mut()
                    .get_mut(start + ENTRY_HDR..)
                    .unwrap_or(&mut []);
                match msg.encode(dst) {
                    Ok(n) => break n,
                    Err(EncodeError::BufferTooSmall) if room < max => {
                        room = room.saturating_mul(2).min(max + 64);
                    }
                    Err(_) => {
                        lane.buf.resize(start);
                        return Err(SendError::TooLarge);
                    }
                }
            };
            if len > max {
                lane.buf.resize(start);
                return Err(SendError::TooLarge);
            }
            lane.buf.resize(start + ENTRY_HDR + len);
            if let Some(h) = lane.buf.bytes_mut().get_mut(start..start + ENTRY_HDR) {
                h.copy_from_slice(&entry_header(reliable, msg.is_data(), len));
            }
        }
        self.stats.tx_messages += 1;
        if msg.is_data() {
            self.stats.tx_data += 1;
        }
        Ok(())
    }

    /// Writes the next batch to send into `buf`, returning its length, or `None` when there is
    /// nothing to send. Worth calling again after `send`, `close`, `handle_input` or
    /// `handle_timeout`. A batch never exceeds the negotiated batch size nor `buf.len()`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.poll_transmit_except(now, buf, 0)
    }

    /// [`poll_transmit`](Self::poll_transmit), taking nothing from the lanes in `skip` (bit `i`
    /// for `Priority::index() == i`): for a link that writes each lane to its own stream, a lane
    /// whose stream is full waits without holding the others back. Control messages and
    /// keep-alives are never skipped.
    pub fn poll_transmit_except(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        skip: u8,
    ) -> Option<usize> {
        let n = self.next_batch(now, buf, skip)?;
        self.last_tx = now;
        self.keepalive_due = false;
        self.stats.tx_batches += 1;
        self.stats.tx_bytes += n as u64;
        Some(n)
    }

    fn next_batch(&mut self, now: Instant, buf: &mut [u8], skip: u8) -> Option<usize> {
        // Before our `Close`, what we received is acknowledged: the peer counts exactly what
        // we will never read.
        if matches!(self.control, Some(Control::Close(..))) && self.acks.since.is_some() {
            return self.encode_acks(buf);
        }
        if let Some(c) = self.control.take() {
            return self.encode_control(c, buf);
        }
        if self.state != State::Open {
            return None;
        }
        if self.acks.now || self.ack_due().is_some_and(|t| now >= t) {
            return self.encode_acks(buf);
        }
        let limit = buf.len().min(self.batch_size);
        let out = buf.get_mut(..limit)?;
        for p in Priority::ALL {
            if skip & (1 << p.index()) == 0
                && self.lanes.get(p.index()).is_some_and(|l| l.queued() > 0)
            {
                if let Some(n) = self.batch_from_lane(p, out) {
                    return Some(n);
                }
            }
        }
        if self.keepalive_due {
            self.stats.keepalives_sent += 1;
            if self.acks.since.is_some() {
                return self.encode_acks(buf);
            }
            return TransportMessage::KeepAlive.encode(buf).ok();
        }
        None
    }

    /// An acknowledgement of every reliable lane that received something since the last one.
    fn encode_acks(&mut self, buf: &mut [u8]) -> Option<usize> {
        let a = &mut self.acks;
        let mut m = Acks::default();
        for ((out, got), told) in m.lanes.iter_mut().zip(&a.got).zip(&mut a.told) {
            if got.messages != *told {
                *out = Some(*got);
                *told = got.messages;
            }
        }
        a.since = None;
        a.now = false;
        self.stats.acks_sent += 1;
        TransportMessage::Acks(m).encode(buf).ok()
    }

    fn encode_control(&mut self, c: Control, buf: &mut [u8]) -> Option<usize> {
        let cfg = &self.config;
        let msg = match c {
            Control::Init => TransportMessage::Init(Init {
                version: PROTOCOL_VERSION,
                node_id: cfg.node_id,
                mode: cfg.mode,
                batch_size: cfg.batch_size,
                sn_bits: cfg.sn_bits.clamp(7, 32),
                lease_ms: cfg.lease.as_millis() as u32,
                initial_sn: self.local_initial_sn,
                acks: cfg.acks,
            }),
            Control::Accept => TransportMessage::Accept(Accept {
                version: PROTOCOL_VERSION,
                node_id: cfg.node_id,
                mode: cfg.mode,
                batch_size: self.batch_size as u16,
                sn_bits: self.sn_bits(),
                lease_ms: cfg.lease.as_millis() as u32,
                initial_sn: self.local_initial_sn,
                acks: self.acks.on,
            }),
            Control::Open => TransportMessage::Open(Open {
                initial_sn: self.local_initial_sn,
            }),
            Control::Close(reason, detail) => {
                self.state = State::Closed;
                TransportMessage::Close(Close { reason, detail })
            }
        };
        msg.encode(buf).ok()
    }

    /// One frame (or one fragment) from lane `p`.
    fn batch_from_lane(&mut self, p: Priority, out: &mut [u8]) -> Option<usize> {
        let lane = self.lanes.get_mut(p.index())?;
        let (reliable, first_len) = lane.head().map(|(r, _, m)| (r, m.len()))?;
        let slot = Self::slot(p, reliable);
        let sn = *self.tx_sn.get(slot)?;
        let hdr_len = wire::frame_header_len(sn);
        if lane.frag_off > 0 || hdr_len + first_len > out.len() {
            // Fragment the head message.
            let (_, is_data, msg) = lane.head()?;
            let off = lane.frag_off;
            let room = out.len().checked_sub(hdr_len).filter(|r| *r > 0)?;
            let chunk = (msg.len() - off).min(room);
            let more = off + chunk < msg.len();
            let h = wire::encode_fragment_header(out, p, reliable, off == 0, more, sn).ok()?;
            let data = msg.get(off..off + chunk)?;
            out.get_mut(h..h + chunk)?.copy_from_slice(data);
            if more {
                lane.frag_off = off + chunk;
            } else {
                lane.pop(msg.len());
                if reliable {
                    self.acks.wrote(p.index(), is_data);
                }
            }
            if let Some(s) = self.tx_sn.get_mut(slot) {
                *s = s.wrapping_add(1) & self.sn_mask;
            }
            self.stats.tx_fragments += 1;
            return Some(h + chunk);
        }
        let mut pos = wire::encode_frame_header(out, p, reliable, sn).ok()?;
        let mut last_start = pos;
        let (mut messages, mut data) = (0u32, 0u32);
        while let Some((r, d, msg)) = lane.head() {
            if r != reliable || pos + msg.len() > out.len() {
                break;
            }
            let len = msg.len();
            out.get_mut(pos..pos + len)?.copy_from_slice(msg);
            last_start = pos;
            pos += len;
            lane.pop(len);
            messages += 1;
            data += u32::from(d);
        }
        if reliable {
            if let Some(s) = self.acks.sent.get_mut(p.index()) {
                s.messages = s.messages.wrapping_add(messages);
                s.data = s.data.wrapping_add(data);
            }
        }
        lane.compact();
        // The last message of a frame may drop its length: a compact put runs to the end.
        if let Some(last) = out.get_mut(last_start..pos) {
            pos = last_start + wire::put_to_tail_form(last);
        }
        if let Some(s) = self.tx_sn.get_mut(slot) {
            *s = s.wrapping_add(1) & self.sn_mask;
        }
        Some(pos)
    }
}

/// Writes the compact-put prefix (tag, key id, length) and returns its length.
fn msg_prefix(buf: &mut [u8], key_id: u32, len: usize) -> Result<usize, EncodeError> {
    wire::encode_put_prefix(buf, key_id, len)
}
