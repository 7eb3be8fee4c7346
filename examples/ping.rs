//! Round-trip latency against `pong`: sends `--n` samples of `--size` bytes on `bench/ping`,
//! one at a time, and times each echo. Prints one JSON line:
//! `{"n":…,"size":…,"p50_us":…,"p99_us":…,"p999_us":…,"mean_us":…}`.
//!
//! `cargo run --release -p hypha-examples --example ping -- --connect tcp/127.0.0.1:7447 --n 10000 --size 64`

use hypha::Priority;
use hypha_examples::{Args, config, init_log, percentile};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::from_env();
    let n: usize = args.get("--n", 10_000)?;
    let size: usize = args.get("--size", 64)?;
    let warmup: usize = args.get("--warmup", 1_000)?;
    let session = hypha::open(config(&args)?).await?;
    let sub = session
        .declare_subscriber("bench/pong")
        .capacity(1024)
        .stream()?;
    let publisher = session
        .declare_publisher("bench/ping")?
        .priority(Priority::RealTime)
        .express(true);
    if !publisher.wait_matching(Duration::from_secs(30)).await {
        anyhow::bail!("no pong found within 30 s");
    }
    // The pong's own subscription to our replies may arrive a little after its subscriber
    // matched ours: retry the first round trip until an echo comes back.
    let payload = bytes::Bytes::from(vec![0xabu8; size.max(1)]);
    loop {
        publisher.put(payload.clone()).await?;
        if tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut rtts = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        publisher.put(payload.clone()).await?;
        match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Some(_)) => {}
            _ => anyhow::bail!("echo {i} lost"),
        }
        if i >= warmup {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
    rtts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({
            "n": n, "size": size,
            "p50_us": percentile(&rtts, 50.0), "p99_us": percentile(&rtts, 99.0),
            "p999_us": percentile(&rtts, 99.9), "mean_us": mean,
        })
    );
    session.close().await;
    Ok(())
}
