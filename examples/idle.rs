//! An idle node: opens a session, waits `--secs` (default 2), prints its peak memory as one JSON
//! line `{"rss_kb":…}`.

use hypha_examples::{Args, config, init_log, rss_kb};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::from_env();
    let secs: u64 = args.get("--secs", 2)?;
    let session = hypha::open(config(&args)?).await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    println!("{}", serde_json::json!({ "rss_kb": rss_kb() }));
    session.close().await;
    Ok(())
}
