//! The router backbone on real sockets: three routers of three sites in a triangle over TCP on
//! loopback, a client at two of them. Samples take the cheap two-hop path, the admin space
//! shows the link-state routes, and when the middle router dies traffic moves to the direct
//! link with no duplicate and the publishing client's token never flaps.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{T, wait_until};
use hypha::{Config, Session};
use hypha_core::wire::Mode;
use std::time::Duration;

async fn router(site: &str, backbone: &[(String, u32)]) -> Session {
    let mut c = Config::default();
    c.mdns = false;
    c.mode = Mode::Router;
    c.lease_ms = hypha::config::ROUTER_LEASE_MS;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    c.router.site = site.to_string();
    // One cost per router: each link's cost is its dialer's (the listener adopts it).
    c.router.cost = backbone.first().map(|(_, cost)| *cost);
    c.router.backbone = backbone.iter().map(|(e, _)| e.parse().unwrap()).collect();
    hypha::open(c).await.unwrap()
}

async fn client(router: &Session) -> Session {
    let mut c = Config::default();
    c.mdns = false;
    c.mode = Mode::Client;
    c.listen = Vec::new();
    c.connect = vec![router.info().listening[0].clone()];
    let s = hypha::open(c).await.unwrap();
    assert!(s.wait_peers(1, T).await, "client not linked");
    s
}

fn ep(s: &Session) -> String {
    s.info().listening[0].to_string()
}

/// The `@/<router>/backbone` entry of `router`, asked through `via`.
async fn backbone(via: &Session, router: &Session) -> serde_json::Value {
    let mut r = via
        .get(&format!("@/{}/backbone", router.id()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    let reply = r.recv().await.expect("a backbone entry");
    serde_json::from_slice(&reply.result.expect("not an error").payload).unwrap()
}

fn next_hop(b: &serde_json::Value, to: &Session) -> Option<(String, u64)> {
    b["routes"].as_array()?.iter().find_map(|r| {
        (r["router"] == to.id().to_string()).then(|| {
            (
                r["next"].as_str().unwrap().to_string(),
                r["cost"].as_u64().unwrap(),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_cheap_path_then_reroute_when_the_middle_router_dies() {
    // A listens; C dials A (60); B dials C and A (20 each).
    let a = router("A", &[]).await;
    let c = router("C", &[(ep(&a), 60)]).await;
    let b = router("B", &[(ep(&c), 20), (ep(&a), 20)]).await;
    let ca = client(&a).await;
    let cc = client(&c).await;
    // The link state settles: A reaches C through B at cost 40.
    if wait_until(T, async || {
        next_hop(&backbone(&ca, &a).await, &c)
            .is_some_and(|(n, cost)| n == b.id().to_string() && cost == 40)
    })
    .await
    .is_err()
    {
        // What each router believes, for whoever reads the failure.
        eprintln!("A={} B={} C={}", a.id(), b.id(), c.id());
        for r in [&a, &b, &c] {
            eprintln!("{}", backbone(&ca, r).await);
        }
        panic!("no A→B→C route at cost 40");
    }
    // Each router's node entry names its site (what the live page groups routers by).
    // Asked through A's client: the admin space crosses the backbone.
    for (r, site) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        let mut q = ca
            .get(&format!("@/{}/node", r.id()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap();
        let reply = q.recv().await.expect("a node entry");
        let v: serde_json::Value =
            serde_json::from_slice(&reply.result.expect("not an error").payload).unwrap();
        assert_eq!(
            (v["mode"].as_str(), v["site"].as_str()),
            (Some("router"), Some(site))
        );
    }
    let sub = cc.declare_subscriber("bb/**").stream().unwrap();
    assert!(sub.ready(T).await, "subscriber not ready");
    let alive = cc.liveliness().declare_subscriber("alive/**").unwrap();
    let _token = ca.liveliness().declare_token("alive/ca").unwrap();
    let first = tokio::time::timeout(T, alive.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*first.key, "alive/ca");
    // Queries across sites: a queryable at A's client, 50 gets from C's client, exactly one
    // reply each.
    let q = ca.declare_queryable("svc/**").stream().unwrap();
    assert!(q.ready(T).await, "queryable not known across sites");
    let served = tokio::spawn(async move {
        while let Some(query) = q.recv().await {
            let key = query.key_expr().as_str().to_string();
            let _ = query.reply(&key, "pong").await;
        }
    });
    for i in 0..50 {
        let mut r = cc
            .get(&format!("svc/{i}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        let mut n = 0;
        while let Some(reply) = r.recv().await {
            assert_eq!(&reply.result.unwrap().payload[..], b"pong");
            n += 1;
        }
        assert_eq!(n, 1, "get {i}: {n} replies");
    }
    served.abort();
    let p = ca.declare_publisher("bb/x").unwrap();
    assert!(
        p.ready(T).await && p.wait_matching(T).await,
        "no match across sites"
    );
    for i in 0..100 {
        p.put(format!("{i}")).await.unwrap();
    }
    for i in 0..100 {
        let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
        assert_eq!(
            &s.payload[..],
            format!("{i}").as_bytes(),
            "in order, none missing"
        );
    }
    // The middle router dies: A re-routes to C over the direct link.
    let b_id = b.id().to_string();
    b.close().await;
    wait_until(T, async || {
        next_hop(&backbone(&ca, &a).await, &c).is_some_and(|(n, _)| n != b_id)
    })
    .await
    .expect("no re-route around the dead router");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    let mut i = 100;
    while got.len() < 50 && tokio::time::Instant::now() < deadline {
        p.put(format!("{i}")).await.unwrap();
        i += 1;
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(20), sub.recv()).await {
            got.push(String::from_utf8_lossy(&s.payload).to_string());
        }
    }
    assert!(got.len() >= 50, "delivery did not resume: {got:?}");
    assert_eq!(sub.duplicates(), 0, "no duplicate across the re-route");
    // The token of A's client stayed alive for C's client (A was reachable all along).
    assert!(
        alive.try_recv().is_none(),
        "token flapped during the re-route"
    );
}

/// A client configured with one router learns the site's other router from it and fails over
/// to it when its router dies: its subscription works again, with no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_to_an_alternate_its_router_told_it_of() {
    let r1 = router("B", &[]).await;
    let r2 = router("B", &[(ep(&r1), 10)]).await;
    let other = router("A", &[(ep(&r2), 10)]).await;
    // The subscriber knows only r1; the publisher is at the other site.
    let sub_client = client(&r1).await;
    let pub_client = client(&other).await;
    let sub = sub_client.declare_subscriber("fo/**").stream().unwrap();
    assert!(sub.ready(T).await);
    let p = pub_client.declare_publisher("fo/x").unwrap();
    assert!(p.ready(T).await && p.wait_matching(T).await);
    p.put("before").await.unwrap();
    let s = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&s.payload[..], b"before");
    // r1 tells its client of r2 (at link-up and when routers appear).
    assert!(
        sub_client.wait_alternates(T).await,
        "r1 never told its client of r2"
    );
    let learnt = sub_client.alternates();
    assert!(
        learnt.contains(&ep(&r2).parse().unwrap()),
        "learnt {learnt:?}, not r2 at {}",
        ep(&r2)
    );
    r1.close().await;
    let deadline = tokio::time::Instant::now() + T;
    let mut i = 0;
    let got = loop {
        p.put(format!("after{i}")).await.unwrap();
        i += 1;
        if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {
            break String::from_utf8_lossy(&s.payload).to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never failed over to r2"
        );
    };
    assert!(got.starts_with("after"), "{got}");
    assert_eq!(sub.duplicates(), 0);
    let _ = (r2, other);
}

/// A router behind NAT tells its neighbours' clients the public endpoint it was configured to
/// advertise (`[router] advertise`), not the address it listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_advertise_is_learnt_at_its_public_endpoint() {
    let r1 = router("B", &[]).await;
    let mut c = Config::default();
    c.mdns = false;
    c.mode = Mode::Router;
    c.lease_ms = hypha::config::ROUTER_LEASE_MS;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    c.router.site = "B".into();
    c.router.backbone = vec![ep(&r1).parse().unwrap()];
    let public: hypha_transports::Endpoint = "tcp/198.51.100.7:7447".parse().unwrap();
    c.router.advertise = vec![public.clone()];
    let r2 = hypha::open(c).await.unwrap();
    let cl = client(&r1).await;
    assert!(
        cl.wait_alternates(T).await,
        "r1 never told its client of r2"
    );
    let learnt = cl.alternates();
    assert!(learnt.contains(&public), "learnt {learnt:?}");
    let own: hypha_transports::Endpoint = ep(&r2).parse().unwrap();
    assert!(
        !learnt.contains(&own),
        "the listener {own} was advertised besides {public}: {learnt:?}"
    );
    // Only network endpoints: a unix one is refused when the session opens.
    let mut bad = Config::default();
    bad.mdns = false;
    bad.mode = Mode::Router;
    bad.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    bad.router.advertise = vec!["unix//tmp/hypha-adv.sock".parse().unwrap()];
    let err = match hypha::open(bad).await {
        Ok(_) => panic!("a unix endpoint to advertise was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("router.advertise"), "{err}");
}
