//! Queries: `get` and queryables.
//!
//! A `get` goes to the matching queryables (here and on neighbours, per its target); their
//! replies arrive on a [`Replies`] stream that ends when every queryable has answered or the
//! timeout passes. Dropping the stream cancels the query. Replies are consolidated per the
//! query's mode: all of them, monotonic per key, or only the latest per key (delivered at the
//! end). A queryable receives [`Query`] objects and answers with `reply`, `reply_delete`,
//! `reply_err`; when every copy of a `Query` is dropped, the querier is told this queryable is
//! done.

use super::{DeclareError, Delivery, Handler, Sample, keyexpr};
use crate::net::{Cmd, LocalId, QueryParams};
use crate::runtime::{IncomingQuery, Runtime};
use bytes::Bytes;
use hypha_core::hlc::Timestamp;
use hypha_core::keyexpr::{KeyExpr, KeyExprError, OwnedKeyExpr};
use hypha_core::wire::SampleKind;
pub use hypha_core::wire::{Consolidation, QueryTarget};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why a query could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The selector's key expression is invalid.
    #[error("invalid selector: {0}")]
    KeyExpr(#[from] KeyExprError),
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// The selector's key expression is longer than `limits.max_key_len` (neighbours would
    /// close the link).
    #[error("key expression of {len} bytes is longer than limits.max_key_len ({limit} bytes)")]
    KeyTooLong {
        /// The key expression's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why a reply was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply's key does not intersect the query's key expression.
    #[error("reply key {key} does not match the query {query}")]
    KeyMismatch {
        /// The reply key.
        key: String,
        /// The query's key expression.
        query: String,
    },
    /// The reply key is not a valid key expression.
    #[error("invalid reply key: {0}")]
    KeyExpr(#[from] KeyExprError),
    /// The querier is gone (link closed, or it stopped listening).
    #[error("the querier is gone")]
    Gone,
    /// The reply key is longer than `limits.max_key_len` (neighbours would close the link).
    #[error("reply key of {len} bytes is longer than limits.max_key_len ({limit} bytes)")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

pub use crate::sample::{ErrorReply, Reply};

/// Splits `key?params` into a key expression and parameters.
pub fn parse_selector(selector: &str) -> Result<(OwnedKeyExpr, String), KeyExprError> {
    let (k, p) = selector.split_once('?').unwrap_or((selector, ""));
    Ok((keyexpr(k)?, p.to_string()))
}

/// The value of parameter `name` in `a=b;c=d` (also accepts `&` as separator).
pub fn parameter<'a>(parameters: &'a str, name: &str) -> Option<&'a str> {
    parameters
        .split([';', '&'])
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Builds a `get`.
pub struct GetBuilder {
    rt: Arc<Runtime>,
    selector: Result<(OwnedKeyExpr, String), KeyExprError>,
    target: QueryTarget,
    consolidation: Consolidation,
    timeout: Duration,
    payload: Option<Bytes>,
    attachment: Option<Bytes>,
}

impl GetBuilder {
    pub(crate) fn new(rt: Arc<Runtime>, selector: &str) -> Self {
        GetBuilder {
            rt,
            selector: parse_selector(selector),
            target: QueryTarget::BestMatching,
            consolidation: Consolidation::Auto,
            timeout: Duration::from_secs(10),
            payload: None,
            attachment: None,
        }
    }

    /// Which queryables: best matching (default), all, or all complete.
    pub fn target(mut self, t: QueryTarget) -> Self {
        self.target = t;
        self
    }

    /// Reply consolidation (default: latest per key, or none for `_time` queries).
    pub fn consolidation(mut self, c: Consolidation) -> Self {
        self.consolidation = c;
        self
    }

    /// How long to wait for replies (default 10 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// A payload sent with the query.
    pub fn payload(mut self, p: impl Into<Bytes>) -> Self {
        self.payload = Some(p.into());
        self
    }

    /// An attachment sent with the query.
    pub fn attachment(mut self, a: impl Into<Bytes>) -> Self {
        self.attachment = Some(a.into());
        self
    }

    /// Sends the query.
    pub async fn send(self) -> Result<Replies, QueryError> {
        let (key, parameters) = self.selector?;
        if let Some((len, limit)) = super::too_long(&self.rt, key.as_str()) {
            return Err(QueryError::KeyTooLong { len, limit });
        }
        let consolidation = match self.consolidation {
            Consolidation::Auto if parameter(&parameters, "_time").is_some() => Consolidation::None,
            Consolidation::Auto => Consolidation::Latest,
            c => c,
        };
        if self.rt.is_closed() {
            return Err(QueryError::Closed);
        }
        let (id, rx) = self.rt.start_query(QueryParams {
            key,
            parameters: Arc::from(parameters),
            target: self.target,
            consolidation,
            timeout: self.timeout.into(),
            payload: self.payload,
            attachment: self.attachment,
        });
        Ok(Replies {
            rt: self.rt,
            id,
            rx,
        })
    }
}

/// The replies of a `get`. Ends when every queryable has answered or the timeout passed.
/// Dropping it cancels the query.
pub struct Replies {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) id: u32,
    pub(crate) rx: mpsc::UnboundedReceiver<Reply>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replies({})", self.id)
    }
}

impl Replies {
    /// The next reply; `None` when the query is over.
    pub async fn recv(&mut self) -> Option<Reply> {
        self.rx.recv().await
    }

    /// Every remaining reply.
    pub async fn collect(mut self) -> Vec<Reply> {
        let mut v = Vec::new();
        while let Some(r) = self.recv().await {
            v.push(r);
        }
        v
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.rt.cancel_query(self.id);
    }
}

pub(crate) struct QueryInner {
    pub key: OwnedKeyExpr,
    pub parameters: Arc<str>,
    pub payload: Option<Bytes>,
    pub attachment: Option<Bytes>,
    /// Replies go through it; when the last copy drops, the querier is told this node's
    /// queryables are done.
    pub responder: Arc<crate::runtime::Responder>,
}

/// A query received by a queryable. Cheap to clone; the querier learns this queryable is done
/// when every copy is dropped.
#[derive(Clone)]
pub struct Query {
    pub(crate) inner: Arc<QueryInner>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query({})", self.selector())
    }
}

impl Query {
    pub(crate) fn from_incoming(q: IncomingQuery) -> Self {
        Query {
            inner: Arc::new(QueryInner {
                key: q.key,
                parameters: q.parameters,
                payload: q.payload,
                attachment: q.attachment,
                responder: q.responder,
            }),
        }
    }

    /// The queried key expression.
    pub fn key_expr(&self) -> KeyExpr<'_> {
        self.inner.key.as_keyexpr()
    }

    /// The selector parameters (after `?`).
    pub fn parameters(&self) -> &str {
        &self.inner.parameters
    }

    /// One parameter's value.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        parameter(&self.inner.parameters, name)
    }

    /// The whole selector.
    pub fn selector(&self) -> String {
        if self.inner.parameters.is_empty() {
            self.inner.key.to_string()
        } else {
            format!("{}?{}", self.inner.key, self.inner.parameters)
        }
    }

    /// The query's payload.
    pub fn payload(&self) -> Option<&Bytes> {
        self.inner.payload.as_ref()
    }

    /// The query's attachment.
    pub fn attachment(&self) -> Option<&Bytes> {
        self.inner.attachment.as_ref()
    }

    fn check(&self, key: &str) -> Result<OwnedKeyExpr, ReplyError> {
        let k = keyexpr(key)?;
        if let Some((len, limit)) = super::too_long(self.inner.responder.runtime(), k.as_str()) {
            return Err(ReplyError::KeyTooLong { len, limit });
        }
        if !k.as_keyexpr().intersects(&self.key_expr()) {
            return Err(ReplyError::KeyMismatch {
                key: k.into_string(),
                query: self.inner.key.to_string(),
            });
        }
        Ok(k)
    }

    /// Replies with a value on `key` (which must intersect the query).
    pub async fn reply(&self, key: &str, payload: impl Into<Bytes>) -> Result<(), ReplyError> {
        let k = self.check(key)?;
        self.send(Ok(Sample {
            key: Arc::from(k.as_str()),
            payload: payload.into(),
            kind: SampleKind::Put,
            timestamp: None,
            encoding: None,
            attachment: None,
            source: None,
        }))
        .await
    }

    /// Replies with a whole sample (storages: keeps its timestamp and kind).
    pub async fn reply_sample(&self, sample: Sample) -> Result<(), ReplyError> {
        self.check(&sample.key)?;
        self.send(Ok(sample)).await
    }

    /// Replies with many whole samples at once (a storage's history page): they go through the
    /// node in one pass and the wait for room on the querier's link comes once, after them.
    /// Each is checked as [`reply_sample`](Self::reply_sample) checks it; if one fails, none
    /// is sent.
    pub async fn reply_samples(&self, samples: Vec<Sample>) -> Result<(), ReplyError> {
        let q = self.key_expr();
        let rt = self.inner.responder.runtime();
        for s in &samples {
            // A canonical key (what a storage holds) is checked without a copy.
            let fast = KeyExpr::new(&s.key)
                .is_ok_and(|k| super::too_long(rt, &s.key).is_none() && k.intersects(&q));
            if !fast {
                self.check(&s.key)?;
            }
        }
        if self.inner.responder.reply_all(samples) {
            self.inner.responder.room().await;
            Ok(())
        } else {
            Err(ReplyError::Gone)
        }
    }

    /// Replies that `key` was deleted.
    pub async fn reply_delete(
        &self,
        key: &str,
        timestamp: Option<Timestamp>,
    ) -> Result<(), ReplyError> {
        let k = self.check(key)?;
        self.send(Ok(Sample {
            key: Arc::from(k.as_str()),
            payload: Bytes::new(),
            kind: SampleKind::Delete,
            timestamp,
            encoding: None,
            attachment: None,
            source: None,
        }))
        .await
    }

    /// Replies with an error.
    pub async fn reply_err(&self, payload: impl Into<Bytes>) -> Result<(), ReplyError> {
        self.send(Err(ErrorReply {
            payload: payload.into(),
            encoding: None,
        }))
        .await
    }

    async fn send(&self, r: Result<Sample, ErrorReply>) -> Result<(), ReplyError> {
        if self.inner.responder.reply(r) {
            // Back-pressure: a queryable replying faster than the querier's link drains (a
            // storage replaying a million samples) waits for room instead of piling replies up
            // until the link's backlog cap closes it.
            self.inner.responder.room().await;
            Ok(())
        } else {
            Err(ReplyError::Gone)
        }
    }
}

/// Builds a queryable.
pub struct QueryableBuilder {
    rt: Arc<Runtime>,
    key: Result<OwnedKeyExpr, KeyExprError>,
    complete: bool,
}

impl std::future::IntoFuture for QueryableBuilder {
    type Output = Result<Queryable<QueryFifo>, DeclareError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    /// `declare_queryable(k).await`: a stream queryable once the neighbours have accepted it
    /// (up to `DECLARE_WAIT`); `Err(AccessDenied)` if one refused it.
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let q = self.stream()?;
            q.declared(super::DECLARE_WAIT).await?;
            Ok(q)
        })
    }
}

impl QueryableBuilder {
    pub(crate) fn new(rt: Arc<Runtime>, key: Result<OwnedKeyExpr, KeyExprError>) -> Self {
        QueryableBuilder {
            rt,
            key,
            complete: false,
        }
    }

    /// Whether it holds every key of its key expression (a complete storage).
    pub fn complete(mut self, c: bool) -> Self {
        self.complete = c;
        self
    }

    /// Calls `f` for every query. Reply from a spawned task if replying takes time.
    pub fn callback(
        self,
        f: impl Fn(Query) + Send + Sync + 'static,
    ) -> Result<Queryable<super::Callback>, DeclareError> {
        self.declare(Delivery::QueryCallback(Box::new(f)), super::Callback)
    }

    /// Queries on a stream: `recv().await`.
    pub fn stream(self) -> Result<Queryable<QueryFifo>, DeclareError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.declare(
            Delivery::QueryChannel(tx),
            QueryFifo {
                rx: tokio::sync::Mutex::new(rx),
            },
        )
    }

    fn declare<H>(self, delivery: Delivery, rx: H) -> Result<Queryable<H>, DeclareError> {
        let key = self.key?;
        if let Some((len, limit)) = super::too_long(&self.rt, key.as_str()) {
            return Err(DeclareError::KeyTooLong { len, limit });
        }
        if self.rt.is_closed() {
            return Err(DeclareError::Closed);
        }
        let handler = Arc::new(Handler::new(delivery));
        let (k, complete) = (key.clone(), self.complete);
        let id = self.rt.declare(Some(handler), |id| Cmd::Queryable {
            id,
            key: k,
            complete,
        });
        Ok(Queryable {
            rt: self.rt,
            id,
            key,
            rx,
        })
    }
}

/// The receiving end of a `stream()` queryable (queries are never dropped: replying is what
/// costs, and the querier's timeout bounds it).
#[derive(Debug)]
pub struct QueryFifo {
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Query>>,
}

impl QueryFifo {
    /// The next query; `None` once the session is gone.
    pub async fn recv(&self) -> Option<Query> {
        self.rx.lock().await.recv().await
    }
}

/// A queryable; `H` is how it receives ([`QueryFifo`] or [`super::Callback`]), and it
/// dereferences to it. Dropping it undeclares it.
pub struct Queryable<H = QueryFifo> {
    rt: Arc<Runtime>,
    id: LocalId,
    key: OwnedKeyExpr,
    rx: H,
}

impl<H> std::ops::Deref for Queryable<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.rx
    }
}

impl<H> std::fmt::Debug for Queryable<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queryable({})", self.key)
    }
}

impl<H> Queryable<H> {
    /// Waits until ready or refused, up to `timeout` (see `Subscriber::declared`).
    pub async fn declared(&self, timeout: Duration) -> Result<bool, DeclareError> {
        self.rt
            .wait_declared(self.id, timeout)
            .await
            .map_err(|d| DeclareError::AccessDenied((*d).clone()))
    }

    /// The refusal of this queryable by a neighbour's access control, if any.
    pub fn denied(&self) -> Option<crate::acl::AccessDenied> {
        self.rt.denial(self.id).map(|d| (*d).clone())
    }

    /// Waits until the queryable is known where it matters, up to `timeout` (see
    /// `Subscriber::ready`).
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.rt.wait_ready(self.id, timeout).await
    }
}

impl<H> Drop for Queryable<H> {
    fn drop(&mut self) {
        self.rt.undeclare(self.id);
    }
}
