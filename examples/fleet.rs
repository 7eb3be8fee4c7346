//! The fleet demo: vehicles publish telemetry, a dashboard subscribes with wildcards and watches
//! which vehicles are alive.
//!
//! - Without arguments: runs the whole demo in this process — a dashboard and four cars, each a
//!   separate Hypha node with its own QUIC links on loopback, in a full mesh. Midway one car
//!   shuts down and its liveliness token disappears from the dashboard. Ends after `--secs`
//!   (default 8) with a summary.
//! - With `--node NAME`: runs one car node that also prints what it hears, as JSON lines — for
//!   multi-host runs (`--mdns` to discover the others on the LAN).
//!
//! `cargo run --release -p hypha-examples --example fleet`

use clap::Parser;
use hypha::{Sample, SampleKind, Session};
use hypha_examples::{NetArgs, init_log};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn car(
    session: Session,
    name: String,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let _token = session
        .liveliness()
        .declare_token(&format!("fleet/{name}"))?;
    let speed = session.declare_publisher(&format!("fleet/{name}/speed"))?;
    let battery = session.declare_publisher(&format!("fleet/{name}/battery"))?;
    // Publications made before anyone subscribes go nowhere: wait (briefly) for a listener.
    speed.wait_matching(Duration::from_secs(5)).await;
    let mut n = 0u64;
    let mut stop = stop;
    loop {
        let phase: u32 = name.bytes().map(u32::from).sum();
        let v = 50.0 + 30.0 * ((n as f64) / 7.0 + f64::from(phase)).sin();
        speed.put(format!("{v:.1}")).await?;
        battery
            .put(format!("{}", 100u64.saturating_sub(n / 3)))
            .await?;
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => break,
        }
    }
    session.close().await;
    Ok(n)
}

fn node_config(listen: &str, connect: &[String]) -> anyhow::Result<hypha::Config> {
    let mut c = hypha::Config::default();
    c.mdns = false;
    c.listen = vec![listen.parse()?];
    c.connect = connect
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    Ok(c)
}

async fn demo(secs: u64) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let dashboard = hypha::open(node_config("quic/127.0.0.1:0", &[])?).await?;
    let mut endpoints = vec![dashboard.info().listening[0].to_string()];
    println!("dashboard {} on {}", dashboard.id(), endpoints[0]);
    let speeds = dashboard.declare_subscriber("fleet/*/speed").stream()?;
    let alive = dashboard.liveliness().declare_subscriber("fleet/*")?;
    let names = ["car1", "car2", "car3", "car4"];
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for name in names {
        let s = hypha::open(node_config("quic/127.0.0.1:0", &endpoints)?).await?;
        endpoints.push(s.info().listening[0].to_string());
        let (tx, rx) = tokio::sync::watch::channel(false);
        stops.push(tx);
        tasks.push(tokio::spawn(car(
            s,
            name.to_string(),
            Duration::from_millis(200),
            rx,
        )));
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(secs / 2);
    let mut stopped = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let show = |s: &Sample| {
        format!(
            "{:>6.2}s {:>6} {}",
            t0.elapsed().as_secs_f64(),
            if s.kind == SampleKind::Put {
                "joined"
            } else {
                "left"
            },
            s.key
        )
    };
    loop {
        tokio::select! {
            Some(s) = speeds.recv() => {
                let car = s.key.split('/').nth(1).unwrap_or("?").to_string();
                *counts.entry(car.clone()).or_default() += 1;
                last.insert(car, s.payload_str().unwrap_or("?").to_string());
            }
            Some(s) = alive.recv() => {
                println!("{}", show(&s));
                // A departed car's last speed is not shown as if it were still driving.
                if s.kind == SampleKind::Delete {
                    if let Some(car) = s.key.split('/').nth(1) {
                        last.remove(car);
                    }
                }
            }
            _ = tick.tick() => {
                let row: Vec<String> = last.iter().map(|(k, v)| format!("{k}={v:>5} km/h")).collect();
                println!("{:>6.2}s speeds: {}", t0.elapsed().as_secs_f64(), row.join("  "));
            }
            _ = tokio::time::sleep_until(stop_at), if !stopped => {
                stopped = true;
                println!("{:>6.2}s stopping car4", t0.elapsed().as_secs_f64());
                let _ = stops[3].send(true);
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    for s in &stops {
        let _ = s.send(true);
    }
    let mut published = 0;
    for t in tasks {
        published += t.await??;
    }
    // Count what was still in flight when the cars stopped.
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(200), speeds.recv()).await {
        let car = s.key.split('/').nth(1).unwrap_or("?").to_string();
        *counts.entry(car).or_default() += 1;
    }
    println!(
        "summary: {} cars published {published} speed samples, the dashboard received {} ({:?})",
        names.len(),
        counts.values().sum::<u64>(),
        counts
    );
    dashboard.close().await;
    Ok(())
}

/// One car that prints every sample and liveliness change it sees as a JSON line.
async fn node(args: &Args, name: String) -> anyhow::Result<()> {
    let secs = args.secs.unwrap_or(30);
    let interval = Duration::from_millis(args.interval_ms);
    let session = hypha::open(args.net.config()?).await?;
    let t0 = Instant::now();
    println!(
        "{}",
        serde_json::json!({"event":"ready","node":name,"id":session.id().to_string(),
        "listening": session.info().listening.iter().map(|e| e.to_string()).collect::<Vec<_>>()})
    );
    let all = session.declare_subscriber("fleet/**").stream()?;
    let alive = session.liveliness().declare_subscriber("fleet/*")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let me = tokio::spawn(car(session.clone(), name.clone(), interval, rx));
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let ms = || t0.elapsed().as_millis() as u64;
    loop {
        tokio::select! {
            Some(s) = all.recv() => println!("{}", serde_json::json!({"event":"sample","key":&*s.key,
                "payload": s.payload_str().unwrap_or(""), "ms": ms()})),
            Some(s) = alive.recv() => println!("{}", serde_json::json!({"event": if s.kind == SampleKind::Put {"alive"} else {"gone"},
                "key": &*s.key, "ms": ms()})),
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    let _ = tx.send(true);
    me.await??;
    Ok(())
}

/// The fleet demo (all in this process), or one car node with `--node NAME`.
#[derive(Parser)]
struct Args {
    /// Run one car node with this name instead of the whole demo.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Run this long (default: 8 for the demo, 30 for a node).
    #[arg(long)]
    secs: Option<u64>,
    /// A node's publishing interval.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// A node's network options (the demo uses its own loopback mesh).
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::parse();
    match args.node.clone() {
        Some(name) => node(&args, name).await,
        None => demo(args.secs.unwrap_or(8)).await,
    }
}
