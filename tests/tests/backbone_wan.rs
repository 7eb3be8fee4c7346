//! Routers of three sites joined by impaired WAN links (issue 10): one network namespace per
//! router, each pair joined by the userspace impairment bridge (`hypha-impair`: one-way delay,
//! seeded loss, silent cut), the `hypha router` program with `--site/--backbone/--cost`, and
//! `hypha-probe` clients publishing numbered, timestamped samples at 1 kHz.
//!
//! Triangle A–B 20 ms, B–C 20 ms, A–C 60 ms (one way), 0.5 % loss on each link:
//! 1. steady state: A's samples reach C with 0 duplicates, 0 gaps, 0 reordering, along the
//!    cheaper two-hop path A–B–C (the admin space's route; the latency is printed); meanwhile
//!    1,000 gets from a client at C to a queryable at A get exactly one reply each (scenario 7);
//! 2. a silent cut of A–B under traffic both ways (A→C and C→A at 1 kHz each) and gets from C
//!    (100/s): delivery resumes over the direct link, 0 duplicates, loss only inside the outage
//!    (one contiguous run, printed with the outage), no get answered twice, every get made
//!    outside the outage answered;
//! 3. the cut restored under the same traffic: back on the short path with 0 loss among the
//!    samples sent after the uncut; a liveliness token at A watched from C never flaps.
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

/// The backbone entry of router `id` in host `i` (asked by a client there: `@/*/backbone`
/// would also reach the other sites' routers).
async fn backbone(lab: &Lab, i: usize, id: &str) -> Option<Value> {
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
    .args(["--timeout-ms", "2000", &format!("@/{id}/backbone")]);
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

fn publisher(lab: &Lab, i: usize, key: &str, name: &str, count: u64) -> Proc {
    let mut c = lab.command(i, PROBE);
    c.args(["pub", "--connect", LOCAL, "--key", key, "--name", name])
        .args(["--rate", "1000", "--count", &count.to_string()]);
    Proc::spawn(&format!("pub {name}"), c).unwrap()
}

/// `hypha-probe get` in host `i`: `count` gets on svc/q/<i> at `rate` per second.
fn getter(lab: &Lab, i: usize, count: u64, rate: u64, timeout_ms: u64) -> Proc {
    let mut c = lab.command(i, PROBE);
    c.args(["get", "--connect", LOCAL, "--prefix", "svc/q"])
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .args(["--timeout-ms", &timeout_ms.to_string()]);
    Proc::spawn("get", c).unwrap()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One get of `hypha-probe get`: its index, replies and error replies, when it was sent.
#[derive(Debug)]
#[allow(dead_code)] // printed in failure messages
struct GetRow {
    i: u64,
    replies: u64,
    errors: u64,
    sent_us: u64,
}

/// Every get's line, up to the getter's `done` line.
async fn get_rows(g: &mut Proc, timeout: Duration) -> Vec<GetRow> {
    g.wait_json(timeout, |v| v["event"] == "done")
        .await
        .unwrap();
    g.seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "get")
        .map(|v| GetRow {
            i: v["i"].as_u64().unwrap(),
            replies: v["replies"].as_u64().unwrap(),
            errors: v["errors"].as_u64().unwrap(),
            sent_us: v["sent_us"].as_u64().unwrap(),
        })
        .collect()
}

/// What one direction of traffic saw across a cut and its restore.
struct Cut {
    received: usize,
    dups: u64,
    removed: u64,
    lost: u64,
    contiguous: bool,
    /// The largest gap between arrivals.
    outage_us: u64,
    /// From the cut to the first arrival of a sample sent after it.
    resumed_us: u64,
    /// The largest one-way latency of the samples sent in the second before the cut: how
    /// long a sample could still be in flight on the path that was cut.
    in_flight_us: u64,
    /// Samples lost that were sent after the uncut (the move back to the short path).
    lost_after_uncut: u64,
    reordered: u64,
    /// One-way latency p50 and p99 (µs) of the samples sent from 3 s after the cut to the
    /// uncut: the direct (60 ms) path's.
    detour_p50_us: u64,
    detour_p99_us: u64,
}

impl Cut {
    fn of(sub: &Proc, name: &str, n: u64, cut_at: u64, uncut_at: u64) -> Cut {
        let got = received(sub, name);
        let (dups, lost, reordered) = check(&got, n);
        let mut times: Vec<u64> = got.iter().map(|g| g.2).collect();
        times.sort_unstable();
        let outage_us = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        // Send time of each received sn (arrival minus latency).
        let sent: std::collections::BTreeMap<u64, u64> =
            got.iter().map(|g| (g.0, g.2 - g.1)).collect();
        let resumed_us = got
            .iter()
            .filter(|g| g.2 - g.1 > cut_at)
            .map(|g| g.2)
            .min()
            .map_or(0, |t| t - cut_at);
        let in_flight_us = got
            .iter()
            .filter(|g| g.2 - g.1 < cut_at && g.2 - g.1 + 1_000_000 >= cut_at)
            .map(|g| g.1)
            .max()
            .unwrap_or(0);
        let missing: Vec<u64> = (0..n).filter(|s| !sent.contains_key(s)).collect();
        let contiguous = missing.windows(2).all(|w| w[1] == w[0] + 1);
        // A lost sample was sent after the uncut unless a later sample received was sent
        // before it (or none was received later: lost at the end, counted as after).
        let lost_after_uncut = missing
            .iter()
            .filter(|s| sent.range(*s..).next().is_none_or(|(_, t)| *t >= uncut_at))
            .count() as u64;
        let mut detour: Vec<u64> = got
            .iter()
            .filter(|g| g.2 - g.1 > cut_at + 3_000_000 && g.2 - g.1 < uncut_at)
            .map(|g| g.1)
            .collect();
        let (detour_p50_us, detour_p99_us) = match detour.is_empty() {
            true => (0, 0),
            false => (percentile(&mut detour, 0.5), percentile(&mut detour, 0.99)),
        };
        Cut {
            detour_p50_us,
            detour_p99_us,
            received: got.len(),
            dups,
            removed: removed(sub),
            lost,
            contiguous,
            outage_us,
            resumed_us,
            in_flight_us,
            lost_after_uncut,
            reordered,
        }
    }
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
    let (a_id, b_id, c_id) = (id(&mut ra), id(&mut rb), id(&mut rc));
    // The link state settles: A reaches C through B, at cost 40.
    let mut last = None;
    let ok = wait_until(T, async || {
        last = backbone(&lab, 0, &a_id).await;
        last.as_ref()
            .and_then(|b| next_hop(b, &c_id))
            .is_some_and(|(n, cost)| n == b_id && cost == 40)
    })
    .await;
    assert!(ok.is_ok(), "no A→B→C route: {last:?}");

    let mut sub = {
        let mut c = lab.command(2, PROBE);
        c.args(["sub", "--connect", LOCAL, "--key", "wan/a"]);
        Proc::spawn("sub C", c).unwrap()
    };
    sub.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    // A queryable and a liveliness token at A; C's client watches the token.
    let mut server = {
        let mut c = lab.command(0, PROBE);
        c.args([
            "serve",
            "--connect",
            LOCAL,
            "--key",
            "svc/**",
            "--name",
            "a",
        ])
        .args(["--token", "alive/a"]);
        Proc::spawn("serve A", c).unwrap()
    };
    let r = server
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    assert_eq!(r["queryable"], true, "A's queryable not ready");
    let mut tokens = {
        let mut c = lab.command(2, PROBE);
        c.args(["watch", "--connect", LOCAL, "--key", "alive/**"]);
        Proc::spawn("watch C", c).unwrap()
    };
    tokens
        .wait_json(T, |v| v["event"] == "token" && v["key"] == "alive/a")
        .await
        .unwrap();

    // 1. Steady state.
    let n1 = 1000 * secs;
    let mut p1 = publisher(&lab, 0, "wan/a", "s", n1);
    let r = p1.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    assert_eq!(
        r["matching"], true,
        "A's publisher never matched C's subscriber"
    );
    let mut g1 = getter(&lab, 2, 1000, 250, 5000);
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
    // Queries across sites (scenario 7): 1,000 gets from C's client to A's queryable, exactly
    // one reply each.
    let gets = get_rows(&mut g1, T).await;
    let bad: Vec<_> = (0..1000u64)
        .filter(|i| {
            gets.iter()
                .filter(|g| g.i == *i)
                .map(|g| (g.replies, g.errors))
                .collect::<Vec<_>>()
                != [(1, 0)]
        })
        .take(10)
        .collect();
    eprintln!(
        "1,000 gets C→A: {} answered once, first wrong: {bad:?}",
        gets.iter()
            .filter(|g| g.replies == 1 && g.errors == 0)
            .count()
    );
    assert!(
        gets.len() == 1000 && bad.is_empty(),
        "gets without exactly one reply: {bad:?}"
    );

    // 2. A silent cut of A–B under traffic both ways (A→C, C→A) and gets (C asks A); then the
    // cut restored under the same traffic.
    let mut sub_a = {
        let mut c = lab.command(0, PROBE);
        c.args(["sub", "--connect", LOCAL, "--key", "wan/c"]);
        Proc::spawn("sub A", c).unwrap()
    };
    sub_a.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let mut p2 = publisher(&lab, 0, "wan/a", "c", u64::MAX);
    let mut p3 = publisher(&lab, 2, "wan/c", "r", u64::MAX);
    for p in [&mut p2, &mut p3] {
        let r = p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        assert_eq!(r["matching"], true, "a publisher never matched");
    }
    let mut g2 = getter(&lab, 2, u64::MAX, 100, 1500);
    g2.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ab.command("cut").await.unwrap();
    let cut_at = now_us();
    tokio::time::sleep(Duration::from_secs(secs + 3)).await;
    let b = backbone(&lab, 0, &a_id).await;
    let via = b.as_ref().and_then(|b| next_hop(b, &c_id));
    assert!(
        via.as_ref().is_some_and(|(n, _)| *n == c_id),
        "A→C not re-routed over the direct link: {b:?}"
    );
    // 3. The cut restored: A redials B and the routes return to the short path, with the
    // traffic still flowing.
    ab.command("uncut").await.unwrap();
    let uncut_at = now_us();
    let mut last = None;
    let ok = wait_until(T, async || {
        last = backbone(&lab, 0, &a_id).await;
        last.as_ref()
            .and_then(|b| next_hop(b, &c_id))
            .is_some_and(|(n, _)| n == b_id)
    })
    .await;
    assert!(
        ok.is_ok(),
        "not back on A–B–C after the cut healed: {last:?}"
    );
    let back_at = now_us();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent = Vec::new();
    for p in [&mut p2, &mut p3] {
        p.signal("TERM").unwrap();
        let d = p.wait_json(T, |v| v["event"] == "done").await.unwrap();
        sent.push(d["sent"].as_u64().unwrap());
    }
    g2.signal("TERM").unwrap();
    let gets = get_rows(&mut g2, T).await;
    let mut figures = Vec::new();
    for (s, name, n, what) in [
        (&mut sub, "c", sent[0], "A→C"),
        (&mut sub_a, "r", sent[1], "C→A"),
    ] {
        drain_until(s, name, n, T).await;
        let f = Cut::of(s, name, n, cut_at, uncut_at);
        eprintln!(
            "silent cut of A–B, {what}: {} of {n} received, {} duplicates ({} removed), {} lost \
             (contiguous: {}), outage {} ms, first sample {} ms after the cut, up to {} ms in flight at it; restore: {} lost \
             after the uncut, {} reordered; latency on the direct path p50 {} ms p99 {} ms",
            f.received,
            f.dups,
            f.removed,
            f.lost,
            f.contiguous,
            f.outage_us / 1000,
            f.resumed_us / 1000,
            f.in_flight_us / 1000,
            f.lost_after_uncut,
            f.reordered,
            f.detour_p50_us / 1000,
            f.detour_p99_us / 1000
        );
        assert_eq!(
            (f.dups, f.removed),
            (0, 0),
            "{what}: duplicates across the re-route (delivered, removed at the subscriber)"
        );
        // Loss only inside the outage: one contiguous run of what was sent between the cut
        // and the re-route plus what was still in flight on the cut path. At 1 kHz, lost =
        // outage + (latency of the last sample before the gap) - (latency of the first after
        // it), and the last before the gap was sent in the second before the cut unless the
        // loss began earlier; so lost <= outage + the largest latency measured in that second.
        // (A fixed 100 ms allowance failed on a loaded CI host whose steady p99 was 115 ms.)
        assert!(
            f.contiguous && f.lost <= (f.outage_us + f.in_flight_us) / 1000 + 2,
            "{what}: {} lost (contiguous: {}) for a {} ms outage with up to {} ms in flight",
            f.lost,
            f.contiguous,
            f.outage_us / 1000,
            f.in_flight_us / 1000
        );
        // The re-route comes within the routers' lease (2 s) plus the direct path's delay, with
        // a second's slack for a loaded host.
        assert!(
            f.resumed_us <= 3_500_000,
            "{what}: the first sample sent after the cut arrived {} ms after it",
            f.resumed_us / 1000
        );
        assert_eq!(
            f.lost_after_uncut, 0,
            "{what}: samples sent after the uncut were lost (moving back to A–B–C)"
        );
        figures.push(f);
    }
    // Gets during the cut: an in-flight get may time out, none is answered twice, and every
    // get made a second before the cut or after the uncut is answered once.
    let twice: Vec<_> = gets.iter().filter(|g| g.replies > 1).collect();
    let failed: Vec<_> = gets
        .iter()
        .filter(|g| g.replies != 1 || g.errors != 0)
        .collect();
    let outside: Vec<_> = failed
        .iter()
        .filter(|g| g.sent_us + 1_000_000 < cut_at || g.sent_us > uncut_at)
        .collect();
    let mut ok_sent: Vec<u64> = gets
        .iter()
        .filter(|g| g.replies == 1)
        .map(|g| g.sent_us)
        .collect();
    ok_sent.sort_unstable();
    let get_outage = ok_sent.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!(
        "gets C→A across the cut: {} made, {} unanswered (timed out in the outage), {} answered \
         twice; largest gap between answered gets {} ms; back on A–B–C {} ms after the uncut",
        gets.len(),
        failed.len(),
        twice.len(),
        get_outage / 1000,
        (back_at - uncut_at) / 1000
    );
    assert!(twice.is_empty(), "gets answered twice: {twice:?}");
    assert!(
        outside.is_empty(),
        "gets unanswered outside the outage: {outside:?}"
    );
    // No token flap: A was reachable all along (via C), so C never saw A's token go.
    tokens.signal("TERM").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokens.drain();
    let deletes: Vec<_> = tokens
        .seen
        .iter()
        .filter(|l| l.contains("\"delete\""))
        .collect();
    assert!(deletes.is_empty(), "A's token flapped at C: {deletes:?}");
    let (ac, ca) = (&figures[0], &figures[1]);
    println!(
        "{}",
        serde_json::json!({"figure": "backbone_wan", "secs": secs, "loss_pct": loss,
            "p50_ms": p50 as f64 / 1000.0, "p99_ms": p99 as f64 / 1000.0,
            "cut_outage_ms": ac.outage_us as f64 / 1000.0, "cut_lost": ac.lost,
            "cut_dups": ac.dups,
            "cut_outage_ca_ms": ca.outage_us as f64 / 1000.0, "cut_lost_ca": ca.lost,
            "cut_dups_ca": ca.dups,
            "get_outage_ms": get_outage as f64 / 1000.0, "gets_unanswered": failed.len(),
            "gets_twice": twice.len(),
            "restore_ms": (back_at - uncut_at) as f64 / 1000.0,
            "restore_lost": ac.lost_after_uncut + ca.lost_after_uncut,
            "restore_reordered": ac.reordered + ca.reordered,
            "detour_p50_ms": ac.detour_p50_us as f64 / 1000.0,
            "detour_p99_ms": ac.detour_p99_us as f64 / 1000.0,
            "token_deletes": deletes.len()})
    );
    drop((sub_a, server));
    drop((sub, ra, rb, rc));
    drop((ab, bc, ac));
    drop(lab);
}
