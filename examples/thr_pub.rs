//! Publishes `--size`-byte samples on `bench/thr` as fast as the link takes them (reliable,
//! blocking congestion control) for `--secs` seconds (0 = forever).
//!
//! `cargo run --release -p hypha-examples --example thr_pub -- --connect tcp/127.0.0.1:7447 --size 8`

use hypha::CongestionControl;
use hypha_examples::{Args, config, init_log};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::from_env();
    let size: usize = args.get("--size", 8)?;
    let secs: u64 = args.get("--secs", 0)?;
    let session = hypha::open(config(&args)?).await?;
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
