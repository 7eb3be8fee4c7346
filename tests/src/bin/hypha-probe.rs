//! `hypha-probe`: a publisher and a subscriber whose samples say who sent them, their sequence
//! number and when, for the multi-site tests (JSON lines on stdout).
//!
//! ```text
//! hypha-probe pub --connect quic/127.0.0.1:7447 --key wan/a --name a --rate 1000 --count 60000
//!   {"event":"ready","matching":true}
//!   {"event":"done","sent":60000,"dropped":0}
//! hypha-probe sub --connect quic/127.0.0.1:7447 --key 'wan/**'
//!   {"event":"ready"}
//!   {"event":"sample","p":"a","sn":17,"lat_us":40213,"t_us":1764600000123456}
//! ```
//!
//! A payload is `NAME SN T_US`: the publisher's name, its sequence number (from 0) and its send
//! time (the system clock in µs, shared by every namespace of one host, so one-way latency is
//! exact to the clock's resolution). The subscriber prints every sample it receives as is
//! (duplicates and reordering are the checker's business) and, on SIGTERM or the end of stdin, a
//! `summary` line. Both attach as clients unless `--mode peer`.

use clap::{Parser, Subcommand};
use hypha::Config;
use hypha_core::wire::Mode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(name = "hypha-probe")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Publish numbered, timestamped samples at a fixed rate.
    Pub {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "p")]
        name: String,
        /// Samples per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Wait this long for a matching subscriber first.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
        #[arg(long, default_value = "client")]
        mode: String,
    },
    /// Declare --subs subscriptions fleet/v<i>/cmd (and optionally a publisher and a
    /// subscriber), print ready, stay for --secs (the declaration-economy bench).
    Decl {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long, default_value_t = 0)]
        subs: usize,
        #[arg(long = "pub")]
        publish: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Print every sample received on KEY.
    Sub {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "client")]
        mode: String,
    },
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn config(connect: &[String], mode: &str) -> anyhow::Result<Config> {
    let mut c = Config::default();
    c.mdns = false;
    c.mode = match mode {
        "client" => Mode::Client,
        "peer" => Mode::Peer,
        other => anyhow::bail!("--mode {other}: expected client or peer"),
    };
    if c.mode == Mode::Client {
        c.listen = Vec::new();
    } else {
        c.listen = vec!["tcp/127.0.0.1:0".parse()?];
    }
    for e in connect {
        c.connect
            .push(e.parse().map_err(|e| anyhow::anyhow!("endpoint: {e}"))?);
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Pub {
            connect,
            key,
            name,
            rate,
            count,
            wait_ms,
            mode,
        } => {
            let s = hypha::open(config(&connect, &mode)?).await?;
            let p = s.declare_publisher(&key)?;
            let wait = Duration::from_millis(wait_ms);
            let matching = p.ready(wait).await && p.wait_matching(wait).await;
            println!(
                "{}",
                serde_json::json!({"event": "ready", "matching": matching})
            );
            let period = Duration::from_micros(1_000_000 / rate.max(1));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut dropped = 0u64;
            for sn in 0..count {
                tick.tick().await;
                let r = p.put(format!("{name} {sn} {}", now_us())).await?;
                dropped += r.dropped;
            }
            let _ = p.flush(Duration::from_secs(5)).await;
            println!(
                "{}",
                serde_json::json!({"event": "done", "sent": count, "dropped": dropped})
            );
            s.close().await;
        }
        Cmd::Decl {
            connect,
            subs,
            publish,
            sub,
            secs,
        } => {
            let s = hypha::open(config(&connect, "client")?).await?;
            let mut held = Vec::new();
            for i in 0..subs {
                held.push(
                    s.declare_subscriber(&format!("fleet/v{i}/cmd"))
                        .callback(|_| {})?,
                );
            }
            if let Some(k) = &sub {
                held.push(s.declare_subscriber(k).callback(|_| {})?);
            }
            let p = match &publish {
                Some(k) => Some(s.declare_publisher(k)?),
                None => None,
            };
            if let Some(p) = &p {
                let _ = p.ready(Duration::from_secs(10)).await;
            }
            println!(
                "{}",
                serde_json::json!({"event": "ready", "subs": held.len(),
                    "matching": p.as_ref().map(|p| p.matching_status())})
            );
            tokio::time::sleep(Duration::from_secs(secs)).await;
            drop(held);
        }
        Cmd::Sub { connect, key, mode } => {
            let s = hypha::open(config(&connect, &mode)?).await?;
            let sub = s.declare_subscriber(&key).stream()?;
            let ready = sub.ready(Duration::from_secs(10)).await;
            println!("{}", serde_json::json!({"event": "ready", "ready": ready}));
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut n = 0u64;
            loop {
                tokio::select! {
                    s = sub.recv() => {
                        let Some(s) = s else { break };
                        n += 1;
                        let t = now_us();
                        let text = String::from_utf8_lossy(&s.payload).to_string();
                        let mut w = text.split(' ');
                        let (p, sn, ts) = (w.next(), w.next(), w.next());
                        let sn: Option<u64> = sn.and_then(|x| x.parse().ok());
                        let ts: Option<u64> = ts.and_then(|x| x.parse().ok());
                        println!("{}", serde_json::json!({
                            "event": "sample", "key": &*s.key, "p": p, "sn": sn,
                            "lat_us": ts.map(|ts| t.saturating_sub(ts)), "t_us": t,
                            // Copies removed so far by the end-to-end sequence numbers
                            // (never delivered, so only this count shows them).
                            "removed": sub.duplicates(),
                        }));
                    }
                    _ = term.recv() => break,
                }
            }
            println!(
                "{}",
                serde_json::json!({"event": "summary", "received": n,
                    "duplicates": sub.duplicates(), "gaps": sub.gaps()})
            );
        }
    }
    Ok(())
}
