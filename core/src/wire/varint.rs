//! LEB128 varints, identical to postcard's encoding of unsigned integers.

use super::{DecodeError, EncodeError};

/// Bytes needed for `v`.
pub(crate) const fn len_u32(v: u32) -> usize {
    match v {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

/// Writes `v` at `buf[pos..]`, returning the new position.
pub(crate) fn put_u32(buf: &mut [u8], mut pos: usize, mut v: u32) -> Result<usize, EncodeError> {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let slot = buf.get_mut(pos).ok_or(EncodeError::BufferTooSmall)?;
        pos += 1;
        if v == 0 {
            *slot = byte;
            return Ok(pos);
        }
        *slot = byte | 0x80;
    }
}

/// Reads a u32 varint from the front of `buf`, returning it and the rest.
pub(crate) fn take_u32(buf: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let mut v: u32 = 0;
    for (i, &b) in buf.iter().enumerate().take(5) {
        let part = u32::from(b & 0x7f);
        if i == 4 && part > 0x0f {
            return Err(DecodeError::BadVarint);
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            let rest = buf.get(i + 1..).ok_or(DecodeError::Truncated)?;
            return Ok((v, rest));
        }
    }
    if buf.len() >= 5 {
        Err(DecodeError::BadVarint)
    } else {
        Err(DecodeError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postcard() {
        for v in [
            0u32,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            0x1f_ffff,
            0x20_0000,
            u32::MAX,
        ] {
            let mut a = [0u8; 8];
            let n = put_u32(&mut a, 0, v).unwrap();
            let mut bb = [0u8; 8];
            let b = postcard::to_slice(&v, &mut bb).unwrap();
            assert_eq!(&a[..n], &b[..], "{v}");
            assert_eq!(n, len_u32(v));
            assert_eq!(take_u32(&a[..n]).unwrap(), (v, &[][..]));
        }
        assert_eq!(take_u32(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(
            take_u32(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(DecodeError::BadVarint)
        );
        assert_eq!(take_u32(&[0xff; 6]), Err(DecodeError::BadVarint));
    }
}
