//! An idle node: opens a session, waits `--secs` (default 2), prints its peak memory as one JSON
//! line `{"rss_kb":…}`.

use clap::Parser;
use hypha_examples::{NetArgs, init_log, rss_kb};
use std::time::Duration;

/// An idle node that reports its peak memory.
#[derive(Parser)]
struct Args {
    /// Stay idle this long.
    #[arg(long, default_value_t = 2)]
    secs: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { secs, net } = Args::parse();
    let session = hypha::open(net.config()?).await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    println!("{}", serde_json::json!({ "rss_kb": rss_kb() }));
    session.close().await;
    Ok(())
}
