//! Byte-stream framing for serial lines (and anything else that is a bare byte stream).
//!
//! One batch (one transport message) travels as
//!
//! ```text
//! 0x00 | COBS( batch | CRC-32/IEEE(batch), little-endian ) | 0x00
//! ```
//!
//! COBS removes every zero byte from the encoded bytes, so `0x00` only ever delimits. The
//! leading delimiter ends whatever partial frame a reboot or line noise left in the receiver;
//! empty frames (two delimiters in a row) are ignored. The CRC is the IEEE 802.3 CRC-32
//! (reflected, polynomial `0x04C11DB7`, check value `0xCBF43926` for `"123456789"`).
//!
//! The receiver, [`Deframer`], accumulates bytes in a caller-provided buffer and decodes each
//! frame in place (no copy): a frame that does not decode, fails its CRC or overflows the
//! buffer is dropped and counted ([`FramingStats`]), and reception resynchronises at the next
//! delimiter. It never panics, whatever the input.
//!
//! The same code runs on the device (`hypha-nostd`) and in the std `serial` links of
//! `hypha-transports`. It never allocates.
//!
//! ```
//! use hypha_core::framing::{Deframer, encode, encoded_len};
//!
//! let mut wire = [0u8; encoded_len(5)];
//! let n = encode(b"hello", &mut wire).unwrap();
//! let mut rx = Deframer::new([0u8; 64]);
//! // Noise first, then the frame: the noise is dropped and counted.
//! let (used, frame) = rx.push(&[0x17, 0x42]);
//! assert_eq!((used, frame), (2, None));
//! let (used, frame) = rx.push(&wire[..n]);
//! assert_eq!(used, n);
//! assert_eq!(rx.frame(frame.unwrap()), b"hello");
//! assert_eq!(rx.stats().cobs_errors + rx.stats().crc_errors, 1);
//! ```

use crate::wire::EncodeError;

/// Bytes of CRC after each batch.
pub const CRC_LEN: usize = 4;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

/// Largest number of bytes [`encode`] writes for a batch of `batch_len` bytes: two delimiters,
/// the batch and its CRC, and one COBS code byte per 254 bytes (plus one).
pub const fn encoded_len(batch_len: usize) -> usize {
    let n = batch_len + CRC_LEN;
    2 + n + n / 254 + 1
}

/// Smallest [`Deframer`] buffer that holds any frame of a batch up to `batch_len` bytes.
pub const fn deframer_len(batch_len: usize) -> usize {
    encoded_len(batch_len) - 2
}

/// CRC-32/IEEE with a 16-entry table (64 bytes): small enough for a microcontroller, two
/// lookups per byte.
#[allow(clippy::indexing_slicing)] // const evaluation: an out-of-range index fails the build
const NIBBLE_TABLE: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 4 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// A running CRC-32/IEEE.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// A fresh CRC.
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    /// Adds bytes.
    #[allow(clippy::indexing_slicing)] // indices are masked to 4 bits: always in the table
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c ^= u32::from(b);
            c = (c >> 4) ^ NIBBLE_TABLE[(c & 0xF) as usize];
            c = (c >> 4) ^ NIBBLE_TABLE[(c & 0xF) as usize];
        }
        self.0 = c;
    }

    /// The CRC of the bytes added so far.
    pub const fn finish(self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

/// CRC-32/IEEE of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

/// Writes `batch` framed (`0x00 COBS(batch | crc) 0x00`) at the start of `out`, returning the
/// number of bytes written (at most [`encoded_len`]`(batch.len())`).
pub fn encode(batch: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let crc = crc32(batch).to_le_bytes();
    let mut w = CobsWriter::new(out)?;
    for &b in batch.iter().chain(crc.iter()) {
        w.push(b)?;
    }
    w.finish()
}

/// COBS encoder into a slice, delimiters included.
struct CobsWriter<'a> {
    out: &'a mut [u8],
    /// Where the current block's code byte goes.
    code_at: usize,
    code: u8,
    pos: usize,
}

impl<'a> CobsWriter<'a> {
    fn new(out: &'a mut [u8]) -> Result<Self, EncodeError> {
        // Leading delimiter, then room for the first code byte.
        *out.first_mut().ok_or(EncodeError::BufferTooSmall)? = DELIMITER;
        Ok(CobsWriter {
            out,
            code_at: 1,
            code: 1,
            pos: 2,
        })
    }

    fn put(&mut self, at: usize, b: u8) -> Result<(), EncodeError> {
        *self.out.get_mut(at).ok_or(EncodeError::BufferTooSmall)? = b;
        Ok(())
    }

    fn close_block(&mut self) -> Result<(), EncodeError> {
        self.put(self.code_at, self.code)?;
        self.code_at = self.pos;
        self.pos += 1;
        self.code = 1;
        Ok(())
    }

    fn push(&mut self, b: u8) -> Result<(), EncodeError> {
        if b == 0 {
            return self.close_block();
        }
        self.put(self.pos, b)?;
        self.pos += 1;
        self.code += 1;
        if self.code == 0xFF {
            self.close_block()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<usize, EncodeError> {
        self.put(self.code_at, self.code)?;
        self.put(self.pos, DELIMITER)?;
        Ok(self.pos + 1)
    }
}

/// Decodes COBS in place: `buf` holds one encoded frame (no delimiters); the decoded bytes are
/// written at its start. Returns their length, or `None` if `buf` is not valid COBS.
fn cobs_decode_in_place(buf: &mut [u8]) -> Option<usize> {
    let len = buf.len();
    let mut r = 0;
    let mut w = 0;
    while r < len {
        let code = usize::from(*buf.get(r)?);
        if code == 0 {
            return None;
        }
        r += 1;
        let end = r + code - 1;
        if end > len {
            return None;
        }
        // Forward, byte by byte (`w <= r`): no `memmove` in a device image for this.
        while r < end {
            let b = *buf.get(r)?;
            *buf.get_mut(w)? = b;
            r += 1;
            w += 1;
        }
        if code != 0xFF && r < len {
            *buf.get_mut(w)? = 0;
            w += 1;
        }
    }
    Some(w)
}

/// Counters of a [`Deframer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramingStats {
    /// Frames delivered (COBS and CRC good).
    pub frames: u32,
    /// Frames dropped because their CRC did not match.
    pub crc_errors: u32,
    /// Frames dropped because they were not valid COBS (or too short to hold a CRC).
    pub cobs_errors: u32,
    /// Frames dropped because they were longer than the buffer (skipped to the next delimiter).
    pub overflows: u32,
}

impl FramingStats {
    /// Every error counted.
    pub const fn errors(&self) -> u32 {
        self.crc_errors + self.cobs_errors + self.overflows
    }
}

/// Splits a byte stream into frames, in a buffer `B` (`[u8; N]`, `&mut [u8]`, `Vec<u8>`…)
/// whose length bounds the encoded frame. Sizing: [`deframer_len`]`(largest batch)`.
#[derive(Debug)]
pub struct Deframer<B> {
    buf: B,
    len: usize,
    /// Skipping to the next delimiter after an overflow.
    skipping: bool,
    stats: FramingStats,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Deframer<B> {
    /// A deframer accumulating into `buf`.
    pub fn new(buf: B) -> Self {
        Deframer {
            buf,
            len: 0,
            skipping: false,
            stats: FramingStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &FramingStats {
        &self.stats
    }

    /// Bytes of a partial frame held.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Forgets any partial frame (after the link was reset).
    pub fn reset(&mut self) {
        self.len = 0;
        self.skipping = false;
    }

    /// Feeds bytes. Consumes them up to and including the delimiter that ends the first good
    /// frame, and returns how many it consumed and, if a frame is complete, its length: the
    /// batch is then [`frame`](Self::frame)`(len)` until the next `push`. Feed the rest of the
    /// input (`&bytes[used..]`) after handling the frame. Bad frames are counted and skipped.
    pub fn push(&mut self, bytes: &[u8]) -> (usize, Option<usize>) {
        for (i, &b) in bytes.iter().enumerate() {
            if b != DELIMITER {
                if self.skipping {
                    continue;
                }
                match self.buf.as_mut().get_mut(self.len) {
                    Some(slot) => {
                        *slot = b;
                        self.len += 1;
                    }
                    None => {
                        self.stats.overflows = self.stats.overflows.wrapping_add(1);
                        self.skipping = true;
                        self.len = 0;
                    }
                }
                continue;
            }
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.len == 0 {
                continue;
            }
            let len = core::mem::take(&mut self.len);
            if let Some(n) = self.decode(len) {
                self.stats.frames = self.stats.frames.wrapping_add(1);
                return (i + 1, Some(n));
            }
        }
        (bytes.len(), None)
    }

    /// Decodes the `len` encoded bytes held; the batch length if COBS and CRC are good.
    fn decode(&mut self, len: usize) -> Option<usize> {
        let Some(n) = self
            .buf
            .as_mut()
            .get_mut(..len)
            .and_then(cobs_decode_in_place)
            .filter(|n| *n >= CRC_LEN)
        else {
            self.stats.cobs_errors = self.stats.cobs_errors.wrapping_add(1);
            return None;
        };
        let body = n - CRC_LEN;
        let buf = self.buf.as_ref();
        let ok = match (buf.get(..body), buf.get(body..n)) {
            (Some(batch), Some(crc)) => crc == crc32(batch).to_le_bytes(),
            _ => false,
        };
        if !ok {
            self.stats.crc_errors = self.stats.crc_errors.wrapping_add(1);
            return None;
        }
        Some(body)
    }

    /// Takes a whole batch that arrived unframed (one datagram: the datagram link delimits and
    /// checks it), in place of any partial frame; its length for [`frame`](Self::frame), or
    /// `None` (counted as an overflow) if it is longer than the buffer.
    pub fn load(&mut self, batch: &[u8]) -> Option<usize> {
        self.reset();
        match self.buf.as_mut().get_mut(..batch.len()) {
            Some(dst) => {
                dst.copy_from_slice(batch);
                self.stats.frames = self.stats.frames.wrapping_add(1);
                Some(batch.len())
            }
            None => {
                self.stats.overflows = self.stats.overflows.wrapping_add(1);
                None
            }
        }
    }

    /// The batch of the frame `push` (or `load`) just returned (`len` as it returned it).
    pub fn frame(&self, len: usize) -> &[u8] {
        self.buf.as_ref().get(..len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn a_datagram_is_loaded_whole_in_place_of_a_partial_frame() {
        let mut de = Deframer::new([0u8; 8]);
        assert_eq!(de.push(&[0x00, 0x05, 0x11]), (3, None));
        assert_eq!(de.buffered(), 2);
        assert_eq!(de.load(b"batch"), Some(5));
        assert_eq!(de.frame(5), b"batch");
        assert_eq!(de.buffered(), 0);
        assert_eq!(de.load(b"too long!"), None);
        assert_eq!((de.stats().frames, de.stats().overflows), (1, 1));
    }

    fn framed(batch: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; encoded_len(batch.len())];
        let n = encode(batch, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// Feeds `bytes` in one go, returning every frame delivered.
    fn feed<B: AsRef<[u8]> + AsMut<[u8]>>(d: &mut Deframer<B>, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while !bytes.is_empty() {
            let (used, f) = d.push(bytes);
            if let Some(n) = f {
                got.push(d.frame(n).to_vec());
            }
            bytes = &bytes[used..];
        }
        got
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn golden_bytes() {
        // 0x00 | COBS(11 22 00 33 | crc) | 0x00
        let f = framed(&[0x11, 0x22, 0x00, 0x33]);
        let crc = crc32(&[0x11, 0x22, 0x00, 0x33]).to_le_bytes();
        assert!(
            crc.iter().all(|b| *b != 0),
            "pick a batch whose CRC has no zero byte"
        );
        let mut want = std::vec![0x00, 0x03, 0x11, 0x22, 0x06, 0x33];
        want.extend_from_slice(&crc);
        want.push(0x00);
        assert_eq!(f, want);
        assert!(!f[1..f.len() - 1].contains(&0));
    }

    #[test]
    fn long_runs_without_zero_round_trip() {
        for len in [0usize, 1, 249, 250, 251, 253, 254, 255, 508, 509, 600] {
            let batch: Vec<u8> = (0..len).map(|i| (i % 255) as u8 + 1).collect();
            let f = framed(&batch);
            assert!(f.len() <= encoded_len(len), "{len}");
            let mut d = Deframer::new(std::vec![0u8; deframer_len(len)]);
            assert_eq!(feed(&mut d, &f), [batch], "{len}");
            assert_eq!(d.stats().errors(), 0);
        }
    }

    #[test]
    fn corrupted_and_oversized_frames_are_counted_then_resynced() {
        let good = framed(b"good frame");
        let mut flipped = framed(b"flipped");
        flipped[4] ^= 0x10;
        let mut d = Deframer::new([0u8; 32]);
        let mut stream = Vec::new();
        stream.extend_from_slice(&flipped);
        stream.extend_from_slice(&[0x55; 100]); // longer than the buffer: overflow
        stream.extend_from_slice(&good);
        stream.extend_from_slice(&[0x02, 0x07, 0x00]); // too short for a CRC
        stream.extend_from_slice(&[0x05, 0x01, 0x00]); // COBS says 4 bytes follow, 1 does
        stream.extend_from_slice(&good);
        let got = feed(&mut d, &stream);
        assert_eq!(got, [b"good frame".to_vec(), b"good frame".to_vec()]);
        let s = d.stats();
        assert_eq!(
            (s.frames, s.crc_errors, s.overflows, s.cobs_errors),
            (2, 1, 1, 2)
        );
    }

    #[test]
    fn byte_at_a_time_is_the_same() {
        let f = framed(b"one byte at a time");
        let mut d = Deframer::new([0u8; 64]);
        let mut got = Vec::new();
        for b in &f {
            let (used, frame) = d.push(core::slice::from_ref(b));
            assert_eq!(used, 1);
            if let Some(n) = frame {
                got.push(d.frame(n).to_vec());
            }
        }
        assert_eq!(got, [b"one byte at a time".to_vec()]);
    }

    #[test]
    fn encode_refuses_a_small_buffer() {
        let mut out = [0u8; 8];
        assert_eq!(
            encode(b"too long here", &mut out),
            Err(EncodeError::BufferTooSmall)
        );
    }

    proptest! {
        #[test]
        fn frames_round_trip(batches in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..6)) {
            let mut stream = Vec::new();
            for b in &batches {
                stream.extend_from_slice(&framed(b));
            }
            let mut d = Deframer::new(std::vec![0u8; deframer_len(600)]);
            let got = feed(&mut d, &stream);
            // An empty batch still has a CRC, so it is a frame too.
            prop_assert_eq!(got, batches);
            prop_assert_eq!(d.stats().errors(), 0);
        }

        /// Arbitrary bytes never panic, every byte is consumed, and a good frame after the
        /// garbage is always delivered (resync at the next delimiter).
        #[test]
        fn garbage_never_panics_and_resyncs(
            garbage in proptest::collection::vec(any::<u8>(), 0..2000),
            cap in deframer_len(13)..300,
        ) {
            let mut d = Deframer::new(std::vec![0u8; cap]);
            let _ = feed(&mut d, &garbage);
            let good = framed(b"after garbage");
            let got = feed(&mut d, &good);
            prop_assert_eq!(got.last().map(Vec::as_slice), Some(&b"after garbage"[..]));
        }

        /// Flipping any one bit of a frame loses at most that frame (CRC/COBS catch it) and
        /// never the next one.
        #[test]
        fn a_flipped_bit_loses_one_frame_at_most(
            batch in proptest::collection::vec(any::<u8>(), 1..200),
            bit in any::<usize>(),
        ) {
            let mut f = framed(&batch);
            let inner = f.len() - 2;
            let at = 1 + (bit / 8) % inner;
            f[at] ^= 1 << (bit % 8);
            f.extend_from_slice(&framed(b"next"));
            let mut d = Deframer::new(std::vec![0u8; deframer_len(200)]);
            let got = feed(&mut d, &f);
            prop_assert_eq!(got.last().map(Vec::as_slice), Some(&b"next"[..]));
            prop_assert!(!got.iter().any(|g| g != &batch && g.as_slice() != b"next"));
            prop_assert_eq!(got.len() as u32 + d.stats().errors() >= 2, true);
        }
    }
}
