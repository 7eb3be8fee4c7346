//! Prints every sample matching a key expression.
//!
//! `cargo run -p hypha-examples --example sub -- [--key 'demo/**'] [--listen EP] [--connect EP] [--mdns]`

use clap::Parser;
use hypha_examples::{NetArgs, init_log};

/// Prints every sample matching a key expression.
#[derive(Parser)]
struct Args {
    /// The key expression subscribed to.
    #[arg(long, default_value = "demo/**")]
    key: String,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let Args { key, net } = Args::parse();
    let session = hypha::open(net.config()?).await?;
    eprintln!(
        "subscribed to {key}; listening on {:?}",
        session.info().listening
    );
    let sub = session.declare_subscriber(&key).stream()?;
    while let Some(s) = sub.recv().await {
        println!(
            "{:?} {} {}",
            s.kind,
            s.key,
            s.payload_str().unwrap_or("<binary>")
        );
    }
    Ok(())
}
