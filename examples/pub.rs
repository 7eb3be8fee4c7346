//! Publishes a counter on a key once a second.
//!
//! `cargo run -p hypha-examples --example pub -- [--key demo/hello] [--connect EP] [--listen EP] [--mdns]`

use hypha_examples::{Args, config, init_log};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::from_env();
    let key: String = args.get("--key", "demo/hello".to_string())?;
    let count: u64 = args.get("--count", 0)?;
    let session = hypha::open(config(&args)?).await?;
    let publisher = session.declare_publisher(&key)?;
    let mut i = 0u64;
    loop {
        let value = format!("hello #{i}");
        publisher.put(value.clone()).await?;
        println!(
            "put {key} {value} (matching subscriber: {})",
            publisher.matching_status()
        );
        i += 1;
        if count > 0 && i >= count {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    session.close().await;
    Ok(())
}
