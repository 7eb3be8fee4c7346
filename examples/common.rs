//! Helpers shared by the examples: the network options every example takes (a clap `Args`
//! struct to flatten into each example's own parser), logging and small statistics.

use std::time::Duration;

#[path = "chain.rs"]
pub mod chain;

/// Where an example's node listens and what it connects to. mDNS is off unless asked for, so
/// that examples never multicast on a network by surprise.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NetArgs {
    /// Endpoint to listen on (repeatable), e.g. tcp/127.0.0.1:7447. Default: quic/0.0.0.0:0.
    #[arg(long = "listen", value_name = "EP")]
    pub listen: Vec<String>,
    /// Endpoint to connect to (repeatable), e.g. tcp/127.0.0.1:7447.
    #[arg(long = "connect", value_name = "EP")]
    pub connect: Vec<String>,
    /// Announce and discover peers with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Timestamp samples (off by default: Zenoh peers, which the benchmarks compare with, do
    /// not timestamp by default either).
    #[arg(long)]
    pub timestamps: bool,
    /// Enforce the `[acl]` section of this TOML file on every link.
    #[arg(long, value_name = "FILE")]
    pub acl: Option<std::path::PathBuf>,
}

impl NetArgs {
    /// The node's configuration.
    pub fn config(&self) -> anyhow::Result<hypha::Config> {
        let mut c = hypha::Config::default();
        if !self.listen.is_empty() {
            c.listen = self
                .listen
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()?;
        }
        c.connect = self
            .connect
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        c.mdns = self.mdns;
        c.timestamping = self.timestamps;
        if let Some(f) = &self.acl {
            c.acl = Some(hypha::acl::Acl::from_toml(&std::fs::read_to_string(f)?)?);
        }
        Ok(c)
    }
}

/// Peak resident memory of this process (VmHWM), in KiB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Logs to stderr (level from `HYPHA_LOG`, default warn).
pub fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPHA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

/// Microseconds since the Unix epoch (wall clock): comparable between processes of one
/// machine, for one-way delays.
pub fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Waits for `secs`, or forever with 0.
pub async fn run_for(secs: u64) {
    if secs == 0 {
        std::future::pending::<()>().await
    } else {
        tokio::time::sleep(Duration::from_secs(secs)).await
    }
}
