//! The HTTP gateway (feature `http`) through real nodes and real sockets: every verb round
//! trips, a neighbour's refusal is a 403 with the AccessDenied, the OpenAPI document matches
//! the routes, SSE resumes with Last-Event-ID with no gap and no duplicate under a live
//! publisher, and a slow SSE client is told what it lost.

#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::Session;
use hypha::config::HttpConfig;
use hypha::keyexpr::OwnedKeyExpr;
use hypha::storage::{BackendKind, StorageConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod common;
use common::T;

async fn open(connect: &[String]) -> Session {
    hypha::open(common::node_config("tcp/127.0.0.1:0", connect))
        .await
        .unwrap()
}

fn ep(s: &Session) -> String {
    s.info().listening[0].to_string()
}

async fn gateway(s: &Session, cfg: HttpConfig) -> hypha::http::Gateway {
    hypha::http::serve(s.clone(), "127.0.0.1:0".parse().unwrap(), &cfg)
        .await
        .unwrap()
}

/// One request, `Connection: close`: (status, headers (lowercase names), body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let s = TcpStream::connect(addr).await.unwrap();
    exchange(s, method, path, headers, body).await
}

/// One request on `s` (plain or TLS), `Connection: close`.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// An SSE subscription read event by event (the body is chunked).
struct Sse {
    r: BufReader<TcpStream>,
    pending: Vec<u8>,
}

#[derive(Debug, Default)]
struct Ev {
    event: String,
    id: Option<String>,
    data: String,
}

impl Sse {
    async fn open(addr: SocketAddr, path: &str, last_id: Option<&str>) -> Sse {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            let l = line.to_ascii_lowercase();
            if l.starts_with("content-type:") {
                assert!(l.contains("text/event-stream"), "{line}");
            }
        }
        Sse {
            r,
            pending: Vec::new(),
        }
    }

    /// The next decoded body bytes (one chunk).
    async fn chunk(&mut self) {
        let mut size = String::new();
        self.r.read_line(&mut size).await.unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut buf = vec![0u8; n + 2];
        self.r.read_exact(&mut buf).await.unwrap();
        self.pending.extend_from_slice(&buf[..n]);
    }

    /// The next event (comments and keep-alives skipped).
    async fn next(&mut self) -> Ev {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut ev = Ev::default();
                for l in text.lines() {
                    if let Some(v) = l.strip_prefix("event: ") {
                        ev.event = v.to_string();
                    } else if let Some(v) = l.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        ev.data.push_str(v);
                    }
                }
                if !ev.event.is_empty() || !ev.data.is_empty() {
                    return ev;
                }
                continue;
            }
            tokio::time::timeout(T, self.chunk())
                .await
                .expect("no event in time");
        }
    }
}

fn memory_storage(key: &str) -> StorageConfig {
    let mut c = StorageConfig::new(OwnedKeyExpr::new(key.to_string()).unwrap());
    c.backend = BackendKind::Memory;
    c
}

#[tokio::test]
async fn every_verb_round_trips_through_a_real_node() {
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let store = hypha::storage::start(&b, memory_storage("demo/**"))
        .await
        .unwrap();
    let sub = b.declare_subscriber("demo/**").await.unwrap();
    let gw = gateway(&a, HttpConfig::default()).await;
    let addr = gw.local_addr();
    assert!(a.wait_peers(1, T).await);
    assert!(
        a.wait_queryable(&OwnedKeyExpr::new("demo/**".into()).unwrap(), T)
            .await
    );

    // PUT: delivered to the neighbour's subscriber, with its Content-Type as encoding.
    let (st, _, body) = request(
        addr,
        "PUT",
        "/api/v1/k/demo/x",
        &[("Content-Type", "text/plain")],
        b"hello",
    )
    .await;
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!((&*s.key, &s.payload[..]), ("demo/x", &b"hello"[..]));
    assert_eq!(s.encoding.as_deref(), Some("text/plain"));
    let (st, _, _) = request(addr, "PUT", "/api/v1/k/demo/bin", &[], &[0xff, 0x00, 0xfe]).await;
    assert_eq!(st, 204);
    tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();

    // GET: the storage's values, text and base64.
    let mut got = Value::Null;
    common::wait_until(T, async || {
        let (st, headers, body) = request(addr, "GET", "/api/v1/k/demo/**", &[], b"").await;
        assert_eq!(st, 200);
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json")
        );
        got = json(&body);
        got.as_array().unwrap().len() == 2
    })
    .await
    .unwrap_or_else(|_| panic!("the storage never held both: {got}"));
    let arr = got.as_array().unwrap();
    let x = arr.iter().find(|v| v["key"] == "demo/x").unwrap();
    assert_eq!(
        (&x["value"], &x["encoding"], &x["kind"]),
        (&"hello".into(), &"text".into(), &"put".into())
    );
    assert_eq!(x["content_type"], "text/plain");
    assert!(
        hypha::http::parse_event_id(x["timestamp"].as_str().unwrap()).is_some(),
        "{x}"
    );
    let bin = arr.iter().find(|v| v["key"] == "demo/bin").unwrap();
    assert_eq!(
        (&bin["value"], &bin["encoding"]),
        (&"/wD+".into(), &"base64".into())
    );

    // DELETE: a deletion reaches the subscriber and the storage.
    let (st, _, _) = request(addr, "DELETE", "/api/v1/k/demo/x", &[], b"").await;
    assert_eq!(st, 204);
    let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!((&*s.key, s.kind), ("demo/x", hypha::SampleKind::Delete));
    common::wait_until(T, async || {
        let (_, _, body) = request(addr, "GET", "/api/v1/k/demo/**", &[], b"").await;
        json(&body).as_array().unwrap().len() == 1
    })
    .await
    .unwrap();

    // Bad input is a clear 400, not a panic or a hang.
    let (st, _, body) = request(addr, "PUT", "/api/v1/k/demo/*", &[], b"1").await;
    assert_eq!(st, 400);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("demo/*"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (st, _, _) = request(addr, "GET", "/api/v1/k/demo/a//b", &[], b"").await;
    assert_eq!(st, 400);
    let (st, _, _) = Box::pin(request(
        addr,
        "GET",
        "/api/v1/k/demo/**",
        &[("Accept", "text/event-stream"), ("Last-Event-ID", "junk")],
        b"",
    ))
    .await;
    assert_eq!(st, 400);

    // Metrics over HTTP: the same registry as the admin space.
    let (st, headers, body) = request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/openmetrics-text"))
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("hypha_published_total 3"), "{text}");
    assert!(text.ends_with("# EOF\n"));

    // Topology: both nodes and both directions of their link.
    let (st, _, body) = request(addr, "GET", "/api/v1/topology", &[], b"").await;
    assert_eq!(st, 200);
    let t = json(&body);
    assert_eq!(t["nodes"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(t["links"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(t["self"], a.id().to_string());
    store.close().await;
}

#[tokio::test]
async fn a_neighbours_refusal_is_a_403_with_the_access_denied() {
    let mut cfg = common::node_config("tcp/127.0.0.1:0", &[]);
    cfg.acl = Some(
        hypha::acl::Acl::from_toml(
            r#"
[acl]
default = "deny"
[[acl.rule]]
id = "demo"
who = ["anonymous"]
ops = ["all"]
keys = ["demo/**", "@/**"]
"#,
        )
        .unwrap(),
    );
    let guard = hypha::open(cfg).await.unwrap();
    let a = open(&[ep(&guard)]).await;
    assert!(a.wait_peers(1, T).await && guard.wait_peers(1, T).await);
    let _sub = guard.declare_subscriber("**").await.unwrap();
    let gw = gateway(&a, HttpConfig::default()).await;
    let (st, _, body) = request(gw.local_addr(), "PUT", "/api/v1/k/secret/x", &[], b"1").await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    let d = json(&body);
    assert_eq!(
        (
            &d["error"],
            &d["op"],
            &d["key"],
            &d["principal"],
            &d["rule"]
        ),
        (
            &"access denied".into(),
            &"put".into(),
            &"secret/x".into(),
            &"anonymous".into(),
            &"default".into()
        )
    );
    let (st, _, body) = request(gw.local_addr(), "PUT", "/api/v1/k/demo/x", &[], b"1").await;
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_and_each_answers() {
    let a = open(&[]).await;
    let gw = gateway(&a, HttpConfig::default()).await;
    let (st, _, body) = request(gw.local_addr(), "GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(st, 200);
    let doc = json(&body);
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(hypha::http::OPENAPI).unwrap()
    );
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "delete", "post", "patch"] {
            if item.get(m).is_some() {
                documented.push((m.to_string(), path.clone()));
            }
        }
    }
    documented.sort();
    let mut routes: Vec<(String, String)> = hypha::http::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(documented, routes);
    for (m, p) in &routes {
        let path = p.replace("{keyexpr}", "demo/x");
        if p == "/api/v1/events" {
            let mut sse = Sse::open(gw.local_addr(), &path, None).await;
            assert_eq!(sse.next().await.event, "topology");
            continue;
        }
        let (st, _, body) = request(gw.local_addr(), &m.to_uppercase(), &path, &[], b"").await;
        assert!(
            (200..300).contains(&st),
            "{m} {path}: {st} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (st, _, _) = request(gw.local_addr(), "GET", "/api/v2/nothing", &[], b"").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn bearer_tokens_and_cors_are_enforced() {
    let a = open(&[]).await;
    let mut cfg = HttpConfig::default();
    cfg.tokens_sha256 = vec![hypha::http::token_digest("s3cret")];
    cfg.cors = vec!["http://ops.example".into()];
    let gw = gateway(&a, cfg).await;
    let addr = gw.local_addr();
    let (st, h, _) = request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 401);
    assert!(
        h.iter()
            .any(|(k, v)| k == "www-authenticate" && v == "Bearer")
    );
    let (st, _, _) = request(
        addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await;
    assert_eq!(st, 401);
    let (st, h, _) = request(
        addr,
        "GET",
        "/metrics",
        &[
            ("Authorization", "Bearer s3cret"),
            ("Origin", "http://ops.example"),
        ],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        h.iter()
            .any(|(k, v)| k == "access-control-allow-origin" && v == "http://ops.example")
    );
    let (st, h, _) = request(
        addr,
        "GET",
        "/metrics?access_token=s3cret",
        &[("Origin", "http://evil.example")],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        !h.iter().any(|(k, _)| k == "access-control-allow-origin"),
        "{h:?}"
    );
    // The page itself needs no token (it carries none of the mesh's data).
    let (st, _, body) = request(addr, "GET", "/", &[], b"").await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("<svg"));
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_without_gap_or_duplicate_under_a_live_publisher() {
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let store = hypha::storage::start(&b, memory_storage("live/**"))
        .await
        .unwrap();
    assert!(
        a.wait_queryable(&OwnedKeyExpr::new("live/**".into()).unwrap(), T)
            .await
    );
    let gw = gateway(&a, HttpConfig::default()).await;

    // A publisher on b that never pauses for the test.
    let published = Arc::new(AtomicU64::new(0));
    let p = b.declare_publisher("live/n").unwrap();
    assert!(p.ready(T).await);
    let (n, stop) = (
        published.clone(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let stop2 = stop.clone();
    let pub_task = tokio::spawn(async move {
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            p.put(i.to_string()).await.unwrap();
            i += 1;
            n.store(i, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let value = |ev: &Ev| -> u64 {
        json(ev.data.as_bytes())["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut seen = Vec::new();
    let mut sse = Sse::open(gw.local_addr(), "/api/v1/k/live/**", None).await;
    let mut last = None;
    while seen.len() < 30 {
        let ev = sse.next().await;
        assert_eq!(ev.event, "put", "{ev:?}");
        seen.push(value(&ev));
        last = ev.id.clone();
    }
    drop(sse);
    // Disconnected while the publisher goes on: wait until it has published 50 more.
    let at_drop = published.load(Ordering::Relaxed);
    common::wait_until(T, async || {
        published.load(Ordering::Relaxed) >= at_drop + 50
    })
    .await
    .unwrap();
    let mut sse = Sse::open(gw.local_addr(), "/api/v1/k/live/**", last.as_deref()).await;
    let target = published.load(Ordering::Relaxed) + 30;
    loop {
        let ev = sse.next().await;
        assert_eq!(ev.event, "put", "{ev:?}");
        let v = value(&ev);
        seen.push(v);
        if v >= target {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    pub_task.await.unwrap();
    let first = seen[0];
    let want: Vec<u64> = (first..first + seen.len() as u64).collect();
    assert_eq!(seen, want, "a gap or a duplicate across the reconnection");
    assert!(
        *seen.last().unwrap() >= at_drop + 50,
        "the replay covered the disconnection"
    );
    store.close().await;
}

#[tokio::test]
async fn a_slow_sse_client_is_told_how_many_samples_it_lost() {
    let a = open(&[]).await;
    let mut cfg = HttpConfig::default();
    cfg.sse_queue = 4;
    let gw = gateway(&a, cfg).await;
    let mut sse = Sse::open(gw.local_addr(), "/api/v1/k/slow/**", None).await;
    // Make sure the subscription exists before publishing: the first sample comes through.
    let p = a.declare_publisher("slow/x").unwrap();
    common::wait_until(T, async || p.matching_status())
        .await
        .unwrap();
    p.put("first").await.unwrap();
    assert_eq!(json(sse.next().await.data.as_bytes())["value"], "first");
    // Then far more than the socket buffers and the queue hold, without reading; then
    // markers `end-K` until the reader sees one.
    let seen_end = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, total) = (seen_end.clone(), 400u64);
    let publisher = tokio::spawn(async move {
        let big = "x".repeat(32 * 1024);
        for _ in 0..total {
            p.put(big.clone()).await.unwrap();
        }
        let mut k = 0;
        while !flag.load(Ordering::Relaxed) && k < 1000 {
            p.put(format!("end-{k}")).await.unwrap();
            k += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (mut delivered, mut lost) = (0u64, 0u64);
    let end = loop {
        let ev = sse.next().await;
        match ev.event.as_str() {
            "lag" => lost += ev.data.parse::<u64>().unwrap(),
            "put" => {
                let v = json(ev.data.as_bytes())["value"]
                    .as_str()
                    .unwrap()
                    .to_string();
                if let Some(k) = v.strip_prefix("end-") {
                    break k.parse::<u64>().unwrap();
                }
                delivered += 1;
            }
            other => panic!("unexpected event {other}"),
        }
    };
    seen_end.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    assert!(
        lost > 0,
        "nothing was dropped: the test did not overflow the queue"
    );
    // Before `end-K`: the burst and the markers end-0..end-(K-1), each delivered or counted.
    assert_eq!(
        delivered + lost,
        total + end,
        "every sample is delivered or counted lost"
    );
}

/// Access rules of the gateway tests: `ops` may do anything (admin space included), `viewer`
/// may only read `demo/**`.
const OPS_AND_VIEWER: &str = r#"
[acl]
default = "deny"
[[acl.rule]]
id = "ops-all"
who = ["ops"]
ops = ["all"]
keys = ["**", "@/**"]
[[acl.rule]]
id = "viewer-read"
who = ["viewer"]
ops = ["query", "sub"]
keys = ["demo/**"]
"#;

#[tokio::test]
async fn http_callers_are_judged_by_the_nodes_acl_as_their_token_principal() {
    let mut cfg = common::node_config("tcp/127.0.0.1:0", &[]);
    cfg.acl = Some(
        hypha::acl::Acl::from_toml(&format!(
            "{OPS_AND_VIEWER}{}",
            r#"[[acl.rule]]
id = "no-secret"
permission = "deny"
who = ["viewer"]
ops = ["all"]
keys = ["demo/secret/**"]
"#
        ))
        .unwrap(),
    );
    let a = hypha::open(cfg).await.unwrap();
    let mut h = HttpConfig::default();
    h.token = vec![
        hypha::config::HttpToken {
            principal: "ops".into(),
            sha256: hypha::http::token_digest("ops-token"),
        },
        hypha::config::HttpToken {
            principal: "viewer".into(),
            sha256: hypha::http::token_digest("viewer-token"),
        },
    ];
    h.tokens_sha256 = vec![hypha::http::token_digest("plain-token")];
    let gw = gateway(&a, h).await;
    let addr = gw.local_addr();
    let viewer = [("Authorization", "Bearer viewer-token")];
    let ops = [("Authorization", "Bearer ops-token")];
    let denied = |body: &[u8]| {
        let d = json(body);
        (
            d["op"].as_str().unwrap().to_string(),
            d["key"].as_str().unwrap().to_string(),
            d["principal"].as_str().unwrap().to_string(),
            d["rule"].as_str().unwrap().to_string(),
        )
    };
    let s = |v: &str| v.to_string();

    // The viewer reads demo/**, nothing else.
    let (st, _, body) = request(addr, "GET", "/api/v1/k/demo/x", &viewer, b"").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, _, body) = request(addr, "PUT", "/api/v1/k/demo/x", &viewer, b"1").await;
    assert_eq!(st, 403);
    assert_eq!(
        denied(&body),
        (s("put"), s("demo/x"), s("viewer"), s("default"))
    );
    let (st, _, body) = request(addr, "DELETE", "/api/v1/k/demo/x", &viewer, b"").await;
    assert_eq!((st, denied(&body).0), (403, s("delete")));
    let (st, _, body) = request(addr, "GET", "/api/v1/k/demo/secret/a", &viewer, b"").await;
    assert_eq!(st, 403);
    assert_eq!(
        denied(&body),
        (s("query"), s("demo/secret/a"), s("viewer"), s("no-secret"))
    );
    let sse = [
        ("Authorization", "Bearer viewer-token"),
        ("Accept", "text/event-stream"),
    ];
    let (st, _, body) = request(addr, "GET", "/api/v1/k/other/**", &sse, b"").await;
    assert_eq!(st, 403);
    assert_eq!(
        denied(&body),
        (s("sub"), s("other/**"), s("viewer"), s("default"))
    );
    let (st, _, body) = request(addr, "GET", "/metrics", &viewer, b"").await;
    assert_eq!(st, 403);
    assert_eq!(denied(&body).0, "admin");
    let (st, _, body) = request(addr, "GET", "/api/v1/topology", &viewer, b"").await;
    assert_eq!((st, denied(&body).1), (403, s("@/*/**")));

    // Ops may do everything, the admin space included.
    let (st, _, body) = request(addr, "PUT", "/api/v1/k/demo/x", &ops, b"1").await;
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    let (st, _, body) = request(addr, "GET", "/metrics", &ops, b"").await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
    let path = format!("/api/v1/k/@/{}/node", a.id());
    let (st, _, body) = request(addr, "GET", &path, &ops, b"").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    let (st, _, body) = request(addr, "GET", &path, &viewer, b"").await;
    assert_eq!((st, denied(&body).0), (403, s("admin")));

    // A token without a principal is anonymous; no token at all is still a 401.
    let plain = [("Authorization", "Bearer plain-token")];
    let (st, _, body) = request(addr, "GET", "/api/v1/k/demo/x", &plain, b"").await;
    assert_eq!(st, 403);
    assert_eq!(denied(&body).2, "anonymous");
    let (st, _, _) = request(addr, "GET", "/api/v1/k/demo/x", &[], b"").await;
    assert_eq!(st, 401);
    // A bad principal name is a clear error at start-up.
    let mut bad = HttpConfig::default();
    bad.token = vec![hypha::config::HttpToken {
        principal: "ops/*".into(),
        sha256: hypha::http::token_digest("x"),
    }];
    let e = hypha::http::serve(a.clone(), "127.0.0.1:0".parse().unwrap(), &bad)
        .await
        .err()
        .expect("a wildcard principal is refused");
    assert!(e.to_string().contains("ops/*"), "{e}");
}

/// An HTTPS client trusting `ca`, presenting `client`'s certificate if given.
fn https_client(
    ca: &std::path::Path,
    client: Option<&hypha_transports::TlsConfig>,
) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match client {
        Some(t) => {
            let chain = CertificateDer::pem_file_iter(t.cert.as_ref().unwrap())
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(t.key.as_ref().unwrap()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One HTTPS request through `client` (server name `localhost`).
async fn https(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = client.connect(name, tcp).await.unwrap();
    exchange(s, method, path, headers, body).await
}

/// HTTPS (`[http] tls`): a client certificate the client CA verified names the caller's
/// principal as on links, judged by the same ACL as bearer tokens; without one, the token
/// rules apply (anonymous when none is required, 401 when one is); a certificate of another
/// CA fails the handshake.
#[tokio::test]
async fn https_client_certificates_name_principals_judged_by_the_acl() {
    let pki = common::pki::Pki::new();
    let server = pki.node("gateway", |p| {
        p.subject_alt_names
            .push(rcgen::SanType::DnsName("localhost".try_into().unwrap()))
    });
    let ops = pki.node("ops", |_| {});
    let viewer = pki.node("viewer", |_| {});
    let other_ca = common::pki::Pki::new();
    let stranger = other_ca.node("ops", |_| {});
    let mut cfg = common::node_config("tcp/127.0.0.1:0", &[]);
    cfg.acl = Some(hypha::acl::Acl::from_toml(OPS_AND_VIEWER).unwrap());
    let a = hypha::open(cfg).await.unwrap();
    let mut h = HttpConfig::default();
    h.tls = true;
    h.cert = server.cert.clone();
    h.key = server.key.clone();
    h.client_ca = server.ca.clone();
    let gw = gateway(&a, h.clone()).await;
    let addr = gw.local_addr();
    let ca = server.ca.clone().unwrap();
    let (as_ops, as_viewer, as_nobody) = (
        https_client(&ca, Some(&ops)),
        https_client(&ca, Some(&viewer)),
        https_client(&ca, None),
    );
    let denied = |body: &[u8]| {
        let d = json(body);
        assert_eq!(d["error"], "access denied", "{d}");
        (
            d["op"].as_str().unwrap().to_string(),
            d["key"].as_str().unwrap().to_string(),
            d["principal"].as_str().unwrap().to_string(),
            d["rule"].as_str().unwrap().to_string(),
        )
    };
    let s = |v: &str| v.to_string();

    // A subscriber sees that the permitted put really reached the mesh.
    let sub = a.declare_subscriber("demo/**").await.unwrap();
    let (st, _, body) = https(addr, &as_ops, "PUT", "/api/v1/k/demo/x", &[], b"42").await;
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    let got = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!((&*got.key, &got.payload[..]), ("demo/x", &b"42"[..]));

    let (st, _, body) = https(addr, &as_viewer, "PUT", "/api/v1/k/demo/x", &[], b"1").await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        denied(&body),
        (s("put"), s("demo/x"), s("viewer"), s("default"))
    );
    let (st, _, body) = https(addr, &as_viewer, "GET", "/api/v1/k/demo/x", &[], b"").await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));

    // No certificate and no token required: anonymous, whom the ACL refuses.
    let (st, _, body) = https(addr, &as_nobody, "PUT", "/api/v1/k/demo/x", &[], b"1").await;
    assert_eq!(st, 403);
    assert_eq!(
        denied(&body),
        (s("put"), s("demo/x"), s("anonymous"), s("default"))
    );

    // A certificate from another CA: the handshake fails, no HTTP answer at all.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = async {
        let mut t = https_client(&ca, Some(&stranger))
            .connect(name, tcp)
            .await?;
        t.write_all(b"GET /api/v1/topology HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        t.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    // TLS 1.3: the client may think the handshake done before the server judges its
    // certificate; then the read fails (the server's alert) or ends empty.
    if let Ok(raw) = tokio::time::timeout(T, refused).await.unwrap() {
        assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    }

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(T, plain.read_to_end(&mut raw))
        .await
        .unwrap();
    assert!(
        !raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    // Where a token is required, a certificate is a credential too; no certificate and no
    // token is a 401.
    h.token = vec![hypha::config::HttpToken {
        principal: "ops".into(),
        sha256: hypha::http::token_digest("ops-token"),
    }];
    let gw2 = gateway(&a, h).await;
    let addr2 = gw2.local_addr();
    let (st, _, _) = https(addr2, &as_nobody, "GET", "/api/v1/k/demo/x", &[], b"").await;
    assert_eq!(st, 401);
    let bearer = [("Authorization", "Bearer ops-token")];
    let (st, _, _) = https(addr2, &as_nobody, "PUT", "/api/v1/k/demo/y", &bearer, b"1").await;
    assert_eq!(st, 204);
    let (st, _, body) = https(addr2, &as_viewer, "PUT", "/api/v1/k/demo/y", &[], b"1").await;
    assert_eq!((st, denied(&body).2), (403, s("viewer")));
    let (st, _, _) = https(addr2, &as_ops, "PUT", "/api/v1/k/demo/y", &[], b"1").await;
    assert_eq!(st, 204);
}
