//! Queries in flight: who still has to answer, and reply consolidation.

use super::Runtime;
use super::face::Face;
use crate::api::Sample;
use crate::api::query::{
    ErrorReply, Finalizer, Query, QueryError, QueryInner, Replies, Reply, Sink,
};
use crate::routing::FaceId;
use bytes::Bytes;
use hypha_core::hlc::Timestamp;
use hypha_core::id::NodeId;
use hypha_core::keyexpr::OwnedKeyExpr;
use hypha_core::wire::{Consolidation, QueryTarget, RawBytes, Request, WireKey};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a query asked, kept to re-send it if the link it went on is replaced.
#[derive(Clone)]
pub(crate) struct Asked {
    key: OwnedKeyExpr,
    parameters: String,
    target: QueryTarget,
    consolidation: Consolidation,
    timeout_ms: u32,
    payload: Option<Bytes>,
    attachment: Option<Bytes>,
}

impl Asked {
    fn request(&self, id: u32) -> Request<'_> {
        Request {
            id,
            key: WireKey::Name(self.key.as_str()),
            parameters: &self.parameters,
            target: self.target,
            consolidation: self.consolidation,
            timeout_ms: self.timeout_ms,
            payload: self.payload.as_deref().map(RawBytes),
            encoding: None,
            attachment: self.attachment.as_deref().map(RawBytes),
        }
    }
}

pub(crate) struct PendingQuery {
    asked: Asked,
    tx: mpsc::UnboundedSender<Reply>,
    key: OwnedKeyExpr,
    consolidation: Consolidation,
    local: bool,
    pub faces: HashSet<FaceId>,
    latest: HashMap<Arc<str>, Reply>,
    newest: HashMap<Arc<str>, Timestamp>,
}

/// Gives one query to local queryables; their replies go to `sink`, which is told they are all
/// done when the last copy of the query is dropped (immediately if there is none).
fn hand_out(
    queryables: Vec<(Arc<crate::api::Handler>, bool)>,
    sink: Sink,
    key: OwnedKeyExpr,
    parameters: String,
    payload: Option<Bytes>,
    attachment: Option<Bytes>,
) {
    let finalizer = Arc::new(Finalizer { sink });
    let inner = Arc::new(QueryInner {
        key,
        parameters,
        payload,
        attachment,
        finalizer,
    });
    for (h, _) in queryables {
        h.deliver_query(Query {
            inner: inner.clone(),
        });
    }
}

fn ts_of(r: &Reply) -> Option<Timestamp> {
    r.result.as_ref().ok().and_then(|s| s.timestamp)
}

impl Runtime {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PendingQuery>> {
        self.queries.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn start_query(
        self: &Arc<Self>,
        key: OwnedKeyExpr,
        parameters: String,
        target: QueryTarget,
        consolidation: Consolidation,
        timeout: Duration,
        payload: Option<Bytes>,
        attachment: Option<Bytes>,
    ) -> Result<Replies, QueryError> {
        if self.is_closed() {
            return Err(QueryError::Closed);
        }
        let qid = self.next_query.fetch_add(1, Ordering::Relaxed);
        let (mut local, mut faces) = self.tables().queryables_for(&key.as_keyexpr());
        // Only links that are up (a replaced duplicate may linger in the tables for a moment).
        faces.retain(|(f, _)| self.face(*f).is_some_and(|f| !f.is_dead()));
        match target {
            QueryTarget::All => {}
            QueryTarget::AllComplete => {
                local.retain(|(_, c)| *c);
                faces.retain(|(_, c)| *c);
            }
            QueryTarget::BestMatching => {
                if local.iter().any(|(_, c)| *c) {
                    local.retain(|(_, c)| *c);
                    faces.clear();
                } else if let Some(f) = faces.iter().find(|(_, c)| *c).copied() {
                    faces = vec![f];
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let asked = Asked {
            key: key.clone(),
            parameters: parameters.clone(),
            target,
            consolidation,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            payload: payload.clone(),
            attachment: attachment.clone(),
        };
        self.pending().insert(
            qid,
            PendingQuery {
                asked: asked.clone(),
                tx,
                key: key.clone(),
                consolidation,
                local: !local.is_empty(),
                faces: faces.iter().map(|(f, _)| *f).collect(),
                latest: HashMap::new(),
                newest: HashMap::new(),
            },
        );
        let replies = Replies {
            rt: self.clone(),
            id: qid,
            rx,
        };
        let rt = self.clone();
        self.spawn(async move {
            tokio::time::sleep(timeout).await;
            rt.finish_query(qid);
        });
        let req = asked.request(qid);
        for (fid, _) in &faces {
            let sent = match self.face(*fid) {
                Some(f) => f.send_request(&req).await,
                None => false,
            };
            if !sent {
                self.query_part_done(qid, Some(*fid));
            }
        }
        if !local.is_empty() {
            let sink = Sink::Local {
                rt: self.clone(),
                qid,
            };
            hand_out(local, sink, key, parameters, payload, attachment);
        }
        if faces.is_empty() && !self.pending().get(&qid).is_some_and(|q| q.local) {
            self.finish_query(qid);
        }
        Ok(replies)
    }

    /// A neighbour's query: our matching queryables answer; when they are all done (every
    /// `Query` copy dropped), the neighbour gets `ResponseFinal`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_request(
        self: &Arc<Self>,
        face: &Arc<Face>,
        request_id: u32,
        key: OwnedKeyExpr,
        parameters: String,
        target: QueryTarget,
        payload: Option<Bytes>,
        attachment: Option<Bytes>,
    ) {
        let (mut local, _) = self.tables().queryables_for(&key.as_keyexpr());
        if target == QueryTarget::AllComplete {
            local.retain(|(_, c)| *c);
        }
        let sink = Sink::Remote {
            face: face.clone(),
            request_id,
        };
        hand_out(local, sink, key, parameters, payload, attachment);
    }

    /// The link `old` to `node` closed while queries waited on it: if another link to the same
    /// node is up (a duplicate link was replaced), the queries are asked again there; otherwise
    /// that part of them is over.
    pub fn requery_or_done(self: &Arc<Self>, old: FaceId, node: Option<NodeId>) {
        let waiting: Vec<(u32, Asked)> = self
            .pending()
            .iter()
            .filter(|(_, q)| q.faces.contains(&old))
            .map(|(id, q)| (*id, q.asked.clone()))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let replacement = node.and_then(|n| {
            self.faces
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .find(|f| f.id != old && f.peer().map(|p| p.node_id) == Some(n) && !f.is_dead())
                .cloned()
        });
        match replacement {
            Some(face) => {
                {
                    let mut p = self.pending();
                    for (id, _) in &waiting {
                        if let Some(q) = p.get_mut(id) {
                            q.faces.remove(&old);
                            q.faces.insert(face.id);
                        }
                    }
                }
                let rt = self.clone();
                tokio::spawn(async move {
                    for (id, asked) in waiting {
                        if !face.send_request(&asked.request(id)).await {
                            rt.query_part_done(id, Some(face.id));
                        }
                    }
                });
            }
            None => {
                for (id, _) in waiting {
                    self.query_part_done(id, Some(old));
                }
            }
        }
    }

    /// One source of replies (this node's queryables, or a face) is done.
    pub fn query_part_done(&self, qid: u32, face: Option<FaceId>) {
        let done = {
            let mut p = self.pending();
            let Some(q) = p.get_mut(&qid) else { return };
            match face {
                None => q.local = false,
                Some(f) => {
                    q.faces.remove(&f);
                }
            }
            !q.local && q.faces.is_empty()
        };
        if done {
            self.finish_query(qid);
        }
    }

    /// Ends a query: latest-consolidated replies go out now, then the stream ends.
    pub fn finish_query(&self, qid: u32) {
        let Some(q) = self.pending().remove(&qid) else {
            return;
        };
        let mut latest: Vec<(Arc<str>, Reply)> = q.latest.into_iter().collect();
        latest.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, r) in latest {
            let _ = q.tx.send(r);
        }
    }

    /// The querier dropped its stream.
    pub fn cancel_query(&self, qid: u32) {
        self.pending().remove(&qid);
    }

    /// A reply arrived (from a local queryable or a neighbour). `false` if nobody waits for it.
    pub fn deliver_reply(
        &self,
        qid: u32,
        replier: Option<NodeId>,
        result: Result<Sample, ErrorReply>,
    ) -> bool {
        let mut p = self.pending();
        let Some(q) = p.get_mut(&qid) else {
            return false;
        };
        if let Ok(s) = &result {
            // Remote input: a reply outside the query is refused.
            let ok = s
                .key_expr()
                .is_some_and(|k| k.intersects(&q.key.as_keyexpr()));
            if !ok {
                tracing::debug!(key = %s.key, "reply outside the query's key expression dropped");
                return true;
            }
        }
        let reply = Reply { result, replier };
        match (q.consolidation, &reply.result) {
            (Consolidation::Latest, Ok(s)) => {
                let newer = match (q.latest.get(&s.key).and_then(ts_of), s.timestamp) {
                    (Some(old), Some(new)) => new > old,
                    _ => true,
                };
                if newer {
                    q.latest.insert(s.key.clone(), reply);
                }
                true
            }
            (Consolidation::Monotonic, Ok(s)) => {
                if let Some(ts) = s.timestamp {
                    if q.newest.get(&s.key).is_some_and(|old| *old >= ts) {
                        return true;
                    }
                    q.newest.insert(s.key.clone(), ts);
                }
                q.tx.send(reply).is_ok()
            }
            _ => q.tx.send(reply).is_ok(),
        }
    }
}
