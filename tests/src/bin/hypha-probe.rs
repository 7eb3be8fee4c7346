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
//! hypha-probe serve --connect quic/127.0.0.1:7447 --key 'svc/**' --name a --token alive/a
//!   {"event":"ready","queryable":true,"token":true}
//! hypha-probe get --connect quic/127.0.0.1:7447 --prefix svc/q --rate 200 --count 1000
//!   {"event":"get","i":17,"replies":1,"errors":0,"sent_us":…,"done_us":…}
//!   {"event":"done","issued":1000}
//! hypha-probe watch --connect quic/127.0.0.1:7447 --key 'alive/**'
//!   {"event":"ready"}
//!   {"event":"token","key":"alive/a","kind":"put","t_us":…}
//! ```
//!
//! `pub` and `get` stop early on SIGTERM (their `done` line says how many they sent); `serve`
//! and `watch` run until SIGTERM. A get asks with no consolidation, so a reply the network
//! delivered twice is counted twice.
//!
//! A payload is `NAME SN T_US`: the publisher's name, its sequence number (from 0) and its send
//! time (the system clock in µs, shared by every namespace of one host, so one-way latency is
//! exact to the clock's resolution). The subscriber prints every sample it receives as is
//! (duplicates and reordering are the checker's business) and, on SIGTERM or the end of stdin, a
//! `summary` line. Both attach as clients unless `--mode peer`.

use clap::{Parser, Subcommand};
use hypha::Config;
use hypha::SampleKind;
use hypha_core::wire::{Consolidation, Mode};
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
        /// Before the ready line, wait (up to 5 s) until the router told of at least this many
        /// alternate endpoints, and list them in it (a router tells them one by one).
        #[arg(long, default_value_t = 0)]
        wait_alternates: usize,
        /// Where a peer listens (default tcp/127.0.0.1:0; clients never listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// A queryable on KEY answering each query with one reply `NAME` on the query's key, and
    /// optionally a liveliness token.
    Serve {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long, default_value = "q")]
        name: String,
        #[arg(long)]
        token: Option<String>,
    },
    /// --count gets on PREFIX/<i> at --rate per second (each in flight on its own), one line
    /// per get with the replies it received.
    Get {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print every liveliness event (token put or delete) on KEY.
    Watch {
        #[arg(long)]
        connect: Vec<String>,
        #[arg(long)]
        key: String,
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
        /// As for `pub`.
        #[arg(long, default_value_t = 0)]
        wait_alternates: usize,
        /// As for `pub`.
        #[arg(long)]
        listen: Option<String>,
    },
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The alternate routers this client learnt, after waiting up to 5 s for at least `n`.
async fn alternates(s: &hypha::Session, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    if n > 0 && s.wait_alternates(Duration::from_secs(5)).await {
        // The first is an event; the rest follow it in the same burst of gossip.
        while s.alternates().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    s.alternates().iter().map(|e| e.to_string()).collect()
}

fn terminate() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
}

fn config(connect: &[String], mode: &str) -> anyhow::Result<Config> {
    config_listening(connect, mode, None)
}

fn config_listening(
    connect: &[String],
    mode: &str,
    listen: Option<&str>,
) -> anyhow::Result<Config> {
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
        let l = listen.unwrap_or("tcp/127.0.0.1:0");
        c.listen = vec![
            l.parse()
                .map_err(|e| anyhow::anyhow!("--listen {l}: {e}"))?,
        ];
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
            wait_alternates,
            listen,
        } => {
            let s = hypha::open(config_listening(&connect, &mode, listen.as_deref())?).await?;
            let p = s.declare_publisher(&key)?;
            let wait = Duration::from_millis(wait_ms);
            let matching = p.ready(wait).await && p.wait_matching(wait).await;
            let alternates = alternates(&s, wait_alternates).await;
            println!(
                "{}",
                serde_json::json!({"event": "ready", "matching": matching,
                    "alternates": alternates})
            );
            let period = Duration::from_micros(1_000_000 / rate.max(1));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut dropped = 0u64;
            let mut term = terminate()?;
            let mut sent = 0u64;
            while sent < count {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = term.recv() => break,
                }
                let r = p.put(format!("{name} {sent} {}", now_us())).await?;
                dropped += r.dropped;
                sent += 1;
            }
            let _ = p.flush(Duration::from_secs(5)).await;
            println!(
                "{}",
                serde_json::json!({"event": "done", "sent": sent, "dropped": dropped})
            );
            s.close().await;
        }
        Cmd::Serve {
            connect,
            key,
            name,
            token,
        } => {
            let s = hypha::open(config(&connect, "client")?).await?;
            let q = s.declare_queryable(&key).stream()?;
            let ready = q.ready(Duration::from_secs(10)).await;
            let t = match &token {
                Some(k) => Some(s.liveliness().token(k).await?),
                None => None,
            };
            println!(
                "{}",
                serde_json::json!({"event": "ready", "queryable": ready, "token": t.is_some()})
            );
            let mut term = terminate()?;
            let mut served = 0u64;
            loop {
                tokio::select! {
                    query = q.recv() => {
                        let Some(query) = query else { break };
                        let k = query.key_expr().as_str().to_string();
                        if query.reply(&k, name.clone()).await.is_ok() {
                            served += 1;
                        }
                    }
                    _ = term.recv() => break,
                }
            }
            println!(
                "{}",
                serde_json::json!({"event": "summary", "served": served})
            );
            drop(t);
        }
        Cmd::Get {
            connect,
            prefix,
            rate,
            count,
            timeout_ms,
        } => {
            let s = hypha::open(config(&connect, "client")?).await?;
            // A get made before the link is up has nobody to ask (it ends with no reply).
            let linked = s.wait_peers(1, Duration::from_secs(10)).await;
            println!(
                "{}",
                serde_json::json!({"event": "ready", "linked": linked})
            );
            let period = Duration::from_micros(1_000_000 / rate.max(1));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut term = terminate()?;
            let mut running = tokio::task::JoinSet::new();
            let mut issued = 0u64;
            while issued < count {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = term.recv() => break,
                }
                let (s, i) = (s.clone(), issued);
                let selector = format!("{prefix}/{i}");
                running.spawn(async move {
                    let sent_us = now_us();
                    let (mut replies, mut errors) = (0u32, 0u32);
                    match s
                        .get(&selector)
                        .consolidation(Consolidation::None)
                        .timeout(Duration::from_millis(timeout_ms))
                        .send()
                        .await
                    {
                        Ok(mut r) => {
                            while let Some(reply) = r.recv().await {
                                match reply.result {
                                    Ok(_) => replies += 1,
                                    Err(_) => errors += 1,
                                }
                            }
                        }
                        Err(_) => errors += 1,
                    }
                    println!(
                        "{}",
                        serde_json::json!({"event": "get", "i": i, "replies": replies,
                            "errors": errors, "sent_us": sent_us, "done_us": now_us()})
                    );
                });
                issued += 1;
            }
            while running.join_next().await.is_some() {}
            println!("{}", serde_json::json!({"event": "done", "issued": issued}));
            s.close().await;
        }
        Cmd::Watch { connect, key } => {
            let s = hypha::open(config(&connect, "client")?).await?;
            let sub = s.liveliness().subscriber(&key).await?;
            println!("{}", serde_json::json!({"event": "ready"}));
            let mut term = terminate()?;
            loop {
                tokio::select! {
                    e = sub.recv() => {
                        let Some(e) = e else { break };
                        let kind = match e.kind {
                            SampleKind::Put => "put",
                            SampleKind::Delete => "delete",
                        };
                        println!("{}", serde_json::json!({"event": "token", "key": &*e.key,
                            "kind": kind, "t_us": now_us()}));
                    }
                    _ = term.recv() => break,
                }
            }
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
        Cmd::Sub {
            connect,
            key,
            mode,
            wait_alternates,
            listen,
        } => {
            let s = hypha::open(config_listening(&connect, &mode, listen.as_deref())?).await?;
            let sub = s.declare_subscriber(&key).stream()?;
            let ready = sub.ready(Duration::from_secs(10)).await;
            let alternates = alternates(&s, wait_alternates).await;
            println!(
                "{}",
                serde_json::json!({"event": "ready", "ready": ready, "alternates": alternates})
            );
            let mut term = terminate()?;
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
