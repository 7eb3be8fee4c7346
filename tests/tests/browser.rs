//! The live page in a real browser: a router serving the HTTP gateway (`--http 127.0.0.1:0`)
//! and counting two prefixes (`[metrics] prefixes = ["demo/**", "other/**"]`), and two clients
//! subscribed to `demo/**`, all `hypha` processes on loopback; then
//! `node --test tests/browser/live_page.test.mjs` opens the page in headless Chromium
//! (playwright-core), waits for three nodes, two links and the two prefix rows, publishes
//! through the gateway, sees a link's rate and the demo/** prefix's rate rise (other/** stays
//! at 0) and saves a screenshot.
//!
//! Needs Node.js, Debian's `/usr/bin/chromium` (or `HYPHA_CHROMIUM`) and playwright-core in
//! `tests/browser/node_modules` (`npm ci --prefix tests/browser`); `.ci/run` installs all three.
//! Without them the test is skipped, except under `CI=true`, where it fails. The screenshot goes
//! to a temporary directory, or to `HYPHA_SCREENSHOT` when set (the README's picture:
//! `HYPHA_SCREENSHOT=$PWD/docs/live-page.png cargo test -p hypha-tests --test browser`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use hypha_tests::{Proc, listening_endpoint};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_hypha-test-cli");
const T: Duration = Duration::from_secs(20);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn chromium() -> String {
    std::env::var("HYPHA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string())
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Some("no `node` on PATH (apt-get install nodejs)".into());
    }
    if !Path::new(&chromium()).exists() {
        return Some(format!(
            "no browser at {} (apt-get install chromium)",
            chromium()
        ));
    }
    let pw = browser_dir().join("node_modules/playwright-core/package.json");
    if !pw.exists() {
        return Some(format!(
            "no {} (npm ci --prefix tests/browser)",
            pw.display()
        ));
    }
    None
}

#[tokio::test]
async fn the_live_page_shows_three_nodes_two_links_and_the_traffic_in_chromium() {
    if !hypha_tests::require_or_skip(missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        "[metrics]\nprefixes = [\"demo/**\", \"other/**\"]\n",
    )
    .unwrap();
    let mut router = Proc::spawn(
        "router",
        hypha_tests::cli(
            CLI,
            &[
                "router",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "tcp/127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ],
        ),
    )
    .unwrap();
    let ready = router
        .wait_json(T, |v| v["event"] == "ready")
        .await
        .unwrap();
    let ep = listening_endpoint(&ready).unwrap();
    let http = ready["http"].as_str().expect("an http address").to_string();
    let mut clients = Vec::new();
    for name in ["client-b", "client-c"] {
        let mut c = Proc::spawn(
            name,
            hypha_tests::cli(
                CLI,
                &[
                    "peer",
                    "--mode",
                    "client",
                    "--connect",
                    &ep,
                    "--sub",
                    "demo/**",
                ],
            ),
        )
        .unwrap();
        c.wait_json(T, |v| v["event"] == "ready").await.unwrap();
        clients.push(c);
    }

    let shot = std::env::var_os("HYPHA_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("live-page.png"));
    let _ = std::fs::remove_file(&shot);
    let mut node = tokio::process::Command::new("node");
    node.args(["--test", "--test-reporter=spec", "live_page.test.mjs"])
        .current_dir(browser_dir())
        .env("HYPHA_PAGE", format!("http://{http}/"))
        .env("HYPHA_SCREENSHOT", &shot)
        .env("HYPHA_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), node.output())
        .await
        .expect("node --test finished within 180 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    let png = std::fs::read(&shot).expect("the screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a screenshot: {} bytes",
        png.len()
    );
    // The nodes served the page's queries throughout.
    assert!(
        router.child.try_wait().unwrap().is_none(),
        "the router died"
    );
    for c in &mut clients {
        assert!(c.child.try_wait().unwrap().is_none(), "a client died");
    }
}
