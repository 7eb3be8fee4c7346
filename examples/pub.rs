//! Publishes a counter on a key once a second.
//!
//! `cargo run -p hypha-examples --example pub -- [--key demo/hello] [--connect EP] [--listen EP] [--mdns]`

use clap::Parser;
use hypha_examples::{NetArgs, init_log};
use std::time::Duration;

/// Publishes a counter on a key once a second.
#[derive(Parser)]
struct Args {
    /// The key published on.
    #[arg(long, default_value = "demo/hello")]
    key: String,
    /// Stop after this many samples (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { key, count, net } = Args::parse();
    let session = hypha::open(net.config()?).await?;
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
