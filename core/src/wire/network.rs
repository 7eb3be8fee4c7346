//! Network messages: what the mesh says, packed back to back inside frames.

use super::varint;
use super::{
    DecodeError, EncodeError, Field, RawBytes, check_len, limits, put_postcard, put_slice, tail_mut,
};
use crate::hlc::Timestamp;
use crate::keyexpr::KeyExpr;
use serde::{Deserialize, Serialize};

/// Variant tags of [`NetworkMessage`] (a varint, one byte while below 128). Append, never
/// reorder.
mod tag {
    pub const PUT: u32 = 0;
    pub const PUT_TAIL: u32 = 1;
    pub const PUSH: u32 = 2;
    pub const DECLARE: u32 = 3;
    pub const REQUEST: u32 = 4;
    pub const RESPONSE: u32 = 5;
    pub const RESPONSE_FINAL: u32 = 6;
    pub const GOSSIP: u32 = 7;
    pub const PUT_SN: u32 = 8;
    pub const PUSH_SN: u32 = 9;
    pub const DENIED: u32 = 10;
    pub const AUTH: u32 = 11;
    pub const CANCEL: u32 = 12;
    pub const LINK_STATE: u32 = 13;
    pub const ROUTED: u32 = 14;
}

/// How a message names its key: a numeric id declared earlier on this link, or in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireKey<'a> {
    /// An id declared by the sender with [`Declare::KeyExpr`].
    Id(u32),
    /// A key expression in full (canonical; validated on decode).
    Name(&'a str),
}

impl WireKey<'_> {
    fn validate(&self) -> Result<(), DecodeError> {
        if let WireKey::Name(k) = self {
            validate_key(k)?;
        }
        Ok(())
    }
}

fn validate_key(k: &str) -> Result<(), DecodeError> {
    check_len(Field::KeyExpr, k.len(), limits::MAX_KEY_LEN)?;
    KeyExpr::new(k)?;
    Ok(())
}

fn validate_encoding(e: Option<&str>) -> Result<(), DecodeError> {
    check_len(
        Field::Encoding,
        e.map_or(0, str::len),
        limits::MAX_ENCODING_LEN,
    )
}

/// Whether a sample sets or removes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SampleKind {
    /// A value was put.
    #[default]
    Put,
    /// The key was deleted.
    Delete,
}

/// The compact put: a payload on a declared key id, nothing else. The hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Put<'a> {
    /// Key id declared by the sender on this link.
    pub key_id: u32,
    /// The payload.
    pub payload: &'a [u8],
}

/// Where a sample comes from, end to end: the publisher's per-link source id (declared with
/// [`Declare::Source`], standing for a node and one of its publishers) and its sequence number
/// (per publisher, not per link: it crosses routers unchanged), so that a subscriber can tell
/// a duplicate or a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seq {
    /// Source id declared by the sender on this link.
    pub src: u32,
    /// The publisher's sequence number (wraps at 2^32).
    pub sn: u32,
}

/// A compact put with its [`Seq`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutSn<'a> {
    /// Key id declared by the sender on this link.
    pub key_id: u32,
    /// Source and sequence number.
    pub seq: Seq,
    /// The payload.
    pub payload: &'a [u8],
}

/// A push with its [`Seq`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSn<'a> {
    /// Source and sequence number.
    pub seq: Seq,
    /// The publication.
    #[serde(borrow)]
    pub push: Push<'a>,
}

/// A publication with every option: full or declared key, put or delete, timestamp, encoding,
/// attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push<'a> {
    /// The key.
    #[serde(borrow)]
    pub key: WireKey<'a>,
    /// Put or delete.
    pub kind: SampleKind,
    /// The payload (empty for deletes).
    #[serde(borrow)]
    pub payload: RawBytes<'a>,
    /// When and where the sample was made.
    pub timestamp: Option<Timestamp>,
    /// How to interpret the payload (MIME-like).
    pub encoding: Option<&'a str>,
    /// Extra user bytes.
    #[serde(borrow)]
    pub attachment: Option<RawBytes<'a>>,
}

impl Push<'_> {
    fn validate(&self) -> Result<(), DecodeError> {
        self.key.validate()?;
        validate_encoding(self.encoding)
    }
}

/// Declarations: what a node tells its neighbours about itself. Ids are chosen by the sender and
/// scoped to the link and the kind of declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Declare<'a> {
    /// Binds a numeric id to a key expression for later messages from the sender.
    KeyExpr {
        /// The id.
        id: u32,
        /// The key expression (validated on decode).
        key: &'a str,
    },
    /// Forgets a key id.
    UndeclareKeyExpr {
        /// The id.
        id: u32,
    },
    /// The sender (or someone behind it) subscribes to `key`.
    Subscriber {
        /// Declaration id.
        id: u32,
        /// What is subscribed.
        #[serde(borrow)]
        key: WireKey<'a>,
    },
    /// Withdraws a subscriber.
    UndeclareSubscriber {
        /// Declaration id.
        id: u32,
    },
    /// The sender answers queries on `key`.
    Queryable {
        /// Declaration id.
        id: u32,
        /// What is answered.
        #[serde(borrow)]
        key: WireKey<'a>,
        /// Whether it holds every key matching `key` (a complete storage).
        complete: bool,
    },
    /// Withdraws a queryable.
    UndeclareQueryable {
        /// Declaration id.
        id: u32,
    },
    /// A liveliness token exists on `key`.
    Token {
        /// Declaration id.
        id: u32,
        /// The token's key.
        #[serde(borrow)]
        key: WireKey<'a>,
    },
    /// A liveliness token disappeared.
    UndeclareToken {
        /// Declaration id.
        id: u32,
    },
    /// Asks the receiver for its declarations matching `key` (all if `None`).
    Interest {
        /// Interest id.
        id: u32,
        /// Restrict to declarations intersecting this key.
        #[serde(borrow)]
        key: Option<WireKey<'a>>,
        /// Bit set of [`interest`] flags.
        flags: u8,
    },
    /// All current declarations for an interest have been sent.
    InterestFinal {
        /// Interest id.
        id: u32,
    },
    /// Cancels an interest.
    UndeclareInterest {
        /// Interest id.
        id: u32,
    },
    /// Binds a source id, for later [`Seq`]s from the sender, to publisher `publisher` of node
    /// `node`.
    Source {
        /// The source id.
        id: u32,
        /// The publishing node.
        node: crate::id::NodeId,
        /// The publisher, numbered by its node.
        publisher: u32,
    },
    /// Between routers across the backbone: every declaration and interest the sender holds
    /// towards the receiver follows (same ids), then [`Declare::ResyncEnd`]; the receiver then
    /// drops what the sender no longer holds (a message lost with a dying link is healed, and
    /// nothing unchanged is withdrawn and declared again). `ask`: the receiver is asked to do
    /// the same towards the sender. `round` numbers the sender's resyncs (increasing): one
    /// that arrives after a newer one (it took an older, longer path while routes moved) is
    /// stale and changes nothing.
    Resync {
        /// Resync the other way too.
        ask: bool,
        /// The sender's resync number.
        round: u32,
    },
    /// The end of the [`Declare::Resync`] numbered `round`.
    ResyncEnd {
        /// The resync it ends.
        round: u32,
    },
}

/// Flags of [`Declare::Interest`].
pub mod interest {
    /// Subscribers.
    pub const SUBSCRIBERS: u8 = 1;
    /// Queryables.
    pub const QUERYABLES: u8 = 2;
    /// Liveliness tokens.
    pub const TOKENS: u8 = 4;
    /// Send the current declarations.
    pub const CURRENT: u8 = 8;
    /// Keep sending future declarations.
    pub const FUTURE: u8 = 16;
    /// Subscribers may be aggregated: while at least one of the answerer's subscribers
    /// intersects the interest's key, it may declare one subscriber on the interest's key
    /// instead of each (a publisher asks so: it only needs to know that its samples are
    /// wanted). Never applied to tokens (each is an identity); ignored without a key.
    pub const AGGREGATE: u8 = 32;
}

impl Declare<'_> {
    fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Declare::KeyExpr { key, .. } => validate_key(key),
            Declare::Subscriber { key, .. }
            | Declare::Queryable { key, .. }
            | Declare::Token { key, .. } => key.validate(),
            Declare::Interest { key: Some(key), .. } => key.validate(),
            _ => Ok(()),
        }
    }
}

/// Which queryables a query goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum QueryTarget {
    /// The nearest matching queryables (complete ones preferred).
    #[default]
    BestMatching,
    /// Every matching queryable.
    All,
    /// Every complete matching queryable.
    AllComplete,
}

/// How replies are consolidated before reaching the querier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Consolidation {
    /// Let the querier decide (latest, unless a `_time` window is asked for).
    #[default]
    Auto,
    /// Every reply.
    None,
    /// Drop replies older than one already delivered for the same key.
    Monotonic,
    /// Only the newest reply per key, delivered at the end.
    Latest,
}

/// A query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<'a> {
    /// Query id, chosen by the sender, echoed in responses.
    pub id: u32,
    /// What is asked for.
    #[serde(borrow)]
    pub key: WireKey<'a>,
    /// Selector parameters (`_time=[now(-10m)..];limit=100`).
    pub parameters: &'a str,
    /// Which queryables.
    pub target: QueryTarget,
    /// Reply consolidation.
    pub consolidation: Consolidation,
    /// How long the querier waits, in milliseconds.
    pub timeout_ms: u32,
    /// Optional query payload.
    #[serde(borrow)]
    pub payload: Option<RawBytes<'a>>,
    /// Encoding of the payload.
    pub encoding: Option<&'a str>,
    /// Extra user bytes.
    #[serde(borrow)]
    pub attachment: Option<RawBytes<'a>>,
}

/// The body of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody<'a> {
    /// A sample (put or delete).
    #[serde(borrow)]
    Sample(Push<'a>),
    /// An error from the queryable.
    Err {
        /// Error payload.
        #[serde(borrow)]
        payload: RawBytes<'a>,
        /// Its encoding.
        encoding: Option<&'a str>,
    },
}

/// One reply to a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<'a> {
    /// The query answered.
    pub request_id: u32,
    /// The reply.
    #[serde(borrow)]
    pub body: ReplyBody<'a>,
}

/// No more replies will come from this neighbour for the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFinal {
    /// The query.
    pub request_id: u32,
}

/// A network message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMessage<'a> {
    /// Compact put on a declared key id.
    Put(Put<'a>),
    /// Put or delete with options.
    Push(Push<'a>),
    /// A declaration.
    Declare(Declare<'a>),
    /// A query.
    Request(Request<'a>),
    /// A reply.
    Response(Response<'a>),
    /// End of replies.
    ResponseFinal(ResponseFinal),
    /// Where a node can be reached, told to neighbours so they can dial it.
    Gossip(Gossip<'a>),
    /// A compact put with a source and sequence number.
    PutSn(PutSn<'a>),
    /// A push with a source and sequence number.
    PushSn(PushSn<'a>),
    /// An access-control refusal.
    Denied(Denied<'a>),
    /// The dialer's credential, first message on an encrypted link.
    Auth(Auth<'a>),
    /// The querier no longer wants replies to a request.
    Cancel(Cancel),
    /// A router's link-state advertisement (between routers only).
    LinkState(LinkState<'a>),
    /// A message routed across the router backbone (between routers only).
    Routed(Routed<'a>),
}

/// The operation an access-control decision was about (see [`Denied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AclOp {
    /// Publish a sample.
    Put,
    /// Publish a deletion.
    Delete,
    /// Declare a subscriber.
    Sub,
    /// Send a query.
    Query,
    /// Declare a queryable.
    Queryable,
    /// Reply to a query.
    Reply,
    /// Declare a liveliness token.
    Token,
    /// Subscribe to liveliness tokens.
    TokenSub,
    /// Use the admin space.
    Admin,
}

/// "What you sent was refused by my access control": sent by the enforcing node to the neighbour
/// whose declaration, interest or publication it refused, so that denials are never silent.
/// Publications are noticed at most once per (key, operation) per interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied<'a> {
    /// The operation refused.
    pub op: AclOp,
    /// The key expression it was on (capped like every key).
    pub key: &'a str,
    /// The principal the enforcing node saw.
    pub principal: &'a str,
    /// The rule that decided (`default` when none matched).
    pub rule: &'a str,
}

/// "Stop answering my request `request_id`": the querier dropped its replies (or timed out).
/// Passed on along the request's path, so queryables stop producing replies nobody reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request, as the sender numbered it on this link.
    pub request_id: u32,
}

/// The largest pre-shared token accepted in an [`Auth`], in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// The session dialer's pre-shared token (empty: none), sent first on encrypted links (QUIC,
/// TLS over TCP) only, so the listener knows who it talks to before anything else is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth<'a> {
    /// The token (at most [`MAX_TOKEN_LEN`] bytes).
    #[serde(borrow)]
    pub token: RawBytes<'a>,
}

/// "Node `node_id` listens on these endpoints": sent by a node about itself when a link opens,
/// and relayed to its other neighbours, so that peers configured with a single endpoint still
/// form a full mesh. Unspecified hosts (`0.0.0.0`, `[::]`) stand for the address the receiver
/// sees the sender at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip<'a> {
    /// The node.
    pub node_id: crate::id::NodeId,
    /// Its mode.
    pub mode: super::Mode,
    /// Its endpoints, comma-separated (capped at [`limits::MAX_LOCATORS_LEN`] bytes).
    pub locators: &'a str,
}

/// Most neighbours one [`LinkState`] lists.
pub const MAX_LSA_LINKS: usize = 64;
/// Bytes per neighbour in [`LinkState::links`]: its node id and the cost (u32, little endian).
pub const LSA_LINK_LEN: usize = 20;
/// Longest site name, in bytes.
pub const MAX_SITE_LEN: usize = 64;

/// A router's link-state advertisement: who it is, its site, and its backbone neighbours with
/// their costs. Flooded to every router; the newest per router wins, compared on
/// (`epoch`, `seq`), so a restarted router (a later epoch) is never mistaken for a stale one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState<'a> {
    /// The advertising router.
    pub router: crate::id::NodeId,
    /// When it booted (unix ms).
    pub epoch: u64,
    /// Bumped on every change.
    pub seq: u64,
    /// Its site (at most [`MAX_SITE_LEN`] bytes; empty: none).
    pub site: &'a str,
    /// Bit 0: it faces its site's peer mesh (designated router); bit 1: it may be designated.
    pub flags: u8,
    /// Its neighbours: [`LSA_LINK_LEN`] bytes each (16-byte node id, u32 LE cost), at most
    /// [`MAX_LSA_LINKS`]. Iterate with [`LinkState::links`].
    #[serde(borrow)]
    pub links: RawBytes<'a>,
    /// Where clients can reach it (comma-separated endpoints, at most
    /// [`limits::MAX_LOCATORS_LEN`] bytes): routers tell their clients of alternates.
    pub locators: &'a str,
}

impl<'a> LinkState<'a> {
    /// The neighbours and costs listed.
    pub fn links(&self) -> impl Iterator<Item = (crate::id::NodeId, u32)> + 'a {
        self.links.0.chunks_exact(LSA_LINK_LEN).filter_map(|c| {
            let (id, rest) = c.split_first_chunk::<16>()?;
            let cost: [u8; 4] = rest.try_into().ok()?;
            Some((crate::id::NodeId(*id), u32::from_le_bytes(cost)))
        })
    }

    /// Writes `links` in the [`LinkState::links`] layout into `buf`, returning the bytes used.
    pub fn write_links(
        links: impl IntoIterator<Item = (crate::id::NodeId, u32)>,
        buf: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let mut n = 0;
        for (id, cost) in links {
            let slot = buf
                .get_mut(n..n + LSA_LINK_LEN)
                .ok_or(EncodeError::BufferTooSmall)?;
            let (a, b) = slot.split_at_mut(16);
            a.copy_from_slice(&id.0);
            b.copy_from_slice(&cost.to_le_bytes());
            n += LSA_LINK_LEN;
        }
        Ok(n)
    }
}

/// A message travelling across the backbone from router `src` to router `dst`: each router on
/// the way sends it to its next hop towards `dst` (from its own link-state routes) and
/// decrements `hops`; at 0 it is dropped and counted, so a loop while routers disagree is
/// bounded. `body` is one network message in its stateless form (keys by name, no ids bound on
/// any link); a `PushSn` body names its publisher by `origin` (the publishing node) and
/// `seq.src` (the publisher's id on that node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed<'a> {
    /// The router that put it on the backbone.
    pub src: crate::id::NodeId,
    /// The router it is for.
    pub dst: crate::id::NodeId,
    /// Hops left.
    pub hops: u8,
    /// The publishing node of a `PushSn` body.
    pub origin: Option<crate::id::NodeId>,
    /// The message.
    #[serde(borrow)]
    pub body: RawBytes<'a>,
}

impl<'a> NetworkMessage<'a> {
    /// True for messages that carry the application's traffic — samples (`Put`, `PutSn`,
    /// `Push`, `PushSn`), queries and replies (`Request`, `Response`), and a `Routed` message
    /// carrying one of those — false for the mesh's own control traffic (declarations,
    /// interests, finals, gossip, link state, denials, auth, cancels).
    pub fn is_data(&self) -> bool {
        match self {
            NetworkMessage::Put(_)
            | NetworkMessage::PutSn(_)
            | NetworkMessage::Push(_)
            | NetworkMessage::PushSn(_)
            | NetworkMessage::Request(_)
            | NetworkMessage::Response(_) => true,
            // The body's tag is its first byte (every tag is below 128).
            NetworkMessage::Routed(r) => r.body.0.first().is_some_and(|t| {
                matches!(
                    u32::from(*t),
                    tag::PUT
                        | tag::PUT_TAIL
                        | tag::PUSH
                        | tag::PUT_SN
                        | tag::PUSH_SN
                        | tag::REQUEST
                        | tag::RESPONSE
                )
            }),
            _ => false,
        }
    }

    /// Encodes the message at the start of `buf`, returning its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_inner(buf, false)
    }

    /// Encodes the message as the **last** one of a frame: a compact put then omits its length
    /// (its payload runs to the end of the frame). Other messages encode as with [`encode`].
    ///
    /// [`encode`]: NetworkMessage::encode
    pub fn encode_last(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_inner(buf, true)
    }

    fn encode_inner(&self, buf: &mut [u8], last: bool) -> Result<usize, EncodeError> {
        match self {
            NetworkMessage::Put(p) => {
                if last {
                    let pos = varint::put_u32(buf, 0, tag::PUT_TAIL)?;
                    let pos = varint::put_u32(buf, pos, p.key_id)?;
                    put_slice(buf, pos, p.payload)
                } else {
                    let pos = encode_put_prefix(buf, p.key_id, p.payload.len())?;
                    put_slice(buf, pos, p.payload)
                }
            }
            NetworkMessage::Push(m) => Self::tagged(buf, tag::PUSH, m),
            NetworkMessage::Declare(m) => Self::tagged(buf, tag::DECLARE, m),
            NetworkMessage::Request(m) => Self::tagged(buf, tag::REQUEST, m),
            NetworkMessage::Response(m) => Self::tagged(buf, tag::RESPONSE, m),
            NetworkMessage::ResponseFinal(m) => Self::tagged(buf, tag::RESPONSE_FINAL, m),
            NetworkMessage::Gossip(m) => Self::tagged(buf, tag::GOSSIP, m),
            NetworkMessage::PutSn(p) => {
                let pos = encode_put_sn_prefix(buf, p.key_id, p.seq, p.payload.len())?;
                put_slice(buf, pos, p.payload)
            }
            NetworkMessage::PushSn(m) => Self::tagged(buf, tag::PUSH_SN, m),
            NetworkMessage::Denied(m) => Self::tagged(buf, tag::DENIED, m),
            NetworkMessage::Auth(m) => Self::tagged(buf, tag::AUTH, m),
            NetworkMessage::Cancel(m) => Self::tagged(buf, tag::CANCEL, m),
            NetworkMessage::LinkState(m) => Self::tagged(buf, tag::LINK_STATE, m),
            NetworkMessage::Routed(m) => Self::tagged(buf, tag::ROUTED, m),
        }
    }

    fn tagged<T: Serialize>(buf: &mut [u8], t: u32, body: &T) -> Result<usize, EncodeError> {
        let pos = varint::put_u32(buf, 0, t)?;
        Ok(pos + put_postcard(body, tail_mut(buf, pos)?)?)
    }

    /// Decodes the first message of `bytes`, returning it and the remaining bytes.
    pub fn take(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        let (t, body) = varint::take_u32(bytes)?;
        match t {
            tag::PUT => {
                let (key_id, rest) = varint::take_u32(body)?;
                let (len, rest) = varint::take_u32(rest)?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
                if rest.len() < len {
                    return Err(DecodeError::Truncated);
                }
                let (payload, rest) = rest.split_at(len);
                Ok((NetworkMessage::Put(Put { key_id, payload }), rest))
            }
            tag::PUT_TAIL => {
                let (key_id, payload) = varint::take_u32(body)?;
                Ok((NetworkMessage::Put(Put { key_id, payload }), &[]))
            }
            tag::PUSH => {
                let (m, rest): (Push<'a>, _) = postcard::take_from_bytes(body)?;
                m.validate()?;
                Ok((NetworkMessage::Push(m), rest))
            }
            tag::DECLARE => {
                let (m, rest): (Declare<'a>, _) = postcard::take_from_bytes(body)?;
                m.validate()?;
                Ok((NetworkMessage::Declare(m), rest))
            }
            tag::REQUEST => {
                let (m, rest): (Request<'a>, _) = postcard::take_from_bytes(body)?;
                m.key.validate()?;
                check_len(
                    Field::Parameters,
                    m.parameters.len(),
                    limits::MAX_PARAMS_LEN,
                )?;
                validate_encoding(m.encoding)?;
                Ok((NetworkMessage::Request(m), rest))
            }
            tag::RESPONSE => {
                let (m, rest): (Response<'a>, _) = postcard::take_from_bytes(body)?;
                match &m.body {
                    ReplyBody::Sample(p) => p.validate()?,
                    ReplyBody::Err { encoding, .. } => validate_encoding(*encoding)?,
                }
                Ok((NetworkMessage::Response(m), rest))
            }
            tag::RESPONSE_FINAL => {
                let (m, rest) = postcard::take_from_bytes(body)?;
                Ok((NetworkMessage::ResponseFinal(m), rest))
            }
            tag::GOSSIP => {
                let (m, rest): (Gossip<'a>, _) = postcard::take_from_bytes(body)?;
                check_len(Field::Locators, m.locators.len(), limits::MAX_LOCATORS_LEN)?;
                Ok((NetworkMessage::Gossip(m), rest))
            }
            tag::PUT_SN => {
                let (key_id, rest) = varint::take_u32(body)?;
                let (src, rest) = varint::take_u32(rest)?;
                let (sn, rest) = varint::take_u32(rest)?;
                let (len, rest) = varint::take_u32(rest)?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
                if rest.len() < len {
                    return Err(DecodeError::Truncated);
                }
                let (payload, rest) = rest.split_at(len);
                Ok((
                    NetworkMessage::PutSn(PutSn {
                        key_id,
                        seq: Seq { src, sn },
                        payload,
                    }),
                    rest,
                ))
            }
            tag::PUSH_SN => {
                let (m, rest): (PushSn<'a>, _) = postcard::take_from_bytes(body)?;
                m.push.validate()?;
                Ok((NetworkMessage::PushSn(m), rest))
            }
            tag::DENIED => {
                let (m, rest): (Denied<'a>, _) = postcard::take_from_bytes(body)?;
                validate_key(m.key)?;
                check_len(Field::Detail, m.principal.len(), limits::MAX_DETAIL_LEN)?;
                check_len(Field::Detail, m.rule.len(), limits::MAX_DETAIL_LEN)?;
                Ok((NetworkMessage::Denied(m), rest))
            }
            tag::AUTH => {
                let (m, rest): (Auth<'a>, _) = postcard::take_from_bytes(body)?;
                check_len(Field::Detail, m.token.0.len(), MAX_TOKEN_LEN)?;
                Ok((NetworkMessage::Auth(m), rest))
            }
            tag::CANCEL => {
                let (m, rest): (Cancel, _) = postcard::take_from_bytes(body)?;
                Ok((NetworkMessage::Cancel(m), rest))
            }
            tag::LINK_STATE => {
                let (m, rest): (LinkState<'a>, _) = postcard::take_from_bytes(body)?;
                check_len(Field::Detail, m.site.len(), MAX_SITE_LEN)?;
                check_len(Field::Detail, m.links.0.len(), MAX_LSA_LINKS * LSA_LINK_LEN)?;
                if m.links.0.len() % LSA_LINK_LEN != 0 {
                    return Err(DecodeError::Truncated);
                }
                check_len(Field::Locators, m.locators.len(), limits::MAX_LOCATORS_LEN)?;
                Ok((NetworkMessage::LinkState(m), rest))
            }
            tag::ROUTED => {
                let (m, rest): (Routed<'a>, _) = postcard::take_from_bytes(body)?;
                Ok((NetworkMessage::Routed(m), rest))
            }
            other => Err(DecodeError::UnknownTag(other)),
        }
    }

    /// Decodes a buffer holding exactly one message.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (m, rest) = Self::take(bytes)?;
        if rest.is_empty() {
            Ok(m)
        } else {
            Err(DecodeError::TrailingBytes(rest.len()))
        }
    }
}

/// Writes the prefix of a compact put (tag, key id, payload length) at the start of `buf`,
/// returning its length; the payload follows. Lets a caller append the payload itself.
pub fn encode_put_prefix(buf: &mut [u8], key_id: u32, len: usize) -> Result<usize, EncodeError> {
    let len = u32::try_from(len).map_err(|_| EncodeError::BufferTooSmall)?;
    let pos = varint::put_u32(buf, 0, tag::PUT)?;
    let pos = varint::put_u32(buf, pos, key_id)?;
    varint::put_u32(buf, pos, len)
}

/// Writes the prefix of a compact put with a sequence number (tag, key id, source, sequence
/// number, length): what [`NetworkMessage::encode`] writes for a `PutSn` before its payload.
/// Returns its length (at most 25 bytes).
pub fn encode_put_sn_prefix(
    buf: &mut [u8],
    key_id: u32,
    seq: Seq,
    len: usize,
) -> Result<usize, EncodeError> {
    let len = u32::try_from(len).map_err(|_| EncodeError::BufferTooSmall)?;
    let pos = varint::put_u32(buf, 0, tag::PUT_SN)?;
    let pos = varint::put_u32(buf, pos, key_id)?;
    let pos = varint::put_u32(buf, pos, seq.src)?;
    let pos = varint::put_u32(buf, pos, seq.sn)?;
    varint::put_u32(buf, pos, len)
}

/// Rewrites, in place, an encoded message that ends its frame: a compact put drops its length
/// prefix (its payload then runs to the end of the frame). Returns the new length; any other
/// message is left as it is.
pub fn put_to_tail_form(msg: &mut [u8]) -> usize {
    let full = msg.len();
    let Ok((tag::PUT, rest)) = varint::take_u32(msg) else {
        return full;
    };
    let Ok((_, after_key)) = varint::take_u32(rest) else {
        return full;
    };
    let Ok((len, payload)) = varint::take_u32(after_key) else {
        return full;
    };
    if payload.len() != len as usize {
        return full;
    }
    let len_at = full - after_key.len();
    let payload_at = full - payload.len();
    // Tags 0 and 1 both take one byte, so the tag is rewritten in place.
    if let Some(t) = msg.first_mut() {
        *t = tag::PUT_TAIL as u8;
    }
    msg.copy_within(payload_at..full, len_at);
    full - (payload_at - len_at)
}
