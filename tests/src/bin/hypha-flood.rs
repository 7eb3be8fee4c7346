//! `hypha-flood`: what a node's memory does under connection floods and peer churn (issue 16).
//!
//! Starts a `hypha peer` (the binary given with `--hypha`) listening on `tcp/127.0.0.1:0`,
//! reads its resident set (`VmRSS` in `/proc/PID/status`) before, during and after each round,
//! and prints one JSON line per round and a summary with the medians:
//!
//! ```text
//! hypha-flood --hypha target/release/hypha half-open --conns 3500 --sources 250 --rounds 5
//!   {"round":1,"rss_before_kib":…,"rss_during_kib":…,"rss_after_kib":…,"accepted":…}
//!   {"summary":"half-open","rounds":5,"rss_start_kib":…,"rss_during_kib_median":…,…}
//! hypha-flood --hypha target/release/hypha churn --peers 5000 --batch 50
//!   {"joined":1000,"rss_kib":…}                            every --report peers
//!   {"summary":"churn","peers":5000,"rss_start_kib":…,"rss_end_kib":…,"kib_per_1000":…}
//! ```
//!
//! `half-open`: each round opens `--conns` TCP connections at once from `--sources` loopback
//! source addresses (127.0.1.x, so the node's per-source bound sees distinct hosts), sends the
//! stream preamble on each and nothing more (no `Init`), holds them `--hold-ms`, closes them all
//! and waits `--settle-ms` before reading "after".
//!
//! `churn`: `--peers` nodes (hypha `Session`s in this process, each with a fresh node id) join
//! the node over TCP, `--batch` at a time, and leave again; the node's RSS is read every
//! `--report` peers and once more `--settle-ms` after the last left.
//!
//! `--config FILE` is passed to the node (e.g. a `[limits]` section). The node is killed when
//! this program exits, also on error.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Parser, Debug)]
#[command(name = "hypha-flood")]
struct Args {
    /// The `hypha` binary to run as the node under test.
    #[arg(long)]
    hypha: PathBuf,
    /// A configuration file for the node.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Extra environment for the node, NAME=VALUE (repeatable; e.g. MALLOC_ARENA_MAX=2).
    #[arg(long = "env")]
    envs: Vec<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Overlapping half-open connections: preamble sent, no handshake.
    HalfOpen {
        /// Connections open at once in each round.
        #[arg(long, default_value_t = 3500)]
        conns: usize,
        /// Distinct source addresses (127.0.1.1 ..).
        #[arg(long, default_value_t = 250)]
        sources: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// How long each round holds its connections open, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
        /// Pause after closing them before "after" is read, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        settle_ms: u64,
    },
    /// Peers joining and leaving.
    Churn {
        /// Peers in all.
        #[arg(long, default_value_t = 5000)]
        peers: usize,
        /// Peers joined at once (each batch joins, then leaves).
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Print the RSS every this many peers.
        #[arg(long, default_value_t = 1000)]
        report: usize,
        /// Pause after the last left before the final reading, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        settle_ms: u64,
        /// Open each peer as a client (`mode = client`) instead of a peer.
        #[arg(long)]
        client: bool,
        /// Peers listen on nothing (by default each listens on tcp/127.0.0.1:0, which the
        /// node learns by gossip, as a real peer's endpoints).
        #[arg(long)]
        no_listen: bool,
    },
}

/// The node under test; killed on drop.
struct Node {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
}

impl Node {
    async fn start(args: &Args) -> anyhow::Result<Node> {
        let mut cmd = tokio::process::Command::new(&args.hypha);
        cmd.args(["peer", "--no-mdns", "--listen", "tcp/127.0.0.1:0"]);
        if let Some(c) = &args.config {
            cmd.arg("--config").arg(c);
        }
        for e in &args.envs {
            let (k, v) = e.split_once('=').context("--env takes NAME=VALUE")?;
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the node")?;
        let pid = child.id().context("node pid")?;
        let out = child.stdout.take().context("node stdout")?;
        let mut lines = BufReader::new(out).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(l) = lines.next_line().await? {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l)
                    && v["event"] == "ready"
                {
                    return Ok::<_, anyhow::Error>(v);
                }
            }
            bail!("the node exited before it was ready")
        })
        .await
        .context("the node was not ready within 20 s")??;
        let ep = ready["listening"][0]
            .as_str()
            .context("no listening endpoint")?;
        let addr: SocketAddr = ep
            .strip_prefix("tcp/")
            .context("not a tcp endpoint")?
            .parse()?;
        // Keep reading its stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Node { child, pid, addr })
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Opens one half-open link: TCP from `source`, the preamble, the node's preamble read back.
async fn half_open(source: IpAddr, to: SocketAddr) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(source, 0)).ok()?;
    let mut s = sock.connect(to).await.ok()?;
    s.write_all(b"HYPHA/1\n").await.ok()?;
    let mut got = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .ok()?
        .ok()?;
    Some(s)
}

async fn flood(
    node: &Node,
    conns: usize,
    sources: usize,
    rounds: usize,
    hold: Duration,
    settle: Duration,
) -> anyhow::Result<()> {
    let start = node.rss_kib()?;
    let (mut during, mut after) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let before = node.rss_kib()?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..conns {
            let k = u8::try_from(1 + i % sources.clamp(1, 250)).unwrap_or(1);
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, k));
            let to = node.addr;
            tasks.spawn(async move { half_open(src, to).await });
        }
        let mut open = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(s)) = r {
                open.push(s);
            }
        }
        // The node has answered every preamble. How many it still holds open (a refused one
        // reads EOF at once; those handshaking close after the node's lease):
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut still_open = 0usize;
        for s in &open {
            let mut b = [0u8; 1];
            match s.try_read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still_open += 1,
                _ => {}
            }
        }
        // Hold them and sample the RSS.
        let t0 = Instant::now();
        let mut peak = node.rss_kib()?;
        while t0.elapsed() < hold {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(node.rss_kib()?);
        }
        let accepted = open.len();
        drop(open);
        tokio::time::sleep(settle).await;
        let end = node.rss_kib()?;
        println!(
            "{{\"round\":{round},\"rss_before_kib\":{before},\"rss_during_kib\":{peak},\"rss_after_kib\":{end},\"preambles_answered\":{accepted},\"held_open_by_node\":{still_open}}}"
        );
        during.push(peak);
        after.push(end);
    }
    println!(
        "{{\"summary\":\"half-open\",\"conns\":{conns},\"sources\":{sources},\"rounds\":{rounds},\"rss_start_kib\":{start},\"rss_during_kib_median\":{},\"rss_after_kib_median\":{},\"rss_after_kib_last\":{}}}",
        median(&mut during.clone()),
        median(&mut after.clone()),
        after.last().copied().unwrap_or(0)
    );
    Ok(())
}

async fn churn(
    node: &Node,
    peers: usize,
    batch: usize,
    report: usize,
    settle: Duration,
    client: bool,
    listen: bool,
) -> anyhow::Result<()> {
    let start = node.rss_kib()?;
    let ep = format!("tcp/{}", node.addr);
    let mut joined = 0usize;
    let mut next_report = report;
    while joined < peers {
        let n = batch.min(peers - joined).max(1);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let ep = ep.clone();
            set.spawn(async move {
                let mut cfg = hypha::Config::default();
                cfg.mdns = false;
                cfg.listen = match listen {
                    true => vec!["tcp/127.0.0.1:0".parse()?],
                    false => Vec::new(),
                };
                cfg.connect = vec![ep.parse()?];
                if client {
                    cfg.mode = hypha::config::parse_mode("client")?;
                }
                let s = hypha::open(cfg).await?;
                let t0 = Instant::now();
                while s.info().links.is_empty() {
                    if t0.elapsed() > Duration::from_secs(10) {
                        bail!("no link to the node within 10 s");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                s.close().await;
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r.context("peer task")?.context("a peer failed to join")?;
        }
        joined += n;
        if joined >= next_report {
            next_report += report;
            // Let the node see the last batch go before reading.
            tokio::time::sleep(Duration::from_millis(200)).await;
            println!("{{\"joined\":{joined},\"rss_kib\":{}}}", node.rss_kib()?);
        }
    }
    tokio::time::sleep(settle).await;
    let end = node.rss_kib()?;
    let per_1000 = (end as f64 - start as f64) / (peers as f64 / 1000.0);
    println!(
        "{{\"summary\":\"churn\",\"peers\":{peers},\"batch\":{batch},\"rss_start_kib\":{start},\"rss_end_kib\":{end},\"kib_per_1000\":{per_1000:.1}}}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node = Node::start(&args).await?;
    // Let start-up allocations settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    match args.mode {
        Mode::HalfOpen {
            conns,
            sources,
            rounds,
            hold_ms,
            settle_ms,
        } => {
            flood(
                &node,
                conns,
                sources,
                rounds,
                Duration::from_millis(hold_ms),
                Duration::from_millis(settle_ms),
            )
            .await
        }
        Mode::Churn {
            peers,
            batch,
            report,
            settle_ms,
            client,
            no_listen,
        } => {
            churn(
                &node,
                peers,
                batch,
                report,
                Duration::from_millis(settle_ms),
                client,
                !no_listen,
            )
            .await
        }
    }
}
