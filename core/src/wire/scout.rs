//! Scouting: discovery messages exchanged outside links (multicast, mDNS payloads, gossip).

use super::{DecodeError, EncodeError, Field, Mode, check_len, limits, put_postcard};
use crate::id::NodeId;
use serde::{Deserialize, Serialize};

/// A discovery message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScoutMessage<'a> {
    /// "Who is there?"
    Scout {
        /// Protocol version of the sender.
        version: u8,
        /// Bit set of wanted modes: 1 peer, 2 client, 4 router.
        what: u8,
        /// The asking node, if it wants to be known.
        from: Option<NodeId>,
    },
    /// "I am here, reach me at these endpoints."
    Hello {
        /// Protocol version of the sender.
        version: u8,
        /// Who.
        node_id: NodeId,
        /// Its mode.
        mode: Mode,
        /// Endpoints separated by `,` (e.g. `quic/10.0.0.1:7447,tcp/10.0.0.1:7448`).
        locators: &'a str,
    },
}

impl<'a> ScoutMessage<'a> {
    /// Encodes the message at the start of `buf`, returning its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        put_postcard(self, buf)
    }

    /// Decodes exactly one message.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (m, rest): (Self, _) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        if let ScoutMessage::Hello { locators, .. } = &m {
            check_len(Field::Locators, locators.len(), limits::MAX_LOCATORS_LEN)?;
        }
        Ok(m)
    }

    /// The endpoints of a hello (empty for a scout).
    pub fn locators(&self) -> impl Iterator<Item = &'a str> {
        let s = match self {
            ScoutMessage::Hello { locators, .. } => *locators,
            ScoutMessage::Scout { .. } => "",
        };
        s.split(',').filter(|l| !l.is_empty())
    }
}
