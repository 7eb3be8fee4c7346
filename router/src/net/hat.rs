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
//! - **peer** and **router**: forward what comes from a client to every kind of neighbour, and
//!   what comes from a peer or a router to their clients only; never peer to peer (peers form a
//!   full mesh on a LAN and deliver directly). A path is therefore at most
//!   client → peer/router → peer/router → client: loop-free and duplicate-free by construction
//!   when the peers and routers of a site are fully meshed and each client has one upstream,
//!   with no routing protocol. A peer serves the clients attached to it exactly like a router
//!   does. Routers differ once the backbone between sites lands (link-state routes between
//!   routers, a module beside this one); until then a router is a peer that listens on a
//!   well-known port and does not join the mDNS mesh.

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
    match src {
        // What this node publishes, asks or declares goes to every neighbour.
        From::Local => true,
        From::Face(src) => match role {
            Mode::Client => false,
            Mode::Peer | Mode::Router => match src {
                FaceKind::Client => true,
                FaceKind::Peer | FaceKind::Router => dst == FaceKind::Client,
            },
        },
    }
}

/// Is a declaration made by `src` propagated to the neighbour `dst`? Exactly when a sample from
/// `dst` may be forwarded to `src`.
pub(crate) fn propagates(role: Mode, src: From, dst: FaceKind) -> bool {
    match src {
        From::Local => true,
        From::Face(src_kind) => forwards(role, From::Face(dst), src_kind),
    }
}

/// Does this node ask a neighbour of kind `dst` for declarations with interests (and wait for
/// their final marker before a declaration is "ready")? Clients push their declarations, so
/// nobody asks them; everyone else is asked.
pub(crate) fn asks(dst: FaceKind) -> bool {
    dst != FaceKind::Client
}

/// Does this node filter what it declares to `dst` by `dst`'s interests? Clients get only what
/// they asked for; peers and routers get everything visible to them (the peer wire is push).
pub(crate) fn filters_by_interest(dst: FaceKind) -> bool {
    dst == FaceKind::Client
}

/// A client that has no final interest covering a key sends its publications upstream anyway
/// (the router filters): nothing published before interests settle is lost.
pub(crate) fn sends_uncovered(role: Mode) -> bool {
    role == Mode::Client
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaceKind::*;

    #[test]
    fn clients_never_forward() {
        for src in [Peer, Client, Router] {
            for dst in [Peer, Client, Router] {
                assert!(!forwards(Mode::Client, From::Face(src), dst));
            }
            assert!(forwards(Mode::Client, From::Local, src));
        }
    }

    #[test]
    fn peers_and_routers_forward_from_clients_and_to_clients_only() {
        for r in [Mode::Peer, Mode::Router] {
            check(r);
        }
    }

    fn check(r: Mode) {
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
    }
}
