//! Echoes every `bench/ping` sample back on `bench/pong` (the other half of `ping`).
//!
//! `cargo run --release -p hypha-examples --example pong -- --listen tcp/127.0.0.1:7447`

use hypha::Priority;
use hypha_examples::{Args, config, init_log, run_for};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_log();
    let args = Args::from_env();
    let secs: u64 = args.get("--secs", 0)?;
    let session = hypha::open(config(&args)?).await?;
    eprintln!("pong listening on {:?}", session.info().listening);
    let sub = session
        .declare_subscriber("bench/ping")
        .capacity(1024)
        .stream()?;
    let publisher = session
        .declare_publisher("bench/pong")?
        .priority(Priority::RealTime)
        .express(true);
    let echo = async {
        while let Some(s) = sub.recv().await {
            if publisher.put(s.payload).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = echo => {}
        _ = run_for(secs) => {}
    }
    session.close().await;
    Ok(())
}
