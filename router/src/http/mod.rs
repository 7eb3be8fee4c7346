//! The HTTP gateway (feature `http`): the mesh from a script or a browser, over one node's
//! [`Session`].
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/k/{keyexpr}?params` | a get: JSON array of `{key, value, encoding, kind, timestamp, content_type}` |
//! | `GET /api/v1/k/{keyexpr}` + `Accept: text/event-stream` | an SSE subscription (ids = sample timestamps; `Last-Event-ID` resumes) |
//! | `PUT /api/v1/k/{key}` (body) / `DELETE /api/v1/k/{key}` | a put / a delete: 204, or 403 with a JSON `AccessDenied` |
//! | `GET /api/v1/topology` | every node and link the admin space answers, JSON |
//! | `GET /api/v1/events` | the topology once a second, SSE (`event: topology`) |
//! | `GET /metrics` | this node's metrics, OpenMetrics text |
//! | `GET /api/v1/openapi.json` | the OpenAPI document of these routes (`openapi.json` here) |
//! | `GET /` | the live page (`page.html`, embedded) |
//!
//! - **Values:** UTF-8 payloads are given as text (`"encoding": "text"`), others as base64
//!   (`"encoding": "base64"`); the publisher's MIME type, if any, is `content_type`.
//! - **Resuming SSE:** an event's id is its sample's HLC timestamp, exactly
//!   (`<NTP64 as 16 hex digits>-<node id>`). A client reconnecting with `Last-Event-ID`
//!   declares a subscriber with `history` reaching back to that time: the API's seam merges the
//!   storage's replay and the live stream by timestamp without duplicates, and the gateway
//!   drops what is not after the last id: no gap, no duplicate (for samples delivered in
//!   timestamp order, as one publisher's are).
//! - **Slow clients:** each SSE subscription has a bounded queue (`http.sse_queue` samples);
//!   what overflows is dropped and announced by an `event: lag` whose data is the count, never
//!   buffered without bound.
//! - **Exposure:** binds where told (`--http 127.0.0.1:8000`, loopback in every example); no
//!   CORS header unless `http.cors` lists the origin; with `http.tokens_sha256` set, every
//!   route but `/` needs `Authorization: Bearer <token>` (or `?access_token=` for the page's
//!   EventSource), compared by SHA-256 digest.
//! - **Identity and access control:** a caller whose token is an `[[http.token]]` entry is
//!   that entry's principal; any other caller is `anonymous`. When the node has an ACL, each
//!   request is judged as that principal before it reaches the mesh (`Acl::decide`): a get is
//!   `query` (`admin` on `@/…`), an SSE subscription `sub`, a put `put`, a delete `delete`,
//!   `/metrics` `admin` on `@/<id>/metrics`, the topology routes `admin` on `@/*/**`. A
//!   refusal is 403 with the `AccessDenied` body naming the HTTP principal and the rule.
//! - **HTTPS** (`http.tls`, `http/tls.rs`): with a client CA, a client certificate that
//!   CA verified is the caller's credential and names its principal as a link's certificate
//!   does; a caller without one is judged by the bearer-token rules above.

use crate::Session;
use crate::acl::{AccessDenied, Op, Principal};
use crate::api::query::parameter;
use crate::config::HttpConfig;
use crate::sample::{Sample, SampleKind};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use futures_util::stream;
use hypha_core::hlc::{Ntp64, Timestamp};
use hypha_core::id::NodeId;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod tls;

/// The OpenAPI document of the gateway, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The live page, served at `/`.
const PAGE: &str = include_str!("page.html");

/// How long a put or delete waits for a neighbour's access-control refusal (a round trip).
const DENIAL_WAIT: Duration = Duration::from_millis(250);
/// Longest a get may be told to wait for replies (`_timeout_ms`).
const MAX_GET_TIMEOUT_MS: u64 = 60_000;
/// Largest request body accepted (a put's payload).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A configured token digest is not 64 hex digits.
    #[error("http.tokens_sha256: {0:?} is not a SHA-256 digest (64 hex digits)")]
    Token(String),
    /// A file of the HTTPS material (`http.cert`, `http.key`, `http.client_ca`) could not be
    /// read or holds nothing usable.
    #[error("http.tls: cannot load {what} from {path}: {reason}")]
    TlsFile {
        /// Certificate, key or client CA.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// `http.tls` without a certificate and key.
    #[error("http.tls needs http.cert and http.key")]
    TlsIncomplete,
    /// rustls refused the material.
    #[error("http.tls: {0}")]
    Tls(#[from] rustls::Error),
    /// An `[[http.token]]` entry's principal is not a valid principal name.
    #[error("http.token: principal {name:?}: {source}")]
    Principal {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: crate::acl::PrincipalError,
    },
}

/// A running gateway; it stops when dropped.
pub struct Gateway {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// The address it listens on (the port resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Gw {
    session: Session,
    cors: Vec<String>,
    /// Accepted token digests, each with the principal it names (`None`: anonymous).
    tokens: Vec<([u8; 32], Option<Principal>)>,
    sse_queue: usize,
}

/// The SHA-256 of a bearer token, as `http.tokens_sha256` lists it (hex).
pub fn token_digest(token: &str) -> String {
    crate::digest::to_hex(&crate::digest::sha256(token.as_bytes()))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    crate::digest::sha256_from_hex(hex)
}

/// Starts the gateway of `session` on `addr`, with `config`'s CORS origins, tokens and queue.
pub async fn serve(
    session: Session,
    addr: SocketAddr,
    config: &HttpConfig,
) -> Result<Gateway, ServeError> {
    let mut tokens = config
        .tokens_sha256
        .iter()
        .map(|t| {
            parse_digest(t)
                .map(|d| (d, None))
                .ok_or_else(|| ServeError::Token(t.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for t in &config.token {
        let d = parse_digest(&t.sha256).ok_or_else(|| ServeError::Token(t.sha256.clone()))?;
        let p = Principal::new(&t.principal).map_err(|source| ServeError::Principal {
            name: t.principal.clone(),
            source,
        })?;
        tokens.push((d, Some(p)));
    }
    let gw = Arc::new(Gw {
        session,
        cors: config.cors.clone(),
        tokens,
        sse_queue: config.sse_queue.max(1),
    });
    let tls = if config.tls {
        Some(tls::server_config(config)?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let app = router(gw);
    tracing::info!(%addr, https = tls.is_some(), "http gateway listening");
    let task = match tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("http gateway stopped: {e}");
            }
        }),
        Some(cfg) => {
            let listener = tls::TlsListener::new(listener, cfg);
            let app = app.into_make_service_with_connect_info::<tls::Client>();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!("https gateway stopped: {e}");
                }
            })
        }
    };
    Ok(Gateway { addr, task })
}

/// Every route (the OpenAPI document lists the same ones; a test checks it).
fn router(gw: Arc<Gw>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/topology", get(topology))
        .route("/api/v1/events", get(events))
        .route(
            "/api/v1/k/{*keyexpr}",
            get(k_get).put(k_put).delete(k_delete),
        )
        .layer(axum::middleware::from_fn_with_state(gw.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(gw)
}

// ----- access: bearer tokens and CORS --------------------------------------------------------

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// The caller's principal when its credential is accepted (`anonymous` without one where
/// none is needed), `None` when it must be refused (401). Over HTTPS a client certificate
/// the client CA verified is the credential (it names the principal, as on links); without
/// one, bearer tokens as over HTTP.
fn authorized(gw: &Gw, req: &Request) -> Option<Principal> {
    if let Some(cert) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<tls::Client>>()
        .and_then(|c| c.0.certificate.as_deref())
    {
        return tls::principal(gw.session.acl().as_deref(), cert);
    }
    let token = presented_token(req);
    if let Some(token) = &token {
        let d = crate::digest::sha256(token.as_bytes());
        // Every entry is compared, in constant time, whatever matched first.
        let mut found: Option<&Option<Principal>> = None;
        for (t, p) in &gw.tokens {
            if bool::from(subtle::ConstantTimeEq::ct_eq(t.as_slice(), d.as_ref())) {
                found = found.or(Some(p));
            }
        }
        if let Some(p) = found {
            return Some(p.clone().unwrap_or_else(Principal::anonymous));
        }
    }
    (gw.tokens.is_empty() || req.uri().path() == "/").then(Principal::anonymous)
}

/// The bearer token of a request (header, or `?access_token=` for EventSource).
fn presented_token(req: &Request) -> Option<String> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    bearer.or_else(|| {
        req.uri()
            .query()
            .and_then(|q| parameter_of_url(q, "access_token"))
    })
}

/// What a request does, for the node's ACL: (operation, key expression), or `None` for
/// routes that reach nothing of the mesh (the page, the OpenAPI document).
fn operation(gw: &Gw, req: &Request) -> Option<(Op, String)> {
    let path = req.uri().path();
    if let Some(key) = path.strip_prefix("/api/v1/k/") {
        let key = percent_decode(key);
        let op = match *req.method() {
            Method::PUT => Op::Put,
            Method::DELETE => Op::Delete,
            _ if wants_sse(req.headers()) => Op::Sub,
            _ if key == "@" || key.starts_with("@/") => Op::Admin,
            _ => Op::Query,
        };
        return Some((op, key));
    }
    match path {
        "/metrics" => Some((Op::Admin, format!("@/{}/metrics", gw.session.id()))),
        "/api/v1/topology" | "/api/v1/events" => Some((Op::Admin, "@/*/**".to_string())),
        _ => None,
    }
}

/// Judges the request by the node's ACL as `who`: the refusal, if any.
fn refused(gw: &Gw, who: &Principal, req: &Request) -> Option<AccessDenied> {
    let acl = gw.session.acl()?;
    let (op, key) = operation(gw, req)?;
    // A key that does not parse is the handler's 400, not an ACL matter.
    let k = hypha_core::keyexpr::KeyExpr::new(&key).ok()?;
    let d = acl.decide(who, op, &k);
    (!d.allow).then(|| AccessDenied {
        op,
        key,
        principal: who.name().to_string(),
        rule: d.rule.to_string(),
    })
}

/// One `name=value` of a URL query string (`&`-separated), percent-decoded.
fn parameter_of_url(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes (a malformed escape is kept as it is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let escaped = (c == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn guard(State(gw): State<Arc<Gw>>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| gw.cors.iter().any(|c| c == o || c == "*"))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS {
        // A CORS preflight: answered only for a configured origin.
        let Some(o) = origin else {
            return error(StatusCode::FORBIDDEN, "origin not allowed (http.cors)");
        };
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, PUT, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        return r;
    }
    let Some(who) = authorized(&gw, &req) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a bearer token (or a client certificate naming a principal) is required",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    let mut r = match refused(&gw, &who, &req) {
        Some(d) => json_response(StatusCode::FORBIDDEN, &denied_json(&d)),
        None => next.run(req).await,
    };
    if let Some(o) = origin {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    r
}

// ----- static routes -----------------------------------------------------------------------

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(gw): State<Arc<Gw>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        gw.session.metrics(),
    )
        .into_response()
}

// ----- keys --------------------------------------------------------------------------------

/// A timestamp as an SSE event id: exact, so that it parses back to the same timestamp.
pub fn event_id(t: &Timestamp) -> String {
    format!("{:016x}-{}", t.time.0, t.id)
}

/// Parses an event id made by [`event_id`].
pub fn parse_event_id(s: &str) -> Option<Timestamp> {
    let (time, id) = s.trim().split_once('-')?;
    if time.len() != 16 {
        return None;
    }
    Some(Timestamp {
        time: Ntp64(u64::from_str_radix(time, 16).ok()?),
        id: NodeId::parse(id).ok()?,
    })
}

/// A sample as JSON: `{key, value, encoding, kind, timestamp, content_type}`.
fn sample_json(s: &Sample) -> Value {
    let (value, encoding) = match std::str::from_utf8(&s.payload) {
        Ok(t) => (t.to_string(), "text"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&s.payload),
            "base64",
        ),
    };
    json!({
        "key": &*s.key,
        "value": value,
        "encoding": encoding,
        "kind": match s.kind { SampleKind::Put => "put", SampleKind::Delete => "delete" },
        "timestamp": s.timestamp.as_ref().map(event_id),
        "content_type": s.encoding.as_deref(),
    })
}

fn denied_json(d: &AccessDenied) -> Value {
    json!({
        "error": "access denied",
        "op": crate::acl::op_name(d.op),
        "key": d.key,
        "principal": d.principal,
        "rule": d.rule,
    })
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

async fn k_get(
    State(gw): State<Arc<Gw>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if wants_sse(&headers) {
        let last = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return subscribe(gw, key, last).await;
    }
    let params = query.as_deref().map(percent_decode).unwrap_or_default();
    let selector = if params.is_empty() {
        key.clone()
    } else {
        format!("{key}?{params}")
    };
    let mut b = gw.session.get(&selector);
    if let Some(v) = parameter(&params, "_timeout_ms") {
        match v.parse::<u64>() {
            Ok(ms) if ms <= MAX_GET_TIMEOUT_MS => b = b.timeout(Duration::from_millis(ms)),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("_timeout_ms: {v:?} is not 0 to {MAX_GET_TIMEOUT_MS} milliseconds"),
                );
            }
        }
    }
    let replies = match b.send().await {
        Ok(r) => r.collect().await,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut out = Vec::new();
    let mut denied = None;
    for r in &replies {
        match &r.result {
            Ok(s) => out.push(sample_json(s)),
            Err(e) => match e.access_denied() {
                Some(d) => denied = Some(d),
                None => out.push(json!({
                    "error": String::from_utf8_lossy(&e.payload),
                    "replier": r.replier.map(|n| n.to_string()),
                })),
            },
        }
    }
    if out.is_empty()
        && let Some(d) = denied
    {
        return json_response(StatusCode::FORBIDDEN, &denied_json(&d));
    }
    json_response(StatusCode::OK, &Value::Array(out))
}

async fn publish(gw: &Gw, key: &str, body: Option<(Bytes, Option<String>)>) -> Response {
    let mut denials = gw.session.denials();
    let p = match gw.session.declare_publisher(key) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let p = match body.as_ref().and_then(|(_, ct)| ct.as_deref()) {
        Some(ct) => p.encoding(ct),
        None => p,
    };
    let r = match body {
        Some((b, _)) => p.put(b).await,
        None => p.delete().await,
    };
    if let Err(e) = r {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let _ = p.flush(Duration::from_secs(5)).await;
    // A neighbour's access control answers a refused publication with a notice.
    if !gw.session.info().links.is_empty() {
        let deadline = tokio::time::Instant::now() + DENIAL_WAIT;
        while let Ok(Some(d)) = tokio::time::timeout_at(deadline, denials.recv()).await {
            if d.key == key {
                return json_response(StatusCode::FORBIDDEN, &denied_json(&d));
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn k_put(
    State(gw): State<Arc<Gw>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    publish(&gw, &key, Some((body, ct))).await
}

async fn k_delete(State(gw): State<Arc<Gw>>, Path(key): Path<String>) -> Response {
    publish(&gw, &key, None).await
}

// ----- SSE subscriptions ----------------------------------------------------------------------

/// How far back a resumed subscription asks history, beyond the last event's time (clock
/// skew between nodes).
const RESUME_MARGIN: Duration = Duration::from_secs(2);

struct SseState {
    sub: crate::Subscriber<crate::Fifo>,
    after: Option<Timestamp>,
    dropped: u64,
}

async fn subscribe(gw: Arc<Gw>, key: String, last: Option<String>) -> Response {
    let after = match last.as_deref().map(parse_event_id) {
        Some(Some(t)) => Some(t),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is not an event id of this gateway",
            );
        }
        None => None,
    };
    let mut b = gw.session.declare_subscriber(&key).capacity(gw.sse_queue);
    if let Some(t) = &after {
        let now = gw.session.new_timestamp().time.as_unix_micros();
        let back = Duration::from_micros(now.saturating_sub(t.time.as_unix_micros()));
        b = b.history(back + RESUME_MARGIN);
    }
    let sub = match b.stream() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let st = SseState {
        sub,
        after,
        dropped: 0,
    };
    let s = stream::unfold(st, |mut st| async move {
        loop {
            let d = st.sub.dropped();
            if d > st.dropped {
                let n = d - st.dropped;
                st.dropped = d;
                let ev = Event::default().event("lag").data(n.to_string());
                return Some((Ok::<_, Infallible>(ev), st));
            }
            let sample = st.sub.recv().await?;
            if let (Some(a), Some(t)) = (&st.after, &sample.timestamp)
                && t <= a
            {
                continue;
            }
            let mut ev = Event::default()
                .event(match sample.kind {
                    SampleKind::Put => "put",
                    SampleKind::Delete => "delete",
                })
                .data(sample_json(&sample).to_string());
            if let Some(t) = &sample.timestamp {
                ev = ev.id(event_id(t));
            }
            return Some((Ok(ev), st));
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

// ----- topology ------------------------------------------------------------------------------

/// Every node and link the admin space answers: `{"self", "nodes": [...], "links": [...]}`
/// (the admin space's own JSON values).
async fn topology_json(session: &Session) -> String {
    let ask = |sel: &'static str| {
        let s = session.clone();
        async move {
            match s
                .get(sel)
                .target(crate::api::query::QueryTarget::All)
                .consolidation(crate::api::query::Consolidation::None)
                .timeout(Duration::from_millis(800))
                .send()
                .await
            {
                Ok(r) => r
                    .collect()
                    .await
                    .into_iter()
                    .filter_map(|r| r.result.ok())
                    .filter_map(|s| String::from_utf8(s.payload.to_vec()).ok())
                    .collect::<Vec<_>>(),
                Err(_) => Vec::new(),
            }
        }
    };
    let (mut nodes, mut links) = tokio::join!(ask("@/*/node"), ask("@/*/links/**"));
    nodes.sort();
    links.sort();
    format!(
        "{{\"self\":\"{}\",\"nodes\":[{}],\"links\":[{}]}}",
        session.id(),
        nodes.join(","),
        links.join(",")
    )
}

async fn topology(State(gw): State<Arc<Gw>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        topology_json(&gw.session).await,
    )
        .into_response()
}

async fn events(State(gw): State<Arc<Gw>>) -> Response {
    let session = gw.session.clone();
    let s = stream::unfold((session, true), |(session, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let t = topology_json(&session).await;
        let ev = Event::default().event("topology").data(t);
        Some((Ok::<_, Infallible>(ev), (session, false)))
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// The routes of the gateway as (method, OpenAPI path) pairs: `openapi.json` must document
/// exactly these (a test checks both ways).
pub fn routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("get", "/"),
        ("get", "/metrics"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/topology"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/k/{keyexpr}"),
        ("put", "/api/v1/k/{keyexpr}"),
        ("delete", "/api/v1/k/{keyexpr}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_exactly() {
        let t = Timestamp {
            time: Ntp64(0x0123_4567_89ab_cdef),
            id: NodeId::from_u128(0xfeed),
        };
        assert_eq!(parse_event_id(&event_id(&t)), Some(t));
        assert_eq!(parse_event_id("nonsense"), None);
        assert_eq!(parse_event_id("12-34"), None);
    }

    #[test]
    fn percent_decoding_and_digests() {
        assert_eq!(
            percent_decode("_time=%5Bnow(-1m)..%5D"),
            "_time=[now(-1m)..]"
        );
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
        assert_eq!(
            token_digest("secret"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert!(parse_digest(&token_digest("x")).is_some());
        assert!(parse_digest("zz").is_none());
    }
}
