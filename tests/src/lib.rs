//! Helpers for Hypha's multi-process and multi-host tests: child processes that are killed when
//! the test ends (even on panic), JSON-line readers with deadlines, free ports, and network
//! namespaces that are deleted on drop.

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
    /// Spawns `cmd` with stdout piped (stderr inherited) and kill-on-drop.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
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
    c.args(args).arg("--no-mdns");
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

/// A TCP port free right now on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub mod netns;
