//! Publishes `--size`-byte samples on `bench/thr` as fast as the link takes them (reliable,
//! blocking congestion control) for `--secs` seconds (0 = forever).
//!
//! `cargo run --release -p hypha-examples --example thr_pub -- --connect tcp/127.0.0.1:7447 --size 8`

use clap::Parser;
use hypha::CongestionControl;
use hypha_examples::{NetArgs, init_log};
use std::time::{Duration, Instant};

/// Publishes on `bench/thr` as fast as the link takes it.
#[derive(Parser)]
struct Args {
    /// Payload bytes.
    #[arg(long, default_value_t = 8)]
    size: usize,
    /// Run this long (0: forever).
    #[arg(long, default_value_t = 0)]
    secs: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { size, secs, net } = Args::parse();
    let session = hypha::open(net.config()?).await?;
    let publisher = session
        .declare_publisher("bench/thr")?
        .congestion_control(CongestionControl::Block);
    if !publisher.wait_matching(Duration::from_secs(30)).await {
        anyhow::bail!("no subscriber found within 30 s");
    }
    let payload = bytes::Bytes::from(vec![7u8; size.max(1)]);
    let t0 = Instant::now();
    let mut n = 0u64;
    while secs == 0 || t0.elapsed() < Duration::from_secs(secs) {
        for _ in 0..256 {
            publisher.put(payload.clone()).await?;
        }
        n += 256;
    }
    publisher.flush(Duration::from_secs(5)).await;
    eprintln!("published {n} samples");
    session.close().await;
    Ok(())
}
