//! Clients on real sockets in network namespaces.
//!
//! - A client behind a NAT (nftables masquerade; its namespace has no address the others can
//!   route to, so it can only dial out) attaches to a router and does pub/sub, get and
//!   liveliness through it with a peer on the public side.
//! - Client failover: a client lists two routers; the first is SIGKILLed; the client moves to
//!   the second and its subscription works again.
//!
//! Needs root, `ip netns` and `nft` (Debian package `nftables`): without them each test prints
//! a skip, or fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::netns::{Lab, unavailable};
use hypha_tests::{Proc, require_or_skip};
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

fn missing() -> Option<String> {
    unavailable().or_else(
        || match std::process::Command::new("nft").arg("--version").output() {
            Ok(o) if o.status.success() => None,
            _ => Some("`nft` is not installed (apt-get install nftables)".into()),
        },
    )
}

fn spawn(lab: &Lab, host: usize, name: &str, args: &[&str]) -> Proc {
    let mut c = lab.command(host, CLI);
    c.args(args).arg("--no-mdns").env("HYPHA_LOG", "warn");
    Proc::spawn(name, c).unwrap()
}

/// Reads until a sample on `key` arrives.
async fn sample_on(p: &mut Proc, key: &str) -> serde_json::Value {
    p.wait_json(T, |v| v["event"] == "sample" && v["key"] == key)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_nat_does_everything_through_its_router() {
    if !require_or_skip(missing()) {
        return;
    }
    let mut lab = Lab::new(2, 5).unwrap(); // host 0: router, host 1: a peer
    let (nat, private) = lab.add_behind_nat(7).unwrap();
    let router_ep = format!("quic/{}:7447", lab.addr(0));
    let mut router = spawn(&lab, 0, "router", &["router", "--listen", &router_ep]);
    router
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    let mut peer = spawn(
        &lab,
        1,
        "peer",
        &[
            "peer",
            "--listen",
            &format!("quic/{}:0", lab.addr(1)),
            "--connect",
            &router_ep,
            "--sub",
            "fleet/**",
            "--token",
            "fleet/peer",
            "--pub",
            "fleet/peer/speed",
            "--value",
            "p{i}",
            "--interval-ms",
            "100",
        ],
    );
    peer.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let mut client = spawn(
        &lab,
        private,
        "client",
        &[
            "peer",
            "--mode",
            "client",
            "--connect",
            &router_ep,
            "--sub",
            "fleet/**",
            "--liveliness",
            "fleet/*",
            "--token",
            "fleet/client",
            "--pub",
            "fleet/client/speed",
            "--value",
            "c{i}",
            "--interval-ms",
            "100",
        ],
    );
    client
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    // Peer -> router -> client, and client -> router -> peer.
    sample_on(&mut client, "fleet/peer/speed").await;
    sample_on(&mut peer, "fleet/client/speed").await;
    // The client sees the peer's token through the router (the event may have come before the
    // samples read above).
    let seen_alive = client.seen.iter().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["event"] == "alive" && v["key"] == "fleet/peer")
    });
    if !seen_alive {
        client
            .wait_json(T, |v| v["event"] == "alive" && v["key"] == "fleet/peer")
            .await
            .unwrap();
    }
    // A get from behind the NAT, answered by a queryable on the public side.
    let _qable = spawn(
        &lab,
        1,
        "queryable",
        &[
            "queryable",
            "cfg/**",
            "from-the-peer-side",
            "--connect",
            &router_ep,
            "--listen",
            &format!("tcp/{}:0", lab.addr(1)),
        ],
    );
    let mut get = lab.command(private, CLI);
    get.args([
        "get",
        "cfg/x",
        "--mode",
        "client",
        "--connect",
        &router_ep,
        "--no-mdns",
        "--target",
        "all",
        "--timeout-ms",
        "3000",
    ]);
    // The queryable may still be connecting: retry within the deadline.
    let deadline = tokio::time::Instant::now() + T;
    let out = loop {
        let o = get.output().await.unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if o.status.success() && text.contains("from-the-peer-side") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "get through the NAT got nothing: {text} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    assert!(out.contains("cfg/x"), "{out}");
    // Nothing on the public side can reach the client: it dialled out through the NAT.
    let route = std::process::Command::new("ip")
        .args(["-n", lab.ns(0), "route", "get", "192.168.7.2"])
        .output()
        .unwrap();
    assert!(
        !route.status.success(),
        "the private host is routable: not a NAT"
    );
    let _ = nat;
    // The client goes: its token disappears for the peer's side (peer hears no more samples
    // from it) — and the peer's subscription still works.
    client.signal("KILL").unwrap();
    peer.drain();
    sample_on(&mut peer, "fleet/peer/speed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_to_the_second_router_and_its_subscription_works_again() {
    if !require_or_skip(missing()) {
        return;
    }
    // Hosts: 0 router A, 1 router B, 2 the publishing client; the subscribing client is behind
    // a NAT (it only dials out).
    let mut lab = Lab::new(3, 6).unwrap();
    let (_, private) = lab.add_behind_nat(8).unwrap();
    let a = format!("quic/{}:7447", lab.addr(0));
    let b = format!("quic/{}:7447", lab.addr(1));
    let mut ra = spawn(&lab, 0, "router-a", &["router", "--listen", &a]);
    ra.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    // Router B links to router A, so that while the subscriber is on A it hears B's client.
    let mut rb = spawn(
        &lab,
        1,
        "router-b",
        &["router", "--listen", &b, "--connect", &a],
    );
    rb.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let mut publisher = spawn(
        &lab,
        2,
        "publisher",
        &[
            "peer",
            "--mode",
            "client",
            "--connect",
            &b,
            "--pub",
            "plant/temp",
            "--value",
            "{i}",
            "--interval-ms",
            "50",
        ],
    );
    publisher
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    // A short lease, so that the dead router is noticed quickly (SIGKILL sends no goodbye).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(&config, "lease_ms = 2000\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut sub = spawn(
        &lab,
        private,
        "subscriber",
        &[
            "peer",
            "--config",
            &config,
            "--mode",
            "client",
            "--connect",
            &a,
            "--connect",
            &b,
            "--sub",
            "plant/**",
        ],
    );
    sub.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    // Through A (publisher -> B -> A -> subscriber).
    sample_on(&mut sub, "plant/temp").await;
    ra.signal("KILL").unwrap();
    let _ = ra.exit_code(T).await;
    sub.drain();
    // Failover: the client dials B, replays its subscription, samples flow again. Samples
    // already queued before the kill may still be read first: wait for a fresh one.
    let before = sub.seen.len();
    let v = sample_on(&mut sub, "plant/temp").await;
    assert!(sub.seen.len() > before, "{v}");
    let fresh_deadline = tokio::time::Instant::now() + T;
    let mut n = 0;
    while n < 5 {
        assert!(tokio::time::Instant::now() < fresh_deadline);
        sample_on(&mut sub, "plant/temp").await;
        n += 1;
    }
}
