//! Helpers for Hypha's multi-process and multi-host tests: child processes that are killed when
//! the test ends (even on panic), JSON-line readers with deadlines, the address a node reports in
//! its ready line, a bounded [`wait_until`], [`require_or_skip`] for tests that need root or
//! IPv6, and network namespaces that are deleted on drop.

#![warn(missing_docs)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A child process whose stdout lines are collected. Killed (by its PID) when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far (for failure messages).
    pub seen: Vec<String>,
    name: String,
}

impl Proc {
    /// Spawns `cmd` with stdout piped and kill-on-drop; its stderr goes to the test's, each
    /// line prefixed with `[name]` (a failed test's log then says which process said what).
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        if let Some(err) = child.stderr.take() {
            let tag = name.to_string();
            tokio::spawn(async move {
                let mut r = BufReader::new(err).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    eprintln!("[{tag}] {l}");
                }
            });
        }
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines,
            seen: Vec::new(),
            name: name.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The next stdout line, or `None` at the deadline or end of output.
    pub async fn line(&mut self, timeout: Duration) -> Option<String> {
        let l = tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// Reads JSON lines until one satisfies `pred`, up to `timeout`.
    pub async fn wait_json(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(l) = self.line(left).await else {
                anyhow::bail!(
                    "{}: no matching line within {timeout:?}; last lines: {:?}",
                    self.name,
                    self.seen.iter().rev().take(5).collect::<Vec<_>>()
                );
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                if pred(&v) {
                    return Ok(v);
                }
            }
        }
    }

    /// Drops lines read so far.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Sends a signal (e.g. "KILL", "STOP", "CONT") to the process.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill -{sig} {} failed", self.pid());
        Ok(())
    }

    /// Waits for the process to exit, up to `timeout`; returns its exit code.
    pub async fn exit_code(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let st = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{} did not exit within {timeout:?}", self.name))??;
        Ok(st.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL works on stopped processes too; kill_on_drop also fires, this is explicit.
        let _ = self.child.start_kill();
    }
}

/// A `hypha` CLI command (`bin`: the test binary's path) with `args`, mDNS off so that nothing
/// is multicast on the host's network.
pub fn cli(bin: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    // A command a test gives up on (a timeout, a failed assertion) must not outlive it.
    c.args(args).arg("--no-mdns").kill_on_drop(true);
    c
}

/// Runs a CLI command to completion (20 s at most): exit code, stdout, stderr.
pub async fn run_cli(bin: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::time::timeout(Duration::from_secs(20), cli(bin, args).output())
        .await
        .map_err(|_| anyhow::anyhow!("{args:?} timed out"))??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The first endpoint a node listens on, from its JSON ready line
/// (`{"event":"ready","id":…,"listening":["tcp/127.0.0.1:40123",…]}`, printed by `hypha peer` and
/// `hypha storage`): start a node on port 0 and dial what this returns.
pub fn listening_endpoint(ready: &serde_json::Value) -> anyhow::Result<String> {
    ready["listening"]
        .get(0)
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no listening endpoint in the ready line {ready}"))
}

/// Starts a node (`hypha peer`, `router`, `storage` … as `cmd` says) and waits up to `timeout`
/// for its ready line: the process and the first endpoint it listens on.
pub async fn spawn_node(
    name: &str,
    cmd: Command,
    timeout: Duration,
) -> anyhow::Result<(Proc, String)> {
    let mut p = Proc::spawn(name, cmd)?;
    let ready = p.wait_json(timeout, |v| v["event"] == "ready").await?;
    let ep = listening_endpoint(&ready)?;
    Ok((p, ep))
}

/// A TCP port free right now on 127.0.0.1 (bound then released).
///
/// Racy: another process may take the port between its release and its use. Use it only where a
/// node must come back on the same endpoint after a restart; everywhere else, listen on port 0
/// and read the address back with [`listening_endpoint`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// True when running under CI (`CI=true`, as `.ci/run` sets it, or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether a test that needs something a machine may lack (root, `ip netns`, IPv6 loopback) can
/// run; `missing` is why it cannot (`None`: it can). Under CI ([`in_ci`]) a missing requirement
/// fails the test: CI must never report as passed a test it did not run. Elsewhere it prints
/// `skipped: <why>` and returns `false`; the test then returns.
///
/// ```
/// fn a_test_that_needs_namespaces() {
///     if !hypha_tests::require_or_skip(hypha_tests::netns::unavailable()) {
///         return;
///     }
///     // … build a `netns::Lab` …
/// }
/// # let _ = a_test_that_needs_namespaces;
/// ```
pub fn require_or_skip(missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    assert!(!in_ci(), "cannot run this test under CI: {why}");
    eprintln!("skipped: {why} (under CI=true this is a failure)");
    false
}

/// Polls `condition` until it holds, for at most `timeout`: `Err` if it never did.
///
/// Only for state that no event announces (a counter, a table entry going away); where there is
/// an event (a line, a sample, `wait_matching`), wait for it instead.
pub async fn wait_until(
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(timeout, async {
        let mut pause = Duration::from_millis(1);
        while !condition().await {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    })
    .await
}

pub mod impair;
pub mod netns;
