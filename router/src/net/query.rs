//! Queries in the node: the ones this node makes (target selection, consolidation, timeout),
//! the ones it answers with its local queryables, and the ones a router forwards. All three
//! are one [`QueryState`]: an origin (this node, or a face and its request id), the faces still
//! to answer, and whether local queryables still hold it.

use super::{
    Action, ErrorReply, FaceId, Item, LocalId, Msg, Node, QueryId, QueryParams, Reply, Request,
    Sample, Src, hat,
};
use hypha_core::hlc::Timestamp;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::time::{Duration, Instant};
use hypha_core::wire::{Consolidation, QueryTarget};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Who asked.
pub(super) enum Origin {
    /// This node's application.
    Local {
        consolidation: Consolidation,
        latest: HashMap<Arc<str>, Reply>,
        newest: HashMap<Arc<str>, Timestamp>,
    },
    /// A neighbour, under its request id.
    Face { face: FaceId, rid: u32 },
}

pub(super) struct QueryState {
    origin: Origin,
    key: OwnedKeyExpr,
    /// Faces that were asked and have not finished.
    waiting: HashSet<FaceId>,
    /// Local queryables hold it (until [`Cmd::ReplyFinal`]).
    local: bool,
    pub(super) deadline: Instant,
    /// What was asked (re-sent if the link it went on is replaced by a duplicate).
    request: Request,
}

/// Candidate queryables: local ids and faces, each with whether it is complete for the query.
type Candidates = (Vec<(LocalId, bool)>, Vec<(FaceId, bool)>);

fn ts_of(r: &Reply) -> Option<Timestamp> {
    r.result.as_ref().ok().and_then(|s| s.timestamp)
}

impl Node {
    /// Queryables matching `key`: local ids, and faces (with whether each is complete for it).
    fn queryables_for(&self, key: &OwnedKeyExpr, from: Option<FaceId>) -> Candidates {
        let k = key.as_keyexpr();
        let mut locals: Vec<(LocalId, bool)> = Vec::new();
        let mut faces: HashMap<FaceId, bool> = HashMap::new();
        for (qk, items) in self.qabls.intersecting(&k) {
            let includes = qk.includes(&k);
            for Item { src, id, complete } in items {
                let c = *complete && includes;
                match src {
                    Src::Local => locals.push((*id, c)),
                    Src::Face(g) if Some(*g) != from => {
                        let e = faces.entry(*g).or_insert(false);
                        *e |= c;
                    }
                    Src::Face(_) => {}
                }
            }
        }
        let src = match from {
            None => hat::From::Local,
            Some(f) => match self.faces.get(&f) {
                Some(ff) => hat::From::Face(self.hat_kind(ff)),
                None => hat::From::Local,
            },
        };
        // A client asks its upstream every query (it is not told of queryables).
        if from.is_none() && hat::sends_uncovered(self.role) {
            for (g, f) in &self.faces {
                if hat::asks(self.role, f.kind) {
                    faces.entry(*g).or_insert(false);
                }
            }
        }
        let mut faces: Vec<(FaceId, bool)> = faces
            .into_iter()
            .filter(|(g, _)| {
                self.faces
                    .get(g)
                    .is_some_and(|f| hat::forwards(self.role, src, self.hat_kind(f)))
            })
            .collect();
        faces.sort_unstable();
        locals.sort_unstable();
        (locals, faces)
    }

    /// Applies a query target to the candidates.
    fn select(
        target: QueryTarget,
        locals: &mut Vec<(LocalId, bool)>,
        faces: &mut Vec<(FaceId, bool)>,
    ) {
        match target {
            QueryTarget::All => {}
            QueryTarget::AllComplete => {
                locals.retain(|(_, c)| *c);
                faces.retain(|(_, c)| *c);
            }
            QueryTarget::BestMatching => {
                if locals.iter().any(|(_, c)| *c) {
                    locals.retain(|(_, c)| *c);
                    faces.clear();
                } else if let Some(f) = faces.iter().find(|(_, c)| *c).copied() {
                    *faces = vec![f];
                }
            }
        }
    }

    pub(super) fn start_query(&mut self, now: Instant, id: QueryId, p: QueryParams) {
        let request = Request {
            id,
            key: p.key.clone(),
            parameters: p.parameters.clone(),
            target: p.target,
            consolidation: p.consolidation,
            timeout_ms: u32::try_from(p.timeout.as_micros() / 1000).unwrap_or(u32::MAX),
            payload: p.payload.clone(),
            attachment: p.attachment.clone(),
        };
        let origin = Origin::Local {
            consolidation: p.consolidation,
            latest: HashMap::new(),
            newest: HashMap::new(),
        };
        self.dispatch_query(now + p.timeout, None, origin, request);
    }

    /// Sends a query to its targets and hands it to local queryables.
    fn dispatch_query(
        &mut self,
        deadline: Instant,
        from: Option<FaceId>,
        origin: Origin,
        mut request: Request,
    ) {
        let qid = match origin {
            Origin::Local { .. } => request.id,
            Origin::Face { .. } => {
                let mut q = self.next_query_id();
                while self.queries.contains_key(&q) {
                    q = self.next_query_id();
                }
                q
            }
        };
        let (mut locals, mut faces) = self.queryables_for(&request.key, from);
        Self::select(request.target, &mut locals, &mut faces);
        request.id = qid;
        let state = QueryState {
            origin,
            key: request.key.clone(),
            waiting: faces.iter().map(|(f, _)| *f).collect(),
            local: !locals.is_empty(),
            deadline,
            request: request.clone(),
        };
        self.queries.insert(qid, state);
        for (f, _) in &faces {
            self.send(*f, Msg::Request(request.clone()));
        }
        if !locals.is_empty() {
            self.push(Action::Query {
                to: locals.iter().map(|(l, _)| *l).collect(),
                query: qid,
                key: request.key.clone(),
                parameters: request.parameters.clone(),
                payload: request.payload.clone(),
                attachment: request.attachment.clone(),
            });
        }
        self.maybe_done(qid);
    }

    pub(super) fn on_request(&mut self, now: Instant, face: FaceId, r: Request) {
        let cap = self.caps.pending_queries;
        let Some(f) = self.faces.get_mut(&face) else {
            return;
        };
        if f.pending_queries >= cap {
            return self.close_for_cap(face, "cap limits.max_pending_queries exceeded");
        }
        f.pending_queries += 1;
        let timeout = Duration::from_millis(u64::from(r.timeout_ms.max(1)));
        let rid = r.id;
        self.dispatch_query(now + timeout, Some(face), Origin::Face { face, rid }, r);
    }

    pub(super) fn on_response(
        &mut self,
        face: FaceId,
        id: u32,
        result: Result<Sample, ErrorReply>,
    ) {
        if !self
            .queries
            .get(&id)
            .is_some_and(|q| q.waiting.contains(&face))
        {
            if let Some(f) = self.faces.get_mut(&face) {
                f.counters.replies_refused += 1;
            }
            return;
        }
        self.on_reply(Some(face), id, result);
    }

    /// A reply from a face (`Some`) or a local queryable (`None`).
    pub(super) fn on_reply(
        &mut self,
        from: Option<FaceId>,
        qid: QueryId,
        result: Result<Sample, ErrorReply>,
    ) {
        let replier = from.and_then(|f| self.faces.get(&f).map(|f| f.node));
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        if let Ok(s) = &result {
            // A reply outside the query's key expression is refused.
            let ok = s
                .key_expr()
                .is_some_and(|k| k.intersects(&q.key.as_keyexpr()));
            if !ok {
                tracing::debug!(key = %s.key, "reply outside the query's key expression dropped");
                if let Some(f) = from.and_then(|f| self.faces.get_mut(&f)) {
                    f.counters.replies_refused += 1;
                }
                return;
            }
        }
        match &mut q.origin {
            Origin::Face { face, rid } => {
                let (face, rid) = (*face, *rid);
                self.send(face, Msg::Response { id: rid, result });
            }
            Origin::Local {
                consolidation,
                latest,
                newest,
            } => {
                let reply = Reply { result, replier };
                match (*consolidation, &reply.result) {
                    (Consolidation::Latest, Ok(s)) => {
                        let newer = match (latest.get(&s.key).and_then(ts_of), s.timestamp) {
                            (Some(old), Some(new)) => new > old,
                            _ => true,
                        };
                        if newer {
                            latest.insert(s.key.clone(), reply);
                        }
                    }
                    (Consolidation::Monotonic, Ok(s)) => {
                        if let Some(ts) = s.timestamp {
                            if newest.get(&s.key).is_some_and(|old| *old >= ts) {
                                return;
                            }
                            newest.insert(s.key.clone(), ts);
                        }
                        self.push(Action::Reply { query: qid, reply });
                    }
                    _ => self.push(Action::Reply { query: qid, reply }),
                }
            }
        }
    }

    pub(super) fn on_response_final(&mut self, face: FaceId, id: u32) {
        if let Some(q) = self.queries.get_mut(&id) {
            q.waiting.remove(&face);
            self.maybe_done(id);
        }
    }

    pub(super) fn local_final(&mut self, qid: QueryId) {
        if let Some(q) = self.queries.get_mut(&qid) {
            q.local = false;
            self.maybe_done(qid);
        }
    }

    fn maybe_done(&mut self, qid: QueryId) {
        if self
            .queries
            .get(&qid)
            .is_some_and(|q| !q.local && q.waiting.is_empty())
        {
            self.finish(qid);
        }
    }

    /// Ends a query: latest-consolidated replies go out now, then the end.
    fn finish(&mut self, qid: QueryId) {
        let Some(q) = self.queries.remove(&qid) else {
            return;
        };
        match q.origin {
            Origin::Face { face, rid } => {
                if let Some(f) = self.faces.get_mut(&face) {
                    f.pending_queries = f.pending_queries.saturating_sub(1);
                }
                self.send(face, Msg::ResponseFinal { id: rid });
            }
            Origin::Local { latest, .. } => {
                let mut latest: Vec<(Arc<str>, Reply)> = latest.into_iter().collect();
                latest.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, reply) in latest {
                    self.push(Action::Reply { query: qid, reply });
                }
                self.push(Action::QueryDone { query: qid });
            }
        }
    }

    /// Forgets a query and tells the faces still answering it to stop (local queryables'
    /// further replies are refused: `query_alive` is false).
    pub(super) fn cancel_query(&mut self, qid: QueryId) {
        let Some(q) = self.queries.remove(&qid) else {
            return;
        };
        if let Origin::Face { face, .. } = q.origin {
            if let Some(f) = self.faces.get_mut(&face) {
                f.pending_queries = f.pending_queries.saturating_sub(1);
            }
        }
        let mut to: Vec<FaceId> = q.waiting.into_iter().collect();
        to.sort_unstable();
        for f in to {
            self.send(f, Msg::Cancel { id: qid });
        }
    }

    /// `face` cancelled its request `rid`.
    pub(super) fn on_cancel(&mut self, face: FaceId, rid: u32) {
        let found = self.queries.iter().find_map(|(qid, q)| match q.origin {
            Origin::Face { face: f, rid: r } if f == face && r == rid => Some(*qid),
            _ => None,
        });
        if let Some(qid) = found {
            self.cancel_query(qid);
        }
    }

    /// True while a query is in progress here (replies to it are still taken).
    pub(crate) fn query_alive(&self, qid: QueryId) -> bool {
        self.queries.contains_key(&qid)
    }

    /// Queries past their deadline end now.
    /// The link a query's replies leave on: its querier's face, or for a remote router the
    /// backbone link its route goes through; `None` for a local querier.
    pub(crate) fn query_link(&self, q: QueryId) -> Option<FaceId> {
        let Origin::Face { face, .. } = self.queries.get(&q)?.origin else {
            return None;
        };
        match self.faces.get(&face) {
            Some(f) if f.kind == super::FaceKind::Remote => self.next_hop_face(&f.node),
            Some(_) => Some(face),
            None => None,
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.finish(id);
        }
        self.backbone_timeout(now);
    }

    /// A face went: queries it asked are dropped; queries waiting on it move to `replacement`
    /// (a new link to the same node) or are over for that part.
    pub(super) fn queries_face_down(&mut self, face: FaceId, replacement: Option<FaceId>) {
        self.queries
            .retain(|_, q| !matches!(q.origin, Origin::Face { face: f, .. } if f == face));
        let waiting: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.waiting.contains(&face))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            let Some(q) = self.queries.get_mut(&id) else {
                continue;
            };
            q.waiting.remove(&face);
            match replacement {
                Some(r) => {
                    q.waiting.insert(r);
                    let req = q.request.clone();
                    self.send(r, Msg::Request(req));
                }
                None => self.maybe_done(id),
            }
        }
    }
}
