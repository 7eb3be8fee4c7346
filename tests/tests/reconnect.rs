//! Links that break are redialled; declarations are replayed on the new link, so subscriptions
//! work again without restarting anything else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha::Config;
use hypha_tests::{Proc, free_port, wait_until};
use std::time::Duration;
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

fn peer(args: &[&str]) -> Proc {
    let mut c = Command::new(CLI);
    c.arg("peer").arg("--no-mdns").args(args);
    Proc::spawn("peer", c).unwrap()
}

/// The peer we dial dies and comes back on the same endpoint: we redial it and our
/// publications reach its new subscriber.
#[tokio::test]
async fn a_restarted_subscriber_peer_is_redialled() {
    // The one justified use of `free_port` (racy): the restarted peer must come back on the
    // endpoint we were configured to dial, so the port is chosen before the first start.
    let port = free_port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    c.connect = vec![ep.parse().unwrap()];
    let s = hypha::open(c).await.unwrap();
    let p = s.declare_publisher("rc/data").unwrap();
    for round in 0..2 {
        let mut child = peer(&["--listen", &ep, "--sub", "rc/**"]);
        child.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        assert!(
            p.wait_matching(T).await,
            "round {round}: subscription not (re)declared"
        );
        let deadline = tokio::time::Instant::now() + T;
        let mut i = 0;
        let got = loop {
            p.put(format!("r{round}-{i}")).await.unwrap();
            i += 1;
            if let Some(l) = child.line(Duration::from_millis(100)).await {
                break l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: nothing received"
            );
        };
        assert!(got.contains(&format!("r{round}-")), "{got}");
        child.signal("KILL").unwrap();
        let _ = child.exit_code(T).await;
        // Our link to it fails; the tables forget its subscription (no event says so: poll).
        wait_until(T, async || !p.matching_status())
            .await
            .unwrap_or_else(|_| panic!("round {round}: dead peer still matches after {T:?}"));
    }
}

/// A publisher peer that dialled us dies; a new one dials in: our subscription is declared to
/// it and its samples reach us.
#[tokio::test]
async fn a_restarted_publisher_peer_gets_our_subscription_again() {
    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    let s = hypha::open(c).await.unwrap();
    let ep = s.info().listening[0].to_string();
    let sub = s.declare_subscriber("rc2/**").stream().unwrap();
    for round in 0..2 {
        let value = format!("round{round}-{{i}}");
        let mut child = peer(&[
            "--connect",
            &ep,
            "--pub",
            "rc2/x",
            "--value",
            &value,
            "--interval-ms",
            "20",
        ]);
        child.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        let sample = tokio::time::timeout(T, async {
            loop {
                let s = sub.recv().await.unwrap();
                if s.payload_str()
                    .is_some_and(|p| p.starts_with(&format!("round{round}-")))
                {
                    return s;
                }
            }
        })
        .await
        .expect("no sample from the restarted publisher");
        assert_eq!(&*sample.key, "rc2/x");
        child.signal("KILL").unwrap();
        let _ = child.exit_code(T).await;
    }
}

/// What we do once the peer at `ep` (which dialled us, and told us where it listens) dies by
/// `signal`: bind its port ourselves and wait up to `window` for a connection from our node
/// (a redial). Returns how long the redial took, or `None` if none came.
async fn redialled_after(s: &hypha::Session, signal: &str, window: Duration) -> Option<Duration> {
    let ep = s.info().listening[0].to_string();
    let mut child = peer(&[
        "--listen",
        "tcp/127.0.0.1:0",
        "--connect",
        &ep,
        "--sub",
        "bye/**",
    ]);
    let ready = child.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let port = hypha_tests::listening_endpoint(&ready)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    // Its subscription came over the link after its self-announcement (gossip goes first on a
    // new face): from now on we know where it listens.
    let p = s.declare_publisher("bye/x").unwrap();
    assert!(p.wait_matching(T).await, "{signal}: the peer never linked");
    child.signal(signal).unwrap();
    let code = child.exit_code(T).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(
        wait_until(T, async || !p.matching_status()).await.is_ok(),
        "{signal}: the dead peer still matches"
    );
    let l = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let r = tokio::time::timeout(window, l.accept()).await;
    eprintln!(
        "{signal} (exit {code:?}): redial {:?}",
        r.as_ref().ok().map(|_| t0.elapsed())
    );
    r.ok().map(|c| {
        c.unwrap();
        t0.elapsed()
    })
}

/// Issue 16 (churn): a peer that closes its session with a goodbye (`Shutdown`, as `hypha peer`
/// does on SIGTERM) is forgotten and never dialled again; a peer that vanishes without one
/// (SIGKILL) is dialled again at the endpoint it announced.
#[tokio::test]
async fn a_peer_that_said_goodbye_is_not_redialled_and_a_killed_one_is() {
    let mut c = Config::default();
    c.mdns = false;
    c.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    let s = hypha::open(c).await.unwrap();
    // Baseline: a killed peer is redialled (within its dial backoff: 100 ms doubling).
    let took = redialled_after(&s, "KILL", T)
        .await
        .expect("a peer that died without a goodbye was never redialled");
    // Twice as long as that redial took, and at least 2 s: no dial comes.
    let window = (took * 2).max(Duration::from_secs(2));
    let redial = redialled_after(&s, "TERM", window).await;
    assert!(
        redial.is_none(),
        "a peer that said goodbye was dialled again after {redial:?}"
    );
}
