//! The access-control hook of each face (see `net::intercept`): which rule operation each
//! message is, in each direction, judged against the neighbour's principal.
//!
//! | direction | message | the neighbour needs |
//! | --- | --- | --- |
//! | ingress | sample / deletion | `put` / `delete` on the key |
//! | ingress | subscriber, queryable declaration | `sub`, `queryable` (intersecting an allow) |
//! | ingress | token | `token` on the key |
//! | ingress | interest in tokens (a liveliness subscriber) | `token_sub` |
//! | ingress | query | `query` |
//! | ingress | reply | `reply` on the reply's key |
//! | egress | sample / deletion | `sub` on the key (so wildcard subscriptions are filtered per key) |
//! | egress | subscriber declaration | `put` or `delete` intersecting it |
//! | egress | queryable declaration | `query` intersecting it |
//! | egress | token | `token_sub` on the key (liveliness never leaks, Zenoh #1562) |
//! | egress | reply | `query` on the reply's key |
//!
//! Everything else (undeclarations, finals, gossip) passes: it names nothing the neighbour
//! was not already allowed to see.
//!
//! In the admin space (keys `@/…`): queries and replies need `admin` (both directions); the
//! admin queryable's declaration is accepted from every neighbour and told only to
//! neighbours with `admin` on it.

use super::{AccessDenied, Acl, FaceRules, Op as A, Principal};
use crate::net::intercept::{Denial, Direction, Intercept, InterceptFactory, Op, Verdict};
use crate::net::{FaceId, FaceKind};
use hypha_core::id::NodeId;
use hypha_core::keyexpr::KeyExpr;
use hypha_core::wire::interest;
use std::sync::Arc;

/// Builds each face's hook from the rules.
pub(crate) struct AclFactory(pub(crate) Arc<Acl>);

impl InterceptFactory for AclFactory {
    fn build(&self, _: FaceId, _: FaceKind, _: NodeId, p: &Principal) -> Vec<Box<dyn Intercept>> {
        vec![Box::new(AclHook {
            rules: self.0.for_principal(p),
        })]
    }
}

struct AclHook {
    rules: FaceRules,
}

impl AclHook {
    fn judge(&self, op: A, key: &str) -> Verdict {
        self.judge_as(op, key, false)
    }

    /// `any`: allowed if allowed on some key of `key` (declarations told to the neighbour).
    fn judge_as(&self, op: A, key: &str, any: bool) -> Verdict {
        let Ok(k) = KeyExpr::new(key) else {
            return Verdict::Deny(Denial {
                why: "invalid key",
                acl: None,
            });
        };
        let d = if any {
            self.rules.decide_any(op, &k)
        } else {
            self.rules.decide(op, &k)
        };
        if d.allow {
            return Verdict::Pass;
        }
        Verdict::Deny(Denial {
            why: "access control",
            acl: Some(Arc::new(AccessDenied {
                op,
                key: key.to_string(),
                principal: self.rules.principal().name().to_string(),
                rule: d.rule.to_string(),
            })),
        })
    }
}

impl Intercept for AclHook {
    fn check(&mut self, dir: Direction, op: Op, key: Option<&str>) -> Verdict {
        // The admin space (`@/<node>/**`, issue 14): querying it, and the answers, are the
        // `admin` operation; every node's admin queryable is declared everywhere (refusing it
        // would only tell the neighbour about a declaration it never asked for).
        if let Some(k) = key.filter(|k| *k == "@" || k.starts_with("@/")) {
            return match (dir, op) {
                (Direction::Ingress, Op::Queryable) => Verdict::Pass,
                (Direction::Egress, Op::Queryable) => self.judge_as(A::Admin, k, true),
                (_, Op::Query | Op::Reply) => self.judge(A::Admin, k),
                _ => self.check_op(dir, op, key),
            };
        }
        self.check_op(dir, op, key)
    }
}

impl AclHook {
    fn check_op(&mut self, dir: Direction, op: Op, key: Option<&str>) -> Verdict {
        let op = match (dir, op) {
            (Direction::Ingress, Op::Put) => A::Put,
            (Direction::Ingress, Op::Delete) => A::Delete,
            (Direction::Ingress, Op::Sub) => A::Sub,
            (Direction::Ingress, Op::Queryable) => A::Queryable,
            (Direction::Ingress, Op::Token) => A::Token,
            (Direction::Ingress, Op::Interest(f)) if f & interest::TOKENS != 0 => A::TokenSub,
            (Direction::Ingress, Op::Query) => A::Query,
            (Direction::Ingress, Op::Reply) => A::Reply,
            (Direction::Egress, Op::Put | Op::Delete) => A::Sub,
            (Direction::Egress, Op::Sub) => {
                // Told only to a neighbour that may publish there.
                let key = key.unwrap_or("**");
                return match self.judge_as(A::Put, key, true) {
                    Verdict::Pass => Verdict::Pass,
                    deny => match self.judge_as(A::Delete, key, true) {
                        Verdict::Pass => Verdict::Pass,
                        _ => deny,
                    },
                };
            }
            (Direction::Egress, Op::Queryable) => {
                return self.judge_as(A::Query, key.unwrap_or("**"), true);
            }
            (Direction::Egress, Op::Token) => A::TokenSub,
            (Direction::Egress, Op::Reply) => A::Query,
            _ => return Verdict::Pass,
        };
        match key {
            Some(k) => self.judge(op, k),
            // Replies without a key are errors; an interest without a key is in everything.
            None if op == A::TokenSub => self.judge(op, "**"),
            None => Verdict::Pass,
        }
    }
}
