//! The admin space through the `hypha` CLI, across processes on loopback: `hypha get
//! '@/*/links/**'` reaches every node of a three-node mesh, and `hypha sub '**'` sees none of
//! it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, listening_endpoint};
use std::collections::BTreeSet;
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

async fn run(args: &[&str]) -> (i32, String, String) {
    hypha_tests::run_cli(CLI, args).await.unwrap()
}

async fn peer(name: &str, connect: &[&str]) -> (Proc, String, String) {
    let mut args = vec!["peer", "--listen", "tcp/127.0.0.1:0"];
    for c in connect {
        args.extend(["--connect", c]);
    }
    let mut p = Proc::spawn(name, hypha_tests::cli(CLI, &args)).unwrap();
    let ready = p.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    let id = ready["id"].as_str().unwrap().to_string();
    (p, ep, id)
}

#[tokio::test]
async fn get_admin_links_reaches_every_node_of_a_three_node_mesh() {
    let (_a, ep_a, a) = peer("a", &[]).await;
    let (_b, ep_b, b) = peer("b", &[&ep_a]).await;
    let (_c, _, c) = peer("c", &[&ep_a, &ep_b]).await;
    let mesh = [&a, &b, &c];
    let mut want = BTreeSet::new();
    for x in mesh {
        for y in mesh {
            if x != y {
                want.insert((x.to_string(), y.to_string()));
            }
        }
    }
    let mut last = String::new();
    let found = hypha_tests::wait_until(Duration::from_secs(30), async || {
        let (code, out, err) = run(&[
            "get",
            "@/*/links/**",
            "--json",
            "--connect",
            &ep_a,
            "--timeout-ms",
            "2000",
        ])
        .await;
        last = format!("{code} {out} {err}");
        if code != 0 {
            return false;
        }
        let mut got = BTreeSet::new();
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = v["key"].as_str().unwrap();
            let parts: Vec<&str> = key.split('/').collect();
            assert_eq!((parts[0], parts[2]), ("@", "links"), "{key}");
            let link: serde_json::Value =
                serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            assert_eq!(link["node"], parts[1], "{link}");
            assert_eq!(link["peer"], parts[3], "{link}");
            // The mesh's links are TCP; the querying node (default `quic/0.0.0.0:0`) is
            // dialled over QUIC by the peers that learn of it.
            assert!(
                ["tcp", "quic"].contains(&link["transport"].as_str().unwrap()),
                "{link}"
            );
            assert!(link["rx_bytes"].as_u64().unwrap() > 0, "{link}");
            got.insert((parts[1].to_string(), parts[3].to_string()));
        }
        want.is_subset(&got)
    })
    .await;
    assert!(
        found.is_ok(),
        "the mesh's six links never all answered: {last}"
    );
}

#[tokio::test]
async fn sub_everything_sees_no_admin_traffic() {
    let (_a, ep_a, a) = peer("a", &[]).await;
    let mut sub = Proc::spawn(
        "sub",
        hypha_tests::cli(CLI, &["sub", "**", "--json", "--connect", &ep_a]),
    )
    .unwrap();
    // Admin traffic (a query and its answers), then an admin-space put, then a plain one: the
    // first thing `**` sees is the plain put.
    let (code, out, err) =
        run(&["get", &format!("@/{a}/node"), "--json", "--connect", &ep_a]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&a), "{out}");
    let (code, _, err) = run(&["put", &format!("@/{a}/x"), "1", "--connect", &ep_a]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&[
        "put",
        "plain/x",
        "2",
        "--connect",
        &ep_a,
        "--wait-ms",
        "5000",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let first = sub.wait_json(T, |_| true).await.unwrap();
    assert_eq!(first["key"], "plain/x", "{first}");
}
