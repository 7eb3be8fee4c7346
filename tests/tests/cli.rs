//! The `hypha` CLI across processes on loopback: pub → sub, wildcards, delete, JSON output,
//! errors. mDNS is off so nothing is multicast on the host's network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, free_port, listening_endpoint};
use std::time::Duration;
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

fn cli(args: &[&str]) -> Command {
    hypha_tests::cli(CLI, args)
}

async fn run(args: &[&str]) -> (i32, String, String) {
    hypha_tests::run_cli(CLI, args).await.unwrap()
}

/// A `sub --json` listening on a fixed loopback port.
///
/// `hypha sub` prints no ready line (router/src/cli.rs), so the port it bound cannot be read back:
/// it gets a `free_port()` chosen beforehand, which is racy (another process may take the port
/// first). Remove this once `sub` prints `{"event":"ready","listening":[…]}` like `peer`.
fn sub(keyexpr: &str, port: u16) -> Proc {
    let listen = format!("tcp/127.0.0.1:{port}");
    Proc::spawn("sub", cli(&["sub", keyexpr, "--json", "--listen", &listen])).unwrap()
}

#[tokio::test]
async fn put_delete_and_wildcards_reach_a_json_subscriber() {
    let port = free_port();
    let mut s = sub("demo/*/x", port);
    let to = format!("tcp/127.0.0.1:{port}");
    // Not matching: demo/1/y. Then matching puts and a delete.
    let (code, _, err) = run(&[
        "put",
        "demo/1/y",
        "no",
        "--connect",
        &to,
        "--wait-ms",
        "300",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["put", "demo/1/x", "hello", "--connect", &to]).await;
    assert_eq!(code, 0, "{err}");
    let v = s.wait_json(T, |_| true).await.unwrap();
    assert_eq!(v["kind"], "put");
    assert_eq!(v["key"], "demo/1/x");
    assert_eq!(v["payload"], "hello");
    assert!(v.get("timestamp").is_some(), "{v}");
    let (code, _, err) = run(&["delete", "demo/2/x", "--connect", &to]).await;
    assert_eq!(code, 0, "{err}");
    let v = s.wait_json(T, |_| true).await.unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["key"].as_str()),
        (Some("delete"), Some("demo/2/x"))
    );
    // pub --count: every sample, in order.
    let (code, _, err) = run(&[
        "pub",
        "demo/3/x",
        "v{i}",
        "--count",
        "5",
        "--interval-ms",
        "10",
        "--connect",
        &to,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    for i in 0..5 {
        let v = s.wait_json(T, |_| true).await.unwrap();
        assert_eq!(v["payload"], format!("v{i}"), "{:?}", s.seen);
    }
}

#[tokio::test]
async fn plain_output_is_one_line_per_sample() {
    // Racy `free_port()`: `hypha sub` has no ready line to read its port back from (see `sub`).
    let port = free_port();
    let listen = format!("tcp/127.0.0.1:{port}");
    let mut s = Proc::spawn("sub", cli(&["sub", "plain/**", "--listen", &listen])).unwrap();
    let to = format!("tcp/127.0.0.1:{port}");
    assert_eq!(
        run(&["put", "plain/a", "1 2 3", "--connect", &to]).await.0,
        0
    );
    assert_eq!(s.line(T).await.as_deref(), Some("put plain/a 1 2 3"));
}

#[tokio::test]
async fn errors_are_one_clear_line_and_a_nonzero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("tcp/{}", taken.local_addr().unwrap());
    for (args, want) in [
        (vec!["put", "bad/**", "x"], "wildcard"),
        (vec!["put", "a//b", "x"], "empty chunk"),
        (vec!["sub", "a/#"], "forbidden"),
        (
            vec!["put", "a", "x", "--connect", "bogus"],
            "--connect bogus",
        ),
        (
            vec!["put", "a", "x", "--config", "/nonexistent/h.toml"],
            "/nonexistent/h.toml",
        ),
        (vec!["peer", "--listen", taken.as_str()], "cannot listen"),
        // Nobody to publish to is an error naming why, not a silent success.
        (
            vec![
                "put",
                "a",
                "x",
                "--connect",
                "tcp/127.0.0.1:1",
                "--wait-ms",
                "1500",
            ],
            "could not reach any node",
        ),
    ] {
        let (code, out, err) = run(&args).await;
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(want),
            "{args:?}: {err}"
        );
        // Each cause once (errors that print their source are not followed by it again).
        assert_eq!(lines[0].matches(want).count(), 1, "{args:?}: {err}");
    }
}

#[tokio::test]
async fn bad_config_file_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("h.toml");
    std::fs::write(&f, "lease_ms = 3\n").unwrap();
    let (code, _, err) = run(&["info", "--config", f.to_str().unwrap()]).await;
    assert_ne!(code, 0);
    assert!(err.contains("lease_ms"), "{err}");
}

#[tokio::test]
async fn info_describes_the_node_and_its_links() {
    let mut p = Proc::spawn("peer", cli(&["peer", "--listen", "tcp/127.0.0.1:0"])).unwrap();
    let ready = p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    let (code, out, err) = run(&["info", "--json", "--connect", &ep, "--wait-ms", "3000"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["id"].as_str().unwrap().len(), 32);
    assert_eq!(v["links"][0]["node"], ready["id"]);
    assert_eq!(v["role"], "peer");
    assert_eq!(v["links"][0]["kind"], "peer");
}

#[tokio::test]
async fn a_client_attached_to_a_router_sees_roles_and_kinds() {
    let mut r = Proc::spawn("router", cli(&["router", "--listen", "tcp/127.0.0.1:0"])).unwrap();
    let ready = r.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    let (code, out, err) = run(&[
        "info",
        "--json",
        "--mode",
        "client",
        "--connect",
        &ep,
        "--wait-ms",
        "3000",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["role"], "client");
    assert_eq!(v["links"][0]["kind"], "router");
    assert_eq!(v["links"][0]["node"], ready["id"]);
    // A client listens nowhere unless told to: it only dials out.
    assert_eq!(v["listening"].as_array().map(Vec::len), Some(0), "{v}");
}

#[tokio::test]
async fn a_one_shot_put_reaches_every_subscriber_not_the_first_one_found() {
    // A hub, and four subscribing peers that know only the hub. A `put` that also knows only
    // the hub learns of the four by gossip: it must wait until it is linked to all of them
    // (peers do not forward for each other) and reach every one.
    let mut hub = Proc::spawn("hub", cli(&["peer", "--listen", "tcp/127.0.0.1:0"])).unwrap();
    let ready = hub.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let hub_ep = listening_endpoint(&ready).unwrap();
    let mut subs = Vec::new();
    for i in 0..4 {
        let mut p = Proc::spawn(
            &format!("sub{i}"),
            cli(&[
                "peer",
                "--listen",
                "tcp/127.0.0.1:0",
                "--connect",
                &hub_ep,
                "--sub",
                "multi/**",
            ]),
        )
        .unwrap();
        p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        subs.push(p);
    }
    let (code, _, err) = run(&[
        "put",
        "multi/x",
        "all",
        "--connect",
        &hub_ep,
        "--wait-ms",
        "8000",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reached 4 destination(s)"), "{err}");
    for p in subs.iter_mut() {
        let v = p
            .wait_json(T, |v| v["event"] == "sample" && v["key"] == "multi/x")
            .await
            .unwrap();
        assert_eq!(v["payload"], "all");
    }
}
