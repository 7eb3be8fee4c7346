//! Argument helpers shared by the examples (kept tiny on purpose: no CLI framework needed).

use std::time::Duration;

/// Command-line arguments: `--name value` pairs and repeatable flags.
pub struct Args(Vec<String>);

impl Args {
    /// The process arguments.
    pub fn from_env() -> Self {
        Args(std::env::args().skip(1).collect())
    }

    /// Every value of a repeatable option.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].clone())
            .collect()
    }

    /// The value of an option, parsed, or a default.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.all(name).last() {
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid value {v:?} for {name}")),
            None => Ok(default),
        }
    }

    /// True if a flag is present.
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

/// A configuration from `--listen EP` / `--connect EP` (repeatable) and `--mdns`; mDNS is off
/// unless asked for, so that examples never multicast on a network by surprise.
pub fn config(args: &Args) -> anyhow::Result<hypha::Config> {
    let mut c = hypha::Config::default();
    let listen = args.all("--listen");
    if !listen.is_empty() {
        c.listen = listen.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    }
    c.connect = args
        .all("--connect")
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    c.mdns = args.flag("--mdns");
    // Benchmarks compare with Zenoh peers, which do not timestamp by default: neither do we
    // unless asked (`--timestamps`).
    c.timestamping = args.flag("--timestamps");
    Ok(c)
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
