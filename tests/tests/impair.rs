//! The userspace impairment bridge (`hypha-impair`) between two network namespaces, measured
//! with real UDP sockets (`hypha-udp` echo in B, ping from A): a 50 ms one-way delay gives round
//! trips of 100 ms and more; 30 % seeded loss keeps a fraction of a 1000-datagram burst in a sane
//! band and the bridge's counters account for every datagram; a cut lets nothing through and
//! uncut restores traffic.
//!
//! Needs root and `ip netns`: without them each test prints a skip, or fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::impair::ImpairedLink;
use hypha_tests::netns::{Lab, unavailable};
use hypha_tests::{Proc, require_or_skip, wait_until};
use serde_json::Value;
use std::time::Duration;

const IMPAIR: &str = env!("CARGO_BIN_EXE_hypha-impair");
const UDP: &str = env!("CARGO_BIN_EXE_hypha-udp");
const T: Duration = Duration::from_secs(20);

/// Starts a ping from side A of `link` (host 0 of `lab`) to `target`.
fn ping(lab: &Lab, link: &ImpairedLink, target: &str, count: u64, interval_us: u64) -> Proc {
    let mut c = lab.command(0, UDP);
    c.args([
        "ping",
        "--to",
        target,
        "--bind",
        &format!("{}:0", link.a.ip),
    ])
    .args(["--count", &count.to_string()])
    .args(["--interval-us", &interval_us.to_string()]);
    Proc::spawn("ping", c).unwrap()
}

/// Reads `n` distinct replies from `p`; their round-trip times in µs.
async fn replies(p: &mut Proc, n: usize, timeout: Duration) -> anyhow::Result<Vec<u64>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rtts = Vec::new();
    while rtts.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = p
            .wait_json(left, |v| v["event"] == "reply" && v["dup"] == false)
            .await
            .map_err(|e| anyhow::anyhow!("{} of {n} replies: {e}", rtts.len()))?;
        rtts.push(v["rtt_us"].as_u64().unwrap_or(0));
    }
    Ok(rtts)
}

fn counter(stats: &Value, dir: &str, name: &str) -> u64 {
    stats[dir][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {dir}.{name} in {stats}"))
}

/// Counters of `after` minus those of `before`.
fn delta(before: &Value, after: &Value, dir: &str, name: &str) -> u64 {
    counter(after, dir, name) - counter(before, dir, name)
}

/// Polls the bridge's counters until `done` holds for them, and returns them; fails naming
/// `what` and the last counters after `T`.
async fn stats_when(link: &ImpairedLink, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(T, async || {
        let Ok(s) = link.stats().await else {
            return false;
        };
        let ok = done(&s);
        last = s;
        ok
    })
    .await;
    assert!(ok.is_ok(), "the bridge never {what}: {last}");
    last
}

/// Every packet the bridge read in direction `d` has had its fate (forwarded or dropped) and
/// none is queued.
fn drained(s: &Value, d: &str) -> bool {
    counter(s, d, "queued") == 0
        && counter(s, d, "read") == counter(s, d, "forwarded") + counter(s, d, "dropped")
}

/// Waits until the bridge holds no packet in either direction and has given each one it read a
/// fate (forwarded or dropped), then returns its counters: a phase's `before`, so that a packet
/// of the phase before (read then, forwarded or dropped after the 50 ms delay) is not counted
/// in this one (a CI run counted one such drop among 1,000 pings: 702 dropped, 701 lost).
async fn quiet(link: &ImpairedLink) -> Value {
    stats_when(link, "went quiet", |s| {
        drained(s, "a_to_b") && drained(s, "b_to_a")
    })
    .await
}

/// Waits until the bridge has read `n` more packets A→B than in `before`, B has echoed each one
/// forwarded, and the bridge holds none in either queue: everything sent is delivered or dropped.
async fn settled(link: &ImpairedLink, before: &Value, n: u64) -> Value {
    stats_when(link, &format!("settled after {n} packets"), |s| {
        delta(before, s, "a_to_b", "read") >= n
            && delta(before, s, "b_to_a", "read") >= delta(before, s, "a_to_b", "forwarded")
            && counter(s, "a_to_b", "queued") == 0
            && drained(s, "b_to_a")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_loss_and_cut_through_the_userspace_bridge() {
    if !require_or_skip(unavailable()) {
        return;
    }
    let lab = Lab::isolated(2, 1).unwrap();
    let link = ImpairedLink::spawn(IMPAIR, &lab, 0, 1, 0, &["--delay", "50ms", "--seed", "16"])
        .await
        .unwrap();
    let mut c = lab.command(1, UDP);
    c.args(["echo", "--bind", &format!("{}:0", link.b.ip)]);
    let mut echo = Proc::spawn("echo", c).unwrap();
    let target = echo.wait_json(T, |v| v["event"] == "ready").await.unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. Delay: 50 ms each way, no loss.
    let mut p = ping(&lab, &link, &target, 10, 20_000);
    let rtts = replies(&mut p, 10, T).await.unwrap();
    drop(p);
    let (min, max) = (*rtts.iter().min().unwrap(), *rtts.iter().max().unwrap());
    let avg = rtts.iter().sum::<u64>() / rtts.len() as u64;
    eprintln!("delay 50 ms each way: RTT min {min} µs, avg {avg} µs, max {max} µs");
    assert!(
        min >= 100_000,
        "a round trip took {min} µs, under 2 × 50 ms"
    );
    assert!(max < 400_000, "a round trip took {max} µs");

    // 2. Loss: 30 % from A to B, seeded, none back; 1000 datagrams.
    link.command("loss 30 a2b").await.unwrap();
    let before = quiet(&link).await;
    let mut p = ping(&lab, &link, &target, 1000, 300);
    let after = settled(&link, &before, 1000).await;
    let read = delta(&before, &after, "a_to_b", "read");
    let fwd = delta(&before, &after, "a_to_b", "forwarded");
    let lost = delta(&before, &after, "a_to_b", "dropped_loss");
    assert_eq!(
        read, 1000,
        "the bridge read other packets than the pings: {after}"
    );
    assert_eq!(
        fwd + lost,
        1000,
        "every datagram forwarded or lost: {after}"
    );
    assert_eq!(
        delta(&before, &after, "a_to_b", "dropped"),
        lost,
        "drops other than losses: before {before}, after {after}"
    );
    assert_eq!(
        delta(&before, &after, "b_to_a", "read"),
        fwd,
        "B echoed each once"
    );
    assert_eq!(delta(&before, &after, "b_to_a", "forwarded"), fwd);
    // The ping receives exactly what the bridge forwarded back (an event per reply; the
    // bridge has nothing left to deliver, so a count above this would be a duplicate).
    let got = replies(&mut p, fwd as usize, T).await.unwrap().len() as u64;
    p.drain();
    let extra = p.seen.iter().filter(|l| l.contains("\"reply\"")).count() as u64 - got;
    assert_eq!(extra, 0, "more replies than forwarded datagrams");
    drop(p);
    let fraction = got as f64 / 1000.0;
    eprintln!(
        "loss 30 % (seed 16): {got} of 1000 received ({:.1} %), bridge: read {read}, \
         forwarded {fwd}, dropped_loss {lost}",
        fraction * 100.0
    );
    assert!(
        (0.55..=0.85).contains(&fraction),
        "{got} of 1000 received at 30 % loss"
    );

    // 3. Cut: nothing passes. Wait for the bridge to have read (and dropped) every datagram;
    // nothing is then in flight, so no reply can come.
    link.command("loss 0").await.unwrap();
    let cut = link.command("cut").await.unwrap();
    assert_eq!(cut["a_to_b"]["cut"], true);
    assert_eq!(cut["b_to_a"]["cut"], true);
    let before = quiet(&link).await;
    let mut p = ping(&lab, &link, &target, 20, 5_000);
    p.wait_json(T, |v| v["event"] == "sent").await.unwrap();
    let after = settled(&link, &before, 20).await;
    assert_eq!(delta(&before, &after, "a_to_b", "read"), 20);
    assert_eq!(delta(&before, &after, "a_to_b", "dropped_cut"), 20);
    assert_eq!(delta(&before, &after, "a_to_b", "forwarded"), 0);
    assert_eq!(delta(&before, &after, "b_to_a", "read"), 0);
    p.drain();
    assert!(
        !p.seen.iter().any(|l| l.contains("\"reply\"")),
        "a reply through a cut link: {:?}",
        p.seen
    );
    drop(p);
    eprintln!("cut: 20 of 20 datagrams dropped by the bridge, no reply");

    // 4. Uncut: traffic passes again.
    link.command("uncut").await.unwrap();
    let mut p = ping(&lab, &link, &target, 20, 5_000);
    let rtts = replies(&mut p, 20, T).await.unwrap();
    drop(p);
    eprintln!(
        "uncut: 20 of 20 replies, RTT max {} µs",
        rtts.iter().max().unwrap()
    );

    drop(echo);
    let exit = link.quit().await.unwrap();
    eprintln!("bridge exit counters: {exit}");
    assert_eq!(exit["event"], "exit");
    drop(lab);
}
