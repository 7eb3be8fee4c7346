//! `hypha info`'s table and `hypha top`, across processes on loopback: the rows name the real
//! links with their counters, and `top --once` shows the rates of a live publisher.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, listening_endpoint};
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

async fn run(args: &[&str]) -> (i32, String, String) {
    hypha_tests::run_cli(CLI, args).await.unwrap()
}

async fn node(name: &str, args: &[&str]) -> (Proc, serde_json::Value) {
    let mut p = Proc::spawn(name, hypha_tests::cli(CLI, args)).unwrap();
    let ready = p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    (p, ready)
}

/// The table's row for `peer` (its first cell), split on whitespace.
fn row<'a>(out: &'a str, peer: &str) -> Option<Vec<&'a str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&peer))
}

/// A number as the tables print it (`12`, `3.5`, `1.2k`, `4.0M`).
fn num(cell: &str) -> f64 {
    let (n, m) = match cell.chars().last() {
        Some('k') => (&cell[..cell.len() - 1], 1e3),
        Some('M') => (&cell[..cell.len() - 1], 1e6),
        Some('G') => (&cell[..cell.len() - 1], 1e9),
        _ => (cell, 1.0),
    };
    n.parse::<f64>()
        .unwrap_or_else(|_| panic!("not a number: {cell}"))
        * m
}

#[tokio::test]
async fn info_prints_a_table_of_links_and_json_on_request() {
    let (_r, ready) = node("router", &["router", "--listen", "tcp/127.0.0.1:0"]).await;
    let ep = listening_endpoint(&ready).unwrap();
    let router = ready["id"].as_str().unwrap();
    let args = [
        "info",
        "--mode",
        "client",
        "--connect",
        ep.as_str(),
        "--wait-ms",
        "3000",
    ];
    let (code, out, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("node ") && first.contains(" client "),
        "{out}"
    );
    let id = first.split_whitespace().nth(1).unwrap();
    assert_eq!(id.len(), 32, "{out}");
    // The node's totals, losses with closed links among them (none here).
    let totals = out.lines().nth(1).unwrap();
    assert!(totals.contains("  dropped 0  link_closed 0  "), "{out}");
    let header = row(&out, "PEER").unwrap_or_else(|| panic!("no header: {out}"));
    assert_eq!(
        header,
        [
            "PEER",
            "KIND",
            "PRINCIPAL",
            "TRANSPORT",
            "REMOTE",
            "DATA",
            "IN/OUT",
            "CTRL",
            "IN/OUT",
            "BYTES",
            "IN",
            "BYTES",
            "OUT",
            "DROPPED",
            "DENIED",
            "IN/OUT"
        ]
    );
    let r = row(&out, router).unwrap_or_else(|| panic!("no row for {router}: {out}"));
    assert_eq!(
        r[1..5],
        ["router", "anonymous", "tcp", ep.as_str()],
        "{out}"
    );
    // Declarations and interests (control) went both ways; data (samples, queries, replies) is
    // counted apart; nothing was dropped or refused.
    let in_out = |c: &str| -> (f64, f64) {
        let (i, o) = c
            .split_once('/')
            .unwrap_or_else(|| panic!("not in/out: {c}"));
        (num(i), num(o))
    };
    // The data cell is "in/out" numbers too (in_out panics otherwise); how many depends on
    // what the info command itself asked, so no count is asserted.
    in_out(r[5]);
    let (ctrl_in, ctrl_out) = in_out(r[6]);
    assert!(ctrl_in > 0.0 && ctrl_out > 0.0, "control: {out}");
    for c in &r[7..9] {
        assert!(num(c) > 0.0, "{out}");
    }
    assert_eq!(r[9..], ["0", "0/0"], "{out}");
    assert!(!out.trim_start().starts_with('{'), "{out}");

    let json: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let (code, out, err) = run(&json).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["role"], "client");
    assert_eq!(v["links"][0]["node"], router);
}

#[tokio::test]
async fn top_once_shows_a_publishers_rate_on_its_link() {
    let (_r, ready) = node("router", &["router", "--listen", "tcp/127.0.0.1:0"]).await;
    let ep = listening_endpoint(&ready).unwrap();
    let router = ready["id"].as_str().unwrap().to_string();
    let client = |extra: &'static [&'static str]| {
        let mut a = vec!["peer", "--mode", "client", "--connect", ep.as_str()];
        a.extend(extra);
        a
    };
    let (mut sub, sub_ready) = node("sub", &client(&["--sub", "load/**"])).await;
    let sub_id = sub_ready["id"].as_str().unwrap().to_string();
    let (_p, pub_ready) = node(
        "pub",
        &client(&["--pub", "load/x", "--value", "{i}", "--interval-ms", "5"]),
    )
    .await;
    let pub_id = pub_ready["id"].as_str().unwrap().to_string();
    // The publisher's samples flow before top looks.
    sub.wait_json(T, |v| v["event"] == "sample").await.unwrap();

    let (code, out, err) = run(&["top", "--once", "--connect", &ep, "--interval-ms", "1000"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "escape codes in --once: {out:?}");
    assert!(out.starts_with(&format!("hypha top  {router}  ")), "{out}");
    assert!(out.contains(&format!("\nnode {router}  router  ")), "{out}");
    let header = row(&out, "PEER").unwrap_or_else(|| panic!("no header: {out}"));
    assert_eq!(header[..5], ["PEER", "KIND", "TRANSPORT", "MSG/S", "IN"]);
    // Columns: peer kind transport msg/s-in msg/s-out B/s-in B/s-out dropped denied queued.
    let p = row(&out, &pub_id).unwrap_or_else(|| panic!("no row for the publisher: {out}"));
    let s = row(&out, &sub_id).unwrap_or_else(|| panic!("no row for the subscriber: {out}"));
    assert_eq!(p[1..3], ["client", "tcp"], "{out}");
    // The baseline: what the subscriber sends the router (keep-alives) and what the router
    // sends the publisher are small; the samples are not (one every 5 ms, less the puts' time).
    assert!(num(s[3]) < 20.0, "subscriber -> router: {out}");
    assert!(num(p[4]) < 20.0, "router -> publisher: {out}");
    assert!(num(p[3]) >= 50.0, "publisher -> router: {out}");
    assert!(num(s[4]) >= 50.0, "router -> subscriber: {out}");
    assert!(num(s[6]) > num(s[5]), "bytes follow the messages: {out}");
    assert!(
        out.lines().any(|l| l.contains("(this top)")),
        "top's own link is marked: {out}"
    );

    // `--node` that nobody answers for: a frame that says so, not a hang or a crash.
    let (code, out, err) = run(&[
        "top",
        "--once",
        "--connect",
        &ep,
        "--interval-ms",
        "200",
        "--node",
        "0123456789abcdef0123456789abcdef",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("0 nodes\nno answer from the admin space"),
        "{out}"
    );
}
