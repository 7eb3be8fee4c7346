//! What `Session::info` reports about each link: plain data, a leaf every layer may use (the
//! runtime fills it, the API hands it out).

use hypha_core::id::NodeId;
use hypha_core::wire::Mode;
use hypha_transports::Endpoint;

/// A neighbour and its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSummary {
    /// The neighbour's id.
    pub node: NodeId,
    /// Its mode.
    pub mode: Mode,
    /// What the link is to this node: `peer`, `client` or `router` (the neighbour's role).
    pub kind: &'static str,
    /// Its endpoint as seen from here.
    pub remote: Endpoint,
    /// Messages queued to it.
    pub sent: u64,
    /// Messages dropped for it (congestion).
    pub dropped: u64,
    /// Samples received from it.
    pub received: u64,
    /// Bytes waiting in its queues.
    pub queued_bytes: usize,
    /// Data messages written to it and not yet acknowledged (0 when the neighbour does not
    /// acknowledge): what a silent cut now would leave unconfirmed.
    pub unacknowledged: u64,
    /// Messages from it refused by this node's ingress hooks.
    pub denied_in: u64,
    /// Messages to it refused by this node's egress hooks.
    pub denied_out: u64,
    /// Subscribers, queryables and tokens it declared here.
    pub declarations: usize,
    /// Interests it keeps open here (a client asking for what it needs).
    pub interests: usize,
    /// Declarations this node made to it (its own and those it propagates).
    pub declared_to: usize,
    /// Its access-control identity (`anonymous` without a verified certificate).
    pub principal: String,
}
