//! Node identifiers: 128 bits, drawn at random by the runtime (randomness is an argument here).

use core::fmt;
use serde::{Deserialize, Serialize};

/// A 128-bit node identifier. Displayed as 32 lowercase hex digits.
///
/// On the wire it is a plain 16-byte big-endian array (no length prefix).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

/// The error returned when parsing a [`NodeId`] from text fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The text is not exactly 32 characters long.
    Length(usize),
    /// A character is not a hexadecimal digit; the byte offset is given.
    NotHex(usize),
}

impl fmt::Display for NodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeIdError::Length(n) => {
                write!(f, "node id must be 32 hex digits, got {n} characters")
            }
            NodeIdError::NotHex(at) => write!(f, "node id has a non-hex character at byte {at}"),
        }
    }
}

impl core::error::Error for NodeIdError {}

impl NodeId {
    /// Builds an id from 128 random bits supplied by the caller.
    pub const fn from_u128(v: u128) -> Self {
        NodeId(v.to_be_bytes())
    }

    /// The id as an integer.
    pub const fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// Parses 32 hex digits.
    pub fn parse(s: &str) -> Result<Self, NodeIdError> {
        if s.len() != 32 {
            return Err(NodeIdError::Length(s.len()));
        }
        let mut v: u128 = 0;
        for (i, c) in s.bytes().enumerate() {
            let d = (c as char).to_digit(16).ok_or(NodeIdError::NotHex(i))?;
            v = (v << 4) | u128::from(d);
        }
        Ok(NodeId::from_u128(v))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn display_parse_roundtrip() {
        let id = NodeId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = id.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(NodeId::parse(&s), Ok(id));
        assert_eq!(NodeId::parse("12"), Err(NodeIdError::Length(2)));
        assert_eq!(
            NodeId::parse("0123456789abcdef001122334455667z"),
            Err(NodeIdError::NotHex(31))
        );
    }
}
