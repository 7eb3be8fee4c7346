//! Counts samples on `bench/thr` and prints one JSON line: `{"msgs_per_s":…,"mb_per_s":…}`,
//! measured over `--secs` seconds from the first sample.
//!
//! `cargo run --release -p hypha-examples --example thr_sub -- --listen tcp/127.0.0.1:7447 --secs 5`

use clap::Parser;
use hypha_examples::{NetArgs, init_log, rss_kb};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts samples on `bench/thr`.
#[derive(Parser)]
struct Args {
    /// Measure this long, from the first sample.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { secs, net } = Args::parse();
    let session = hypha::open(net.config()?).await?;
    eprintln!("thr_sub listening on {:?}", session.info().listening);
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (c, b) = (count.clone(), bytes.clone());
    let _sub = session.declare_subscriber("bench/thr").callback(move |s| {
        c.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(s.payload.len() as u64, Ordering::Relaxed);
    })?;
    while count.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (n0, b0, t0) = (
        count.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let el = t0.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed) - n0;
    let b = bytes.load(Ordering::Relaxed) - b0;
    println!(
        "{}",
        serde_json::json!({
            "msgs_per_s": n as f64 / el, "mb_per_s": b as f64 / el / 1e6,
            "samples": n, "secs": el, "rss_kb": rss_kb(),
        })
    );
    session.close().await;
    Ok(())
}
