//! Routers of three sites joined by impaired WAN links (issue 10): one network namespace per
//! router, each pair joined by the userspace impairment bridge (`hypha-impair`: one-way delay,
//! seeded loss, silent cut), the `hypha router` program with `--site/--backbone/--cost`, and
//! `hypha-probe` clients publishing numbered, timestamped samples at 1 kHz.
//!
//! Triangle A–B 20 ms, B–C 20 ms, A–C 60 ms (one way), 0.5 % loss on each link:
//! 1. steady state: A's samples reach C with 0 duplicates, 0 gaps, 0 reordering, along the
//!    cheaper two-hop path A–B–C (the admin space's route; the latency is printed);
//! 2. a silent cut of A–B under traffic: delivery resumes over the direct link, 0 duplicates,
//!    loss only inside the outage (printed with the outage);
//! 3. the cut restored: back on the short path.
//!
//! The figures print as one `{"figure":"backbone_wan",…}` line. This is the fast subset (a few
//! seconds per phase); `examples/compare/backbone_wan.sh` runs it longer and repeatedly (median
//! and maximum). `HYPHA_WAN_SECS` sets the phase length, `HYPHA_WAN_LOSS` the loss (%).
//!
//! Needs root and `ip netns`: without them it prints a skip, or fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::impair::ImpairedLink;
use hypha_tests::netns::{Lab, unavailable};
use hypha_tests::{Proc, require_or_skip, wait_until};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const IMPAIR: &str = env!("CARGO_BIN_EXE_hypha-impair");
const PROBE: &str = env!("CARGO_BIN_EXE_hypha-probe");
const T: Duration = Duration::from_secs(30);
const LOCAL: &str = "quic/127.0.0.1:7447";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// `hypha router` in host `i`: listening on every interface, dialling `backbone` at `cost`.
async fn router(lab: &Lab, i: usize, site: &str, backbone: &str, cost: u32) -> Proc {
    let mut c = lab.command(i, CLI);
    c.args(["router", "--no-mdns", "--listen", "quic/0.0.0.0:7447"])
        .args(["--site", site, "--backbone", backbone])
        .args(["--cost", &cost.to_string()]);
    let mut p = Proc::spawn(&format!("router {site}"), c).unwrap();
    p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    p
}

/// The backbone entry of the router in host `i` (asked by a client there).
async fn backbone(lab: &Lab, i: usize) -> Option<Value> {
    let mut c = lab.command(i, CLI);
    c.args([
        "get",
        "--json",
        "--mode",
        "client",
        "--no-mdns",
        "--connect",
        LOCAL,
    ])
    .args(["--timeout-ms", "2000", "@/*/backbone"]);
    let out = c.output().await.ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| serde_json::from_str::<Value>(v["payload"].as_str()?).ok())
        .find(|b| b["routes"].is_array())
}

/// The next hop of host `i`'s router towards the router `to` (an id), and the route's cost.
fn next_hop(b: &Value, to: &str) -> Option<(String, u64)> {
    b["routes"].as_array()?.iter().find_map(|r| {
        (r["router"] == to).then(|| {
            (
                r["next"].as_str().unwrap_or_default().to_string(),
                r["cost"].as_u64().unwrap_or(0),
            )
        })
    })
}

fn router_id(ready: &Value) -> String {
    ready["id"].as_str().unwrap().to_string()
}

/// Duplicates the subscriber removed (by the publishers' end-to-end sequence numbers) up to
/// its last sample: copies the network delivered twice, which the application never sees.
fn removed(sub: &Proc) -> u64 {
    sub.seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["removed"].as_u64())
        .max()
        .unwrap_or(0)
}

/// What a subscriber received from publisher `name`: (sn, latency µs, receive time µs).
fn received(sub: &Proc, name: &str) -> Vec<(u64, u64, u64)> {
    sub.seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "sample" && v["p"] == name)
        .map(|v| {
            (
                v["sn"].as_u64().unwrap(),
                v["lat_us"].as_u64().unwrap(),
                v["t_us"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Duplicates, samples missing from `0..n`, and samples arriving after a larger sn.
fn check(got: &[(u64, u64, u64)], n: u64) -> (u64, u64, u64) {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut reorder = 0;
    let mut last = None;
    for (sn, _, _) in got {
        *seen.entry(*sn).or_default() += 1;
        if last.is_some_and(|l| *sn < l) {
            reorder += 1;
        }
        last = Some(last.map_or(*sn, |l: u64| l.max(*sn)));
    }
    let dups = seen.values().map(|c| u64::from(c - 1)).sum();
    let missing = (0..n).filter(|s| !seen.contains_key(s)).count() as u64;
    (dups, missing, reorder)
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn drain_until(sub: &mut Proc, name: &str, n: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let Some(l) = sub.line(Duration::from_millis(200)).await else {
            continue;
        };
        let last = serde_json::from_str::<Value>(&l)
            .ok()
            .filter(|v| v["p"] == name)
            .and_then(|v| v["sn"].as_u64());
        if last.is_some_and(|sn| sn + 1 >= n) {
            // Let stragglers in (a reordered or retransmitted sample).
            let end = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < end {
                let _ = sub.line(Duration::from_millis(50)).await;
            }
            return;
        }
    }
}

fn publisher(lab: &Lab, i: usize, name: &str, count: u64) -> Proc {
    let mut c = lab.command(i, PROBE);
    c.args(["pub", "--connect", LOCAL, "--key", "wan/a", "--name", name])
        .args(["--rate", "1000", "--count", &count.to_string()]);
    Proc::spawn(&format!("pub {name}"), c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_over_impaired_wan_links_cheap_path_and_silent_cut() {
    if !require_or_skip(unavailable()) {
        return;
    }
    let secs: u64 = env_or("HYPHA_WAN_SECS", "3").parse().unwrap();
    let loss = env_or("HYPHA_WAN_LOSS", "0.5");
    let lab = Lab::isolated(3, 3).unwrap();
    let link = async |a, b, k, delay: &str, seed: &str| {
        ImpairedLink::spawn(
            IMPAIR,
            &lab,
            a,
            b,
            k,
            &["--delay", delay, "--loss", &loss, "--seed", seed],
        )
        .await
        .unwrap()
    };
    let ab = link(0, 1, 0, "20ms", "1").await;
    let bc = link(1, 2, 1, "20ms", "2").await;
    let ac = link(0, 2, 2, "60ms", "3").await;
    // A dials B (20), B dials C (20), C dials A (60).
    let mut ra = router(&lab, 0, "A", &format!("quic/{}:7447", ab.b.ip), 20).await;
    let mut rb = router(&lab, 1, "B", &format!("quic/{}:7447", bc.b.ip), 20).await;
    let mut rc = router(&lab, 2, "C", &format!("quic/{}:7447", ac.a.ip), 60).await;
    let id = |p: &mut Proc| {
        router_id(
            &p.seen
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["event"] == "ready")
                .unwrap(),
        )
    };
    let (_a_id, b_id, c_id) = (id(&mut ra), id(&mut rb), id(&mut rc));
    // The link state settles: A reaches C through B, at cost 40.
    let mut last = None;
    let ok = wait_until(T, async || {
        last = backbone(&lab, 0).await;
        last.as_ref()
            .and_then(|b| next_hop(b, &c_id))
            .is_some_and(|(n, cost)| n == b_id && cost == 40)
    })
    .await;
    assert!(ok.is_ok(), "no A→B→C route: {last:?}");

    let mut sub = {
        let mut c = lab.command(2, PROBE);
        c.args(["sub", "--connect", LOCAL, "--key", "wan/**"]);
        Proc::spawn("sub C", c).unwrap()
    };
    sub.wait_json(T, |v| v["event"] == "ready").await.unwrap();

    // 1. Steady state.
    let n1 = 1000 * secs;
    let mut p1 = publisher(&lab, 0, "s", n1);
    let r = p1.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    assert_eq!(
        r["matching"], true,
        "A's publisher never matched C's subscriber"
    );
    drain_until(&mut sub, "s", n1, T + Duration::from_secs(secs)).await;
    let got = received(&sub, "s");
    let (dups, missing, reorder) = check(&got, n1);
    let mut lat: Vec<u64> = got.iter().map(|g| g.1).collect();
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    eprintln!(
        "steady: {} of {n1} received, {dups} duplicates, {missing} missing, {reorder} reordered, \
         A→C latency p50 {} ms p99 {} ms (two hops of 20 ms; the direct link is 60 ms)",
        got.len(),
        p50 / 1000,
        p99 / 1000
    );
    let have: std::collections::HashSet<u64> = got.iter().map(|g| g.0).collect();
    let gaps: Vec<u64> = (0..n1).filter(|s| !have.contains(s)).take(40).collect();
    assert_eq!(
        (dups, removed(&sub), missing, reorder),
        (0, 0, 0, 0),
        "steady state (duplicates delivered, removed, missing, reordered); first missing: \
         {gaps:?}"
    );
    drop(p1);

    // 2. A silent cut of A–B under traffic.
    let n2 = 1000 * (secs + 5);
    let mut p2 = publisher(&lab, 0, "c", n2);
    p2.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ab.command("cut").await.unwrap();
    let cut_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    drain_until(&mut sub, "c", n2, T + Duration::from_secs(secs + 5)).await;
    let got = received(&sub, "c");
    let (dups, missing, reorder) = check(&got, n2);
    let resumed = got
        .iter()
        .map(|g| g.2)
        .filter(|t| *t > cut_at)
        .min()
        .unwrap_or(0);
    let mut times: Vec<u64> = got.iter().map(|g| g.2).collect();
    times.sort_unstable();
    let outage = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let b = backbone(&lab, 0).await;
    let via = b.as_ref().and_then(|b| next_hop(b, &c_id));
    eprintln!(
        "silent cut of A–B: {} of {n2} received, {dups} duplicates, {missing} lost (all inside \
         the outage), {reorder} reordered, outage {} ms, A→C now via {:?}",
        got.len(),
        outage / 1000,
        via
    );
    assert_eq!(dups, 0, "no duplicate across the re-route");
    assert_eq!(
        removed(&sub),
        0,
        "the network delivered copies twice (removed at the subscriber)"
    );
    assert!(
        via.as_ref().is_some_and(|(n, _)| *n == c_id),
        "A→C not re-routed over the direct link: {b:?}"
    );
    // Loss only inside the outage: the missing samples are one contiguous run (those sent
    // between the cut and the re-route), no longer than the outage plus what was in flight on
    // the cut path and the slower path's extra delay (100 ms at 1 kHz).
    let have: std::collections::HashSet<u64> = got.iter().map(|g| g.0).collect();
    let lost: Vec<u64> = (0..n2).filter(|s| !have.contains(s)).collect();
    let contiguous = lost.windows(2).all(|w| w[1] == w[0] + 1);
    assert!(
        contiguous && missing <= outage / 1000 + 100,
        "{missing} lost (contiguous: {contiguous}) for a {} ms outage",
        outage / 1000
    );
    eprintln!(
        "first sample after the cut arrived {} ms after it",
        resumed.saturating_sub(cut_at) / 1000
    );
    drop(p2);

    // 3. The cut restored: A redials B and the route returns to the short path.
    ab.command("uncut").await.unwrap();
    let mut last = None;
    let ok = wait_until(T, async || {
        last = backbone(&lab, 0).await;
        last.as_ref()
            .and_then(|b| next_hop(b, &c_id))
            .is_some_and(|(n, _)| n == b_id)
    })
    .await;
    assert!(
        ok.is_ok(),
        "not back on A–B–C after the cut healed: {last:?}"
    );
    println!(
        "{}",
        serde_json::json!({"figure": "backbone_wan", "secs": secs, "loss_pct": loss,
            "p50_ms": p50 as f64 / 1000.0, "p99_ms": p99 as f64 / 1000.0,
            "cut_outage_ms": outage as f64 / 1000.0, "cut_lost": missing, "cut_dups": dups})
    );
    drop((sub, ra, rb, rc));
    drop((ab, bc, ac));
    drop(lab);
}
