//! Storages and queries across processes on loopback, through the CLI: put values, get them
//! back through a storage in another process, history windows, deletes, consolidation, and the
//! exit code of a get that nobody answers.

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

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn storage_in_another_process_answers_latest_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let mut st = Proc::spawn(
        "storage",
        cli(&[
            "storage",
            "shop/**",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "tcp/127.0.0.1:0",
        ]),
    )
    .unwrap();
    let ready = st.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    for (k, v) in [
        ("shop/apples", "3"),
        ("shop/pears", "5"),
        ("shop/apples", "4"),
    ] {
        let (code, _, err) = run(&["put", k, v, "--connect", &ep]).await;
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(&["delete", "shop/pears", "--connect", &ep]).await;
    assert_eq!(code, 0, "{err}");
    // Latest values: apples=4, pears deleted.
    let (code, out, err) = run(&["get", "shop/**", "--json", "--connect", &ep]).await;
    assert_eq!(code, 0, "{err}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(
        (v[0]["key"].as_str(), v[0]["payload"].as_str()),
        (Some("shop/apples"), Some("4"))
    );
    assert!(
        v[0]["timestamp"].is_string(),
        "storage replies carry timestamps: {out}"
    );
    // History: every sample of the window, in timestamp order, deletes included.
    let (code, out, err) = run(&[
        "get",
        "shop/**?_time=[now(-1m)..]",
        "--json",
        "--connect",
        &ep,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let kinds: Vec<(String, String)> = json_lines(&out)
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_string(),
                v["payload"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("put".into(), "3".into()),
            ("put".into(), "5".into()),
            ("put".into(), "4".into()),
            ("delete".into(), "".into())
        ]
    );
    let (code, out, _) = run(&[
        "get",
        "shop/**?_time=[now(-1m)..];limit=2",
        "--connect",
        &ep,
    ])
    .await;
    assert_eq!((code, out.lines().count()), (0, 2));
    // An empty window: no reply, non-zero exit, one clear line.
    let (code, _, err) = run(&[
        "get",
        "shop/**?_time=[..now(-1h)]",
        "--connect",
        &ep,
        "--timeout-ms",
        "500",
    ])
    .await;
    assert_ne!(code, 0);
    // An empty storage is told apart from an unreachable one.
    assert!(err.contains("answered, with nothing"), "{err}");
}

#[tokio::test]
async fn consolidation_and_timeouts_with_queryable_processes() {
    // Racy `free_port()`: the ready line of `hypha queryable` carries no `listening` endpoint
    // (router/src/cli.rs), so the port it bound cannot be read back. Listen on port 0 and use
    // `listening_endpoint` once it does, as `peer` and `storage` do.
    let port = free_port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let mut q1 = Proc::spawn("q1", cli(&["queryable", "cfg/**", "one", "--listen", &ep])).unwrap();
    q1.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep2 = format!("tcp/127.0.0.1:{}", free_port());
    let mut q2 = Proc::spawn("q2", cli(&["queryable", "cfg/**", "two", "--listen", &ep2])).unwrap();
    q2.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    // Both answer (the get process links to both; declarations arrive asynchronously, so
    // retry until both replies are there).
    let deadline = std::time::Instant::now() + T;
    loop {
        let (code, out, err) = run(&[
            "get",
            "cfg/x",
            "--target",
            "all",
            "--consolidation",
            "none",
            "--connect",
            &ep,
            "--connect",
            &ep2,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        let mut got: Vec<&str> = out.lines().collect();
        got.sort();
        if got == ["put cfg/x one", "put cfg/x two"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never got both replies: {out}"
        );
    }
    let (code, out, _) = run(&[
        "get",
        "cfg/x",
        "--target",
        "all",
        "--consolidation",
        "latest",
        "--connect",
        &ep,
        "--connect",
        &ep2,
    ])
    .await;
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    // Nobody answers on another key: non-zero exit after the timeout.
    let (code, _, err) = run(&[
        "get",
        "nothing/here",
        "--timeout-ms",
        "300",
        "--wait-ms",
        "300",
        "--connect",
        &ep,
    ])
    .await;
    assert_ne!(code, 0);
    assert!(
        err.starts_with("error: no queryable or storage matching nothing/here was found"),
        "{err}"
    );
    // Bad arguments are clear errors.
    let (code, _, err) = run(&["get", "cfg/x", "--target", "nearest"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("--target"), "{err}");
    let (code, _, err) = run(&["storage", "s/**", "--backend", "rocks"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("rocks"), "{err}");
}

#[tokio::test]
async fn a_queryable_answers_on_concrete_keys_only() {
    // Port 0, read back from the ready line (which now carries `listening`).
    let mut q = Proc::spawn(
        "q",
        cli(&["queryable", "conf/**", "v1", "--listen", "tcp/127.0.0.1:0"]),
    )
    .unwrap();
    let ready = q.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    // A concrete key is answered on that key.
    let (code, out, err) = run(&["get", "conf/a", "--json", "--connect", &ep]).await;
    assert_eq!(code, 0, "{err}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(
        (v[0]["key"].as_str(), v[0]["payload"].as_str()),
        (Some("conf/a"), Some("v1"))
    );
    // A wildcard query gets an error reply saying why, never a sample on a wildcard key.
    let (_, out, err) = run(&["get", "conf/**", "--json", "--connect", &ep]).await;
    let v = json_lines(&out);
    assert_eq!(v.len(), 1, "{out} {err}");
    assert_eq!(v[0]["kind"], "error", "{out}");
    assert!(
        v[0]["payload"].as_str().unwrap_or("").contains("concrete"),
        "{out}"
    );
}

/// `hypha put --ack`: returns once the storage in another process has synced the sample; a key
/// that no storage holds is an error and a non-zero exit.
#[tokio::test]
async fn put_ack_waits_for_the_storage_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let mut st = Proc::spawn(
        "storage",
        cli(&[
            "storage",
            "acked/**",
            "--data-dir",
            data.to_str().unwrap(),
            "--flush-ms",
            "60000",
            "--listen",
            "tcp/127.0.0.1:0",
        ]),
    )
    .unwrap();
    let ready = st.wait_json(T, |v| v["event"] == "ready").await.unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    let (code, _, err) = run(&["put", "acked/k", "v1", "--ack", "durable", "--connect", &ep]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("acknowledged by 1 storage"), "{err}");
    // Acknowledged means stored: a get right after finds it.
    let (code, out, err) = run(&["get", "acked/k", "--json", "--connect", &ep]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_lines(&out)[0]["payload"], "v1", "{out}");
    let (code, _, err) = run(&[
        "put",
        "nobody/k",
        "v",
        "--ack",
        "received",
        "--wait-ms",
        "300",
        "--connect",
        &ep,
    ])
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("no storage holds nobody/k"), "{err}");
}
