//! One ingress and one egress hook per face: every message the node takes from a face or hands
//! to it passes [`Intercept::check`] first. Access control, downsampling and per-key counters
//! plug in here.
//!
//! The chain is built by an [`InterceptFactory`] when a face comes up (it knows the neighbour's
//! kind and id, later its authenticated principal), and dropped with the face.
//!
//! **Samples and the route cache.** Samples are the hot path: the runtime sends them along
//! cached routes without entering the node. So the verdict of an intercept on a *sample* must be
//! a function of (face, direction, key) only; the node asks the chain when it computes a route
//! and the answer is cached with the route (invalidated when the face goes). Every other message
//! (declarations, interests, queries, replies) is checked one by one.

use super::{FaceId, FaceKind};
use crate::acl::{AccessDenied, Principal};
use hypha_core::id::NodeId;
use std::sync::Arc;

/// Into the node (from the face) or out of it (to the face).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Ingress,
    Egress,
}

/// The operation a message performs, as an intercept sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A sample.
    Put,
    /// A deletion.
    Delete,
    /// A subscriber declaration.
    Sub,
    /// A queryable declaration.
    Queryable,
    /// A liveliness token.
    Token,
    /// An interest, with its [`hypha_core::wire::interest`] flags.
    Interest(u8),
    /// A query.
    Query,
    /// A reply to a query.
    Reply,
    /// Everything else (undeclarations, finals, gossip, notices).
    Control,
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Denial {
    /// A short reason, for logs and counters.
    pub(crate) why: &'static str,
    /// When access control refused it: what the refused party is told.
    pub(crate) acl: Option<Arc<AccessDenied>>,
}

/// What an intercept decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let it pass.
    Pass,
    /// Drop it (the node counts it, per face and reason).
    Deny(Denial),
}

/// One hook of a face's chain.
pub(crate) trait Intercept: Send {
    /// Judges one message. `key` is the message's key expression, if it has one.
    fn check(&mut self, dir: Direction, op: Op, key: Option<&str>) -> Verdict;
}

/// Builds the chain of a face when it comes up (and again when the rules are reloaded).
pub(crate) trait InterceptFactory: Send {
    /// The hooks for a face, in order.
    fn build(
        &self,
        face: FaceId,
        kind: FaceKind,
        node: NodeId,
        principal: &Principal,
    ) -> Vec<Box<dyn Intercept>>;
}

/// The chain of one face.
#[derive(Default)]
pub(crate) struct Chain {
    hooks: Vec<Box<dyn Intercept>>,
    /// Messages denied, in and out.
    pub(crate) denied_in: u64,
    pub(crate) denied_out: u64,
}

impl Chain {
    /// No hooks at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    pub(crate) fn new(hooks: Vec<Box<dyn Intercept>>) -> Self {
        Chain {
            hooks,
            denied_in: 0,
            denied_out: 0,
        }
    }

    /// Runs every hook; the first denial wins and is counted.
    pub(crate) fn check(&mut self, dir: Direction, op: Op, key: Option<&str>) -> Verdict {
        for h in &mut self.hooks {
            if let Verdict::Deny(d) = h.check(dir, op, key) {
                match dir {
                    Direction::Ingress => self.denied_in += 1,
                    Direction::Egress => self.denied_out += 1,
                }
                return Verdict::Deny(d);
            }
        }
        Verdict::Pass
    }

    /// True when `check` would pass (for route computation; not counted, the runtime counts
    /// samples dropped by a route's denial itself).
    pub(crate) fn admits(&mut self, dir: Direction, op: Op, key: &str) -> bool {
        self.hooks
            .iter_mut()
            .all(|h| h.check(dir, op, Some(key)) == Verdict::Pass)
    }
}

/// The factory of nodes without hooks.
pub(crate) struct NoIntercepts;

impl InterceptFactory for NoIntercepts {
    fn build(&self, _: FaceId, _: FaceKind, _: NodeId, _: &Principal) -> Vec<Box<dyn Intercept>> {
        Vec::new()
    }
}
