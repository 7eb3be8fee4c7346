//! Routing policy per role (Zenoh calls these "hats"): one static function per question, one
//! match arm per role, so the whole policy of a role reads in one place.
//!
//! The rule that everything else follows is [`forwards`]: may a message that arrived from a
//! neighbour of one kind be sent on to a neighbour of another kind? Declarations flow the other
//! way: a subscriber declared by `S` is propagated to `F` exactly when samples arriving from `F`
//! may be forwarded to `S` ([`propagates`]), so a declaration reaches every face from which a
//! matching sample could be routed to it, and no other.
//!
//! - **client**: never forwards; it only has its upstream router (or peer).
//! - **peer**: forwards what comes from a client to every kind of neighbour, and what comes
//!   from a peer or a router to its clients only; never peer to peer (peers form a full mesh on
//!   a LAN and deliver directly). A path in a site is therefore at most
//!   client → peer → peer → client: loop-free and duplicate-free by construction.
//! - **router**: as a peer towards its clients and its site's peers; towards other routers it
//!   speaks only through the backbone (`linkstate.rs`): a link to another router carries link
//!   state and routed messages, and each reachable router is a [`FaceKind::Remote`] face.
//!   What comes from a client goes everywhere; from a peer, to clients and remote routers; from
//!   a remote router, to clients and peers — never to another remote router (the ingress
//!   router sends one copy to each interested router itself, along its shortest path).
//!   Only the site's designated router relays between its site's peers and routers of other
//!   sites ([`FaceKind::RemoteRelay`]); routers of the same site reach the peers themselves,
//!   so two routers on one LAN never deliver a peer's sample twice.

use super::FaceKind;
use hypha_core::wire::Mode;

/// Where a message comes from: this node, or a neighbour of some kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum From {
    Local,
    Face(FaceKind),
}

/// May a node in `role` send a message that came from `src` to a neighbour of kind `dst`?
pub(crate) fn forwards(role: Mode, src: From, dst: FaceKind) -> bool {
    // A router's links to other routers carry no declarations or data of their own.
    if role == Mode::Router && dst == FaceKind::Router {
        return false;
    }
    match src {
        // What this node publishes, asks or declares goes to every neighbour.
        From::Local => true,
        From::Face(src) => match role {
            Mode::Client => false,
            Mode::Peer => match src {
                FaceKind::Client => true,
                _ => dst == FaceKind::Client,
            },
            Mode::Router => match src {
                FaceKind::Client => true,
                FaceKind::Peer => matches!(dst, FaceKind::Client | FaceKind::RemoteRelay),
                FaceKind::Remote => dst == FaceKind::Client,
                FaceKind::RemoteRelay => matches!(dst, FaceKind::Client | FaceKind::Peer),
                FaceKind::Router => false,
            },
        },
    }
}

/// Is a declaration made by `src` propagated to the neighbour `dst`? Exactly when a sample from
/// `dst` may be forwarded to `src`.
pub(crate) fn propagates(role: Mode, src: From, dst: FaceKind) -> bool {
    match src {
        From::Local => forwards(role, From::Local, dst),
        From::Face(src_kind) => forwards(role, From::Face(dst), src_kind),
    }
}

/// Does this node ask a neighbour of kind `dst` for declarations with interests (and wait for
/// their final marker before a declaration is "ready")? Clients push their declarations, so
/// nobody asks them; a router's backbone links carry no declarations; everyone else is asked.
pub(crate) fn asks(role: Mode, dst: FaceKind) -> bool {
    dst != FaceKind::Client && !(role == Mode::Router && dst == FaceKind::Router)
}

/// Does this node filter what it declares to `dst` by `dst`'s interests? Clients and remote
/// routers get only what they asked for (interest on demand: a subscription nobody elsewhere
/// publishes to never crosses the backbone); peers get everything visible to them (the peer
/// wire is push).
pub(crate) fn filters_by_interest(dst: FaceKind) -> bool {
    matches!(
        dst,
        FaceKind::Client | FaceKind::Remote | FaceKind::RemoteRelay
    )
}

/// A client that has no final interest covering a key sends its publications upstream anyway
/// (the router filters): nothing published before interests settle is lost.
pub(crate) fn sends_uncovered(role: Mode) -> bool {
    role == Mode::Client
}

/// A router likewise sends a sample that no settled interest of its own covers (a one-shot
/// put: no publisher declared its key ahead) to every remote router allowed to receive it,
/// and the far router filters: interest on demand prunes declared publishers' traffic, and an
/// undeclared put is never lost for want of an interest.
pub(crate) fn sends_uncovered_to_remotes(role: Mode) -> bool {
    role == Mode::Router
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaceKind::*;

    #[test]
    fn clients_never_forward() {
        for src in [Peer, Client, Router, Remote, RemoteRelay] {
            for dst in [Peer, Client, Router, Remote, RemoteRelay] {
                assert!(!forwards(Mode::Client, From::Face(src), dst));
            }
            assert!(forwards(Mode::Client, From::Local, src));
        }
    }

    #[test]
    fn peers_forward_from_clients_and_to_clients_only() {
        let r = Mode::Peer;
        assert!(forwards(r, From::Face(Client), Client));
        assert!(forwards(r, From::Face(Client), Peer));
        assert!(forwards(r, From::Face(Client), Router));
        assert!(forwards(r, From::Face(Peer), Client));
        assert!(forwards(r, From::Face(Router), Client));
        assert!(!forwards(r, From::Face(Peer), Peer));
        assert!(!forwards(r, From::Face(Peer), Router));
        assert!(!forwards(r, From::Face(Router), Router));
        assert!(!forwards(r, From::Face(Router), Peer));
        // A peer's subscriber is told to clients only; a client's to everyone.
        assert!(propagates(r, From::Face(Peer), Client));
        assert!(!propagates(r, From::Face(Peer), Peer));
        assert!(propagates(r, From::Face(Client), Peer));
        assert!(propagates(r, From::Face(Client), Router));
        assert!(asks(r, Router) && asks(r, Peer) && !asks(r, Client));
    }

    #[test]
    fn routers_reach_other_routers_through_the_backbone_only() {
        let r = Mode::Router;
        // Backbone links carry nothing of their own, whatever its source.
        for src in [
            From::Local,
            From::Face(Client),
            From::Face(Peer),
            From::Face(Remote),
        ] {
            assert!(!forwards(r, src, Router));
        }
        assert!(!asks(r, Router) && asks(r, Remote) && asks(r, Peer));
        // Clients reach everyone; peers reach clients and remote routers; remote routers reach
        // clients and peers, never another remote router (the ingress sends to each).
        for d in [Client, Peer, Remote, RemoteRelay] {
            assert!(forwards(r, From::Face(Client), d));
            assert!(forwards(r, From::Local, d));
        }
        // Peers are relayed to and from routers of other sites by the designated router only.
        assert!(forwards(r, From::Face(Peer), RemoteRelay));
        assert!(!forwards(r, From::Face(Peer), Remote));
        assert!(!forwards(r, From::Face(Peer), Peer));
        assert!(forwards(r, From::Face(RemoteRelay), Peer));
        assert!(!forwards(r, From::Face(Remote), Peer));
        assert!(forwards(r, From::Face(Remote), Client));
        assert!(!forwards(r, From::Face(Remote), Remote));
        assert!(!forwards(r, From::Face(RemoteRelay), Remote));
        // So a remote router hears of a client's subscriber (if it asked), of a peer's only
        // through the relay, and a client (or, relayed, a peer) of a remote router's.
        assert!(propagates(r, From::Face(Client), Remote));
        assert!(propagates(r, From::Face(Peer), RemoteRelay));
        assert!(!propagates(r, From::Face(Peer), Remote));
        assert!(propagates(r, From::Face(Remote), Client));
        assert!(propagates(r, From::Face(RemoteRelay), Peer));
        assert!(!propagates(r, From::Face(Remote), Peer));
        assert!(!propagates(r, From::Face(Remote), Remote));
        assert!(filters_by_interest(Remote) && filters_by_interest(Client));
        assert!(!filters_by_interest(Peer));
    }
}
