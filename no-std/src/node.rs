//! The device node's state machine: link session (handshake, lease, sequence numbers),
//! declarations and their replay, the transmit batch, and events decoded lazily from the last
//! frame received.

use crate::ke;
use crate::wire::{self, Batch, Control, FRAME_HEADER, Msg, Out, Writer, varint_len};
use crate::{
    Config, Error, Event, GetId, KeyId, QableId, QueryId, REMOTE_KEY_LEN, REMOTE_KEYS,
    STAGE_OFFSET, Stats, SubId, SubSet, TOKENS, TokenId,
};
use hypha_core::framing::{self, Deframer, FramingStats};
use hypha_core::time::{Duration, Instant};
use hypha_core::wire::{CloseReason, PROTOCOL_VERSION, WireKey, interest};

// Everything the device sends goes on one ordered reliable lane (Data, `wire::FRAME_HEADER`),
// so a declaration always precedes its first use.
/// Sequence-number resolution proposed (one-byte sequence numbers, two-byte frame headers).
const SN_BITS: u8 = 7;
/// Id ranges of the device's declarations, one per kind.
const QABLE_BASE: u32 = 0x100;
const TOKEN_BASE: u32 = 0x200;
/// Kinds of declarations, in replay order.
const K_KEY: usize = 0;
const K_SUB: usize = 1;
const K_QABLE: usize = 2;
const K_TOKEN: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Init` sent (or due at `next_init`), waiting for `Accept`.
    Connecting,
    Open,
}

/// A message owed to the std side, sent before anything else staged.
#[derive(Clone, Copy)]
enum Owed {
    InterestFinal(u32),
    ResponseFinal(u32),
}

/// A state change waiting for `poll_event`.
#[derive(Clone, Copy)]
enum Note {
    Connected,
    Disconnected(CloseReason, bool),
}

/// Key ids bound by the std side.
struct RemoteKeys {
    ids: [u32; REMOTE_KEYS],
    lens: [u8; REMOTE_KEYS],
    keys: [[u8; REMOTE_KEY_LEN]; REMOTE_KEYS],
    next_victim: usize,
}

impl RemoteKeys {
    const fn new() -> Self {
        RemoteKeys {
            ids: [0; REMOTE_KEYS],
            lens: [0; REMOTE_KEYS],
            keys: [[0; REMOTE_KEY_LEN]; REMOTE_KEYS],
            next_victim: 0,
        }
    }

    fn clear(&mut self) {
        self.ids = [0; REMOTE_KEYS];
    }

    /// Binds `id`; returns true if an older binding was evicted.
    fn insert(&mut self, id: u32, key: &str) -> bool {
        self.remove(id);
        let (slot, evicted) = match self.ids.iter().position(|i| *i == 0) {
            Some(s) => (s, false),
            None => {
                let s = self.next_victim % REMOTE_KEYS;
                self.next_victim = s + 1;
                (s, true)
            }
        };
        let bytes = key.as_bytes();
        if let (Some(dst), Some(len), Some(slot_id)) = (
            self.keys
                .get_mut(slot)
                .and_then(|k| k.get_mut(..bytes.len())),
            self.lens.get_mut(slot),
            self.ids.get_mut(slot),
        ) {
            dst.copy_from_slice(bytes);
            *len = bytes.len() as u8;
            *slot_id = id;
        }
        evicted
    }

    fn remove(&mut self, id: u32) {
        for i in self.ids.iter_mut().filter(|i| **i == id) {
            *i = 0;
        }
    }

    /// A received key: its name, or the name bound to its id.
    fn resolve<'k>(&'k self, key: WireKey<'k>) -> Option<&'k str> {
        match key {
            WireKey::Name(k) => Some(k),
            WireKey::Id(id) => self.get(id),
        }
    }

    fn get(&self, id: u32) -> Option<&str> {
        if id == 0 {
            return None;
        }
        let slot = self.ids.iter().position(|i| *i == id)?;
        let len = usize::from(*self.lens.get(slot)?);
        core::str::from_utf8(self.keys.get(slot)?.get(..len)?).ok()
    }
}

/// The device node. `SUBS` subscriptions (at most 32), `QABLES` queryables, `GETS` gets in
/// flight, `KEYS` publication keys; buffers borrowed for `'b`.
pub struct Node<
    'b,
    const SUBS: usize = 4,
    const QABLES: usize = 2,
    const GETS: usize = 2,
    const KEYS: usize = 4,
> {
    cfg: Config,
    rx: Deframer<&'b mut [u8]>,
    /// `[..STAGE_OFFSET + mtu]`: frame header room then staged messages; the rest: the framed
    /// bytes handed out by `poll_transmit`.
    tx: &'b mut [u8],
    stage_len: usize,
    buffers_ok: bool,
    state: State,
    next_init: Instant,
    send_open: bool,
    send_close: Option<CloseReason>,
    peer_lease: Duration,
    batch: usize,
    sn_mask: u32,
    tx_sn: u32,
    rx_sn: [u32; 16],
    last_rx: Instant,
    last_tx: Instant,
    keys: heapless::Vec<&'static str, KEYS>,
    subs: heapless::Vec<&'static str, SUBS>,
    qables: heapless::Vec<&'static str, QABLES>,
    tokens: heapless::Vec<&'static str, TOKENS>,
    /// Declarations of each kind already staged on this session.
    sent: [usize; 4],
    remote: RemoteKeys,
    gets: heapless::Vec<(u32, Instant), GETS>,
    next_get: u32,
    ended: heapless::Vec<u32, GETS>,
    owed: heapless::Deque<Owed, 4>,
    notes: heapless::Deque<Note, 4>,
    /// Undelivered network messages of the last frame: `rx` buffer range.
    cur: Option<(usize, usize)>,
    stats: Stats,
}

fn ms(n: u32) -> Duration {
    Duration::from_millis(u64::from(n))
}

fn valid_key(ke: &str) -> Result<(), Error> {
    if ke::valid(ke) {
        Ok(())
    } else {
        Err(Error::InvalidKey)
    }
}

/// A key the device matches received keys against: valid, and at most `ke::MAX_CHUNKS`
/// chunks.
fn matchable_key(ke: &str) -> Result<(), Error> {
    valid_key(ke)?;
    if ke::short_enough(ke) {
        Ok(())
    } else {
        Err(Error::InvalidKey)
    }
}

/// `Vec::swap_remove` by plain assignment (heapless' goes through `memmove`).
fn swap_remove<T: Copy, const N: usize>(v: &mut heapless::Vec<T, N>, i: usize) {
    if let Some(last) = v.pop() {
        if let Some(slot) = v.get_mut(i) {
            *slot = last;
        }
    }
}

/// Bytes of a frame header for sequence number `sn`.
fn frame_header_len(sn: u32) -> usize {
    1 + varint_len(sn)
}

impl<'b, const SUBS: usize, const QABLES: usize, const GETS: usize, const KEYS: usize>
    Node<'b, SUBS, QABLES, GETS, KEYS>
{
    /// A node over `rx` ([`rx_buffer_len`](crate::rx_buffer_len)`(mtu)` bytes or more) and
    /// `tx` ([`tx_buffer_len`](crate::tx_buffer_len)`(mtu)` or more). With smaller buffers
    /// every verb answers [`Error::BufferTooSmall`] and nothing is sent.
    pub fn new(cfg: Config, rx: &'b mut [u8], tx: &'b mut [u8]) -> Self {
        let mtu = usize::from(cfg.mtu).max(64);
        let buffers_ok =
            rx.len() >= crate::rx_buffer_len(mtu) && tx.len() >= crate::tx_buffer_len(mtu);
        let mask = (1u32 << SN_BITS) - 1;
        Node {
            cfg,
            rx: Deframer::new(rx),
            tx,
            stage_len: 0,
            buffers_ok,
            state: State::Connecting,
            next_init: Instant::ZERO,
            send_open: false,
            send_close: None,
            peer_lease: ms(cfg.lease_ms),
            batch: mtu,
            sn_mask: mask,
            tx_sn: cfg.seed & mask,
            rx_sn: [0; 16],
            last_rx: Instant::ZERO,
            last_tx: Instant::ZERO,
            keys: heapless::Vec::new(),
            subs: heapless::Vec::new(),
            qables: heapless::Vec::new(),
            tokens: heapless::Vec::new(),
            sent: [0; 4],
            remote: RemoteKeys::new(),
            gets: heapless::Vec::new(),
            next_get: 1,
            ended: heapless::Vec::new(),
            owed: heapless::Deque::new(),
            notes: heapless::Deque::new(),
            cur: None,
            stats: Stats::default(),
        }
    }

    /// True while a session is open.
    pub fn is_connected(&self) -> bool {
        self.state == State::Open
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Framing counters (CRC, COBS, overflow errors) of the receive side.
    pub fn framing(&self) -> &FramingStats {
        self.rx.stats()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----- declarations -------------------------------------------------------------------

    /// Declares a publication key: later [`put`](Self::put)s name it by a numeric id (a few
    /// bytes on the line instead of the key). Kept across reconnections.
    pub fn declare_publisher(&mut self, ke: &'static str) -> Result<KeyId, Error> {
        valid_key(ke)?;
        let id = self.keys.len();
        self.keys.push(ke).map_err(|_| Error::Full)?;
        Ok(KeyId(id as u8))
    }

    /// Subscribes to `ke`; matching samples arrive as [`Event::Sample`].
    pub fn declare_subscriber(&mut self, ke: &'static str) -> Result<SubId, Error> {
        matchable_key(ke)?;
        let id = self.subs.len();
        if id >= 32 {
            return Err(Error::Full);
        }
        self.subs.push(ke).map_err(|_| Error::Full)?;
        Ok(SubId(id as u8))
    }

    /// Answers queries on `ke`; they arrive as [`Event::Query`].
    pub fn declare_queryable(&mut self, ke: &'static str) -> Result<QableId, Error> {
        matchable_key(ke)?;
        let id = self.qables.len();
        self.qables.push(ke).map_err(|_| Error::Full)?;
        Ok(QableId(id as u8))
    }

    /// Holds a liveliness token on `ke` while connected (it vanishes on the std side when the
    /// link does).
    pub fn declare_token(&mut self, ke: &'static str) -> Result<TokenId, Error> {
        valid_key(ke)?;
        let id = self.tokens.len();
        self.tokens.push(ke).map_err(|_| Error::Full)?;
        Ok(TokenId(id as u8))
    }

    // ----- verbs --------------------------------------------------------------------------

    /// Publishes `payload` on a declared key.
    pub fn put(&mut self, key: KeyId, payload: &[u8]) -> Result<(), Error> {
        if usize::from(key.0) >= self.keys.len() {
            return Err(Error::InvalidKey);
        }
        self.stage_msg(&Out::Put {
            key_id: u32::from(key.0) + 1,
            payload,
        })
    }

    /// Asks for `ke?params`; replies arrive as [`Event::Reply`] / [`Event::ReplyErr`], then
    /// one [`Event::ReplyEnd`] (at the latest after `timeout_ms`).
    pub fn get(
        &mut self,
        now: Instant,
        ke: &str,
        params: &str,
        timeout_ms: u32,
    ) -> Result<GetId, Error> {
        valid_key(ke)?;
        if self.gets.is_full() {
            return Err(Error::Full);
        }
        let id = self.next_get;
        self.stage_msg(&Out::Request {
            id,
            key: ke,
            params,
            timeout_ms,
        })?;
        self.next_get = id.wrapping_add(1).max(1);
        let _ = self.gets.push((id, now + ms(timeout_ms)));
        Ok(GetId(id))
    }

    /// Answers query `q` with a sample on `ke`.
    pub fn reply(&mut self, q: QueryId, ke: &str, payload: &[u8]) -> Result<(), Error> {
        valid_key(ke)?;
        self.stage_msg(&Out::Reply {
            request_id: q.0,
            key: ke,
            payload,
        })
    }

    /// Ends the answers to query `q`.
    pub fn reply_final(&mut self, q: QueryId) -> Result<(), Error> {
        self.stage_msg(&Out::ResponseFinal(q.0))
    }

    // ----- transmit -----------------------------------------------------------------------

    fn stage_room(&self) -> usize {
        let hdr = frame_header_len(self.sn_mask);
        STAGE_OFFSET + self.batch.saturating_sub(hdr)
    }

    /// Appends a message to the batch being built.
    fn stage_raw(&mut self, msg: &Out<'_>) -> Result<(), Error> {
        let end = self.stage_room();
        let from = STAGE_OFFSET + self.stage_len;
        let Some(dst) = self.tx.get_mut(from..end) else {
            return Err(Error::WouldBlock);
        };
        match msg.encode(dst) {
            Some(n) => {
                self.stage_len += n;
                Ok(())
            }
            None if self.stage_len > 0 => Err(Error::WouldBlock),
            None => Err(Error::TooLarge),
        }
    }

    /// A user message: only on an open session, after every declaration.
    fn stage_msg(&mut self, msg: &Out<'_>) -> Result<(), Error> {
        if !self.buffers_ok {
            return Err(Error::BufferTooSmall);
        }
        if self.state != State::Open {
            return Err(Error::NotConnected);
        }
        if !self.stage_pending() {
            return Err(Error::WouldBlock);
        }
        self.stage_raw(msg)
    }

    /// Stages owed finals and declarations not yet sent on this session; true when none is
    /// left.
    fn stage_pending(&mut self) -> bool {
        while let Some(o) = self.owed.front().copied() {
            let msg = match o {
                Owed::InterestFinal(id) => Out::InterestFinal(id),
                Owed::ResponseFinal(id) => Out::ResponseFinal(id),
            };
            if self.stage_raw(&msg).is_err() {
                return false;
            }
            self.owed.pop_front();
        }
        for kind in [K_KEY, K_SUB, K_QABLE, K_TOKEN] {
            loop {
                let i = self.sent.get(kind).copied().unwrap_or(usize::MAX);
                let id = i as u32 + 1;
                let decl = match kind {
                    K_KEY => self.keys.get(i).map(|&key| Out::KeyExpr { id, key }),
                    K_SUB => self.subs.get(i).map(|&key| Out::Subscriber { id, key }),
                    K_QABLE => self.qables.get(i).map(|&key| Out::Queryable {
                        id: QABLE_BASE + id,
                        key,
                    }),
                    _ => self.tokens.get(i).map(|&key| Out::Token {
                        id: TOKEN_BASE + id,
                        key,
                    }),
                };
                let Some(decl) = decl else { break };
                if self.stage_raw(&decl).is_err() {
                    return false;
                }
                if let Some(s) = self.sent.get_mut(kind) {
                    *s += 1;
                }
            }
        }
        true
    }

    /// The next bytes to write to the line, framed, or `None` when there is nothing to send.
    /// Worth calling again after any verb, `handle_rx`, or when [`poll_timeout`] passes; call
    /// it until it returns `None`. The slice is valid until the next call on the node.
    ///
    /// [`poll_timeout`]: Self::poll_timeout
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        self.transmit(now, true)
    }

    /// For a datagram link (UDP over a network stack): the next batch to send as **one
    /// datagram**, unframed (no delimiters, COBS or CRC: the datagram delimits the batch and
    /// its checksum covers it), as a std node's `udp/` link carries batches. The same rules
    /// as [`poll_transmit`](Self::poll_transmit) otherwise; pair it with
    /// [`handle_datagram`](Self::handle_datagram).
    pub fn poll_transmit_datagram(&mut self, now: Instant) -> Option<&[u8]> {
        self.transmit(now, false)
    }

    /// `poll_transmit`, framed for a byte stream or not (a datagram). Inlined into both so
    /// that a firmware using one carries none of the other.
    #[inline(always)]
    fn transmit(&mut self, now: Instant, framed: bool) -> Option<&[u8]> {
        if !self.buffers_ok {
            return None;
        }
        self.handle_timeout(now);
        let mut ctl = [0u8; 48];
        let control = if let Some(reason) = self.send_close.take() {
            Some(Control::Close(reason))
        } else if self.state == State::Connecting && now >= self.next_init {
            self.next_init = now + ms(self.cfg.init_interval_ms);
            self.tx_sn = self.cfg.seed & self.sn_mask;
            Some(Control::Init {
                node_id: self.cfg.node_id,
                batch_size: self.batch as u16,
                sn_bits: SN_BITS,
                lease_ms: self.cfg.lease_ms,
                initial_sn: self.tx_sn,
            })
        } else if self.send_open {
            self.send_open = false;
            Some(Control::Open {
                initial_sn: self.tx_sn,
            })
        } else {
            None
        };
        if let Some(m) = control {
            let n = m.encode(&mut ctl)?;
            return self.emit_control(now, ctl.get(..n)?, framed);
        }
        if self.state != State::Open {
            return None;
        }
        self.stage_pending();
        if self.stage_len > 0 {
            // The frame header goes right before the staged messages: no copy.
            let sn = self.tx_sn;
            let start = STAGE_OFFSET - frame_header_len(sn);
            let hdr = self.tx.get_mut(start..STAGE_OFFSET)?;
            Writer::new(hdr).u8(FRAME_HEADER).var(sn).finish()?;
            self.tx_sn = sn.wrapping_add(1) & self.sn_mask;
            self.stats.tx_frames += 1;
            let end = STAGE_OFFSET + core::mem::take(&mut self.stage_len);
            if !framed {
                self.last_tx = now;
                return self.tx.get(start..end);
            }
            let split = self.split();
            let (stage, wire) = self.tx.split_at_mut(split);
            let n = framing::encode(stage.get(start..end)?, wire).ok()?;
            self.last_tx = now;
            return self.tx.get(split..split + n);
        }
        if now.saturating_since(self.last_tx) >= ms(self.cfg.lease_ms / 4) {
            self.stats.tx_keepalives += 1;
            let n = Control::KeepAlive.encode(&mut ctl)?;
            return self.emit_control(now, ctl.get(..n)?, framed);
        }
        None
    }

    /// Where the framed bytes start in `tx`.
    fn split(&self) -> usize {
        (STAGE_OFFSET + usize::from(self.cfg.mtu).max(64)).min(self.tx.len())
    }

    /// Puts a transport control message into the wire area, framed or as it is.
    #[inline(always)]
    fn emit_control(&mut self, now: Instant, batch: &[u8], framed: bool) -> Option<&[u8]> {
        let split = self.split();
        let wire = self.tx.get_mut(split..)?;
        let n = if framed {
            framing::encode(batch, wire).ok()?
        } else {
            wire.get_mut(..batch.len())?.copy_from_slice(batch);
            batch.len()
        };
        self.last_tx = now;
        self.tx.get(split..split + n)
    }

    // ----- timers -------------------------------------------------------------------------

    /// When to call [`poll_transmit`](Self::poll_transmit) (or
    /// [`handle_timeout`](Self::handle_timeout)) next, at the latest.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = match self.state {
            State::Connecting => self.next_init,
            State::Open => {
                let keepalive = self.last_tx + ms(self.cfg.lease_ms / 4);
                let expiry = self.last_rx + self.peer_lease;
                keepalive.min(expiry)
            }
        };
        for (_, deadline) in &self.gets {
            t = t.min(*deadline);
        }
        t
    }

    /// Advances timers: lease expiry, get deadlines. `poll_transmit` calls it too.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Open && now.saturating_since(self.last_rx) >= self.peer_lease {
            self.disconnect(now, CloseReason::LeaseExpired, false);
        }
        let mut i = 0;
        while let Some((id, deadline)) = self.gets.get(i).copied() {
            if now >= deadline {
                swap_remove(&mut self.gets, i);
                let _ = self.ended.push(id);
            } else {
                i += 1;
            }
        }
    }

    /// Ends the session (not for a `Close` the peer sent: then `by_peer`).
    fn disconnect(&mut self, now: Instant, reason: CloseReason, by_peer: bool) {
        if self.state == State::Open {
            if self.notes.is_full() {
                self.notes.pop_front();
            }
            let _ = self.notes.push_back(Note::Disconnected(reason, by_peer));
            for (id, _) in self.gets.iter() {
                let _ = self.ended.push(*id);
            }
            self.gets.clear();
            if !by_peer {
                self.send_close = Some(reason);
            }
        }
        self.state = State::Connecting;
        // After our own Close the std side tears its link down: give it an init interval.
        self.next_init = if by_peer {
            now
        } else {
            now + ms(self.cfg.init_interval_ms)
        };
        self.send_open = false;
        self.stage_len = 0;
        self.cur = None;
        self.remote.clear();
        self.owed.clear();
    }

    // ----- receive ------------------------------------------------------------------------

    /// Feeds bytes read from the line. Returns how many were consumed: it stops after a frame
    /// carrying network messages, which [`poll_event`](Self::poll_event) then hands out; feed
    /// the rest after `poll_event` returned `None` (while events are pending it consumes
    /// nothing). Garbage, corrupted and oversized frames are counted ([`framing`]) and skipped.
    ///
    /// [`framing`]: Self::framing
    pub fn handle_rx(&mut self, now: Instant, bytes: &[u8]) -> usize {
        if self.cur.is_some() || !self.buffers_ok {
            return 0;
        }
        let mut used = 0;
        while let Some(rest) = bytes.get(used..).filter(|r| !r.is_empty()) {
            let (n, frame) = self.rx.push(rest);
            used += n;
            if let Some(len) = frame {
                if self.on_batch(now, len) {
                    break;
                }
            }
        }
        used
    }

    /// Feeds one received datagram: a whole batch, unframed (as
    /// [`poll_transmit_datagram`](Self::poll_transmit_datagram) makes them). Returns false,
    /// taking nothing, while events of the previous batch are pending: drain
    /// [`poll_event`](Self::poll_event), then feed it again. A datagram longer than the
    /// receive buffer is dropped and counted ([`framing`](Self::framing)`().overflows`).
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> bool {
        if self.cur.is_some() {
            return false;
        }
        if !self.buffers_ok || datagram.is_empty() {
            return true;
        }
        if let Some(len) = self.rx.load(datagram) {
            self.on_batch(now, len);
        }
        true
    }

    fn classify(&self, len: usize) -> Batch {
        wire::batch(self.rx.frame(len))
    }

    /// Handles one good batch; true if it left network messages to deliver.
    fn on_batch(&mut self, now: Instant, len: usize) -> bool {
        let kind = self.classify(len);
        if !matches!(kind, Batch::Malformed | Batch::Ignored) {
            self.last_rx = now;
            self.stats.rx_batches += 1;
        }
        match kind {
            Batch::Accept(a) if self.state == State::Connecting => {
                if a.version != PROTOCOL_VERSION || a.node_id == self.cfg.node_id {
                    self.send_close = Some(CloseReason::UnsupportedVersion);
                    self.next_init = now + ms(self.cfg.init_interval_ms);
                    return false;
                }
                self.peer_lease = ms(a.lease_ms);
                self.batch = self.batch.min(usize::from(a.batch_size)).max(64);
                let bits = a.sn_bits.clamp(7, SN_BITS);
                self.sn_mask = if bits >= 32 {
                    u32::MAX
                } else {
                    (1u32 << bits) - 1
                };
                self.tx_sn &= self.sn_mask;
                self.rx_sn = [a.initial_sn & self.sn_mask; 16];
                self.state = State::Open;
                self.send_open = true;
                self.sent = [0; 4];
                self.stage_len = 0;
                self.last_tx = now;
                self.stats.connects += 1;
                if self.notes.is_full() {
                    self.notes.pop_front();
                }
                let _ = self.notes.push_back(Note::Connected);
                false
            }
            Batch::Close(reason) => {
                self.disconnect(now, reason, true);
                false
            }
            Batch::Frame {
                slot,
                reliable,
                sn,
                start,
            } if self.state == State::Open => {
                if !self.sequence_ok(now, slot, reliable, sn) || start >= len {
                    return false;
                }
                self.cur = Some((start, len));
                true
            }
            Batch::Fragment { slot, reliable, sn } if self.state == State::Open => {
                if self.sequence_ok(now, slot, reliable, sn) {
                    self.stats.rx_too_large += 1;
                }
                false
            }
            Batch::Malformed => {
                self.stats.rx_malformed += 1;
                if self.state == State::Open {
                    self.disconnect(now, CloseReason::Malformed, false);
                }
                false
            }
            _ => false,
        }
    }

    /// The std session's rule: in order on reliable lanes (a gap closes), best-effort lanes
    /// count losses and go on, duplicates are dropped.
    fn sequence_ok(&mut self, now: Instant, slot: usize, reliable: bool, sn: u32) -> bool {
        let mask = self.sn_mask;
        let Some(expected) = self.rx_sn.get_mut(slot) else {
            return false;
        };
        if sn & !mask != 0 {
            self.disconnect(now, CloseReason::SequenceGap, false);
            return false;
        }
        let d = sn.wrapping_sub(*expected) & mask;
        let half = (mask >> 1) + 1;
        if d == 0 {
            *expected = sn.wrapping_add(1) & mask;
            true
        } else if reliable && d >= half || !reliable && d == mask {
            self.stats.rx_duplicates += 1;
            false
        } else if reliable {
            self.disconnect(now, CloseReason::SequenceGap, false);
            false
        } else {
            *expected = sn.wrapping_add(1) & mask;
            self.stats.rx_lost += d;
            true
        }
    }

    // ----- events -------------------------------------------------------------------------

    /// The next event, if any. Worth calling after `handle_rx` and `poll_transmit` (timers)
    /// until it returns `None`. The event borrows the node's receive buffer.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        if let Some(n) = self.notes.pop_front() {
            return Some(match n {
                Note::Connected => Event::Connected,
                Note::Disconnected(reason, by_peer) => Event::Disconnected { reason, by_peer },
            });
        }
        if let Some(id) = self.ended.pop() {
            return Some(Event::ReplyEnd { get: GetId(id) });
        }
        // Walk the last frame's messages: what needs no event is handled on the way. The
        // position is found first (mutating the node), then the event is decoded again from
        // the immutable buffer so it may borrow it.
        loop {
            let (pos, end) = self.cur?;
            let Node {
                rx,
                remote,
                owed,
                gets,
                stats,
                subs,
                qables,
                ..
            } = self;
            let bytes = rx.frame(end).get(pos..).unwrap_or(&[]);
            let (msg, rest) = match wire::take(bytes) {
                Some(x) => x,
                None => {
                    self.cur = None;
                    self.stats.rx_malformed += 1;
                    self.disconnect(self.last_rx, CloseReason::Malformed, false);
                    return self.poll_event();
                }
            };
            let next = end - rest.len();
            let mut rx_state = RxState {
                remote,
                owed,
                gets,
                stats,
                subs,
                qables,
            };
            let step = rx_state.inspect(&msg);
            self.cur = (next < end).then_some((next, end));
            match step {
                Step::Skip => {}
                Step::Deliver => return self.decode_event(pos, end),
            }
        }
    }

    /// Decodes the message at `rx[pos..end]` again, as an event borrowing the buffer.
    fn decode_event(&self, pos: usize, end: usize) -> Option<Event<'_>> {
        let bytes = self.rx.frame(end).get(pos..)?;
        let (msg, _) = wire::take(bytes)?;
        let name = |k| self.remote.resolve(k);
        match msg {
            Msg::Request { id, key, params } => {
                let key = name(key)?;
                Some(Event::Query {
                    id: QueryId(id),
                    qable: matching_qable(&self.qables, key)?,
                    key,
                    params,
                })
            }
            Msg::Response {
                request_id,
                key: Some(key),
                payload,
            } => Some(Event::Reply {
                get: GetId(request_id),
                key: name(key)?,
                payload,
            }),
            Msg::Response {
                request_id,
                key: None,
                payload,
            } => Some(Event::ReplyErr {
                get: GetId(request_id),
                payload,
            }),
            Msg::ResponseFinal(id) => Some(Event::ReplyEnd { get: GetId(id) }),
            Msg::Sample { kind, key, payload } => {
                let key = name(key)?;
                Some(Event::Sample {
                    subs: matching_subs(&self.subs, key),
                    kind,
                    key,
                    payload,
                })
            }
            _ => None,
        }
    }
}

/// What handling a received message touches, borrowed apart from the receive buffer.
struct RxState<'x, const SUBS: usize, const QABLES: usize, const GETS: usize> {
    remote: &'x mut RemoteKeys,
    owed: &'x mut heapless::Deque<Owed, 4>,
    gets: &'x mut heapless::Vec<(u32, Instant), GETS>,
    stats: &'x mut Stats,
    subs: &'x heapless::Vec<&'static str, SUBS>,
    qables: &'x heapless::Vec<&'static str, QABLES>,
}

impl<const SUBS: usize, const QABLES: usize, const GETS: usize> RxState<'_, SUBS, QABLES, GETS> {
    /// Applies what a message does to the node's state; tells whether it makes an event.
    fn inspect(&mut self, msg: &Msg<'_>) -> Step {
        match *msg {
            Msg::KeyExpr { id, key } => {
                if key.len() > REMOTE_KEY_LEN {
                    self.remote.remove(id);
                } else if self.remote.insert(id, key) {
                    self.stats.keys_evicted += 1;
                }
                Step::Skip
            }
            Msg::UndeclareKeyExpr(id) => {
                self.remote.remove(id);
                Step::Skip
            }
            Msg::Interest { id, flags } => {
                if flags & interest::CURRENT != 0 {
                    self.owe(Owed::InterestFinal(id));
                }
                Step::Skip
            }
            Msg::Sample { key, .. } => match self.remote.resolve(key) {
                Some(key) if matching_subs(self.subs, key).0 != 0 => Step::Deliver,
                Some(_) => Step::Skip,
                None => {
                    self.stats.rx_unknown_key += 1;
                    Step::Skip
                }
            },
            Msg::Request { id, key, .. } => {
                match self
                    .remote
                    .resolve(key)
                    .and_then(|k| matching_qable(self.qables, k))
                {
                    Some(_) => Step::Deliver,
                    None => {
                        // Nothing here answers it: say so at once rather than leave the
                        // querier waiting for its deadline.
                        self.owe(Owed::ResponseFinal(id));
                        Step::Skip
                    }
                }
            }
            Msg::Response { request_id, .. } if self.gets.iter().any(|g| g.0 == request_id) => {
                Step::Deliver
            }
            Msg::ResponseFinal(id) => match self.gets.iter().position(|g| g.0 == id) {
                Some(i) => {
                    swap_remove(self.gets, i);
                    Step::Deliver
                }
                None => Step::Skip,
            },
            _ => Step::Skip,
        }
    }

    fn owe(&mut self, o: Owed) {
        if self.owed.push_back(o).is_err() {
            self.stats.owed_dropped += 1;
        }
    }
}

fn matching_subs(subs: &[&'static str], key: &str) -> SubSet {
    let mut set = 0u32;
    for (i, s) in subs.iter().enumerate().take(32) {
        if ke::intersects(s, key) {
            set |= 1 << i;
        }
    }
    SubSet(set)
}

fn matching_qable(qables: &[&'static str], key: &str) -> Option<QableId> {
    qables
        .iter()
        .position(|q| ke::intersects(q, key))
        .map(|i| QableId(i as u8))
}

enum Step {
    Skip,
    Deliver,
}
