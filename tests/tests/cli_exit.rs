//! Issue 16: the `hypha` program fails loudly. A key over `limits.max_key_len` is refused by
//! `put`, `pub`, `get` and `sub` naming the limit; a client the server refuses (a certificate
//! of another CA, over `quic/` and `tls/`) is told why and exits non-zero from `put` and `sub`;
//! `pub` exits non-zero after its `warning: N of M publications lost` line when a blackout
//! (a silent TCP cut) ate publications.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

#[path = "../../router/tests/common/pki.rs"]
mod pki;
#[path = "../../router/tests/common/proxy.rs"]
mod proxy;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

async fn run(args: &[&str]) -> (i32, String, String) {
    hypha_tests::run_cli(CLI, args).await.unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    f.display().to_string()
}

#[tokio::test]
async fn a_key_over_the_limit_is_refused_by_put_pub_get_and_sub() {
    let fits = format!("k/{}", "x".repeat(1_000));
    let long = format!("k/{}", "x".repeat(1_100));
    let here = ["--listen", "tcp/127.0.0.1:0", "--wait-ms", "100"];
    // Baseline: a long key within the limit is published (nobody listens: a note, exit 0).
    let args: Vec<&str> = ["put", fits.as_str(), "v"]
        .into_iter()
        .chain(here)
        .collect();
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 0, "a key within the limit was refused: {err}");
    let cases: [Vec<&str>; 4] = [
        ["put", long.as_str(), "v"]
            .into_iter()
            .chain(here)
            .collect(),
        ["pub", long.as_str(), "v", "--count", "2"]
            .into_iter()
            .chain(here)
            .collect(),
        ["get", long.as_str()].into_iter().chain(here).collect(),
        vec!["sub", long.as_str(), "--listen", "tcp/127.0.0.1:0"],
    ];
    for args in cases {
        let (code, _, err) = run(&args).await;
        assert_ne!(code, 0, "{} exited 0 with a 1,102-byte key: {err}", args[0]);
        assert!(
            err.contains("1102 bytes is longer than limits.max_key_len (1024 bytes)"),
            "{}: {err}",
            args[0]
        );
    }
}

/// A router on `proto` whose certificate chains to `pki`, and client configurations: one with
/// a certificate of the same CA, one of another CA (which does not trust the router's either).
async fn refused_by_the_server(proto: &str) {
    let (pki, other) = (pki::Pki::new(), pki::Pki::new());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let router_cfg = write(
        d,
        "router.toml",
        &format!(
            "mode = \"router\"\nlisten = [\"{proto}/127.0.0.1:0\"]\n{}",
            pki::tls_toml(&pki.node("router/a", |_| {}))
        ),
    );
    let client = |name: &str, ca: &pki::Pki| {
        write(
            d,
            name,
            &format!(
                "mode = \"client\"\n{}",
                pki::tls_toml(&ca.node("robot/r1", |_| {}))
            ),
        )
    };
    let (good, bad) = (client("good.toml", &pki), client("bad.toml", &other));
    let cmd = hypha_tests::cli(CLI, &["router", "--config", &router_cfg]);
    let (_router, ep) = hypha_tests::spawn_node("router", cmd, T).await.unwrap();
    assert!(ep.starts_with(proto), "{ep}");
    // Baseline: the same client with a certificate of the router's CA gets through.
    let put = |cfg: String| {
        let ep = ep.clone();
        async move {
            run(&[
                "put",
                "a/b",
                "1",
                "--config",
                &cfg,
                "--connect",
                &ep,
                "--wait-ms",
                "1000",
            ])
            .await
        }
    };
    let (code, _, err) = put(good).await;
    assert_eq!(code, 0, "{proto}: a trusted client failed: {err}");
    let (code, _, err) = put(bad.clone()).await;
    assert_ne!(code, 0, "{proto}: a refused put exited 0: {err}");
    assert!(
        err.contains("could not reach any node") && err.contains("not signed by the trusted CA"),
        "{proto}: {err}"
    );
    let (code, _, err) = run(&["sub", "a/**", "--config", &bad, "--connect", &ep]).await;
    assert_ne!(code, 0, "{proto}: a refused sub exited 0: {err}");
    assert!(
        err.contains("could not reach any node") && err.contains("not signed by the trusted CA"),
        "{proto}: {err}"
    );
}

#[tokio::test]
async fn a_client_refused_by_the_server_over_quic_says_why_and_fails() {
    refused_by_the_server("quic").await
}

#[tokio::test]
async fn a_client_refused_by_the_server_over_tls_says_why_and_fails() {
    refused_by_the_server("tls").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_exits_non_zero_after_a_blackout_lost_publications() {
    let mut cb = hypha::Config::default();
    cb.mdns = false;
    cb.listen = vec!["tcp/127.0.0.1:0".parse().unwrap()];
    cb.lease_ms = 1000;
    let b = hypha::open(cb).await.unwrap();
    let sub = b.declare_subscriber("blk/**").stream().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let via = proxy::proxy(proxy::tcp_addr(&b), cut.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // A client (its one link goes through the proxy) with the same short lease (the least a
    // configuration file may set).
    let cfg = write(
        dir.path(),
        "pub.toml",
        "mode = \"client\"\nlisten = []\nlease_ms = 1000\n",
    );
    let value = format!("{{i}} {}", "x".repeat(16 * 1024));
    let args: Vec<String> = [
        "pub",
        "blk/x",
        &value,
        "--count",
        "400",
        "--interval-ms",
        "5",
        "--config",
        &cfg,
        "--connect",
        &format!("tcp/{via}"),
    ]
    .map(String::from)
    .into();
    // Killed with the test if it never ends (the command is kill_on_drop).
    let publisher = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hypha_tests::cli(CLI, &args).output().await
    });
    // Publications arrive until the cut.
    let first = tokio::time::timeout(T, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&*first.key, "blk/x");
    cut.store(true, Ordering::Release);
    let out = tokio::time::timeout(T * 2, publisher)
        .await
        .expect("pub never ended")
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "pub exited 0 after publishing through a blackout: {err}"
    );
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: ") && l.contains(" publications lost: "))
        .unwrap_or_else(|| panic!("no loss warning: {err}"));
    eprintln!("{warning}");
    // "warning: N of 400 publications lost: D dropped …, L queued …, C written … never
    // acknowledged, U made …": N = D + L + C + U.
    let n: Vec<u64> = warning
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(n.len(), 6, "{warning}");
    assert_eq!(n[1], 400, "{warning}");
    assert!(n[0] > 0 && n[0] == n[2] + n[3] + n[4] + n[5], "{warning}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("publications lost"),
        "{err}"
    );
}
