//! Prints every sample matching a key expression.
//!
//! `cargo run -p hypha-examples --example sub -- [--key 'demo/**'] [--listen EP] [--connect EP] [--mdns]`

use hypha_examples::{Args, config, init_log};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::from_env();
    let key: String = args.get("--key", "demo/**".to_string())?;
    let session = hypha::open(config(&args)?).await?;
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
