//! Receive side: handshake, sequence numbers, reassembly, delivery.

use super::{Buffer, Control, Event, KeyTable, PeerInfo, Received, Session, State};
use crate::time::{Duration, Instant};
use crate::wire::{
    Acks, CloseReason, Declare, Fragment, Frame, Messages, NetworkMessage, Priority,
    TransportMessage,
};

/// Reassembly state of one lane.
#[derive(Default)]
pub(super) struct Reassembly<B> {
    buf: B,
    active: bool,
    /// Size of the last message this slot reassembled: the next one is likely alike, so its
    /// buffer is sized up front rather than grown (and copied) fragment by fragment.
    last_len: usize,
}

impl<B: Buffer> Reassembly<B> {
    pub(super) fn is_active(&self) -> bool {
        self.active
    }

    pub(super) fn held(&self) -> usize {
        self.buf.bytes().len()
    }

    /// Forgets the partial message and frees its memory.
    pub(super) fn evict(&mut self) {
        self.active = false;
        self.buf.resize(0);
        self.buf.shrink();
    }
}

/// The most a reassembly buffer is sized ahead of its fragments (what arrives beyond grows it
/// as before, within the caps).
const REASSEMBLY_RESERVE_MAX: usize = 4 << 20;

enum Verdict {
    Accept,
    Drop,
    Gap,
}

impl<B: Buffer, K: KeyTable> Session<B, K> {
    /// Handles one batch received from the link. Network messages are handed to `sink`, which
    /// may resolve the peer's key ids through [`Received::resolve`]. Malformed input closes the
    /// session with a reason (see [`Session::poll_event`]); it never panics.
    pub fn handle_input<F>(&mut self, now: Instant, batch: &[u8], sink: &mut F)
    where
        F: FnMut(&Received<'_, '_>),
    {
        if matches!(self.state, State::Closed | State::Closing) {
            return;
        }
        self.stats.rx_batches += 1;
        self.stats.rx_bytes += batch.len() as u64;
        self.last_rx = now;
        // On a busy link a driver's timer may never win against input that is always ready:
        // input arriving once an acknowledgement is due makes it due now (`wants_transmit`).
        if self.ack_due().is_some_and(|t| now >= t) {
            self.acks.now = true;
        }
        let msg = match TransportMessage::decode(batch) {
            Ok(m) => m,
            Err(e) => {
                crate::core_warn!("closing link: undecodable batch: {e}");
                self.begin_close(CloseReason::Malformed, false);
                return;
            }
        };
        match (self.state, msg) {
            (_, TransportMessage::Close(c)) => {
                crate::core_debug!("peer closed the link: {} ({})", c.reason, c.detail);
                self.begin_close(c.reason, true);
            }
            (State::AwaitInit, TransportMessage::Init(i)) => {
                if !self.check_version(i.version) || !self.check_peer(i.node_id) {
                    return;
                }
                self.peer = Some(PeerInfo {
                    node_id: i.node_id,
                    mode: i.mode,
                    lease: Duration::from_millis(u64::from(i.lease_ms)),
                });
                self.batch_size = self.batch_size.min(usize::from(i.batch_size)).max(64);
                self.negotiate_sn(i.sn_bits);
                self.rx_sn = [i.initial_sn & self.sn_mask; super::SLOTS];
                self.acks.on = i.acks && self.config.acks;
                self.control = Some(Control::Accept);
                self.state = State::AwaitOpen;
            }
            (State::AwaitAccept, TransportMessage::Accept(a)) => {
                if !self.check_version(a.version) || !self.check_peer(a.node_id) {
                    return;
                }
                let peer = PeerInfo {
                    node_id: a.node_id,
                    mode: a.mode,
                    lease: Duration::from_millis(u64::from(a.lease_ms)),
                };
                self.peer = Some(peer);
                self.batch_size = self.batch_size.min(usize::from(a.batch_size)).max(64);
                self.negotiate_sn(a.sn_bits);
                self.rx_sn = [a.initial_sn & self.sn_mask; super::SLOTS];
                // The listener agrees only to what our `Init` offered.
                self.acks.on = a.acks && self.config.acks;
                self.control = Some(Control::Open);
                self.open(peer);
            }
            (State::AwaitOpen, TransportMessage::Open(o)) => {
                if o.initial_sn & self.sn_mask != self.rx_sn.first().copied().unwrap_or(0) {
                    crate::core_warn!("closing link: Open disagrees with Init on initial sn");
                    self.begin_close(CloseReason::Unexpected, false);
                    return;
                }
                if let Some(peer) = self.peer {
                    self.open(peer);
                }
            }
            // A frame that overtook `Open` on another stream opens the session as well.
            (
                State::AwaitOpen,
                m @ (TransportMessage::Frame(_) | TransportMessage::Fragment(_)),
            )
            | (State::AwaitOpen, m @ (TransportMessage::KeepAlive | TransportMessage::Acks(_))) => {
                if let Some(peer) = self.peer {
                    self.open(peer);
                }
                match m {
                    TransportMessage::Frame(f) => self.on_frame(f, sink),
                    TransportMessage::Fragment(f) => self.on_fragment(f, sink),
                    TransportMessage::Acks(a) => self.on_acks(a),
                    _ => {}
                }
            }
            (State::Open, TransportMessage::KeepAlive) => {}
            (State::Open, TransportMessage::Acks(a)) => self.on_acks(a),
            // Open overtaken by a frame (see above) arrives late: nothing to do.
            (State::Open, TransportMessage::Open(_)) if self.role == super::Role::Listener => {}
            (State::Open, TransportMessage::Frame(f)) => self.on_frame(f, sink),
            (State::Open, TransportMessage::Fragment(f)) => self.on_fragment(f, sink),
            (state, m) => {
                crate::core_warn!("closing link: {m:?} not expected in state {state:?}");
                self.begin_close(CloseReason::Unexpected, false);
            }
        }
    }

    fn open(&mut self, peer: PeerInfo) {
        self.state = State::Open;
        crate::core_debug!("session open with {} ({})", peer.node_id, peer.mode);
        let _ = self.events.push_back(Event::Established {
            peer,
            batch_size: self.batch_size as u16,
        });
    }

    /// The peer's acknowledgements: cumulative, so a stale one (overtaken, on a datagram link)
    /// says nothing; one beyond what we sent is a protocol error.
    fn on_acks(&mut self, a: Acks) {
        if !self.acks.on {
            crate::core_warn!("closing link: acknowledgements the handshake did not agree on");
            self.begin_close_with(
                CloseReason::Unexpected,
                "unexpected acknowledgements",
                false,
            );
            return;
        }
        self.stats.acks_received += 1;
        let lanes = a
            .lanes
            .iter()
            .zip(&mut self.acks.acked)
            .zip(&self.acks.sent);
        let mut bad = false;
        for ((ack, acked), sent) in lanes {
            let Some(ack) = ack else { continue };
            let d = ack.messages.wrapping_sub(acked.messages);
            if d >= 1 << 31 {
                continue;
            }
            let dd = ack.data.wrapping_sub(acked.data);
            if d > sent.messages.wrapping_sub(acked.messages)
                || dd > d
                || dd > sent.data.wrapping_sub(acked.data)
            {
                bad = true;
                break;
            }
            *acked = *ack;
        }
        if bad {
            crate::core_warn!("closing link: peer acknowledged more than was sent");
            self.begin_close_with(
                CloseReason::Unexpected,
                "acknowledged more than was sent",
                false,
            );
        }
    }

    fn check_peer(&mut self, id: crate::id::NodeId) -> bool {
        if id == self.config.node_id {
            crate::core_warn!("refusing link to ourselves");
            self.begin_close(CloseReason::Refused, false);
            return false;
        }
        true
    }

    fn check_sn(&mut self, slot: usize, reliable: bool, sn: u32) -> Verdict {
        let mask = self.sn_mask;
        if sn & !mask != 0 {
            return Verdict::Gap;
        }
        let Some(expected) = self.rx_sn.get_mut(slot) else {
            return Verdict::Drop;
        };
        // Serial-number arithmetic: distances past half the space count as "behind".
        let d = sn.wrapping_sub(*expected) & mask;
        let half = (mask >> 1) + 1;
        if d == 0 {
            *expected = sn.wrapping_add(1) & mask;
            Verdict::Accept
        } else if reliable {
            if d >= half {
                self.stats.rx_duplicates += 1;
                Verdict::Drop
            } else {
                Verdict::Gap
            }
        } else if d == mask {
            // The frame just before the expected one: a duplicate datagram.
            self.stats.rx_duplicates += 1;
            Verdict::Drop
        } else {
            // Best effort never stalls: anything else is taken as news, the distance as loss.
            *expected = sn.wrapping_add(1) & mask;
            self.stats.rx_lost += u64::from(d);
            if let Some(r) = self.reassembly.get_mut(slot) {
                if r.active {
                    r.active = false;
                    r.buf.resize(0);
                    self.stats.rx_reassembly_dropped += 1;
                }
            }
            Verdict::Accept
        }
    }

    /// Applies the sequence check; `false` if the batch must be skipped.
    fn sequence_ok(&mut self, priority: Priority, reliable: bool, sn: u32) -> bool {
        match self.check_sn(Self::slot(priority, reliable), reliable, sn) {
            Verdict::Accept => true,
            Verdict::Drop => false,
            Verdict::Gap => {
                crate::core_warn!("closing link: sequence gap on reliable lane {priority:?}");
                self.begin_close(CloseReason::SequenceGap, false);
                false
            }
        }
    }

    fn on_frame<F: FnMut(&Received<'_, '_>)>(&mut self, f: Frame<'_>, sink: &mut F) {
        if self.sequence_ok(f.priority, f.reliable, f.sn) {
            self.deliver(f.priority, f.reliable, f.payload, sink);
        }
    }

    fn on_fragment<F: FnMut(&Received<'_, '_>)>(&mut self, f: Fragment<'_>, sink: &mut F) {
        if !self.sequence_ok(f.priority, f.reliable, f.sn) {
            return;
        }
        let slot = Self::slot(f.priority, f.reliable);
        let max = self.config.max_message_size;
        let Some(r) = self.reassembly.get_mut(slot) else {
            return;
        };
        if f.first {
            if r.active {
                // A new message started before the previous one ended.
                self.stats.rx_reassembly_dropped += 1;
            }
            r.buf.resize(0);
            r.buf.reserve(r.last_len.min(REASSEMBLY_RESERVE_MAX));
            r.active = true;
        } else if !r.active {
            // The start of this message was lost: skip to the next first fragment.
            if f.reliable {
                crate::core_warn!("closing link: fragment without a start on a reliable lane");
                self.begin_close(CloseReason::Unexpected, false);
            }
            return;
        }
        let total = r.buf.bytes().len().saturating_add(f.data.len());
        if total > max || !r.buf.extend_from_slice(f.data) {
            crate::core_warn!("closing link: reassembly exceeds the cap of {max} bytes");
            r.active = false;
            r.buf.resize(0);
            r.buf.shrink();
            self.begin_close(CloseReason::TooLarge, false);
            return;
        }
        if f.more {
            return;
        }
        r.active = false;
        r.last_len = r.buf.bytes().len();
        let buf = core::mem::take(&mut r.buf);
        self.stats.rx_reassembled += 1;
        self.deliver(f.priority, f.reliable, buf.bytes(), sink);
        // The message's buffer stays available to `take_reassembled` (so a runtime can keep the
        // payload without copying it); the slot takes the previous one, capacity kept, so a
        // stream of large messages does not regrow its buffer every time.
        let spare = self.reassembled.replace(buf);
        if let Some(r) = self.reassembly.get_mut(slot) {
            r.buf = spare.unwrap_or_default();
            r.buf.resize(0);
        }
    }

    /// Decodes and hands over every network message of `bytes`; closes on malformed input.
    fn deliver<F: FnMut(&Received<'_, '_>)>(
        &mut self,
        priority: Priority,
        reliable: bool,
        bytes: &[u8],
        sink: &mut F,
    ) {
        for m in Messages::new(bytes) {
            let msg = match m {
                Ok(m) => m,
                Err(e) => {
                    crate::core_warn!("closing link: malformed network message: {e}");
                    self.begin_close(CloseReason::Malformed, false);
                    return;
                }
            };
            match msg {
                NetworkMessage::Declare(Declare::KeyExpr { id, key }) => {
                    let known = self.keys.get(id).is_some();
                    if (!known && self.keys.len() >= self.config.max_remote_keys)
                        || !self.keys.insert(id, key)
                    {
                        crate::core_warn!("closing link: peer declared too many key ids");
                        self.begin_close(CloseReason::TooLarge, false);
                        return;
                    }
                }
                NetworkMessage::Declare(Declare::UndeclareKeyExpr { id }) => self.keys.remove(id),
                _ => {}
            }
            self.stats.rx_messages += 1;
            let data = msg.is_data();
            if data {
                self.stats.rx_data += 1;
            }
            if reliable && self.acks.on {
                if let Some(g) = self.acks.got.get_mut(priority.index()) {
                    g.messages = g.messages.wrapping_add(1);
                    g.data = g.data.wrapping_add(u32::from(data));
                }
                if self.acks.since.is_none() {
                    self.acks.since = Some(self.last_rx);
                }
            }
            sink(&Received {
                priority,
                reliable,
                msg,
                keys: &self.keys,
            });
        }
    }
}
