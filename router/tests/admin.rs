//! The admin space (`@/<id>/**`) and the metrics, across three nodes on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::Session;
use hypha::api::query::{Consolidation, QueryTarget};
use std::collections::BTreeSet;
use std::time::Duration;

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

/// Every reply to `selector`: (key, payload, encoding).
async fn get_all(s: &Session, selector: &str) -> Vec<(String, String, String)> {
    let replies = s
        .get(selector)
        .target(QueryTarget::All)
        .consolidation(Consolidation::None)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap()
        .collect()
        .await;
    let mut v: Vec<_> = replies
        .into_iter()
        .filter_map(|r| r.result.ok())
        .map(|s| {
            (
                s.key.to_string(),
                String::from_utf8(s.payload.to_vec()).unwrap(),
                s.encoding.map(|e| e.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The (node, peer) pairs `@/*/links/**` reports, once they are exactly `want`.
async fn wait_links(
    s: &Session,
    want: &BTreeSet<(String, String)>,
) -> Vec<(String, String, String)> {
    let mut last = Vec::new();
    let ok = common::wait_until(T, async || {
        last = get_all(s, "@/*/links/**").await;
        let got: BTreeSet<(String, String)> = last
            .iter()
            .map(|(k, _, _)| {
                let parts: Vec<&str> = k.split('/').collect();
                assert_eq!((parts.len(), parts[0], parts[2]), (4, "@", "links"), "{k}");
                (parts[1].to_string(), parts[3].to_string())
            })
            .collect();
        got == *want && last.len() == want.len()
    })
    .await;
    assert!(
        ok.is_ok(),
        "links never became {want:?}; last answer {last:?}"
    );
    last
}

fn pairs(nodes: &[&Session]) -> BTreeSet<(String, String)> {
    let mut v = BTreeSet::new();
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                v.insert((a.id().to_string(), b.id().to_string()));
            }
        }
    }
    v
}

/// A field of a flat JSON object, as text (the tests carry no JSON parser of their own).
fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let pat = format!("\"{name}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = if let Some(r) = rest.strip_prefix('"') {
        return &r[..r.find('"').unwrap()];
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}

#[tokio::test]
async fn links_appear_and_disappear_across_three_nodes() {
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    let c = open(&[ep(&a), ep(&b)]).await;
    assert!(a.wait_peers(2, T).await && b.wait_peers(2, T).await && c.wait_peers(2, T).await);

    let links = wait_links(&c, &pairs(&[&a, &b, &c])).await;
    for (key, v, enc) in &links {
        assert_eq!(enc, "application/json");
        assert!(key.ends_with(field(v, "peer")), "{key}: {v}");
        assert!(key.contains(field(v, "node")), "{key}: {v}");
        assert_eq!(field(v, "kind"), "peer");
        assert_eq!(field(v, "transport"), "tcp");
        assert_eq!(field(v, "principal"), "anonymous");
        assert!(field(v, "remote").starts_with("tcp/127.0.0.1:"), "{v}");
        let rx: u64 = field(v, "rx_bytes").parse().unwrap();
        let tx: u64 = field(v, "tx_bytes").parse().unwrap();
        assert!(
            rx > 0 && tx > 0,
            "handshake and declarations cross every link: {v}"
        );
    }

    // Every node describes itself.
    let nodes = get_all(&a, "@/*/node").await;
    let ids: BTreeSet<String> = nodes
        .iter()
        .map(|(_, v, _)| field(v, "id").to_string())
        .collect();
    let want: BTreeSet<String> = [&a, &b, &c].iter().map(|s| s.id().to_string()).collect();
    assert_eq!(ids, want);
    for (_, v, _) in &nodes {
        assert_eq!(field(v, "mode"), "peer");
        assert_eq!(field(v, "site"), "", "peers have no site");
        assert_eq!(field(v, "version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(field(v, "links"), "2");
    }

    // A node that goes takes its links with it, on every side.
    c.close().await;
    wait_links(&a, &pairs(&[&a, &b])).await;

    // One that comes links up again.
    let d = open(&[ep(&a), ep(&b)]).await;
    assert!(d.wait_peers(2, T).await);
    wait_links(&b, &pairs(&[&a, &b, &d])).await;
}

#[tokio::test]
async fn declarations_are_listed_with_their_origin() {
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let sub = b.declare_subscriber("fleet/*/speed").await.unwrap();
    let q = b
        .declare_queryable("config/**")
        .complete(true)
        .await
        .unwrap();
    let tok = b.liveliness().declare_token("fleet/car1").unwrap();
    let a_id = a.id().to_string();
    let b_id = b.id().to_string();
    let mut subs = String::new();
    common::wait_until(T, async || {
        let v = get_all(&b, &format!("@/{a_id}/subscribers")).await;
        subs = v.first().map(|e| e.1.clone()).unwrap_or_default();
        subs.contains("fleet/*/speed")
    })
    .await
    .unwrap_or_else(|_| panic!("a never listed b's subscriber: {subs}"));
    assert!(
        subs.contains(&format!(r#"{{"key":"fleet/*/speed","origin":"{b_id}"}}"#)),
        "{subs}"
    );
    let local = get_all(&b, &format!("@/{b_id}/subscribers")).await;
    assert!(
        local[0]
            .1
            .contains(r#"{"key":"fleet/*/speed","origin":"local"}"#),
        "{local:?}"
    );
    let qs = get_all(&a, &format!("@/{b_id}/queryables")).await;
    assert!(
        qs[0]
            .1
            .contains(r#"{"key":"config/**","origin":"local","complete":true}"#),
        "{qs:?}"
    );
    // Each node's admin queryable is in everyone's tables too.
    assert!(qs[0].1.contains(&format!("@/{a_id}/**")), "{qs:?}");
    common::wait_until(T, async || {
        get_all(&a, &format!("@/{a_id}/tokens")).await[0]
            .1
            .contains("fleet/car1")
    })
    .await
    .unwrap();
    drop((sub, q, tok));
}

#[tokio::test]
async fn wildcards_never_reach_the_admin_space() {
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    // A subscriber and a queryable on `**` see neither admin samples nor admin queries.
    let all = b.declare_subscriber("**").await.unwrap();
    let qall = b.declare_queryable("**").await.unwrap();
    let p = a.declare_publisher("plain/x").unwrap();
    assert!(p.ready(T).await);
    a.put(&format!("@/{}/x", a.id()), "admin").await.unwrap();
    p.put("plain").await.unwrap();
    let s = tokio::time::timeout(T, all.recv()).await.unwrap().unwrap();
    assert_eq!(&*s.key, "plain/x", "the admin sample was delivered to `**`");

    let answers = get_all(&a, &format!("@/{}/node", b.id())).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let mut plain = a
        .get("plain/**")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    let query = tokio::time::timeout(T, qall.recv()).await.unwrap().unwrap();
    assert_eq!(
        query.key_expr().as_str(),
        "plain/**",
        "the admin query reached `**`"
    );
    drop(query);
    while plain.recv().await.is_some() {}
}

/// Checks `text` against the OpenMetrics text format: descriptors before their samples,
/// one TYPE per family, counters' samples named `_total`, numeric values, `# EOF` last.
/// Returns the samples: (name with labels, value).
fn parse_openmetrics(text: &str) -> Vec<(String, f64)> {
    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kw, name) = (it.next().unwrap(), it.next().unwrap());
            assert!(name.starts_with("hypha_"), "{line}");
            match kw {
                "TYPE" => {
                    let t = it.next().unwrap();
                    assert!(
                        ["counter", "gauge", "info", "histogram", "unknown"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "{line}"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown descriptor: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let name = series.split('{').next().unwrap();
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for kv in inner
                    .unwrap_or_else(|| panic!("labels: {line}"))
                    .split("\",")
                {
                    let (k, v) = kv
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("label: {line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(!v.contains('\n'), "{line}");
                }
            }
        }
        let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|sfx| {
            name.strip_suffix(sfx)
                .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
        });
        if histogram.is_some() {
            assert!(
                !name.ends_with("_bucket") || series.contains("le=\""),
                "a bucket without le: {line}"
            );
            samples.push((series.to_string(), value));
            continue;
        }
        let family = name
            .strip_suffix("_total")
            .filter(|f| types.get(*f).is_some_and(|t| t == "counter"));
        match family {
            Some(_) => {}
            None => {
                let t = types
                    .get(name)
                    .unwrap_or_else(|| panic!("sample without TYPE: {line}"));
                assert_ne!(t, "counter", "a counter sample must end in _total: {line}");
            }
        }
        samples.push((series.to_string(), value));
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_and_count_link_traffic() {
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let sub = b.declare_subscriber("m/x").await.unwrap();
    let p = a.declare_publisher("m/x").unwrap();
    assert!(p.ready(T).await);

    let value = |samples: &[(String, f64)], series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
    };
    let peer = b.id().to_string();
    let tx_series = format!("hypha_link_tx_bytes_total{{peer=\"{peer}\"}}");
    let before = parse_openmetrics(&a.metrics());
    let tx0 = value(&before, &tx_series);
    assert_eq!(value(&before, "hypha_links"), 1.0);
    assert_eq!(
        value(
            &before,
            &format!("hypha_link_up{{peer=\"{peer}\",kind=\"peer\",transport=\"tcp\"}}")
        ),
        1.0
    );
    for _ in 0..10 {
        p.put(vec![7u8; 1000]).await.unwrap();
    }
    for _ in 0..10 {
        tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    }
    let after = parse_openmetrics(&a.metrics());
    assert!(
        value(&after, &tx_series) >= tx0 + 10_000.0,
        "{tx0} -> {after:?}"
    );
    assert_eq!(value(&after, "hypha_published_total"), 10.0);
    assert_eq!(
        value(&after, "hypha_dropped_total{reason=\"congestion\"}"),
        0.0
    );

    // The same text through the admin space, from the other node.
    let m = get_all(&b, &format!("@/{}/metrics", a.id())).await;
    assert_eq!(m.len(), 1);
    assert!(
        m[0].2.starts_with("application/openmetrics-text"),
        "{:?}",
        m[0].2
    );
    let remote = parse_openmetrics(&m[0].1);
    assert!(value(&remote, &tx_series) >= tx0 + 10_000.0);
}

/// The JSON objects of a flat array's entries that contain `needle` (enough for the tests).
fn objects_with<'a>(json: &'a str, needle: &str) -> Vec<&'a str> {
    json.split("},{").filter(|o| o.contains(needle)).collect()
}

#[tokio::test]
async fn storages_and_routes_are_listed_across_nodes() {
    use hypha::keyexpr::OwnedKeyExpr;
    use hypha::storage::{self, BackendKind, StorageConfig};
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    let c = open(&[ep(&a), ep(&b)]).await;
    assert!(a.wait_peers(2, T).await && b.wait_peers(2, T).await && c.wait_peers(2, T).await);
    let mut cfg = StorageConfig::new(OwnedKeyExpr::autocanonize("fleet/**".to_string()).unwrap());
    cfg.backend = BackendKind::Memory;
    let store = storage::start(&b, cfg).await.unwrap();
    let sub = c.declare_subscriber("fleet/car1").await.unwrap();
    let (a_id, b_id, c_id) = (a.id().to_string(), b.id().to_string(), c.id().to_string());

    // Before any sample: listed, empty, no oldest sample.
    let empty = get_all(&c, "@/*/storages/**").await;
    assert_eq!(empty.len(), 1, "{empty:?}");
    assert_eq!(empty[0].0, format!("@/{b_id}/storages/0"));
    assert_eq!(field(&empty[0].1, "key"), "fleet/**");
    assert_eq!(field(&empty[0].1, "backend"), "memory");
    assert_eq!(field(&empty[0].1, "samples"), "0");
    assert_eq!(field(&empty[0].1, "oldest"), "null");

    let p = a.declare_publisher("fleet/car1").unwrap();
    assert!(p.ready(T).await);
    for v in ["1", "22", "333"] {
        p.put(v).await.unwrap();
    }
    a.put("fleet/car2", "4444").await.unwrap();
    a.delete("fleet/car2").await.unwrap();
    let mut last = String::new();
    common::wait_until(T, async || {
        last = get_all(&c, &format!("@/{b_id}/storages/**"))
            .await
            .pop()
            .map(|e| e.1)
            .unwrap_or_default();
        last.contains("\"samples\":5")
    })
    .await
    .unwrap_or_else(|_| panic!("the storage never counted 5 samples: {last}"));
    assert_eq!(field(&last, "keys"), "1", "car2 is deleted: {last}");
    assert_eq!(field(&last, "bytes"), "10", "1 + 2 + 3 + 4 + 0: {last}");
    assert_eq!(field(&last, "stored"), "5");
    let oldest: u64 = field(&last, "oldest_unix_us").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(
        oldest <= now && now - oldest < 60_000_000,
        "{oldest} vs {now}"
    );

    // Routes: from a, fleet/car1 goes to b (fleet/**) and c (fleet/car1); b's storage is a
    // local subscriber there.
    let routes = get_all(&c, &format!("@/{a_id}/routes")).await;
    assert_eq!(routes.len(), 1, "{routes:?}");
    let r = &routes[0].1;
    let car1 = objects_with(r, "\"key\":\"fleet/car1\"");
    assert_eq!(car1.len(), 1, "{r}");
    assert!(
        car1[0].contains(&b_id) && car1[0].contains(&c_id),
        "{}",
        car1[0]
    );
    assert!(car1[0].contains("\"local_subscribers\":0"), "{}", car1[0]);
    let on_b = get_all(&a, &format!("@/{b_id}/routes/**")).await;
    let all = objects_with(&on_b[0].1, "\"key\":\"fleet/**\"");
    assert!(all[0].contains("\"local_subscribers\":1"), "{on_b:?}");
    assert!(
        all[0].contains(&c_id),
        "b's fleet/** reaches c's fleet/car1: {on_b:?}"
    );
    assert!(!all[0].contains(&a_id), "nothing on a subscribes: {on_b:?}");
    let cached: u64 = field(r, "cached").parse().unwrap();
    assert!(cached >= 1, "a published on fleet/car1: {r}");

    // A storage that stops leaves the listing.
    store.close().await;
    assert!(
        get_all(&c, &format!("@/{b_id}/storages/**"))
            .await
            .is_empty()
    );
    drop(sub);
}

#[tokio::test]
async fn storage_metrics_move_and_parse() {
    use hypha::keyexpr::OwnedKeyExpr;
    use hypha::storage::{self, BackendKind, StorageConfig};
    let a = open(&[]).await;
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let mut cfg = StorageConfig::new(OwnedKeyExpr::autocanonize("st/**".to_string()).unwrap());
    cfg.backend = BackendKind::Memory;
    let store = storage::start(&a, cfg).await.unwrap();
    let value = |samples: &[(String, f64)], series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
    };
    let before = parse_openmetrics(&a.metrics());
    assert_eq!(
        value(&before, "hypha_storage_samples{storage=\"st/**\"}"),
        0.0
    );
    assert_eq!(
        value(
            &before,
            "hypha_storage_write_seconds_count{storage=\"st/**\"}"
        ),
        0.0
    );
    assert_eq!(
        value(&before, "hypha_replay_lag_seconds_count{storage=\"st/**\"}"),
        0.0
    );

    let p = b.declare_publisher("st/x").unwrap();
    assert!(p.ready(T).await);
    for i in 0..4 {
        p.put(format!("v{i}")).await.unwrap();
    }
    let mut m = Vec::new();
    common::wait_until(T, async || {
        m = parse_openmetrics(&a.metrics());
        value(&m, "hypha_storage_samples{storage=\"st/**\"}") == 4.0
    })
    .await
    .unwrap_or_else(|_| panic!("the storage never held 4 samples: {m:?}"));
    // One observation per batch the writer stored (1 to 4 batches for 4 samples).
    let writes = value(&m, "hypha_storage_write_seconds_count{storage=\"st/**\"}");
    assert!((1.0..=4.0).contains(&writes), "{writes} batches");
    assert_eq!(
        writes,
        store
            .stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed) as f64
    );
    assert!(value(&m, "hypha_storage_write_seconds_sum{storage=\"st/**\"}") > 0.0);
    assert_eq!(value(&m, "hypha_storage_keys{storage=\"st/**\"}"), 1.0);
    assert_eq!(value(&m, "hypha_storage_bytes{storage=\"st/**\"}"), 8.0);
    // A latest-value query is not a replay; a history query is.
    let latest = get_all(&b, "st/x").await;
    assert_eq!(latest.len(), 1, "{latest:?}");
    let replay = get_all(&b, "st/**?_time=[now(-1m)..]").await;
    assert_eq!(replay.len(), 4, "{replay:?}");
    let mut after = Vec::new();
    common::wait_until(T, async || {
        after = parse_openmetrics(&a.metrics());
        value(&after, "hypha_replay_lag_seconds_count{storage=\"st/**\"}") == 1.0
    })
    .await
    .unwrap_or_else(|_| panic!("one replay never counted: {after:?}"));
    // Every replay is at most the largest bucket's bound (+Inf counts them all).
    assert_eq!(
        value(
            &after,
            "hypha_replay_lag_seconds_bucket{le=\"+Inf\",storage=\"st/**\"}"
        ),
        1.0
    );
    store.close().await;
}

/// Link RTT: QUIC links carry the QUIC stack's estimate, TCP and TLS links the kernel's
/// (`tcpi_rtt` through socket diagnostics): `rtt_us` in `@/<id>/links/<peer>` and
/// `hypha_link_rtt_seconds{peer}`, on both ends. A unix link has none.
#[tokio::test]
async fn link_rtt_is_reported_for_quic_tcp_and_tls_links() {
    for proto in ["quic", "tcp", "tls"] {
        let (a, b) = common::pair(proto).await;
        let links = wait_links(&a, &pairs(&[&a, &b])).await;
        assert_eq!(links.len(), 2);
        for (k, json, _) in &links {
            assert_eq!(field(json, "transport"), proto, "{k}: {json}");
            let rtt: u64 = field(json, "rtt_us").parse().unwrap();
            assert!(rtt > 0 && rtt < 1_000_000, "{k}: {json}");
        }
        let series = format!("hypha_link_rtt_seconds{{peer=\"{}\"}}", b.id());
        let m = parse_openmetrics(&a.metrics());
        let rtt = m
            .iter()
            .find(|(s, _)| *s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{proto}: no {series} in {m:?}"));
        assert!(rtt > 0.0 && rtt < 1.0, "{proto}: {rtt}");
    }

    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix/{}", dir.path().join("n.sock").display());
    let c = hypha::open(common::node_config(&sock, &[])).await.unwrap();
    let d = hypha::open(common::node_config(
        &sock.replace("n.sock", "m.sock"),
        std::slice::from_ref(&sock),
    ))
    .await
    .unwrap();
    assert!(c.wait_peers(1, T).await && d.wait_peers(1, T).await);
    for (k, json, _) in wait_links(&c, &pairs(&[&c, &d])).await {
        assert_eq!(field(&json, "transport"), "unix", "{k}: {json}");
        assert!(!json.contains("\"rtt_us\""), "{k}: {json}");
    }
    assert!(!c.metrics().contains("hypha_link_rtt_seconds{"));
}

/// `[metrics] prefixes`: `hypha_prefix_{samples,bytes}_total{prefix}` count the samples
/// published here and received from neighbours on keys in the prefix, and nothing else.
#[tokio::test]
async fn prefix_counters_count_matching_keys_only() {
    let mut c = common::node_config("tcp/127.0.0.1:0", &[]);
    c.metrics.prefixes = vec!["fleet/*".into(), "zzz/**".into()];
    let a = hypha::open(c).await.unwrap();
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let sub = a.declare_subscriber("**").await.unwrap();
    // Published here: 3 x 100 B on fleet/x (counted), 2 on misc/y (not).
    let p = a.declare_publisher("fleet/x").unwrap();
    let q = a.declare_publisher("misc/y").unwrap();
    // From the neighbour: 4 x 50 B on fleet/y (counted), 2 on fleet/a/b (`*` is one chunk).
    let r = b.declare_publisher("fleet/y").unwrap();
    let t = b.declare_publisher("fleet/a/b").unwrap();
    assert!(r.ready(T).await && t.ready(T).await);
    for _ in 0..3 {
        p.put(vec![1u8; 100]).await.unwrap();
    }
    for _ in 0..2 {
        q.put(vec![2u8; 1000]).await.unwrap();
        t.put(vec![3u8; 1000]).await.unwrap();
    }
    for _ in 0..4 {
        r.put(vec![4u8; 50]).await.unwrap();
    }
    for _ in 0..11 {
        tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    }
    let m = parse_openmetrics(&a.metrics());
    let value = |series: &str| {
        m.iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in {m:?}"))
    };
    assert_eq!(value("hypha_prefix_samples_total{prefix=\"fleet/*\"}"), 7.0);
    assert_eq!(value("hypha_prefix_bytes_total{prefix=\"fleet/*\"}"), 500.0);
    assert_eq!(value("hypha_prefix_samples_total{prefix=\"zzz/**\"}"), 0.0);
    assert_eq!(value("hypha_prefix_bytes_total{prefix=\"zzz/**\"}"), 0.0);
    // Opt-in: a node without prefixes has no such series.
    assert!(!b.metrics().contains("hypha_prefix_"));
}

/// `hypha_prefix_dropped_total{prefix}` and `@/<id>/node`'s `prefixes`: copies of a prefix's
/// samples dropped for a full link, counted as the link counts them. The subscriber's callback
/// holds its link's reader, so the publisher's link fills and drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_counters_count_the_copies_dropped_for_a_full_link() {
    let mut c = common::node_config("tcp/127.0.0.1:0", &[]);
    c.metrics.prefixes = vec!["fleet/*".into(), "zzz/**".into()];
    c.queues.lane_bytes = 4096;
    let a = hypha::open(c).await.unwrap();
    let b = open(&[ep(&a)]).await;
    assert!(a.wait_peers(1, T).await && b.wait_peers(1, T).await);
    let _slow = b
        .declare_subscriber("fleet/x")
        .callback(|_| std::thread::sleep(Duration::from_millis(20)))
        .unwrap();
    let p = a
        .declare_publisher("fleet/x")
        .unwrap()
        .congestion_control(hypha::CongestionControl::Drop);
    assert!(p.ready(T).await);
    for _ in 0..600 {
        p.put(vec![1u8; 16 * 1024]).await.unwrap();
    }
    let m = parse_openmetrics(&a.metrics());
    let value = |series: &str| {
        m.iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in {m:?}"))
    };
    let link = value(&format!(
        "hypha_link_dropped_total{{peer=\"{}\",reason=\"congestion\"}}",
        b.id()
    ));
    assert!(link > 0.0, "the link never filled: {m:?}");
    assert_eq!(
        value("hypha_prefix_dropped_total{prefix=\"fleet/*\"}"),
        link
    );
    assert_eq!(
        value("hypha_prefix_samples_total{prefix=\"fleet/*\"}"),
        600.0
    );
    assert_eq!(value("hypha_prefix_dropped_total{prefix=\"zzz/**\"}"), 0.0);
    // The same counters in the node's admin entry (what the live page reads).
    let node = get_all(&a, &format!("@/{}/node", a.id())).await;
    let json = &node[0].1;
    let fleet = &json[json.find("\"prefix\":\"fleet/*\"").unwrap()..];
    let dropped: f64 = field(fleet, "dropped").parse().unwrap();
    assert!(dropped >= link, "{json}");
    assert_eq!(field(fleet, "samples"), "600", "{json}");
}
