//! Client failover between routers as processes (issue 10, scenario 3): routers R1 and R2 of
//! site S and R3 of site T on one LAN (network namespaces on a bridge), each listening on
//! `tcp/0.0.0.0:7447`; R2 and R3 dial R1, R3 dials R2. Client X (its own host) is configured
//! with R1 only and learns R2 and R3 from it (the interface addresses they advertise, since
//! they listen on 0.0.0.0). X subscribes to `fo/y` and publishes `fo/x` at 1 kHz; client Y at
//! R3 does the opposite.
//!
//! 1. R1 is SIGKILLed (its TCP links get a reset): X fails over to R2 (same site first);
//! 2. R1 is restarted, then R2 is SIGSTOPped (silent: X's link expires after R2's 2 s lease):
//!    X fails over again (to R3 or R1), then R2 is continued.
//!
//! Both directions must deliver again after each failure with 0 duplicates (delivered or
//! removed); the outages (largest gap between arrivals around each failure; targets ≤ 1 s
//! after a reset, ≤ 3.5 s silent) print as one `{"figure":"client_failover",…}` line, which
//! `examples/compare/backbone_failover.sh` repeats for median and maximum.
//!
//! Needs root and `ip netns`: without them it prints a skip, or fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::netns::{Lab, unavailable};
use hypha_tests::{Proc, require_or_skip};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const PROBE: &str = env!("CARGO_BIN_EXE_hypha-probe");
const T: Duration = Duration::from_secs(30);

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `hypha router` in host `i` of site `site`, listening on every interface, dialling `dial`.
async fn router(lab: &Lab, i: usize, site: &str, dial: &[usize]) -> Proc {
    let mut c = lab.command(i, CLI);
    c.args(["router", "--no-mdns", "--listen", "tcp/0.0.0.0:7447"])
        .args(["--site", site, "--cost", "10"]);
    for d in dial {
        c.args(["--backbone", &format!("tcp/{}:7447", lab.addr(*d))]);
    }
    let mut p = Proc::spawn(&format!("router {i}"), c).unwrap();
    p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    p
}

fn probe(lab: &Lab, i: usize, name: &str, args: &[&str]) -> Proc {
    let mut c = lab.command(i, PROBE);
    c.args(args);
    Proc::spawn(name, c).unwrap()
}

/// Arrival times (µs) of publisher `name`'s samples at `sub`, and the duplicates (sn seen
/// twice, plus those the subscriber removed).
fn arrivals(sub: &Proc, name: &str) -> (Vec<u64>, u64) {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut times = Vec::new();
    let mut removed = 0;
    for v in sub
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "sample" && v["p"] == name)
    {
        *seen.entry(v["sn"].as_u64().unwrap()).or_default() += 1;
        times.push(v["t_us"].as_u64().unwrap());
        removed = removed.max(v["removed"].as_u64().unwrap_or(0));
    }
    let dups: u64 = seen.values().map(|c| u64::from(c - 1)).sum();
    times.sort_unstable();
    (times, dups + removed)
}

/// Samples of publisher `name` missing at `sub` (of `0..sent`), by phase: each is put in the
/// phase in which the next sample received was sent (`bounds` are the phases' starts; the
/// first count is before `bounds[0]`; one lost at the very end counts in the last phase).
fn lost_by_phase(sub: &Proc, name: &str, sent: u64, bounds: &[u64]) -> Vec<u64> {
    let sent_at: std::collections::BTreeMap<u64, u64> = sub
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "sample" && v["p"] == name)
        .map(|v| {
            let t = v["t_us"].as_u64().unwrap();
            (
                v["sn"].as_u64().unwrap(),
                t - v["lat_us"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut out = vec![0; bounds.len() + 1];
    for sn in (0..sent).filter(|sn| !sent_at.contains_key(sn)) {
        let phase = sent_at.range(sn..).next().map_or(bounds.len(), |(_, t)| {
            bounds.iter().filter(|b| *b <= t).count()
        });
        out[phase] += 1;
    }
    out
}

/// The largest gap between consecutive arrivals within `window` after `at` (where steady
/// arrivals are 1 ms apart, that is the outage), and whether anything arrived after it.
fn outage(times: &[u64], at: u64, window: u64) -> (u64, bool) {
    let gap = times
        .windows(2)
        .filter(|w| w[1] > at && w[0] < at + window)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(u64::MAX);
    (gap, times.last().is_some_and(|t| *t > at + window))
}

/// The two tests take turns: their outages are figures, and two labs at once on two cores
/// would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fails_over_when_its_router_is_killed_and_when_it_is_stopped() {
    if !require_or_skip(unavailable()) {
        return;
    }
    let _turn = SERIAL.lock().await;
    let lab = Lab::new(4, 5).unwrap();
    let r1 = router(&lab, 0, "S", &[]).await;
    let r2 = router(&lab, 1, "S", &[0]).await;
    let _r3 = router(&lab, 2, "T", &[0, 1]).await;
    let r1_ep = format!("tcp/{}:7447", lab.addr(0));
    let (r2_ep, r3_ep) = (
        format!("tcp/{}:7447", lab.addr(1)),
        format!("tcp/{}:7447", lab.addr(2)),
    );
    let local = "tcp/127.0.0.1:7447";
    // Y at R3 first, so that X's publisher finds its subscriber.
    let mut y_sub = probe(
        &lab,
        2,
        "sub Y",
        &["sub", "--connect", local, "--key", "fo/x"],
    );
    y_sub.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let mut x_sub = probe(
        &lab,
        3,
        "sub X",
        &[
            "sub",
            "--connect",
            &r1_ep,
            "--key",
            "fo/y",
            "--wait-alternates",
            "2",
        ],
    );
    let r = x_sub.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    // R1 told X of the others at the addresses they advertise for 0.0.0.0: R2 (its site)
    // first.
    let learnt: Vec<String> = r["alternates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert!(
        learnt.first() == Some(&r2_ep) && learnt.contains(&r3_ep),
        "X learnt {learnt:?}, not [{r2_ep}, {r3_ep}]"
    );
    let pub_args = |key: &'static str, name: &'static str, ep: String| {
        vec![
            "pub".to_string(),
            "--connect".into(),
            ep,
            "--key".into(),
            key.into(),
            "--name".into(),
            name.into(),
            "--rate".into(),
            "1000".into(),
            "--count".into(),
            u64::MAX.to_string(),
            "--wait-alternates".into(),
            "2".into(),
        ]
    };
    let spawn_pub = |i: usize, args: Vec<String>| {
        let mut c = lab.command(i, PROBE);
        c.args(args);
        Proc::spawn("pub", c).unwrap()
    };
    let mut x_pub = spawn_pub(3, pub_args("fo/x", "x", r1_ep.clone()));
    let mut y_pub = spawn_pub(2, pub_args("fo/y", "y", local.to_string()));
    for p in [&mut x_pub, &mut y_pub] {
        let r = p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        assert_eq!(r["matching"], true, "a publisher never matched: {r}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. R1 SIGKILLed: its links are reset.
    r1.signal("KILL").unwrap();
    let killed_at = now_us();
    drop(r1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 2. R1 back, then R2 stopped for 5 s: silent.
    let _r1 = router(&lab, 0, "S", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r2.signal("STOP").unwrap();
    let stopped_at = now_us();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cont_at = now_us();
    r2.signal("CONT").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent = Vec::new();
    for p in [&mut x_pub, &mut y_pub] {
        p.signal("TERM").unwrap();
        let d = p.wait_json(T, |v| v["event"] == "done").await.unwrap();
        sent.push(d["sent"].as_u64().unwrap());
    }
    for s in [&mut x_sub, &mut y_sub] {
        s.signal("TERM").unwrap();
        s.wait_json(T, |v| v["event"] == "summary").await.unwrap();
    }
    let mut fig = serde_json::json!({"figure": "client_failover"});
    for (sub, name, what, sent) in [(&y_sub, "x", "X→Y", sent[0]), (&x_sub, "y", "Y→X", sent[1])]
    {
        let (times, dups) = arrivals(sub, name);
        let lost = lost_by_phase(sub, name, sent, &[killed_at, stopped_at]);
        // Windows of 3 s after each failure (the next event is later than that).
        let (rst, rst_resumed) = outage(&times, killed_at, 3_000_000);
        let (silent, silent_resumed) = outage(&times, stopped_at, 4_000_000);
        eprintln!(
            "{what}: {} of {sent} received, {dups} duplicates; outage after R1's SIGKILL {} ms \
             ({} lost), after R2's SIGSTOP {} ms ({} lost)",
            times.len(),
            rst / 1000,
            lost[1],
            silent / 1000,
            lost[2]
        );
        assert_eq!(dups, 0, "{what}: duplicates across the failovers");
        assert_eq!(lost[0], 0, "{what}: lost before any failure");
        // Delivery resumed after the reset, and while R2 was still stopped (not only once it
        // was continued).
        let during_stop = times
            .iter()
            .any(|t| *t > stopped_at + 100_000 && *t < cont_at);
        assert!(
            rst_resumed && silent_resumed && during_stop,
            "{what}: delivery did not resume after each failure (after the reset: \
             {rst_resumed}, while R2 was stopped: {during_stop})"
        );
        let k = if name == "x" { "x_to_y" } else { "y_to_x" };
        fig[format!("{k}_rst_ms")] = (rst as f64 / 1000.0).into();
        fig[format!("{k}_silent_ms")] = (silent as f64 / 1000.0).into();
        fig[format!("{k}_dups")] = dups.into();
        fig[format!("{k}_rst_lost")] = lost[1].into();
        fig[format!("{k}_silent_lost")] = lost[2].into();
    }
    println!("{fig}");
}

/// Whether router `id` (in host `i`) is its site's designated router, asked by a client there.
async fn designated(lab: &Lab, i: usize, id: &str) -> Option<bool> {
    let mut c = lab.command(i, CLI);
    c.args(["get", "--json", "--mode", "client", "--no-mdns"])
        .args(["--connect", "tcp/127.0.0.1:7447", "--timeout-ms", "2000"])
        .arg(format!("@/{id}/backbone"));
    let out = c.output().await.ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| serde_json::from_str::<Value>(v["payload"].as_str()?).ok())
        .find_map(|b| b["designated"].as_bool())
}

fn ready_id(p: &Proc) -> String {
    p.seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "ready")
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .unwrap()
}

/// Two routers in one site with peers (issue 10, scenario 5): R1 and R2 of site S, R3 of site
/// T (dialling both); peers P and Q of site S each linked to R1 and R2 (and to each other);
/// a client Y at R3. P publishes to Y, Y publishes to Q, 1 kHz each. Only the designated
/// router relays between the site's peers and site T. The designated router is SIGKILLed, then
/// restarted (the other keeps the role: non-preemptive), then the new designated router is
/// SIGSTOPped for 3 s and continued: 0 duplicates in every phase (delivered or removed), and
/// delivery resumes after each; the outages print as `{"figure":"two_routers",…}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_in_a_site_with_peers_designated_killed_restarted_stopped() {
    if !require_or_skip(unavailable()) {
        return;
    }
    let _turn = SERIAL.lock().await;
    let lab = Lab::new(5, 6).unwrap();
    let mut routers = [
        Some(router(&lab, 0, "S", &[]).await),
        Some(router(&lab, 1, "S", &[0]).await),
    ];
    let _r3 = router(&lab, 2, "T", &[0, 1]).await;
    let mut ids: Vec<String> = routers
        .iter()
        .map(|r| ready_id(r.as_ref().unwrap()))
        .collect();
    let (e0, e1) = (
        format!("tcp/{}:7447", lab.addr(0)),
        format!("tcp/{}:7447", lab.addr(1)),
    );
    // Which of R1, R2 is designated (after the 1 s hold).
    let mut dr = None;
    for _ in 0..100 {
        if designated(&lab, 0, &ids[0]).await == Some(true) {
            dr = Some(0);
        } else if designated(&lab, 1, &ids[1]).await == Some(true) {
            dr = Some(1);
        }
        if dr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d1 = dr.expect("no designated router in site S");
    let d2 = 1 - d1;
    let local = "tcp/127.0.0.1:7447";
    let peer = |i: usize, name: &str, args: &[&str]| {
        let mut c = lab.command(i, PROBE);
        c.args(args)
            .args(["--mode", "peer", "--listen", "tcp/0.0.0.0:7450"])
            .args(["--connect", &e0, "--connect", &e1]);
        Proc::spawn(name, c).unwrap()
    };
    let mut q = peer(4, "sub Q", &["sub", "--key", "two/y"]);
    let mut y_sub = probe(
        &lab,
        2,
        "sub Y",
        &["sub", "--connect", local, "--key", "two/p"],
    );
    for s in [&mut q, &mut y_sub] {
        s.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    }
    let count = u64::MAX.to_string();
    let mut p = peer(
        3,
        "pub P",
        &[
            "pub", "--key", "two/p", "--name", "p", "--rate", "1000", "--count", &count,
        ],
    );
    let mut y_pub = probe(
        &lab,
        2,
        "pub Y",
        &[
            "pub",
            "--connect",
            local,
            "--key",
            "two/y",
            "--name",
            "y",
            "--rate",
            "1000",
            "--count",
            &count,
        ],
    );
    for s in [&mut p, &mut y_pub] {
        let r = s.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        assert_eq!(r["matching"], true, "a publisher never matched: {r}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 1. The designated router SIGKILLed.
    routers[d1].as_ref().unwrap().signal("KILL").unwrap();
    let killed_at = now_us();
    routers[d1] = None;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 2. Restarted: the other keeps the role.
    let dial: &[usize] = if d1 == 0 { &[] } else { &[0] };
    routers[d1] = Some(router(&lab, d1, "S", dial).await);
    let restarted_at = now_us();
    ids[d1] = ready_id(routers[d1].as_ref().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = designated(&lab, d2, &ids[d2]).await;
    // 3. The new designated router stopped for 3 s, then continued.
    routers[d2].as_ref().unwrap().signal("STOP").unwrap();
    let stopped_at = now_us();
    tokio::time::sleep(Duration::from_secs(3)).await;
    routers[d2].as_ref().unwrap().signal("CONT").unwrap();
    let cont_at = now_us();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut sent = Vec::new();
    for s in [&mut p, &mut y_pub] {
        s.signal("TERM").unwrap();
        let d = s.wait_json(T, |v| v["event"] == "done").await.unwrap();
        sent.push(d["sent"].as_u64().unwrap());
    }
    for s in [&mut q, &mut y_sub] {
        s.signal("TERM").unwrap();
        s.wait_json(T, |v| v["event"] == "summary").await.unwrap();
    }
    let mut fig = serde_json::json!({"figure": "two_routers", "kept_role": kept});
    for (sub, name, what, sent) in [
        (&y_sub, "p", "peer P→client Y", sent[0]),
        (&q, "y", "client Y→peer Q", sent[1]),
    ] {
        let (times, dups) = arrivals(sub, name);
        let lost = lost_by_phase(
            sub,
            name,
            sent,
            &[killed_at, restarted_at, stopped_at, cont_at],
        );
        let (kill, kill_ok) = outage(&times, killed_at, 4_000_000);
        let (restart, restart_ok) = outage(&times, restarted_at, 3_000_000);
        let (stop, stop_ok) = outage(&times, stopped_at, 3_000_000);
        let (cont, cont_ok) = outage(&times, cont_at, 3_000_000);
        eprintln!(
            "{what}: {} of {sent} received, {dups} duplicates; largest gap (lost) after the \
             designated router's SIGKILL {} ms ({}), its restart {} ms ({}), the other's \
             SIGSTOP {} ms ({}), SIGCONT {} ms ({})",
            times.len(),
            kill / 1000,
            lost[1],
            restart / 1000,
            lost[2],
            stop / 1000,
            lost[3],
            cont / 1000,
            lost[4]
        );
        assert_eq!(dups, 0, "{what}: duplicates");
        assert_eq!(lost[0], 0, "{what}: lost before any failure");
        let during_stop = times
            .iter()
            .any(|t| *t > stopped_at + 100_000 && *t < cont_at);
        assert!(
            kill_ok && restart_ok && stop_ok && cont_ok && during_stop,
            "{what}: delivery did not resume after each phase"
        );
        let k = if name == "p" { "p_to_y" } else { "y_to_q" };
        for (i, (f, v)) in [
            ("kill", kill),
            ("restart", restart),
            ("stop", stop),
            ("cont", cont),
        ]
        .into_iter()
        .enumerate()
        {
            fig[format!("{k}_{f}_ms")] = (v as f64 / 1000.0).into();
            fig[format!("{k}_{f}_lost")] = lost[i + 1].into();
        }
        fig[format!("{k}_dups")] = dups.into();
    }
    println!("{fig}");
    assert_eq!(
        kept,
        Some(true),
        "the restarted router took the role back (preemption)"
    );
}
